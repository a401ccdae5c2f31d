//! One client connection: the NIP-01 state machine, independent of the
//! WebSocket library. The node adapts its socket into a stream of
//! [`Incoming`] and a sink of [`Outgoing`] and calls [`serve_connection`].
//!
//! Messages are handled in order, except that consecutive EVENTs are
//! pipelined (verified and committed concurrently, answered in order); any
//! other message first waits for the EVENTs before it.
//!
//! What one connection may cost is bounded: its outbound queue in bytes
//! ([`crate::outbound`], which also drops a reader that stops reading), the
//! filter values its subscriptions hold ([`crate::matching::check_sizes`]),
//! the read-ahead of a REQ's stored results ([`Relay::open_results`]) and
//! each query's database time (`max_query_ms`). A query in progress is
//! dropped, which stops its statement, as soon as the client goes away.
//! How many queries one client address runs at once, over all its
//! connections, is capped too (`max_concurrent_queries_per_ip`, see
//! [`with_query_slot`]), so that one address cannot hold every database
//! connection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, Peekable};
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use nostr::{Event, Filter, PublicKey, Timestamp};
use tokio::sync::{broadcast, oneshot};

use crate::accept::{check_event, ok_message, Accepted, Refused};
use crate::auth::{check_auth_event, new_challenge};
use crate::kinds::{self, is_private, KIND_GIFT_WRAP};
use crate::matching::{check_sizes, matches};
use crate::message::{out, ClientMessage, ParseError};
use crate::outbound::{self, OutboundReceiver, OutboundSender, SendError};
use crate::privacy::{asks_for_private_kinds, live_event_visible, stored_event_visible};
use crate::ratelimit::Busy;
use crate::relay::{ConnectionPermit, LiveEvent, Relay};
use crate::store::{QueryBudget, QueryContext, StoreError, StoredEvent};

mod negentropy_session;

/// EVENTs one connection may have in flight before reading pauses.
pub const DEFAULT_MAX_PIPELINE: usize = 64;
/// Most pubkeys one connection may authenticate as.
pub const MAX_AUTHED_PUBKEYS: usize = 16;
/// The default slow-reader grace (`slow_reader_grace_ms`): how long a send
/// may wait for room in a full outbound queue while the client reads
/// nothing. The queue may be full of a large REQ's results that a healthy
/// client is still reading, so a full queue alone does not make a slow
/// reader; reading nothing for this long does.
pub const LIVE_SEND_TIMEOUT: Duration = Duration::from_millis(3_000);
/// `["EVENT",` + `]`: the part of an EVENT message that is not the event.
const EVENT_ENVELOPE_LEN: usize = 10;

/// What the socket delivered.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary,
    /// A frame or message over `max_message_length`.
    TooLarge,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// Any other protocol error.
    ProtocolError(String),
}

/// What to write to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A text frame.
    Text(String),
    /// A close frame with a WebSocket close code and reason.
    Close {
        /// Close code (1000 normal, 1001 going away, 1008 policy, 1009 too big).
        code: u16,
        /// Short reason.
        reason: String,
    },
}

/// Why the server closes a connection.
#[derive(Debug)]
struct CloseRequest {
    notice: Option<String>,
    code: u16,
    reason: &'static str,
}

