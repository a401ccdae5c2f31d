//! `fanout`: one publisher, many live subscribers; latency from sending an
//! EVENT to each subscriber receiving it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::{SinkExt, StreamExt};
use nostr::{EventBuilder, Keys, Tag};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::events::{run_id, sign, sign_all};
use crate::procfs::CpuMeter;
use crate::stats::{Report, Summary};
use crate::ws::{connect, connect_many, next_text, reason_key, Incoming, Ws};

/// Options of `cairn-bench fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Live subscriber connections.
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Events the publisher sends.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Events per second the publisher sends.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds to wait for late deliveries after the last publish.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Process id of the relay: report the CPU time it used during the run
    /// (several times for several processes: their sum).
    #[arg(long)]
    pub pid: Vec<u32>,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubOutcome {
    received: Vec<(usize, Instant)>,
    unknown: u64,
    notices: Vec<String>,
    error: Option<String>,
}

async fn subscribe(ws: &mut Ws, sub: &str, tag: &str) -> Result<()> {
    let req = json!(["REQ", sub, {"kinds": [1], "#t": [tag], "limit": 0}]).to_string();
    ws.send(Message::text(req)).await.context("sending REQ")?;
    loop {
        match Incoming::parse(&next_text(ws, Duration::from_secs(30)).await?) {
            Incoming::Eose(s) if s == sub => return Ok(()),
            Incoming::Closed(_, reason) => bail!("subscription refused: {reason}"),
            Incoming::Event { .. } => bail!("stored event delivered for a fresh tag with limit 0"),
            _ => {}
        }
    }
}

async fn listen(
    mut ws: Ws,
    ids: Arc<HashMap<String, usize>>,
    expected: usize,
    mut stop: watch::Receiver<bool>,
) -> (SubOutcome, Ws) {
    let mut out = SubOutcome::default();
    // One wait for the stop signal for the whole run: made anew for every
    // message, it would join and leave the watch's waiter list (one lock
    // shared by every subscriber task) for every delivery, and the load
    // generator would spend on that what the relay should be measured on.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    while out.received.len() < expected {
        tokio::select! {
            _ = &mut stopped => break,
            msg = ws.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => match Incoming::parse(t.as_str()) {
                        Incoming::Event { id, .. } => match ids.get(&id) {
                            Some(&idx) => out.received.push((idx, now)),
                            None => out.unknown += 1,
                        },
                        Incoming::Notice(n) => out.notices.push(n),
                        Incoming::Closed(_, reason) => {
                            out.error = Some(format!("CLOSED: {reason}"));
                            break;
                        }
                        _ => {}
                    },
                    Some(Ok(Message::Close(frame))) => {
                        out.error = Some(format!("closed by relay: {frame:?}"));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        out.error = Some(format!("read error: {e}"));
                        break;
                    }
                    None => {
                        out.error = Some("connection ended".into());
                        break;
                    }
                }
            }
        }
    }
    // Not closed here: a subscriber that has everything would otherwise
    // hang up while others still wait for the last event, and the relay
    // would tear down thousands of connections inside that event's
    // fan-out. `run` closes every socket once all are done.
    (out, ws)
}

