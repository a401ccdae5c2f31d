//! The relay's shared state: configuration, storage, fan-out, verification,
//! rate limits and connection accounting. One [`Relay`] serves every connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use nostr::{Event, Filter, JsonUtil, PublicKey};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept::{Accepted, Refused};
use crate::auth::normalize_relay_url;
use crate::config::RelayConfig;
use crate::kinds::{classify, KindClass};
use crate::nip11;
use crate::ratelimit::{ConcurrencyLimiter, RateLimiter};
use crate::store::{
    QueryBudget, QueryContext, QueryRow, SaveOutcome, Store, StoreError, StoredEvent, Writer,
    DEFAULT_MAX_BATCH,
};
use crate::verify::VerifierPool;

/// Live events buffered for subscribers; a connection that falls this far
/// behind is disconnected rather than buffered further. The ring keeps its
/// last events alive, so this also bounds the memory it holds
/// (at most this many times `max_event_length`).
pub const DEFAULT_LIVE_BUFFER: usize = 2_048;

/// A query's results, newest first (ties by id), each event once, read one
/// at a time: what [`Relay::open_results`] could hold within its read-ahead
/// comes with the keys; the JSON of the rest is fetched by key as the reader
/// gets to it, at most the read-ahead's worth of bytes per fetch (and one
/// event, however large). Events deleted in between are skipped. The store
/// is not held between reads, so a slow reader costs no database connection.
#[derive(Debug)]
pub(crate) struct StoredResults {
    store: Arc<dyn Store>,
    rows: std::iter::Peekable<std::vec::IntoIter<QueryRow>>,
    ready: VecDeque<StoredEvent>,
    fetch_bytes: usize,
    budget_ms: Option<u64>,
}

impl StoredResults {
    /// The next event, or `None` after the last.
    pub(crate) async fn next(&mut self) -> Result<Option<StoredEvent>, StoreError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let Some(row) = self.rows.next() else {
                return Ok(None);
            };
            if let Some(json) = row.json {
                return Ok(Some(StoredEvent {
                    id: row.id,
                    created_at: row.created_at,
                    kind: row.kind,
                    json,
                }));
            }
            // This row and the next ones without JSON, up to `fetch_bytes`.
            let mut bytes = row.json_len;
            let mut chunk = vec![row];
            while let Some(next) = self.rows.peek() {
                if next.json.is_some() || bytes + next.json_len > self.fetch_bytes {
                    break;
                }
                bytes += next.json_len;
                chunk.extend(self.rows.next());
            }
            let seqs: Vec<i64> = chunk.iter().map(|r| r.seq).collect();
            let mut fetched: HashMap<i64, (Vec<u8>, String)> = self
                .store
                .fetch_json(
                    &seqs,
                    self.budget_ms
                        .map_or_else(QueryBudget::default, QueryBudget::millis),
                )
                .await?
                .into_iter()
                .map(|(seq, id, json)| (seq, (id, json)))
                .collect();
            for row in chunk {
                // Only the very event listed: its seq may have been reused
                // since (see `Store::fetch_json`).
                if let Some((_, json)) = fetched.remove(&row.seq).filter(|(id, _)| *id == row.id) {
                    self.ready.push_back(StoredEvent {
                        id: row.id,
                        created_at: row.created_at,
                        kind: row.kind,
                        json,
                    });
                }
            }
        }
    }
}

/// An event on its way to live subscribers, with its JSON serialized once.
#[derive(Debug)]
pub struct LiveEvent {
    /// The event.
    pub event: Event,
    /// Its canonical JSON.
    pub json: String,
}

/// The rate limiters, one per key space.
#[derive(Debug)]
pub(crate) struct Limiters {
    pub events_per_ip: RateLimiter<IpAddr>,
    pub events_per_pubkey: RateLimiter<PublicKey>,
    pub gift_wraps_per_recipient: RateLimiter<String>,
    pub reqs_per_ip: RateLimiter<IpAddr>,
    pub reqs_per_pubkey: RateLimiter<PublicKey>,
    /// REQ/COUNT queries running at once per client key.
    pub queries_per_ip: ConcurrencyLimiter<IpAddr>,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The relay has `max_connections` open.
    #[error("rate-limited: too many connections to this relay")]
    TooManyConnections,
    /// This IP has `max_connections_per_ip` open.
    #[error("rate-limited: too many connections from your address")]
    TooManyFromIp,
    /// The relay is shutting down.
    #[error("relay is shutting down")]
    ShuttingDown,
}