/// Serve one admitted connection until either side closes it or the relay
/// shuts down.
pub async fn serve_connection<In, Out>(
    relay: Arc<Relay>,
    permit: ConnectionPermit,
    incoming: In,
    outgoing: Out,
) where
    In: Stream<Item = Incoming> + Unpin + Send,
    Out: Sink<Outgoing> + Unpin + Send,
{
    let limits = &relay.config.limits;
    let (out_tx, out_rx) = outbound::channel_joined(
        limits.max_outbound_queue,
        limits.max_outbound_bytes,
        Duration::from_millis(limits.slow_reader_grace_ms),
    );
    let (close_tx, close_rx) = oneshot::channel();
    let session = Session {
        relay: Arc::clone(&relay),
        ip: permit.ip(),
        challenge: new_challenge(),
        authed: Vec::new(),
        subs: HashMap::new(),
        held_values: 0,
        live: None,
        out: out_tx,
        close: Some(close_tx),
        violations: 0,
        neg: crate::negentropy::Sessions::new(),
    };
    let reader = session.run(incoming);
    let shutdown = relay.shutdown_token().clone();
    // One task for both: a frame queued is written in the same poll. (The
    // writer as a task of its own was measured: it waits behind every
    // session the same live event woke, and fan-out's median latency
    // doubled, for no less CPU.) `join` polls both on every poll, the
    // session first: what lets the session's own sends skip waking this
    // task (`outbound::channel_joined`).
    let writer = write_loop(outgoing, out_rx, close_rx, shutdown);
    futures::future::join(reader, writer).await;
    // Held until the writer is done too: a socket still being told why it
    // is closed counts against its address's connection limit.
    drop(permit);
}

/// How long the writer may keep trying to reach the client once the session
/// has ended: a socket that takes nothing cannot hold the connection open.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The same for a slow reader, which gets only the NOTICE saying why (its
/// queue is dropped at once): it may take a while to read what its socket
/// already holds, and nothing else of it is kept meanwhile.
const SLOW_READER_LINGER: Duration = Duration::from_secs(30);

/// Drains the outbound queue into the socket, batching frames between
/// flushes, until the session ends; then says goodbye within [`CLOSE_WAIT`].
async fn write_loop<Out>(
    mut sink: Out,
    mut queue: OutboundReceiver,
    mut close: oneshot::Receiver<CloseRequest>,
    shutdown: tokio_util::sync::CancellationToken,
) where
    Out: Sink<Outgoing> + Unpin + Send,
{
    // The forwarding races the session's end, so a write stuck on a socket
    // that takes nothing is abandoned when the session gives up on it.
    let ended = {
        let forwarding = forward(&mut sink, &mut queue);
        tokio::pin!(forwarding);
        tokio::select! {
            biased;
            ended = &mut close => ended,
            sink_ok = &mut forwarding => {
                if !sink_ok {
                    return;
                }
                close.await
            }
        }
    };
    // `Err`: the session ended without asking to close (the client went away).
    let request = ended.ok();
    let slow_reader = request.as_ref().is_some_and(|r| r.code == 1008);
    if slow_reader {
        // Free what it did not read; only the NOTICE and the close remain.
        while queue.try_recv().is_some() {}
    }
    let wait = if slow_reader {
        SLOW_READER_LINGER
    } else {
        CLOSE_WAIT
    };
    // A well-behaved client gets what was queued before the close; a stuck one
    // (the reason we may be closing) gets a bounded wait, cut short by shutdown.
    let goodbye = tokio::time::timeout(wait, async {
        while let Some((text, receipt)) = queue.try_recv() {
            sink.feed(Outgoing::Text(text)).await.ok()?;
            queue.taken(receipt);
        }
        let Some(request) = request else {
            return sink.flush().await.ok();
        };
        if let Some(notice) = request.notice {
            sink.feed(Outgoing::Text(out::notice(&notice))).await.ok()?;
        }
        sink.send(Outgoing::Close {
            code: request.code,
            reason: request.reason.to_owned(),
        })
        .await
        .ok()
    });
    tokio::select! {
        _ = goodbye => {}
        _ = shutdown.cancelled(), if slow_reader => {}
    }
}

/// Write queued messages to the socket, coalescing what is ready into one
/// flush, until the queue closes (`true`) or the socket fails (`false`).
async fn forward<Out>(sink: &mut Out, queue: &mut OutboundReceiver) -> bool
where
    Out: Sink<Outgoing> + Unpin + Send,
{
    while let Some((text, receipt)) = queue.recv().await {
        if sink.feed(Outgoing::Text(text)).await.is_err() {
            return false;
        }
        queue.taken(receipt);
        while let Some((text, receipt)) = queue.try_recv() {
            if sink.feed(Outgoing::Text(text)).await.is_err() {
                return false;
            }
            queue.taken(receipt);
        }
        if sink.flush().await.is_err() {
            return false;
        }
    }
    true
}

