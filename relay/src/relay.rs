//! The relay's shared state: configuration, storage, fan-out, verification,
//! rate limits and connection accounting. One [`Relay`] serves every connection.

use std::collections::{HashMap, HashSet};
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
use crate::ratelimit::RateLimiter;
use crate::store::{
    QueryContext, SaveOutcome, Store, StoreError, StoredEvent, Writer, DEFAULT_MAX_BATCH,
};
use crate::verify::VerifierPool;

/// Live events buffered for subscribers; a connection that falls this far
/// behind is disconnected rather than buffered further. The ring keeps its
/// last events alive, so this also bounds the memory it holds
/// (at most this many times `max_event_length`).
pub const DEFAULT_LIVE_BUFFER: usize = 2_048;

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
        };
        let relay = Arc::new(Self {
            public_url: normalize_relay_url(public_url).unwrap_or_else(|| public_url.to_owned()),
            config,
            store,
            writer,
            live,
            verifier: VerifierPool::new(threads),
            limiters,
            connections: Mutex::new(ConnectionCounts::default()),
            shutdown: CancellationToken::new(),
        });
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

    /// Stored events matching any of `filters` as `ctx` may see them: newest
    /// first (ties by id), each once.
    pub(crate) async fn query_stored(
        &self,
        filters: &[Filter],
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut results: Vec<StoredEvent> = Vec::new();
        for filter in filters {
            results.extend(self.store.query(filter, ctx).await?);
        }
        if filters.len() > 1 {
            results.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
            let mut seen = HashSet::with_capacity(results.len());
            results.retain(|e| seen.insert(e.id));
        }
        Ok(results)
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
