//! Prometheus metrics: the recorder behind the `metrics` facade, and the
//! `/metrics` listener on `[metrics] bind` (off by default).
//!
//! Two kinds of metric:
//! - **recorded as things happen**, by the relay (see `cairn_relay::metrics`
//!   for the names: messages, events by result, writer commits, query
//!   latency, slow readers, retention) and by this module's jobs;
//! - **sampled at each scrape** ([`sample`]): gauges that are cheaper to read
//!   than to keep current (open connections, database size, identity epochs,
//!   wallet balances). Each source is read within [`SAMPLE_TIMEOUT`]; one that
//!   does not answer keeps its last value, so a scrape never hangs on a busy
//!   wallet or database.
//!
//! The recorder is global to the process (the facade has one slot): the
//! first node that starts with metrics installs it, later nodes in the same
//! process (tests) share it. Histograms are rendered as Prometheus
//! histograms with the buckets below, not as summaries.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cairn_identity::service::IdentityService;
use cairn_relay::metrics as names;
use cairn_relay::store::Database;
use cairn_relay::Relay;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;

use crate::server::runtimes::payments::PaymentsSlot;

/// Longest a scrape waits for one sampled source.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the recorder's histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Gauge: open WebSocket connections.
pub const CONNECTIONS: &str = "cairn_connections";
/// Gauge: bytes the event database takes (SQLite: the file and its WAL;
/// Postgres: `pg_database_size`).
pub const DATABASE_BYTES: &str = "cairn_database_bytes";
/// Gauge: operations accepted into the open identity epoch.
pub const IDENTITY_OPEN_EPOCH_OPERATIONS: &str = "cairn_identity_open_epoch_operations";
/// Gauge: identity epochs waiting for an anchor transaction.
pub const IDENTITY_EPOCHS_QUEUED: &str = "cairn_identity_epochs_queued";
/// Gauge: identity epochs whose anchor is not confirmed yet.
pub const IDENTITY_EPOCHS_UNCONFIRMED: &str = "cairn_identity_epochs_unconfirmed";
/// Gauge: confirmations of the latest closed identity epoch's anchor (0
/// while it is not in a block).
pub const IDENTITY_LATEST_ANCHOR_CONFIRMATIONS: &str = "cairn_identity_latest_anchor_confirmations";
/// Gauge: identity log size (operations).
pub const IDENTITY_LOG_SIZE: &str = "cairn_identity_log_size";
/// Gauge: the anchoring wallet's balance, satoshis.
pub const IDENTITY_ANCHOR_BALANCE_SAT: &str = "cairn_identity_anchor_balance_sat";
/// Gauge: the payments on-chain wallet's balance, satoshis, label `state`
/// (`confirmed`, `pending`).
pub const WALLET_BALANCE_SAT: &str = "cairn_wallet_balance_sat";
/// Gauge: Lightning channel balance, satoshis.
pub const LIGHTNING_BALANCE_SAT: &str = "cairn_lightning_balance_sat";
/// Gauge: 1 while payments run, 0 while they wait to start.
pub const PAYMENTS_RUNNING: &str = "cairn_payments_running";

/// Upper bounds of the latency histograms (seconds): 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Upper bounds of the batch-size histogram (events).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// What a scrape samples.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The relay (connections, database).
    pub relay: Arc<Relay>,
    /// The SQLite file, when the store is SQLite.
    pub sqlite_file: Option<std::path::PathBuf>,
    /// The identity service, when enabled.
    pub identity: Option<Arc<IdentityService>>,
    /// The payments slot, when payments are enabled.
    pub payments: Option<Arc<PaymentsSlot>>,
}

