//! The owner's Relay page (`/app/relay`): open connections, events stored
//! by kind, ingest rate, database size and recent rejections by reason.
//!
//! Where the numbers come from:
//! - connections: [`Relay::connection_count`], as the `cairn_connections`
//!   gauge;
//! - database size: [`crate::server::metrics::database_bytes`], as the
//!   `cairn_database_bytes` gauge (SQLite file + WAL; Postgres
//!   `pg_database_size`);
//! - ingest and rejections: the relay's own tally of its `OK` answers to
//!   EVENTs ([`cairn_relay::metrics::ok_totals`], the same counts as
//!   `cairn_events_total`, kept without a Prometheus recorder), since the
//!   process started; "recent" is the difference to the oldest sample this
//!   page kept (it samples at each view, at most [`WINDOW`] back);
//! - events by kind: [`cairn_relay::store::Store::kind_counts`] — one
//!   `GROUP BY kind` over the `(kind, created_at)` index on a reader
//!   connection (never the write connection, so ingest does not wait for
//!   it), stopped after [`KIND_BUDGET_MS`], and cached for [`KIND_TTL`]
//!   with one count running at a time: a burst of page views over a
//!   million events costs one index walk a half-minute, not one each.
//!   When the count does not finish in time the page says so and shows
//!   the last one that did.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cairn_relay::store::{QueryBudget, StoreError};
use cairn_relay::Relay;

use super::app::{app_html, signed_in_app};
use super::{Frame, Web};
use crate::cli::support::time::format_unix;
use crate::settings::Settings;

/// How long a count of events by kind is reused.
pub const KIND_TTL: Duration = Duration::from_secs(30);
/// Longest one count of events by kind may run.
pub const KIND_BUDGET_MS: u64 = 2_000;
/// How far back "recent" ingest and rejections reach.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Samples kept for the window.
const MAX_SAMPLES: usize = 256;

/// What the Relay page keeps between views.
pub struct RelayStats {
    sqlite_file: Option<PathBuf>,
    started: Instant,
    kinds: tokio::sync::Mutex<Option<KindCount>>,
    samples: Mutex<VecDeque<Sample>>,
}

#[derive(Clone)]
struct KindCount {
    at: Instant,
    unix: u64,
    kinds: Vec<(u16, u64)>,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    /// `(accepted, reason, count)` as [`cairn_relay::metrics::ok_totals`].
    totals: Vec<(bool, &'static str, u64)>,
}

impl RelayStats {
    /// The page's state for a node with `settings`.
    pub fn new(settings: &Settings) -> Self {
        Self {
            sqlite_file: settings
                .database_url()
                .strip_prefix("sqlite://")
                .map(PathBuf::from),
            started: Instant::now(),
            kinds: tokio::sync::Mutex::new(None),
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Events by kind: the cached count while it is younger than
    /// [`KIND_TTL`], else a new one (one at a time); with a note when the
    /// count failed or is older than that.
    async fn kinds(&self, relay: &Relay) -> (Option<KindCount>, Option<String>) {
        let mut cached = self.kinds.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.at.elapsed() < KIND_TTL) {
            return (Some(c.clone()), None);
        }
        let note = match relay
            .store()
            .kind_counts(QueryBudget::millis(KIND_BUDGET_MS))
            .await
        {
            Ok(Some(kinds)) => {
                *cached = Some(KindCount {
                    at: Instant::now(),
                    unix: nostr::Timestamp::now().as_secs(),
                    kinds,
                });
                None
            }
            Ok(None) => Some("This database cannot count events by kind.".to_owned()),
            Err(StoreError::Timeout) => Some(format!(
                "Counting the events by kind took longer than {} s, so it was stopped.",
                KIND_BUDGET_MS / 1000
            )),
            Err(e) => {
                tracing::warn!(error = %e, "web: counting events by kind failed");
                Some("Counting the events by kind failed; see the node's log.".to_owned())
            }
        };
        (cached.clone(), note)
    }

    /// Takes a sample of the OK tallies; returns it and the oldest one
    /// kept within [`WINDOW`].
    fn sample(&self) -> (Sample, Option<Sample>) {
        let now = Sample {
            at: Instant::now(),
            totals: cairn_relay::metrics::ok_totals(),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        while samples
            .front()
            .is_some_and(|s| s.at.elapsed() > WINDOW || samples.len() >= MAX_SAMPLES)
        {
            samples.pop_front();
        }
        let oldest = samples.front().cloned();
        samples.push_back(now.clone());
        (now, oldest)
    }
}

/// The Relay page's routes.
pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new().route("/app/relay", get(page))
}

struct KindRow {
    kind: u16,
    name: &'static str,
    count: u64,
}

struct ReasonRow {
    reason: &'static str,
    recent: Option<u64>,
    total: u64,
}

#[derive(Template)]
#[template(path = "app/relay.html")]
struct RelayPage {
    frame: Frame,
    app_csrf: Option<String>,
    connections: usize,
    max_connections: usize,
    database: String,
    kinds: Vec<KindRow>,
    kinds_total: u64,
    kinds_counted_at: Option<String>,
    kinds_note: Option<String>,
    accepted_total: u64,
    /// Accepted EVENTs per second over the recent window, with its length.
    recent_rate: Option<(String, String)>,
    average_rate: String,
    uptime: String,
    rejections: Vec<ReasonRow>,
    rejected_total: u64,
    window: String,
}

/// What a kind is, for the ones a messaging relay mostly holds.
pub fn kind_name(kind: u16) -> &'static str {
    match kind {
        0 => "profile (metadata)",
        1 => "note",
        3 => "follows",
        4 => "direct message (NIP-04)",
        5 => "deletion request",
        6 => "repost",
        7 => "reaction",
        13 => "seal",
        14 => "chat message (rumor)",
        1059 => "gift wrap (private message)",
        1984 => "report",
        9734 => "zap request",
        9735 => "zap receipt",
        10002 => "relay list",
        10050 => "inbox relays (NIP-17)",
        13194 => "wallet connect info",
        22242 => "auth",
        23194 => "wallet connect request",
        23195 => "wallet connect response",
        27235 => "HTTP auth",
        30023 => "long-form article",
        _ => match cairn_relay::kinds::classify(kind) {
            cairn_relay::kinds::KindClass::Replaceable => "replaceable",
            cairn_relay::kinds::KindClass::Addressable => "addressable",
            cairn_relay::kinds::KindClass::Ephemeral => "ephemeral",
            _ => "",
        },
    }
}

fn per_second(events: u64, over: Duration) -> String {
    let secs = over.as_secs_f64().max(1.0);
    format!("{:.2}", events as f64 / secs)
}

fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7_199 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else if (n as f64) < 1024.0 * MIB {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{:.2} GiB", n as f64 / (1024.0 * MIB))
    }
}

