//! The owner's Wallet and Connections pages in headless Chromium, on a node
//! with `[payments] enabled` on testchain (the payments tests' `PayNode`):
//! the funded on-chain balance, a receive address for the network with its
//! QR code, then an NWC connection created in the app that answers the
//! off-the-shelf `nwc` client, and stops answering after it is revoked in
//! the app. A node without payments says so on both pages.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use bitcoin::address::NetworkUnchecked;
use bitcoin::{Address, Amount, Network};
use cairn_e2e::{Backend, TestNode};
use cairn_testchain::TestChain;
use nostr::nips::nip47::NostrWalletConnectURI;
use serde_json::json;

use crate::app::{admin_token, assert_app_headers, screenshot_dir, sign_in, wait_for_text};
use crate::cdp::{Browser, Page};
use crate::pay_support::{poll, u64_at, PayNode, WAIT};

/// The whole test, chain, node and browser included.
const TEST_TIMEOUT: Duration = Duration::from_secs(420);
/// What the test funds the node's on-chain wallet with.
const FUNDING_SAT: u64 = 150_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_and_nwc_connections_in_a_real_browser() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .map_err(|_| anyhow!("the wallet test timed out after {TEST_TIMEOUT:?}"))?
}

/// The page has one `h1` and no input without a label.
async fn assert_accessible(page: &Page<'_>) -> Result<()> {
    ensure!(page.eval("document.querySelectorAll('h1').length").await? == json!(1));
    let unlabelled = page
        .eval(
            "[...document.querySelectorAll('input:not([type=hidden]), textarea, select')]\
             .filter(i => i.labels.length === 0 && !i.getAttribute('aria-label')).map(i => i.id || i.name)",
        )
        .await?;
    ensure!(
        unlabelled == json!([]),
        "inputs without a label: {unlabelled}"
    );
    Ok(())
}

/// The QR code in the `#receive` section: an inline SVG with a name and
/// enough modules to hold the text.
async fn assert_qr(page: &Page<'_>) -> Result<()> {
    let qr = page
        .eval(
            "(() => { const s = document.querySelector('#receive figure.qr svg'); \
             return s ? { label: s.getAttribute('aria-label'), role: s.getAttribute('role'), \
             path: [...s.querySelectorAll('path')].map(p => (p.getAttribute('d') || '').length).reduce((a, b) => a + b, 0), \
             width: s.getBoundingClientRect().width } : null; })()",
        )
        .await?;
    ensure!(qr["role"] == "img", "a QR code SVG: {qr}");
    ensure!(qr["label"].as_str().is_some_and(|l| !l.is_empty()), "{qr}");
    ensure!(
        qr["path"].as_u64().unwrap_or(0) > 500,
        "QR modules drawn: {qr}"
    );
    ensure!(
        qr["width"].as_f64().unwrap_or(0.0) >= 100.0,
        "QR shown: {qr}"
    );
    Ok(())
}

async fn receive_text(page: &Page<'_>) -> Result<String> {
    page.text("document.getElementById('receive-text').value")
        .await
        .map(|t| t.trim().to_owned())
}

