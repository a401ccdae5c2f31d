//! The owner's Identity and Relay pages in headless Chromium, on testchain
//! with the fake X: Alice, whose key was written by `cairn key`'s own
//! function to `<data_dir>/owner.key` (no `[outbox] key_file`), gets the
//! text to post from the page, posts it (on the fake X), pastes the post's
//! URL, and the page follows her binding from pending to anchored to final
//! as blocks are mined, refreshing itself. The Relay page shows the open
//! connections, the kinds stored (one just published) and a rejection.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use cairn_e2e::WsClient;
use cairn_testchain::TestChain;
use nostr::nips::nip19::ToBech32;
use nostr::{EventBuilder, Keys, Kind};
use serde_json::json;

use crate::app::{
    admin_token, assert_app_headers, assert_same_origin, screenshot_dir, sign_in, wait_for_text,
};
use crate::cdp::Browser;
use crate::fake_x::{FakeX, Post};
use crate::support::*;

const ALICE_UID: u64 = 1_350_000_000_000_000_011;
/// The whole test, browser start and chain included.
const TEST_TIMEOUT: Duration = Duration::from_secs(420);
/// A kind nothing else in the test publishes.
const PUBLISHED_KIND: u16 = 30_078;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_binds_a_handle_and_reads_the_relay_in_a_real_browser() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .map_err(|_| anyhow!("the identity page test timed out after {TEST_TIMEOUT:?}"))?
}

