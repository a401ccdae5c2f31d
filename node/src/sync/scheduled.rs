//! Scheduled syncs: each `[[sync]]` entry of the settings is reconciled
//! with its relay by [`crate::sync::sync`] (the code of `cairn sync`) in the
//! background of `cairn serve`, again and again.
//!
//! Invariants:
//!
//! - **One run at a time per entry, and one process per entry.** Each entry
//!   is its own loop; on Postgres the loop runs under a [`lease`] of its
//!   own ([`Job::Sync`], keyed by the entry's relay, filter and direction),
//!   so of several `cairn serve` on one database exactly one runs it (the
//!   others stand by and take over when it stops). On SQLite it simply
//!   runs.
//! - **Every run is bounded**: by `timeout_secs` as a whole (a run past it
//!   is dropped, its connection closed, and counts as failed) and each
//!   reply within it by [`crate::sync::DEFAULT_REPLY_TIMEOUT`]. A stopping
//!   node drops the run in progress at once; what it had pulled is stored
//!   (each event is committed as it arrives), the rest comes next time.
//! - **Failures back off.** After a run that worked the next starts
//!   `interval_secs` after it ended; after `n` failed runs in a row it
//!   starts after `interval_secs · 2^(n-1)` (the upper half of that, with
//!   jitter, as the outbox's [`Backoff`]), at most `max(interval_secs, 1 h)`.
//! - **Status is visible**: a log line per run (info when it worked, warn
//!   when not) and [`ScheduledSync::json`] in `/ready` under `sync` (runs,
//!   failures in a row, last error, last report, next run, whether this
//!   process holds the entry's lease). It is information, not a condition of
//!   readiness: a node whose peer is down still serves.
//! - Pulled events enter through [`Relay::publish`], so this node's
//!   subscribers get them live; the relay URL shown is redacted of any
//!   password.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_relay::Relay;
use nostr::{JsonUtil as _, Keys};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Direction, SyncReport, SyncRequest, DEFAULT_REPLY_TIMEOUT};
use crate::outbox::schedule::Backoff;
use crate::redact::redact_url;
use crate::server::lease::{self, Job, LeaseState};
use crate::settings::sync::SyncSettings;
use crate::settings::Settings;

/// Longest wait after failed runs, unless the interval is longer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3_600);

/// One `[[sync]]` entry as `cairn serve` runs it.
#[derive(Debug, Clone)]
pub struct ScheduledSync {
    /// What its runs did.
    pub status: Arc<SyncStatus>,
    /// Whether this process runs it (holds its lease).
    pub lease: LeaseState,
}

impl ScheduledSync {
    /// Its entry in `/ready`.
    pub fn json(&self) -> Value {
        let mut v = self.status.json();
        v["held"] = Value::Bool(self.lease.held());
        v
    }
}

