//! Two Lightning nodes (two data dirs, two seeds) on testchain: fund their
//! on-chain wallets, open a private channel, pay BOLT11 both ways, pay a BOLT12
//! offer, close cooperatively (balances add up) and by force; events are
//! recorded once and survive a restart.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Amount};
use cairn_payments::lightning::{InvoiceDescription, LightningNode, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_testchain::TestChain;
use ldk_node::payment::{PaymentDirection, PaymentKind, PaymentStatus};
use ldk_node::Event;
use support::{ln_node, mempool_nonempty, next_event, sync_until, WAIT};
use tokio::sync::broadcast;

const TEST_TIMEOUT: Duration = Duration::from_secs(300);
const FUNDING: u64 = 1_000_000;
const CHANNEL: u64 = 400_000;

/// A temporary data directory, kept (and printed) when `CAIRN_KEEP_TEST_DIRS`
/// is set so that ldk-node's logs can be read after a failure.
struct TestDir {
    path: std::path::PathBuf,
    _guard: Option<tempfile::TempDir>,
}

impl TestDir {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        if std::env::var_os("CAIRN_KEEP_TEST_DIRS").is_some() {
            let path = dir.keep();
            eprintln!("test data dir: {}", path.display());
            return Ok(Self { path, _guard: None });
        }
        Ok(Self {
            path: dir.path().to_path_buf(),
            _guard: Some(dir),
        })
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

async fn mine(chain: &TestChain, n: u32) -> Result<()> {
    let to = chain.internal_address().await?;
    chain.mine(n, &to).await?;
    Ok(())
}

async fn fund(chain: &TestChain, node: &LightningNode) -> Result<()> {
    let addr: Address = node.funding_address()?;
    chain.fund(&addr, Amount::from_sat(FUNDING)).await?;
    Ok(())
}

/// Two started nodes with a confirmed, usable private channel A → B.
struct Pair {
    chain: TestChain,
    dir_a: TestDir,
    _dir_b: TestDir,
    a: LightningNode,
    b: LightningNode,
    ev_a: broadcast::Receiver<Event>,
    ev_b: broadcast::Receiver<Event>,
    ucid: ldk_node::UserChannelId,
}

async fn open_pair() -> Result<Pair> {
    let chain = TestChain::start().await?;
    let dir_a = TestDir::new()?;
    let dir_b = TestDir::new()?;
    let a = ln_node(dir_a.path(), &chain)?;
    let b = ln_node(dir_b.path(), &chain)?;
    ensure!(a.node_id() != b.node_id(), "two seeds, two node ids");
    a.start()?;
    b.start()?;
    let mut ev_a = a.subscribe();
    let mut ev_b = b.subscribe();

    // Fund both on-chain wallets.
    fund(&chain, &a).await?;
    fund(&chain, &b).await?;
    sync_until("on-chain funds", &[&a, &b], || {
        a.balances().spendable_onchain_balance_sats == FUNDING
            && b.balances().spendable_onchain_balance_sats == FUNDING
    })
    .await?;

    // Open a private channel A → B and confirm it with 6 blocks.
    let b_addr = b.listening_address().context("B listens")?;
    let ucid = a.open_channel(b.node_id(), b_addr, CHANNEL, None)?;
    next_event("ChannelPending on A", &mut ev_a, &[], |e| {
        matches!(e, Event::ChannelPending { .. })
    })
    .await?;
    // The funding transaction must reach the mempool before the blocks.
    mempool_nonempty(&chain).await?;
    mine(&chain, 6).await?;
    next_event("ChannelReady on A", &mut ev_a, &[&a, &b], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    next_event("ChannelReady on B", &mut ev_b, &[&a, &b], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    sync_until("usable channel", &[&a, &b], || {
        a.list_channels().iter().any(|c| c.is_usable)
            && b.list_channels().iter().any(|c| c.is_usable)
    })
    .await?;
    let chan = &a.list_channels()[0];
    assert_eq!(chan.channel_value_sats, CHANNEL);
    assert!(!chan.is_announced);
    assert_eq!(chan.user_channel_id, ucid);

    Ok(Pair {
        chain,
        dir_a,
        _dir_b: dir_b,
        a,
        b,
        ev_a,
        ev_b,
        ucid,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_open_pay_both_ways_and_close() -> Result<()> {
    bounded(async {
        let Pair {
            chain,
            dir_a,
            _dir_b,
            a,
            b,
            mut ev_a,
            mut ev_b,
            ..
        } = open_pair().await?;

        // A pays B 30_000 sat with a text invoice. (ldk-node's acceptor side
        // keeps LDK's default of at most 10% of the channel in flight towards
        // it, so B cannot receive more than 40_000 sat in one HTLC here.)
        let inv = b.receive_bolt11(
            Some(30_000_000),
            &InvoiceDescription::Text("lunch".into()),
            DEFAULT_INVOICE_EXPIRY_SECS,
        )?;
        let pid = a.pay_bolt11(&inv)?;
        next_event("PaymentReceived on B", &mut ev_b, &[], |e| {
            matches!(
                e,
                Event::PaymentReceived {
                    amount_msat: 30_000_000,
                    ..
                }
            )
        })
        .await?;
        next_event(
            "PaymentSuccessful on A",
            &mut ev_a,
            &[],
            |e| matches!(e, Event::PaymentSuccessful { payment_id: Some(p), .. } if *p == pid),
        )
        .await?;
        let paid = a.payment(&pid).context("payment recorded")?;
        assert_eq!(paid.status, PaymentStatus::Succeeded);
        assert_eq!(paid.direction, PaymentDirection::Outbound);

        // B can spend what it received only once the HTLC is irrevocably
        // settled on both commitments.
        sync_until("B's outbound capacity", &[], || {
            b.list_channels()
                .first()
                .is_some_and(|c| c.next_outbound_htlc_limit_msat >= 10_000_000)
        })
        .await?;

        // B pays A 10_000 sat with a description-hash invoice (as zaps use).
        let hash = sha256::Hash::hash(b"{\"kind\":9734}");
        let inv = a.receive_bolt11(
            Some(10_000_000),
            &InvoiceDescription::Hash(hash),
            DEFAULT_INVOICE_EXPIRY_SECS,
        )?;
        assert!(inv.to_string().starts_with("lnbcrt100u"));
        let pid_b = b.pay_bolt11(&inv)?;
        next_event(
            "PaymentSuccessful on B",
            &mut ev_b,
            &[],
            |e| matches!(e, Event::PaymentSuccessful { payment_id: Some(p), .. } if *p == pid_b),
        )
        .await?;
        next_event("PaymentReceived on A", &mut ev_a, &[], |e| {
            matches!(
                e,
                Event::PaymentReceived {
                    amount_msat: 10_000_000,
                    ..
                }
            )
        })
        .await?;

        // Direct channel: no routing fee; B holds exactly what it received.
        let b_ln = b.balances().total_lightning_balance_sats;
        assert_eq!(b_ln, 20_000);
        let a_ln = a.balances().total_lightning_balance_sats;
        // A funded the channel, so A alone pays the commitment fee and anchors.
        ensure!(
            a_ln < CHANNEL - 20_000 && a_ln > CHANNEL - 20_000 - 10_000,
            "A's Lightning balance {a_ln}"
        );
        // ldk-node also lists on-chain payments; two BOLT11 ones on each side.
        let bolt11 = |n: &LightningNode| {
            n.list_payments()
                .into_iter()
                .filter(|p| matches!(p.kind, PaymentKind::Bolt11 { .. }))
                .map(|p| (p.direction, p.status, p.amount_msat))
                .collect::<Vec<_>>()
        };
        let mut on_a = bolt11(&a);
        on_a.sort_by_key(|p| p.2);
        assert_eq!(
            on_a,
            vec![
                (
                    PaymentDirection::Inbound,
                    PaymentStatus::Succeeded,
                    Some(10_000_000)
                ),
                (
                    PaymentDirection::Outbound,
                    PaymentStatus::Succeeded,
                    Some(30_000_000)
                ),
            ]
        );
        assert_eq!(bolt11(&b).len(), 2);

        // Cooperative close, initiated by B.
        let on_a_before = a.balances().total_onchain_balance_sats;
        b.close_channel(&b.list_channels()[0].user_channel_id, a.node_id())?;
        next_event("ChannelClosed on A", &mut ev_a, &[&a, &b], |e| {
            matches!(e, Event::ChannelClosed { .. })
        })
        .await?;
        next_event("ChannelClosed on B", &mut ev_b, &[&a, &b], |e| {
            matches!(e, Event::ChannelClosed { .. })
        })
        .await?;
        mine(&chain, 1).await?;
        sync_until("closing outputs on-chain", &[&a, &b], || {
            b.balances().total_onchain_balance_sats == FUNDING + 20_000
                && a.balances().total_onchain_balance_sats > on_a_before
        })
        .await?;
        let total =
            a.balances().total_onchain_balance_sats + b.balances().total_onchain_balance_sats;
        // Everything minus the open and close fees (a few thousand sat at most).
        ensure!(
            total < 2 * FUNDING && total > 2 * FUNDING - 10_000,
            "on-chain total {total}"
        );
        assert!(a.list_channels().is_empty() && b.list_channels().is_empty());

        // Every event was recorded exactly once.
        let handled = a.handled_events()?;
        let kinds: Vec<&str> = handled.iter().map(|h| h.kind.as_str()).collect();
        for k in [
            "ChannelPending",
            "ChannelReady",
            "PaymentSuccessful",
            "PaymentReceived",
            "ChannelClosed",
        ] {
            assert_eq!(
                kinds.iter().filter(|x| **x == k).count(),
                1,
                "{k} in {kinds:?}"
            );
        }

        // Restart A: nothing is handled twice, the payments are still known.
        a.stop().await?;
        drop(a);
        let a = ln_node(dir_a.path(), &chain)?;
        a.start()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(a.handled_events()?.len(), handled.len());
        assert_eq!(
            a.payment(&pid).map(|p| p.status),
            Some(PaymentStatus::Succeeded)
        );
        a.stop().await?;
        b.stop().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bolt12_offer_over_a_private_channel() -> Result<()> {
    bounded(async {
        let Pair {
            chain,
            dir_a: _dir_a,
            _dir_b,
            a,
            b,
            mut ev_a,
            mut ev_b,
            ..
        } = open_pair().await?;

        // No gossip: the offer's blinded path starts at B itself, which A
        // reaches over their direct connection.
        let offer = b.receive_offer(Some(5_000_000), "coffee", Some(3600))?;
        let pid = a.pay_offer(&offer, None, Some("thanks".into()))?;
        next_event(
            "PaymentSuccessful on A",
            &mut ev_a,
            &[],
            |e| matches!(e, Event::PaymentSuccessful { payment_id: Some(p), .. } if *p == pid),
        )
        .await?;
        next_event("PaymentReceived on B", &mut ev_b, &[], |e| {
            matches!(
                e,
                Event::PaymentReceived {
                    amount_msat: 5_000_000,
                    ..
                }
            )
        })
        .await?;
        let paid = a.payment(&pid).context("payment recorded")?;
        assert!(matches!(paid.kind, PaymentKind::Bolt12Offer { .. }));
        assert_eq!(paid.status, PaymentStatus::Succeeded);
        sync_until("B's balance", &[], || {
            b.balances().total_lightning_balance_sats == 5_000
        })
        .await?;
        a.stop().await?;
        b.stop().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_close_returns_funds_after_the_timelock() -> Result<()> {
    bounded(async {
        let Pair {
            chain,
            dir_a: _dir_a,
            _dir_b,
            a,
            b,
            mut ev_a,
            mut ev_b,
            ucid,
            ..
        } = open_pair().await?;

        // Give B something to claim too.
        let inv = b.receive_bolt11(
            Some(20_000_000),
            &InvoiceDescription::Text("before the force close".into()),
            DEFAULT_INVOICE_EXPIRY_SECS,
        )?;
        a.pay_bolt11(&inv)?;
        next_event("PaymentReceived on B", &mut ev_b, &[], |e| {
            matches!(e, Event::PaymentReceived { .. })
        })
        .await?;
        sync_until("settled HTLC", &[], || {
            b.list_channels()
                .first()
                .is_some_and(|c| c.next_outbound_htlc_limit_msat > 0)
        })
        .await?;

        let on_b_before = b.balances().total_onchain_balance_sats;
        a.force_close_channel(&ucid, b.node_id(), Some("test".into()))?;
        next_event("ChannelClosed on A", &mut ev_a, &[], |e| {
            matches!(e, Event::ChannelClosed { .. })
        })
        .await?;
        next_event("ChannelClosed on B", &mut ev_b, &[&a, &b], |e| {
            matches!(e, Event::ChannelClosed { .. })
        })
        .await?;
        // Still claimable through the channel monitor, not yet on-chain.
        let ln_a = a.balances().total_lightning_balance_sats;
        ensure!(
            ln_a > CHANNEL - 20_000 - 10_000 && ln_a < CHANNEL - 20_000,
            "A's claimable balance after the force close: {ln_a}"
        );

        // Confirm the commitment, then wait out A's to_self_delay (LDK's
        // default is 144 blocks); the sweepers claim both sides' outputs.
        mine(&chain, 1).await?;
        a.sync_wallets()?;
        b.sync_wallets()?;
        mine(&chain, 144).await?;
        let start = Instant::now();
        loop {
            mine(&chain, 1).await?;
            a.sync_wallets()?;
            b.sync_wallets()?;
            let (ba, bb) = (a.balances(), b.balances());
            if ba.lightning_balances.is_empty()
                && bb.lightning_balances.is_empty()
                && ba.total_onchain_balance_sats > FUNDING - 20_000 - 15_000
                && bb.total_onchain_balance_sats > on_b_before + 19_000
            {
                break;
            }
            ensure!(
                start.elapsed() < WAIT,
                "force-closed funds never swept: A {:?} {:?}, B {:?} {:?}",
                ba.lightning_balances,
                ba.pending_balances_from_channel_closures,
                bb.lightning_balances,
                bb.pending_balances_from_channel_closures
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("swept after {:?}", start.elapsed());
        let on_a = a.balances().total_onchain_balance_sats;
        let on_b = b.balances().total_onchain_balance_sats;
        // B gets its 20_000 sat minus its sweep fee; A the rest minus the
        // commitment, anchor and sweep fees.
        ensure!(
            on_b > on_b_before + 19_000 && on_b < on_b_before + 20_000,
            "B on-chain {on_b}, before {on_b_before}"
        );
        ensure!(
            on_a > FUNDING - 20_000 - 15_000 && on_a < FUNDING - 20_000,
            "A on-chain {on_a}"
        );
        a.stop().await?;
        b.stop().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

/// Issue 10: after a cooperative close the closing output is counted once
/// (on-chain, not also in the channels) for the blocks ldk-node keeps
/// tracking it; the Lightning wallet's coins can be withdrawn (an amount, or
/// all of them); a payment that cannot be sent says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cooperative_close_counts_once_and_the_lightning_wallet_withdraws() -> Result<()> {
    use cairn_payments::lightning::{LightningError, Withdrawal};
    bounded(async {
        let Pair {
            chain,
            dir_a: _dir_a,
            _dir_b: dir_b,
            a,
            b,
            mut ev_a,
            mut ev_b,
            ..
        } = open_pair().await?;

        // B has nothing to send yet: refused with the capacity, not with
        // ldk-node's "Failed to send the given payment".
        let inv = a.receive_bolt11(
            Some(10_000_000),
            &InvoiceDescription::Text("too early".into()),
            DEFAULT_INVOICE_EXPIRY_SECS,
        )?;
        let refused = b
            .pay_and_wait(&inv, None, None, Duration::from_secs(10))
            .await
            .expect_err("B cannot send 10_000 sat");
        let text = refused.to_string();
        ensure!(
            matches!(refused, LightningError::NotSent(_)) && text.contains("capacity"),
            "{text}"
        );

        // A pays B 30_000 sat.
        let inv = b.receive_bolt11(
            Some(30_000_000),
            &InvoiceDescription::Text("lunch".into()),
            DEFAULT_INVOICE_EXPIRY_SECS,
        )?;
        let paid = a
            .pay_and_wait(&inv, None, None, Duration::from_secs(60))
            .await?;
        ensure!(
            matches!(
                paid.outcome,
                cairn_payments::lightning::PaymentOutcome::Succeeded { .. }
            ),
            "{paid:?}"
        );
        sync_until("B's 30_000 sat", &[], || b.channel_balance_sats() == 30_000).await?;

        // Cooperative close; once it confirms, the closing outputs are in
        // both on-chain wallets and no longer in the channels.
        b.close_channel(&b.list_channels()[0].user_channel_id, a.node_id())?;
        next_event("ChannelClosed on A", &mut ev_a, &[&a, &b], |e| {
            matches!(e, Event::ChannelClosed { .. })
        })
        .await?;
        next_event("ChannelClosed on B", &mut ev_b, &[&a, &b], |e| {
            matches!(e, Event::ChannelClosed { .. })
        })
        .await?;
        mempool_nonempty(&chain).await?;
        // While the closing transaction is unconfirmed, the on-chain wallet
        // already counts its output and ldk-node still lists the channel as
        // claimable on close: counted once, here and after a restart (the
        // record of which closes were cooperative is the event store's).
        let total =
            |n: &LightningNode| n.balances().total_onchain_balance_sats + n.channel_balance_sats();
        sync_until("B's unconfirmed closing output", &[&b], || {
            b.balances().total_onchain_balance_sats == FUNDING + 30_000
        })
        .await?;
        ensure!(
            b.balances().total_lightning_balance_sats == 30_000,
            "ldk-node lists the closing channel too: {:?}",
            b.balances().lightning_balances
        );
        assert_eq!(
            total(&b),
            FUNDING + 30_000,
            "unconfirmed close counted once"
        );
        b.stop().await?;
        drop(b);
        // The channel is closed: B's new listening port does not matter.
        let b = ln_node(dir_b.path(), &chain)?;
        b.start()?;
        sync_until(
            "B restarted, closing output still unconfirmed",
            &[&b],
            || b.balances().total_onchain_balance_sats == FUNDING + 30_000,
        )
        .await?;
        assert_eq!(total(&b), FUNDING + 30_000, "counted once after a restart");
        mine(&chain, 1).await?;
        sync_until("B's closing output on-chain", &[&a, &b], || {
            b.balances().spendable_onchain_balance_sats == FUNDING + 30_000
        })
        .await?;
        for (name, n) in [("A", &a), ("B", &b)] {
            let raw = n.balances();
            // ldk-node still lists the closing output as claimable
            // (awaiting confirmations): the sum that counted it twice.
            ensure!(
                raw.total_lightning_balance_sats > 0,
                "{name}: ldk-node no longer double-lists: {:?}",
                raw.lightning_balances
            );
            assert_eq!(n.channel_balance_sats(), 0, "{name}: counted once");
        }
        let on_a = a.balances().total_onchain_balance_sats;
        ensure!(
            on_a > FUNDING - 30_000 - 10_000 && on_a < FUNDING - 30_000,
            "A on-chain {on_a}"
        );

        // A dust amount names the dust limit.
        let to_a = a.funding_address()?;
        let dust = b
            .withdraw(&to_a, Withdrawal::Sats(100), None)
            .expect_err("dust");
        ensure!(dust.to_string().contains("dust limit of 294 sat"), "{dust}");
        // More than there is: says what is spendable.
        let much = b
            .withdraw(&to_a, Withdrawal::Sats(10 * FUNDING), None)
            .expect_err("too much");
        ensure!(much.to_string().contains("sat spendable"), "{much}");

        // B withdraws 50_000 sat to A's wallet; A withdraws everything to B's.
        let fee_rate = bitcoin::FeeRate::from_sat_per_vb(2);
        let txid = b.withdraw(&to_a, Withdrawal::Sats(50_000), fee_rate)?;
        mempool_nonempty(&chain).await?;
        mine(&chain, 1).await?;
        sync_until("B's withdrawal confirmed", &[&a, &b], || {
            a.balances().spendable_onchain_balance_sats == on_a + 50_000
        })
        .await?;
        let left_b = b.balances().total_onchain_balance_sats;
        ensure!(
            left_b < FUNDING + 30_000 - 50_000 && left_b > FUNDING + 30_000 - 50_000 - 1_000,
            "B keeps the rest minus a small fee: {left_b}"
        );
        let confirmed = b.list_payments().into_iter().any(|p| {
            matches!(
                p.kind,
                PaymentKind::Onchain {
                    txid: t,
                    status: ldk_node::payment::ConfirmationStatus::Confirmed { .. }
                } if t == txid
            )
        });
        ensure!(confirmed, "B's record shows {txid} confirmed");

        let all_a = a.balances().spendable_onchain_balance_sats;
        a.withdraw(&b.funding_address()?, Withdrawal::All, fee_rate)?;
        mempool_nonempty(&chain).await?;
        mine(&chain, 1).await?;
        sync_until("A's withdrawal of everything", &[&a, &b], || {
            let got = b.balances().spendable_onchain_balance_sats;
            a.balances().total_onchain_balance_sats == 0
                && got > left_b + all_a - 1_000
                && got < left_b + all_a
        })
        .await?;
        let nothing = a.withdraw(&b.funding_address()?, Withdrawal::All, None);
        ensure!(nothing.is_err(), "nothing left to withdraw: {nothing:?}");

        a.stop().await?;
        b.stop().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}
