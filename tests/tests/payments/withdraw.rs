//! Issue 10, through the `cairn ln|wallet` command code and the admin API: a
//! channel open without Lightning funds points at `cairn ln funding-address`;
//! an open to a wrong address over an existing connection says so; a payment
//! that cannot be sent says why in CLI terms; after a cooperative close the
//! balance counts each sat once; `cairn ln withdraw` moves the Lightning
//! wallet's coins out (an amount, or `--all`) and the transactions confirm;
//! `cairn ln payments` prints text, and JSON with `--json`; a dust send names
//! the dust limit.

use anyhow::{ensure, Context, Result};
use bitcoin::Amount;
use cairn_payments::ldk_node::Event;
use cairn_payments::lightning::LightningNode;
use cairn_testchain::TestChain;
use serde_json::Value;

use crate::ln_support::next_event;
use crate::support::{
    ln_cmd as ln, mempool_nonempty, mine, poll, str_at, u64_at, wallet_cmd as wallet, PayNode,
    TEST_TIMEOUT,
};

const LN_FUNDING: u64 = 1_000_000;
const PAID: u64 = 30_000;

async fn balance(n: &PayNode) -> Result<Value> {
    n.get("/admin/v1/wallet/balance").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lightning_wallet_funding_withdrawal_and_clear_answers() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .context("test timed out")?
}

