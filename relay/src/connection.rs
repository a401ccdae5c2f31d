//! One client connection: the NIP-01 state machine, independent of the
//! WebSocket library. The node adapts its socket into a stream of
//! [`Incoming`] and a sink of [`Outgoing`] and calls [`serve_connection`].
//!
//! Messages are handled in order, except that consecutive EVENTs are
//! pipelined (verified and committed concurrently, answered in order); any
//! other message first waits for the EVENTs before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use nostr::filter::MatchEventOptions;
use nostr::{Event, Filter, PublicKey, Timestamp};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::accept::{check_event, ok_message, Accepted, Refused};
use crate::auth::{check_auth_event, new_challenge};
use crate::kinds::{self, is_private, KIND_GIFT_WRAP};
use crate::message::{out, ClientMessage, ParseError};
use crate::privacy::{asks_for_private_kinds, live_event_visible, stored_event_visible};
use crate::relay::{ConnectionPermit, LiveEvent, Relay};
use crate::store::{QueryContext, StoredEvent};

/// EVENTs one connection may have in flight before reading pauses.
pub const DEFAULT_MAX_PIPELINE: usize = 64;
/// Most pubkeys one connection may authenticate as.
pub const MAX_AUTHED_PUBKEYS: usize = 16;
/// How long a send to a client may wait on a full queue before the client
/// is considered stuck and disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a live event may wait for room in the outbound queue. The queue
/// may be full of a large REQ's results that a healthy client is still
/// reading, so a full queue alone does not make a slow reader; not draining
/// it for this long does.
pub const LIVE_SEND_TIMEOUT: Duration = Duration::from_secs(3);
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
    let (out_tx, out_rx) = mpsc::channel(relay.config.limits.max_outbound_queue.max(1));
    let (close_tx, close_rx) = oneshot::channel();
    let session = Session {
        relay: Arc::clone(&relay),
        permit,
        challenge: new_challenge(),
        authed: Vec::new(),
        subs: HashMap::new(),
        live: None,
        out: out_tx,
        close: Some(close_tx),
        violations: 0,
    };
    let reader = session.run(incoming);
    let writer = write_loop(outgoing, out_rx, close_rx);
    futures::future::join(reader, writer).await;
}

