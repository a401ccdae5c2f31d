// Cairn's owner app, Identity page: the copy button for the text to post,
// and the status refresh while a binding is pending or anchored (it fetches
// the same server-rendered status block from this origin). Without it the
// text is selectable and the page's Refresh link does the same.
(function () {
  "use strict";
  var button = document.getElementById("copy-challenge");
  var text = document.getElementById("challenge-text");
  if (button && text) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var done = document.getElementById("copy-done");
      text.select();
      var copied = navigator.clipboard && navigator.clipboard.writeText
        ? navigator.clipboard.writeText(text.value)
        : Promise.reject(new Error("no clipboard"));
      copied.then(function () { if (done) { done.textContent = "Copied."; } })
        .catch(function () { if (done) { done.textContent = "Selected: press Ctrl+C (or ⌘C) to copy."; } });
    });
  }
  var block = document.getElementById("id-status-block");
  if (!block || !block.dataset.poll || !block.dataset.src) { return; }
  var last = null;
  function poll() {
    fetch(block.dataset.src, { credentials: "same-origin", redirect: "error", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error(String(r.status)); }
        return r.text();
      })
      .then(function (html) {
        if (html !== last) { block.innerHTML = html; last = html; }
        var status = document.getElementById("id-status");
        if (status && status.dataset.status === "final") { return; }
        setTimeout(poll, 3000);
      })
      .catch(function () { setTimeout(poll, 10000); });
  }
  setTimeout(poll, 3000);
})();