type Pending = FuturesOrdered<BoxFuture<'static, EventReply>>;

/// The answer to one EVENT, produced by its pipelined future.
struct EventReply {
    message: String,
    rate_limited: bool,
}

struct Session {
    relay: Arc<Relay>,
    /// The client's address (the connection's permit is held by
    /// [`serve_connection`]).
    ip: std::net::IpAddr,
    challenge: String,
    authed: Vec<PublicKey>,
    subs: HashMap<String, Sub>,
    /// Filter values all of `subs` hold together.
    held_values: usize,
    live: Option<broadcast::Receiver<Arc<LiveEvent>>>,
    out: OutboundSender,
    close: Option<oneshot::Sender<CloseRequest>>,
    violations: u32,
    /// Open NIP-77 sessions (see `negentropy_session`).
    neg: crate::negentropy::Sessions,
}

/// An open subscription.
struct Sub {
    filters: Vec<Filter>,
    /// Its filters' values (see [`crate::matching::filter_values`]).
    values: usize,
    /// Its EVENT messages' start ([`out::event_prefix`]), built once.
    prefix: String,
}

/// How the read loop continues after one message.
enum Flow {
    Continue,
    Close(CloseRequest),
}

impl Session {
    async fn run<In>(mut self, incoming: In)
    where
        In: Stream<Item = Incoming> + Unpin + Send,
    {
        // Peekable: a query in progress watches for the client going away
        // without taking its next message (see `Self::unless_gone`).
        let mut incoming = incoming.peekable();
        // One wait for shutdown for the whole session: made anew on every
        // turn of the loop, it would join and leave the token's waiter list
        // (one lock shared by every connection) for every live event.
        let shutdown = self.relay.shutdown_token().clone().cancelled_owned();
        tokio::pin!(shutdown);
        let mut pending: Pending = FuturesOrdered::new();
        if self.send(out::auth(&self.challenge)).await.is_err() {
            return;
        }
        let flow = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    break Flow::Close(CloseRequest {
                        notice: None, code: 1001, reason: "relay shutting down",
                    });
                }
                Some(reply) = pending.next(), if !pending.is_empty() => {
                    if let Flow::Close(c) = self.answer_event(reply).await { break Flow::Close(c) }
                }
                live = recv_live(&mut self.live) => {
                    if let Flow::Close(c) = self.deliver_live(live).await { break Flow::Close(c) }
                }
                _ = sleep_until_some(self.neg.next_expiry()) => {
                    if let Flow::Close(c) = self.expire_neg_sessions().await { break Flow::Close(c) }
                }
                msg = incoming.next(), if pending.len() < DEFAULT_MAX_PIPELINE => {
                    let Some(msg) = msg else { break Flow::Continue };
                    // Boxed: a message's handling (a REQ's query, say) is
                    // far larger than the loop's own state, and inline it
                    // would be part of every idle connection's task.
                    let handling = Box::pin(self.handle(msg, &mut pending, &mut incoming));
                    if let Flow::Close(c) = handling.await {
                        break Flow::Close(c)
                    }
                }
            }
        };
        // Finish in-flight EVENTs: their writes are committed either way, and
        // the client deserves the answer if it is still there.
        while let Some(reply) = pending.next().await {
            let _ = self.answer_event(reply).await;
        }
        if let Flow::Close(request) = flow {
            if let Some(close) = self.close.take() {
                let _ = close.send(request);
            }
        }
    }

    async fn send(&self, text: String) -> Result<(), SendError> {
        self.out.send(text).await
    }

    /// Send, or close the connection if the client does not read.
    async fn send_or_close(&self, text: String) -> Flow {
        match self.send(text).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close(slow_reader()),
        }
    }

    /// Run `query` unless the client goes away first: then it is dropped
    /// (which stops its statement) and `None` returned. A message that
    /// arrives meanwhile stays in `incoming` for after the query.
    async fn unless_gone<In, T>(
        incoming: &mut Peekable<In>,
        query: impl Future<Output = T>,
    ) -> Option<T>
    where
        In: Stream<Item = Incoming> + Unpin,
    {
        let mut query = std::pin::pin!(query);
        let mut watching = true;
        loop {
            tokio::select! {
                biased;
                done = &mut query => return Some(done),
                next = std::pin::Pin::new(&mut *incoming).peek(), if watching => {
                    // `None`: the client went away, and the query is dropped.
                    next?;
                    // A message is waiting: it is handled after the query.
                    watching = false;
                }
            }
        }
    }

    async fn answer_event(&mut self, reply: EventReply) -> Flow {
        if let Flow::Close(c) = self.note_rate_limit(reply.rate_limited) {
            // Still tell the client why its event was refused.
            self.out.try_send(reply.message);
            return Flow::Close(c);
        }
        self.send_or_close(reply.message).await
    }

    fn note_rate_limit(&mut self, limited: bool) -> Flow {
        if !limited {
            self.violations = 0;
            return Flow::Continue;
        }
        self.violations += 1;
        if self.violations > self.relay.config.rate_limits.max_violations {
            Flow::Close(CloseRequest {
                notice: Some("rate-limited: too many messages, closing connection".into()),
                code: 1008,
                reason: "rate limited",
            })
        } else {
            Flow::Continue
        }
    }

    async fn drain(&mut self, pending: &mut Pending) -> Flow {
        while let Some(reply) = pending.next().await {
            if let Flow::Close(c) = self.answer_event(reply).await {
                return Flow::Close(c);
            }
        }
        Flow::Continue
    }

    async fn handle<In>(
        &mut self,
        msg: Incoming,
        pending: &mut Pending,
        incoming: &mut Peekable<In>,
    ) -> Flow
    where
        In: Stream<Item = Incoming> + Unpin + Send,
    {
        let text = match msg {
            Incoming::Text(text) => text,
            Incoming::Binary => {
                return self
                    .send_or_close(out::notice("invalid: binary frames are not supported"))
                    .await
            }
            Incoming::TooLarge => {
                return Flow::Close(CloseRequest {
                    notice: Some(format!(
                        "invalid: message exceeds max_message_length ({} bytes)",
                        self.relay.config.limits.max_message_length
                    )),
                    code: 1009,
                    reason: "message too big",
                })
            }
            Incoming::InvalidUtf8 => {
                return Flow::Close(CloseRequest {
                    notice: Some("invalid: text frame is not valid UTF-8".into()),
                    code: 1007,
                    reason: "invalid utf-8",
                })
            }
            Incoming::ProtocolError(_) => {
                return Flow::Close(CloseRequest {
                    notice: Some("invalid: WebSocket protocol error".into()),
                    code: 1002,
                    reason: "protocol error",
                })
            }
        };
        if text.len() > self.relay.config.limits.max_message_length {
            return Flow::Close(CloseRequest {
                notice: Some("invalid: message exceeds max_message_length".into()),
                code: 1009,
                reason: "message too big",
            });
        }
        let parsed = ClientMessage::parse(&text);
        crate::metrics::count_received(&parsed);
        if !matches!(parsed, Ok(ClientMessage::Event(_))) {
            if let Flow::Close(c) = self.drain(pending).await {
                return Flow::Close(c);
            }
        }
        match parsed {
            Ok(ClientMessage::Event(event)) => self.on_event(event, text.len(), pending).await,
            Ok(ClientMessage::Req { sub_id, filters }) => {
                self.on_req(sub_id, filters, incoming).await
            }
            Ok(ClientMessage::Count { sub_id, filters }) => {
                self.on_count(sub_id, filters, incoming).await
            }
            Ok(ClientMessage::Close(sub_id)) => {
                self.unsubscribe(&sub_id);
                if self.subs.is_empty() {
                    self.live = None;
                }
                Flow::Continue
            }
            Ok(ClientMessage::Auth(event)) => self.on_auth(event).await,
            Ok(ClientMessage::NegOpen {
                sub_id,
                filter,
                message,
            }) => self.on_neg_open(sub_id, *filter, message, incoming).await,
            Ok(ClientMessage::NegMsg { sub_id, message }) => self.on_neg_msg(sub_id, message).await,
            Ok(ClientMessage::NegClose(sub_id)) => {
                self.neg.close(&sub_id);
                Flow::Continue
            }
            Err(ParseError::BadNeg { sub_id, message }) => {
                self.neg.close(&sub_id);
                self.send_or_close(out::neg_err(&sub_id, &message, None))
                    .await
            }
            Err(ParseError::Notice(message)) => self.send_or_close(out::notice(&message)).await,
            Err(ParseError::BadEvent { id, message }) => {
                self.send_or_close(out::ok(&id, false, &message)).await
            }
            Err(ParseError::BadFilter { sub_id, message }) => {
                self.send_or_close(out::closed(&sub_id, &message)).await
            }
        }
    }

    async fn on_event(
        &mut self,
        event: Box<Event>,
        message_len: usize,
        pending: &mut Pending,
    ) -> Flow {
        let id = event.id.to_hex();
        let now = Timestamp::now().as_secs();
        if let Err(reason) = self.precheck_event(&event, message_len, now) {
            return self.send_or_close(out::ok(&id, false, &reason)).await;
        }
        // Per-IP limit before the signature check, so floods cost no CPU;
        // per-author limits after it, so nobody can drain another's bucket.
        if !self
            .relay
            .limiters
            .events_per_ip
            .check_weighted(&self.ip, crate::accept::rate_weight(&event))
        {
            let reply = EventReply {
                message: out::ok(&id, false, "rate-limited: slow down, too many events"),
                rate_limited: true,
            };
            return self.answer_event(reply).await;
        }
        let relay = Arc::clone(&self.relay);
        pending.push_back(process_event(relay, event, id).boxed());
        Flow::Continue
    }

    /// Checks that need no signature (see [`check_event`]). Err is the OK message.
    fn precheck_event(&self, event: &Event, message_len: usize, now: u64) -> Result<(), String> {
        let event_len = message_len.saturating_sub(EVENT_ENVELOPE_LEN);
        check_event(&self.relay.config, event, event_len, &self.authed, now)
            .map_err(|refused| refused.to_string())
    }

    async fn on_req<In>(
        &mut self,
        sub_id: String,
        filters: Vec<Filter>,
        incoming: &mut Peekable<In>,
    ) -> Flow
    where
        In: Stream<Item = Incoming> + Unpin + Send,
    {
        if let Err(reason) = self.check_query(&sub_id, &filters) {
            // A refused REQ reusing an open subscription's id closes it: the
            // client is told CLOSED for that id and must not get more under it.
            self.unsubscribe(&sub_id);
            let limited = reason.starts_with("rate-limited:");
            if let Flow::Close(c) = self.note_rate_limit(limited) {
                return Flow::Close(c);
            }
            return self.send_or_close(out::closed(&sub_id, &reason)).await;
        }
        let relay = Arc::clone(&self.relay);
        let limits = &relay.config.limits;
        // A REQ with an open subscription's id replaces it: its values go.
        let others = self.held_values - self.subs.get(&sub_id).map_or(0, |s| s.values);
        let values = match check_sizes(limits, &filters, others) {
            Ok(values) => values,
            Err(reason) => {
                self.unsubscribe(&sub_id);
                return self.send_or_close(out::closed(&sub_id, &reason)).await;
            }
        };
        if !self.subs.contains_key(&sub_id) && self.subs.len() >= limits.max_subscriptions {
            let reason = format!(
                "restricted: too many subscriptions (max {})",
                limits.max_subscriptions
            );
            return self.send_or_close(out::closed(&sub_id, &reason)).await;
        }
        // Subscribe to live events before querying, so that nothing committed
        // in between is missed.
        if self.live.is_none() {
            self.live = Some(self.relay.live.subscribe());
        }
        self.unsubscribe(&sub_id);
        self.held_values += values;
        self.subs.insert(
            sub_id.clone(),
            Sub {
                filters: filters.clone(),
                values,
                prefix: out::event_prefix(&sub_id),
            },
        );

        let ctx = self.query_context();
        let budget_ms = Some(limits.max_query_ms);
        let read_ahead = limits.max_outbound_bytes;
        let opened = with_query_slot(
            &relay,
            self.ip,
            relay.open_results(&filters, &ctx, budget_ms, read_ahead),
        );
        let mut results = match Self::unless_gone(incoming, opened).await {
            None => return Flow::Continue,
            Some(Ok(Ok(results))) => results,
            Some(Ok(Err(err))) => return self.query_failed(&sub_id, &err).await,
            Some(Err(Busy)) => {
                self.unsubscribe(&sub_id);
                if self.subs.is_empty() {
                    self.live = None;
                }
                return self.send_or_close(self.queries_busy(&sub_id)).await;
            }
        };
        let prefix = out::event_prefix(&sub_id);
        loop {
            let stored = match Self::unless_gone(incoming, results.next()).await {
                None => return Flow::Continue,
                Some(Ok(Some(stored))) => stored,
                Some(Ok(None)) => break,
                Some(Err(err)) => return self.query_failed(&sub_id, &err).await,
            };
            if is_private(stored.kind) && !self.stored_event_visible(&stored) {
                continue;
            }
            if let Flow::Close(c) = self
                .send_or_close(out::event_after(&prefix, &stored.json))
                .await
            {
                return Flow::Close(c);
            }
        }
        self.send_or_close(out::eose(&sub_id)).await
    }

    /// Forget subscription `sub_id` (if open) and the values it held.
    fn unsubscribe(&mut self, sub_id: &str) {
        if let Some(sub) = self.subs.remove(sub_id) {
            self.held_values -= sub.values;
        }
    }

    /// A REQ's query failed: the subscription is closed with the reason.
    async fn query_failed(&mut self, sub_id: &str, err: &StoreError) -> Flow {
        self.unsubscribe(sub_id);
        if self.subs.is_empty() {
            self.live = None;
        }
        let reason = self.query_error_reason(err);
        self.send_or_close(out::closed(sub_id, &reason)).await
    }

    /// The CLOSED reason for a failed REQ or COUNT query.
    fn query_error_reason(&self, err: &StoreError) -> String {
        match err.root() {
            StoreError::Timeout => format!(
                "error: query stopped after max_query_ms ({} ms); narrow the filters",
                self.relay.config.limits.max_query_ms
            ),
            StoreError::TooManyValues { values, max } => {
                format!("invalid: the filters list {values} values (max {max})")
            }
            other => {
                tracing::warn!(error = %other, "query failed");
                "error: could not query the database".into()
            }
        }
    }

    /// The CLOSED message for a query that found all of its address's
    /// query slots taken for `query_wait_ms`.
    fn queries_busy(&self, sub_id: &str) -> String {
        let limits = &self.relay.config.limits;
        out::closed(
            sub_id,
            &format!(
                "rate-limited: too many queries at once from your address (max {}); try again",
                limits.max_concurrent_queries_per_ip
            ),
        )
    }

    /// Defence in depth: the store already filters private events in SQL;
    /// re-check each one against the event itself before it leaves.
    fn stored_event_visible(&self, stored: &StoredEvent) -> bool {
        stored_event_visible(stored, &self.authed)
    }

    /// COUNT (NIP-45). A count that cannot finish within `max_query_ms` is
    /// answered with CLOSED (`error: query stopped…`), never with a partial
    /// number: SQLite stops a statement without a result.
    async fn on_count<In>(
        &mut self,
        sub_id: String,
        filters: Vec<Filter>,
        incoming: &mut Peekable<In>,
    ) -> Flow
    where
        In: Stream<Item = Incoming> + Unpin + Send,
    {
        if let Err(reason) = self.check_query(&sub_id, &filters) {
            let limited = reason.starts_with("rate-limited:");
            if let Flow::Close(c) = self.note_rate_limit(limited) {
                return Flow::Close(c);
            }
            return self.send_or_close(out::closed(&sub_id, &reason)).await;
        }
        let relay = Arc::clone(&self.relay);
        let limits = &relay.config.limits;
        // A COUNT holds nothing once answered, but may not exceed what a
        // REQ may list.
        if let Err(reason) = check_sizes(limits, &filters, 0) {
            return self.send_or_close(out::closed(&sub_id, &reason)).await;
        }
        let ctx = self.query_context();
        let budget = QueryBudget::millis(limits.max_query_ms);
        let counted = with_query_slot(
            &relay,
            self.ip,
            relay.store.count_within(&filters, &ctx, budget),
        );
        match Self::unless_gone(incoming, counted).await {
            None => Flow::Continue,
            Some(Err(Busy)) => self.send_or_close(self.queries_busy(&sub_id)).await,
            Some(Ok(Ok(n))) => self.send_or_close(out::count(&sub_id, n)).await,
            Some(Ok(Err(err))) => {
                let reason = self.query_error_reason(&err);
                self.send_or_close(out::closed(&sub_id, &reason)).await
            }
        }
    }

    /// Checks shared by REQ and COUNT. Err is the CLOSED message.
    fn check_query(&mut self, sub_id: &str, filters: &[Filter]) -> Result<(), String> {
        let limits = &self.relay.config.limits;
        if sub_id.is_empty() {
            return Err("invalid: subscription id must not be empty".into());
        }
        if sub_id.len() > limits.max_subid_length {
            return Err(format!(
                "invalid: subscription id is longer than {} characters",
                limits.max_subid_length
            ));
        }
        if filters.len() > limits.max_filters {
            return Err(format!(
                "invalid: too many filters (max {})",
                limits.max_filters
            ));
        }
        if filters.iter().any(|f| f.search.is_some()) {
            return Err("invalid: search (NIP-50) is not supported".into());
        }
        self.check_req_rate()?;
        if self.authed.is_empty() && filters.iter().any(asks_for_private_kinds) {
            return Err(
                "auth-required: private messages are delivered only to their authenticated recipient"
                    .into(),
            );
        }
        Ok(())
    }

    /// The REQ rate limits (per address, and per first authenticated
    /// pubkey), which REQ, COUNT and every NIP-77 message count against.
    fn check_req_rate(&mut self) -> Result<(), String> {
        let limiters = &self.relay.limiters;
        let ip_ok = limiters.reqs_per_ip.check(&self.ip);
        let key_ok = self
            .authed
            .first()
            .is_none_or(|pk| limiters.reqs_per_pubkey.check(pk));
        if !ip_ok || !key_ok {
            return Err("rate-limited: slow down, too many requests".into());
        }
        self.violations = 0;
        Ok(())
    }

    fn query_context(&self) -> QueryContext {
        QueryContext {
            viewers: self.authed.clone(),
            now: Timestamp::now().as_secs(),
            max_limit: self.relay.config.limits.max_limit,
        }
    }

    async fn on_auth(&mut self, event: Box<Event>) -> Flow {
        let id = event.id.to_hex();
        let now = Timestamp::now().as_secs();
        let limits = &self.relay.config.limits;
        if let Err(err) = check_auth_event(
            &event,
            &self.challenge,
            &self.relay.public_url,
            now,
            limits.auth_window,
        ) {
            return self
                .send_or_close(out::auth_ok(&id, false, &err.to_string()))
                .await;
        }
        let (event, verified) = self.relay.verifier.verify(event).await;
        if let Err(err) = verified {
            return self
                .send_or_close(out::auth_ok(&id, false, &err.to_string()))
                .await;
        }
        if !self.authed.contains(&event.pubkey) {
            if self.authed.len() >= MAX_AUTHED_PUBKEYS {
                let reason =
                    format!("restricted: at most {MAX_AUTHED_PUBKEYS} pubkeys per connection");
                return self.send_or_close(out::auth_ok(&id, false, &reason)).await;
            }
            self.authed.push(event.pubkey);
        }
        self.send_or_close(out::auth_ok(&id, true, "")).await
    }

    async fn deliver_live(
        &mut self,
        live: Result<Arc<LiveEvent>, broadcast::error::RecvError>,
    ) -> Flow {
        let live = match live {
            Ok(live) => live,
            Err(broadcast::error::RecvError::Lagged(_)) => return Flow::Close(slow_reader()),
            Err(broadcast::error::RecvError::Closed) => {
                self.live = None;
                return Flow::Continue;
            }
        };
        let event = &live.event;
        if !live_event_visible(event, &self.authed) {
            return Flow::Continue;
        }
        for sub in self.subs.values() {
            if sub.filters.iter().any(|f| matches(f, event)) {
                match self
                    .out
                    .send(out::event_after(&sub.prefix, &live.json))
                    .await
                {
                    Ok(()) => {}
                    Err(SendError::SlowReader) => return Flow::Close(slow_reader()),
                    Err(SendError::Closed) => return Flow::Continue,
                }
            }
        }
        Flow::Continue
    }
}