/// What the runs of one entry did, for `/ready` and the tests.
#[derive(Debug)]
pub struct SyncStatus {
    relay: String,
    direction: Direction,
    interval_secs: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct State {
    runs: u64,
    failed_runs: u64,
    failures_in_a_row: u32,
    running: bool,
    last_started_at: Option<u64>,
    last_ok_at: Option<u64>,
    last_error: Option<String>,
    last_report: Option<SyncReport>,
    next_run_at: Option<u64>,
}

impl SyncStatus {
    fn new(entry: &SyncSettings) -> Self {
        Self {
            relay: redact_url(&entry.relay),
            direction: entry.direction,
            interval_secs: entry.interval_secs,
            state: Mutex::new(State::default()),
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// Runs that ended (worked or not).
    pub fn runs(&self) -> u64 {
        self.update(|s| s.runs)
    }

    /// The report of the last run that worked.
    pub fn last_report(&self) -> Option<SyncReport> {
        self.update(|s| s.last_report.clone())
    }

    /// The status as JSON.
    pub fn json(&self) -> Value {
        let state = self.update(|s| s.clone());
        let mut v = json!({
            "relay": self.relay,
            "direction": self.direction.name(),
            "interval_secs": self.interval_secs,
        });
        if let (Value::Object(v), Ok(Value::Object(s))) = (&mut v, serde_json::to_value(state)) {
            v.extend(s);
        }
        v
    }
}

/// The lease job of an entry: its relay, filter and direction, hashed, so
/// that processes listing the same entry (in any order) share its lease.
fn job_of(entry: &SyncSettings, filter: &nostr::Filter) -> Job {
    let relay =
        cairn_relay::auth::normalize_relay_url(&entry.relay).unwrap_or_else(|| entry.relay.clone());
    let digest = Sha256::new()
        .chain_update(relay.as_bytes())
        .chain_update([0])
        .chain_update(filter.as_json().as_bytes())
        .chain_update([0])
        .chain_update(entry.direction.name().as_bytes())
        .finalize();
    Job::Sync(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

/// Starts a loop per `[[sync]]` entry (under its lease on Postgres, `pool`),
/// stopped by `shutdown`. Checks every entry first: a bad relay URL,
/// filter or key file fails the start.
pub fn spawn_all(
    settings: &Settings,
    relay: &Arc<Relay>,
    pool: Option<PgPool>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<JoinHandle<()>>, Vec<ScheduledSync>)> {
    let mut planned = Vec::new();
    for entry in &settings.sync {
        let filter = entry.filter().map_err(anyhow::Error::msg)?;
        match cairn_relay::auth::normalize_relay_url(&entry.relay) {
            Some(u) if u.starts_with("ws://") || u.starts_with("wss://") => {}
            _ => anyhow::bail!(
                "[[sync]] relay {:?} is not a ws:// or wss:// URL",
                entry.relay
            ),
        }
        let key_file = entry
            .key_file
            .as_ref()
            .or(settings.outbox.key_file.as_ref());
        let keys: Option<Keys> = key_file
            .map(|path| crate::cli::support::keys::load_keys(Some(path)))
            .transpose()
            .map_err(|e| e.context(format!("[[sync]] {}: key_file", entry.relay)))?;
        let job = job_of(entry, &filter);
        let request = SyncRequest {
            relay_url: entry.relay.clone(),
            filter,
            direction: entry.direction,
            keys,
            max_records: settings.relay.negentropy.max_records,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        };
        planned.push((entry.clone(), job, request));
    }
    let (mut tasks, mut syncs) = (Vec::new(), Vec::new());
    for (entry, job, request) in planned {
        let status = Arc::new(SyncStatus::new(&entry));
        let pacing = Pacing {
            every: Duration::from_secs(entry.interval_secs.max(1)),
            run_timeout: Duration::from_secs(entry.timeout_secs.max(1)),
        };
        let (relay, for_work) = (Arc::clone(relay), Arc::clone(&status));
        let work: lease::WorkFn = Box::new(move |stop| {
            Box::pin(run(
                Arc::clone(&relay),
                request.clone(),
                pacing,
                Arc::clone(&for_work),
                stop,
            )) as lease::BoxedWork
        });
        let (task, lease) = lease::spawn(job, pool.clone(), shutdown.clone(), work);
        tracing::info!(
            relay = %status.relay,
            direction = entry.direction.name(),
            every_secs = pacing.every.as_secs(),
            "scheduled sync"
        );
        tasks.push(task);
        syncs.push(ScheduledSync { status, lease });
    }
    Ok((tasks, syncs))
}

#[derive(Debug, Clone, Copy)]
struct Pacing {
    every: Duration,
    run_timeout: Duration,
}

fn now() -> u64 {
    nostr::Timestamp::now().as_secs()
}

/// Runs one entry until `stop`.
async fn run(
    relay: Arc<Relay>,
    request: SyncRequest,
    pacing: Pacing,
    status: Arc<SyncStatus>,
    stop: CancellationToken,
) {
    let backoff = Backoff {
        initial: pacing.every,
        max: pacing.every.max(MAX_BACKOFF),
    };
    let shown = status.relay.clone();
    loop {
        status.update(|s| {
            s.running = true;
            s.last_started_at = Some(now());
            s.next_run_at = None;
        });
        let mut progress = |line: &str| tracing::debug!(relay = %shown, "sync: {line}");
        let attempt = tokio::time::timeout(
            pacing.run_timeout,
            super::sync(&relay, &request, &mut progress),
        );
        let outcome = tokio::select! {
            _ = stop.cancelled() => {
                status.update(|s| s.running = false);
                return;
            }
            outcome = attempt => outcome,
        };
        let result = match outcome {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the run did not finish within {} s",
                pacing.run_timeout.as_secs()
            )),
        };
        let delay = match result {
            Ok(report) => {
                tracing::info!(
                    relay = %shown,
                    pulled = report.pulled,
                    pull_failed = report.pull_failed,
                    pushed = report.pushed,
                    push_failed = report.push_failed,
                    rounds = report.rounds,
                    bytes = report.bytes,
                    "scheduled sync done"
                );
                status.update(|s| {
                    s.runs += 1;
                    s.failures_in_a_row = 0;
                    s.last_ok_at = Some(now());
                    s.last_error = None;
                    s.last_report = Some(report);
                });
                pacing.every
            }
            Err(error) => {
                let n = status.update(|s| {
                    s.runs += 1;
                    s.failed_runs += 1;
                    s.failures_in_a_row = s.failures_in_a_row.saturating_add(1);
                    s.last_error = Some(error.clone());
                    s.failures_in_a_row
                });
                let delay = backoff.delay(n, rand::random::<f64>());
                tracing::warn!(
                    relay = %shown,
                    %error,
                    failures_in_a_row = n,
                    retry_in_secs = delay.as_secs(),
                    "scheduled sync failed"
                );
                delay
            }
        };
        status.update(|s| {
            s.running = false;
            s.next_run_at = Some(now() + delay.as_secs());
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(relay: &str, filter: Value, direction: Direction) -> SyncSettings {
        SyncSettings {
            relay: relay.to_owned(),
            filter,
            interval_secs: 60,
            direction,
            timeout_secs: 60,
            key_file: None,
        }
    }

    #[test]
    fn the_lease_follows_relay_filter_and_direction() {
        let job = |e: &SyncSettings| job_of(e, &e.filter().unwrap());
        let a = entry("ws://a.example", json!({"kinds": [1]}), Direction::Both);
        assert_eq!(
            job(&a),
            job(&entry(
                "ws://a.example/",
                json!({"kinds": [1]}),
                Direction::Both
            ))
        );
        assert_ne!(
            job(&a),
            job(&entry(
                "ws://b.example",
                json!({"kinds": [1]}),
                Direction::Both
            ))
        );
        assert_ne!(
            job(&a),
            job(&entry(
                "ws://a.example",
                json!({"kinds": [2]}),
                Direction::Both
            ))
        );
        assert_ne!(
            job(&a),
            job(&entry(
                "ws://a.example",
                json!({"kinds": [1]}),
                Direction::Pull
            ))
        );
    }

    #[test]
    fn status_json_hides_a_password_and_counts_runs() {
        let status = SyncStatus::new(&entry(
            "wss://user:secret@r.example",
            json!({}),
            Direction::Push,
        ));
        status.update(|s| {
            s.runs = 2;
            s.failures_in_a_row = 1;
            s.last_error = Some("cannot connect".into());
        });
        let v = status.json();
        assert!(!v.to_string().contains("secret"), "{v}");
        assert_eq!(v["direction"], "push");
        assert_eq!(v["runs"], 2);
        assert_eq!(v["failures_in_a_row"], 1);
        assert_eq!(v["last_error"], "cannot connect");
    }
}
