//! NIP-77 negentropy syncing, the relay's side: `NEG-OPEN` / `NEG-MSG` /
//! `NEG-CLOSE`, answered with `NEG-MSG` or `NEG-ERR`.
//!
//! The protocol itself is the maintained [`negentropy`] crate (the one
//! rust-nostr uses), speaking **Negentropy Protocol V1** (version byte
//! `0x61`, [`PROTOCOL_VERSION`]). A client offering another version gets the
//! one-byte reply `0x61` the protocol prescribes, so it can downgrade.
//!
//! Invariants:
//!
//! - **The same privacy rule as REQ.** A session's set is the store's
//!   [`crate::store::Store::sync_items`] for the filter and the connection's
//!   authenticated pubkeys, which applies [`crate::privacy`]'s rule inside
//!   the query (the one place it lives, in SQL); every private event in the
//!   set is then checked again against its JSON by
//!   [`crate::privacy::may_receive`] before it counts. Nobody can learn the
//!   ids of gift wraps (or kind 4) they may not receive: those ids are never
//!   in the set, so they are never listed nor fingerprinted. A filter that
//!   names private kinds without AUTH is refused with `auth-required:`, as
//!   REQ is.
//! - **Bounded cost.** Records per session ([`NegentropyConfig::max_records`]),
//!   records held by all sessions of the relay together
//!   ([`NegentropyConfig::max_records_total`]), sessions per connection, the
//!   database time of building a set ([`NegentropyConfig::max_query_ms`]),
//!   the size of each reply ([`NegentropyConfig::frame_size_limit`]; incoming
//!   messages are bounded by `max_message_length`), and how long an idle
//!   session keeps its set ([`NegentropyConfig::idle_timeout_secs`]). A
//!   NEG-OPEN and every NEG-MSG count against the REQ rate limits. A set's
//!   room in `max_records_total` is reserved before it is built (the
//!   filter's `limit` or `max_records`), and the set is built holding one
//!   of the address's query slots (`max_concurrent_queries_per_ip`), as a
//!   REQ. Building a set and reconciling run on the blocking pool, so a
//!   large set does not stall the async workers, and at most one
//!   reconciliation step per core runs at once over the whole relay.
//! - A session ends with NEG-CLOSE, a NEG-ERR, a NEG-OPEN reusing its id, or
//!   the connection; its records are released then.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::store::SyncItem;

/// The negentropy protocol version spoken: V1, version byte `0x61`.
pub const PROTOCOL_VERSION: u8 = negentropy::PROTOCOL_VERSION as u8;

/// Default [`NegentropyConfig::max_records`] (strfry allows 1,000,000).
pub const DEFAULT_MAX_RECORDS: usize = 500_000;
/// Default [`NegentropyConfig::max_records_total`]: 2 M records, about
/// 80 MB of sets (40 bytes a record).
pub const DEFAULT_MAX_RECORDS_TOTAL: usize = 2_000_000;
/// Default [`NegentropyConfig::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 4;
/// Default [`NegentropyConfig::frame_size_limit`]: 64 KiB of binary, 128 KiB
/// hex-encoded, well within clients' usual message limits.
pub const DEFAULT_FRAME_SIZE_LIMIT: u64 = 64 * 1024;
/// Default [`NegentropyConfig::idle_timeout_secs`].
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Default [`NegentropyConfig::max_query_ms`].
pub const DEFAULT_MAX_QUERY_MS: u64 = 10_000;

/// NIP-77 settings (`[relay.negentropy]`), all listed in NIP-11
/// (`limitation.negentropy`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NegentropyConfig {
    /// Answer NIP-77 messages (advertised as NIP 77 in NIP-11 only then).
    pub enabled: bool,
    /// Most events one session may reconcile; a larger filter is refused
    /// with `NEG-ERR "blocked: …"` (and this number as the 4th element).
    pub max_records: usize,
    /// Most records all open sessions of the relay may hold together.
    pub max_records_total: usize,
    /// Open sessions per connection.
    pub max_sessions: usize,
    /// Largest reply, in bytes before hex encoding (0: unbounded; otherwise
    /// at least 4,096, the crate's minimum).
    pub frame_size_limit: u64,
    /// Seconds a session may wait for the client's next message before it
    /// is closed with `NEG-ERR "closed: …"`.
    pub idle_timeout_secs: u64,
    /// Milliseconds of database time building one session's set may take.
    pub max_query_ms: u64,
}

