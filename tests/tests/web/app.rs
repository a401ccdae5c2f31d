//! The owner's app (`/app/`) in headless Chromium: sign-in (wrong token
//! refused, rate limit, sign-out ends the session, CSRF and cross-origin
//! posts refused), then Messages between two nodes on loopback: Alice adds
//! Bob by `@handle` (bound to final on her node's witness on testchain) and
//! by npub, sends him a message through her outbox, and Bob's app shows it,
//! live, without a reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use cairn_e2e::{Backend, TestNode, WsClient};
use cairn_testchain::TestChain;
use nostr::nips::nip19::ToBech32;
use nostr::Keys;
use reqwest::header;
use serde_json::json;

use crate::cdp::{Browser, Loaded, Page};
use crate::fake_x::FakeX;
use crate::support::*;

const BOB_UID: u64 = 1_350_000_000_000_000_001;
/// The whole test, browser start and chain included.
const TEST_TIMEOUT: Duration = Duration::from_secs(420);
/// Longest wait for something the nodes do on their own (delivery, the
/// page's refresh).
const WAIT: Duration = Duration::from_secs(60);
/// Sign-in attempts an address has at once (`LOGIN_BURST` of the node).
const LOGIN_BURST: usize = 5;

/// `$CARGO_TARGET_DIR/screenshots` (or the workspace's `target/screenshots`),
/// as the public pages' test saves them.
pub(crate) fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("screenshots")
}

/// A secret key file, mode 0600, as `[outbox] key_file` wants it.
pub(crate) fn key_file(dir: &Path, name: &str, keys: &Keys) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, keys.secret_key().to_secret_hex())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

pub(crate) fn admin_token(data_dir: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(data_dir.join("admin.token"))
        .context("admin.token")?
        .trim()
        .to_owned())
}

/// Types `secret` into the sign-in form and submits it.
pub(crate) async fn sign_in(page: &Page<'_>, origin: &str, secret: &str) -> Result<Loaded> {
    let loaded = page.goto(&format!("{origin}/app/login")).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    page.eval("document.getElementById('secret').focus()")
        .await?;
    page.type_text(secret).await?;
    page.submit_with_enter().await
}