/// The process's Prometheus recorder, installing it on first use.
pub fn recorder() -> anyhow::Result<&'static PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(names::WRITER_BATCH_EVENTS.into()),
            BATCH_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    // Only one node can win the slot; a loser's recorder is dropped and it
    // uses the winner's handle.
    if HANDLE.set(handle.clone()).is_ok() {
        metrics::set_global_recorder(recorder)
            .context("another metrics recorder is already installed in this process")?;
        describe();
        // Shown at 0 from the first scrape, not only once one happened.
        metrics::counter!(names::SLOW_READERS_DROPPED).increment(0);
        metrics::counter!(names::CLUSTER_PACING_STALLS).increment(0);
    }
    Ok(HANDLE.get().expect("set above"))
}

/// Bind the metrics listener (done before anything else starts, so that a
/// wrong `[metrics] bind` fails the start cleanly).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} ([metrics] bind)"))
}

/// Serve `/metrics` on `listener` until `shutdown` is cancelled; the task
/// also runs the recorder's upkeep.
pub fn serve(
    listener: tokio::net::TcpListener,
    sources: Sources,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let handle = recorder()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(sources));
    let task = tokio::spawn(async move {
        let upkeep = async {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "the metrics listener failed");
                }
            }
            () = upkeep => {}
        }
    });
    Ok(task)
}

