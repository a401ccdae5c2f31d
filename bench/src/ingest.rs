//! `ingest`: events per second of `OK true` over many pipelined connections.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use nostr::{EventBuilder, Tag};
use serde_json::json;

use crate::events::{derive_keys, run_id, sign, sign_all, Signed};
use crate::filewatch::{FileWatch, WatchArgs};
use crate::procfs::CpuMeter;
use crate::stats::{Report, Summary};
use crate::ws::{publish_pipelined, PipelineOptions, PipelineOutcome};

/// Options of `cairn-bench ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Parallel publishing connections.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Events to publish in total.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events in flight per connection (sent, OK not yet received).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Distinct authors the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub authors: usize,
    /// Bytes of filler text in each event's content.
    #[arg(long, default_value_t = 140)]
    pub content_bytes: usize,
    /// Give up on a connection after this many seconds without a message.
    #[arg(long, default_value_t = 30)]
    pub stall_secs: u64,
    /// Process id of the relay: report the CPU time it used during the run
    /// (several times for several processes: their sum).
    #[arg(long)]
    pub pid: Vec<u32>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// Sign the events, publish them over connections spread round-robin over
/// `urls`, and report.
pub async fn run(urls: &[String], args: &IngestArgs) -> Result<Report> {
    let run = run_id();
    let keys = derive_keys(rand::random(), 0x1a6e57, args.authors.max(1))?;
    let filler = "x".repeat(args.content_bytes);
    let tag = format!("bench-{run}");
    eprintln!(
        "signing {} events over {} authors…",
        args.events,
        keys.len()
    );
    let (events, sign_time) = sign_all(args.events, |i| {
        let builder = EventBuilder::text_note(format!("ingest {run} {i} {filler}"))
            .tag(Tag::hashtag(tag.clone()));
        sign(builder, &keys[i % keys.len()])
    })?;
    eprintln!(
        "signed in {:.1} s; publishing over {} connections (window {})…",
        sign_time.as_secs_f64(),
        args.connections,
        args.window
    );
    let mut report = Report::new("ingest");
    report.add("url", urls.join(","));
    report.add("run_id", run);
    report.add("connections", args.connections as u64);
    report.add("window", args.window as u64);
    report.add("sign_seconds", sign_time.as_secs_f64());
    let options = PipelineOptions {
        urls: urls.to_vec(),
        connections: args.connections,
        window: args.window,
        stall_timeout: Duration::from_secs(args.stall_secs),
        progress: true,
    };
    publish_measured(&options, events, &args.pid, &args.watch, &mut report).await?;
    Ok(report)
}

/// Publishes `events` through the pipeline while measuring the relay's CPU
/// (`pids`, summed) and the watched file, and adds the outcome to `report`: the part
/// `ingest` and `seed` share.
pub async fn publish_measured(
    options: &PipelineOptions,
    events: Vec<Signed>,
    pids: &[u32],
    watch: &WatchArgs,
    report: &mut Report,
) -> Result<()> {
    let cpu = CpuMeter::start(pids);
    let watch = FileWatch::start(watch);
    let outcome = publish_pipelined(options, events).await?;
    add_outcome(report, &outcome);
    cpu.report(report);
    if let Some(watch) = watch {
        watch.finish(report).await;
    }
    Ok(())
}

/// Report fields shared by `ingest` and `seed`.
pub fn add_outcome(report: &mut Report, outcome: &PipelineOutcome) {
    add_outcome_as(report, "", outcome);
}

/// [`add_outcome`] with every key prefixed (`mixed` reports its background
/// ingest as `ingest_sent`, `ingest_ok_latency`, …).
pub fn add_outcome_as(report: &mut Report, prefix: &str, outcome: &PipelineOutcome) {
    let key = |k: &str| format!("{prefix}{k}");
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    report.add(&key("sent"), outcome.sent);
    report.add(&key("accepted"), outcome.accepted);
    report.add(&key("rejected"), outcome.rejected_total());
    report.add(&key("unanswered"), outcome.unanswered);
    report.add(&key("seconds"), secs);
    report.add(&key("accepted_per_second"), outcome.accepted as f64 / secs);
    report.add_summary(
        &key("ok_latency"),
        Summary::from_durations(&outcome.ack_latencies),
    );
    if !outcome.rejected.is_empty() {
        report.add(&key("rejected_reasons"), json!(outcome.rejected));
    }
    if !outcome.notices.is_empty() {
        report.add(&key("notices"), json!(outcome.notices));
    }
    if !outcome.connection_errors.is_empty() {
        report.add(
            &key("connection_errors"),
            outcome.connection_errors.len() as u64,
        );
        let mut errs = outcome.connection_errors.clone();
        errs.sort();
        errs.dedup();
        errs.truncate(5);
        report.add(&key("connection_error_samples"), json!(errs));
    }
}