/// Polls `expr` (a string) on `page` until it contains `needle`.
pub(crate) async fn wait_for_text(page: &Page<'_>, expr: &str, needle: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = page.text(expr).await?;
        if text.contains(needle) {
            return Ok(text);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!("`{needle}` did not appear within {WAIT:?}: {text}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every request the tab made stayed on `origin` (and there were some).
pub(crate) fn assert_same_origin(page: &Page<'_>, origins: &[&str]) -> Result<()> {
    let urls = page.requested_urls();
    ensure!(urls.iter().any(|u| u.contains("/assets/")), "{urls:?}");
    let foreign: Vec<_> = urls
        .iter()
        .filter(|u| !origins.iter().any(|o| u.starts_with(&format!("{o}/"))))
        .collect();
    ensure!(foreign.is_empty(), "requests left the origin: {foreign:?}");
    Ok(())
}

/// The app page's headers: the CSP allows this origin's scripts only, and
/// nothing private is cached.
pub(crate) fn assert_app_headers(loaded: &Loaded) -> Result<()> {
    let csp = loaded
        .headers
        .get("content-security-policy")
        .context("CSP")?;
    ensure!(
        csp.starts_with("default-src 'self'; script-src 'self';"),
        "{csp}"
    );
    ensure!(!csp.contains("unsafe"), "{csp}");
    ensure!(
        loaded.headers.get("cache-control").map(String::as_str) == Some("no-store"),
        "{loaded:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_app_sign_in_and_messages_in_a_real_browser() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .map_err(|_| anyhow!("the app test timed out after {TEST_TIMEOUT:?}"))?
}

async fn run() -> Result<()> {
    let shots = screenshot_dir();
    let browser = Browser::launch().await?;

    // --- The rate limit, on a node of its own (nothing else signs in there) ---
    let plain = TestNode::start(&Backend::Sqlite).await?;
    let origin = plain.http_url();
    let page = browser.new_isolated_page().await?;
    page.viewport(1100, 900, false).await?;
    for i in 1..=LOGIN_BURST {
        let loaded = sign_in(&page, &origin, "not-the-token").await?;
        ensure!(loaded.status == 401, "attempt {i}: {loaded:?}");
    }
    let loaded = sign_in(&page, &origin, "not-the-token").await?;
    ensure!(
        loaded.status == 429,
        "attempt {}: {loaded:?}",
        LOGIN_BURST + 1
    );
    let retry: u64 = loaded
        .headers
        .get("retry-after")
        .context("Retry-After")?
        .parse()?;
    ensure!((1..=60).contains(&retry), "Retry-After {retry}");
    let error = page
        .text("document.getElementById('login-error').innerText")
        .await?;
    ensure!(
        error.contains("Too many sign-in attempts") && error.contains("seconds"),
        "{error}"
    );
    page.screenshot(&shots.join("app-login-rate-limited.png"))
        .await?;
    // Even the right token waits: the limit is on attempts.
    let loaded = sign_in(&page, &origin, &admin_token(plain.data_dir())?).await?;
    ensure!(loaded.status == 429, "{loaded:?}");

    // --- Two nodes: Bob's (outbox only), Alice's (witness + outbox) ---
    let keys_dir = tempfile::tempdir()?;
    let alice = Keys::generate();
    let bob = User::new(BOB_UID, "bob_cairn");
    let bob_key = key_file(keys_dir.path(), "bob.nsec", &bob.keys)?;
    let alice_key = key_file(keys_dir.path(), "alice.nsec", &alice)?;
    let bob_node = TestNode::start_with(&Backend::Sqlite, |s| {
        s.outbox.enabled = true;
        s.outbox.key_file = Some(bob_key.clone());
    })
    .await?;
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    let bob_ws = bob_node.ws_url();
    let alice_node = IdNode::start_tuned(&chain, &x, |s| {
        s.outbox.enabled = true;
        s.outbox.key_file = Some(alice_key.clone());
    })
    .await?;
    // @bob_cairn bound to Bob's key on Alice's witness, to final.
    alice_node.fund(&chain, 200_000).await?;
    bind(&alice_node, &x, &bob, 1).await?;
    alice_node.close_epoch().await?;
    mine(&chain, CONFIRMATIONS).await?;
    alice_node.sync().await?;
    let (_, api) = alice_node.get("/identity/v1/handles/bob_cairn").await?;
    ensure!(api["status"] == "final", "{api}");
    // Bob's node has published his inbox list (kind 10050) on itself.
    // Alice's node finds it in its own store: the list is copied there, as
    // kind 10050 lists spread to the relays people share.
    let mut ws = WsClient::connect(&bob_ws).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let list = loop {
        let found = ws
            .query_once(&[json!({"kinds": [10050], "authors": [bob.keys.public_key().to_hex()]})])
            .await?;
        if let Some(list) = found.into_iter().next() {
            break list;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "Bob's inbox list was not published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ws.close().await;
    let mut ws = WsClient::connect(&alice_node.node().ws_url()).await?;
    ws.publish(&list)
        .await?
        .assert_accepted("Bob's kind 10050 on Alice's relay");
    ws.close().await;

    // --- Alice signs in ---
    let a_origin = alice_node.base.clone();
    let a = browser.new_isolated_page().await?;
    a.viewport(1100, 900, false).await?;
    let loaded = a.goto(&format!("{a_origin}/app/messages")).await?;
    ensure!(
        a.text("location.pathname").await? == "/app/login",
        "signed out, the app leads to the sign-in page"
    );
    assert_app_headers(&loaded)?;
    ensure!(a.eval("document.querySelectorAll('h1').length").await? == json!(1));
    ensure!(
        a.eval("[...document.querySelectorAll('input:not([type=hidden])')].filter(i => i.labels.length === 0).length")
            .await?
            == json!(0),
        "every input has a label"
    );
    a.screenshot(&shots.join("app-login.png")).await?;
    let loaded = sign_in(&a, &a_origin, "0123456789abcdef").await?;
    ensure!(loaded.status == 401, "a wrong token: {loaded:?}");
    ensure!(a
        .text("document.getElementById('login-error').innerText")
        .await?
        .contains("not the admin token or the passphrase"));
    let loaded = sign_in(&a, &a_origin, &admin_token(&alice_node.settings.data_dir)?).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    ensure!(a.text("location.pathname").await? == "/app/messages");
    assert_app_headers(&loaded)?;
    let me = a.text("document.getElementById('me').innerText").await?;
    ensure!(me == alice.public_key().to_bech32()?, "{me}");
    let cookies = a.cookies(&format!("{a_origin}/app/")).await?;
    let (_, session_id, http_only, same_site) = cookies
        .iter()
        .find(|c| c.0 == "cairn_session")
        .cloned()
        .context("the session cookie")?;
    ensure!(http_only && same_site == "Strict", "{cookies:?}");
    ensure!(
        a.eval("document.cookie").await? == json!(""),
        "page scripts cannot read the session cookie"
    );
    a.screenshot(&shots.join("app-messages-empty.png")).await?;

    // A form without its CSRF token is refused, and changes nothing.
    let loaded = a
        .navigate_by(
            "(() => { const f = document.querySelector('form[action=\"/app/contacts\"]'); \
             f.querySelector('input[name=csrf]').remove(); \
             f.querySelector('#contact').value = '@bob_cairn'; f.requestSubmit(); })()",
        )
        .await?;
    ensure!(loaded.status == 403, "no CSRF token: {loaded:?}");
    ensure!(a
        .text("document.getElementById('refused').innerText")
        .await?
        .contains("security token"));
    // Another site's form, even with the right token, is refused too.
    let loaded = a.goto(&format!("{a_origin}/app/messages")).await?;
    ensure!(loaded.status == 200);
    ensure!(
        a.eval("document.getElementById('no-conversations') !== null")
            .await?
            == json!(true),
        "the refused form added nothing"
    );
    let csrf = a
        .text("document.querySelector('input[name=csrf]').value")
        .await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()?;
    let cross = http
        .post(format!("{a_origin}/app/contacts"))
        .header(header::COOKIE, format!("cairn_session={session_id}"))
        .header(header::ORIGIN, "http://evil.example")
        .form(&[("csrf", csrf.as_str()), ("contact", "@bob_cairn")])
        .send()
        .await?;
    ensure!(cross.status() == 403, "cross-origin: {}", cross.status());

    // --- Alice adds @bob_cairn: verified against her node's Bitcoin node ---
    a.eval("document.getElementById('contact').focus()").await?;
    a.type_text("@Bob_Cairn").await?;
    let loaded = a.submit_with_enter().await?;
    ensure!(
        loaded.status == 200,
        "adding @bob_cairn: {} {}",
        loaded.status,
        a.text("document.body.innerText").await?
    );
    let bob_npub = bob.npub();
    ensure!(a.text("location.pathname").await? == format!("/app/c/{bob_npub}"));
    let standing = a
        .text("document.getElementById('contact-standing').innerText")
        .await?;
    ensure!(
        standing.contains('✔') && standing.contains("@bob_cairn verified"),
        "{standing}"
    );
    ensure!(standing.contains("final"), "{standing}");
    ensure!(a.text("document.querySelector('h1').innerText").await? == "@bob_cairn");

    // --- Alice sends; the outbox delivers to Bob's inbox relay ---
    let first = "Hello Bob, from Alice's browser <b>not bold</b>";
    a.eval("document.getElementById('text').focus()").await?;
    a.type_text(first).await?;
    let loaded = a
        .navigate_by("document.querySelector('form[action$=\"/send\"]').requestSubmit()")
        .await?;
    ensure!(
        loaded.status == 200,
        "sending: {} {}",
        loaded.status,
        a.text("document.body.innerText").await?
    );
    let list = wait_for_text(
        &a,
        "document.getElementById('messages').innerText",
        "Delivered (1 of 1 relays)",
    )
    .await?;
    ensure!(
        list.contains(first),
        "the text, escaped, not markup: {list}"
    );
    ensure!(
        a.eval("document.querySelectorAll('#messages b').length")
            .await?
            == json!(0),
        "message text is never HTML"
    );
    ensure!(
        a.eval("document.scripts.length").await? == json!(1),
        "the app's one script"
    );
    a.screenshot(&shots.join("app-conversation-alice.png"))
        .await?;

    // --- Bob signs in on his node and finds Alice's message ---
    let b_origin = bob_node.http_url();
    let b = browser.new_isolated_page().await?;
    b.viewport(1100, 900, false).await?;
    let loaded = sign_in(&b, &b_origin, &admin_token(bob_node.data_dir())?).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    let alice_npub = alice.public_key().to_bech32()?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let loaded = b.goto(&format!("{b_origin}/app/messages")).await?;
        ensure!(loaded.status == 200, "{loaded:?}");
        let text = b
            .text("document.getElementById('conversations')?.innerText ?? ''")
            .await?;
        if text.contains("Hello Bob") {
            ensure!(text.contains("not in your contacts"), "{text}");
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "Alice's message did not reach Bob's app: {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.screenshot(&shots.join("app-messages-bob.png")).await?;
    // Bob adds Alice by npub and opens the conversation.
    b.eval("document.getElementById('contact').focus()").await?;
    b.type_text(&alice_npub).await?;
    let loaded = b.submit_with_enter().await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    ensure!(b.text("location.pathname").await? == format!("/app/c/{alice_npub}"));
    ensure!(b
        .text("document.getElementById('contact-standing').innerText")
        .await?
        .contains("added by key"));
    ensure!(b
        .text("document.getElementById('messages').innerText")
        .await?
        .contains(first));

    // --- Live: Alice sends again; Bob's open page shows it without a reload ---
    // A reload would start a new window object and drop this mark.
    b.eval("window.cairnTestMark = 42").await?;
    let second = "Second message, live";
    a.eval("document.getElementById('text').focus()").await?;
    a.type_text(second).await?;
    a.navigate_by("document.querySelector('form[action$=\"/send\"]').requestSubmit()")
        .await?;
    wait_for_text(&b, "document.getElementById('messages').innerText", second).await?;
    ensure!(
        b.eval("window.cairnTestMark").await? == json!(42),
        "Bob's page was not reloaded: the script refreshed the list"
    );
    b.screenshot(&shots.join("app-conversation-bob.png"))
        .await?;
    // A phone: one column, no sideways scrolling.
    b.viewport(390, 844, true).await?;
    let width = b.eval("document.documentElement.scrollWidth").await?;
    ensure!(width.as_u64().is_some_and(|w| w <= 390), "{width}");
    b.screenshot(&shots.join("app-conversation-bob-phone.png"))
        .await?;
    assert_same_origin(&b, &[&b_origin])?;
    assert_same_origin(&a, &[&a_origin])?;

    // --- Sign-out ends the session: the old cookie no longer works ---
    let loaded = a
        .navigate_by("document.querySelector('form[action=\"/app/logout\"] button').click()")
        .await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    ensure!(a.text("location.pathname").await? == "/app/login");
    ensure!(a
        .text("document.getElementById('notice').innerText")
        .await?
        .contains("signed out"));
    let old = http
        .get(format!("{a_origin}/app/messages"))
        .header(header::COOKIE, format!("cairn_session={session_id}"))
        .send()
        .await?;
    ensure!(
        old.status() == 303
            && old
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                == Some("/app/login"),
        "the old session cookie: {}",
        old.status()
    );
    let loaded = a.goto(&format!("{a_origin}/app/c/{bob_npub}")).await?;
    ensure!(loaded.status == 200);
    ensure!(a.text("location.pathname").await? == "/app/login");

    // A passphrase (what `cairn web passphrase` stores) signs in too; the
    // node reads it at each sign-in. A low scrypt cost keeps the test fast.
    let passphrase = "correct horse battery staple";
    std::fs::write(
        cairn_node::web::passphrase::passphrase_path(&alice_node.settings.data_dir),
        cairn_node::web::passphrase::hash(passphrase, 10)?,
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            cairn_node::web::passphrase::passphrase_path(&alice_node.settings.data_dir),
            std::fs::Permissions::from_mode(0o600),
        )?;
    }
    let loaded = sign_in(&a, &a_origin, passphrase).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    ensure!(a.text("location.pathname").await? == "/app/messages");
    ensure!(a
        .text("document.getElementById('conversations').innerText")
        .await?
        .contains("@bob_cairn"));

    browser.close().await?;
    alice_node.finish().await?;
    let _ = (plain, bob_node);
    Ok(())
}
