//! Two Cairn nodes on testchain, everything through the admin API: fund the
//! on-chain wallets and send between them, fund the Lightning wallets, open a
//! private channel, pay BOLT11 both ways, check the balances add up, give an
//! app an NWC connection with `cairn nwc new` and read the balance with the
//! `nwc` client over the node's own relay, revoke it, close cooperatively.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Amount};
use cairn_payments::ldk_node::Event;
use cairn_payments::lightning::LightningNode;
use cairn_testchain::TestChain;
use nostr::nips::nip47::NostrWalletConnectURI;
use serde_json::{json, Value};

use crate::ln_support::next_event;
use crate::support::{
    ln_cmd, mempool_nonempty, mine, nwc_cmd, poll, str_at, u64_at, wallet_cmd, PayNode,
    TEST_TIMEOUT, WAIT,
};

const ONCHAIN_FUNDING: u64 = 200_000;
const ONCHAIN_SEND: u64 = 50_000;
const LN_FUNDING: u64 = 1_000_000;
const CHANNEL: u64 = 400_000;

async fn address(n: &PayNode, path: &str) -> Result<Address> {
    let v = n.get(path).await?;
    Ok(str_at(&v, "/address")?
        .parse::<Address<bitcoin::address::NetworkUnchecked>>()?
        .assume_checked())
}

async fn balance(n: &PayNode) -> Result<Value> {
    n.get("/admin/v1/wallet/balance").await
}

/// Pays `invoice` from `payer` and checks the preimage hashes to the invoice's hash.
async fn pay(payer: &PayNode, invoice: &Value) -> Result<Value> {
    let paid = payer
        .post(
            "/admin/v1/lightning/pay",
            json!({ "invoice": str_at(invoice, "/invoice")? }),
        )
        .await?;
    ensure!(paid["status"] == "succeeded", "pay answered {paid}");
    let preimage: [u8; 32] = hex::decode(str_at(&paid, "/preimage")?)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("32-byte preimage"))?;
    assert_eq!(
        hex::encode(sha256::Hash::hash(&preimage).to_byte_array()),
        str_at(invoice, "/payment_hash")?
    );
    assert_eq!(paid["payment_hash"], invoice["payment_hash"]);
    Ok(paid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_pay_each_other_through_the_admin_api() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .context("test timed out")?
}

