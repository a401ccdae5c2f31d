//! `mixed`: REQ → EOSE latency by shape on a seeded store *while* fresh
//! events are ingested in the background at a steady rate.
//!
//! The store is one `seed` filled; its manifest gives the REQ targets and,
//! through its seed, the authors' keys. The background events are the
//! seed's mix (kinds, `p` tags) by the same authors, created "now", so they
//! land on top of exactly the results the REQs ask for. They are signed
//! before the clock starts and published by [`PacedPublisher`] over a few
//! connections of their own. The REQs are `query`'s ([`ReqLoop`]), started
//! once the ingest has run for `--ramp-secs` and timed until the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use tokio::task::JoinSet;

use crate::events::sign_all;
use crate::ingest::add_outcome_as;
use crate::paced::{PacedOptions, PacedPublisher};
use crate::procfs::CpuMeter;
use crate::query::{ReqLoop, Samples, ShapeArgs, Until};
use crate::seed::{fresh_event, Manifest};
use crate::stats::Report;

/// Options of `cairn-bench mixed`.
#[derive(Debug, Args)]
pub struct MixedArgs {
    /// Seconds the REQs are timed for (the ingest runs throughout).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds of ingest before the REQs start.
    #[arg(long, default_value_t = 2)]
    pub ramp_secs: u64,
    /// Background ingest, events per second in total.
    #[arg(long, default_value_t = 2_000)]
    pub ingest_rate: u64,
    /// Connections the background ingest is spread over.
    #[arg(long, default_value_t = 4)]
    pub ingest_connections: usize,
    /// Most unanswered events per ingest connection; a relay further behind
    /// makes the publisher wait (reported as `ingest_max_lag`).
    #[arg(long, default_value_t = 256)]
    pub ingest_window: usize,
    /// REQ connections, each running its REQs one after another.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    #[command(flatten)]
    pub shapes: ShapeArgs,
    /// Untimed REQs per connection first.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Manifest written by `seed`.
    #[arg(long, default_value = "bench-seed.json")]
    pub manifest: PathBuf,
    /// Give up when one REQ takes longer than this many seconds (and on an
    /// ingest connection silent this long).
    #[arg(long, default_value_t = 30)]
    pub req_timeout_secs: u64,
    /// Process id of the relay: report the CPU time it used during the run.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Sign the background events, run ingest and REQs together, report both.
pub async fn run(url: &str, args: &MixedArgs) -> Result<Report> {
    let manifest = Arc::new(Manifest::load(&args.manifest)?);
    let authors = manifest.author_keys()?;
    let recipients = manifest.recipient_keys()?;
    let total = Duration::from_secs(args.ramp_secs + args.seconds);
    let count = usize::try_from(args.ingest_rate * total.as_secs())?;
    let run_seed: u64 = rand::random();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let rate = args.ingest_rate.max(1);
    eprintln!("signing {count} background events…");
    // `created_at` follows the schedule (event i is sent i/rate s after the
    // start), so the newest events are the ones just published.
    let (events, sign_time) = sign_all(count, |i| {
        let at = now + i as u64 / rate;
        fresh_event(run_seed, i, at, &authors, &recipients)
    })?;
    eprintln!(
        "signed in {:.1} s; ingesting at {}/s, REQs after {} s for {} s…",
        sign_time.as_secs_f64(),
        args.ingest_rate,
        args.ramp_secs,
        args.seconds
    );

    let req_timeout = Duration::from_secs(args.req_timeout_secs);
    let publisher = PacedPublisher::connect(PacedOptions {
        url: url.to_owned(),
        connections: args.ingest_connections,
        rate: args.ingest_rate,
        window: args.ingest_window,
        stall_timeout: req_timeout,
    })
    .await?;
    let req_loop = Arc::new(ReqLoop {
        url: url.to_owned(),
        manifest: Arc::clone(&manifest),
        shape: args.shapes.clone(),
        warmup: args.warmup,
        req_timeout,
    });

    let cpu = CpuMeter::start(args.pid.as_slice());
    let start = Instant::now();
    let stop = start + total;
    let ingest = tokio::spawn(publisher.run(events, start, stop));
    tokio::time::sleep_until((start + Duration::from_secs(args.ramp_secs)).into()).await;
    let queries_started = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..args.connections.max(1) {
        let req_loop = Arc::clone(&req_loop);
        tasks.spawn(async move { req_loop.run(c, Until::Deadline(stop)).await });
    }
    let mut samples = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        samples.merge(joined.context("query task panicked")??);
    }
    let query_wall = queries_started.elapsed();
    let ingest = ingest.await.context("ingest task panicked")??;

    let mut report = Report::new("mixed");
    report.add("url", url);
    report.add("store_events_seeded", manifest.events);
    report.add("seconds", args.seconds);
    report.add("connections", args.connections.max(1) as u64);
    report.add("limit", args.shapes.limit as u64);
    report.add("follows", args.shapes.follows as u64);
    samples.report(&mut report, &args.shapes.shapes(), query_wall);
    report.add("ingest_target_per_second", args.ingest_rate);
    report.add("ingest_connections", args.ingest_connections.max(1) as u64);
    report.add("ingest_sign_seconds", sign_time.as_secs_f64());
    report.add(
        "ingest_sent_per_second",
        ingest.pipeline.sent as f64 / total.as_secs_f64().max(1e-9),
    );
    add_outcome_as(&mut report, "ingest_", &ingest.pipeline);
    report.add("ingest_max_lag", ingest.max_lag);
    report.add("ingest_window_full_ticks", ingest.window_full_ticks);
    cpu.report(&mut report);
    Ok(report)
}
