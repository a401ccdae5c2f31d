//! The record of ldk-node events Cairn has handled, so that each event is
//! handled once even when ldk-node re-delivers it after a restart.
//!
//! ldk-node keeps its event queue persisted and only drops an event after
//! `event_handled()`; a crash between handling and that call re-delivers the
//! same event on the next start. The identity of an event is the SHA-256 of its
//! LDK serialization (the bytes ldk-node itself persists), so a re-delivered
//! event has the same identity and is recognised; distinct payments and
//! channels differ in their ids and so in their identity.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bdk_wallet::rusqlite::{self, params, Connection, OptionalExtension};
use bitcoin::hashes::{sha256, Hash};
use ldk_node::lightning::events::{ClosureReason, PaymentFailureReason};
use ldk_node::lightning::util::ser::Writeable;
use ldk_node::Event;

use cairn_bitcoin::private_file::restrict_to_owner;

use crate::clock::now;

/// Name of the SQLite file holding the handled events, in the Lightning directory.
pub const EVENTS_DB_FILE_NAME: &str = "events.sqlite";

/// Event store failures.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// Opening or securing the database file failed.
    #[error("event store {path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A SQLite statement failed.
    #[error("event store: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// One handled event, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandledEvent {
    /// Hex SHA-256 of the event's LDK serialization.
    pub id: String,
    /// The event variant, e.g. `PaymentReceived`.
    pub kind: String,
    /// Payment hash (hex), for payment events that carry one.
    pub payment_hash: Option<String>,
    /// Channel id (hex), for channel events.
    pub channel_id: Option<String>,
    /// Amount in millisatoshis, when the event carries one.
    pub amount_msat: Option<u64>,
    /// What the node needs to know about the event after a restart that
    /// ldk-node does not keep: [`COOPERATIVE`] for a cooperative
    /// `ChannelClosed`, the [`PaymentFailureReason`] name of a
    /// `PaymentFailed` (see [`failure_reason_name`]).
    pub detail: Option<String>,
    /// Unix time (seconds) when Cairn first handled it.
    pub handled_at: u64,
}

/// The SQLite table of handled events.
pub struct EventStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

/// The identity of `event`: hex SHA-256 of its LDK serialization.
pub fn event_id(event: &Event) -> String {
    sha256::Hash::hash(&event.encode()).to_string()
}

/// [`HandledEvent::detail`] of a cooperative close.
pub const COOPERATIVE: &str = "cooperative";

/// Every failure reason with the stable name it is recorded under (LDK's
/// variant name). One table for both directions.
const FAILURE_REASONS: &[(PaymentFailureReason, &str)] = &[
    (PaymentFailureReason::RecipientRejected, "RecipientRejected"),
    (PaymentFailureReason::UserAbandoned, "UserAbandoned"),
    (PaymentFailureReason::RetriesExhausted, "RetriesExhausted"),
    (PaymentFailureReason::PaymentExpired, "PaymentExpired"),
    (PaymentFailureReason::RouteNotFound, "RouteNotFound"),
    (PaymentFailureReason::UnexpectedError, "UnexpectedError"),
    (
        PaymentFailureReason::UnknownRequiredFeatures,
        "UnknownRequiredFeatures",
    ),
    (
        PaymentFailureReason::InvoiceRequestExpired,
        "InvoiceRequestExpired",
    ),
    (
        PaymentFailureReason::InvoiceRequestRejected,
        "InvoiceRequestRejected",
    ),
    (
        PaymentFailureReason::BlindedPathCreationFailed,
        "BlindedPathCreationFailed",
    ),
];

/// The name a failure reason is recorded under.
pub fn failure_reason_name(reason: PaymentFailureReason) -> Option<&'static str> {
    FAILURE_REASONS
        .iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, name)| *name)
}

/// The failure reason recorded under `name`.
pub fn failure_reason_from_name(name: &str) -> Option<PaymentFailureReason> {
    FAILURE_REASONS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(r, _)| *r)
}

/// Whether a channel closed by `reason` closed cooperatively: its closing
/// output then pays this node's on-chain wallet directly.
pub fn is_cooperative(reason: Option<&ClosureReason>) -> bool {
    matches!(
        reason,
        Some(
            ClosureReason::LegacyCooperativeClosure
                | ClosureReason::CounterpartyInitiatedCooperativeClosure
                | ClosureReason::LocallyInitiatedCooperativeClosure
        )
    )
}

