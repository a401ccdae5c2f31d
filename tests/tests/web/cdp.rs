//! A small Chrome DevTools Protocol client: headless Chromium from the
//! system (Debian's `chromium` package; `.ci/run` installs it), driven over
//! its DevTools WebSocket with `tokio-tungstenite`, which the tests already
//! use. No browser is ever downloaded, and no CDP crate is needed for the
//! handful of commands used here (navigate, evaluate, keys, screenshots,
//! network events).
//!
//! Every wait has a deadline: commands answer within [`CALL_TIMEOUT`], and
//! conditions (a page loaded, the DevTools port written) are polled until
//! they hold or [`LOAD_TIMEOUT`] passes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use nostr::base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for one DevTools command's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a page to load or the browser to start.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the browser is: `$CAIRN_CHROMIUM`, else `chromium` (Debian) or
/// `chromium-browser` on `PATH`.
fn find_chromium() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CAIRN_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "the browser tests need Chromium and none was found: install Debian's package \
         (`apt-get install --no-install-recommends chromium`; .ci/run does this) or set \
         CAIRN_CHROMIUM to the browser's path"
    )
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value>>>>>;

/// A headless Chromium and the DevTools connection to it.
pub struct Browser {
    child: tokio::process::Child,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    /// Every event received, in order (`method`, `params`, `sessionId`).
    events: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
    next_id: AtomicU64,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts a headless Chromium with a fresh profile, on a DevTools port
    /// of its choosing (read from the profile's `DevToolsActivePort`).
    pub async fn launch() -> Result<Self> {
        let exe = find_chromium()?;
        let profile = tempfile::tempdir()?;
        let log = std::fs::File::create(profile.path().join("stderr.log"))?;
        let child = tokio::process::Command::new(&exe)
            .args([
                "--headless",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--mute-audio",
                "--hide-scrollbars",
                "--lang=en-US",
                "--font-render-hinting=none",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut browser_child = child;
        let url = match wait_for_devtools(profile.path(), &mut browser_child).await {
            Ok(url) => url,
            Err(e) => {
                let log =
                    std::fs::read_to_string(profile.path().join("stderr.log")).unwrap_or_default();
                return Err(e.context(format!("Chromium's output:\n{log}")));
            }
        };
        let (socket, _) =
            tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
                .await
                .map_err(|_| anyhow!("timed out connecting to DevTools at {url}"))??;
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(msg) = outgoing.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        {
            let (pending, events, arrived) = (
                Arc::clone(&pending),
                Arc::clone(&events),
                Arc::clone(&arrived),
            );
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let Some(id) = value.get("id").and_then(Value::as_u64) {
                        let answer = match value.get("error") {
                            Some(e) => Err(anyhow!("DevTools error: {e}")),
                            None => Ok(value.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        if let Some(tx) = pending.lock().unwrap().remove(&id) {
                            let _ = tx.send(answer);
                        }
                    } else {
                        events.lock().unwrap().push(value);
                        arrived.notify_waiters();
                    }
                }
                // The browser went away: fail whoever still waits.
                pending.lock().unwrap().clear();
            });
        }
        Ok(Self {
            child: browser_child,
            out,
            pending,
            events,
            arrived,
            next_id: AtomicU64::new(1),
            profile,
        })
    }

    /// Sends `method` (to `session`, or to the browser) and waits for its answer.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out
            .send(Message::Text(msg.to_string().into()))
            .map_err(|_| anyhow!("the DevTools connection is closed"))?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer.with_context(|| method.to_owned()),
            Ok(Err(_)) => bail!("{method}: the browser closed the connection"),
            Err(_) => bail!("{method}: no answer within {CALL_TIMEOUT:?}"),
        }
    }

    /// A new tab, attached, with page and network events on.
    pub async fn new_page(&self) -> Result<Page<'_>> {
        self.page_with(json!({ "url": "about:blank" })).await
    }

    /// A new tab in a browser context of its own: its cookies are its own
    /// (like another person's browser), so two nodes on one host, whose
    /// cookies a single jar would share, each get their own session.
    pub async fn new_isolated_page(&self) -> Result<Page<'_>> {
        let context = self
            .call(None, "Target.createBrowserContext", json!({}))
            .await?;
        let id = context["browserContextId"]
            .as_str()
            .context("browserContextId")?;
        self.page_with(json!({ "url": "about:blank", "browserContextId": id }))
            .await
    }

    async fn page_with(&self, params: Value) -> Result<Page<'_>> {
        let target = self.call(None, "Target.createTarget", params).await?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_owned();
        let page = Page {
            browser: self,
            session,
        };
        page.call("Page.enable", json!({})).await?;
        page.call("Network.enable", json!({})).await?;
        Ok(page)
    }

    /// Events of `session` named `method`, from position `from` on.
    fn events_since(&self, session: &str, method: &str, from: usize) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .skip(from)
            .filter(|e| e["sessionId"] == session && e["method"] == method)
            .map(|e| e["params"].clone())
            .collect()
    }

    fn event_count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Closes the browser (and waits, bounded, for it to exit).
    pub async fn close(mut self) -> Result<()> {
        let _ = self.call(None, "Browser.close", json!({})).await;
        if tokio::time::timeout(CALL_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        drop(self.profile);
        Ok(())
    }
}

