// Cairn's owner app: the one script. It refreshes an open conversation's
// messages every few seconds by fetching the same server-rendered list
// (HTML escaped by the server) from this origin. Without it, the page's
// Refresh link does the same.
(function () {
  "use strict";
  var list = document.getElementById("messages");
  if (!list || !list.dataset.src) { return; }
  var last = null;
  function poll() {
    fetch(list.dataset.src, { credentials: "same-origin", redirect: "error", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error(String(r.status)); }
        return r.text();
      })
      .then(function (html) {
        if (html !== last) { list.innerHTML = html; last = html; }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 10000); });
  }
  poll();
})();
