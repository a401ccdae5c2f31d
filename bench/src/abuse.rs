//! `abuse`: the attacks of issue 11 (hardening), each run from several
//! attacker connections on one address while well-behaved bystanders on
//! another address publish and query; reports what each attack costs the
//! bystanders (EVENT→OK and REQ→EOSE latency and success, time to open a
//! new connection) and the relay (CPU, peak RSS), next to a baseline phase
//! without any attack.
//!
//! Per-IP limits key on the client address, so attackers and bystanders
//! must come from different addresses: on loopback, `--attacker-from
//! 127.0.0.2` and `--bystander-from 127.0.0.1` (the defaults) are two
//! clients of the same machine.
//!
//! Every phase: the attack starts, gets [`WARMUP`] to build up, then the
//! bystanders work for `--seconds` while the relay's CPU and RSS are
//! sampled; then the attack is stopped (its sockets dropped) and the relay
//! gets [`COOLDOWN`] before the next phase.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use counter_map::Counts;
use futures::{SinkExt, StreamExt};
use nostr::{EventBuilder, EventId, Keys, Kind, Tag, Timestamp};
use rand::{Rng, RngCore};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::events::{run_id, sign, sign_all, Signed};
use crate::procfs::{cpu_seconds, status_kib};
use crate::stats::{Report, Summary};
use crate::ws::{
    connect_from, next_text, publish_pipelined, reason_key, resolve, tcp_from, Incoming,
    PipelineOptions, Ws,
};

/// How long an attack runs before the bystanders are measured.
const WARMUP: Duration = Duration::from_secs(2);
/// Pause after an attack is stopped, before the next phase.
const COOLDOWN: Duration = Duration::from_secs(3);
/// One bystander operation that takes longer than this failed.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Kind of the large events the slow-reader attack asks for.
const BIG_KIND: u16 = 9_999;
/// Hashtags the seeded notes carry (three each), so that tag filters with
/// many values are unselective.
const HASHTAGS: usize = 50;

/// The attacks (issue 11, "What was seen").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Attack {
    /// REQ with 16 identical filters over ~190 KB events, then never read
    /// (item 1); reconnect every few seconds.
    SlowReader,
    /// Subscriptions holding as many `#e` values as allowed (item 2), while
    /// bystanders publish events with `e` tags (fan-out matching cost).
    HugeFilters,
    /// COUNT with 16 distinct unselective filters, in a loop (item 3).
    CountFlood,
    /// REQ with 16 distinct unselective filters, read to EOSE, in a loop.
    ReqFlood,
    /// Many WebSockets from one address (past `max_connections_per_ip`).
    Connections,
    /// Half-sent HTTP requests from one address (item 4).
    HalfOpen,
    /// Messages larger than `max_message_length`.
    Oversize,
    /// Pipelined EVENTs with bad signatures (verification CPU).
    BadSig,
    /// NIP-09 deletions with `--deletion-targets` `e` tags each (item 5:
    /// the writer).
    Deletions,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Self::SlowReader => "slow_reader",
            Self::HugeFilters => "huge_filters",
            Self::CountFlood => "count_flood",
            Self::ReqFlood => "req_flood",
            Self::Connections => "connections",
            Self::HalfOpen => "half_open",
            Self::Oversize => "oversize",
            Self::BadSig => "bad_sig",
            Self::Deletions => "deletions",
        }
    }

    const ALL: [Attack; 9] = [
        Self::SlowReader,
        Self::HugeFilters,
        Self::CountFlood,
        Self::ReqFlood,
        Self::Connections,
        Self::HalfOpen,
        Self::Oversize,
        Self::BadSig,
        Self::Deletions,
    ];
}