/// Run `query` (a REQ's or COUNT's database part) holding one of the query
/// slots of client `ip` (`max_concurrent_queries_per_ip`), waiting for one
/// in turn for up to `query_wait_ms`; `Err(Busy)` when none came free. The
/// slot covers the filters' queries, not the streaming of their results,
/// so a client that reads slowly holds no slot; waiting holds nothing but
/// the connection, and stops when the client leaves (the future is dropped).
async fn with_query_slot<T>(
    relay: &Relay,
    ip: std::net::IpAddr,
    query: impl Future<Output = T>,
) -> Result<T, Busy> {
    let _slot = relay.limiters.queries_per_ip.acquire(&ip).await?;
    Ok(query.await)
}

fn slow_reader() -> CloseRequest {
    metrics::counter!(crate::metrics::SLOW_READERS_DROPPED).increment(1);
    CloseRequest {
        notice: Some("error: you are reading too slowly; closing the connection".into()),
        code: 1008,
        reason: "slow reader",
    }
}

/// Until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => futures::future::pending().await,
    }
}

async fn recv_live(
    live: &mut Option<broadcast::Receiver<Arc<LiveEvent>>>,
) -> Result<Arc<LiveEvent>, broadcast::error::RecvError> {
    match live {
        Some(rx) => rx.recv().await,
        None => futures::future::pending().await,
    }
}

/// Verify, rate-limit by author (or recipients) and submit one event; the
/// returned reply is the OK message.
async fn process_event(relay: Arc<Relay>, event: Box<Event>, id: String) -> EventReply {
    let result = verify_and_submit(&relay, event).await;
    EventReply {
        rate_limited: matches!(result, Err(Refused::RateLimited)),
        message: ok_message(&id, &result),
    }
}

async fn verify_and_submit(relay: &Relay, event: Box<Event>) -> Result<Accepted, Refused> {
    let (event, verified) = relay.verifier.verify(event).await;
    verified?;
    let limiters = &relay.limiters;
    let within_rate = if event.kind.as_u16() == KIND_GIFT_WRAP {
        // Every recipient: the checks in `check_event` made each `p` a key
        // and bounded their number by `MAX_GIFT_WRAP_RECIPIENTS`.
        kinds::tag_values(&event, "p")
            .all(|p| limiters.gift_wraps_per_recipient.check(&p.to_owned()))
    } else {
        limiters
            .events_per_pubkey
            .check_weighted(&event.pubkey, crate::accept::rate_weight(&event))
    };
    if !within_rate {
        return Err(Refused::RateLimited);
    }
    relay.submit(*event).await
}
