//! The NWC service end to end: two real Lightning nodes on testchain (A is
//! the wallet behind the service, B the payee), a real in-process Cairn relay,
//! and apps played by the `nwc` 0.44 client (NIP-04) and by hand-built
//! requests (NIP-44, replays, expired requests, unknown encryption, unknown
//! keys). Two connections that both pay and look up see (and are notified
//! about) their own payments only.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::hashes::{sha256, Hash};
use cairn_payments::lightning::{InvoiceDescription, LightningNode, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_payments::nwc::{
    BudgetRenewal, NewConnection, NwcService, NwcServiceConfig, MAX_CLOCK_SKEW, REQUEST_RETENTION,
};
use cairn_testchain::TestChain;
use ldk_node::payment::{PaymentDirection, PaymentKind, PaymentStatus};
use nostr::nips::nip44::Version;
use nostr::nips::nip47::{
    LookupInvoiceRequest, MakeInvoiceRequest, NostrWalletConnectURI, PayInvoiceRequest,
    TransactionState,
};
use nostr::nips::{nip04, nip44};
use nostr::{Event, EventBuilder, Filter, Keys, Kind, Tag, TagKind, Timestamp};
use nostr_sdk::{Client, RelayPoolNotification};
use serde_json::{json, Value};
use support::{ln_node, nwc_link, open_channel, sync_until, test_relay, WAIT};

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const NET_WAIT: Duration = Duration::from_secs(15);
const FUNDING: u64 = 1_000_000;
const CHANNEL: u64 = 400_000;

/// Whether any of SQLite's files for the database at `db` contains `needle`.
fn db_files_contain(db: &Path, needle: &str) -> Result<bool> {
    let mut found = false;
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(bytes) = std::fs::read(&path) {
            found |= bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        }
    }
    Ok(found)
}

/// An app speaking raw NIP-47 over nostr-sdk: builds, signs and publishes
/// requests itself, so it can pick the encryption, add tags and replay.
struct RawApp {
    keys: Keys,
    service: nostr::PublicKey,
    client: Client,
}

impl RawApp {
    async fn connect(uri: &str, relay: &str) -> Result<Self> {
        let uri = NostrWalletConnectURI::parse(uri)?;
        let keys = Keys::new(uri.secret.clone());
        let client = Client::new(keys.clone());
        client.add_relay(relay).await?;
        client.try_connect_relay(relay, NET_WAIT).await?;
        Ok(Self {
            keys,
            service: uri.public_key,
            client,
        })
    }

    /// A signed request event; `enc` is the `encryption` tag value (`None`: no tag).
    fn request(&self, body: &Value, enc: Option<&str>, extra: Vec<Tag>) -> Result<Event> {
        self.request_at(body, enc, extra, Timestamp::now())
    }

    /// Like [`Self::request`], dated `created_at`.
    fn request_at(
        &self,
        body: &Value,
        enc: Option<&str>,
        extra: Vec<Tag>,
        created_at: Timestamp,
    ) -> Result<Event> {
        let plain = body.to_string();
        let content = match enc {
            Some("nip44_v2") => {
                nip44::encrypt(self.keys.secret_key(), &self.service, &plain, Version::V2)?
            }
            _ => nip04::encrypt(self.keys.secret_key(), &self.service, &plain)?,
        };
        let mut tags = vec![Tag::public_key(self.service)];
        if let Some(e) = enc {
            tags.push(Tag::custom(TagKind::custom("encryption"), [e]));
        }
        tags.extend(extra);
        Ok(EventBuilder::new(Kind::WalletConnectRequest, content)
            .tags(tags)
            .custom_created_at(created_at)
            .sign_with_keys(&self.keys)?)
    }

    fn decrypt(&self, ev: &Event) -> Result<Value> {
        let plain = nip44::decrypt(self.keys.secret_key(), &ev.pubkey, &ev.content)
            .or_else(|_| nip04::decrypt(self.keys.secret_key(), &ev.pubkey, &ev.content))?;
        Ok(serde_json::from_str(&plain)?)
    }