/// Options of `cairn-bench abuse`.
#[derive(Debug, Args)]
pub struct AbuseArgs {
    /// Attacks to run, comma-separated (default: all), each in its own
    /// phase after a baseline phase without attack.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub attacks: Vec<Attack>,
    /// Seconds the bystanders are measured in each phase.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Attacker connections (per attack; all from `--attacker-from`).
    #[arg(long, default_value_t = 4)]
    pub attackers: usize,
    /// Bystander connections, each publishing and querying in turn.
    #[arg(long, default_value_t = 2)]
    pub bystanders: usize,
    /// Milliseconds between one bystander's operations.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Notes (with hashtags) published first, for the queries to work on.
    #[arg(long, default_value_t = 20_000)]
    pub seed_events: usize,
    /// ~190 KB events published first, for the slow-reader attack.
    #[arg(long, default_value_t = 60)]
    pub big_events: usize,
    /// `e` tags of each deletion request in the deletions attack: by
    /// default `max_event_tags`' default; a relay with a lower
    /// `max_deletion_targets` (NIP-11) refuses those at once, so pass that
    /// number to load its writer as far as it allows.
    #[arg(long, default_value_t = 2_500)]
    pub deletion_targets: usize,
    /// Half-sent HTTP requests the half-open attack holds.
    #[arg(long, default_value_t = 1_100)]
    pub half_open: usize,
    /// WebSockets the connections attack tries to hold.
    #[arg(long, default_value_t = 1_000)]
    pub flood_connections: usize,
    /// Local address the attackers connect from (0.0.0.0: the system's choice).
    #[arg(long, default_value = "127.0.0.2")]
    pub attacker_from: IpAddr,
    /// Local address the bystanders connect from.
    #[arg(long, default_value = "127.0.0.1")]
    pub bystander_from: IpAddr,
    /// Process id of the relay: report its CPU time and peak RSS per phase.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Counters of an attack, shared by its tasks.
#[derive(Debug, Default)]
struct AttackStats {
    /// Messages (or connections) sent.
    sent: AtomicU64,
    /// Answers received (OK, COUNT, EOSE, a handshake that succeeded).
    answered: AtomicU64,
    /// Refusals and closes, by reason.
    refused: Counts,
    /// Connection-level failures.
    errors: AtomicU64,
}

/// A small map of counters behind a std mutex.
mod counter_map {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub struct Counts(Mutex<BTreeMap<String, u64>>);

    impl Counts {
        pub fn add(&self, key: String) {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: at most a few dozen distinct reasons are kept.
            if map.len() < 32 || map.contains_key(&key) {
                *map.entry(key).or_default() += 1;
            }
        }

        pub fn snapshot(&self) -> BTreeMap<String, u64> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }
}

/// What the bystanders saw in one phase.
#[derive(Debug, Default)]
struct Seen {
    event_ok: Vec<Duration>,
    events_tried: u64,
    events_accepted: u64,
    req: Vec<Duration>,
    reqs_tried: u64,
    reqs_answered: u64,
    connect: Vec<Duration>,
    connects_tried: u64,
    failures: BTreeMap<String, u64>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.event_ok.extend(other.event_ok);
        self.events_tried += other.events_tried;
        self.events_accepted += other.events_accepted;
        self.req.extend(other.req);
        self.reqs_tried += other.reqs_tried;
        self.reqs_answered += other.reqs_answered;
        self.connect.extend(other.connect);
        self.connects_tried += other.connects_tried;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
    }

    fn fail(&mut self, what: &str, err: impl std::fmt::Display) {
        *self
            .failures
            .entry(reason_key(&format!("{what}: {err}")))
            .or_default() += 1;
    }
}

/// Everything a phase needs.
struct Setup {
    url: String,
    args: AbuseArgsLite,
    /// `created_at` of the first seeded note (one a minute after it).
    base: u64,
}

/// The parts of [`AbuseArgs`] the tasks need (cheap to share).
#[derive(Debug, Clone, Copy)]
struct AbuseArgsLite {
    attackers: usize,
    deletion_targets: usize,
    half_open: usize,
    flood_connections: usize,
    attacker_from: Option<IpAddr>,
    bystander_from: Option<IpAddr>,
}

