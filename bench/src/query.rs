//! `query`: REQ → EOSE latency by author, by kind and by `#p` on a seeded store.

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
    /// Timed REQs in total, spread evenly over the three shapes.
    #[arg(long, default_value_t = 2_000)]
    pub requests: usize,
    /// Connections, each running its REQs one after another.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// `limit` of every filter.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
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

/// The filter shapes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    /// `{"authors":[pk]}`.
    Author,
    /// `{"kinds":[k]}`.
    Kind,
    /// `{"#p":[pk]}`.
    PTag,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::Author, Shape::Kind, Shape::PTag];

    fn name(self) -> &'static str {
        match self {
            Shape::Author => "by_author",
            Shape::Kind => "by_kind",
            Shape::PTag => "by_p_tag",
        }
    }

    /// A filter of this shape with a random target from the manifest.
    fn filter(self, m: &Manifest, limit: usize, rng: &mut impl Rng) -> serde_json::Value {
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
        }
    }
}

#[derive(Debug, Default)]
struct Samples {
    latencies: BTreeMap<Shape, Vec<Duration>>,
    events: BTreeMap<Shape, u64>,
    closed: BTreeMap<String, u64>,
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

/// Run the REQs and report per-shape latency.
pub async fn run(url: &str, args: &QueryArgs) -> Result<Report> {
    let manifest = Arc::new(Manifest::load(&args.manifest)?);
    let connections = args.connections.max(1);
    let per_conn = args.requests.div_ceil(connections);
    let mut tasks = JoinSet::new();
    for c in 0..connections {
        let url = url.to_owned();
        let manifest = Arc::clone(&manifest);
        let (limit, warmup) = (args.limit, args.warmup);
        let req_timeout = Duration::from_secs(args.req_timeout_secs);
        let count = per_conn.min(args.requests.saturating_sub(c * per_conn));
        tasks.spawn(async move {
            let mut ws = connect(&url, Duration::from_secs(10)).await?;
            let mut rng = StdRng::from_entropy();
            let mut samples = Samples::default();
            for i in 0..warmup + count {
                let shape = Shape::ALL[i % Shape::ALL.len()];
                let filter = shape.filter(&manifest, limit, &mut rng);
                let sub = format!("q{c}-{i}");
                match one_req(&mut ws, &sub, &filter, req_timeout).await? {
                    Ok((latency, events)) if i >= warmup => {
                        samples.latencies.entry(shape).or_default().push(latency);
                        *samples.events.entry(shape).or_default() += events;
                    }
                    Ok(_) => {}
                    Err(reason) => *samples.closed.entry(reason).or_default() += 1,
                }
            }
            let _ = ws.close(None).await;
            anyhow::Ok(samples)
        });
    }
    let cpu = CpuMeter::start(args.pid.as_slice());
    let started = Instant::now();
    let mut all = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        let s = joined.context("query task panicked")??;
        for (shape, l) in s.latencies {
            all.latencies.entry(shape).or_default().extend(l);
        }
        for (shape, n) in s.events {
            *all.events.entry(shape).or_default() += n;
        }
        for (reason, n) in s.closed {
            *all.closed.entry(reason).or_default() += n;
        }
    }
    let wall = started.elapsed();

    let mut report = Report::new("query");
    report.add("url", url);
    report.add("store_events_seeded", manifest.events);
    report.add("connections", connections as u64);
    report.add("limit", args.limit as u64);
    let timed: usize = all.latencies.values().map(Vec::len).sum();
    report.add("requests", timed as u64);
    report.add(
        "requests_per_second",
        timed as f64 / wall.as_secs_f64().max(1e-9),
    );
    let mut every = Vec::new();
    for shape in Shape::ALL {
        let lat = all.latencies.get(&shape).map(Vec::as_slice).unwrap_or(&[]);
        every.extend_from_slice(lat);
        report.add_summary(shape.name(), Summary::from_durations(lat));
        let events = all.events.get(&shape).copied().unwrap_or(0);
        report.add(
            &format!("{}_events_per_req", shape.name()),
            events as f64 / lat.len().max(1) as f64,
        );
    }
    report.add_summary("all_shapes", Summary::from_durations(&every));
    cpu.report(&mut report);
    if !all.closed.is_empty() {
        report.add("closed_reasons", json!(all.closed));
    }
    Ok(report)
}