#[derive(Debug, Default)]
struct ConnectionCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Proof that a connection was admitted; releases its slot when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    relay: Arc<Relay>,
    ip: IpAddr,
}

impl ConnectionPermit {
    /// The client's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.relay.connections.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The relay engine shared by all connections.
#[derive(Debug)]
pub struct Relay {
    pub(crate) config: RelayConfig,
    pub(crate) public_url: String,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) writer: Writer,
    pub(crate) live: broadcast::Sender<Arc<LiveEvent>>,
    pub(crate) verifier: VerifierPool,
    pub(crate) limiters: Limiters,
    /// Records all NIP-77 sessions hold together.
    pub(crate) negentropy_records: crate::negentropy::RecordBudget,
    connections: Mutex<ConnectionCounts>,
    shutdown: CancellationToken,
}

impl Relay {
    /// Build the relay over an opened store. `public_url` is the URL clients
    /// use (checked in NIP-42 AUTH). Returns the relay and the group-commit
    /// writer's task, which ends once every handle to the relay is dropped
    /// and the queued writes are committed.
    pub fn new(
        config: RelayConfig,
        public_url: &str,
        store: Arc<dyn Store>,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let (writer, writer_task) = Writer::spawn(Arc::clone(&store), DEFAULT_MAX_BATCH);
        let (live, _) = broadcast::channel(DEFAULT_LIVE_BUFFER);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let r = &config.rate_limits;
        let limiters = Limiters {
            events_per_ip: RateLimiter::new(r.events_per_ip),
            events_per_pubkey: RateLimiter::new(r.events_per_pubkey),
            gift_wraps_per_recipient: RateLimiter::new(r.gift_wraps_per_recipient),
            reqs_per_ip: RateLimiter::new(r.reqs_per_ip),
            reqs_per_pubkey: RateLimiter::new(r.reqs_per_pubkey),
            queries_per_ip: ConcurrencyLimiter::new(
                config.limits.max_concurrent_queries_per_ip,
                std::time::Duration::from_millis(config.limits.query_wait_ms),
            ),
        };
        let negentropy_records =
            crate::negentropy::RecordBudget::new(config.negentropy.max_records_total);
        let relay = Arc::new(Self {
            public_url: normalize_relay_url(public_url).unwrap_or_else(|| public_url.to_owned()),
            config,
            store,
            writer,
            live,
            verifier: VerifierPool::new(threads),
            limiters,
            negentropy_records,
            connections: Mutex::new(ConnectionCounts::default()),
            shutdown: CancellationToken::new(),
        });
        let retry = std::time::Duration::from_millis(relay.config.cluster.listener_retry_ms.max(1));
        if let Some(remote) = relay
            .store
            .remote_events(retry, relay.shutdown.child_token())
        {
            tokio::spawn(fan_out_remote(Arc::downgrade(&relay), remote));
        }
        (relay, writer_task)
    }

    /// The configuration in effect.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The public URL, normalized.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The storage backend.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The NIP-11 document.
    pub fn information_document(&self) -> serde_json::Value {
        nip11::relay_information(&self.config)
    }

    /// Cancelled when the relay shuts down; connections close on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Ask every connection to finish its in-flight writes and close.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Open connections right now.
    pub fn connection_count(&self) -> usize {
        self.connections.lock().total
    }

    /// Reserve a connection slot for `ip`, enforcing the total and per-IP limits.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, AdmitError> {
        if self.shutdown.is_cancelled() {
            return Err(AdmitError::ShuttingDown);
        }
        let limits = &self.config.limits;
        let mut counts = self.connections.lock();
        if counts.total >= limits.max_connections {
            return Err(AdmitError::TooManyConnections);
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= limits.max_connections_per_ip {
            return Err(AdmitError::TooManyFromIp);
        }
        *from_ip += 1;
        counts.total += 1;
        drop(counts);
        Ok(ConnectionPermit {
            relay: Arc::clone(self),
            ip,
        })
    }

