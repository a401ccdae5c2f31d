//! A paced publisher: pre-signed events at a steady rate over a few
//! connections, for load that runs *beside* a measurement (`mixed`).
//!
//! Invariants:
//! - The rate comes from a schedule, not from answers: event `j` (counting
//!   over all connections) is due `j / rate` seconds after the start, and is
//!   never sent earlier. Each connection owns every `n`th slot
//!   ([`Schedule`]), so together they send one event every `1 / rate`
//!   seconds instead of `n` at once.
//! - A connection keeps at most `window` events unanswered; when the relay
//!   falls that far behind, the publisher waits (and reports the lag) rather
//!   than piling up more, then catches up with the schedule.
//! - Nothing is sent at or after `stop`; events still in flight then are
//!   waited for (up to the stall timeout), so every OK is counted.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::SinkExt;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use crate::events::Signed;
use crate::ws::{connect_many, next_text, ConnOutcome, PipelineOutcome, Ws};

/// How often a connection checks its schedule. Tokio's timer has
/// millisecond resolution; at 2,000 events/s over 4 connections this is
/// one event every other tick per connection.
const TICK: Duration = Duration::from_millis(1);

/// Connection `share` of `of`'s part of a total `rate` (events/s).
///
/// `due(t) = ⌊(⌊t·rate⌋ + share) / of⌋`: summed over all shares this is
/// exactly `⌊t·rate⌋` (Hermite's identity), so the connections together
/// follow one evenly spaced schedule. Integer arithmetic keeps that exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate: u64,
    share: u64,
    of: u64,
}

impl Schedule {
    /// The schedule of connection `share` (0-based) of `of`.
    pub fn new(rate: u64, share: usize, of: usize) -> Self {
        let of = of.max(1) as u64;
        Self {
            rate,
            share: (share as u64).min(of - 1),
            of,
        }
    }

    /// Events this connection should have sent `elapsed` after the start.
    pub fn due(&self, elapsed: Duration) -> u64 {
        let total = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
        let mine = (total + u128::from(self.share)) / u128::from(self.of);
        u64::try_from(mine).unwrap_or(u64::MAX)
    }
}

/// Options of [`PacedPublisher`].
#[derive(Debug, Clone)]
pub struct PacedOptions {
    /// Relay URL.
    pub url: String,
    /// Connections the rate is split over.
    pub connections: usize,
    /// Events per second over all connections.
    pub rate: u64,
    /// Most unanswered events per connection.
    pub window: usize,
    /// Give up on a connection when the relay says nothing for this long
    /// while it waits for answers.
    pub stall_timeout: Duration,
}

/// The paced publisher's outcome: the pipeline's, plus how far it fell behind.
#[derive(Debug, Default)]
pub struct PacedOutcome {
    /// Sent, answered, latencies, errors (as for `ingest`).
    pub pipeline: PipelineOutcome,
    /// The largest number of due events one connection had not yet sent.
    pub max_lag: u64,
    /// Ticks on which a full window held back due events.
    pub window_full_ticks: u64,
}

/// Open connections, ready to publish on a schedule.
#[derive(Debug)]
pub struct PacedPublisher {
    opts: PacedOptions,
    sockets: Vec<Ws>,
}

impl PacedPublisher {
    /// Open the connections (before the clock starts).
    pub async fn connect(opts: PacedOptions) -> Result<Self> {
        let urls = [opts.url.clone()];
        let sockets =
            connect_many(&urls, opts.connections.max(1), 16, Duration::from_secs(10)).await?;
        Ok(Self { opts, sockets })
    }

    /// Publish `events` (round-robin over the connections, in order) on the
    /// schedule from `start` until the events run out or `stop`, then wait
    /// for the answers still due.
    pub async fn run(
        self,
        events: Vec<Signed>,
        start: Instant,
        stop: Instant,
    ) -> Result<PacedOutcome> {
        let n = self.sockets.len();
        let mut shards: Vec<Vec<Signed>> = (0..n).map(|_| Vec::new()).collect();
        for (i, e) in events.into_iter().enumerate() {
            shards[i % n].push(e);
        }
        let mut tasks = JoinSet::new();
        for (c, (ws, shard)) in self.sockets.into_iter().zip(shards).enumerate() {
            let conn = Conn {
                schedule: Schedule::new(self.opts.rate, c, n),
                window: self.opts.window.max(1),
                stall: self.opts.stall_timeout,
                start,
                stop,
            };
            tasks.spawn(async move { conn.run(ws, shard).await });
        }
        let mut out = PacedOutcome::default();
        while let Some(joined) = tasks.join_next().await {
            let (conn, lag, full) = joined.context("paced publisher task panicked")?;
            out.pipeline.merge(conn);
            out.max_lag = out.max_lag.max(lag);
            out.window_full_ticks += full;
        }
        out.pipeline.elapsed = start.elapsed();
        Ok(out)
    }
}