/// Run the baseline and every chosen attack; one report with a group of
/// fields per phase.
pub async fn run(url: &str, args: &AbuseArgs) -> Result<Report> {
    let attacks: Vec<Attack> = if args.attacks.is_empty() {
        Attack::ALL.to_vec()
    } else {
        args.attacks.clone()
    };
    let from = |ip: IpAddr| (!ip.is_unspecified()).then_some(ip);
    let setup = Arc::new(Setup {
        url: url.to_owned(),
        args: AbuseArgsLite {
            attackers: args.attackers.max(1),
            deletion_targets: args.deletion_targets,
            half_open: args.half_open,
            flood_connections: args.flood_connections,
            attacker_from: from(args.attacker_from),
            bystander_from: from(args.bystander_from),
        },
        base: Timestamp::now().as_secs() - 30 * 24 * 3600,
    });
    seed_store(&setup, args).await?;

    let mut report = Report::new("abuse");
    report.add("url", url);
    report.add("seconds_per_phase", args.seconds);
    report.add("attackers", setup.args.attackers as u64);
    report.add("bystanders", args.bystanders as u64);
    report.add("bystander_interval_ms", args.interval_ms);
    report.add("seed_events", args.seed_events as u64);
    report.add("big_events", args.big_events as u64);
    let mut phases: Vec<Option<Attack>> = vec![None];
    phases.extend(attacks.into_iter().map(Some));
    for attack in phases {
        let name = attack.map_or("baseline", Attack::name);
        eprintln!("abuse: phase {name}");
        phase(&setup, args, attack, name, &mut report).await?;
    }
    Ok(report)
}

/// Publish the notes and large events the attacks and bystanders query.
async fn seed_store(setup: &Setup, args: &AbuseArgs) -> Result<()> {
    let run = run_id();
    let base = setup.base;
    let authors: Vec<Keys> = (0..100).map(|_| Keys::generate()).collect();
    let (mut events, signing) = sign_all(args.seed_events, |i| {
        let mut rng = rand::thread_rng();
        let tags: Vec<Tag> = (0..3)
            .map(|_| Tag::hashtag(format!("h{}", rng.gen_range(0..HASHTAGS))))
            .collect();
        sign(
            EventBuilder::text_note(format!("abuse seed {run} {i}"))
                .tags(tags)
                .custom_created_at(Timestamp::from(base + i as u64 * 60)),
            &authors[i % authors.len()],
        )
    })?;
    let big_keys = Keys::generate();
    let (big, _) = sign_all(args.big_events, |i| {
        // ~190 KB of content: under max_content_length (200 KiB).
        let content = format!("{run} {i} {}", "x".repeat(190_000));
        sign(
            EventBuilder::new(Kind::from(BIG_KIND), content).tag(Tag::hashtag("big")),
            &big_keys,
        )
    })?;
    events.extend(big);
    eprintln!(
        "abuse: publishing {} events to seed the store (signed in {:.1} s)",
        events.len(),
        signing.as_secs_f64()
    );
    let opts = PipelineOptions {
        urls: vec![setup.url.clone()],
        connections: 8,
        window: 64,
        stall_timeout: Duration::from_secs(60),
        progress: false,
    };
    let total = events.len() as u64;
    let outcome = publish_pipelined(&opts, events).await?;
    if outcome.accepted < total {
        bail!(
            "seeding: {} of {total} events stored; rejected {:?}, errors {:?}",
            outcome.accepted,
            outcome.rejected,
            outcome.connection_errors
        );
    }
    Ok(())
}

