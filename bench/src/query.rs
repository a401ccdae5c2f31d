//! `query`: REQ → EOSE latency by author, by kind, by `#p` and as a follow
//! feed (many authors, kind 1) on a seeded store. [`ReqLoop`] and
//! [`Samples`] are shared with `mixed`, which runs the same REQs under ingest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::procfs::CpuMeter;
use crate::seed::Manifest;
use crate::stats::{Report, Summary};
use crate::ws::{connect, next_text, Incoming, Ws};

/// Options of `cairn-bench query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Timed REQs in total, spread evenly over the shapes.
    #[arg(long, default_value_t = 2_000)]
    pub requests: usize,
    /// Connections, each running its REQs one after another.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    #[command(flatten)]
    pub shapes: ShapeArgs,
    /// Untimed REQs per connection first (warms caches and the connection).
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Manifest written by `seed`.
    #[arg(long, default_value = "bench-seed.json")]
    pub manifest: PathBuf,
    /// Give up when one REQ takes longer than this many seconds.
    #[arg(long, default_value_t = 30)]
    pub req_timeout_secs: u64,
    /// Process id of the relay: report the CPU time it used during the run.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// What the REQs ask for; shared by `query` and `mixed`.
#[derive(Debug, Clone, Args)]
pub struct ShapeArgs {
    /// `limit` of every filter.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Authors in the follow-feed filter (`{"authors":[…],"kinds":[1]}`),
    /// drawn afresh for every REQ from the seed's authors; 0 leaves that
    /// shape out.
    #[arg(long, default_value_t = 500)]
    pub follows: usize,
}

impl ShapeArgs {
    /// The shapes to cycle through, in order.
    pub fn shapes(&self) -> Vec<Shape> {
        let mut shapes = vec![Shape::Author, Shape::Kind, Shape::PTag];
        if self.follows > 0 {
            shapes.push(Shape::Follows);
        }
        shapes
    }
}

/// The filter shapes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    /// `{"authors":[pk]}`.
    Author,
    /// `{"kinds":[k]}`.
    Kind,
    /// `{"#p":[pk]}`.
    PTag,
    /// `{"authors":[pk × follows],"kinds":[1]}`: a home feed.
    Follows,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Author => "by_author",
            Shape::Kind => "by_kind",
            Shape::PTag => "by_p_tag",
            Shape::Follows => "follow_feed",
        }
    }

    /// A filter of this shape with a random target from the manifest.
    fn filter(self, m: &Manifest, shape: &ShapeArgs, rng: &mut impl Rng) -> serde_json::Value {
        let limit = shape.limit;
        match self {
            Shape::Author => {
                json!({"authors": [m.authors[rng.gen_range(0..m.authors.len())]], "limit": limit})
            }
            Shape::Kind => {
                json!({"kinds": [m.kinds[rng.gen_range(0..m.kinds.len())]], "limit": limit})
            }
            Shape::PTag => {
                json!({"#p": [m.recipients[rng.gen_range(0..m.recipients.len())]], "limit": limit})
            }
            Shape::Follows => {
                let n = shape.follows.min(m.authors.len());
                let follows: Vec<&String> = rand::seq::index::sample(rng, m.authors.len(), n)
                    .into_iter()
                    .map(|i| &m.authors[i])
                    .collect();
                json!({"authors": follows, "kinds": [1], "limit": limit})
            }
        }
    }
}

/// Latencies and results of REQs, by shape.
#[derive(Debug, Default)]
pub struct Samples {
    latencies: BTreeMap<Shape, Vec<Duration>>,
    events: BTreeMap<Shape, u64>,
    closed: BTreeMap<String, u64>,
}

impl Samples {
    /// Add another connection's samples.
    pub fn merge(&mut self, other: Samples) {
        for (shape, l) in other.latencies {
            self.latencies.entry(shape).or_default().extend(l);
        }
        for (shape, n) in other.events {
            *self.events.entry(shape).or_default() += n;
        }
        for (reason, n) in other.closed {
            *self.closed.entry(reason).or_default() += n;
        }
    }

    /// Add the request count and rate (over `wall`), a latency summary per
    /// shape and over all of them, events per REQ, and CLOSED reasons.
    pub fn report(&self, report: &mut Report, shapes: &[Shape], wall: Duration) {
        let timed: usize = self.latencies.values().map(Vec::len).sum();
        report.add("requests", timed as u64);
        report.add(
            "requests_per_second",
            timed as f64 / wall.as_secs_f64().max(1e-9),
        );
        let mut every = Vec::new();
        for &shape in shapes {
            let lat = self.latencies.get(&shape).map(Vec::as_slice).unwrap_or(&[]);
            every.extend_from_slice(lat);
            report.add_summary(shape.name(), Summary::from_durations(lat));
            let events = self.events.get(&shape).copied().unwrap_or(0);
            report.add(
                &format!("{}_events_per_req", shape.name()),
                events as f64 / lat.len().max(1) as f64,
            );
        }
        report.add_summary("all_shapes", Summary::from_durations(&every));
        if !self.closed.is_empty() {
            report.add("closed_reasons", json!(self.closed));
        }
    }
}