/// One connection's part of the run.
#[derive(Debug, Clone, Copy)]
struct Conn {
    schedule: Schedule,
    window: usize,
    stall: Duration,
    start: Instant,
    stop: Instant,
}

impl Conn {
    /// Returns the outcome, the largest lag and the window-full ticks.
    async fn run(self, mut ws: Ws, events: Vec<Signed>) -> (ConnOutcome, u64, u64) {
        let mut out = ConnOutcome::default();
        let (mut lag, mut full) = (0u64, 0u64);
        let mut in_flight: HashMap<String, Instant> = HashMap::with_capacity(self.window * 2);
        let acked = AtomicU64::new(0);
        let mut next = 0usize;
        let mut tick = tokio::time::interval_at(self.start.into(), TICK);
        // After a stall, resume with the schedule (the `due` count catches
        // up), not with a burst of missed ticks.
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let result: Result<()> = async {
            loop {
                let sending = next < events.len() && Instant::now() < self.stop;
                if !sending && in_flight.is_empty() {
                    return Ok(());
                }
                tokio::select! {
                    _ = tick.tick(), if sending => {
                        let due = usize::try_from(self.schedule.due(self.start.elapsed()))
                            .unwrap_or(usize::MAX)
                            .min(events.len());
                        let behind = due.saturating_sub(next);
                        lag = lag.max(behind as u64);
                        let room = self.window.saturating_sub(in_flight.len());
                        if behind > room {
                            full += 1;
                        }
                        for e in &events[next..next + behind.min(room)] {
                            ws.feed(Message::Text(e.frame.clone()))
                                .await
                                .context("sending EVENT")?;
                            in_flight.insert(e.id.clone(), Instant::now());
                            out.sent += 1;
                        }
                        if behind.min(room) > 0 {
                            ws.flush().await.context("flushing EVENTs")?;
                            next += behind.min(room);
                        }
                    }
                    // Dropped at every tick and made again: a read in
                    // progress loses nothing (`StreamExt::next` is
                    // cancel-safe), and the stall timeout only bites once
                    // sending has stopped.
                    text = next_text(&mut ws, self.stall) => {
                        let text = text.with_context(|| {
                            format!("{} events in flight", in_flight.len())
                        })?;
                        out.settle(&text, &mut in_flight, &acked)?;
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            out.error = Some(format!("{e:#}"));
            out.unanswered = in_flight.len() as u64;
        }
        let _ = ws.close(None).await;
        (out, lag, full)
    }
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, Keys};
    use tokio::time::timeout;

    use super::*;
    use crate::events::{sign, sign_all};
    use crate::ws::relay_tests::{fake_relay, silent_relay};

    #[test]
    fn connections_together_follow_one_even_schedule() {
        let (rate, n) = (2_000u64, 4usize);
        let schedules: Vec<Schedule> = (0..n).map(|c| Schedule::new(rate, c, n)).collect();
        // Every 37 µs for 3 s, and exactly on the slots (every 500 µs).
        let instants = (0..81_081u64)
            .map(|k| Duration::from_nanos(k * 37_000))
            .chain((0..6_000u64).map(|k| Duration::from_micros(k * 500)));
        for t in instants {
            let dues: Vec<u64> = schedules.iter().map(|s| s.due(t)).collect();
            let expected = t.as_nanos() as u64 * rate / 1_000_000_000;
            assert_eq!(dues.iter().sum::<u64>(), expected, "at {t:?}");
            // Shares differ by at most one event: no connection bursts ahead.
            let (lo, hi) = (dues.iter().min().unwrap(), dues.iter().max().unwrap());
            assert!(hi - lo <= 1, "{dues:?} at {t:?}");
        }
        assert_eq!(
            schedules[0].due(Duration::from_secs(1)),
            500,
            "a quarter of 2,000 in the first second"
        );
        assert_eq!(
            Schedule::new(2_000, 0, 1).due(Duration::from_micros(499)),
            0
        );
        assert_eq!(
            Schedule::new(2_000, 0, 1).due(Duration::from_micros(500)),
            1
        );
    }

    #[test]
    fn due_never_decreases() {
        let s = Schedule::new(1_234, 2, 3);
        let mut prev = 0;
        for us in (0..2_000_000u64).step_by(113) {
            let d = s.due(Duration::from_micros(us));
            assert!(d >= prev, "{d} < {prev} at {us} µs");
            prev = d;
        }
        assert_eq!(
            Schedule::new(10, 5, 0).due(Duration::from_secs(1)),
            10,
            "of 0 means one"
        );
    }

    fn notes(count: usize) -> Vec<Signed> {
        let keys = Keys::generate();
        sign_all(count, |i| {
            sign(EventBuilder::text_note(format!("p{i}")), &keys)
        })
        .expect("signed")
        .0
    }

    #[tokio::test]
    async fn publishes_on_schedule_and_counts_every_answer() {
        let url = fake_relay().await;
        let publisher = PacedPublisher::connect(PacedOptions {
            url,
            connections: 2,
            rate: 1_000,
            window: 64,
            stall_timeout: Duration::from_secs(5),
        })
        .await
        .expect("connected");
        let start = Instant::now();
        let stop = start + Duration::from_secs(30);
        let out = timeout(
            Duration::from_secs(20),
            publisher.run(notes(150), start, stop),
        )
        .await
        .expect("no hang")
        .expect("ran");
        // The 150th event is due 150 ms after the start, never earlier.
        assert!(
            out.pipeline.elapsed >= Duration::from_millis(150),
            "{:?}",
            out.pipeline.elapsed
        );
        assert_eq!(out.pipeline.sent, 150);
        // p7, p17, …, p147: 15 rejected by the stand-in.
        assert_eq!(out.pipeline.accepted, 135);
        assert_eq!(out.pipeline.rejected_total(), 15);
        assert_eq!(out.pipeline.unanswered, 0);
        assert!(out.pipeline.connection_errors.is_empty());
        assert_eq!(out.pipeline.ack_latencies.len(), 150);
    }

    #[tokio::test]
    async fn stops_sending_at_stop() {
        let url = fake_relay().await;
        let publisher = PacedPublisher::connect(PacedOptions {
            url,
            connections: 1,
            rate: 1_000,
            window: 64,
            stall_timeout: Duration::from_secs(5),
        })
        .await
        .expect("connected");
        // Started 40 ms ago (40 events due at once), stopping in 500 ms: at
        // most the 540 due by then go out of the 2,000.
        let now = Instant::now();
        let (start, stop) = (
            now - Duration::from_millis(40),
            now + Duration::from_millis(500),
        );
        let out = timeout(
            Duration::from_secs(20),
            publisher.run(notes(2_000), start, stop),
        )
        .await
        .expect("no hang")
        .expect("ran");
        let sent = out.pipeline.sent;
        assert!((40..=541).contains(&sent), "{sent}");
        assert!(Instant::now() >= stop);
        assert_eq!(
            sent,
            out.pipeline.ack_latencies.len() as u64,
            "all answered"
        );
    }

    #[tokio::test]
    async fn a_full_window_holds_events_back_and_silence_is_a_stall() {
        let url = silent_relay().await;
        let publisher = PacedPublisher::connect(PacedOptions {
            url,
            connections: 1,
            rate: 1_000,
            window: 5,
            stall_timeout: Duration::from_millis(300),
        })
        .await
        .expect("connected");
        let start = Instant::now();
        let out = timeout(
            Duration::from_secs(20),
            publisher.run(notes(40), start, start + Duration::from_millis(100)),
        )
        .await
        .expect("no hang")
        .expect("ran");
        assert_eq!(out.pipeline.sent, 5, "the window caps what is unanswered");
        assert_eq!(out.pipeline.unanswered, 5);
        assert!(out.window_full_ticks > 0);
        assert!(out.max_lag > 5, "fell behind the schedule: {}", out.max_lag);
        assert_eq!(out.pipeline.connection_errors.len(), 1);
        assert!(out.pipeline.connection_errors[0].contains("no message"));
    }
}