/// One phase: the attack (if any), the bystanders, the measurements.
async fn phase(
    setup: &Arc<Setup>,
    args: &AbuseArgs,
    attack: Option<Attack>,
    name: &str,
    report: &mut Report,
) -> Result<()> {
    let stats = Arc::new(AttackStats::default());
    let mut attackers = JoinSet::new();
    if let Some(attack) = attack {
        start_attack(&mut attackers, setup, attack, &stats);
        tokio::time::sleep(WARMUP).await;
    }
    let pid = args.pid;
    let cpu_start = pid.and_then(|p| cpu_seconds(p).ok());
    let sampling = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|pid| {
        let peak = Arc::clone(&sampling);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Ok(kib) = status_kib(pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
            }
        })
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let per_bystander = (args.seconds * 1000 / args.interval_ms.max(1)) as usize + 16;
    let mut bystanders = JoinSet::new();
    for b in 0..args.bystanders.max(1) {
        let keys = Keys::generate();
        let (events, _) = sign_all(per_bystander, |i| {
            let mut id = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut id);
            sign(
                EventBuilder::text_note(format!("bystander {b} {i} {}", run_id()))
                    .tag(Tag::event(EventId::from_byte_array(id)))
                    .tag(Tag::hashtag("bystander")),
                &keys,
            )
        })?;
        let setup = Arc::clone(setup);
        let interval = Duration::from_millis(args.interval_ms);
        let author = keys.public_key().to_hex();
        bystanders
            .spawn(async move { bystander(&setup, events, author, b, interval, deadline).await });
    }
    {
        let setup = Arc::clone(setup);
        bystanders.spawn(async move { prober(&setup, deadline).await });
    }
    let mut seen = Seen::default();
    while let Some(done) = bystanders.join_next().await {
        seen.merge(done.context("bystander task panicked")?);
    }
    let wall = started.elapsed();
    let cpu = match (pid, cpu_start) {
        (Some(p), Some(start)) => cpu_seconds(p).ok().map(|now| now - start),
        _ => None,
    };
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    attackers.abort_all();
    while attackers.join_next().await.is_some() {}

    let key = |field: &str| format!("{name}.{field}");
    report.add_summary(&key("event_ok"), Summary::from_durations(&seen.event_ok));
    report.add(
        &key("event_success"),
        ratio(seen.events_accepted, seen.events_tried),
    );
    report.add_summary(&key("req"), Summary::from_durations(&seen.req));
    report.add(
        &key("req_success"),
        ratio(seen.reqs_answered, seen.reqs_tried),
    );
    report.add_summary(&key("connect"), Summary::from_durations(&seen.connect));
    report.add(
        &key("connect_success"),
        ratio(seen.connect.len() as u64, seen.connects_tried),
    );
    if !seen.failures.is_empty() {
        report.add(&key("bystander_failures"), json!(seen.failures));
    }
    if let Some(cpu) = cpu {
        report.add(&key("relay_cpu_seconds"), cpu);
        report.add(&key("relay_cpu_share"), cpu / wall.as_secs_f64().max(1e-9));
        // Robust under contention: what the relay spent per bystander event.
        report.add(
            &key("relay_cpu_ms_per_bystander_op"),
            cpu * 1e3 / (seen.events_tried + seen.reqs_tried).max(1) as f64,
        );
    }
    if pid.is_some() {
        report.add(
            &key("relay_peak_rss_mib"),
            sampling.load(Ordering::Relaxed) as f64 / 1024.0,
        );
    }
    if attack.is_some() {
        report.add(&key("attack_sent"), stats.sent.load(Ordering::Relaxed));
        report.add(
            &key("attack_answered"),
            stats.answered.load(Ordering::Relaxed),
        );
        report.add(&key("attack_errors"), stats.errors.load(Ordering::Relaxed));
        let refused = stats.refused.snapshot();
        if !refused.is_empty() {
            report.add(&key("attack_refused"), json!(refused));
        }
        tokio::time::sleep(COOLDOWN).await;
    }
    Ok(())
}

fn ratio(good: u64, tried: u64) -> Value {
    if tried == 0 {
        Value::Null
    } else {
        json!(good as f64 / tried as f64)
    }
}

// ------------------------------------------------------------ bystanders