/// Polls the profile's `DevToolsActivePort` (port, then path) until
/// Chromium writes it, failing early if Chromium exits.
async fn wait_for_devtools(profile: &Path, child: &mut tokio::process::Child) -> Result<String> {
    let file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return Ok(format!("ws://127.0.0.1:{port}{path}"));
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("Chromium exited before it opened DevTools ({status})");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("Chromium did not open DevTools within {LOAD_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tab.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

/// What loading a URL showed.
#[derive(Debug)]
pub struct Loaded {
    /// The HTTP status of the document.
    pub status: u64,
    /// Its response headers (names lowercase).
    pub headers: HashMap<String, String>,
}

impl Page<'_> {
    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Waits until an event `method` of this tab arrived after `from`.
    async fn wait_event(&self, method: &str, from: usize) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        loop {
            let notified = self.browser.arrived.notified();
            if let Some(e) = self
                .browser
                .events_since(&self.session, method, from)
                .into_iter()
                .next()
            {
                return Ok(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("no {method} within {LOAD_TIMEOUT:?}");
            }
        }
    }

    /// Runs `action` (which starts a navigation) and waits for the new
    /// document's load event; returns the document's status and headers.
    async fn load_after(
        &self,
        action: impl std::future::Future<Output = Result<()>>,
    ) -> Result<Loaded> {
        let from = self.browser.event_count();
        action.await?;
        self.wait_event("Page.loadEventFired", from).await?;
        let doc = self
            .browser
            .events_since(&self.session, "Network.responseReceived", from)
            .into_iter()
            .rev()
            .find(|e| e["type"] == "Document")
            .context("no document response seen")?;
        let headers = doc["response"]["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Loaded {
            status: doc["response"]["status"].as_u64().unwrap_or(0),
            headers,
        })
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> Result<Loaded> {
        self.load_after(async {
            let nav = self.call("Page.navigate", json!({ "url": url })).await?;
            if let Some(e) = nav.get("errorText").and_then(Value::as_str) {
                bail!("navigating to {url}: {e}");
            }
            Ok(())
        })
        .await
    }

    /// The value of the JavaScript expression `expr`, evaluated by
    /// DevTools in the page (the page itself runs no script).
    pub async fn eval(&self, expr: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                // A promise is awaited: its value is the result.
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("evaluating {expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// `eval` of an expression that yields a string.
    pub async fn text(&self, expr: &str) -> Result<String> {
        Ok(self
            .eval(expr)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Presses a key (as a keyboard would: down, then up).
    pub async fn press(
        &self,
        key: &str,
        code: &str,
        key_code: u32,
        text: Option<&str>,
    ) -> Result<()> {
        let mut down = json!({
            "type": "keyDown", "key": key, "code": code,
            "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code,
        });
        if let Some(t) = text {
            down["text"] = json!(t);
        }
        self.call("Input.dispatchKeyEvent", down).await?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": code,
                    "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code }),
        )
        .await?;
        Ok(())
    }

    /// Tab, as a keyboard user moves focus.
    pub async fn tab(&self) -> Result<()> {
        self.press("Tab", "Tab", 9, None).await
    }

    /// Types `text` into the focused field.
    pub async fn type_text(&self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// Presses Enter in the focused field and waits for the page it submits to.
    pub async fn submit_with_enter(&self) -> Result<Loaded> {
        self.load_after(self.press("Enter", "Enter", 13, Some("\r")))
            .await
    }

    /// Evaluates `expr` (which starts a navigation, e.g. a form's
    /// `requestSubmit()`) and waits for the page it leads to.
    pub async fn navigate_by(&self, expr: &str) -> Result<Loaded> {
        self.load_after(async {
            self.eval(expr).await?;
            Ok(())
        })
        .await
    }

    /// The cookies the browser holds for `url`: `(name, value, httpOnly,
    /// sameSite)`.
    pub async fn cookies(&self, url: &str) -> Result<Vec<(String, String, bool, String)>> {
        let r = self
            .call("Network.getCookies", json!({ "urls": [url] }))
            .await?;
        Ok(r["cookies"]
            .as_array()
            .context("cookies")?
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["value"].as_str().unwrap_or_default().to_owned(),
                    c["httpOnly"].as_bool().unwrap_or(false),
                    c["sameSite"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Sets the viewport (CSS pixels); `mobile` emulates a phone.
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await?;
        let data = shot["data"].as_str().context("screenshot data")?;
        let png = nostr::base64::engine::general_purpose::STANDARD.decode(data)?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The URL of every request this tab made so far.
    pub fn requested_urls(&self) -> Vec<String> {
        self.browser
            .events_since(&self.session, "Network.requestWillBeSent", 0)
            .iter()
            .filter_map(|e| e["request"]["url"].as_str().map(str::to_owned))
            .collect()
    }
}