    /// Store an event that passed the checks (see [`crate::accept`]) and fan
    /// it out once stored; ephemeral events are only fanned out. The one
    /// place that turns a store outcome into the relay's answer: clients'
    /// EVENTs, [`Self::publish`] and the node's own events all end here.
    pub async fn submit(&self, event: Event) -> Result<Accepted, Refused> {
        if classify(event.kind.as_u16()) == KindClass::Ephemeral {
            // Other processes on the same database first (a round trip), so
            // the event is on its way everywhere when OK comes back.
            if let Err(err) = self.store.relay_ephemeral(&event).await {
                tracing::warn!(error = %err, "could not relay an ephemeral event to other processes");
            }
            self.fan_out(event);
            return Ok(Accepted::Relayed);
        }
        match self.writer.save(event.clone()).await {
            Ok(SaveOutcome::Stored) => {
                self.fan_out(event);
                Ok(Accepted::Stored)
            }
            Ok(SaveOutcome::Duplicate) => Ok(Accepted::Duplicate),
            Ok(SaveOutcome::Deleted) => Err(Refused::Deleted),
            Ok(SaveOutcome::Superseded) => Err(Refused::Superseded),
            Err(err) => {
                tracing::warn!(error = %err, "could not store event");
                Err(Refused::Store(err))
            }
        }
    }

    /// Stored events matching any of `filters` as `ctx` may see them, all at
    /// once (see [`StoredResults`]; for in-process subscribers, whose
    /// filters are the relay's own).
    pub(crate) async fn query_stored(
        &self,
        filters: &[Filter],
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut results = self.open_results(filters, ctx, None, usize::MAX).await?;
        let mut all = Vec::new();
        while let Some(event) = results.next().await? {
            all.push(event);
        }
        Ok(all)
    }

    /// Stored events matching any of `filters` as `ctx` may see them, to be
    /// read one by one (see [`StoredResults`]), at most `read_ahead` bytes of
    /// JSON held at a time beyond the one being read. `budget_ms` bounds the
    /// database time of the filters' queries together, and of each later
    /// fetch on its own (the client's reading in between is not counted).
    pub(crate) async fn open_results(
        &self,
        filters: &[Filter],
        ctx: &QueryContext,
        budget_ms: Option<u64>,
        read_ahead: usize,
    ) -> Result<StoredResults, StoreError> {
        let budget = budget_ms.map_or_else(QueryBudget::default, QueryBudget::millis);
        // Identical filters match identical rows: query each once.
        let mut distinct: Vec<&Filter> = Vec::with_capacity(filters.len());
        for filter in filters {
            if !distinct.contains(&filter) {
                distinct.push(filter);
            }
        }
        let mut hold = read_ahead;
        let mut rows = Vec::new();
        // Only the 32-byte ids, and only when rows can repeat.
        let mut seen = HashSet::new();
        for filter in &distinct {
            let started = std::time::Instant::now();
            let found = self.store.query_rows(filter, ctx, budget, hold).await?;
            let shape = crate::metrics::filter_shape(filter);
            metrics::histogram!(crate::metrics::QUERY_SECONDS, "shape" => shape)
                .record(started.elapsed().as_secs_f64());
            for row in found {
                if distinct.len() > 1 && !seen.insert(row.id) {
                    continue;
                }
                if let Some(json) = &row.json {
                    hold = hold.saturating_sub(json.len());
                }
                rows.push(row);
            }
        }
        if distinct.len() > 1 {
            rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        }
        Ok(StoredResults {
            store: Arc::clone(&self.store),
            rows: rows.into_iter().peekable(),
            ready: VecDeque::new(),
            fetch_bytes: read_ahead.max(1),
            budget_ms,
        })
    }

    /// Hand an event to live subscribers.
    pub(crate) fn fan_out(&self, event: Event) {
        if self.live.receiver_count() == 0 {
            return;
        }
        let json = event.as_json();
        // An error only means nobody is subscribed right now.
        let _ = self.live.send(Arc::new(LiveEvent { event, json }));
    }
}