async fn run() -> Result<()> {
    let shots = screenshot_dir();
    let browser = Browser::launch().await?;
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    let alice = Keys::generate();
    let mut key_path = None;
    let node = IdNode::start_tuned(&chain, &x, |s| {
        s.outbox.enabled = true;
        assert!(s.outbox.key_file.is_none());
        let path = cairn_node::cli::key::owner_key_path(s);
        cairn_node::cli::key::write_key(&path, &alice, false).expect("the owner's key");
        key_path = Some(path);
    })
    .await?;
    let key_path = key_path.context("key path")?;
    ensure!(key_path.ends_with("owner.key"), "{}", key_path.display());
    node.fund(&chain, 200_000).await?;
    let origin = node.base.clone();

    // --- Alice signs in and opens Identity from the navigation ---
    let page = browser.new_isolated_page().await?;
    page.viewport(1100, 900, false).await?;
    let loaded = sign_in(&page, &origin, &admin_token(&node.settings.data_dir)?).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    let loaded = page
        .navigate_by("document.querySelector('nav.app a[href=\"/app/identity\"]').click()")
        .await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    assert_app_headers(&loaded)?;
    ensure!(page.text("location.pathname").await? == "/app/identity");
    let me = page.text("document.getElementById('me').innerText").await?;
    ensure!(me == alice.public_key().to_bech32()?, "my key: {me}");
    ensure!(
        page.text("document.getElementById('id-status').dataset.status")
            .await?
            == "none"
    );
    let funding = page
        .text("document.getElementById('funding-address')?.innerText ?? ''")
        .await?;
    ensure!(
        funding.starts_with("bcrt1"),
        "the witness's address: {funding}"
    );
    let balance = page
        .text("document.getElementById('anchor-balance').innerText")
        .await?;
    ensure!(
        balance
            .trim_end_matches(" sat")
            .parse::<u64>()
            .is_ok_and(|sat| sat > 0),
        "the funded balance: {balance}"
    );
    ensure!(
        page.eval("[...document.querySelectorAll('input:not([type=hidden])')].filter(i => i.labels.length === 0).length")
            .await?
            == json!(0),
        "every input has a label"
    );

    // --- Step 1: the text to post ---
    let loaded = page
        .navigate_by("document.getElementById('get-challenge').click()")
        .await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    let text = page
        .text("document.getElementById('challenge-text').value")
        .await?;
    ensure!(text.contains(&me), "the text names my key: {text}");
    ensure!(
        page.eval("document.getElementById('copy-challenge').hidden")
            .await?
            == json!(false),
        "the copy button appears with the script"
    );
    ensure!(
        page.eval("document.getElementById('challenge-text').readOnly")
            .await?
            == json!(true)
    );
    page.screenshot(&shots.join("app-identity.png")).await?;

    // --- Step 2: Alice posts it on X and pastes the post's URL ---
    let post = Post::new(ALICE_UID, "Alice_Cairn", &text, unix_now(), 1);
    x.publish(&post);
    page.eval("document.getElementById('post-url').focus()")
        .await?;
    page.type_text(&format!("https://x.com/Alice_Cairn/status/{}", post.id))
        .await?;
    let loaded = page.submit_with_enter().await?;
    ensure!(
        loaded.status == 200,
        "binding: {} {}",
        loaded.status,
        page.text("document.body.innerText").await?
    );
    ensure!(page.text("location.pathname").await? == "/app/identity");
    ensure!(
        page.text("document.getElementById('id-status').dataset.status")
            .await?
            == "pending",
        "{}",
        page.text("document.body.innerText").await?
    );
    ensure!(page
        .text("document.getElementById('id-handle').innerText")
        .await?
        .eq_ignore_ascii_case("@alice_cairn"));
    let (_, api) = node.get("/identity/v1/handles/alice_cairn").await?;
    ensure!(
        api["npub"] == json!(me) && api["status"] == "pending",
        "{api}"
    );

    // --- The page follows it to anchored and final, by itself ---
    page.eval("window.cairnTestMark = 7").await?;
    node.close_epoch().await?;
    mine(&chain, 1).await?;
    node.sync().await?;
    wait_for_text(
        &page,
        "document.getElementById('id-status').innerText",
        "1 of 3 confirmations",
    )
    .await?;
    ensure!(
        page.text("document.getElementById('id-status').dataset.status")
            .await?
            == "anchored"
    );
    mine(&chain, CONFIRMATIONS - 1).await?;
    node.sync().await?;
    let status = wait_for_text(
        &page,
        "document.getElementById('id-status').dataset.status",
        "final",
    )
    .await?;
    ensure!(status == "final");
    ensure!(
        page.eval("window.cairnTestMark").await? == json!(7),
        "the status refreshed without a reload"
    );
    // A reload shows the history and the rotate and revoke forms.
    let loaded = page.goto(&format!("{origin}/app/identity")).await?;
    ensure!(loaded.status == 200);
    ensure!(page
        .text("document.getElementById('id-status').innerText")
        .await?
        .contains("Final"));
    ensure!(page
        .text("document.getElementById('id-history').innerText")
        .await?
        .contains("bind"));
    ensure!(
        page.eval("document.querySelector('form[action=\"/app/identity/revoke\"]') !== null")
            .await?
            == json!(true)
    );
    page.screenshot(&shots.join("app-identity-final.png"))
        .await?;
    // Revoking without ticking the box changes nothing.
    let loaded = page
        .navigate_by(
            "document.querySelector('form[action=\"/app/identity/revoke\"]').requestSubmit()",
        )
        .await?;
    ensure!(loaded.status == 400, "{loaded:?}");
    let (_, api) = node.get("/identity/v1/handles/alice_cairn").await?;
    ensure!(api["status"] == "final", "{api}");

    // --- The Relay page: connections, kinds stored, a rejection ---
    let mut ws = WsClient::connect(&node.node().ws_url()).await?;
    let event = EventBuilder::new(Kind::Custom(PUBLISHED_KIND), "app data")
        .tags([nostr::Tag::identifier("cairn-web-test")])
        .sign_with_keys(&Keys::generate())?;
    ws.publish(&event)
        .await?
        .assert_accepted("an event of a kind nothing else publishes");
    let mut forged = serde_json::to_value(&event)?;
    forged["content"] = json!("changed after signing");
    let answer = ws.publish_json(&forged).await?;
    ensure!(
        !answer.accepted && answer.message.starts_with("invalid"),
        "a forged event is refused: {answer:?}"
    );
    let loaded = page
        .navigate_by("document.querySelector('nav.app a[href=\"/app/relay\"]').click()")
        .await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    assert_app_headers(&loaded)?;
    let connections: u64 = page
        .text("document.getElementById('relay-connections').innerText")
        .await?
        .trim()
        .parse()?;
    ensure!(connections >= 1, "the open WebSocket: {connections}");
    let row = page
        .text(&format!(
            "document.querySelector('#relay-kinds tr[data-kind=\"{PUBLISHED_KIND}\"]')?.innerText ?? ''"
        ))
        .await?;
    ensure!(
        row.contains("addressable"),
        "the kind just published: {row}"
    );
    ensure!(
        row.split_whitespace().last() == Some("1"),
        "one such event: {row}"
    );
    ensure!(page
        .text("document.getElementById('relay-rejections')?.innerText ?? ''")
        .await?
        .contains("invalid"));
    ensure!(page
        .text("document.getElementById('relay-database').innerText")
        .await?
        .contains("iB"));
    page.screenshot(&shots.join("app-relay.png")).await?;
    assert_same_origin(&page, &[&origin])?;
    ws.close().await;

    browser.close().await?;
    node.finish().await?;
    Ok(())
}
