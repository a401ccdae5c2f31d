//! Raw NIP-01 over WebSockets: connecting, classifying relay messages, and
//! the pipelined publisher shared by `ingest` and `seed` (the paced one of
//! `mixed`, in `paced.rs`, keeps its books with the same [`ConnOutcome`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};

use crate::events::Signed;

/// A client WebSocket to the relay.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bytes each client socket reads at most per `read`. tungstenite zeroes
/// the whole free part of its read buffer before every read (128 KiB by
/// default), so with the default a subscriber that gets one small message
/// per read spent more on that `memset` than on the message: over half of
/// the load generator's CPU in `fanout` at 10,000 subscribers, on the cores
/// it shares with the relay. 16 KiB still takes a whole REQ result page or
/// a burst of OKs in a few reads.
const READ_BUFFER: usize = 16 * 1024;

/// Open one WebSocket (Nagle off: latency numbers must not include it).
pub async fn connect(url: &str, limit: Duration) -> Result<Ws> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = timeout(limit, connect_async_with_config(url, Some(config), true))
        .await
        .map_err(|_| anyhow!("connect to {url} timed out after {limit:?}"))?
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// The socket address a `ws://host:port` URL names (its first resolution).
pub async fn resolve(url: &str) -> Result<std::net::SocketAddr> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().context("parsing the relay URL")?;
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("no host in {url}"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let first = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next();
    first.ok_or_else(|| anyhow!("{host} resolves to nothing"))
}

/// A TCP connection to `addr` from the local address `from` (`None` or
/// unspecified: the system's choice). On loopback every `127.x.y.z` is
/// this machine, so one host can be several clients to per-IP limits.
pub async fn tcp_from(addr: std::net::SocketAddr, from: Option<IpAddr>) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(from) = from.filter(|ip| !ip.is_unspecified()) {
        socket
            .bind(std::net::SocketAddr::new(from, 0))
            .with_context(|| format!("binding the client address {from}"))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Open one WebSocket (`ws://` only) from the local address `from`.
pub async fn connect_from(url: &str, from: Option<IpAddr>, limit: Duration) -> Result<Ws> {
    if from.is_none_or(|ip| ip.is_unspecified()) {
        return connect(url, limit).await;
    }
    if !url.starts_with("ws://") {
        bail!("a client address (--*-from) works only with ws:// URLs");
    }
    let opened = async {
        let addr = resolve(url).await?;
        let tcp = tcp_from(addr, from).await?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(tcp), None)
                .await
                .with_context(|| format!("WebSocket handshake with {url}"))?;
        anyhow::Ok(ws)
    };
    timeout(limit, opened)
        .await
        .map_err(|_| anyhow!("connect to {url} timed out after {limit:?}"))?
}

/// Open `count` WebSockets, at most `parallel` handshakes at a time; the
/// `i`th goes to `urls[i % urls.len()]` (several relay processes share the
/// load round-robin).
pub async fn connect_many(
    urls: &[String],
    count: usize,
    parallel: usize,
    limit: Duration,
) -> Result<Vec<Ws>> {
    anyhow::ensure!(!urls.is_empty(), "no relay URL to connect to");
    let mut out = Vec::with_capacity(count);
    let mut pending =
        futures::stream::iter((0..count).map(|i| connect(&urls[i % urls.len()], limit)))
            .buffered(parallel.max(1));
    while let Some(ws) = pending.next().await {
        let ws = ws.with_context(|| format!("opening connection #{}", out.len() + 1))?;
        out.push(ws);
    }
    Ok(out)
}

/// A relay-to-client message, reduced to what the benchmarks look at.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `["OK", id, accepted, message]`.
    Ok {
        /// Event id.
        id: String,
        /// Whether the relay stored it.
        accepted: bool,
        /// The relay's message (a machine-readable prefix when rejected).
        message: String,
    },
    /// `["EVENT", sub, event]`: only the event id is kept.
    Event {
        /// Subscription id.
        sub: String,
        /// Event id.
        id: String,
    },
    /// `["EOSE", sub]`.
    Eose(String),
    /// `["CLOSED", sub, message]`.
    Closed(String, String),
    /// `["NOTICE", message]`.
    Notice(String),
    /// `["AUTH", challenge]` (ignored by the benchmarks).
    Auth,
    /// Anything else, verbatim.
    Other(String),
}

