//! `/metrics`: off unless `[metrics] bind` is set, then Prometheus text on
//! its own listener whose counters move with the traffic.

use anyhow::{Context as _, Result};
use cairn_e2e::{backend_tests, note, within, Backend, TestNode};
use nostr::Keys;
use serde_json::json;

/// The value of the sample `name{labels}` (labels as rendered, e.g.
/// `type="EVENT"`; several are matched in any order), 0 when absent.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
            metric == name && labels.iter().all(|label| rest.contains(label))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

async fn scrape(node: &TestNode) -> Result<String> {
    scrape_at(node.metrics_addr().context("metrics are on")?).await
}

async fn scrape_at(addr: std::net::SocketAddr) -> Result<String> {
    let r = within("scrape", reqwest::get(format!("http://{addr}/metrics"))).await??;
    anyhow::ensure!(r.status().is_success(), "scrape answered {}", r.status());
    Ok(r.text().await?)
}

async fn metrics_are_off_by_default(backend: Backend) -> Result<()> {
    let node = TestNode::start(&backend).await?;
    assert!(node.metrics_addr().is_none());
    // Nor are they on the public port.
    let r = within(
        "GET /metrics",
        reqwest::get(format!("{}/metrics", node.http_url())),
    )
    .await??;
    assert_ne!(r.status(), reqwest::StatusCode::OK);
    node.finish().await
}

