//! The delivery worker: the outbox's I/O. [`run`] loops over the relays with
//! due deliveries, at most `max_relays` at a time, one task (and one
//! connection) per relay; each task claims its relay's due rows a batch at a
//! time, sends them over one WebSocket with at most `in_flight` events
//! waiting for their `OK`, and records each answer as it is read (see
//! [`super`] for the invariants). The node's own relay is reached
//! in-process, never through a socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use cairn_relay::auth::normalize_relay_url;
use cairn_relay::Relay;
use futures::{SinkExt, StreamExt};
use nostr::{ClientMessage, Event, EventBuilder, EventId, JsonUtil, Keys, RelayMessage, RelayUrl};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::schedule::{classify, next_state, Backoff, Outcome, State};
use super::store::{DueDelivery, NewItem, OutboxDb};
use super::OutboxError;

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Retry delays.
    pub backoff: Backoff,
    /// Most relays served at once (so most connections open at once).
    pub max_relays: usize,
    /// Most events waiting for their `OK` on one connection.
    pub in_flight: usize,
    /// Rows loaded (and claimed) at a time per relay.
    pub batch: usize,
    /// How long a loaded row stays claimed (another worker on the same
    /// database leaves it alone; after a crash it is due again then).
    pub claim: Duration,
    /// Bound on connecting and on each `OK`.
    pub timeout: Duration,
    /// Pause between two events sent on one connection (0: none).
    pub send_interval: Duration,
    /// How long finished items are kept after their time to live ended
    /// (`None`: forever).
    pub retention: Option<Duration>,
}

/// The outbox of a running node: where messages are queued and the worker
/// that delivers them.
#[derive(Debug)]
pub struct Outbox {
    db: OutboxDb,
    config: WorkerConfig,
    wake: Notify,
    /// This node's relay (in-process delivery) and its normalized URL.
    own: Weak<Relay>,
    own_url: String,
    /// Signs NIP-42 AUTH: the owner's key, or a key of this run.
    signer: Keys,
}

impl Outbox {
    /// The outbox on `db` (migrated already), delivering to `own` in-process.
    pub fn new(db: OutboxDb, config: WorkerConfig, own: &Arc<Relay>, signer: Keys) -> Self {
        let own_url = normalize_relay_url(own.public_url()).unwrap_or_default();
        Self {
            db,
            config,
            wake: Notify::new(),
            own: Arc::downgrade(own),
            own_url,
            signer,
        }
    }

    /// The database.
    pub fn db(&self) -> &OutboxDb {
        &self.db
    }

    /// This node's relay URL, normalized.
    pub fn own_url(&self) -> &str {
        &self.own_url
    }