/// `GET /app/relay`.
async fn page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (app, session) = match signed_in_app(&web, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let stats = &app.relay_stats;
    let relay = &web.relay;
    let sources = crate::server::metrics::Sources {
        relay: Arc::clone(relay),
        sqlite_file: stats.sqlite_file.clone(),
        identity: None,
        payments: None,
    };
    let database = match crate::server::metrics::database_bytes(&sources).await {
        Some(n) => bytes(n),
        None => "unknown".to_owned(),
    };
    let (count, kinds_note) = stats.kinds(relay).await;
    let (now, oldest) = stats.sample();
    let total = |s: &Sample, accepted: bool, reason: &str| {
        s.totals
            .iter()
            .find(|(a, r, _)| *a == accepted && *r == reason)
            .map_or(0, |(_, _, n)| *n)
    };
    let accepted_total = total(&now, true, "stored");
    let recent_rate = oldest
        .as_ref()
        .filter(|o| o.at.elapsed() >= Duration::from_secs(5))
        .map(|o| {
            let over = now.at.duration_since(o.at);
            (
                per_second(
                    accepted_total.saturating_sub(total(o, true, "stored")),
                    over,
                ),
                span(over),
            )
        });
    let uptime = stats.started.elapsed();
    let rejections: Vec<ReasonRow> = cairn_relay::metrics::OK_REASONS
        .iter()
        .map(|&reason| ReasonRow {
            reason,
            recent: oldest
                .as_ref()
                .map(|o| total(&now, false, reason).saturating_sub(total(o, false, reason))),
            total: total(&now, false, reason),
        })
        .filter(|r| r.total > 0)
        .collect();
    let page = RelayPage {
        frame: Frame::of(&web),
        app_csrf: Some(session.csrf),
        connections: relay.connection_count(),
        max_connections: relay.config().limits.max_connections,
        database,
        kinds_total: count
            .as_ref()
            .map_or(0, |c| c.kinds.iter().map(|k| k.1).sum::<u64>()),
        kinds_counted_at: count.as_ref().map(|c| format_unix(c.unix)),
        kinds: count
            .map(|c| {
                c.kinds
                    .into_iter()
                    .map(|(kind, count)| KindRow {
                        kind,
                        name: kind_name(kind),
                        count,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        kinds_note,
        accepted_total,
        recent_rate,
        average_rate: per_second(accepted_total, uptime),
        uptime: span(uptime),
        rejected_total: rejections.iter().map(|r| r.total).sum(),
        rejections,
        window: span(
            oldest
                .as_ref()
                .map_or(Duration::ZERO, |o| now.at.duration_since(o.at)),
        ),
    };
    app_html(StatusCode::OK, page.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_kinds_read_well() {
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(per_second(30, Duration::from_secs(60)), "0.50");
        assert_eq!(per_second(3, Duration::ZERO), "3.00", "no division by zero");
        assert_eq!(span(Duration::from_secs(90)), "90 s");
        assert_eq!(span(Duration::from_secs(600)), "10 min");
        assert_eq!(kind_name(1059), "gift wrap (private message)");
        assert_eq!(kind_name(30_000), "addressable");
    }

    #[test]
    fn samples_reach_back_no_further_than_the_window() {
        let stats = RelayStats::new(&Settings::default());
        let (_, oldest) = stats.sample();
        assert!(
            oldest.is_none(),
            "the first view has nothing to compare with"
        );
        let (now, oldest) = stats.sample();
        let oldest = oldest.unwrap();
        assert!(oldest.at <= now.at);
        for _ in 0..2 * MAX_SAMPLES {
            stats.sample();
        }
        assert!(stats.samples.lock().unwrap().len() <= MAX_SAMPLES);
    }
}