/// Remote events are handed to the live ring only while fewer than this many
/// events in it wait for some subscriber (see [`fan_out_remote`]).
pub const REMOTE_PACING_BACKLOG: usize = DEFAULT_LIVE_BUFFER / 2;

/// How often a paced hand-off looks at the ring's backlog again.
const REMOTE_PACING_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// Hand the events other processes on the database stored or relayed (see
/// [`Store::remote_events`]) to this process's live subscribers, through the
/// same fan-out, so each connection applies its own filters and privacy
/// rules. Holds only a weak handle: ends once the relay is gone.
///
/// **Paced against the subscribers.** A listener that reconnects after an
/// outage catches up on everything it missed at database speed, far faster
/// than a subscriber's socket takes events; poured into the live ring at
/// once, a long gap would push subscribers that read normally more than
/// [`DEFAULT_LIVE_BUFFER`] events behind, and they would be closed as slow
/// readers. So a remote event waits while [`REMOTE_PACING_BACKLOG`] or more
/// events in the ring are still unread by some subscriber, but for at most
/// one `slow_reader_grace_ms` per event: the catch-up then goes at the pace
/// of the slowest subscriber that keeps up with that (the listener's queue
/// fills meanwhile, which holds the catch-up back, and Postgres keeps what
/// is notified meanwhile; see the store's listener). An event that waited a
/// whole grace is handed on anyway, and the hand-off stops waiting (until
/// the backlog is below the mark again): one slow subscriber, even one that
/// still reads a little, must not throttle remote events for every other
/// subscriber of the process, nor keep the listener from draining its
/// notifications. That subscriber falls behind and is dropped, as one is
/// for local events. Local events are never paced.
async fn fan_out_remote(
    relay: std::sync::Weak<Relay>,
    mut remote: tokio::sync::mpsc::Receiver<crate::store::RemoteEvent>,
) {
    let mut stalled = false;
    while let Some(remote_event) = remote.recv().await {
        let crate::store::RemoteEvent { json, sent_at_ms } = remote_event;
        if !pace(&relay, &mut stalled).await {
            return;
        }
        let Some(relay) = relay.upgrade() else {
            return;
        };
        if let Some(sent) = sent_at_ms {
            let lag_ms = unix_millis().saturating_sub(sent);
            metrics::histogram!(crate::metrics::CLUSTER_FANOUT_LAG_SECONDS)
                .record(lag_ms as f64 / 1000.0);
        }
        if relay.live.receiver_count() == 0 {
            continue;
        }
        match Event::from_json(&json) {
            Ok(event) => {
                let _ = relay.live.send(Arc::new(LiveEvent { event, json }));
            }
            Err(err) => tracing::warn!(error = %err, "an event from the database does not parse"),
        }
    }
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wait until the live ring has room for one more remote event (see
/// [`fan_out_remote`]); false once the relay is gone or shutting down.
/// Waits at most one slow-reader grace; `stalled` carries, from one event to
/// the next, that a wait ran out: no waiting until the backlog is below the
/// mark again. Polls the ring's length: a broadcast channel does not signal
/// that a receiver took something.
async fn pace(relay: &std::sync::Weak<Relay>, stalled: &mut bool) -> bool {
    let (backlog, grace) = {
        let Some(relay) = relay.upgrade() else {
            return false;
        };
        let grace = relay.config.limits.slow_reader_grace_ms.max(1);
        (relay.live.len(), std::time::Duration::from_millis(grace))
    };
    if backlog < REMOTE_PACING_BACKLOG {
        *stalled = false;
        return true;
    }
    if *stalled {
        return true;
    }
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(REMOTE_PACING_POLL).await;
        let Some(relay) = relay.upgrade() else {
            return false;
        };
        if relay.shutdown.is_cancelled() {
            return false;
        }
        let now = relay.live.len();
        if now < REMOTE_PACING_BACKLOG {
            return true;
        }
        if started.elapsed() >= grace {
            metrics::counter!(crate::metrics::CLUSTER_PACING_STALLS).increment(1);
            tracing::debug!(
                backlog = now,
                "a live subscriber is too slow: remote events no longer wait for it"
            );
            *stalled = true;
            return true;
        }
    }
}