impl Default for NegentropyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_records: DEFAULT_MAX_RECORDS,
            max_records_total: DEFAULT_MAX_RECORDS_TOTAL,
            max_sessions: DEFAULT_MAX_SESSIONS,
            frame_size_limit: DEFAULT_FRAME_SIZE_LIMIT,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_query_ms: DEFAULT_MAX_QUERY_MS,
        }
    }
}

impl NegentropyConfig {
    /// The NIP-11 `limitation.negentropy` object.
    pub fn nip11(&self) -> serde_json::Value {
        serde_json::json!({
            "protocol_version": 1,
            "max_records": self.max_records,
            "max_records_total": self.max_records_total,
            "max_sessions_per_connection": self.max_sessions,
            "frame_size_limit": self.frame_size_limit,
            "idle_timeout_secs": self.idle_timeout_secs,
            "max_query_ms": self.max_query_ms,
        })
    }

    /// The frame size the crate accepts: below its 4,096 minimum, 4,096.
    fn frame_size(&self) -> u64 {
        match self.frame_size_limit {
            0 => 0,
            n => n.max(4096),
        }
    }
}

/// What all sessions of one relay share: the records they hold (see
/// [`NegentropyConfig::max_records_total`]), and the reconciliation steps
/// that may run at once (one per core), so that many connections sending
/// NEG-MSGs cannot fill the blocking pool with O(n) steps.
#[derive(Debug)]
pub struct RecordBudget {
    records: Arc<Semaphore>,
    total: usize,
    steps: Semaphore,
}

impl RecordBudget {
    /// A budget of `records`, and one reconciliation step at a time per core.
    pub fn new(records: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_steps(records, cores)
    }

    fn with_steps(records: usize, steps: usize) -> Self {
        let total = records.min(Semaphore::MAX_PERMITS);
        Self {
            records: Arc::new(Semaphore::new(total)),
            total,
            steps: Semaphore::new(steps.max(1)),
        }
    }

    /// Reserve room for a set of at most `records` before it is built (so
    /// that the sets being built count against the budget too); the
    /// session gives back what its set does not use ([`Sessions::open`]).
    /// More than the whole budget reserves the whole budget.
    pub(crate) fn reserve(&self, records: usize) -> Result<OwnedSemaphorePermit, NegError> {
        let n = u32::try_from(records.min(self.total)).unwrap_or(u32::MAX);
        Arc::clone(&self.records)
            .try_acquire_many_owned(n)
            .map_err(|_| NegError::Blocked {
                reason: "the relay is reconciling too many events right now; try again later"
                    .into(),
                max_records: None,
            })
    }

    /// Run one reconciliation step on the blocking pool, in turn with the
    /// other sessions' steps.
    async fn run_step<T: Send + 'static>(
        &self,
        step: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NegError> {
        // The semaphore is never closed.
        let _turn = self.steps.acquire().await.map_err(|_| failed())?;
        tokio::task::spawn_blocking(step)
            .await
            .map_err(|_| failed())
    }
}

fn failed() -> NegError {
    NegError::Invalid("negentropy: reconciliation failed".into())
}

/// Why a NIP-77 message was answered with NEG-ERR (the text is the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegError {
    /// The message is malformed (bad hex, a bad negentropy message).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Refused for a limit; `Some(max)` is the record limit, sent as the
    /// 4th element.
    #[error("blocked: {reason}")]
    Blocked {
        /// Why.
        reason: String,
        /// The most records a session may hold, when that was the limit.
        max_records: Option<usize>,
    },
    /// No such session (closed, expired, never opened).
    #[error("closed: {0}")]
    Closed(String),
}