async fn run() -> Result<()> {
    let chain = TestChain::start().await?;
    let a = PayNode::start(&chain).await?;
    let b = PayNode::start(&chain).await?;
    let status = a.get("/admin/v1/status").await?;
    assert_eq!(status["payments"], "running");
    assert_eq!(status["network"], "regtest");
    // In-process handles, only to wait on ldk-node events (bounded).
    let ln_a_payments = a.node.payments().context("A's payments run")?;
    let ln_a: &LightningNode = ln_a_payments.lightning();
    let ln_b_payments = b.node.payments().context("B's payments run")?;
    let ln_b: &LightningNode = ln_b_payments.lightning();

    // --- on-chain: fund A, A pays B ---
    chain
        .fund(
            &address(&a, "/admin/v1/wallet/address").await?,
            Amount::from_sat(ONCHAIN_FUNDING),
        )
        .await?;
    poll("A's confirmed on-chain funds", &[&a], async || {
        Ok(
            (u64_at(&balance(&a).await?, "/onchain/confirmed_sat")? == ONCHAIN_FUNDING)
                .then_some(()),
        )
    })
    .await?;
    let to_b = address(&b, "/admin/v1/wallet/address").await?;
    let sent = a
        .post(
            "/admin/v1/wallet/send",
            json!({ "address": to_b.to_string(), "amount_sat": ONCHAIN_SEND, "fee_rate_sat_per_vb": 2 }),
        )
        .await?;
    let txid = str_at(&sent, "/txid")?.to_owned();
    mempool_nonempty(&chain).await?;
    mine(&chain, 1).await?;
    poll("B's confirmed on-chain payment", &[&a, &b], async || {
        Ok((u64_at(&balance(&b).await?, "/onchain/confirmed_sat")? == ONCHAIN_SEND).then_some(()))
    })
    .await?;
    let left = u64_at(&balance(&a).await?, "/onchain/confirmed_sat")?;
    ensure!(
        left < ONCHAIN_FUNDING - ONCHAIN_SEND && left > ONCHAIN_FUNDING - ONCHAIN_SEND - 1_000,
        "A keeps the change minus a small fee: {left}"
    );
    for (n, net) in [(&a, -(ONCHAIN_SEND as i64)), (&b, ONCHAIN_SEND as i64)] {
        let txs: Vec<Value> = n.admin.get("/admin/v1/wallet/transactions").await?;
        let tx = txs
            .iter()
            .find(|t| t["txid"] == txid.as_str())
            .context("the send is in the history")?;
        let got = tx["received_sat"].as_i64().unwrap_or(0) - tx["sent_sat"].as_i64().unwrap_or(0);
        if net > 0 {
            assert_eq!(got, net);
        } else {
            ensure!(got < net, "A's net includes the fee: {got}");
        }
        assert!(tx["confirmation_height"].is_u64());
    }
    let history = wallet_cmd(&b, &["history"]).await?;
    assert!(
        history.contains(&txid) && history.contains("+50000 sat"),
        "{history}"
    );

    // --- Lightning: fund both Lightning wallets, A opens a channel to B ---
    for n in [&a, &b] {
        chain
            .fund(
                &address(n, "/admin/v1/lightning/funding-address").await?,
                Amount::from_sat(LN_FUNDING),
            )
            .await?;
    }
    poll("Lightning on-chain funds", &[&a, &b], async || {
        let ok = u64_at(&balance(&a).await?, "/lightning/spendable_onchain_sat")? == LN_FUNDING
            && u64_at(&balance(&b).await?, "/lightning/spendable_onchain_sat")? == LN_FUNDING;
        Ok(ok.then_some(()))
    })
    .await?;
    let info_b = b.get("/admin/v1/lightning/info").await?;
    let shown = ln_cmd(&b, &["info"]).await?;
    assert!(shown.contains(str_at(&info_b, "/node_id")?), "{shown}");
    let (mut ev_a, mut ev_b) = (ln_a.subscribe(), ln_b.subscribe());
    let opened = a
        .post(
            "/admin/v1/lightning/channels",
            json!({
                "node_id": str_at(&info_b, "/node_id")?,
                "address": str_at(&info_b, "/listening_address")?,
                "amount_sat": CHANNEL,
            }),
        )
        .await?;
    let ucid = str_at(&opened, "/user_channel_id")?.to_owned();
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
    poll("a usable channel on both sides", &[&a, &b], async || {
        let usable = |v: Vec<Value>| v.iter().any(|c| c["is_usable"] == true);
        let ok = usable(a.admin.get("/admin/v1/lightning/channels").await?)
            && usable(b.admin.get("/admin/v1/lightning/channels").await?);
        Ok(ok.then_some(()))
    })
    .await?;
    let chans: Vec<Value> = a.admin.get("/admin/v1/lightning/channels").await?;
    assert_eq!(chans.len(), 1);
    assert_eq!(chans[0]["user_channel_id"], ucid.as_str());
    assert_eq!(chans[0]["channel_value_sat"], CHANNEL);
    assert_eq!(chans[0]["is_announced"], false);

    // --- BOLT11 both ways ---
    let inv = b
        .post(
            "/admin/v1/lightning/invoices",
            json!({ "amount_msat": 30_000_000, "description": "lunch" }),
        )
        .await?;
    // An amount_msat that contradicts the invoice's amount: 400, nothing paid.
    let refused = a
        .admin
        .post::<Value>(
            "/admin/v1/lightning/pay",
            &json!({ "invoice": str_at(&inv, "/invoice")?, "amount_msat": 29_000_000 }),
        )
        .await
        .unwrap_err();
    let refused = refused
        .downcast_ref::<cairn_node::cli::support::admin::AdminError>()
        .context("an API error")?;
    assert_eq!(refused.status, 400);
    assert!(refused.message.contains("differs"), "{}", refused.message);
    let listed: Vec<Value> = a.admin.get("/admin/v1/lightning/payments").await?;
    assert!(
        listed
            .iter()
            .all(|p| p["payment_hash"] != inv["payment_hash"]),
        "{listed:?}"
    );
    pay(&a, &inv).await?;
    let hash = str_at(&inv, "/payment_hash")?;
    let on_b = b
        .get(&format!("/admin/v1/lightning/payments/{hash}"))
        .await?;
    assert_eq!(on_b["direction"], "inbound");
    assert_eq!(on_b["status"], "succeeded");
    assert_eq!(on_b["amount_msat"], 30_000_000);
    // B can spend what it received once the HTLC is irrevocably settled.
    poll("B's outbound capacity", &[], async || {
        let chans: Vec<Value> = b.admin.get("/admin/v1/lightning/channels").await?;
        Ok(chans
            .first()
            .is_some_and(|c| c["outbound_capacity_msat"].as_u64() >= Some(10_000_000))
            .then_some(()))
    })
    .await?;
    let inv = a
        .post(
            "/admin/v1/lightning/invoices",
            json!({ "amount_msat": 10_000_000, "description": "change" }),
        )
        .await?;
    pay(&b, &inv).await?;
    // Paying the same invoice again is refused, not paid twice.
    let again = b
        .admin
        .post::<Value>(
            "/admin/v1/lightning/pay",
            &json!({ "invoice": str_at(&inv, "/invoice")? }),
        )
        .await;
    ensure!(again.is_err(), "a second payment of one invoice: {again:?}");

    // Direct channel, no routing fee: B holds exactly 20_000 sat; A funded
    // the channel, so it alone pays the commitment fee and anchors.
    let b_ln = u64_at(&balance(&b).await?, "/lightning/spendable_sat")?;
    assert_eq!(b_ln, 20_000);
    let a_ln = u64_at(&balance(&a).await?, "/lightning/spendable_sat")?;
    ensure!(
        a_ln < CHANNEL - 20_000 && a_ln > CHANNEL - 20_000 - 10_000,
        "A's Lightning balance {a_ln}"
    );
    let listed: Vec<Value> = a.admin.get("/admin/v1/lightning/payments").await?;
    let bolt11: Vec<(&Value, &Value)> = listed
        .iter()
        .filter(|p| p["kind"] == "bolt11")
        .map(|p| (&p["direction"], &p["amount_msat"]))
        .collect();
    assert_eq!(bolt11.len(), 2, "{listed:?}");
    let out = wallet_cmd(&b, &["balance"]).await?;
    assert!(out.contains("20000 sat in channels"), "{out}");
    // `cairn ln invoice` + `cairn ln pay`: A pays B 1000 sat through the commands.
    let bolt11 = ln_cmd(&b, &["invoice", "1000sat", "-d", "cli"]).await?;
    assert!(bolt11.starts_with("lnbcrt10u"), "{bolt11}");
    let paid = ln_cmd(&a, &["pay", &bolt11]).await?;
    assert!(paid.starts_with("paid: payment hash"), "{paid}");
    poll("B's 1000 sat from the CLI payment", &[], async || {
        Ok((u64_at(&balance(&b).await?, "/lightning/spendable_sat")? == 21_000).then_some(()))
    })
    .await?;
    // BOLT12: `cairn ln offer` on B, paid by A through /pay-offer.
    let offer = ln_cmd(&b, &["offer", "5000sat", "-d", "coffee"]).await?;
    assert!(offer.starts_with("lno1"), "{offer}");
    let paid = a
        .post(
            "/admin/v1/lightning/pay-offer",
            json!({ "offer": offer, "payer_note": "thanks" }),
        )
        .await?;
    assert_eq!(paid["status"], "succeeded", "{paid}");
    assert_eq!(paid["amount_msat"], 5_000_000);
    poll("B's 5000 sat from the offer", &[], async || {
        Ok((u64_at(&balance(&b).await?, "/lightning/spendable_sat")? == 26_000).then_some(()))
    })
    .await?;
    let out = wallet_cmd(&b, &["balance"]).await?;
    assert!(out.contains("26000 sat in channels"), "{out}");

    // --- NWC: `cairn nwc new`, the nwc client reads A's balance via A's relay ---
    let created = nwc_cmd(
        &a,
        &[
            "new",
            "--name",
            "test app",
            "--budget",
            "10000sat/month",
            "--max",
            "2000sat",
            "--permissions",
            "pay_invoice,get_balance",
            "--expires",
            "30d",
        ],
    )
    .await?;
    let uri = created
        .lines()
        .find(|l| l.starts_with("nostr+walletconnect://"))
        .context("the URI is printed")?;
    let uri = NostrWalletConnectURI::parse(uri)?;
    // The URI's secret is not kept in the node's NWC database.
    let nwc_db = std::fs::read(a.dir.path().join(cairn_payments::nwc::STORE_FILE_NAME))?;
    let secret = uri.secret.to_secret_hex();
    assert!(!nwc_db.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert_eq!(
        uri.relays
            .first()
            .map(|r| r.to_string().trim_end_matches('/').to_owned()),
        Some(a.node.ws_url())
    );
    let listed = nwc_cmd(&a, &["list"]).await?;
    assert!(
        listed.contains("test app")
            && listed.contains("[pay_invoice,get_balance]")
            && listed.contains("budget 0/10000 sat monthly")
            && listed.contains("max 2000 sat"),
        "{listed}"
    );
    assert!(!listed.contains("secret"), "list never shows URIs");
    let id = listed
        .split_whitespace()
        .next()
        .context("an id")?
        .to_owned();
    let app = nwc::NWC::new(uri);
    // The client connects on its first call and may give up while connecting.
    // The balance moves by a few sat while the last commitment update
    // settles, so both readings are taken until they agree (bounded).
    let start = Instant::now();
    loop {
        match tokio::time::timeout(WAIT, app.get_balance()).await? {
            Ok(msat) => {
                let admin_sat = u64_at(&balance(&a).await?, "/lightning/spendable_sat")?;
                if msat == admin_sat * 1_000 {
                    ensure!(msat > 0);
                    break;
                }
                ensure!(
                    start.elapsed() < WAIT,
                    "NWC says {msat} msat, the admin API {admin_sat} sat"
                );
            }
            Err(e) if start.elapsed() < WAIT => eprintln!("nwc client not ready yet: {e}"),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nwc_cmd(&a, &["revoke", &id]).await?;
    let refused = tokio::time::timeout(WAIT, app.get_balance()).await?;
    ensure!(
        refused.is_err(),
        "a revoked connection still works: {refused:?}"
    );
    app.shutdown().await;

    // --- cooperative close, initiated by B ---
    let on_a_before = u64_at(&balance(&a).await?, "/lightning/total_onchain_sat")?;
    let chans_b: Vec<Value> = b.admin.get("/admin/v1/lightning/channels").await?;
    let ucid_b = chans_b[0]["user_channel_id"].as_str().context("ucid")?;
    b.post(
        &format!("/admin/v1/lightning/channels/{ucid_b}/close"),
        json!({ "force": false }),
    )
    .await?;
    next_event("ChannelClosed on A", &mut ev_a, &[ln_a, ln_b], |e| {
        matches!(e, Event::ChannelClosed { .. })
    })
    .await?;
    next_event("ChannelClosed on B", &mut ev_b, &[ln_a, ln_b], |e| {
        matches!(e, Event::ChannelClosed { .. })
    })
    .await?;
    mine(&chain, 1).await?;
    poll("closing outputs on-chain", &[&a, &b], async || {
        let ok = u64_at(&balance(&b).await?, "/lightning/total_onchain_sat")?
            == LN_FUNDING + 26_000
            && u64_at(&balance(&a).await?, "/lightning/total_onchain_sat")? > on_a_before;
        Ok(ok.then_some(()))
    })
    .await?;
    let total = u64_at(&balance(&a).await?, "/lightning/total_onchain_sat")?
        + u64_at(&balance(&b).await?, "/lightning/total_onchain_sat")?;
    ensure!(
        total < 2 * LN_FUNDING && total > 2 * LN_FUNDING - 10_000,
        "everything but the open and close fees comes back: {total}"
    );
    let left: Vec<Value> = a.admin.get("/admin/v1/lightning/channels").await?;
    assert!(left.is_empty());

    a.node.shutdown().await?;
    b.node.shutdown().await?;
    chain.stop().await?;
    Ok(())
}