async fn counters_move_with_traffic(backend: Backend) -> Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.metrics.bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await?;
    let before = scrape(&node).await?;
    let mut client = node.connect().await?;
    let keys = Keys::generate();
    let first = note(&keys, "counted");
    client.publish(&first).await?.assert_accepted("first");
    client.publish(&first).await?; // duplicate
    let mut bad = serde_json::to_value(note(&keys, "bad signature"))?;
    bad["sig"] = json!("00".repeat(64));
    client.publish_json(&bad).await?;
    let got = client
        .query("q", &[json!({"authors": [keys.public_key().to_hex()]})])
        .await?;
    assert_eq!(got.len(), 1);
    let after = scrape(&node).await?;

    let moved =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    // Other nodes in this test process share the recorder: at least ours.
    assert!(
        moved("cairn_messages_received_total", &["type=\"EVENT\""]) >= 3.0,
        "{after}"
    );
    assert!(
        moved("cairn_messages_received_total", &["type=\"REQ\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_messages_sent_total", &["type=\"OK\""]) >= 3.0,
        "{after}"
    );
    assert!(
        moved("cairn_messages_sent_total", &["type=\"EOSE\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "cairn_events_total",
            &["accepted=\"true\"", "reason=\"stored\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "cairn_events_total",
            &["accepted=\"true\"", "reason=\"duplicate\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "cairn_events_total",
            &["accepted=\"false\"", "reason=\"invalid\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_writer_commits_total", &["result=\"ok\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_writer_batch_events_count", &[]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_writer_commit_seconds_count", &[]) >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("cairn_writer_commit_seconds_bucket{le=\"0.001\"}"),
        "a histogram, not a summary: {after}"
    );
    assert!(
        moved("cairn_query_seconds_count", &["shape=\"authors\""]) >= 1.0,
        "{after}"
    );
    assert!(sample(&after, "cairn_connections", &[]) >= 1.0, "{after}");
    assert!(sample(&after, "cairn_database_bytes", &[]) > 0.0, "{after}");
    assert!(after.contains("# HELP cairn_events_total"), "{after}");
    client.close().await;
    node.finish().await
}

/// Two nodes on one Postgres database: an event published on A reaches a
/// live subscriber on B, and B's `/metrics` shows the cross-process fan-out
/// lag (a histogram with a plausible mean), and the slow-reader and pacing
/// counters from the first scrape.
async fn cluster_fan_out_lag_is_measured(backend: Backend) -> Result<()> {
    let metrics_on = |s: &mut cairn_node::Settings| {
        s.metrics.bind = Some("127.0.0.1:0".parse().expect("an address"));
    };
    let a = TestNode::start_with(&backend, metrics_on).await?;
    let url = a.pg().context("a Postgres database")?.url.clone();
    let b = TestNode::start_with(&Backend::Sqlite, |s| {
        metrics_on(s);
        s.database_url = Some(url);
    })
    .await?;
    let first = scrape(&b).await?;
    for name in [
        "cairn_slow_readers_dropped_total",
        "cairn_cluster_pacing_stalls_total",
    ] {
        assert!(
            first.lines().any(|l| l.starts_with(name)),
            "{name} from the first scrape: {first}"
        );
    }
    // B's LISTEN connection comes up in the background: an event published
    // before it is up reaches B by catch-up (no lag measured, not "notify").
    // Probe until one arrives by notification, then take the baseline.
    let mut publisher = a.connect().await?;
    let notified = |text: &str| sample(text, "cairn_cluster_events_total", &["via=\"notify\""]);
    let probe_keys = Keys::generate();
    let deadline = std::time::Instant::now() + cairn_e2e::WAIT;
    let before = loop {
        publisher
            .publish(&note(&probe_keys, "probe"))
            .await?
            .assert_accepted("a probe on A");
        let scraped = scrape(&b).await?;
        if notified(&scraped) >= 1.0 {
            break scraped;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "B never received an event by notification: {scraped}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let keys = Keys::generate();
    let mut subscriber = b.connect().await?;
    subscriber
        .req(
            "live",
            &[json!({"authors": [keys.public_key().to_hex()], "limit": 0})],
        )
        .await?
        .eose("live");
    let sent = note(&keys, "across processes");
    publisher.publish(&sent).await?.assert_accepted("on A");
    let got = subscriber.next_event("live").await?;
    assert_eq!(got.id, sent.id);
    let after = scrape(&b).await?;
    let moved = |name: &str| sample(&after, name, &[]) - sample(&before, name, &[]);
    let count = moved("cairn_cluster_fanout_lag_seconds_count");
    let sum = moved("cairn_cluster_fanout_lag_seconds_sum");
    assert!(count >= 1.0, "the event was measured: {after}");
    let mean = sum / count;
    assert!(
        (0.0..30.0).contains(&mean),
        "a plausible lag (same machine): {mean} s"
    );
    assert!(
        after.contains("cairn_cluster_fanout_lag_seconds_bucket{le=\"0.1\"}"),
        "a histogram: {after}"
    );
    assert!(
        notified(&after) - notified(&before) >= 1.0,
        "the event came by notification: {after}"
    );
    subscriber.close().await;
    publisher.close().await;
    b.finish().await?;
    a.finish().await
}

backend_tests!(metrics_are_off_by_default, counters_move_with_traffic);

/// Postgres only: on SQLite nothing crosses processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cluster_fan_out_lag_is_measured() {
    match Backend::postgres_from_env() {
        Some(backend) => {
            cairn_e2e::run_case(
                "cluster_fan_out_lag_is_measured",
                backend,
                cluster_fan_out_lag_is_measured,
            )
            .await
        }
        None => cairn_e2e::skip_postgres("cluster_fan_out_lag_is_measured"),
    }
}

// ---------------------------------------------------------------------------
// Identity and payments: a node with both (and zaps) on testchain, a payer
// with a real Lightning channel to it, real NWC requests over its relay.

/// One zap: 30,000 sat (well above any dust limit, so the channel balance
/// the receiver sees is exactly it; under the 40,000 sat a 1M sat channel
/// lets one HTLC carry).
const ZAP_MSAT: u64 = 30_000_000;

/// Scrapes `addr` until `name{labels}` reads `want` (sampled gauges follow
/// wallet syncs); the last scrape. Fails with the last value after `WAIT`.
async fn until_sample(
    addr: std::net::SocketAddr,
    name: &str,
    labels: &[&str],
    want: f64,
) -> Result<String> {
    let deadline = std::time::Instant::now() + crate::ln_support::WAIT;
    loop {
        let text = scrape_at(addr).await?;
        let got = sample(&text, name, labels);
        if got == want {
            return Ok(text);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{name}{labels:?} is {got}, expected {want}: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Whether `name` has a sample line at all (a gauge that was never set has none).
fn present(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.split([' ', '{']).next() == Some(name))
}

/// Confirmations bitcoind counts for `txid`.
async fn confirmations(
    chain: &cairn_testchain::TestChain,
    txid: &serde_json::Value,
) -> Result<f64> {
    let tx = chain
        .rpc("getrawtransaction", vec![txid.clone(), json!(true)])
        .await?;
    Ok(tx["confirmations"].as_f64().unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_and_payments_metrics_match_a_real_node() -> Result<()> {
    tokio::time::timeout(
        std::time::Duration::from_secs(300),
        identity_and_payments_metrics(),
    )
    .await
    .context("test timed out")?
}

async fn identity_and_payments_metrics() -> Result<()> {
    use cairn_payments::lightning::PaymentOutcome;
    use nostr::nips::nip47::{MakeInvoiceRequest, NostrWalletConnectURI, Request, Response};
    use nostr::{EventBuilder, JsonUtil as _, Kind, Tag};

    let chain = cairn_testchain::TestChain::start().await?;
    let x = crate::fake_x::FakeX::start().await?;
    let dir = tempfile::tempdir()?;
    let mut settings = crate::id_support::identity_settings(dir.path(), None, &chain, &x);
    settings.payments = crate::pay_support::payments_settings(dir.path(), &chain)?.payments;
    settings.zaps.names = vec!["alice".into()];
    // The zap request names the node's own relay, on 127.0.0.1.
    settings.zaps.allow_private_relays = true;
    settings.metrics.bind = Some("127.0.0.1:0".parse()?);
    let node = crate::id_support::IdNode::start_with(settings, dir, None).await?;
    let addr = node.node().metrics_addr.context("metrics are on")?;
    let token = std::fs::read_to_string(cairn_node::admin_token::token_path(node.dir.path()))?;
    let admin = cairn_node::cli::support::admin::AdminClient::new(&node.base, token.trim())?;
    let ln = node.node().payments().context("payments run")?;
    let mut text = until_sample(addr, "cairn_payments_running", &[], 1.0).await?;
    // Set by the zap service's first sweep, which runs as it starts.
    let deadline = std::time::Instant::now() + crate::ln_support::WAIT;
    while !present(&text, "cairn_zap_receipts_pending") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no zap sweep reported: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        text = scrape_at(addr).await?;
    }

    // --- identity: an epoch closed with nothing to pay its anchor: queued ---
    let alice = crate::id_support::User::new(4301, "alice");
    crate::id_support::bind(&node, &x, &alice, 1).await?;
    let text = scrape_at(addr).await?;
    assert_eq!(
        sample(&text, "cairn_identity_open_epoch_operations", &[]),
        1.0,
        "the bind: {text}"
    );
    match node.close_epoch().await? {
        cairn_identity::service::EpochClose::Closed {
            epoch: 0,
            txid: None,
            queued: Some(_),
        } => {}
        other => anyhow::bail!("expected epoch 0 queued, got {other:?}"),
    }
    let text = scrape_at(addr).await?;
    assert_eq!(
        sample(&text, "cairn_identity_open_epoch_operations", &[]),
        0.0,
        "{text}"
    );
    // The log's leaves (the bind and its witness attestation), as the
    // service counts them.
    let log_size = node.service().status().await?.log_size as f64;
    assert!(log_size >= 1.0, "{log_size}");
    assert_eq!(
        sample(&text, "cairn_identity_log_size", &[]),
        log_size,
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_epochs_queued", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_epochs_unconfirmed", &[]),
        0.0,
        "{text}"
    );
    assert!(
        present(&text, "cairn_identity_latest_anchor_confirmations"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_latest_anchor_confirmations", &[]),
        0.0,
        "{text}"
    );

    // Funded: the next sync anchors it (in the mempool: unconfirmed).
    node.fund(&chain, 200_000).await?;
    let (_, epoch) = node.get("/identity/v1/epochs/0").await?;
    let txid = epoch["anchor"]["txid"].clone();
    anyhow::ensure!(txid.is_string(), "epoch 0 anchored: {epoch}");
    let text = scrape_at(addr).await?;
    assert_eq!(
        sample(&text, "cairn_identity_epochs_queued", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_epochs_unconfirmed", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_latest_anchor_confirmations", &[]),
        0.0,
        "{text}"
    );
    let balance = node.service().status().await?.anchoring.balance_sat as f64;
    assert!(
        balance > 0.0 && balance < 200_000.0,
        "the funding less the anchor's fee: {balance}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_anchor_balance_sat", &[]),
        balance,
        "{text}"
    );
    // One block: confirmed once.
    crate::id_support::mine(&chain, 1).await?;
    node.sync().await?;
    assert_eq!(confirmations(&chain, &txid).await?, 1.0);
    let text = scrape_at(addr).await?;
    assert_eq!(
        sample(&text, "cairn_identity_epochs_unconfirmed", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_latest_anchor_confirmations", &[]),
        1.0,
        "{text}"
    );
    let anchored_at: u64 = chain
        .rpc("getblockcount", vec![])
        .await?
        .as_u64()
        .context("height")?;

    // --- the on-chain payments wallet: one confirmed coin, one pending ---
    let address: serde_json::Value = admin.get("/admin/v1/wallet/address").await?;
    let address: bitcoin::Address = address["address"]
        .as_str()
        .context("address")?
        .parse::<bitcoin::Address<_>>()?
        .assume_checked();
    chain
        .fund(&address, bitcoin::Amount::from_sat(70_000))
        .await?;
    chain
        .send(&address, bitcoin::Amount::from_sat(5_000))
        .await?;
    until_sample(
        addr,
        "cairn_wallet_balance_sat",
        &["state=\"confirmed\""],
        70_000.0,
    )
    .await?;
    until_sample(
        addr,
        "cairn_wallet_balance_sat",
        &["state=\"pending\""],
        5_000.0,
    )
    .await?;

    // --- NWC: one request answered, one refused ---
    let before = scrape_at(addr).await?;
    let created: serde_json::Value = admin
        .post(
            "/admin/v1/nwc/connections",
            &json!({ "name": "app", "permissions": ["get_balance"] }),
        )
        .await?;
    let uri = NostrWalletConnectURI::parse(created["uri"].as_str().context("uri")?)?;
    let app = Keys::new(uri.secret.clone());
    let mut ws = cairn_e2e::WsClient::connect(&node.node().ws_url()).await?;
    ws.auth(&app).await?.assert_accepted("AUTH as the app");
    ws.req(
        "nwc",
        &[json!({ "kinds": [23195], "#p": [app.public_key().to_hex()], "limit": 0 })],
    )
    .await?
    .eose("nwc");
    let make_invoice = Request::make_invoice(MakeInvoiceRequest {
        amount: 1_000,
        description: None,
        description_hash: None,
        expiry: None,
    });
    for (request, refused) in [(Request::get_balance(), false), (make_invoice, true)] {
        let event = request.to_event(&uri)?;
        ws.publish(&event).await?.assert_accepted("the NWC request");
        let answer = ws.next_event("nwc").await?;
        let response = Response::from_event(&uri, &answer)?;
        assert_eq!(response.error.is_some(), refused, "{response:?}");
    }
    ws.close().await;
    let after = scrape_at(addr).await?;
    let moved = |labels: &[&str]| {
        sample(&after, "cairn_nwc_requests_total", labels)
            - sample(&before, "cairn_nwc_requests_total", labels)
    };
    assert_eq!(
        moved(&["method=\"get_balance\"", "result=\"ok\""]),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(&["method=\"make_invoice\"", "result=\"restricted\""]),
        1.0,
        "{after}"
    );
    assert_eq!(moved(&[]), 2.0, "nothing else counted: {after}");

    // --- a zap over a real channel: the receipt published, none pending ---
    let payer_dir = tempfile::tempdir()?;
    let payer = crate::ln_support::ln_node(payer_dir.path(), &chain)?;
    payer.start()?;
    crate::ln_support::open_channel(&chain, &payer, ln.lightning(), 1_000_000, 400_000).await?;
    until_sample(addr, "cairn_lightning_balance_sat", &[], 0.0).await?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let pay_request: serde_json::Value = http
        .get(format!("{}/.well-known/lnurlp/alice", node.base))
        .send()
        .await?
        .json()
        .await?;
    let zapper = pay_request["nostrPubkey"]
        .as_str()
        .context("nostrPubkey")?
        .to_owned();
    let request = EventBuilder::new(Kind::ZapRequest, "zap")
        .tags([
            Tag::parse(["p".to_owned(), alice.keys.public_key().to_hex()])?,
            Tag::parse(["relays".to_owned(), node.node().ws_url()])?,
            Tag::parse(["amount".to_owned(), ZAP_MSAT.to_string()])?,
        ])
        .sign_with_keys(&Keys::generate())?
        .as_json();
    let mut callback = url::Url::parse(pay_request["callback"].as_str().context("callback")?)?;
    callback
        .query_pairs_mut()
        .append_pair("amount", &ZAP_MSAT.to_string())
        .append_pair("nostr", &request);
    let invoice: serde_json::Value = http.get(callback).send().await?.json().await?;
    let invoice: cairn_payments::ldk_node::lightning_invoice::Bolt11Invoice = invoice["pr"]
        .as_str()
        .context("pr")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let sent = payer
        .pay_and_wait(&invoice, None, None, crate::ln_support::WAIT)
        .await?;
    anyhow::ensure!(
        matches!(sent.outcome, PaymentOutcome::Succeeded { .. }),
        "{:?}",
        sent.outcome
    );
    let deadline = std::time::Instant::now() + crate::ln_support::WAIT;
    loop {
        let mut reader = cairn_e2e::WsClient::connect(&node.node().ws_url()).await?;
        let receipts = reader
            .query_once(&[json!({ "kinds": [9735], "authors": [zapper] })])
            .await?;
        reader.close().await;
        if !receipts.is_empty() {
            assert_eq!(receipts.len(), 1, "{receipts:?}");
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no zap receipt");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let text = scrape_at(addr).await?;
    assert_eq!(
        sample(&text, "cairn_zap_receipts_pending", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_lightning_balance_sat", &[]),
        (ZAP_MSAT / 1000) as f64,
        "the zap: {text}"
    );

    // Anchor confirmations follow the chain: every block mined since the
    // anchor's (the channel's funding, coins, six more) counts once.
    crate::id_support::mine(&chain, 2).await?;
    node.sync().await?;
    let tip: u64 = chain
        .rpc("getblockcount", vec![])
        .await?
        .as_u64()
        .context("height")?;
    let expected = (tip - anchored_at + 1) as f64;
    assert!(
        expected >= 10.0,
        "blocks were mined since: {tip} {anchored_at}"
    );
    assert_eq!(confirmations(&chain, &txid).await?, expected);
    let text = scrape_at(addr).await?;
    assert_eq!(
        sample(&text, "cairn_identity_latest_anchor_confirmations", &[]),
        expected,
        "{text}"
    );
    assert_eq!(
        sample(&text, "cairn_identity_epochs_unconfirmed", &[]),
        0.0,
        "{text}"
    );

    payer.stop().await?;
    node.finish().await?;
    chain.stop().await?;
    Ok(())
}