/// One open session: the relay's side of the reconciliation, owning its set.
struct Open {
    /// `None` only while a reconciliation step runs on the blocking pool.
    engine: Option<Negentropy<'static, NegentropyStorageVector>>,
    idle_until: Instant,
    _records: OwnedSemaphorePermit,
}

/// One connection's negentropy sessions.
pub(crate) struct Sessions {
    open: HashMap<String, Open>,
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Self {
            open: HashMap::new(),
        }
    }

    /// Forget session `sub_id` (NEG-CLOSE, or before a NEG-OPEN reuses it).
    pub(crate) fn close(&mut self, sub_id: &str) {
        self.open.remove(sub_id);
    }

    /// Whether another session may open (the one named `sub_id` is closed first).
    pub(crate) fn check_room(&self, config: &NegentropyConfig) -> Result<(), NegError> {
        if self.open.len() >= config.max_sessions {
            return Err(NegError::Blocked {
                reason: format!(
                    "too many negentropy sessions on this connection (max {}); close some first",
                    config.max_sessions
                ),
                max_records: None,
            });
        }
        Ok(())
    }

    /// Start session `sub_id` over `items` with the client's initial message;
    /// returns the reply. `reserved` is what [`RecordBudget::reserve`] gave
    /// before the set was built; the session keeps `items.len()` of it.
    pub(crate) async fn open(
        &mut self,
        sub_id: String,
        items: Vec<SyncItem>,
        initial: Vec<u8>,
        config: &NegentropyConfig,
        budget: &RecordBudget,
        mut reserved: OwnedSemaphorePermit,
    ) -> Result<Vec<u8>, NegError> {
        let held = reserved.num_permits();
        if items.len() > held {
            // Only when the whole budget is smaller than max_records.
            return Err(NegError::Blocked {
                reason: "the relay is reconciling too many events right now; try again later"
                    .into(),
                max_records: None,
            });
        }
        drop(reserved.split(held - items.len()));
        let frame = config.frame_size();
        let (engine, reply) = budget
            .run_step(move || {
                let mut storage = NegentropyStorageVector::with_capacity(items.len());
                for item in &items {
                    storage.insert(item.created_at, Id::from_byte_array(item.id))?;
                }
                drop(items);
                storage.seal()?;
                let mut engine = Negentropy::owned(storage, frame)?;
                let reply = engine.reconcile(&initial)?;
                Ok::<_, negentropy::Error>((engine, reply))
            })
            .await?
            .map_err(protocol_error)?;
        self.open.insert(
            sub_id,
            Open {
                engine: Some(engine),
                idle_until: Instant::now() + idle(config),
                _records: reserved,
            },
        );
        Ok(reply)
    }

    /// The next step of session `sub_id`; a failed step closes it.
    pub(crate) async fn step(
        &mut self,
        sub_id: &str,
        message: Vec<u8>,
        config: &NegentropyConfig,
        budget: &RecordBudget,
    ) -> Result<Vec<u8>, NegError> {
        let Some(engine) = self.open.get_mut(sub_id).and_then(|o| o.engine.take()) else {
            return Err(NegError::Closed("no such negentropy session".into()));
        };
        let joined = budget
            .run_step(move || {
                let mut engine = engine;
                let reply = engine.reconcile(&message);
                (engine, reply)
            })
            .await;
        let Ok((engine, reply)) = joined else {
            self.open.remove(sub_id);
            return Err(failed());
        };
        match reply {
            Ok(reply) => {
                if let Some(open) = self.open.get_mut(sub_id) {
                    open.engine = Some(engine);
                    open.idle_until = Instant::now() + idle(config);
                }
                Ok(reply)
            }
            Err(err) => {
                self.open.remove(sub_id);
                Err(protocol_error(err))
            }
        }
    }

    /// When the next idle session expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.open.values().map(|o| o.idle_until).min()
    }

    /// Close the sessions idle past their deadline; returns their ids.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.idle_until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.open.remove(id);
        }
        expired
    }
}

