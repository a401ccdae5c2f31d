//! `/` and `/@handle` as a person sees them, in headless Chromium.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use cairn_e2e::WsClient;
use cairn_identity::bundle::ProofBundle;
use cairn_testchain::TestChain;
use nostr::{EventBuilder, Keys};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::cdp::{Browser, Page};
use crate::fake_x::FakeX;
use crate::support::*;

const ALICE_UID: u64 = 1_047_412_980_948_713_472;
/// An X user id nobody bound on the test node.
const STRANGER_UID: u64 = 9_112_233;
/// The whole test, browser start and chain included.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// `$CARGO_TARGET_DIR/screenshots` (or the workspace's `target/screenshots`).
fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("screenshots")
}

/// Every request the tab made went to `origin`, and there was at least one
/// (the stylesheet), so the check cannot pass by seeing nothing.
fn assert_same_origin(page: &Page<'_>, origin: &str) -> Result<()> {
    let urls = page.requested_urls();
    ensure!(
        urls.iter().any(|u| u.contains("/assets/")),
        "the stylesheet was requested: {urls:?}"
    );
    let foreign: Vec<_> = urls
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")) && *u != origin)
        .collect();
    ensure!(foreign.is_empty(), "requests left the origin: {foreign:?}");
    Ok(())
}