async fn scrape(State(sources): State<Arc<Sources>>) -> impl IntoResponse {
    sample(&sources).await;
    let body = match recorder() {
        Ok(handle) => handle.render(),
        Err(_) => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Refresh the sampled gauges.
pub async fn sample(s: &Sources) {
    metrics::gauge!(CONNECTIONS).set(s.relay.connection_count() as f64);
    if let Some(bytes) = database_bytes(s).await {
        metrics::gauge!(DATABASE_BYTES).set(bytes as f64);
    }
    if let Some(service) = &s.identity {
        if let Ok(Ok(status)) = tokio::time::timeout(SAMPLE_TIMEOUT, service.status()).await {
            metrics::gauge!(IDENTITY_OPEN_EPOCH_OPERATIONS)
                .set(status.open_epoch_operations as f64);
            metrics::gauge!(IDENTITY_LOG_SIZE).set(status.log_size as f64);
            let a = &status.anchoring;
            metrics::gauge!(IDENTITY_EPOCHS_QUEUED).set(a.queued_epochs.len() as f64);
            metrics::gauge!(IDENTITY_EPOCHS_UNCONFIRMED).set(a.unconfirmed_epochs.len() as f64);
            metrics::gauge!(IDENTITY_ANCHOR_BALANCE_SAT).set(a.balance_sat as f64);
        }
        if let Ok(Ok(epoch)) = tokio::time::timeout(SAMPLE_TIMEOUT, service.latest_epoch()).await {
            let confirmations = epoch.anchor.map_or(0, |a| a.confirmations);
            metrics::gauge!(IDENTITY_LATEST_ANCHOR_CONFIRMATIONS).set(f64::from(confirmations));
        }
    }
    if let Some(slot) = &s.payments {
        let running = slot.get();
        metrics::gauge!(PAYMENTS_RUNNING).set(if running.is_some() { 1.0 } else { 0.0 });
        if let Some(p) = running {
            // Both lock their wallet, which a sync may hold for a while:
            // off the async workers, and not waited for past the timeout.
            let read = tokio::task::spawn_blocking(move || {
                (p.wallet().balance(), p.lightning().channel_balance_sats())
            });
            if let Ok(Ok((onchain, lightning))) = tokio::time::timeout(SAMPLE_TIMEOUT, read).await {
                metrics::gauge!(WALLET_BALANCE_SAT, "state" => "confirmed")
                    .set(onchain.confirmed.to_sat() as f64);
                metrics::gauge!(WALLET_BALANCE_SAT, "state" => "pending")
                    .set(onchain.pending.to_sat() as f64);
                metrics::gauge!(LIGHTNING_BALANCE_SAT).set(lightning as f64);
            }
        }
    }
}

/// Bytes the event database takes (the `cairn_database_bytes` gauge; also
/// the web app's Relay page), within [`SAMPLE_TIMEOUT`] for Postgres.
pub(crate) async fn database_bytes(s: &Sources) -> Option<u64> {
    if let Some(file) = &s.sqlite_file {
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = file.clone().into_os_string();
        wal.push("-wal");
        return Some(size(file) + size(std::path::Path::new(&wal)));
    }
    match s.relay.store().database()? {
        Database::Postgres(pool) => {
            let query = sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())")
                .fetch_one(&pool);
            match tokio::time::timeout(SAMPLE_TIMEOUT, query).await {
                Ok(Ok(bytes)) => u64::try_from(bytes).ok(),
                _ => None,
            }
        }
        Database::Sqlite(_) => None,
    }
}

/// Help texts, rendered as `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::MESSAGES_RECEIVED,
        "Client messages received, by type"
    );
    describe_counter!(names::MESSAGES_SENT, "Messages sent to clients, by type");
    describe_counter!(
        names::EVENTS,
        "OK answers to EVENTs, by acceptance and reason"
    );
    describe_counter!(
        names::SLOW_READERS_DROPPED,
        "Connections closed for reading too slowly"
    );
    describe_histogram!(
        names::WRITER_BATCH_EVENTS,
        Unit::Count,
        "Events per group commit"
    );
    describe_histogram!(
        names::WRITER_COMMIT_SECONDS,
        Unit::Seconds,
        "Group commit duration"
    );
    describe_histogram!(
        names::WRITER_SYNC_SECONDS,
        Unit::Seconds,
        "Sync to disk of the batches committed since the last one"
    );
    describe_counter!(names::WRITER_COMMITS, "Group commits, by result");
    describe_histogram!(
        names::QUERY_SECONDS,
        Unit::Seconds,
        "Stored-event query duration, by filter shape"
    );
    describe_histogram!(
        names::CLUSTER_FANOUT_LAG_SECONDS,
        Unit::Seconds,
        "Postgres: from another process announcing an event to its local fan-out"
    );
    describe_counter!(
        names::CLUSTER_PACING_STALLS,
        "Postgres: times remote events stopped waiting for a subscriber that took none"
    );
    describe_counter!(
        cairn_payments::nwc::NWC_REQUESTS,
        "NWC requests answered, by method and result"
    );
    describe_counter!(
        names::RETENTION_PURGED,
        "Events removed by the retention policy, by rule"
    );
    describe_gauge!(CONNECTIONS, "Open WebSocket connections");
    describe_gauge!(DATABASE_BYTES, Unit::Bytes, "Size of the event database");
    describe_gauge!(
        IDENTITY_OPEN_EPOCH_OPERATIONS,
        "Operations in the open identity epoch"
    );
    describe_gauge!(
        IDENTITY_EPOCHS_QUEUED,
        "Identity epochs waiting for an anchor transaction"
    );
    describe_gauge!(
        IDENTITY_EPOCHS_UNCONFIRMED,
        "Identity epochs with an unconfirmed anchor"
    );
    describe_gauge!(IDENTITY_LOG_SIZE, "Operations in the identity log");
    describe_gauge!(
        IDENTITY_LATEST_ANCHOR_CONFIRMATIONS,
        "Confirmations of the latest closed epoch's anchor"
    );
    describe_gauge!(
        cairn_payments::zap::ZAP_RECEIPTS_PENDING,
        "Paid zaps whose receipt is not published yet"
    );
    describe_gauge!(
        IDENTITY_ANCHOR_BALANCE_SAT,
        "Anchoring wallet balance, satoshis"
    );
    describe_gauge!(
        WALLET_BALANCE_SAT,
        "On-chain wallet balance, satoshis, by state"
    );
    describe_gauge!(LIGHTNING_BALANCE_SAT, "Lightning channel balance, satoshis");
    describe_gauge!(PAYMENTS_RUNNING, "1 while payments run");
}