/// Drains the outbound queue into the socket, batching frames between flushes.
async fn write_loop<Out>(
    mut sink: Out,
    mut queue: mpsc::Receiver<String>,
    mut close: oneshot::Receiver<CloseRequest>,
) where
    Out: Sink<Outgoing> + Unpin + Send,
{
    let mut closing = None;
    loop {
        tokio::select! {
            biased;
            request = &mut close, if closing.is_none() => {
                match request {
                    Ok(request) => closing = Some(request),
                    // The session ended without asking to close: the client went away.
                    Err(_) => {
                        // Flush what is queued, then stop.
                        while let Ok(text) = queue.try_recv() {
                            if sink.feed(Outgoing::Text(text)).await.is_err() {
                                return;
                            }
                        }
                        let _ = sink.flush().await;
                        return;
                    }
                }
                break;
            }
            next = queue.recv() => {
                let Some(text) = next else { break };
                if sink.feed(Outgoing::Text(text)).await.is_err() {
                    return;
                }
                // Coalesce whatever else is ready into one flush.
                while let Ok(text) = queue.try_recv() {
                    if sink.feed(Outgoing::Text(text)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
    if closing.is_none() {
        closing = close.await.ok();
    }
    let Some(request) = closing else { return };
    // A well-behaved client gets what was queued before the close; a stuck one
    // (the reason we may be closing) gets a bounded wait.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if request.code != 1008 {
            while let Ok(text) = queue.try_recv() {
                sink.feed(Outgoing::Text(text)).await.ok()?;
            }
        }
        if let Some(notice) = request.notice {
            sink.feed(Outgoing::Text(out::notice(&notice))).await.ok()?;
        }
        sink.send(Outgoing::Close {
            code: request.code,
            reason: request.reason.to_owned(),
        })
        .await
        .ok()
    })
    .await;
}

type Pending = FuturesOrdered<BoxFuture<'static, EventReply>>;

/// The answer to one EVENT, produced by its pipelined future.
struct EventReply {
    message: String,
    rate_limited: bool,
}

struct Session {
    relay: Arc<Relay>,
    permit: ConnectionPermit,
    challenge: String,
    authed: Vec<PublicKey>,
    subs: HashMap<String, Vec<Filter>>,
    live: Option<broadcast::Receiver<Arc<LiveEvent>>>,
    out: mpsc::Sender<String>,
    close: Option<oneshot::Sender<CloseRequest>>,
    violations: u32,
}

/// How the read loop continues after one message.
enum Flow {
    Continue,
    Close(CloseRequest),
}

impl Session {
    async fn run<In>(mut self, mut incoming: In)
    where
        In: Stream<Item = Incoming> + Unpin + Send,
    {
        let shutdown = self.relay.shutdown_token().clone();
        let mut pending: Pending = FuturesOrdered::new();
        if self.send(out::auth(&self.challenge)).await.is_err() {
            return;
        }
        let flow = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
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
                msg = incoming.next(), if pending.len() < DEFAULT_MAX_PIPELINE => {
                    let Some(msg) = msg else { break Flow::Continue };
                    if let Flow::Close(c) = self.handle(msg, &mut pending).await {
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
        drop(self.permit);
    }

    async fn send(&self, text: String) -> Result<(), ()> {
        match self.out.send_timeout(text, SEND_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(_) => Err(()),
        }
    }

    /// Send, or close the connection if the client does not read.
    async fn send_or_close(&self, text: String) -> Flow {
        match self.send(text).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Close(slow_reader()),
        }
    }

    async fn answer_event(&mut self, reply: EventReply) -> Flow {
        if let Flow::Close(c) = self.note_rate_limit(reply.rate_limited) {
            // Still tell the client why its event was refused.
            let _ = self.out.try_send(reply.message);
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

    async fn handle(&mut self, msg: Incoming, pending: &mut Pending) -> Flow {
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
        if !matches!(parsed, Ok(ClientMessage::Event(_))) {
            if let Flow::Close(c) = self.drain(pending).await {
                return Flow::Close(c);
            }
        }
        match parsed {
            Ok(ClientMessage::Event(event)) => self.on_event(event, text.len(), pending).await,
            Ok(ClientMessage::Req { sub_id, filters }) => self.on_req(sub_id, filters).await,
            Ok(ClientMessage::Count { sub_id, filters }) => self.on_count(sub_id, filters).await,
            Ok(ClientMessage::Close(sub_id)) => {
                self.subs.remove(&sub_id);
                if self.subs.is_empty() {
                    self.live = None;
                }
                Flow::Continue
            }
            Ok(ClientMessage::Auth(event)) => self.on_auth(event).await,
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
        if !self.relay.limiters.events_per_ip.check(&self.permit.ip()) {
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

    async fn on_req(&mut self, sub_id: String, filters: Vec<Filter>) -> Flow {
        if let Err(reason) = self.check_query(&sub_id, &filters) {
            let limited = reason.starts_with("rate-limited:");
            if let Flow::Close(c) = self.note_rate_limit(limited) {
                return Flow::Close(c);
            }
            return self.send_or_close(out::closed(&sub_id, &reason)).await;
        }
        let limits = &self.relay.config.limits;
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
        self.subs.insert(sub_id.clone(), filters.clone());

        let ctx = self.query_context();
        let results = match self.relay.query_stored(&filters, &ctx).await {
            Ok(results) => results,
            Err(err) => {
                tracing::warn!(error = %err, "query failed");
                self.subs.remove(&sub_id);
                return self
                    .send_or_close(out::closed(&sub_id, "error: could not query the database"))
                    .await;
            }
        };
        for stored in results {
            if is_private(stored.kind) && !self.stored_event_visible(&stored) {
                continue;
            }
            if let Flow::Close(c) = self.send_or_close(out::event(&sub_id, &stored.json)).await {
                return Flow::Close(c);
            }
        }
        self.send_or_close(out::eose(&sub_id)).await
    }

    /// Defence in depth: the store already filters private events in SQL;
    /// re-check each one against the event itself before it leaves.
    fn stored_event_visible(&self, stored: &StoredEvent) -> bool {
        stored_event_visible(stored, &self.authed)
    }

    async fn on_count(&mut self, sub_id: String, filters: Vec<Filter>) -> Flow {
        if let Err(reason) = self.check_query(&sub_id, &filters) {
            let limited = reason.starts_with("rate-limited:");
            if let Flow::Close(c) = self.note_rate_limit(limited) {
                return Flow::Close(c);
            }
            return self.send_or_close(out::closed(&sub_id, &reason)).await;
        }
        let ctx = self.query_context();
        match self.relay.store.count(&filters, &ctx).await {
            Ok(n) => self.send_or_close(out::count(&sub_id, n)).await,
            Err(err) => {
                tracing::warn!(error = %err, "count failed");
                self.send_or_close(out::closed(&sub_id, "error: could not query the database"))
                    .await
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
        let limiters = &self.relay.limiters;
        let ip_ok = limiters.reqs_per_ip.check(&self.permit.ip());
        let key_ok = self
            .authed
            .first()
            .is_none_or(|pk| limiters.reqs_per_pubkey.check(pk));
        if !ip_ok || !key_ok {
            return Err("rate-limited: slow down, too many requests".into());
        }
        self.violations = 0;
        if self.authed.is_empty() && filters.iter().any(asks_for_private_kinds) {
            return Err(
                "auth-required: private messages are delivered only to their authenticated recipient"
                    .into(),
            );
        }
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
                .send_or_close(out::ok(&id, false, &err.to_string()))
                .await;
        }
        let (event, verified) = self.relay.verifier.verify(event).await;
        if let Err(err) = verified {
            return self
                .send_or_close(out::ok(&id, false, &err.to_string()))
                .await;
        }
        if !self.authed.contains(&event.pubkey) {
            if self.authed.len() >= MAX_AUTHED_PUBKEYS {
                let reason =
                    format!("restricted: at most {MAX_AUTHED_PUBKEYS} pubkeys per connection");
                return self.send_or_close(out::ok(&id, false, &reason)).await;
            }
            self.authed.push(event.pubkey);
        }
        self.send_or_close(out::ok(&id, true, "")).await
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
        for (sub_id, filters) in &self.subs {
            if filters
                .iter()
                .any(|f| f.match_event(event, MatchEventOptions::new()))
            {
                match self
                    .out
                    .send_timeout(out::event(sub_id, &live.json), LIVE_SEND_TIMEOUT)
                    .await
                {
                    Ok(()) => {}
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                        return Flow::Close(slow_reader())
                    }
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => return Flow::Continue,
                }
            }
        }
        Flow::Continue
    }
}

fn slow_reader() -> CloseRequest {
    CloseRequest {
        notice: Some("error: you are reading too slowly; closing the connection".into()),
        code: 1008,
        reason: "slow reader",
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
        kinds::tag_values(&event, "p")
            .take(4)
            .all(|p| limiters.gift_wraps_per_recipient.check(&p.to_owned()))
    } else {
        limiters.events_per_pubkey.check(&event.pubkey)
    };
    if !within_rate {
        return Err(Refused::RateLimited);
    }
    relay.submit(*event).await
}