impl Incoming {
    /// Classify one text frame.
    pub fn parse(text: &str) -> Self {
        if let Some(event) = Self::fast_event(text) {
            return event;
        }
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(text) else {
            return Self::Other(text.to_owned());
        };
        let s = |i: usize| {
            parts
                .get(i)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        match parts.first().and_then(Value::as_str) {
            Some("OK") => Self::Ok {
                id: s(1),
                accepted: parts.get(2).and_then(Value::as_bool).unwrap_or(false),
                message: s(3),
            },
            Some("EVENT") => Self::Event {
                sub: s(1),
                id: parts
                    .get(2)
                    .and_then(|e| e.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            },
            Some("EOSE") => Self::Eose(s(1)),
            Some("CLOSED") => Self::Closed(s(1), s(2)),
            Some("NOTICE") => Self::Notice(s(1)),
            Some("AUTH") => Self::Auth,
            _ => Self::Other(text.to_owned()),
        }
    }
}

impl Incoming {
    /// `["EVENT","<sub>",{…"id":"<64 hex>"…}]` without building a JSON tree:
    /// fan-out delivers hundreds of thousands of these, and the load
    /// generator shares the CPU with the relay. Inside JSON strings a quote is
    /// always escaped, so the first unescaped `"id":"` after the subscription
    /// id is the event's own `id` key. Anything unusual falls back to a full parse.
    fn fast_event(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("[\"EVENT\",\"")?;
        let end = rest.find('"')?;
        let sub = &rest[..end];
        if sub.contains('\\') {
            return None;
        }
        let after = &rest[end..];
        let start = after.find("\"id\":\"")? + 6;
        let id = after.get(start..start + 64)?;
        if !id.bytes().all(|b| b.is_ascii_hexdigit())
            || after.as_bytes().get(start + 64) != Some(&b'"')
        {
            return None;
        }
        Some(Self::Event {
            sub: sub.to_owned(),
            id: id.to_owned(),
        })
    }
}

/// Next text frame, or an error when the socket closes or stays silent past `limit`.
pub async fn next_text(ws: &mut Ws, limit: Duration) -> Result<String> {
    loop {
        let msg = timeout(limit, ws.next())
            .await
            .map_err(|_| anyhow!("no message from the relay for {limit:?}"))?;
        match msg {
            None => bail!("connection closed by the relay"),
            Some(Err(e)) => return Err(e).context("reading from the relay"),
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("relay closed the connection: {frame:?}"),
            // Pings are answered by tungstenite itself on the next read/flush.
            Some(Ok(_)) => continue,
        }
    }
}

/// Shorten a relay message for grouping failure reasons.
pub fn reason_key(message: &str) -> String {
    const MAX: usize = 100;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Result of publishing a batch of pre-signed events over several connections.
#[derive(Debug, Default)]
pub struct PipelineOutcome {
    /// Events sent.
    pub sent: u64,
    /// `OK true` answers.
    pub accepted: u64,
    /// `OK false` answers grouped by message.
    pub rejected: BTreeMap<String, u64>,
    /// NOTICE messages grouped by text.
    pub notices: BTreeMap<String, u64>,
    /// Connection-level failures (closed, stalled, protocol errors).
    pub connection_errors: Vec<String>,
    /// Events sent whose OK never came.
    pub unanswered: u64,
    /// Send → OK latency of every answered event.
    pub ack_latencies: Vec<Duration>,
    /// From the moment every connection is open to the last OK.
    pub elapsed: Duration,
}

impl PipelineOutcome {
    /// Add one connection's outcome.
    pub(crate) fn merge(&mut self, other: ConnOutcome) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        for (k, v) in other.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
        for (k, v) in other.notices {
            *self.notices.entry(k).or_default() += v;
        }
        if let Some(e) = other.error {
            self.connection_errors.push(e);
        }
        self.unanswered += other.unanswered;
        self.ack_latencies.extend(other.ack_latencies);
    }

    /// Total `OK false` answers.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// What one publishing connection saw; merged into a [`PipelineOutcome`].
#[derive(Debug, Default)]
pub(crate) struct ConnOutcome {
    pub(crate) sent: u64,
    pub(crate) accepted: u64,
    pub(crate) rejected: HashMap<String, u64>,
    pub(crate) notices: HashMap<String, u64>,
    pub(crate) error: Option<String>,
    pub(crate) unanswered: u64,
    pub(crate) ack_latencies: Vec<Duration>,
}

impl ConnOutcome {
    /// Account for one relay message on a publishing connection: an OK
    /// settles the event in `in_flight` it answers (sent → OK latency), a
    /// NOTICE is counted. Anything else, or an OK for an event not in
    /// flight, is a protocol error.
    pub(crate) fn settle(
        &mut self,
        text: &str,
        in_flight: &mut HashMap<String, Instant>,
        acked: &AtomicU64,
    ) -> Result<()> {
        match Incoming::parse(text) {
            Incoming::Ok {
                id,
                accepted,
                message,
            } => {
                let Some(sent_at) = in_flight.remove(&id) else {
                    bail!("OK for an event this connection did not send in flight: {id}");
                };
                self.ack_latencies.push(sent_at.elapsed());
                acked.fetch_add(1, Ordering::Relaxed);
                if accepted {
                    self.accepted += 1;
                } else {
                    *self.rejected.entry(reason_key(&message)).or_default() += 1;
                }
            }
            Incoming::Notice(n) => *self.notices.entry(reason_key(&n)).or_default() += 1,
            Incoming::Auth => {}
            other => bail!("unexpected message while publishing: {other:?}"),
        }
        Ok(())
    }
}

/// Options for [`publish_pipelined`].
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Relay URLs; connections are spread over them round-robin.
    pub urls: Vec<String>,
    /// Parallel connections.
    pub connections: usize,
    /// Events in flight (sent, not yet answered) per connection.
    pub window: usize,
    /// Give up on a connection when the relay says nothing for this long.
    pub stall_timeout: Duration,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
}

/// Publish `events` over `connections` sockets, each keeping up to `window`
/// events in flight, and collect every OK. The clock starts once every
/// connection is open, so handshakes are not counted.
pub async fn publish_pipelined(
    opts: &PipelineOptions,
    events: Vec<Signed>,
) -> Result<PipelineOutcome> {
    let connections = opts.connections.max(1).min(events.len().max(1));
    let sockets = connect_many(&opts.urls, connections, 64, Duration::from_secs(10)).await?;
    let total = events.len() as u64;
    let mut shards: Vec<Vec<Signed>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, e) in events.into_iter().enumerate() {
        shards[i % connections].push(e);
    }

    let barrier = Arc::new(Barrier::new(connections + 1));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (ws, shard) in sockets.into_iter().zip(shards) {
        let barrier = Arc::clone(&barrier);
        let acked = Arc::clone(&acked);
        let window = opts.window.max(1);
        let stall = opts.stall_timeout;
        tasks.spawn(async move {
            barrier.wait().await;
            publish_one(ws, shard, window, stall, &acked).await
        });
    }
    barrier.wait().await;
    let started = Instant::now();

    let progress = opts.progress.then(|| {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = acked.load(Ordering::Relaxed);
                eprintln!(
                    "  … {now}/{total} answered ({:.0}/s over the last 5 s, {:.0} s elapsed)",
                    (now - last) as f64 / 5.0,
                    started.elapsed().as_secs_f64()
                );
                last = now;
            }
        })
    });

    let mut outcome = PipelineOutcome::default();
    while let Some(joined) = tasks.join_next().await {
        outcome.merge(joined.context("publisher task panicked")?);
    }
    outcome.elapsed = started.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    Ok(outcome)
}

