//! Restarts in the middle of payments, with real ldk-node nodes on testchain,
//! a real in-process Cairn relay and the NWC service in front of the payer:
//!
//! - the payer (A) stops while two NWC `pay_invoice` requests are in flight
//!   (B holds both HTLCs: hold invoices), B settles one and fails the other
//!   while A is down, A is rebuilt from the same data directory; replaying
//!   the requests resolves them to the final outcomes without paying again,
//!   the budget reservations are settled / released, and every ldk event is
//!   handled once;
//! - the receiver (B) restarts between issuing an invoice and being paid.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bitcoin::hashes::{sha256, Hash};
use cairn_payments::lightning::{LightningNode, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_payments::nwc::{
    max_routing_fee_msat, BudgetRenewal, NewConnection, NwcService, NwcServiceConfig,
};
use cairn_testchain::TestChain;
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};
use ldk_node::payment::{PaymentDirection, PaymentKind, PaymentStatus};
use ldk_node::Event as LdkEvent;
use nostr::nips::nip44::{self, Version};
use nostr::nips::nip47::NostrWalletConnectURI;
use nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, Tag, TagKind};
use serde_json::{json, Value};
use support::{
    free_port, ln_node, ln_node_at, next_event, nwc_link, open_channel, sync_until, test_relay,
    WAIT,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(400);
const FUNDING: u64 = 1_000_000;
const CHANNEL: u64 = 400_000;

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

/// The app side of an NWC connection: signs NIP-44 requests, reads responses.
struct App {
    keys: Keys,
    service: nostr::PublicKey,
}

impl App {
    fn new(uri: &str) -> Result<Self> {
        let uri = NostrWalletConnectURI::parse(uri)?;
        Ok(Self {
            keys: Keys::new(uri.secret.clone()),
            service: uri.public_key,
        })
    }

    fn pay_request(&self, invoice: &Bolt11Invoice) -> Result<Event> {
        let body = json!({"method": "pay_invoice", "params": {"invoice": invoice.to_string()}});
        let content = nip44::encrypt(
            self.keys.secret_key(),
            &self.service,
            body.to_string(),
            Version::V2,
        )?;
        Ok(EventBuilder::new(Kind::WalletConnectRequest, content)
            .tags([
                Tag::public_key(self.service),
                Tag::custom(TagKind::custom("encryption"), ["nip44_v2"]),
            ])
            .sign_with_keys(&self.keys)?)
    }

    fn read(&self, response: &Event) -> Result<Value> {
        let plain = nip44::decrypt(self.keys.secret_key(), &response.pubkey, &response.content)?;
        Ok(serde_json::from_str(&plain)?)
    }
}

/// A hold invoice of B's: B learns of the HTLC (`PaymentClaimable`) and
/// decides when to settle or fail it, so A's payment stays in flight meanwhile.
fn hold_invoice(b: &LightningNode, msat: u64, what: &str) -> Result<(Bolt11Invoice, [u8; 32])> {
    let preimage: [u8; 32] = rand_bytes();
    let hash = sha256::Hash::hash(&preimage).to_byte_array();
    let inv = b.inner().bolt11_payment().receive_for_hash(
        msat,
        &Bolt11InvoiceDescription::Direct(Description::new(what.into())?),
        DEFAULT_INVOICE_EXPIRY_SECS,
        PaymentHash(hash),
    )?;
    Ok((inv, preimage))
}

fn rand_bytes() -> [u8; 32] {
    bitcoin::secp256k1::rand::random()
}

fn hash_of(inv: &Bolt11Invoice) -> [u8; 32] {
    inv.payment_hash().to_byte_array()
}

/// How many succeeded payments with `hash` the node has in `direction`.
fn payments(n: &LightningNode, direction: PaymentDirection, hash: &[u8; 32]) -> Vec<PaymentStatus> {
    n.list_payments()
        .iter()
        .filter(|p| {
            p.direction == direction
                && matches!(&p.kind, PaymentKind::Bolt11 { hash: h, .. } if h.0 == *hash)
        })
        .map(|p| p.status)
        .collect()
}

fn handled(n: &LightningNode, kind: &str, hash: &[u8; 32]) -> Result<usize> {
    let hex_hash = hex::encode(hash);
    Ok(n.handled_events()?
        .iter()
        .filter(|e| e.kind == kind && e.payment_hash.as_deref() == Some(hex_hash.as_str()))
        .count())
}

async fn start_service(
    dir: &std::path::Path,
    relay_url: &str,
    node: &Arc<LightningNode>,
) -> Result<NwcService<LightningNode>> {
    let service = NwcService::open(
        &NwcServiceConfig {
            data_dir: dir.to_path_buf(),
            relay_url: relay_url.to_owned(),
        },
        Arc::clone(node),
        nwc_link(dir, relay_url)?,
    )?;
    service.start().await?;
    service.spawn_notifications(node.subscribe());
    Ok(service)
}

/// Polls `cond` every 100 ms for at most `WAIT`.
async fn wait_for(what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !cond()? {
        ensure!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payer_and_receiver_restart_mid_payment() -> Result<()> {
    bounded(async {
        let chain = TestChain::start().await?;
        let dir_a = tempfile::tempdir()?;
        let dir_b = tempfile::tempdir()?;
        let dir_relay = tempfile::tempdir()?;
        let a = Arc::new(ln_node(dir_a.path(), &chain)?);
        let b_addr = free_port()?;
        let b = ln_node_at(dir_b.path(), &chain, b_addr)?;
        a.start()?;
        b.start()?;
        open_channel(&chain, &a, &b, FUNDING, CHANNEL).await?;
        let relay = test_relay(dir_relay.path()).await?;
        let relay_url = relay.ws_url();

        let service = Arc::new(start_service(dir_a.path(), &relay_url, &a).await?);
        let (conn, uri) = service.create_connection(NewConnection {
            name: "restart".into(),
            permissions: vec!["pay_invoice".into()],
            budget_msat: Some(100_000_000),
            renewal: BudgetRenewal::Monthly,
            max_payment_msat: Some(50_000_000),
            expires_at: None,
        })?;
        let app = App::new(&uri)?;

        // Two payments put in flight through NWC; B holds both HTLCs.
        let mut ev_b = b.subscribe();
        let (inv1, preimage1) = hold_invoice(&b, 10_000_000, "settled while A is down")?;
        let (inv2, _) = hold_invoice(&b, 5_000_000, "failed while A is down")?;
        let (h1, h2) = (hash_of(&inv1), hash_of(&inv2));
        let req1 = app.pay_request(&inv1)?;
        let req2 = app.pay_request(&inv2)?;
        let handlers = [req1.clone(), req2.clone()].map(|req| {
            let service = Arc::clone(&service);
            tokio::spawn(async move { service.handle_request(&req).await })
        });
        for _ in 0..2 {
            next_event("PaymentClaimable on B", &mut ev_b, &[], |e| {
                matches!(e, LdkEvent::PaymentClaimable { .. })
            })
            .await?;
        }
        assert_eq!(
            payments(&a, PaymentDirection::Outbound, &h1),
            vec![PaymentStatus::Pending]
        );
        assert_eq!(
            payments(&a, PaymentDirection::Outbound, &h2),
            vec![PaymentStatus::Pending]
        );
        assert_eq!(
            service.store().spent_in_window(&conn)?,
            15_000_000 + max_routing_fee_msat(10_000_000) + max_routing_fee_msat(5_000_000),
            "both reserved, each with its routing-fee cap"
        );

        // A dies before either outcome is known: the handlers are cut short,
        // the service and the node stop, and every handle on them goes away.
        for h in &handlers {
            h.abort();
        }
        for h in handlers {
            ensure!(h.await.is_err(), "the handler was cut short, not finished");
        }
        service.stop().await;
        drop(service);
        a.stop().await?;
        let a = Arc::into_inner(a).context("no other handle on A")?;
        drop(a);

        // Meanwhile B settles the first and fails the second.
        b.inner().bolt11_payment().claim_for_hash(
            PaymentHash(h1),
            10_000_000,
            PaymentPreimage(preimage1),
        )?;
        b.inner().bolt11_payment().fail_for_hash(PaymentHash(h2))?;
        next_event(
            "PaymentReceived on B",
            &mut ev_b,
            &[],
            |e| matches!(e, LdkEvent::PaymentReceived { payment_hash, .. } if payment_hash.0 == h1),
        )
        .await?;

        // A is rebuilt from the same data directory and restarted.
        let a = Arc::new(ln_node(dir_a.path(), &chain)?);
        a.start()?;
        let service = start_service(dir_a.path(), &relay_url, &a).await?;
        // A reconnects to B (its persisted peer), learns both outcomes.
        sync_until("both outcomes on A", &[], || {
            payments(&a, PaymentDirection::Outbound, &h1) == vec![PaymentStatus::Succeeded]
                && payments(&a, PaymentDirection::Outbound, &h2) == vec![PaymentStatus::Failed]
        })
        .await?;
        // The failed payment's reservation is released without any replay
        // (from the Lightning event or the payment record).
        wait_for("the failed payment's reservation released", || {
            Ok(service.store().spend(&req2.id.to_hex())?.is_none())
        })
        .await?;

        // The first request, replayed: the final outcome, no second payment.
        let resp1 = service
            .handle_request(&req1)
            .await
            .context("the replayed request is answered")?;
        let body = app.read(&resp1)?;
        assert_eq!(body["result_type"], "pay_invoice");
        assert_eq!(
            body["result"]["preimage"].as_str(),
            Some(hex::encode(preimage1).as_str()),
            "{body}"
        );
        assert_eq!(
            service.store().spend(&req1.id.to_hex())?,
            Some(("settled".into(), 10_000_000)),
            "settled once, direct channel: no routing fee"
        );
        // The second, replayed: it failed, and is not tried again.
        let resp2 = service
            .handle_request(&req2)
            .await
            .context("the replayed request is answered")?;
        let body = app.read(&resp2)?;
        assert_eq!(body["error"]["code"], "PAYMENT_FAILED", "{body}");
        assert_eq!(
            payments(&a, PaymentDirection::Outbound, &h2),
            vec![PaymentStatus::Failed]
        );
        assert_eq!(service.store().spent_in_window(&conn)?, 10_000_000);
        // Both answers are now on record: a further replay gets them verbatim.
        let again = service.handle_request(&req1).await.context("stored")?;
        assert_eq!(again.as_json(), resp1.as_json());

        // B was paid exactly once; A's events were handled once each.
        assert_eq!(
            payments(&b, PaymentDirection::Inbound, &h1),
            vec![PaymentStatus::Succeeded]
        );
        sync_until("B's balance", &[], || {
            b.balances().total_lightning_balance_sats == 10_000
        })
        .await?;
        assert_eq!(handled(&a, "PaymentSuccessful", &h1)?, 1);
        assert_eq!(handled(&a, "PaymentFailed", &h2)?, 1);
        // Asked after the event went by, the outcome still carries LDK's
        // reason (from the event store; ldk-node's record keeps only the status).
        let outcome = a.payment_outcome(&PaymentHash(h2), Duration::ZERO).await;
        assert_eq!(
            outcome,
            Some(cairn_payments::lightning::PaymentOutcome::Failed {
                reason: "the recipient rejected the payment".into()
            }),
        );
        assert_eq!(handled(&b, "PaymentReceived", &h1)?, 1);
        let events_before = a.handled_events()?.len();

        // --- the receiver restarts between invoice and payment ---
        let inv3 = b.receive_bolt11(
            Some(3_000_000),
            &cairn_payments::lightning::InvoiceDescription::Text("after B's restart".into()),
            DEFAULT_INVOICE_EXPIRY_SECS,
        )?;
        let h3 = hash_of(&inv3);
        b.stop().await?;
        drop(ev_b);
        drop(b);
        let b = ln_node_at(dir_b.path(), &chain, b_addr)?;
        b.start()?;
        let mut ev_b = b.subscribe();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            handled(&b, "PaymentReceived", &h1)?,
            1,
            "not again after B's restart"
        );
        // A would only retry on its next reconnection tick (ldk-node: every
        // 60 s); an operator or the next payment attempt reconnects at once.
        a.inner().connect(b.node_id(), b_addr.into(), true)?;
        sync_until("channel usable again", &[], || {
            a.list_channels().iter().any(|c| c.is_usable)
        })
        .await?;
        let resp3 = service
            .handle_request(&app.pay_request(&inv3)?)
            .await
            .context("answered")?;
        let body = app.read(&resp3)?;
        let preimage3 = hex::decode(body["result"]["preimage"].as_str().context("preimage")?)?;
        assert_eq!(sha256::Hash::hash(&preimage3).to_byte_array(), h3);
        next_event(
            "PaymentReceived on B",
            &mut ev_b,
            &[],
            |e| matches!(e, LdkEvent::PaymentReceived { payment_hash, .. } if payment_hash.0 == h3),
        )
        .await?;
        assert_eq!(
            payments(&b, PaymentDirection::Inbound, &h3),
            vec![PaymentStatus::Succeeded]
        );
        sync_until("B's balance", &[], || {
            b.balances().total_lightning_balance_sats == 13_000
        })
        .await?;
        assert_eq!(service.store().spent_in_window(&conn)?, 13_000_000);

        // One more restart of A: nothing is handled twice.
        service.stop().await;
        drop(service);
        a.stop().await?;
        let a = Arc::into_inner(a).context("no other handle on A")?;
        let events_now = a.handled_events()?.len();
        ensure!(events_now > events_before, "the third payment's events");
        drop(a);
        let a = ln_node(dir_a.path(), &chain)?;
        a.start()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(a.handled_events()?.len(), events_now);
        assert_eq!(handled(&a, "PaymentSuccessful", &h1)?, 1);

        a.stop().await?;
        b.stop().await?;
        relay.shutdown().await;
        chain.stop().await?;
        Ok(())
    })
    .await
}