    /// Publishes `req` and waits (bounded) for the response to it.
    async fn call(&self, req: &Event, wait: Duration) -> Result<Option<(Event, Value)>> {
        let mut notes = self.client.notifications();
        let filter = Filter::new()
            .kind(Kind::WalletConnectResponse)
            .author(self.service)
            .event(req.id);
        let sub = self.client.subscribe(filter, None).await?.val;
        self.client.send_event(req).await?;
        let got = tokio::time::timeout(wait, async {
            loop {
                match notes.recv().await {
                    Ok(RelayPoolNotification::Event {
                        subscription_id,
                        event,
                        ..
                    }) if subscription_id == sub => {
                        return Ok::<_, anyhow::Error>(*event);
                    }
                    Ok(_) => {}
                    Err(e) => bail!("notifications: {e}"),
                }
            }
        })
        .await;
        self.client.unsubscribe(&sub).await;
        match got {
            Ok(ev) => {
                let ev = ev?;
                let body = self.decrypt(&ev)?;
                Ok(Some((ev, body)))
            }
            Err(_) => Ok(None),
        }
    }

    async fn must_call(&self, req: &Event) -> Result<(Event, Value)> {
        self.call(req, NET_WAIT)
            .await?
            .context("no NWC response within the timeout")
    }
}

fn error_code(body: &Value) -> Option<&str> {
    body.get("error")?.get("code")?.as_str()
}

fn b_received(b: &LightningNode, hash: &[u8; 32]) -> usize {
    b.list_payments()
        .iter()
        .filter(|p| {
            p.direction == PaymentDirection::Inbound
                && p.status == PaymentStatus::Succeeded
                && matches!(&p.kind, PaymentKind::Bolt11 { hash: h, .. } if h.0 == *hash)
        })
        .count()
}

fn a_outbound(a: &LightningNode) -> usize {
    a.list_payments()
        .iter()
        .filter(|p| {
            p.direction == PaymentDirection::Outbound
                && matches!(p.kind, PaymentKind::Bolt11 { .. })
        })
        .count()
}