/// What Cairn records about `event` (never a preimage or other secret).
pub fn summarize(event: &Event) -> HandledEvent {
    let detail = match event {
        Event::ChannelClosed { reason, .. } if is_cooperative(reason.as_ref()) => {
            Some(COOPERATIVE.to_owned())
        }
        Event::PaymentFailed {
            reason: Some(r), ..
        } => failure_reason_name(*r).map(str::to_owned),
        _ => None,
    };
    let (kind, payment_hash, channel_id, amount_msat) = match event {
        Event::PaymentSuccessful {
            payment_hash,
            fee_paid_msat,
            ..
        } => (
            "PaymentSuccessful",
            Some(payment_hash.to_string()),
            None,
            *fee_paid_msat,
        ),
        Event::PaymentFailed { payment_hash, .. } => (
            "PaymentFailed",
            payment_hash.map(|h| h.to_string()),
            None,
            None,
        ),
        Event::PaymentReceived {
            payment_hash,
            amount_msat,
            ..
        } => (
            "PaymentReceived",
            Some(payment_hash.to_string()),
            None,
            Some(*amount_msat),
        ),
        Event::PaymentClaimable {
            payment_hash,
            claimable_amount_msat,
            ..
        } => (
            "PaymentClaimable",
            Some(payment_hash.to_string()),
            None,
            Some(*claimable_amount_msat),
        ),
        Event::PaymentForwarded {
            next_channel_id,
            outbound_amount_forwarded_msat,
            ..
        } => (
            "PaymentForwarded",
            None,
            Some(next_channel_id.to_string()),
            *outbound_amount_forwarded_msat,
        ),
        Event::ChannelPending { channel_id, .. } => {
            ("ChannelPending", None, Some(channel_id.to_string()), None)
        }
        Event::ChannelReady { channel_id, .. } => {
            ("ChannelReady", None, Some(channel_id.to_string()), None)
        }
        Event::ChannelClosed { channel_id, .. } => {
            ("ChannelClosed", None, Some(channel_id.to_string()), None)
        }
        Event::SplicePending { channel_id, .. } => {
            ("SplicePending", None, Some(channel_id.to_string()), None)
        }
        Event::SpliceFailed { channel_id, .. } => {
            ("SpliceFailed", None, Some(channel_id.to_string()), None)
        }
    };
    HandledEvent {
        id: event_id(event),
        kind: kind.to_string(),
        payment_hash,
        channel_id,
        amount_msat,
        detail,
        handled_at: now(),
    }
}

impl EventStore {
    /// Opens (or creates, mode 0600) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, EventStoreError> {
        let conn = Connection::open(path)?;
        restrict_to_owner(path).map_err(|source| EventStoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS ln_events (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                payment_hash TEXT,
                channel_id TEXT,
                amount_msat INTEGER,
                handled_at INTEGER NOT NULL
            );",
        )?;
        // Stores written before `detail` existed get the column (NULL:
        // nothing known beyond the kind).
        let has_detail = conn
            .prepare("SELECT 1 FROM pragma_table_info('ln_events') WHERE name = 'detail'")?
            .exists([])?;
        if !has_detail {
            conn.execute_batch("ALTER TABLE ln_events ADD COLUMN detail TEXT;")?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Records `event`; returns `Some(record)` when it was new, `None` when it
    /// had been handled before (a re-delivery).
    pub fn record(&self, event: &Event) -> Result<Option<HandledEvent>, EventStoreError> {
        let rec = summarize(event);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO ln_events (id, kind, payment_hash, channel_id, amount_msat, detail, handled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                rec.id,
                rec.kind,
                rec.payment_hash,
                rec.channel_id,
                rec.amount_msat.map(|a| a as i64),
                rec.detail,
                rec.handled_at as i64
            ],
        )?;
        Ok((inserted == 1).then_some(rec))
    }