/// Publish one event, then one REQ, every `interval`, until `deadline`;
/// reconnect after a failure.
async fn bystander(
    setup: &Setup,
    events: Vec<Signed>,
    author: String,
    index: usize,
    interval: Duration,
    deadline: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut ws: Option<Ws> = None;
    let from = setup.args.bystander_from;
    for (i, event) in events.iter().enumerate() {
        let tick = Instant::now();
        if tick >= deadline {
            break;
        }
        if ws.is_none() {
            match connect_from(&setup.url, from, OP_TIMEOUT).await {
                Ok(w) => ws = Some(w),
                Err(e) => {
                    seen.events_tried += 1;
                    seen.fail("connect", format!("{e:#}"));
                    tokio::time::sleep(interval).await;
                    continue;
                }
            }
        }
        let Some(sock) = ws.as_mut() else { continue };
        seen.events_tried += 1;
        match publish_one(sock, event).await {
            Ok((latency, accepted, message)) => {
                seen.event_ok.push(latency);
                if accepted {
                    seen.events_accepted += 1;
                } else {
                    seen.fail("OK false", message);
                }
            }
            Err(e) => {
                seen.fail("EVENT", format!("{e:#}"));
                ws = None;
                continue;
            }
        }
        // Alternate between the bystander's own notes and the newest
        // notes of everyone: what a client loading a profile or a feed asks.
        let filter = if i % 2 == 0 {
            json!({"authors": [author], "limit": 10})
        } else {
            json!({"kinds": [1], "limit": 20})
        };
        let sub = format!("b{index}-{i}");
        seen.reqs_tried += 1;
        match req_one(sock, &sub, &filter).await {
            Ok(Ok(latency)) => {
                seen.req.push(latency);
                seen.reqs_answered += 1;
            }
            Ok(Err(reason)) => seen.fail("CLOSED", reason),
            Err(e) => {
                seen.fail("REQ", format!("{e:#}"));
                ws = None;
                continue;
            }
        }
        tokio::time::sleep_until((tick + interval).into()).await;
    }
    if let Some(mut ws) = ws {
        let _ = ws.close(None).await;
    }
    seen
}

/// Open a new WebSocket from the bystanders' address every 250 ms: how
/// long a new client waits to get in.
async fn prober(setup: &Setup, deadline: Instant) -> Seen {
    let mut seen = Seen::default();
    while Instant::now() < deadline {
        let tick = Instant::now();
        seen.connects_tried += 1;
        match connect_from(&setup.url, setup.args.bystander_from, OP_TIMEOUT).await {
            Ok(mut ws) => {
                seen.connect.push(tick.elapsed());
                let _ = ws.close(None).await;
            }
            Err(e) => seen.fail("new connection", format!("{e:#}")),
        }
        tokio::time::sleep_until((tick + Duration::from_millis(250)).into()).await;
    }
    seen
}

/// EVENT → OK: latency, accepted, message.
async fn publish_one(ws: &mut Ws, event: &Signed) -> Result<(Duration, bool, String)> {
    let started = Instant::now();
    ws.send(Message::Text(event.frame.clone())).await?;
    loop {
        let text = next_text(ws, OP_TIMEOUT).await?;
        if let Incoming::Ok {
            id,
            accepted,
            message,
        } = Incoming::parse(&text)
        {
            if id == event.id {
                return Ok((started.elapsed(), accepted, message));
            }
        }
    }
}

/// REQ → EOSE latency, or the CLOSED reason.
async fn req_one(
    ws: &mut Ws,
    sub: &str,
    filter: &Value,
) -> Result<std::result::Result<Duration, String>> {
    let started = Instant::now();
    ws.send(Message::text(json!(["REQ", sub, filter]).to_string()))
        .await?;
    loop {
        let text = next_text(ws, OP_TIMEOUT).await?;
        match Incoming::parse(&text) {
            Incoming::Eose(s) if s == sub => {
                let latency = started.elapsed();
                ws.send(Message::text(json!(["CLOSE", sub]).to_string()))
                    .await?;
                return Ok(Ok(latency));
            }
            Incoming::Closed(s, reason) if s == sub => return Ok(Err(reason)),
            _ => {}
        }
    }
}