fn all_methods() -> Vec<String> {
    cairn_payments::nwc::SUPPORTED_METHODS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn invoice(
    b: &LightningNode,
    sat: u64,
    what: &str,
) -> Result<ldk_node::lightning_invoice::Bolt11Invoice> {
    Ok(b.receive_bolt11(
        Some(sat * 1000),
        &InvoiceDescription::Text(what.into()),
        DEFAULT_INVOICE_EXPIRY_SECS,
    )?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nwc_service_end_to_end() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .context("test timed out")?
}

async fn run() -> Result<()> {
    let chain = TestChain::start().await?;
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let dir_relay = tempfile::tempdir()?;
    let a = Arc::new(ln_node(dir_a.path(), &chain)?);
    let b = ln_node(dir_b.path(), &chain)?;
    a.start()?;
    b.start()?;
    open_channel(&chain, &a, &b, FUNDING, CHANNEL).await?;

    let relay = test_relay(dir_relay.path()).await?;
    let relay_url = relay.ws_url();

    let service = NwcService::open(
        &NwcServiceConfig {
            data_dir: dir_a.path().to_path_buf(),
            relay_url: relay_url.clone(),
        },
        Arc::clone(&a),
        nwc_link(dir_a.path(), &relay_url)?,
    )?;
    service.start().await?;
    service.spawn_notifications(a.subscribe());
    #[cfg(unix)]
    for f in [
        cairn_payments::nwc::SERVICE_KEY_FILE_NAME,
        cairn_payments::nwc::STORE_FILE_NAME,
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir_a.path().join(f))?
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    // The info event is on the relay.
    let observer = Client::new(Keys::generate());
    observer.add_relay(relay_url.as_str()).await?;
    observer
        .try_connect_relay(relay_url.as_str(), NET_WAIT)
        .await?;
    // Every notification the service publishes, to count who gets them.
    let mut service_notes = observer.notifications();
    observer
        .subscribe(
            Filter::new()
                .kinds([Kind::Custom(23197), Kind::WalletConnectNotification])
                .author(service.service_pubkey()),
            None,
        )
        .await?;
    let info = observer
        .fetch_events(
            Filter::new()
                .kind(Kind::WalletConnectInfo)
                .author(service.service_pubkey()),
            NET_WAIT,
        )
        .await?;
    let info = info.first().context("13194 info event on the relay")?;
    assert!(info.content.split(' ').any(|m| m == "pay_invoice"));
    // No connection has a budget yet: get_budget is not offered.
    assert!(
        !info.content.split(' ').any(|m| m == "get_budget"),
        "{}",
        info.content
    );
    let tag = |name: &str| {
        info.tags
            .iter()
            .find(|t| t.kind() == TagKind::custom(name))
            .and_then(|t| t.content())
            .map(str::to_owned)
    };
    assert_eq!(tag("encryption").as_deref(), Some("nip44_v2 nip04"));
    assert_eq!(
        tag("notifications").as_deref(),
        Some("payment_received payment_sent")
    );

    // Connection 1: everything, 50_000 sat a month, at most 30_000 sat a payment.
    let (c1, uri1) = service.create_connection(NewConnection {
        name: "full".into(),
        permissions: all_methods(),
        budget_msat: Some(50_000_000),
        renewal: BudgetRenewal::Monthly,
        max_payment_msat: Some(30_000_000),
        expires_at: None,
    })?;
    assert!(uri1.starts_with(&format!(
        "nostr+walletconnect://{}?",
        service.service_pubkey().to_hex()
    )));
    assert!(uri1.contains("relay=") && uri1.contains("secret="));
    // A connection with a budget: the info event now lists get_budget.
    let start = Instant::now();
    loop {
        let events = observer
            .fetch_events(
                Filter::new()
                    .kind(Kind::WalletConnectInfo)
                    .author(service.service_pubkey()),
                NET_WAIT,
            )
            .await?;
        let newest = events.iter().max_by_key(|e| e.created_at);
        if newest.is_some_and(|e| e.content.split(' ').any(|m| m == "get_budget")) {
            break;
        }
        if start.elapsed() > NET_WAIT {
            bail!("the info event does not list get_budget: {newest:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = service.list_connections()?;
    assert_eq!(listed, vec![c1.clone()]);
    // The app's secret is in the URI only, not in the database.
    let secret1 = NostrWalletConnectURI::parse(&uri1)?.secret.to_secret_hex();
    let db_path = dir_a.path().join(cairn_payments::nwc::STORE_FILE_NAME);
    assert!(!db_files_contain(&db_path, &secret1)?);

    // A key without a connection is refused, and its request is not recorded.
    let stranger_uri = NostrWalletConnectURI::new(
        service.service_pubkey(),
        vec![nostr::RelayUrl::parse(&relay_url)?],
        Keys::generate().secret_key().clone(),
        None,
    )
    .to_string();
    let stranger = RawApp::connect(&stranger_uri, &relay_url).await?;
    let recorded = service.store().request_count()?;
    let req = stranger.request(
        &json!({"method": "get_balance", "params": {}}),
        Some("nip44_v2"),
        vec![],
    )?;
    let (_, body) = stranger.must_call(&req).await?;
    assert_eq!(error_code(&body), Some("UNAUTHORIZED"), "{body}");
    assert_eq!(body["result_type"], "get_balance");
    let direct = service.handle_request(&req).await.context("answered")?;
    assert_eq!(stranger.decrypt(&direct)?["error"]["code"], "UNAUTHORIZED");
    assert_eq!(
        service.store().request_count()?,
        recorded,
        "nothing recorded"
    );

    // --- the off-the-shelf nwc client (NIP-04) ---
    let nwc = nwc::NWC::new(NostrWalletConnectURI::parse(&uri1)?);
    // The nwc client connects in the background on its first call and gives
    // up at once ("premature exit") while the relay is still connecting.
    let start = Instant::now();
    let info = loop {
        match tokio::time::timeout(NET_WAIT, nwc.get_info()).await? {
            Ok(info) => break info,
            Err(e) if start.elapsed() < NET_WAIT => {
                eprintln!("nwc client not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(info.pubkey, Some(a.node_id().to_string()));
    assert_eq!(info.methods.len(), 6);
    let balance = tokio::time::timeout(NET_WAIT, nwc.get_balance()).await??;
    assert_eq!(balance, a.balances().total_lightning_balance_sats * 1000);
    assert!(balance > 0);

    let inv = invoice(&b, 1_000, "nip04 pay")?;
    let paid = tokio::time::timeout(
        WAIT,
        nwc.pay_invoice(PayInvoiceRequest::new(inv.to_string())),
    )
    .await??;
    let preimage: [u8; 32] = hex::decode(&paid.preimage)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("32-byte preimage"))?;
    assert_eq!(
        sha256::Hash::hash(&preimage).to_byte_array(),
        inv.payment_hash().to_byte_array()
    );
    assert_eq!(b_received(&b, &inv.payment_hash().to_byte_array()), 1);
    assert!(
        paid.fees_paid.unwrap_or(0) <= 10_000 + 10_000,
        "fee within the cap"
    );
    let spent_after_first = service.store().spent_in_window(&c1)?;
    assert_eq!(spent_after_first, 1_000_000 + paid.fees_paid.unwrap_or(0));

    // make_invoice + lookup_invoice through the nwc client.
    let made = tokio::time::timeout(
        NET_WAIT,
        nwc.make_invoice(MakeInvoiceRequest {
            amount: 2_000_000,
            description: Some("nwc invoice".into()),
            description_hash: None,
            expiry: Some(600),
        }),
    )
    .await??;
    let made_inv: ldk_node::lightning_invoice::Bolt11Invoice = made.invoice.parse()?;
    assert_eq!(made_inv.amount_milli_satoshis(), Some(2_000_000));
    let hash = made.payment_hash.clone().context("payment_hash")?;
    assert_eq!(hash, hex::encode(made_inv.payment_hash().to_byte_array()));
    let looked = tokio::time::timeout(
        NET_WAIT,
        nwc.lookup_invoice(LookupInvoiceRequest {
            payment_hash: Some(hash.clone()),
            invoice: None,
        }),
    )
    .await??;
    assert_eq!(looked.invoice.as_deref(), Some(made.invoice.as_str()));
    assert_eq!(looked.state, Some(TransactionState::Pending));
    assert_eq!(looked.amount, 2_000_000);
    assert_eq!(looked.description.as_deref(), Some("nwc invoice"));
    let missing = tokio::time::timeout(
        NET_WAIT,
        nwc.lookup_invoice(LookupInvoiceRequest {
            payment_hash: Some(hex::encode([9u8; 32])),
            invoice: None,
        }),
    )
    .await?;
    let msg = format!("{:?}", missing.expect_err("unknown invoice"));
    assert!(msg.contains("NotFound"), "{msg}");

    // --- NIP-44 through hand-built requests ---
    let app1 = RawApp::connect(&uri1, &relay_url).await?;
    // Listen for notifications to this app before paying.
    let mut app_notes = app1.client.notifications();
    app1.client
        .subscribe(
            Filter::new()
                .kind(Kind::Custom(23197))
                .pubkey(app1.keys.public_key()),
            None,
        )
        .await?;
    let inv = invoice(&b, 1_500, "nip44 pay")?;
    let req = app1.request(
        &json!({"method": "pay_invoice", "params": {"invoice": inv.to_string()}}),
        Some("nip44_v2"),
        vec![],
    )?;
    let (resp, body) = app1.must_call(&req).await?;
    assert!(nip44::decrypt(app1.keys.secret_key(), &resp.pubkey, &resp.content).is_ok());
    assert_eq!(body["result_type"], "pay_invoice");
    assert!(body["result"]["preimage"].as_str().is_some(), "{body}");
    assert_eq!(b_received(&b, &inv.payment_hash().to_byte_array()), 1);
    assert!(resp
        .tags
        .public_keys()
        .any(|p| *p == app1.keys.public_key()));
    assert!(resp.tags.event_ids().any(|e| *e == req.id));
    // The payment_sent notification arrives over NIP-44.
    let note = tokio::time::timeout(NET_WAIT, async {
        loop {
            if let Ok(RelayPoolNotification::Event { event, .. }) = app_notes.recv().await {
                if event.kind == Kind::Custom(23197) {
                    let v = app1.decrypt(&event)?;
                    if v["notification"]["payment_hash"]
                        == hex::encode(inv.payment_hash().to_byte_array())
                    {
                        return Ok::<_, anyhow::Error>(v);
                    }
                }
            }
        }
    })
    .await??;
    assert_eq!(note["notification_type"], "payment_sent");
    // It carries the invoice that was paid, as the app sent it.
    assert_eq!(note["notification"]["invoice"], inv.to_string().as_str());

    // get_balance over NIP-44 agrees with the node.
    let (_, body) = app1
        .must_call(&app1.request(
            &json!({"method": "get_balance", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?)
        .await?;
    assert_eq!(
        body["result"]["balance"].as_u64(),
        Some(a.balances().total_lightning_balance_sats * 1000)
    );

    // Unknown encryption scheme.
    let (_, body) = app1
        .must_call(&app1.request(
            &json!({"method": "get_balance", "params": {}}),
            Some("nip99"),
            vec![],
        )?)
        .await?;
    assert_eq!(error_code(&body), Some("UNSUPPORTED_ENCRYPTION"), "{body}");

    // --- replay: the same signed request twice pays once ---
    let inv = invoice(&b, 2_000, "replayed")?;
    let req = app1.request(
        &json!({"method": "pay_invoice", "params": {"invoice": inv.to_string()}}),
        Some("nip44_v2"),
        vec![],
    )?;
    let (first, _) = app1.must_call(&req).await?;
    let outbound = a_outbound(&a);
    let spent = service.store().spent_in_window(&c1)?;
    let again = app1.call(&req, Duration::from_secs(3)).await?;
    if let Some((ev, _)) = &again {
        assert_eq!(ev.id, first.id, "the stored response, not a new one");
    }
    let direct = service
        .handle_request(&req)
        .await
        .context("stored response")?;
    assert_eq!(direct.id, first.id);
    assert_eq!(a_outbound(&a), outbound, "no second payment");
    assert_eq!(b_received(&b, &inv.payment_hash().to_byte_array()), 1);
    assert_eq!(
        service.store().spent_in_window(&c1)?,
        spent,
        "budget counted once"
    );

    // --- expired request: not executed ---
    let inv = invoice(&b, 1_000, "expired request")?;
    let req = app1.request(
        &json!({"method": "pay_invoice", "params": {"invoice": inv.to_string()}}),
        Some("nip44_v2"),
        vec![Tag::expiration(Timestamp::from(
            Timestamp::now().as_secs() - 5,
        ))],
    )?;
    assert!(service.handle_request(&req).await.is_none());
    let _ = app1.client.send_event(&req).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a_outbound(&a), outbound, "expired request never paid");
    assert_eq!(b_received(&b, &inv.payment_hash().to_byte_array()), 0);

    // --- outside the replay record's reach: a request dated before the
    // retention window (its id may have been pruned) or too far ahead (it
    // would outlive the window) is never executed ---
    let inv = invoice(&b, 1_000, "too old")?;
    let now_s = Timestamp::now().as_secs();
    for created_at in [
        now_s - REQUEST_RETENTION.as_secs() - 60,
        now_s + MAX_CLOCK_SKEW.as_secs() + 60,
    ] {
        let req = app1.request_at(
            &json!({"method": "pay_invoice", "params": {"invoice": inv.to_string()}}),
            Some("nip44_v2"),
            vec![],
            Timestamp::from(created_at),
        )?;
        assert!(service.handle_request(&req).await.is_none());
    }
    assert_eq!(a_outbound(&a), outbound, "stale requests never paid");
    assert_eq!(b_received(&b, &inv.payment_hash().to_byte_array()), 0);
    // Slightly old but inside the window: executed.
    let req = app1.request_at(
        &json!({"method": "pay_invoice", "params": {"invoice": inv.to_string()}}),
        Some("nip44_v2"),
        vec![],
        Timestamp::from(now_s - 3_600),
    )?;
    let resp = service.handle_request(&req).await.context("answered")?;
    assert!(app1.decrypt(&resp)?["result"]["preimage"].is_string());
    assert_eq!(b_received(&b, &inv.payment_hash().to_byte_array()), 1);

    // --- budget and per-payment maximum ---
    let (c2, uri2) = service.create_connection(NewConnection {
        name: "small".into(),
        permissions: vec![
            "pay_invoice".into(),
            "lookup_invoice".into(),
            "list_transactions".into(),
        ],
        budget_msat: Some(5_000_000),
        renewal: BudgetRenewal::Daily,
        max_payment_msat: Some(4_000_000),
        expires_at: None,
    })?;
    let app2 = RawApp::connect(&uri2, &relay_url).await?;
    let pay = |sat: u64, what: &str| -> Result<(Event, [u8; 32])> {
        let inv = invoice(&b, sat, what)?;
        Ok((
            app2.request(
                &json!({"method": "pay_invoice", "params": {"invoice": inv.to_string()}}),
                Some("nip44_v2"),
                vec![],
            )?,
            inv.payment_hash().to_byte_array(),
        ))
    };
    // 3_000 sat plus the 40 sat fee reserve fit the 5_000 sat budget ...
    let (r, c2_hash) = pay(3_000, "within budget")?;
    let (_, body) = app2.must_call(&r).await?;
    assert!(body["result"]["preimage"].is_string(), "{body}");
    assert_eq!(b_received(&b, &c2_hash), 1);
    // ... 1_990 sat more would fit without the 29.9 sat fee reserve, not with it.
    let spent_now = service.store().spent_in_window(&c2)?;
    assert!(spent_now < 3_010_000, "{spent_now}");
    let (r, h) = pay(1_990, "over budget with the fee reserve")?;
    let (_, body) = app2.must_call(&r).await?;
    assert_eq!(error_code(&body), Some("QUOTA_EXCEEDED"), "{body}");
    assert_eq!(b_received(&b, &h), 0);
    let (r, h) = pay(3_000, "over budget")?;
    let (_, body) = app2.must_call(&r).await?;
    assert_eq!(error_code(&body), Some("QUOTA_EXCEEDED"), "{body}");
    assert_eq!(b_received(&b, &h), 0);
    let (r, _) = pay(4_500, "over the per-payment maximum")?;
    let (_, body) = app2.must_call(&r).await?;
    assert_eq!(error_code(&body), Some("QUOTA_EXCEEDED"), "{body}");
    let spent2 = service.store().spent_in_window(&c2)?;
    assert!((3_000_000..3_100_000).contains(&spent2), "{spent2}");
    // get_budget: what the budget checks above used, and when it renews.
    let (_, body) = app2
        .must_call(&app2.request(
            &json!({"method": "get_budget", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?)
        .await?;
    assert_eq!(body["result_type"], "get_budget", "{body}");
    assert_eq!(body["result"]["used_budget"], spent2, "{body}");
    assert_eq!(body["result"]["total_budget"], 5_000_000, "{body}");
    assert_eq!(body["result"]["renewal_period"], "daily", "{body}");
    let renews_at = body["result"]["renews_at"].as_u64().context("renews_at")?;
    let now = Timestamp::now().as_secs();
    assert!(
        renews_at > now && renews_at <= now + 86_400 && (renews_at - c2.created_at) % 86_400 == 0,
        "{body}"
    );
    // A failed payment releases its reservation: paying an expired invoice
    // fails, and the budget is unchanged.
    let expired = b.receive_bolt11(
        Some(1_000_000),
        &InvoiceDescription::Text("expires at once".into()),
        1,
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, body) = app2
        .must_call(&app2.request(
            &json!({"method": "pay_invoice", "params": {"invoice": expired.to_string()}}),
            Some("nip44_v2"),
            vec![],
        )?)
        .await?;
    assert_eq!(error_code(&body), Some("PAYMENT_FAILED"), "{body}");
    assert_eq!(
        service.store().spent_in_window(&c2)?,
        spent2,
        "reservation released"
    );

    // --- permissions, revocation, expiry ---
    let (c3, uri3) = service.create_connection(NewConnection {
        name: "read-only".into(),
        permissions: vec!["get_balance".into()],
        budget_msat: None,
        renewal: BudgetRenewal::Never,
        max_payment_msat: None,
        expires_at: None,
    })?;
    let app3 = RawApp::connect(&uri3, &relay_url).await?;
    let inv = invoice(&b, 1_000, "restricted")?;
    let (_, body) = app3
        .must_call(&app3.request(
            &json!({"method": "pay_invoice", "params": {"invoice": inv.to_string()}}),
            None,
            vec![],
        )?)
        .await?;
    assert_eq!(error_code(&body), Some("RESTRICTED"), "{body}");
    assert_eq!(b_received(&b, &inv.payment_hash().to_byte_array()), 0);
    let balance_req = || {
        app3.request(
            &json!({"method": "get_balance", "params": {}}),
            None,
            vec![],
        )
    };
    let (_, body) = app3.must_call(&balance_req()?).await?;
    assert!(body["result"]["balance"].as_u64().is_some(), "{body}");
    service.revoke(c3.id)?;
    let (_, body) = app3.must_call(&balance_req()?).await?;
    assert_eq!(error_code(&body), Some("UNAUTHORIZED"), "{body}");

    let (c4, uri4) = service.create_connection(NewConnection {
        name: "expiring".into(),
        permissions: all_methods(),
        budget_msat: None,
        renewal: BudgetRenewal::Never,
        max_payment_msat: None,
        expires_at: Some(Timestamp::now().as_secs() + 3600),
    })?;
    let app4 = RawApp::connect(&uri4, &relay_url).await?;
    let req4 = || {
        app4.request(
            &json!({"method": "get_balance", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )
    };
    let (_, body) = app4.must_call(&req4()?).await?;
    assert!(body["result"]["balance"].is_u64(), "{body}");
    // Without a budget, get_budget answers "no budget".
    let (_, body) = app4
        .must_call(&app4.request(
            &json!({"method": "get_budget", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?)
        .await?;
    assert_eq!(body["result"], json!({}), "{body}");
    service
        .store()
        .set_expiry(c4.id, Some(Timestamp::now().as_secs() - 1))?;
    let (_, body) = app4.must_call(&req4()?).await?;
    assert_eq!(error_code(&body), Some("UNAUTHORIZED"), "{body}");

    // list_transactions shows the settled outgoing payments.
    let (_, body) = app1
        .must_call(&app1.request(
            &json!({"method": "list_transactions", "params": {"type": "outgoing"}}),
            Some("nip44_v2"),
            vec![],
        )?)
        .await?;
    let txs = body["result"]["transactions"]
        .as_array()
        .context("transactions")?;
    // c1's own: 1_000 + 1_500 + 2_000 + 1_000; not c2's 3_000.
    assert_eq!(txs.len(), 4, "{body}");
    assert!(txs
        .iter()
        .all(|t| t["state"] == "settled" && t["type"] == "outgoing"));
    let c2_hex = hex::encode(c2_hash);
    assert!(txs.iter().all(|t| t["payment_hash"] != c2_hex.as_str()));
    let (_, body) = app2
        .must_call(&app2.request(
            &json!({"method": "list_transactions", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?)
        .await?;
    let txs = body["result"]["transactions"]
        .as_array()
        .context("transactions")?;
    assert_eq!(txs.len(), 1, "{body}");
    assert_eq!(txs[0]["payment_hash"], c2_hex.as_str());
    // lookup_invoice: each connection finds its own, NOT_FOUND for the other's.
    let lookup = |app: &RawApp, h: &str| {
        app.request(
            &json!({"method": "lookup_invoice", "params": {"payment_hash": h}}),
            Some("nip44_v2"),
            vec![],
        )
    };
    let (_, body) = app2.must_call(&lookup(&app2, &c2_hex)?).await?;
    assert_eq!(body["result"]["state"], "settled", "{body}");
    assert!(body["result"]["preimage"].is_string(), "{body}");
    let (_, body) = app1.must_call(&lookup(&app1, &c2_hex)?).await?;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");
    assert!(body.get("result").is_none_or(Value::is_null), "{body}");
    let (_, body) = app2.must_call(&lookup(&app2, &hash)?).await?;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");
    // get_info names the notifications each connection receives.
    let (_, body) = app1
        .must_call(&app1.request(
            &json!({"method": "get_info", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?)
        .await?;
    assert_eq!(
        body["result"]["notifications"],
        json!(["payment_received", "payment_sent"]),
        "{body}"
    );

    // B pays the invoice made through NWC: lookup says settled and the app
    // gets a payment_received notification.
    sync_until("B's outbound capacity", &[], || {
        b.list_channels()
            .first()
            .is_some_and(|c| c.next_outbound_htlc_limit_msat >= 2_000_000)
    })
    .await?;
    b.pay_bolt11(&made_inv)?;
    let note = tokio::time::timeout(NET_WAIT, async {
        loop {
            if let Ok(RelayPoolNotification::Event { event, .. }) = app_notes.recv().await {
                if event.kind == Kind::Custom(23197) {
                    let v = app1.decrypt(&event)?;
                    if v["notification"]["payment_hash"] == hash.as_str() {
                        return Ok::<_, anyhow::Error>(v);
                    }
                }
            }
        }
    })
    .await??;
    assert_eq!(note["notification_type"], "payment_received");
    assert_eq!(note["notification"]["amount"], 2_000_000);
    assert_eq!(note["notification"]["invoice"], made.invoice.as_str());
    let looked = tokio::time::timeout(
        NET_WAIT,
        nwc.lookup_invoice(LookupInvoiceRequest {
            payment_hash: None,
            invoice: Some(made.invoice.clone()),
        }),
    )
    .await??;
    assert_eq!(looked.state, Some(TransactionState::Settled));
    assert!(looked.preimage.is_some() && looked.settled_at.is_some());

    // Who was notified: every notification is addressed to the connection
    // whose payment it is. c1: 4 sent + 1 received, c2: its one payment,
    // each over NIP-44 and NIP-04; the others (and the stranger) nothing.
    let mut notified: HashMap<nostr::PublicKey, usize> = HashMap::new();
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(quiet_until, service_notes.recv()).await {
            Ok(Ok(RelayPoolNotification::Event { event, .. })) => {
                for p in event.tags.public_keys() {
                    *notified.entry(*p).or_default() += 1;
                }
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert_eq!(notified.get(&c1.client_pubkey), Some(&10), "{notified:?}");
    assert_eq!(notified.get(&c2.client_pubkey), Some(&2), "{notified:?}");
    assert_eq!(notified.len(), 2, "{notified:?}");
    assert!(!db_files_contain(&db_path, &secret1)?);

    // --- round-trip latency: 50 get_balance through the nwc client ---
    let mut times = Vec::with_capacity(50);
    for _ in 0..50 {
        let t = Instant::now();
        tokio::time::timeout(NET_WAIT, nwc.get_balance()).await??;
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "NWC get_balance round trip over loopback (nwc 0.44 client, NIP-04, n=50): median {:?}, p99 {:?}, max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
    let mut times = Vec::with_capacity(50);
    for _ in 0..50 {
        let req = app1.request(
            &json!({"method": "get_balance", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?;
        let t = Instant::now();
        app1.must_call(&req).await?;
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "NWC get_balance round trip over loopback (raw NIP-44 app, n=50): median {:?}, p99 {:?}, max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );

    // With one long-lived subscription for all responses (what a wallet app
    // keeps open), the round trip excludes setting up a REQ per request.
    let mut notes = app1.client.notifications();
    app1.client
        .subscribe(
            Filter::new()
                .kind(Kind::WalletConnectResponse)
                .author(app1.service)
                .pubkey(app1.keys.public_key()),
            None,
        )
        .await?;
    let mut times = Vec::with_capacity(50);
    for _ in 0..50 {
        let req = app1.request(
            &json!({"method": "get_balance", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?;
        let t = Instant::now();
        let client = app1.client.clone();
        let sent = req.clone();
        tokio::spawn(async move { client.send_event(&sent).await });
        tokio::time::timeout(NET_WAIT, async {
            loop {
                if let Ok(RelayPoolNotification::Event { event, .. }) = notes.recv().await {
                    if event.tags.event_ids().any(|e| *e == req.id) {
                        return;
                    }
                }
            }
        })
        .await?;
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "NWC get_balance round trip over loopback (NIP-44 app with a standing subscription, n=50): median {:?}, p99 {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    );

    // The same requests handled in-process (no relay): the service's own share.
    let mut times = Vec::with_capacity(50);
    let mut balance_times = Vec::with_capacity(50);
    for _ in 0..50 {
        let req = app1.request(
            &json!({"method": "get_balance", "params": {}}),
            Some("nip44_v2"),
            vec![],
        )?;
        let t = Instant::now();
        service.handle_request(&req).await.context("response")?;
        times.push(t.elapsed());
        let t = Instant::now();
        let _ = a.balances();
        balance_times.push(t.elapsed());
    }
    times.sort();
    balance_times.sort();
    eprintln!(
        "NWC get_balance handled in-process (n=50): median {:?}, p99 {:?}; of which ldk-node list_balances median {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&balance_times, 0.5),
    );

    nwc.shutdown().await;
    service.stop().await;
    relay.shutdown().await;
    a.stop().await?;
    b.stop().await?;
    chain.stop().await?;
    Ok(())
}