/// Send one REQ and wait for its EOSE; returns (latency, events received)
/// or the CLOSED reason.
async fn one_req(
    ws: &mut Ws,
    sub: &str,
    filter: &serde_json::Value,
    limit: Duration,
) -> Result<std::result::Result<(Duration, u64), String>> {
    let frame = json!(["REQ", sub, filter]).to_string();
    let started = Instant::now();
    ws.send(Message::text(frame)).await.context("sending REQ")?;
    let mut events = 0u64;
    loop {
        let text = next_text(ws, limit)
            .await
            .with_context(|| format!("waiting for EOSE of {sub}"))?;
        match Incoming::parse(&text) {
            Incoming::Event { sub: s, .. } if s == sub => events += 1,
            Incoming::Eose(s) if s == sub => {
                let elapsed = started.elapsed();
                ws.send(Message::text(json!(["CLOSE", sub]).to_string()))
                    .await
                    .context("sending CLOSE")?;
                return Ok(Ok((elapsed, events)));
            }
            Incoming::Closed(s, reason) if s == sub => return Ok(Err(reason)),
            Incoming::Notice(n) => bail!("NOTICE during REQ: {n}"),
            // AUTH challenge, CLOSED/EVENT of earlier subscriptions.
            _ => {}
        }
    }
}

/// When a connection's timed REQs stop.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this many timed REQs.
    Count(usize),
    /// At the first REQ that would start after this instant.
    Deadline(Instant),
}

/// One connection's REQ loop: what it asks and for how long.
#[derive(Debug, Clone)]
pub struct ReqLoop {
    /// Relay URL.
    pub url: String,
    /// Targets to draw from.
    pub manifest: Arc<Manifest>,
    /// Filter parameters.
    pub shape: ShapeArgs,
    /// Untimed REQs first.
    pub warmup: usize,
    /// Longest wait for one REQ's EOSE.
    pub req_timeout: Duration,
}

impl ReqLoop {
    /// Open a connection and run REQs one after another, cycling through
    /// the shapes (warm-up ones first, untimed), until `until`.
    pub async fn run(&self, conn: usize, until: Until) -> Result<Samples> {
        let mut ws = connect(&self.url, Duration::from_secs(10)).await?;
        let mut rng = StdRng::from_entropy();
        let shapes = self.shape.shapes();
        let mut samples = Samples::default();
        for i in 0.. {
            let timed = i >= self.warmup;
            let more = match until {
                Until::Count(n) => i < self.warmup + n,
                Until::Deadline(at) => !timed || Instant::now() < at,
            };
            if !more {
                break;
            }
            let shape = shapes[i % shapes.len()];
            let filter = shape.filter(&self.manifest, &self.shape, &mut rng);
            let sub = format!("q{conn}-{i}");
            match one_req(&mut ws, &sub, &filter, self.req_timeout).await? {
                Ok((latency, events)) if timed => {
                    samples.latencies.entry(shape).or_default().push(latency);
                    *samples.events.entry(shape).or_default() += events;
                }
                Ok(_) => {}
                Err(reason) => *samples.closed.entry(reason).or_default() += 1,
            }
        }
        let _ = ws.close(None).await;
        Ok(samples)
    }
}

/// Run the REQs and report per-shape latency.
pub async fn run(url: &str, args: &QueryArgs) -> Result<Report> {
    let manifest = Arc::new(Manifest::load(&args.manifest)?);
    let connections = args.connections.max(1);
    let per_conn = args.requests.div_ceil(connections);
    let req_loop = Arc::new(ReqLoop {
        url: url.to_owned(),
        manifest: Arc::clone(&manifest),
        shape: args.shapes.clone(),
        warmup: args.warmup,
        req_timeout: Duration::from_secs(args.req_timeout_secs),
    });
    let mut tasks = JoinSet::new();
    for c in 0..connections {
        let req_loop = Arc::clone(&req_loop);
        let count = per_conn.min(args.requests.saturating_sub(c * per_conn));
        tasks.spawn(async move { req_loop.run(c, Until::Count(count)).await });
    }
    let cpu = CpuMeter::start(args.pid.as_slice());
    let started = Instant::now();
    let mut all = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        all.merge(joined.context("query task panicked")??);
    }
    let wall = started.elapsed();

    let mut report = Report::new("query");
    report.add("url", url);
    report.add("store_events_seeded", manifest.events);
    report.add("connections", connections as u64);
    report.add("limit", args.shapes.limit as u64);
    report.add("follows", args.shapes.follows as u64);
    all.report(&mut report, &args.shapes.shapes(), wall);
    cpu.report(&mut report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn manifest(authors: usize) -> Manifest {
        Manifest {
            authors: (0..authors).map(|i| format!("{i:064x}")).collect(),
            recipients: vec!["bb".into()],
            kinds: vec![1, 7],
            events: 0,
            seed: Some(1),
        }
    }

    #[test]
    fn follow_feed_names_distinct_seed_authors_and_kind_1() {
        let m = manifest(1_000);
        let args = ShapeArgs {
            limit: 100,
            follows: 500,
        };
        let mut rng = StdRng::seed_from_u64(3);
        let f = Shape::Follows.filter(&m, &args, &mut rng);
        let authors: BTreeSet<&str> = f["authors"]
            .as_array()
            .expect("authors")
            .iter()
            .map(|a| a.as_str().expect("hex"))
            .collect();
        assert_eq!(authors.len(), 500, "500 distinct authors");
        assert!(authors.iter().all(|a| m.authors.iter().any(|m| m == a)));
        assert_eq!(f["kinds"], json!([1]));
        assert_eq!(f["limit"], 100);
        // Fewer authors in the seed than asked for: all of them, once each.
        let small = manifest(30);
        let f = Shape::Follows.filter(&small, &args, &mut rng);
        assert_eq!(f["authors"].as_array().expect("authors").len(), 30);
    }

    #[test]
    fn follows_zero_leaves_the_follow_feed_out() {
        let with = ShapeArgs {
            limit: 10,
            follows: 500,
        };
        let without = ShapeArgs {
            limit: 10,
            follows: 0,
        };
        assert_eq!(
            with.shapes(),
            [Shape::Author, Shape::Kind, Shape::PTag, Shape::Follows]
        );
        assert_eq!(without.shapes(), [Shape::Author, Shape::Kind, Shape::PTag]);
    }
}