/// Publish at a steady rate, noting when each event left; returns the send
/// instants by index and the OK answers.
async fn publish(
    ws: &mut Ws,
    frames: &[crate::events::Signed],
    rate: f64,
) -> Result<(Vec<Option<Instant>>, u64, BTreeMap<String, u64>)> {
    let mut sent_at = vec![None; frames.len()];
    let index: HashMap<&str, usize> = frames
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut next, mut answered, mut accepted) = (0, 0, 0u64);
    let mut rejected = BTreeMap::new();
    let deadline = Duration::from_secs(30);
    while answered < frames.len() {
        tokio::select! {
            _ = tick.tick(), if next < frames.len() => {
                // Stamp before sending: a fast relay may deliver before `send` returns.
                sent_at[next] = Some(Instant::now());
                ws.send(Message::Text(frames[next].frame.clone())).await.context("publishing")?;
                next += 1;
            }
            msg = timeout(deadline, ws.next()) => {
                let text = match msg {
                    Err(_) => bail!("publisher: no OK for {deadline:?}"),
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                    Ok(Some(Err(e))) => bail!("publisher read error: {e}"),
                    Ok(None) => bail!("publisher connection ended"),
                };
                if let Incoming::Ok { id, accepted: ok, message } = Incoming::parse(text.as_str()) {
                    if index.contains_key(id.as_str()) {
                        answered += 1;
                        if ok {
                            accepted += 1;
                        } else {
                            *rejected.entry(reason_key(&message)).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    Ok((sent_at, accepted, rejected))
}

/// Open the subscribers (spread round-robin over `urls`), publish on the
/// first URL, and report delivery latency.
pub async fn run(urls: &[String], args: &FanoutArgs) -> Result<Report> {
    let url = urls.first().context("no relay URL")?;
    if let Some(limit) = crate::procfs::open_files_limit() {
        anyhow::ensure!(
            limit as usize > args.subscribers + 64,
            "open-file limit {limit} is too low for {} subscribers: run `ulimit -n 65536` \
             (or the hard limit) first, here and for the relay",
            args.subscribers
        );
    }
    let run = run_id();
    let tag = format!("bench-{run}");
    let keys = Keys::generate();
    let (frames, _) = sign_all(args.events, |i| {
        sign(
            EventBuilder::text_note(format!("fanout {run} {i}")).tag(Tag::hashtag(tag.clone())),
            &keys,
        )
    })?;
    let ids: Arc<HashMap<String, usize>> = Arc::new(
        frames
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect(),
    );

    eprintln!("opening {} subscribers…", args.subscribers);
    let open_started = Instant::now();
    let mut sockets = connect_many(urls, args.subscribers, 64, Duration::from_secs(20)).await?;
    let subscribed = futures::stream::iter(sockets.iter_mut().enumerate().map(|(i, ws)| {
        let tag = tag.clone();
        async move { subscribe(ws, &format!("fan{i}"), &tag).await }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
    for r in subscribed {
        r.context("subscribing")?;
    }
    let open_time = open_started.elapsed();
    eprintln!(
        "{} subscribers got EOSE in {:.1} s; publishing {} events at {}/s…",
        sockets.len(),
        open_time.as_secs_f64(),
        args.events,
        args.rate
    );

    let cpu = CpuMeter::start(&args.pid);
    let urls_len = urls.len();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut listeners = JoinSet::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let listening = listen(ws, Arc::clone(&ids), args.events, stop_rx.clone());
        // Subscriber `i` is on `urls[i % urls.len()]` (see `connect_many`).
        listeners.spawn(async move { (i % urls_len, listening.await) });
    }
    let mut publisher = connect(url, Duration::from_secs(10)).await?;
    let (sent_at, accepted, rejected) = publish(&mut publisher, &frames, args.rate).await?;
    let _ = publisher.close(None).await;

    // Give late deliveries `drain_secs`, then stop whoever still waits.
    let mut outcomes = Vec::with_capacity(args.subscribers);
    let mut done = Vec::with_capacity(args.subscribers);
    let drain = tokio::time::sleep(Duration::from_secs(args.drain_secs));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            joined = listeners.join_next() => match joined {
                Some(j) => {
                    let (url_index, (outcome, ws)) = j.context("subscriber task panicked")?;
                    outcomes.push((url_index, outcome));
                    done.push(ws);
                }
                None => break,
            },
            _ = &mut drain, if !*stop_tx.borrow() => { let _ = stop_tx.send(true); }
        }
    }

    let mut latencies = Vec::new();
    // The first event apart from the rest (it finds every connection cold),
    // and per event the latency of its last delivery: how long one event
    // takes to reach every subscriber.
    let (mut first_event, mut later_events) = (Vec::new(), Vec::new());
    let mut reach: Vec<Option<Duration>> = vec![None; sent_at.len()];
    // By whether the subscriber is on the publisher's process (URL 0):
    // the difference is what crossing processes (NOTIFY/LISTEN) costs.
    let (mut same_process, mut other_process) = (Vec::new(), Vec::new());
    let (mut unknown, mut errors, mut notices) = (0u64, BTreeMap::new(), BTreeMap::new());
    let mut complete = 0u64;
    for (url_index, o) in &outcomes {
        if o.received.len() >= accepted as usize {
            complete += 1;
        }
        for &(idx, at) in &o.received {
            if let Some(sent) = sent_at[idx] {
                let latency = at.saturating_duration_since(sent);
                latencies.push(latency);
                if idx == 0 {
                    first_event.push(latency);
                } else {
                    later_events.push(latency);
                }
                let slowest = &mut reach[idx];
                *slowest = Some(slowest.map_or(latency, |s| s.max(latency)));
                if *url_index == 0 {
                    same_process.push(latency);
                } else {
                    other_process.push(latency);
                }
            }
        }
        unknown += o.unknown;
        for n in &o.notices {
            *notices.entry(reason_key(n)).or_insert(0u64) += 1;
        }
        if let Some(e) = &o.error {
            *errors.entry(reason_key(e)).or_insert(0u64) += 1;
        }
    }

    let expected = accepted * args.subscribers as u64;
    let mut report = Report::new("fanout");
    report.add("url", urls.join(","));
    report.add("run_id", run);
    report.add("subscribers", args.subscribers as u64);
    report.add("subscribe_seconds", open_time.as_secs_f64());
    report.add("published", args.events as u64);
    report.add("accepted", accepted);
    report.add("rate_per_second", args.rate);
    report.add("deliveries_expected", expected);
    report.add("deliveries_received", latencies.len() as u64);
    report.add("subscribers_complete", complete);
    report.add_summary("delivery_latency", Summary::from_durations(&latencies));
    report.add_summary(
        "delivery_latency_first_event",
        Summary::from_durations(&first_event),
    );
    report.add_summary(
        "delivery_latency_later_events",
        Summary::from_durations(&later_events),
    );
    if let Some((index, slowest)) = reach
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .max_by_key(|&(_, r)| r)
    {
        report.add("slowest_event_index", index as u64);
        report.add("slowest_event_reach_ms", slowest.as_secs_f64() * 1e3);
    }
    let reach: Vec<Duration> = reach.into_iter().flatten().collect();
    report.add_summary("event_reach", Summary::from_durations(&reach));
    if urls.len() > 1 {
        report.add_summary(
            "delivery_latency_publisher_process",
            Summary::from_durations(&same_process),
        );
        report.add_summary(
            "delivery_latency_other_processes",
            Summary::from_durations(&other_process),
        );
    }
    cpu.report(&mut report);
    if unknown > 0 {
        report.add("unexpected_events", unknown);
    }
    if !rejected.is_empty() {
        report.add("rejected_reasons", json!(rejected));
    }
    if !notices.is_empty() {
        report.add("notices", json!(notices));
    }
    if !errors.is_empty() {
        report.add("subscriber_errors", json!(errors));
    }
    // After the CPU reading: hanging up is not part of the fan-out.
    futures::stream::iter(done)
        .for_each_concurrent(256, |mut ws| async move {
            let _ = timeout(Duration::from_secs(5), ws.close(None)).await;
        })
        .await;
    Ok(report)
}