// ------------------------------------------------------------ attackers

fn start_attack(
    set: &mut JoinSet<()>,
    setup: &Arc<Setup>,
    attack: Attack,
    stats: &Arc<AttackStats>,
) {
    let tasks = match attack {
        // One task holds them all.
        Attack::Connections | Attack::HalfOpen => 1,
        _ => setup.args.attackers,
    };
    for n in 0..tasks {
        let setup = Arc::clone(setup);
        let stats = Arc::clone(stats);
        set.spawn(async move {
            // Every attack loops until it is aborted; a failed round is
            // counted and retried after a pause, so a refused attacker
            // does not spin.
            loop {
                let round = match attack {
                    Attack::SlowReader => slow_reader(&setup, &stats).await,
                    Attack::HugeFilters => huge_filters(&setup, &stats).await,
                    Attack::CountFlood => query_flood(&setup, &stats, "COUNT", n).await,
                    Attack::ReqFlood => query_flood(&setup, &stats, "REQ", n).await,
                    Attack::Connections => connections(&setup, &stats).await,
                    Attack::HalfOpen => half_open(&setup, &stats).await,
                    Attack::Oversize => oversize(&setup, &stats).await,
                    Attack::BadSig => bad_sig(&setup, &stats).await,
                    Attack::Deletions => deletions(&setup, &stats).await,
                };
                if let Err(e) = round {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    stats.refused.add(reason_key(&format!("{e:#}")));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
}

async fn attacker_ws(setup: &Setup) -> Result<Ws> {
    connect_from(
        &setup.url,
        setup.args.attacker_from,
        Duration::from_secs(10),
    )
    .await
}

/// Count what the relay said to an attacker.
fn note_answer(stats: &AttackStats, incoming: &Incoming) {
    match incoming {
        Incoming::Ok {
            accepted, message, ..
        } => {
            stats.answered.fetch_add(1, Ordering::Relaxed);
            if !accepted {
                stats.refused.add(format!("OK false: {}", prefix(message)));
            }
        }
        Incoming::Closed(_, reason) => stats.refused.add(format!("CLOSED: {}", prefix(reason))),
        Incoming::Notice(n) => stats.refused.add(format!("NOTICE: {}", prefix(n))),
        Incoming::Eose(_) | Incoming::Other(_) => {
            stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        Incoming::Event { .. } | Incoming::Auth => {}
    }
}

/// A reason up to its first `;` or `(`: numbers and details vary.
fn prefix(message: &str) -> String {
    let end = message.find([';', '(']).unwrap_or(message.len());
    reason_key(message[..end].trim())
}

/// 16 identical filters over the large events, then nothing read for 5 s.
async fn slow_reader(setup: &Setup, stats: &AttackStats) -> Result<()> {
    let mut ws = attacker_ws(setup).await?;
    let filter = json!({"kinds": [BIG_KIND], "limit": 500});
    let mut req = vec![json!("REQ"), json!("slow")];
    req.extend(std::iter::repeat_n(filter, 16));
    ws.send(Message::text(Value::Array(req).to_string()))
        .await?;
    stats.sent.fetch_add(1, Ordering::Relaxed);
    // Read nothing; the relay's socket buffers fill, then its queue.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(ws);
    Ok(())
}

fn random_hex_ids(count: usize) -> Vec<String> {
    let mut rng = rand::thread_rng();
    (0..count)
        .map(|_| {
            let mut id = [0u8; 32];
            rng.fill_bytes(&mut id);
            id.iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect()
}

/// Ten subscriptions of 5,000 `#e` values each (the per-connection maximum,
/// 50,000), read promptly; one is replaced every second.
async fn huge_filters(setup: &Setup, stats: &AttackStats) -> Result<()> {
    let mut ws = attacker_ws(setup).await?;
    let frames: Vec<String> = (0..10)
        .map(|s| {
            json!(["REQ", format!("huge{s}"), {"#e": random_hex_ids(5_000), "limit": 1}])
                .to_string()
        })
        .collect();
    for frame in &frames {
        ws.send(Message::text(frame.clone())).await?;
        stats.sent.fetch_add(1, Ordering::Relaxed);
    }
    let mut next = 0;
    let mut replace = tokio::time::interval(Duration::from_secs(1));
    let (mut tx, mut rx) = ws.split();
    loop {
        tokio::select! {
            _ = replace.tick() => {
                tx.send(Message::text(frames[next % frames.len()].clone())).await?;
                stats.sent.fetch_add(1, Ordering::Relaxed);
                next += 1;
            }
            message = rx.next() => match message {
                None => bail!("connection closed by the relay"),
                Some(Err(e)) => return Err(e).context("reading from the relay"),
                Some(Ok(Message::Text(text))) => {
                    note_answer(stats, &Incoming::parse(text.as_str()));
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// COUNT or REQ with 16 distinct unselective filters (40 of the 50
/// hashtags, different `since`), one after the other.
async fn query_flood(setup: &Setup, stats: &AttackStats, verb: &str, n: usize) -> Result<()> {
    let mut ws = attacker_ws(setup).await?;
    let mut round = 0u64;
    loop {
        let sub = format!("{}{n}-{round}", verb.to_lowercase());
        let mut message = vec![json!(verb), json!(sub)];
        message.extend((0..16).map(|i| {
            let tags: Vec<String> = (0..40)
                .map(|v| format!("h{}", (v + i) % HASHTAGS))
                .collect();
            let mut f = json!({"#t": tags, "since": setup.base + i as u64 + round % 1000});
            if verb == "REQ" {
                f["limit"] = json!(500);
            }
            f
        }));
        ws.send(Message::text(Value::Array(message).to_string()))
            .await?;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        loop {
            let text = next_text(&mut ws, Duration::from_secs(120)).await?;
            let incoming = Incoming::parse(&text);
            match &incoming {
                Incoming::Other(t) if t.starts_with("[\"COUNT\"") => {
                    note_answer(stats, &incoming);
                    break;
                }
                Incoming::Eose(s) if *s == sub => {
                    note_answer(stats, &incoming);
                    ws.send(Message::text(json!(["CLOSE", sub]).to_string()))
                        .await?;
                    break;
                }
                Incoming::Closed(s, _) if *s == sub => {
                    note_answer(stats, &incoming);
                    break;
                }
                Incoming::Notice(_) => note_answer(stats, &incoming),
                _ => {}
            }
        }
        round += 1;
    }
}

/// Hold up to `--flood-connections` WebSockets; top up every 2 s (at most
/// 100 new handshakes at a time).
async fn connections(setup: &Setup, stats: &AttackStats) -> Result<()> {
    let mut held: Vec<Ws> = Vec::new();
    loop {
        let missing = setup.args.flood_connections.saturating_sub(held.len());
        let opened = futures::stream::iter((0..missing.min(100)).map(|_| attacker_ws(setup)))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for ws in opened {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            match ws {
                Ok(ws) => {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                    held.push(ws);
                }
                Err(e) => stats.refused.add(reason_key(&format!("{e:#}"))),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Hold `--half-open` half-sent HTTP requests; every second, replace
/// those the relay closed (at most 200 at a time).
async fn half_open(setup: &Setup, stats: &AttackStats) -> Result<()> {
    let addr = resolve(&setup.url).await?;
    let mut held: Vec<tokio::net::TcpStream> = Vec::new();
    loop {
        held.retain(|tcp| {
            let mut buf = [0u8; 512];
            loop {
                match tcp.try_read(&mut buf) {
                    Ok(0) => return false,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        });
        let missing = setup.args.half_open.saturating_sub(held.len()).min(200);
        for _ in 0..missing {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            match tcp_from(addr, setup.args.attacker_from).await {
                Ok(mut tcp) => {
                    if tcp
                        .write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n")
                        .await
                        .is_ok()
                    {
                        held.push(tcp);
                    }
                }
                Err(e) => stats.refused.add(reason_key(&format!("{e:#}"))),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A 600 KB message (over the 512 KiB default), on a new connection each time.
async fn oversize(setup: &Setup, stats: &AttackStats) -> Result<()> {
    let mut ws = attacker_ws(setup).await?;
    let big = format!("[\"REQ\",\"x\",{{\"#t\":[\"{}\"]}}]", "a".repeat(600_000));
    stats.sent.fetch_add(1, Ordering::Relaxed);
    let _ = ws.send(Message::text(big)).await;
    // Until the relay closes it.
    loop {
        match next_text(&mut ws, Duration::from_secs(10)).await {
            Ok(text) => note_answer(stats, &Incoming::parse(&text)),
            Err(_) => return Ok(()),
        }
    }
}

/// Pipelined EVENTs whose signature is wrong, 64 in flight.
async fn bad_sig(setup: &Setup, stats: &AttackStats) -> Result<()> {
    let keys = Keys::generate();
    let run = run_id();
    let (events, _) = sign_all(2_000, |i| {
        sign(EventBuilder::text_note(format!("bad {run} {i}")), &keys)
    })?;
    // Flip the signature's first hex digit: the id stays right, the
    // signature check (the expensive part) fails.
    let frames: Vec<String> = events
        .iter()
        .map(|e| {
            let text = e.frame.as_str();
            let at = text.find("\"sig\":\"").expect("sig") + 7;
            let mut bytes = text.as_bytes().to_vec();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).expect("ascii")
        })
        .collect();
    let mut ws = attacker_ws(setup).await?;
    let mut in_flight = 0usize;
    let mut i = 0usize;
    loop {
        while in_flight < 64 {
            ws.feed(Message::text(frames[i % frames.len()].clone()))
                .await?;
            i += 1;
            in_flight += 1;
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        ws.flush().await?;
        let text = next_text(&mut ws, Duration::from_secs(60)).await?;
        let incoming = Incoming::parse(&text);
        if matches!(incoming, Incoming::Ok { .. }) {
            in_flight -= 1;
        }
        note_answer(stats, &incoming);
    }
}

/// Kind 5 deletions of `--deletion-targets` random ids each, 4 in flight,
/// signed as they go.
async fn deletions(setup: &Setup, stats: &AttackStats) -> Result<()> {
    let keys = Keys::generate();
    let mut ws = attacker_ws(setup).await?;
    let mut in_flight = 0usize;
    loop {
        while in_flight < 4 {
            let tags: Vec<Tag> = random_hex_ids(setup.args.deletion_targets)
                .iter()
                .map(|id| Tag::event(EventId::from_hex(id).expect("hex id")))
                .collect();
            let event = sign(EventBuilder::new(Kind::EventDeletion, "").tags(tags), &keys)?;
            ws.send(Message::Text(Signed::from_event(&event).frame))
                .await?;
            in_flight += 1;
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        let text = next_text(&mut ws, Duration::from_secs(60)).await?;
        let incoming = Incoming::parse(&text);
        if matches!(incoming, Incoming::Ok { .. }) {
            in_flight -= 1;
        }
        note_answer(stats, &incoming);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_grouped_by_prefix() {
        assert_eq!(
            prefix("rate-limited: too many queries at once (max 2); try again"),
            "rate-limited: too many queries at once"
        );
        assert_eq!(prefix("invalid: bad signature"), "invalid: bad signature");
    }

    #[test]
    fn every_attack_has_a_distinct_name() {
        let mut names: Vec<_> = Attack::ALL.iter().map(|a| a.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Attack::ALL.len());
    }
}
