//! `idle`: hold many idle WebSockets open and measure the relay's resident
//! memory per connection (VmRSS of its process, read from `/proc`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{Report, Summary};
use crate::ws::{connect, next_text, reason_key, Incoming, Ws};

/// Options of `cairn-bench idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Process id of the relay, whose VmRSS is read before and after.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 100)]
    pub parallel: usize,
    /// Seconds to hold every connection open before measuring again.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
}

/// Open a connection and wait for the relay's first message (the AUTH
/// challenge), which proves the relay has set the connection up.
async fn open_one(url: &str) -> Result<(Ws, Duration)> {
    let started = Instant::now();
    let mut ws = connect(url, Duration::from_secs(30)).await?;
    match Incoming::parse(&next_text(&mut ws, Duration::from_secs(30)).await?) {
        Incoming::Auth => {}
        other => anyhow::bail!("expected the AUTH challenge first, got {other:?}"),
    }
    Ok((ws, started.elapsed()))
}

/// Keep reading (answers pings, notices a close) until told to stop.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) -> Option<String> {
    let ended = loop {
        tokio::select! {
            _ = stop.changed() => break None,
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => break Some(format!("closed by relay: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("read error: {e}")),
                None => break Some("connection ended".to_owned()),
            }
        }
    };
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
    ended
}

/// Open the connections, measure, close.
pub async fn run(url: &str, args: &IdleArgs) -> Result<Report> {
    if let Some(limit) = crate::procfs::open_files_limit() {
        anyhow::ensure!(
            limit as usize > args.connections + 64,
            "open-file limit {limit} is too low for {} connections: run `ulimit -n 65536` first",
            args.connections
        );
    }
    let rss = |field: &str| {
        args.pid
            .map(|pid| crate::procfs::status_kib(pid, field))
            .transpose()
    };
    let before = rss("VmRSS")?;
    let anon_before = rss("RssAnon")?;

    eprintln!("opening {} idle connections…", args.connections);
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = JoinSet::new();
    let mut handshakes = Vec::with_capacity(args.connections);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut opening = futures::stream::iter((0..args.connections).map(|_| open_one(url)))
        .buffer_unordered(args.parallel.max(1));
    while let Some(result) = opening.next().await {
        match result {
            Ok((ws, took)) => {
                handshakes.push(took);
                holders.spawn(hold(ws, stop_rx.clone()));
            }
            Err(e) => *failures.entry(reason_key(&format!("{e:#}"))).or_default() += 1,
        }
    }
    let open_time = started.elapsed();
    let opened = handshakes.len();
    eprintln!(
        "{opened} open in {:.1} s; holding for {} s…",
        open_time.as_secs_f64(),
        args.hold_secs
    );
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let after = rss("VmRSS")?;
    let anon_after = rss("RssAnon")?;
    let peak = rss("VmHWM")?;
    // A fresh client must still be served while the idle ones are held.
    let probe = open_one(url).await.map(|(_, took)| took);

    let _ = stop_tx.send(true);
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(joined) = holders.join_next().await {
        if let Some(reason) = joined.context("holder task panicked")? {
            *dropped.entry(reason_key(&reason)).or_default() += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_close = rss("VmRSS")?;

    let mut report = Report::new("idle");
    report.add("url", url);
    report.add("requested", args.connections as u64);
    report.add("opened", opened as u64);
    report.add("open_seconds", open_time.as_secs_f64());
    report.add_summary("handshake_to_auth", Summary::from_durations(&handshakes));
    report.add("dropped_while_held", dropped.values().sum::<u64>());
    match probe {
        Ok(took) => report.add("probe_connect_ms", took.as_secs_f64() * 1e3),
        Err(e) => report.add("probe_connect_error", format!("{e:#}")),
    }
    if let (Some(b), Some(a)) = (before, after) {
        report.add("server_rss_before_kib", b);
        report.add("server_rss_held_kib", a);
        let per = (a as f64 - b as f64) / opened.max(1) as f64;
        report.add("server_kib_per_connection", per);
    }
    if let (Some(b), Some(a)) = (anon_before, anon_after) {
        // Heap only: excludes file pages (e.g. SQLite's memory-mapped reads).
        report.add(
            "server_anon_kib_per_connection",
            (a as f64 - b as f64) / opened.max(1) as f64,
        );
    }
    if let Some(p) = peak {
        report.add("server_rss_peak_kib", p);
    }
    if let Some(c) = after_close {
        report.add("server_rss_after_close_kib", c);
    }
    if !failures.is_empty() {
        report.add("open_failures", json!(failures));
    }
    if !dropped.is_empty() {
        report.add("drop_reasons", json!(dropped));
    }
    Ok(report)
}