async fn publish_one(
    mut ws: Ws,
    events: Vec<Signed>,
    window: usize,
    stall: Duration,
    acked: &AtomicU64,
) -> ConnOutcome {
    let mut out = ConnOutcome::default();
    let mut in_flight: HashMap<String, Instant> = HashMap::with_capacity(window * 2);
    let mut next = 0;
    let result: Result<()> = async {
        loop {
            if next < events.len() && in_flight.len() < window {
                while next < events.len() && in_flight.len() < window {
                    let e = &events[next];
                    ws.feed(Message::Text(e.frame.clone()))
                        .await
                        .context("sending EVENT")?;
                    in_flight.insert(e.id.clone(), Instant::now());
                    next += 1;
                    out.sent += 1;
                }
                ws.flush().await.context("flushing EVENTs")?;
            }
            if in_flight.is_empty() && next == events.len() {
                return Ok(());
            }
            let text = next_text(&mut ws, stall)
                .await
                .with_context(|| format!("{} events in flight", in_flight.len()))?;
            out.settle(&text, &mut in_flight, acked)?;
        }
    }
    .await;
    if let Err(e) = result {
        out.error = Some(format!("{e:#}"));
        out.unanswered = in_flight.len() as u64;
    }
    let _ = ws.close(None).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_relay_messages() {
        assert_eq!(
            Incoming::parse(r#"["OK","ab",true,""]"#),
            Incoming::Ok {
                id: "ab".into(),
                accepted: true,
                message: String::new()
            }
        );
        assert_eq!(
            Incoming::parse(r#"["OK","ab",false,"rate-limited: slow down"]"#),
            Incoming::Ok {
                id: "ab".into(),
                accepted: false,
                message: "rate-limited: slow down".into()
            }
        );
        assert_eq!(
            Incoming::parse(r#"["EVENT","s",{"id":"ff","kind":1}]"#),
            Incoming::Event {
                sub: "s".into(),
                id: "ff".into()
            }
        );
        let id = "ab".repeat(32);
        let full = format!(
            r#"["EVENT","sub1",{{"content":"say \"id\":\"x\"","id":"{id}","kind":1,"tags":[["id","y"]]}}]"#
        );
        assert_eq!(
            Incoming::parse(&full),
            Incoming::Event {
                sub: "sub1".into(),
                id: id.clone()
            }
        );
        // Spaces after colons defeat the fast path; the full parse still works.
        let spaced = format!(r#"["EVENT", "s", {{"id": "{id}"}}]"#);
        assert_eq!(
            Incoming::parse(&spaced),
            Incoming::Event {
                sub: "s".into(),
                id
            }
        );
        assert_eq!(
            Incoming::parse(r#"["EOSE","s"]"#),
            Incoming::Eose("s".into())
        );
        assert_eq!(
            Incoming::parse(r#"["CLOSED","s","auth-required: x"]"#),
            Incoming::Closed("s".into(), "auth-required: x".into())
        );
        assert_eq!(Incoming::parse(r#"["AUTH","chal"]"#), Incoming::Auth);
        assert_eq!(
            Incoming::parse(r#"["NOTICE","hi"]"#),
            Incoming::Notice("hi".into())
        );
        assert_eq!(Incoming::parse("nope"), Incoming::Other("nope".into()));
    }

    #[test]
    fn reason_keys_are_bounded_and_char_safe() {
        assert_eq!(reason_key("short"), "short");
        let long = "é".repeat(80);
        let k = reason_key(&long);
        assert!(k.len() <= 100 + '…'.len_utf8());
        assert!(k.ends_with('…'));
    }
}

#[cfg(test)]
pub(crate) mod relay_tests {
    use nostr::{EventBuilder, Keys};
    use tokio::net::TcpListener;

    use super::*;
    use crate::events::{sign, sign_all};

    /// A stand-in relay that reads everything and answers nothing (a
    /// stalled relay): its URL.
    pub(crate) async fn silent_relay() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp)
                .await
                .expect("handshake");
            while let Some(Ok(_)) = ws.next().await {}
        });
        url
    }

    /// A stand-in relay: sends AUTH, then answers every EVENT with OK, and
    /// rejects events whose content ends in "7".
    pub(crate) async fn fake_relay() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(tcp)
                        .await
                        .expect("handshake");
                    ws.send(Message::text(r#"["AUTH","challenge"]"#))
                        .await
                        .expect("auth");
                    while let Some(Ok(Message::Text(t))) = ws.next().await {
                        let v: Value = serde_json::from_str(t.as_str()).expect("json");
                        let id = v[1]["id"].as_str().expect("id").to_owned();
                        let ok = !v[1]["content"].as_str().expect("content").ends_with('7');
                        let msg = if ok { "" } else { "blocked: sevens" };
                        let reply = serde_json::json!(["OK", id, ok, msg]).to_string();
                        if ws.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        format!("ws://{addr}")
    }

    #[tokio::test]
    async fn pipelined_publish_counts_every_answer() {
        let url = fake_relay().await;
        let keys = Keys::generate();
        let (events, _) = sign_all(100, |i| {
            sign(EventBuilder::text_note(format!("n{i}")), &keys)
        })
        .expect("signed");
        let opts = PipelineOptions {
            urls: vec![url],
            connections: 3,
            window: 4,
            stall_timeout: Duration::from_secs(5),
            progress: false,
        };
        let outcome = timeout(Duration::from_secs(20), publish_pipelined(&opts, events))
            .await
            .expect("no hang")
            .expect("published");
        assert_eq!(outcome.sent, 100);
        // n7, n17, …, n97: ten rejections.
        assert_eq!(outcome.accepted, 90);
        assert_eq!(outcome.rejected.get("blocked: sevens"), Some(&10));
        assert_eq!(outcome.unanswered, 0);
        assert!(
            outcome.connection_errors.is_empty(),
            "{:?}",
            outcome.connection_errors
        );
        assert_eq!(outcome.ack_latencies.len(), 100);
    }

    #[tokio::test]
    async fn silent_relay_is_reported_as_stalled() {
        let url = silent_relay().await;
        let keys = Keys::generate();
        let (events, _) =
            sign_all(5, |i| sign(EventBuilder::text_note(format!("s{i}")), &keys)).expect("signed");
        let opts = PipelineOptions {
            urls: vec![url],
            connections: 1,
            window: 8,
            stall_timeout: Duration::from_millis(300),
            progress: false,
        };
        let outcome = timeout(Duration::from_secs(10), publish_pipelined(&opts, events))
            .await
            .expect("no hang")
            .expect("ran");
        assert_eq!(outcome.accepted, 0);
        assert_eq!(outcome.unanswered, 5);
        assert_eq!(outcome.connection_errors.len(), 1);
        assert!(
            outcome.connection_errors[0].contains("no message"),
            "{:?}",
            outcome.connection_errors
        );
    }
}