/// What every page must have: language, viewport, one h1, labelled
/// inputs, the security headers, and no URL of another site in its HTML.
async fn assert_page_basics(page: &Page<'_>, loaded: &crate::cdp::Loaded) -> Result<()> {
    ensure!(page.text("document.documentElement.lang").await? == "en");
    let viewport = page
        .text("document.querySelector('meta[name=viewport]')?.content ?? ''")
        .await?;
    ensure!(viewport.contains("width=device-width"), "{viewport}");
    ensure!(page.eval("document.querySelectorAll('h1').length").await? == json!(1));
    let unlabelled = page
        .eval("[...document.querySelectorAll('input')].filter(i => i.labels.length === 0).length")
        .await?;
    ensure!(unlabelled == json!(0), "every input has a label");
    let csp = loaded
        .headers
        .get("content-security-policy")
        .context("CSP header")?;
    ensure!(csp.starts_with("default-src 'self'"), "{csp}");
    ensure!(csp.contains("frame-ancestors 'none'"), "{csp}");
    ensure!(
        loaded
            .headers
            .get("x-content-type-options")
            .map(String::as_str)
            == Some("nosniff")
    );
    ensure!(loaded.headers.get("referrer-policy").map(String::as_str) == Some("no-referrer"));
    let html = page.text("document.documentElement.outerHTML").await?;
    for scheme in ["http://", "https://", "//"] {
        let external = html
            .match_indices(&format!("src=\"{scheme}"))
            .chain(html.match_indices(&format!("href=\"{scheme}")))
            .count();
        ensure!(external == 0, "no src/href to another site ({scheme})");
    }
    ensure!(
        page.eval("document.scripts.length").await? == json!(0),
        "no scripts"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_pages_in_a_real_browser() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .map_err(|_| anyhow!("the browser test timed out after {TEST_TIMEOUT:?}"))?
}

async fn run() -> Result<()> {
    let shots = screenshot_dir();
    // Fail first, and clearly, when there is no browser (before the chain work).
    let browser = Browser::launch().await?;

    // A node whose witness holds a final binding for @alice_cairn.
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    let node = IdNode::start(&chain, &x, false).await?;
    node.fund(&chain, 200_000).await?;
    let alice = User::new(ALICE_UID, "alice_cairn");
    bind(&node, &x, &alice, 1).await?;
    node.close_epoch().await?;
    mine(&chain, CONFIRMATIONS).await?;
    node.sync().await?;
    let (status, api) = node.get("/identity/v1/handles/alice_cairn").await?;
    ensure!(
        status == StatusCode::OK && api["status"] == "final",
        "{api}"
    );
    let origin = node.base.clone();

    let page = browser.new_page().await?;
    page.viewport(1100, 900, false).await?;

    // Home page.
    let loaded = page.goto(&format!("{origin}/")).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    assert_page_basics(&page, &loaded).await?;
    let body = page.text("document.body.innerText").await?;
    let relay_url = node.node().ws_url();
    ensure!(body.contains(&relay_url), "the relay URL: {body}");
    ensure!(body.contains("Identity witness"), "{body}");
    ensure!(
        body.contains(&nostr::ToBech32::to_bech32(
            &node.service().witness_public_key()
        )?),
        "the witness key"
    );
    ensure!(
        !body.contains("Lightning address"),
        "payments are not enabled here, so not offered: {body}"
    );
    ensure!(page.text("document.title").await?.starts_with("Home"));
    page.screenshot(&shots.join("home.png")).await?;

    // A keyboard user: the first Tab reaches the skip link, then the form.
    page.tab().await?;
    ensure!(
        page.text("document.activeElement.className").await? == "skip",
        "the skip link takes the first Tab"
    );
    page.eval("document.getElementById('verify-handle').focus()")
        .await?;
    page.type_text("@Alice_Cairn").await?;
    // Submitting the form (no script on the page) leads to the handle's page.
    let loaded = page.submit_with_enter().await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    ensure!(page.text("location.pathname").await? == "/@alice_cairn");

    // The handle page of a final binding.
    assert_page_basics(&page, &loaded).await?;
    let status_line = page
        .text("document.getElementById('status').innerText")
        .await?;
    ensure!(
        status_line.to_lowercase().starts_with("final"),
        "{status_line}"
    );
    ensure!(
        status_line.contains(&format!("{CONFIRMATIONS} confirmations")),
        "{status_line}"
    );
    ensure!(
        page.text("document.getElementById('npub').innerText")
            .await?
            == alice.npub()
    );
    let history = page
        .eval("[...document.querySelectorAll('table.history tbody tr')].map(r => r.innerText)")
        .await?;
    let rows = history.as_array().context("history rows")?;
    ensure!(rows.len() == 1, "one operation: {history}");
    let row = rows[0].as_str().unwrap_or_default();
    ensure!(row.starts_with("bind"), "{row}");
    ensure!(row.contains("attested by this witness"), "{row}");
    ensure!(row.contains("final"), "{row}");
    let txid = api["anchor_txid"].as_str().context("anchor txid")?;
    ensure!(
        page.text("document.getElementById('anchor-txid').innerText")
            .await?
            == txid
    );
    let check = page
        .text("document.getElementById('node-check').innerText")
        .await?;
    ensure!(
        check.starts_with("Verified"),
        "the node's own check: {check}"
    );
    let command = page
        .text("document.getElementById('verify-command').innerText")
        .await?;
    let witness = nostr::ToBech32::to_bech32(&node.service().witness_public_key())?;
    ensure!(
        command
            == format!(
                "cairn verify --bundle alice_cairn.cairn-bundle --rpc-url http://127.0.0.1:18443 \
                 --rpc-cookie-file ~/.bitcoin/regtest/.cookie --min-confirmations \
                 {CONFIRMATIONS} --witness {witness}"
            ),
        "{command}"
    );
    page.screenshot(&shots.join("handle-final.png")).await?;
    page.viewport(390, 844, true).await?;
    // Wider content would widen the phone's layout viewport (and
    // `innerWidth` with it), so compare with the width set.
    let width = page.eval("document.documentElement.scrollWidth").await?;
    ensure!(
        width.as_u64().is_some_and(|w| w <= 390),
        "no sideways scrolling on a phone: {width}"
    );
    page.screenshot(&shots.join("handle-final-phone.png"))
        .await?;
    page.viewport(1100, 900, false).await?;

    // The download link gives a bundle that verifies against the chain.
    let href = page
        .text("document.querySelector('a[download]').getAttribute('href')")
        .await?;
    ensure!(href == "/@alice_cairn/bundle", "{href}");
    let bytes = reqwest::get(format!("{origin}{href}"))
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let bundle = ProofBundle::from_bytes(&bytes)?;
    let verified = verify_parsed(&chain, &node, bundle).await?;
    ensure!(verified.key == Some(alice.keys.public_key()));
    ensure!(verified.handle == "alice_cairn");

    // An unknown handle: the absence answer, proven for an X user id.
    let loaded = page.goto(&format!("{origin}/@nobody_here")).await?;
    ensure!(loaded.status == 404, "{loaded:?}");
    assert_page_basics(&page, &loaded).await?;
    let status_line = page
        .text("document.getElementById('status').innerText")
        .await?;
    ensure!(
        status_line.contains("no binding for @nobody_here"),
        "{status_line}"
    );
    page.eval("document.getElementById('x-uid').focus()")
        .await?;
    page.type_text(&STRANGER_UID.to_string()).await?;
    let loaded = page.submit_with_enter().await?;
    ensure!(loaded.status == 404, "{loaded:?}");
    ensure!(page.text("location.search").await? == format!("?x_uid={STRANGER_UID}"));
    let absence = page
        .text("document.getElementById('absence').innerText")
        .await?;
    ensure!(absence.starts_with("Proven absent"), "{absence}");
    ensure!(absence.contains(&STRANGER_UID.to_string()), "{absence}");
    let command = page
        .text("document.getElementById('absent-command').innerText")
        .await?;
    ensure!(
        command.starts_with(&format!("cairn verify --absent {STRANGER_UID} --node ")),
        "{command}"
    );
    page.screenshot(&shots.join("handle-absent.png")).await?;
    // Alice's id is not absent, whatever handle is asked.
    page.goto(&format!("{origin}/@nobody_here?x_uid={ALICE_UID}"))
        .await?;
    let absence = page
        .text("document.getElementById('absence').innerText")
        .await?;
    ensure!(absence.contains("has a binding on this node"), "{absence}");

    assert_same_origin(&page, &origin)?;

    // NIP-11 and WebSockets on `/` are as before.
    let http = reqwest::Client::new();
    let nip11 = http
        .get(format!("{origin}/"))
        .header("accept", "application/nostr+json")
        .send()
        .await?;
    ensure!(
        nip11.headers()["content-type"] == "application/nostr+json",
        "NIP-11 content type"
    );
    ensure!(nip11.headers()["access-control-allow-origin"] == "*");
    let doc: Value = nip11.json().await?;
    ensure!(
        doc["software"] == "cairn" && doc["supported_nips"].is_array(),
        "{doc}"
    );
    let plain = http.get(format!("{origin}/")).send().await?.text().await?;
    ensure!(plain.starts_with("This is a Cairn Nostr relay"), "{plain}");
    let mut ws = WsClient::connect(&relay_url).await?;
    let note =
        EventBuilder::text_note("hello from the web test").sign_with_keys(&Keys::generate())?;
    ws.publish(&note)
        .await?
        .assert_accepted("a note over the WebSocket at /");
    let back = ws
        .query_once(&[json!({ "ids": [note.id.to_hex()] })])
        .await?;
    ensure!(back.len() == 1 && back[0].id == note.id, "{back:?}");
    ws.close().await;

    // User text is escaped: a hostile x_uid comes back inert.
    let hostile = http
        .get(format!("{origin}/@nobody_here"))
        .query(&[("x_uid", "\"><script>alert(1)</script>")])
        .send()
        .await?;
    ensure!(hostile.status() == StatusCode::BAD_REQUEST);
    let html = hostile.text().await?;
    ensure!(!html.contains("<script>"), "{html}");
    ensure!(
        html.contains("&#34;&#62;&#60;script&#62;") || html.contains("&quot;&gt;&lt;script&gt;"),
        "{html}"
    );
    // Not a handle at all.
    let bad = http.get(format!("{origin}/@not-a-handle!")).send().await?;
    ensure!(bad.status() == StatusCode::BAD_REQUEST);

    browser.close().await?;
    node.finish().await?;
    chain.stop().await?;
    Ok(())
}
