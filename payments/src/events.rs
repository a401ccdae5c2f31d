//! The record of ldk-node events Cairn has handled, so that each event is
//! handled once even when ldk-node re-delivers it after a restart.
//!
//! ldk-node keeps its event queue persisted and only drops an event after
//! `event_handled()`; a crash between handling and that call re-delivers the
//! same event on the next start. The identity of an event is the SHA-256 of its
//! LDK serialization (the bytes ldk-node itself persists), so a re-delivered
//! event has the same identity and is recognised; distinct payments and
//! channels differ in their ids and so in their identity.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bdk_wallet::rusqlite::{self, params, Connection, OptionalExtension};
use bitcoin::hashes::{sha256, Hash};
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

/// What Cairn records about `event` (never a preimage or other secret).
pub fn summarize(event: &Event) -> HandledEvent {
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
            "INSERT OR IGNORE INTO ln_events (id, kind, payment_hash, channel_id, amount_msat, handled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                rec.id,
                rec.kind,
                rec.payment_hash,
                rec.channel_id,
                rec.amount_msat.map(|a| a as i64),
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
            "SELECT id, kind, payment_hash, channel_id, amount_msat, handled_at
             FROM ln_events ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HandledEvent {
                id: r.get(0)?,
                kind: r.get(1)?,
                payment_hash: r.get(2)?,
                channel_id: r.get(3)?,
                amount_msat: r.get::<_, Option<i64>>(4)?.map(|a| a as u64),
                handled_at: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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
}
