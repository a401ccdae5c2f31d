//! A payment attached to a message, in headless Chromium (issue 12): two
//! nodes with payments on testchain and a Lightning channel Alice → Bob.
//! Bob's node is the witness his `@bob` is bound on (final) and serves his
//! Lightning address (`[zaps] names = ["bob"]`); Alice adds `@bob` in her
//! app with Bob's node as the one that vouches for it (verified against her
//! Bitcoin node), sends him a message with 5,000 sat over Lightning, and
//! sees it as paid by her. Bob's open conversation shows it without a
//! reload, PAID by his node's checks, and his Lightning balance rose by
//! exactly 5,000 sat.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use bitcoin::Amount;
use cairn_node::cli::support::admin::AdminClient;
use cairn_payments::ldk_node::Event;
use cairn_testchain::TestChain;
use nostr::nips::nip19::ToBech32;
use nostr::Keys;
use serde_json::{json, Value};

use crate::app::{admin_token, key_file, screenshot_dir, sign_in, wait_for_text};
use crate::cdp::Browser;
use crate::fake_x::FakeX;
use crate::ln_support::next_event;
use crate::pay_support::{mempool_nonempty, payments_settings, poll, str_at, u64_at, PayNode};
use crate::support::{bind, identity_settings, IdNode, User};

const BOB_UID: u64 = 1_350_000_000_000_000_012;
/// The whole test: two Lightning nodes, a channel, the browser.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);
const LN_FUNDING: u64 = 1_000_000;
const CHANNEL: u64 = 400_000;
const PAY_SAT: u64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lightning_payment_attached_in_the_app_shows_paid_on_the_recipients_app() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .map_err(|_| anyhow!("the payment test timed out after {TEST_TIMEOUT:?}"))?
}

async fn lightning_balance(admin: &AdminClient) -> Result<u64> {
    let b: Value = admin.get("/admin/v1/wallet/balance").await?;
    u64_at(&b, "/lightning/spendable_sat")
}