    /// Whether the event with identity `id` was handled.
    pub fn contains(&self, id: &str) -> Result<bool, EventStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn
            .query_row("SELECT 1 FROM ln_events WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Every handled event, oldest first.
    pub fn list(&self) -> Result<Vec<HandledEvent>, EventStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare(
            "SELECT id, kind, payment_hash, channel_id, amount_msat, detail, handled_at
             FROM ln_events ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HandledEvent {
                id: r.get(0)?,
                kind: r.get(1)?,
                payment_hash: r.get(2)?,
                channel_id: r.get(3)?,
                amount_msat: r.get::<_, Option<i64>>(4)?.map(|a| a as u64),
                detail: r.get(5)?,
                handled_at: r.get::<_, i64>(6)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The channels (hex ids) this node saw close cooperatively, across
    /// restarts.
    pub fn cooperatively_closed(&self) -> Result<HashSet<String>, EventStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT channel_id FROM ln_events
             WHERE kind = 'ChannelClosed' AND detail = ?1 AND channel_id IS NOT NULL",
        )?;
        let rows = stmt.query_map([COOPERATIVE], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// LDK's reason for the failed payment with `payment_hash` (hex), as
    /// recorded from its `PaymentFailed` event; ldk-node's payment record
    /// keeps only the status, so after a restart this is the only place
    /// the reason is known.
    pub fn failure_reason(
        &self,
        payment_hash: &str,
    ) -> Result<Option<PaymentFailureReason>, EventStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let name: Option<Option<String>> = conn
            .query_row(
                "SELECT detail FROM ln_events
                 WHERE kind = 'PaymentFailed' AND payment_hash = ?1 AND detail IS NOT NULL
                 ORDER BY rowid DESC LIMIT 1",
                [payment_hash],
                |r| r.get(0),
            )
            .optional()?;
        Ok(name.flatten().as_deref().and_then(failure_reason_from_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldk_node::lightning::ln::types::ChannelId;
    use ldk_node::lightning_types::payment::PaymentHash;

    #[test]
    fn same_event_recorded_once_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_DB_FILE_NAME);
        let ev = Event::PaymentReceived {
            payment_id: None,
            payment_hash: PaymentHash([7; 32]),
            amount_msat: 1234,
            custom_records: vec![],
        };
        let other = Event::PaymentReceived {
            payment_id: None,
            payment_hash: PaymentHash([8; 32]),
            amount_msat: 1234,
            custom_records: vec![],
        };
        {
            let store = EventStore::open(&path).unwrap();
            let rec = store.record(&ev).unwrap().expect("new");
            assert_eq!(rec.kind, "PaymentReceived");
            assert_eq!(rec.amount_msat, Some(1234));
            assert!(store.record(&ev).unwrap().is_none());
        }
        let store = EventStore::open(&path).unwrap();
        assert!(
            store.record(&ev).unwrap().is_none(),
            "re-delivery after restart"
        );
        assert!(store.record(&other).unwrap().is_some());
        assert!(store.contains(&event_id(&ev)).unwrap());
        let closed = Event::ChannelClosed {
            channel_id: ChannelId([1; 32]),
            user_channel_id: ldk_node::UserChannelId(5),
            counterparty_node_id: None,
            reason: None,
        };
        assert!(store.record(&closed).unwrap().is_some());
        let all = store.list().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2].channel_id.as_deref(),
            Some(&*ChannelId([1; 32]).to_string())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    /// Issue 10: which closes were cooperative and why a payment failed are
    /// read back from the store after a restart (ldk-node keeps neither), and
    /// a store written before the `detail` column gains it.
    #[test]
    fn cooperative_closes_and_failure_reasons_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_DB_FILE_NAME);
        {
            // The table as earlier releases created it, with one old row.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE ln_events (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
                 payment_hash TEXT, channel_id TEXT, amount_msat INTEGER,
                 handled_at INTEGER NOT NULL);
                 INSERT INTO ln_events VALUES ('old', 'ChannelClosed', NULL, 'aa', NULL, 1);",
            )
            .unwrap();
        }
        let close = |id: u8, reason| Event::ChannelClosed {
            channel_id: ChannelId([id; 32]),
            user_channel_id: ldk_node::UserChannelId(id.into()),
            counterparty_node_id: None,
            reason,
        };
        {
            let store = EventStore::open(&path).unwrap();
            for ev in [
                close(1, Some(ClosureReason::LocallyInitiatedCooperativeClosure)),
                close(
                    2,
                    Some(ClosureReason::CounterpartyInitiatedCooperativeClosure),
                ),
                close(
                    3,
                    Some(ClosureReason::HolderForceClosed {
                        broadcasted_latest_txn: Some(true),
                        message: "test".into(),
                    }),
                ),
                close(4, None),
                Event::PaymentFailed {
                    payment_id: None,
                    payment_hash: Some(PaymentHash([9; 32])),
                    reason: Some(PaymentFailureReason::RouteNotFound),
                },
            ] {
                assert!(store.record(&ev).unwrap().is_some());
            }
        }
        let store = EventStore::open(&path).unwrap();
        let coop = store.cooperatively_closed().unwrap();
        let want: HashSet<String> = [1u8, 2]
            .iter()
            .map(|i| ChannelId([*i; 32]).to_string())
            .collect();
        assert_eq!(coop, want);
        assert_eq!(
            store
                .failure_reason(&PaymentHash([9; 32]).to_string())
                .unwrap(),
            Some(PaymentFailureReason::RouteNotFound)
        );
        assert_eq!(
            store
                .failure_reason(&PaymentHash([8; 32]).to_string())
                .unwrap(),
            None
        );
        assert_eq!(store.list().unwrap()[0].detail, None, "the old row");
    }

    #[test]
    fn every_failure_reason_has_one_name() {
        use PaymentFailureReason as R;
        for r in [
            R::RecipientRejected,
            R::UserAbandoned,
            R::RetriesExhausted,
            R::PaymentExpired,
            R::RouteNotFound,
            R::UnexpectedError,
            R::UnknownRequiredFeatures,
            R::InvoiceRequestExpired,
            R::InvoiceRequestRejected,
            R::BlindedPathCreationFailed,
        ] {
            let name = failure_reason_name(r).expect("named");
            assert_eq!(failure_reason_from_name(name), Some(r));
        }
    }
}