async fn run() -> Result<()> {
    let shots = screenshot_dir();
    let browser = Browser::launch().await?;

    // --- A node without payments says so ---
    let plain = TestNode::start(&Backend::Sqlite).await?;
    let origin = plain.http_url();
    let page = browser.new_isolated_page().await?;
    page.viewport(1100, 900, false).await?;
    let loaded = sign_in(&page, &origin, &admin_token(plain.data_dir())?).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    for path in ["/app/wallet", "/app/connections"] {
        let loaded = page.goto(&format!("{origin}{path}")).await?;
        ensure!(loaded.status == 200, "{path}: {loaded:?}");
        let why = page
            .text("document.getElementById('unavailable').innerText")
            .await?;
        ensure!(
            why.contains("Payments are off") && why.contains("[payments] enabled = true"),
            "{path}: {why}"
        );
    }

    // --- A node with payments, its wallet funded on testchain ---
    let chain = TestChain::start().await?;
    let node = PayNode::start(&chain).await?;
    let funding: serde_json::Value = node.get("/admin/v1/wallet/address").await?;
    let funding = funding["address"]
        .as_str()
        .context("an address")?
        .parse::<Address<NetworkUnchecked>>()?
        .require_network(Network::Regtest)?;
    chain.fund(&funding, Amount::from_sat(FUNDING_SAT)).await?;
    poll("the funded on-chain balance", &[&node], async || {
        let b = node.get("/admin/v1/wallet/balance").await?;
        Ok((u64_at(&b, "/onchain/confirmed_sat")? == FUNDING_SAT).then_some(()))
    })
    .await?;

    let origin = node.node.http_url();
    let page = browser.new_isolated_page().await?;
    page.viewport(1100, 1400, false).await?;
    let loaded = page.goto(&format!("{origin}/app/wallet")).await?;
    ensure!(
        page.text("location.pathname").await? == "/app/login",
        "signed out, the wallet leads to the sign-in page: {loaded:?}"
    );
    let loaded = sign_in(&page, &origin, &admin_token(node.dir.path())?).await?;
    ensure!(loaded.status == 200, "{loaded:?}");

    // --- Wallet: the balance, a new address with its QR code ---
    let loaded = page.goto(&format!("{origin}/app/wallet")).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    assert_app_headers(&loaded)?;
    assert_accessible(&page).await?;
    let confirmed = page
        .text("document.getElementById('onchain-confirmed').innerText")
        .await?;
    ensure!(confirmed == format!("{FUNDING_SAT} sat"), "{confirmed}");
    ensure!(
        page.text("document.getElementById('network').innerText")
            .await?
            == "regtest"
    );
    // The funding transaction is in the history.
    wait_for_text(
        &page,
        "document.getElementById('transactions').innerText",
        &format!("+{FUNDING_SAT} sat"),
    )
    .await?;
    // A form without its CSRF token changes nothing.
    let loaded = page
        .navigate_by(
            "(() => { const f = document.querySelector('form[action=\"/app/wallet/address\"]'); \
             f.querySelector('input[name=csrf]').remove(); f.requestSubmit(); })()",
        )
        .await?;
    ensure!(loaded.status == 403, "no CSRF token: {loaded:?}");
    let loaded = page.goto(&format!("{origin}/app/wallet")).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    let loaded = page
        .navigate_by("document.getElementById('new-address').closest('form').requestSubmit()")
        .await?;
    ensure!(
        loaded.status == 200,
        "a new address: {loaded:?} {}",
        page.text("document.body.innerText").await?
    );
    assert_app_headers(&loaded)?;
    let address = receive_text(&page).await?;
    let parsed = address
        .parse::<Address<NetworkUnchecked>>()
        .with_context(|| format!("an address: {address}"))?;
    ensure!(parsed.is_valid_for_network(Network::Regtest), "{address}");
    ensure!(address != funding.to_string(), "a fresh address each time");
    assert_qr(&page).await?;
    // Both paying forms carry one one-time token, which a first POST spends.
    let tokens = page
        .eval("[...document.querySelectorAll('form[action=\"/app/wallet/send\"] input[name=pay_token], form[action=\"/app/wallet/pay\"] input[name=pay_token]')].map(i => i.value)")
        .await?;
    let tokens = tokens.as_array().cloned().unwrap_or_default();
    ensure!(
        tokens.len() == 2
            && tokens[0] == tokens[1]
            && tokens[0].as_str().is_some_and(|t| t.len() == 64),
        "pay tokens: {tokens:?}"
    );
    page.screenshot(&shots.join("app-wallet.png")).await?;

    // --- Connections: create one in the app ---
    let loaded = page.goto(&format!("{origin}/app/connections")).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    assert_app_headers(&loaded)?;
    assert_accessible(&page).await?;
    ensure!(
        page.eval("document.getElementById('no-connections') !== null")
            .await?
            == json!(true)
    );
    page.eval(
        "(() => { document.getElementById('nwc-name').value = 'Browser test app'; \
         document.getElementById('nwc-budget').value = '10000'; \
         document.getElementById('nwc-max').value = '2000'; \
         document.getElementById('nwc-expires').value = '30d'; })()",
    )
    .await?;
    page.eval("document.getElementById('nwc-name').focus()")
        .await?;
    let loaded = page.submit_with_enter().await?;
    ensure!(
        loaded.status == 200,
        "creating a connection: {loaded:?} {}",
        page.text("document.body.innerText").await?
    );
    assert_app_headers(&loaded)?;
    ensure!(page.text("document.querySelector('h1').innerText").await? == "Connection created");
    let uri_text = receive_text(&page).await?;
    let uri = NostrWalletConnectURI::parse(&uri_text)
        .with_context(|| format!("a NWC URI on the page: {uri_text}"))?;
    let secret = uri.secret.to_secret_hex();
    assert_qr(&page).await?;
    page.screenshot(&shots.join("app-connection-created.png"))
        .await?;

    // The list shows it with its limits, and never its secret.
    let loaded = page.goto(&format!("{origin}/app/connections")).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    let html = page.text("document.documentElement.outerHTML").await?;
    ensure!(!html.contains(&secret), "the list shows no secret");
    let row = page
        .text("document.querySelector('#connections tbody tr').innerText")
        .await?;
    ensure!(
        row.contains("Browser test app")
            && row.contains("pay_invoice")
            && row.contains("get_balance")
            && row.contains("0 sat of 10000 sat monthly")
            && row.contains("2000 sat")
            && row.contains("active"),
        "{row}"
    );
    let id = page
        .text("document.querySelector('#connections tbody tr').dataset.id")
        .await?;

    // --- The nwc client uses it over the node's relay ---
    let client = nwc::NWC::new(uri.clone());
    let start = tokio::time::Instant::now();
    let msat = loop {
        match tokio::time::timeout(WAIT, client.get_balance()).await? {
            Ok(msat) => break msat,
            Err(e) if start.elapsed() < WAIT => eprintln!("nwc client not ready yet: {e}"),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let admin = node.get("/admin/v1/wallet/balance").await?;
    ensure!(
        msat == u64_at(&admin, "/lightning/spendable_sat")? * 1_000,
        "NWC says {msat} msat: {admin}"
    );
    page.screenshot(&shots.join("app-connections.png")).await?;

    // --- Revoked in the app, it stops working ---
    let loaded = page
        .navigate_by(&format!(
            "document.querySelector('form[action=\"/app/connections/{id}/revoke\"]').requestSubmit()"
        ))
        .await?;
    ensure!(
        loaded.status == 200,
        "revoking: {loaded:?} {}",
        page.text("document.body.innerText").await?
    );
    let notice = page
        .text("document.getElementById('notice').innerText")
        .await?;
    ensure!(
        notice.contains(&format!("Connection {id} is revoked")),
        "{notice}"
    );
    let state = page
        .text("document.querySelector('#connections tbody tr .state').innerText")
        .await?;
    ensure!(state == "revoked", "{state}");
    ensure!(
        page.eval(&format!(
            "document.querySelector('form[action=\"/app/connections/{id}/revoke\"]') === null"
        ))
        .await?
            == json!(true),
        "no revoke button for a revoked connection"
    );
    let refused = tokio::time::timeout(WAIT, client.get_balance())
        .await
        .context("the revoked connection's answer")?;
    ensure!(
        refused.is_err(),
        "a revoked connection still works: {refused:?}"
    );
    client.shutdown().await;
    Ok(())
}