fn idle(config: &NegentropyConfig) -> Duration {
    Duration::from_secs(config.idle_timeout_secs.max(1))
}

fn protocol_error(err: negentropy::Error) -> NegError {
    NegError::Invalid(format!("negentropy: {err}"))
}

/// Decode a hex-encoded negentropy message.
pub(crate) fn decode_message(hex_message: &str) -> Result<Vec<u8>, NegError> {
    hex::decode(hex_message)
        .map_err(|_| NegError::Invalid("negentropy message is not hex".into()))
        .and_then(|bytes| {
            if bytes.is_empty() {
                Err(NegError::Invalid("empty negentropy message".into()))
            } else {
                Ok(bytes)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(created_at: u64, byte: u8) -> SyncItem {
        SyncItem {
            seq: i64::from(byte),
            id: [byte; 32],
            created_at,
            kind: 1,
        }
    }

    /// The relay's side against the crate's client side, in memory: the
    /// client learns exactly what it has and needs.
    #[tokio::test]
    async fn sessions_reconcile_with_a_client() {
        let config = NegentropyConfig::default();
        let budget = RecordBudget::with_steps(10, 1);
        let relay_items = vec![item(1, 1), item(2, 2), item(3, 3)];
        let mut client_set = NegentropyStorageVector::new();
        for (t, b) in [(2u64, 2u8), (4, 4)] {
            client_set.insert(t, Id::from_byte_array([b; 32])).unwrap();
        }
        client_set.seal().unwrap();
        let mut client = Negentropy::owned(client_set, 0).unwrap();
        let mut sessions = Sessions::new();
        let mut msg = sessions
            .open(
                "s".into(),
                relay_items,
                client.initiate().unwrap(),
                &config,
                &budget,
                budget.reserve(5).unwrap(),
            )
            .await
            .unwrap();
        let (mut have, mut need) = (Vec::new(), Vec::new());
        while let Some(next) = client
            .reconcile_with_ids(&msg, &mut have, &mut need)
            .unwrap()
        {
            msg = sessions.step("s", next, &config, &budget).await.unwrap();
        }
        assert_eq!(have, vec![Id::from_byte_array([4; 32])]);
        need.sort();
        assert_eq!(
            need,
            vec![Id::from_byte_array([1; 32]), Id::from_byte_array([3; 32])]
        );
        // The set's 3 records are held while the session is open (the other
        // 2 reserved went back at once), and freed by close.
        assert!(budget.reserve(8).is_err());
        let seven = budget.reserve(7).unwrap();
        drop(seven);
        sessions.close("s");
        assert!(budget.reserve(10).is_ok());
    }

    #[tokio::test]
    async fn budget_and_bad_messages_are_refused() {
        let config = NegentropyConfig::default();
        let budget = RecordBudget::with_steps(1, 1);
        let mut sessions = Sessions::new();
        // A reservation beyond the budget takes the whole budget; a set
        // larger than that is refused.
        let err = sessions
            .open(
                "s".into(),
                vec![item(1, 1), item(2, 2)],
                vec![0x61],
                &config,
                &budget,
                budget.reserve(2).unwrap(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, NegError::Blocked { .. }), "{err}");
        let held = budget.reserve(1).unwrap();
        assert!(matches!(budget.reserve(1), Err(NegError::Blocked { .. })));
        drop(held);
        let err = sessions
            .open(
                "s".into(),
                vec![],
                vec![0x10],
                &config,
                &budget,
                budget.reserve(0).unwrap(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("invalid:"), "{err}");
        // Another version: the one-byte answer naming V1.
        let reply = sessions
            .open(
                "v2".into(),
                vec![],
                vec![0x62],
                &config,
                &budget,
                budget.reserve(0).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(reply, vec![PROTOCOL_VERSION]);
        assert!(decode_message("zz").is_err());
        let err = sessions
            .step("missing", vec![0x61], &config, &budget)
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("closed:"), "{err}");
    }
}