async fn run() -> Result<()> {
    let shots = screenshot_dir();
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    let keys_dir = tempfile::tempdir()?;
    let alice = Keys::generate();
    let bob = User::new(BOB_UID, "bob");
    let alice_key = key_file(keys_dir.path(), "alice.nsec", &alice)?;
    let bob_key = key_file(keys_dir.path(), "bob.nsec", &bob.keys)?;

    // --- Bob's node: witness, payments, his Lightning address, his key ---
    let bob_dir = tempfile::tempdir()?;
    let mut settings = payments_settings(bob_dir.path(), &chain)?;
    settings.identity = identity_settings(bob_dir.path(), None, &chain, &x).identity;
    settings.zaps.names = vec!["bob".into()];
    settings.outbox.enabled = true;
    settings.outbox.key_file = Some(bob_key);
    let bob_node = IdNode::start_with(settings, bob_dir, None).await?;
    let bob_admin = AdminClient::new(&bob_node.base, &admin_token(bob_node.dir.path())?)?;

    // --- Alice's node: payments and her key (no witness of its own) ---
    let alice_dir = tempfile::tempdir()?;
    let mut settings = payments_settings(alice_dir.path(), &chain)?;
    settings.outbox.enabled = true;
    settings.outbox.key_file = Some(alice_key);
    let node = cairn_node::start(settings).await?;
    let admin = AdminClient::new(&node.http_url(), &admin_token(alice_dir.path())?)?;
    let alice_node = PayNode {
        node,
        admin,
        dir: alice_dir,
    };
    let alice_admin = &alice_node.admin;

    // --- @bob bound on Bob's witness, buried deeper than `cairn msg send` asks (6) ---
    bob_node.fund(&chain, 200_000).await?;
    bind(&bob_node, &x, &bob, 1).await?;
    bob_node.close_epoch().await?;
    crate::support::mine(&chain, 7).await?;
    bob_node.sync().await?;
    let (_, api) = bob_node.get("/identity/v1/handles/bob").await?;
    ensure!(api["status"] == "final", "{api}");

    // --- A channel Alice → Bob ---
    let funding: Value = alice_admin
        .get("/admin/v1/lightning/funding-address")
        .await?;
    let funding = str_at(&funding, "/address")?
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()?
        .assume_checked();
    chain.fund(&funding, Amount::from_sat(LN_FUNDING)).await?;
    poll("Alice's Lightning funds", &[&alice_node], async || {
        let b: Value = alice_admin.get("/admin/v1/wallet/balance").await?;
        Ok((u64_at(&b, "/lightning/spendable_onchain_sat")? == LN_FUNDING).then_some(()))
    })
    .await?;
    let alice_payments = alice_node.node.payments().context("Alice's payments")?;
    let bob_payments = bob_node.node().payments().context("Bob's payments")?;
    let (ln_alice, ln_bob) = (alice_payments.lightning(), bob_payments.lightning());
    let mut events = ln_alice.subscribe();
    let info: Value = bob_admin.get("/admin/v1/lightning/info").await?;
    alice_admin
        .post::<Value>(
            "/admin/v1/lightning/channels",
            &json!({
                "node_id": str_at(&info, "/node_id")?,
                "address": str_at(&info, "/listening_address")?,
                "amount_sat": CHANNEL,
            }),
        )
        .await?;
    mempool_nonempty(&chain).await?;
    crate::pay_support::mine(&chain, 6).await?;
    next_event("ChannelReady", &mut events, &[ln_alice, ln_bob], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    poll("a usable channel", &[&alice_node], async || {
        bob_admin
            .post::<Value>("/admin/v1/sync", &json!({}))
            .await?;
        let chans: Vec<Value> = alice_admin.get("/admin/v1/lightning/channels").await?;
        Ok(chans.iter().any(|c| c["is_usable"] == true).then_some(()))
    })
    .await?;
    let bob_before = lightning_balance(&bob_admin).await?;

    let browser = Browser::launch().await?;

    // --- Bob opens his conversation with Alice before she writes ---
    let b_origin = bob_node.base.clone();
    let alice_npub = alice.public_key().to_bech32()?;
    let b = browser.new_isolated_page().await?;
    b.viewport(1100, 900, false).await?;
    let loaded = sign_in(&b, &b_origin, &admin_token(bob_node.dir.path())?).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    let loaded = b.goto(&format!("{b_origin}/app/c/{alice_npub}")).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    ensure!(b
        .text("document.getElementById('messages').innerText")
        .await?
        .contains("No messages yet"));
    // A reload would start a new window object and drop this mark.
    b.eval("window.cairnTestMark = 12").await?;

    // --- Alice adds @bob, vouched for by Bob's node ---
    let a_origin = alice_node.node.http_url();
    let a = browser.new_isolated_page().await?;
    a.viewport(1100, 900, false).await?;
    let loaded = sign_in(&a, &a_origin, &admin_token(alice_node.dir.path())?).await?;
    ensure!(loaded.status == 200, "{loaded:?}");
    a.eval(&format!(
        "document.getElementById('node').value = {}",
        json!(b_origin)
    ))
    .await?;
    a.eval("document.getElementById('contact').focus()").await?;
    a.type_text("@bob").await?;
    let loaded = a.submit_with_enter().await?;
    ensure!(
        loaded.status == 200,
        "adding @bob: {} {}",
        loaded.status,
        a.text("document.body.innerText").await?
    );
    ensure!(a.text("location.pathname").await? == format!("/app/c/{}", bob.npub()));
    let standing = a
        .text("document.getElementById('contact-standing').innerText")
        .await?;
    ensure!(
        standing.contains('✔') && standing.contains("@bob verified"),
        "{standing}"
    );

    // An amount over the bound is refused, and nothing is paid.
    a.eval("document.getElementById('text').value = 'too much'")
        .await?;
    a.eval("document.getElementById('amount_sat').removeAttribute('max')")
        .await?;
    a.eval("document.getElementById('amount_sat').value = '100000000'")
        .await?;
    let loaded = a
        .navigate_by("document.querySelector('form[action$=\"/send\"]').requestSubmit()")
        .await?;
    ensure!(loaded.status == 400, "{loaded:?}");
    let error = a
        .text("document.getElementById('send-error').innerText")
        .await?;
    ensure!(error.contains("at most"), "{error}");
    ensure!(lightning_balance(&bob_admin).await? == bob_before);

    // --- Alice sends a message with 5,000 sat over Lightning ---
    let text = "Lunch money, from Alice's browser";
    a.eval("document.getElementById('text').focus()").await?;
    a.type_text(text).await?;
    a.eval(&format!(
        "document.getElementById('amount_sat').value = '{PAY_SAT}'"
    ))
    .await?;
    ensure!(a.text("document.getElementById('method').value").await? == "lightning");
    // What the form posts, to post it a second time below.
    let replay = a
        .text("new URLSearchParams(new FormData(document.querySelector('form[action$=\"/send\"]'))).toString()")
        .await?;
    ensure!(replay.contains("pay_token="), "{replay}");
    let loaded = a
        .navigate_by("document.querySelector('form[action$=\"/send\"]').requestSubmit()")
        .await?;
    ensure!(
        loaded.status == 200,
        "sending with a payment: {} {}",
        loaded.status,
        a.text("document.body.innerText").await?
    );
    let sent = wait_for_text(
        &a,
        "document.getElementById('messages').innerText",
        "Delivered",
    )
    .await?;
    ensure!(sent.contains(text), "{sent}");
    ensure!(
        sent.contains("You paid 5000 sat (Lightning)"),
        "the sender sees what she paid: {sent}"
    );
    ensure!(
        !sent.contains("PAID"),
        "only the recipient's node can show PAID: {sent}"
    );
    a.screenshot(&shots.join("app-pay-sent.png")).await?;

    // --- Bob's open page shows it, live and PAID ---
    let received = wait_for_text(
        &b,
        "document.getElementById('messages').innerText",
        "PAID 5000 sat",
    )
    .await?;
    ensure!(received.contains(text), "{received}");
    ensure!(received.contains("verified by your node"), "{received}");
    ensure!(
        b.eval("document.querySelector('#messages [data-payment]').dataset.payment")
            .await?
            == json!("paid")
    );
    ensure!(
        b.eval("window.cairnTestMark").await? == json!(12),
        "Bob's page was not reloaded: the script refreshed the list"
    );
    b.screenshot(&shots.join("app-pay-received.png")).await?;

    // --- The money is in Bob's channel ---
    let bob_after = lightning_balance(&bob_admin).await?;
    ensure!(
        bob_after == bob_before + PAY_SAT,
        "Bob's Lightning balance went from {bob_before} to {bob_after} sat"
    );

    // --- The same form posted again (a double click, a replay) pays nothing ---
    let status = a
        .eval(&format!(
            "fetch(document.querySelector('form[action$=\"/send\"]').action, {{method: 'POST', \
             headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, body: {}}}).then(r => r.status)",
            serde_json::to_string(&replay)?
        ))
        .await?;
    ensure!(
        status == json!(409),
        "the same payment form posted again: {status}"
    );
    ensure!(
        lightning_balance(&bob_admin).await? == bob_after,
        "a second POST of one payment form paid again"
    );

    browser.close().await?;
    bob_node.finish().await?;
    drop(alice_node);
    Ok(())
}