async fn run() -> Result<()> {
    let chain = TestChain::start().await?;
    let a = PayNode::start(&chain).await?;
    let b = PayNode::start(&chain).await?;
    let ln_a_payments = a.node.payments().context("A's payments")?;
    let ln_a: &LightningNode = ln_a_payments.lightning();
    let ln_b_payments = b.node.payments().context("B's payments")?;
    let ln_b: &LightningNode = ln_b_payments.lightning();
    let info_b = b.get("/admin/v1/lightning/info").await?;
    let b_id = str_at(&info_b, "/node_id")?.to_owned();
    let b_addr = str_at(&info_b, "/listening_address")?.to_owned();

    // No Lightning funds yet: the open says where to put some.
    let err = ln(&a, &["open", &b_id, &b_addr, "400000sat"])
        .await
        .expect_err("nothing to fund a channel with");
    let text = format!("{err:#}");
    ensure!(
        text.contains("cairn ln funding-address") && text.contains("0 sat spendable"),
        "{text}"
    );

    // Fund A's Lightning wallet at the address `cairn ln funding-address` gives.
    let funding: bitcoin::Address = ln(&a, &["funding-address"])
        .await?
        .trim()
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()?
        .assume_checked();
    chain.fund(&funding, Amount::from_sat(LN_FUNDING)).await?;
    poll("A's Lightning funds", &[&a], async || {
        let got = u64_at(&balance(&a).await?, "/lightning/spendable_onchain_sat")?;
        Ok((got == LN_FUNDING).then_some(()))
    })
    .await?;

    // The failed open connected A to B; an open naming a wrong port goes
    // over that connection, and says so.
    let (mut ev_a, mut ev_b) = (ln_a.subscribe(), ln_b.subscribe());
    let opened = ln(&a, &["open", &b_id, "127.0.0.1:1", "400000sat"]).await?;
    ensure!(
        opened.starts_with("opening: user_channel_id")
            && opened.contains("already connected")
            && opened.contains("127.0.0.1:1 was not tried"),
        "{opened}"
    );
    next_event("ChannelPending on A", &mut ev_a, &[], |e| {
        matches!(e, Event::ChannelPending { .. })
    })
    .await?;
    mempool_nonempty(&chain).await?;
    mine(&chain, 6).await?;
    next_event("ChannelReady on A", &mut ev_a, &[ln_a, ln_b], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    next_event("ChannelReady on B", &mut ev_b, &[ln_a, ln_b], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    poll("a usable channel", &[&a, &b], async || {
        let usable = |v: Vec<Value>| v.iter().any(|c| c["is_usable"] == true);
        let ok = usable(a.admin.get("/admin/v1/lightning/channels").await?)
            && usable(b.admin.get("/admin/v1/lightning/channels").await?);
        Ok(ok.then_some(()))
    })
    .await?;

    // B has nothing to send: the reason is the capacity, not "Failed to
    // send the given payment".
    let invoice = ln(&a, &["invoice", "10000sat", "-d", "too early"]).await?;
    let err = ln(&b, &["pay", &invoice]).await.expect_err("no capacity");
    let text = format!("{err:#}");
    ensure!(
        text.contains("insufficient capacity") && !text.contains("Failed to send"),
        "{text}"
    );
    // An invoice without an amount names the CLI's flag.
    let open_invoice = ln(&a, &["invoice"]).await?;
    let err = ln(&b, &["pay", &open_invoice])
        .await
        .expect_err("no amount");
    let text = format!("{err:#}");
    ensure!(
        text.contains("--amount") && !text.contains("amount_msat"),
        "{text}"
    );

    // A pays B through the commands; `ln payments` lists it as text, and as
    // JSON with --json.
    let invoice = ln(&b, &["invoice", &format!("{PAID}sat"), "-d", "lunch"]).await?;
    let paid = ln(&a, &["pay", &invoice]).await?;
    ensure!(paid.starts_with("paid: payment hash"), "{paid}");
    let listed = ln(&a, &["payments"]).await?;
    let line = listed
        .lines()
        .find(|l| l.contains("out") && l.contains("succeeded"))
        .with_context(|| format!("the payment in {listed}"))?;
    ensure!(
        line.contains("bolt11") && line.contains(&format!("{PAID} sat")) && line.contains("Z "),
        "{line}"
    );
    ensure!(
        !listed.trim_start().starts_with('['),
        "text, not JSON: {listed}"
    );
    let json: Value = serde_json::from_str(&ln(&a, &["payments", "--json"]).await?)?;
    ensure!(
        json.as_array().is_some_and(|l| l
            .iter()
            .any(|p| p["status"] == "succeeded" && p["amount_msat"] == PAID * 1_000)),
        "{json}"
    );
    poll("B's payment settled", &[], async || {
        Ok((u64_at(&balance(&b).await?, "/lightning/spendable_sat")? == PAID).then_some(()))
    })
    .await?;

    // Cooperative close: once the closing transaction confirms, B's 30_000
    // sat are on-chain and no longer also in the channels.
    let chans: Vec<Value> = b.admin.get("/admin/v1/lightning/channels").await?;
    let ucid = str_at(&chans[0], "/user_channel_id")?.to_owned();
    ln(&b, &["close", &ucid]).await?;
    next_event("ChannelClosed on A", &mut ev_a, &[ln_a, ln_b], |e| {
        matches!(e, Event::ChannelClosed { .. })
    })
    .await?;
    mempool_nonempty(&chain).await?;
    mine(&chain, 1).await?;
    poll("B's closing output on-chain", &[&a, &b], async || {
        let got = u64_at(&balance(&b).await?, "/lightning/spendable_onchain_sat")?;
        Ok((got == PAID).then_some(()))
    })
    .await?;
    for n in [&a, &b] {
        let v = balance(n).await?;
        assert_eq!(
            u64_at(&v, "/lightning/spendable_sat")?,
            0,
            "counted once: {v}"
        );
    }
    let shown = wallet(&b, &["balance"]).await?;
    ensure!(
        shown.contains("0 sat in channels")
            && shown.contains(&format!("{PAID} sat in its on-chain wallet")),
        "{shown}"
    );

    // B withdraws 10_000 sat to its own main wallet, A everything to its own.
    let main_b = str_at(&b.get("/admin/v1/wallet/address").await?, "/address")?.to_owned();
    let main_a = str_at(&a.get("/admin/v1/wallet/address").await?, "/address")?.to_owned();
    let err = ln(&b, &["withdraw", &main_b, "100sat"])
        .await
        .expect_err("dust");
    ensure!(format!("{err:#}").contains("dust limit"), "{err:#}");
    let sent = ln(&b, &["withdraw", &main_b, "10000sat", "--fee-rate", "2"]).await?;
    ensure!(sent.starts_with("sent: txid"), "{sent}");
    let on_a = u64_at(&balance(&a).await?, "/lightning/spendable_onchain_sat")?;
    let sent_all = ln(&a, &["withdraw", &main_a, "--all", "--json"]).await?;
    let txid_all = str_at(&serde_json::from_str(&sent_all)?, "/txid")?.to_owned();
    mempool_nonempty(&chain).await?;
    mine(&chain, 1).await?;
    poll("both withdrawals confirmed", &[&a, &b], async || {
        let (va, vb) = (balance(&a).await?, balance(&b).await?);
        let got_a = u64_at(&va, "/onchain/confirmed_sat")?;
        let ok = u64_at(&vb, "/onchain/confirmed_sat")? == 10_000
            && got_a > on_a - 1_000
            && got_a < on_a
            && u64_at(&va, "/lightning/total_onchain_sat")? == 0;
        Ok(ok.then_some(()))
    })
    .await?;
    let left_b = u64_at(&balance(&b).await?, "/lightning/total_onchain_sat")?;
    ensure!(
        left_b < PAID - 10_000 && left_b > PAID - 10_000 - 1_000,
        "B keeps the rest minus a small fee: {left_b}"
    );
    let history = wallet(&a, &["history"]).await?;
    ensure!(
        history.contains(&txid_all) && history.contains("block"),
        "{history}"
    );

    // The on-chain wallet: a dust send names the dust limit.
    let err = wallet(&b, &["send", &main_a, "100sat"])
        .await
        .expect_err("dust");
    ensure!(
        format!("{err:#}").contains("below the dust limit of 330 sat"),
        "{err:#}"
    );

    a.node.shutdown().await?;
    b.node.shutdown().await?;
    chain.stop().await?;
    Ok(())
}