    /// Commits `item` and its deliveries, then wakes the worker. Nothing is
    /// sent before this returns.
    pub async fn enqueue(&self, item: &NewItem) -> Result<i64, OutboxError> {
        let id = self.db.enqueue(item).await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Commits all `items` in one transaction (all or none; see
    /// [`OutboxDb::enqueue_all`]), then wakes the worker.
    pub async fn enqueue_all(&self, items: &[NewItem]) -> Result<Vec<i64>, OutboxError> {
        let ids = self.db.enqueue_all(items).await?;
        self.wake.notify_one();
        Ok(ids)
    }

    /// Wakes the worker (new rows, e.g. written by another process).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

fn now() -> u64 {
    nostr::Timestamp::now().as_secs()
}

/// Time since the Unix epoch, to the sub-second: retries are scheduled from
/// it (see [`next_state`]).
fn precise_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Longest the worker sleeps without looking at the table.
const MAX_IDLE: Duration = Duration::from_secs(30);
/// How often finished items past their retention are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Most items deleted in one transaction.
const PRUNE_BATCH: usize = 500;

/// Delivers until `stop` is cancelled; then lets the running relay tasks
/// finish their current answers (bounded by the timeout) and returns.
pub async fn run(outbox: Arc<Outbox>, stop: CancellationToken) {
    let mut busy: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut next_prune = 0u64;
    loop {
        let t = now();
        if let Err(e) = outbox.db.expire_due(t).await {
            tracing::warn!(error = %e, "outbox: cannot expire deliveries");
        }
        // Finished items go after their retention, a bounded batch at a
        // time and at most once per PRUNE_EVERY, off the write pool's
        // busy path.
        if let (Some(keep), true) = (outbox.config.retention, t >= next_prune) {
            let before = t.saturating_sub(keep.as_secs());
            match outbox.db.prune(before, PRUNE_BATCH).await {
                // A full batch: more to do, next round.
                Ok(n) if n >= PRUNE_BATCH as u64 => {}
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(items = n, "outbox: pruned finished items");
                    }
                    next_prune = t + PRUNE_EVERY.as_secs();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: cannot prune finished items");
                    next_prune = t + PRUNE_EVERY.as_secs();
                }
            }
        }
        let room = outbox.config.max_relays.saturating_sub(tasks.len());
        if room > 0 {
            match outbox.db.due_relays(t, room + busy.len()).await {
                Ok(relays) => {
                    let idle: Vec<String> = relays
                        .into_iter()
                        .filter(|r| !busy.contains(r))
                        .take(room)
                        .collect();
                    for relay in idle {
                        busy.insert(relay.clone());
                        let o = Arc::clone(&outbox);
                        let s = stop.clone();
                        tasks.spawn(async move {
                            serve_relay(&o, &relay, &s).await;
                            relay
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "outbox: cannot read due deliveries"),
            }
        }
        let idle = match outbox.db.next_due_at().await {
            Ok(Some(next)) => Duration::from_secs(next.saturating_sub(now()).max(1)),
            Ok(None) => MAX_IDLE,
            Err(_) => Duration::from_secs(5),
        }
        .min(MAX_IDLE);
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                match done {
                    Ok(relay) => { busy.remove(&relay); }
                    Err(e) => {
                        // A panicked task's relay name is lost: start afresh.
                        tracing::error!(error = %e, "outbox: a relay task failed");
                        busy.clear();
                    }
                }
            }
            _ = outbox.wake.notified() => {}
            _ = tokio::time::sleep(idle) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Serves one relay until it has no due rows, the connection fails, or
/// `stop` is cancelled.
async fn serve_relay(outbox: &Outbox, relay: &str, stop: &CancellationToken) {
    if relay == outbox.own_url {
        return deliver_in_process(outbox, relay, stop).await;
    }
    let cfg = &outbox.config;
    let mut conn = match Connection::open(relay, cfg.timeout).await {
        Ok(c) => c,
        Err(e) => {
            // Every due row gets its failed try, batch by batch, so each
            // backs off on its own schedule; no network I/O meanwhile.
            let error = format!("cannot connect: {e}");
            loop {
                let batch = match claim(outbox, relay).await {
                    Some(b) if !b.is_empty() => b,
                    _ => return,
                };
                let updates: Vec<_> = batch
                    .iter()
                    .map(|d| {
                        (
                            d.item_id,
                            failed_try(outbox, d, Outcome::Transient(error.clone())),
                        )
                    })
                    .collect();
                if let Err(e) = outbox.db.record_batch(relay, &updates).await {
                    tracing::warn!(error = %e, relay, "outbox: cannot record failures");
                    return;
                }
                if stop.is_cancelled() {
                    return;
                }
            }
        }
    };
    while !stop.is_cancelled() {
        let Some(batch) = claim(outbox, relay).await else {
            break;
        };
        if batch.is_empty() {
            break;
        }
        if let Err(e) = send_batch(outbox, relay, &mut conn, batch, stop).await {
            tracing::debug!(relay, error = %e, "outbox: connection ended");
            break;
        }
    }
    conn.close().await;
}

async fn claim(outbox: &Outbox, relay: &str) -> Option<Vec<DueDelivery>> {
    let t = now();
    let until = t + outbox.config.claim.as_secs().max(1);
    match outbox.db.claim(relay, t, until, outbox.config.batch).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, relay, "outbox: cannot load deliveries");
            None
        }
    }
}

/// The state a try with `outcome` leads `d` to (its attempts counted).
fn failed_try(outbox: &Outbox, d: &DueDelivery, outcome: Outcome) -> (u32, State) {
    let attempts = d.attempts.saturating_add(1);
    let state = next_state(
        outcome,
        attempts,
        precise_now(),
        d.expires_at,
        &outbox.config.backoff,
        rand::random::<f64>(),
    );
    (attempts, state)
}

async fn record(outbox: &Outbox, relay: &str, d: &DueDelivery, outcome: Outcome) {
    let (attempts, state) = failed_try(outbox, d, outcome);
    if let Err(e) = outbox.db.record(d.item_id, relay, attempts, &state).await {
        // The claim runs out and the row is tried again: a resend that the
        // relay dedupes, never a loss.
        tracing::warn!(error = %e, relay, "outbox: cannot record a delivery");
    }
}

async fn deliver_in_process(outbox: &Outbox, relay: &str, stop: &CancellationToken) {
    while !stop.is_cancelled() {
        let Some(batch) = claim(outbox, relay).await else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        for d in &batch {
            if stop.is_cancelled() {
                // The rest stays claimed, due again when the claim ends.
                return;
            }
            let outcome = match (outbox.own.upgrade(), Event::from_json(&d.event_json)) {
                (None, _) => Outcome::Transient("the relay is stopping".into()),
                (_, Err(e)) => Outcome::Refused(format!("invalid: stored event: {e}")),
                (Some(own), Ok(event)) => match own.publish(event).await {
                    Ok(accepted) => classify(true, accepted.message()),
                    Err(refused) => classify(false, &refused.to_string()),
                },
            };
            record(outbox, relay, d, outcome).await;
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One WebSocket to a relay, with what NIP-42 needs.
struct Connection {
    url: String,
    socket: Socket,
    timeout: Duration,
    challenge: Option<String>,
    /// The id of the AUTH event sent, while its `OK` is awaited.
    auth_pending: Option<EventId>,
    authed: bool,
}

impl Connection {
    async fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        let connect = tokio_tungstenite::connect_async(url);
        let (socket, _) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url: url.to_owned(),
            socket,
            timeout,
            challenge: None,
            auth_pending: None,
            authed: false,
        })
    }

    async fn send(&mut self, msg: ClientMessage<'_>) -> Result<(), String> {
        self.socket
            .send(Message::text(msg.as_json()))
            .await
            .map_err(|e| format!("cannot send: {e}"))
    }

    /// The next relay message, or why there is none.
    async fn next(&mut self) -> Result<RelayMessage<'static>, String> {
        loop {
            let frame = tokio::time::timeout(self.timeout, self.socket.next())
                .await
                .map_err(|_| "no answer in time".to_owned())?;
            match frame {
                None => return Err("the relay closed the connection".into()),
                Some(Err(e)) => return Err(format!("connection lost: {e}")),
                Some(Ok(Message::Text(text))) => match RelayMessage::from_json(text.as_str()) {
                    Ok(m) => return Ok(m),
                    Err(_) => continue,
                },
                Some(Ok(Message::Close(_))) => return Err("the relay closed the connection".into()),
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn authenticate(&mut self, signer: &Keys) -> Result<(), String> {
        let (Some(challenge), None) = (self.challenge.clone(), self.auth_pending) else {
            return Ok(());
        };
        let url = RelayUrl::parse(&self.url).map_err(|e| e.to_string())?;
        let auth = EventBuilder::auth(challenge, url)
            .sign_with_keys(signer)
            .map_err(|e| format!("cannot sign AUTH: {e}"))?;
        self.auth_pending = Some(auth.id);
        self.send(ClientMessage::auth(auth)).await
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.close(None)).await;
    }
}

/// Sends `batch` over `conn` and records every answer. An error means the
/// connection is no longer usable; every row of the batch not answered yet
/// has been recorded as a failed try before it returns.
///
/// Once `stop` is cancelled nothing more is sent: the answers to the events
/// in flight are awaited (each bounded by the timeout), and the rows not
/// sent stay claimed, due again when their claim ends. So a slow relay
/// holds shutdown for at most `in_flight` answers, not the whole batch.
async fn send_batch(
    outbox: &Outbox,
    relay: &str,
    conn: &mut Connection,
    batch: Vec<DueDelivery>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let cfg = &outbox.config;
    let mut queue: VecDeque<DueDelivery> = batch.into();
    let mut in_flight: HashMap<EventId, DueDelivery> = HashMap::new();
    // Refused with `auth-required:`, sent again once AUTH is accepted.
    let mut after_auth: Vec<DueDelivery> = Vec::new();
    let result: Result<(), String> = async {
        while !queue.is_empty() || !in_flight.is_empty() || !after_auth.is_empty() {
            if stop.is_cancelled() {
                queue.clear();
                after_auth.clear();
                if in_flight.is_empty() {
                    break;
                }
            }
            while in_flight.len() < cfg.in_flight.max(1) && !stop.is_cancelled() {
                let Some(d) = queue.pop_front() else { break };
                let event = match Event::from_json(&d.event_json) {
                    Ok(e) => e,
                    Err(e) => {
                        let o = Outcome::Refused(format!("invalid: stored event: {e}"));
                        record(outbox, relay, &d, o).await;
                        continue;
                    }
                };
                if !cfg.send_interval.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(cfg.send_interval) => {}
                        // Not sent: it stays claimed, due again later.
                        _ = stop.cancelled() => break,
                    }
                }
                in_flight.insert(event.id, d);
                conn.send(ClientMessage::event(event)).await?;
            }
            if in_flight.is_empty() && queue.is_empty() && conn.challenge.is_none() {
                // Waiting for a challenge that the relay has not sent yet.
                tracing::debug!(relay, "outbox: waiting for the AUTH challenge");
            }
            match conn.next().await? {
                RelayMessage::Ok {
                    event_id,
                    status,
                    message,
                } => {
                    if conn.auth_pending == Some(event_id) {
                        conn.auth_pending = None;
                        conn.authed = status;
                        if status {
                            queue.extend(after_auth.drain(..));
                        } else {
                            let why = format!("AUTH refused: {message}");
                            for d in after_auth.drain(..) {
                                record(outbox, relay, &d, Outcome::Transient(why.clone())).await;
                            }
                        }
                        continue;
                    }
                    let Some(d) = in_flight.remove(&event_id) else {
                        continue;
                    };
                    match classify(status, &message) {
                        Outcome::AuthRequired(m) if !conn.authed => {
                            after_auth.push(d);
                            if conn.challenge.is_some() {
                                conn.authenticate(&outbox.signer).await?;
                            } else {
                                tracing::debug!(relay, "outbox: {m}; waiting for a challenge");
                            }
                        }
                        outcome => record(outbox, relay, &d, outcome).await,
                    }
                }
                RelayMessage::Auth { challenge } => {
                    conn.challenge = Some(challenge.into_owned());
                    if !after_auth.is_empty() && !conn.authed {
                        conn.authenticate(&outbox.signer).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    if let Err(why) = &result {
        let rest: Vec<_> = in_flight
            .into_values()
            .chain(after_auth)
            .chain(queue)
            .map(|d| {
                (
                    d.item_id,
                    failed_try(outbox, &d, Outcome::Transient(why.clone())),
                )
            })
            .collect();
        if let Err(e) = outbox.db.record_batch(relay, &rest).await {
            tracing::warn!(error = %e, relay, "outbox: cannot record failures");
        }
    }
    result
}
