//! The zap database: every zap invoice issued, its request, and whether its
//! receipt was signed and published. One SQLite file
//! (`<data_dir>/zaps.sqlite`, 0600), through the rusqlite bdk_wallet links.
//!
//! A zap moves `pending` → `paid` (receipt signed and stored) → `published`;
//! an unpaid one becomes `expired` after its invoice expires (plus a grace
//! period) and is deleted by the next sweep. The receipt is
//! stored before it is sent, so a crash between sending and recording
//! re-sends the *same* event (same id): relays drop the duplicate.

use std::path::Path;
use std::sync::Mutex;

use bdk_wallet::rusqlite::{self, params, Connection, OptionalExtension};

use super::ZapError;
use cairn_bitcoin::private_file::restrict_to_owner;

/// Where a zap is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZapState {
    /// Invoice issued, not paid yet.
    Pending,
    /// Paid; the receipt is signed and stored but not yet on a relay.
    Paid,
    /// The receipt was accepted by at least one relay.
    Published,
    /// The invoice expired unpaid.
    Expired,
}

impl ZapState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Published => "published",
            Self::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "paid" => Self::Paid,
            "published" => Self::Published,
            "expired" => Self::Expired,
            _ => Self::Pending,
        }
    }
}

/// One zap invoice and its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingZap {
    /// Payment hash, hex.
    pub payment_hash: String,
    /// The zap request JSON as received.
    pub request: String,
    /// Relays the receipt goes to (besides the node's own).
    pub relays: Vec<String>,
    /// The BOLT11 invoice.
    pub invoice: String,
    /// Amount, millisatoshis.
    pub amount_msat: u64,
    /// Unix time the invoice was issued.
    pub created_at: u64,
    /// Unix time the invoice expires.
    pub expires_at: u64,
    /// Where the zap is.
    pub state: ZapState,
    /// The signed receipt (JSON), once paid.
    pub receipt: Option<String>,
}

/// The outcome of one attempt to give a receipt to one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The relay accepted it (at Unix time `at`).
    Delivered {
        /// When.
        at: u64,
    },
    /// The relay is not one this node may connect to; never retried.
    Dropped {
        /// When.
        at: u64,
    },
    /// Not accepted (unreachable, refused); try again at `retry_at`.
    Failed {
        /// Unix time of the next attempt.
        retry_at: u64,
    },
}

/// One relay's share of a receipt's publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The relay URL.
    pub relay: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix time of the next attempt (of the last one, once settled).
    pub next_attempt_at: u64,
    /// The relay accepted the receipt.
    pub delivered: bool,
    /// The relay was dropped by the relay policy.
    pub dropped: bool,
}

/// The zap database.
pub struct ZapStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for ZapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZapStore")
    }
}

const COLUMNS: &str =
    "payment_hash, request, relays, invoice, amount_msat, created_at, expires_at, state, receipt";

fn row_to_zap(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingZap> {
    Ok(PendingZap {
        payment_hash: r.get(0)?,
        request: r.get(1)?,
        relays: r
            .get::<_, String>(2)?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        invoice: r.get(3)?,
        amount_msat: r.get::<_, i64>(4)? as u64,
        created_at: r.get::<_, i64>(5)? as u64,
        expires_at: r.get::<_, i64>(6)? as u64,
        state: ZapState::parse(&r.get::<_, String>(7)?),
        receipt: r.get(8)?,
    })
}

impl ZapStore {
    /// Opens (or creates, mode 0600) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, ZapError> {
        let conn = Connection::open(path)?;
        restrict_to_owner(path).map_err(|source| ZapError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS zaps (
                payment_hash TEXT PRIMARY KEY,
                request TEXT NOT NULL,
                relays TEXT NOT NULL,
                invoice TEXT NOT NULL,
                amount_msat INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL,
                state TEXT NOT NULL,
                receipt TEXT,
                published_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS zaps_state ON zaps (state);
             CREATE TABLE IF NOT EXISTS zap_deliveries (
                payment_hash TEXT NOT NULL,
                relay TEXT NOT NULL,
                first_attempt_at INTEGER NOT NULL,
                next_attempt_at INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                outcome TEXT,
                PRIMARY KEY (payment_hash, relay)
             );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a newly issued zap invoice (state and receipt are ignored).
    pub fn insert(&self, zap: &PendingZap) -> Result<(), ZapError> {
        self.lock().execute(
            "INSERT INTO zaps (payment_hash, request, relays, invoice, amount_msat, created_at,
                expires_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
            params![
                zap.payment_hash,
                zap.request,
                zap.relays.join(" "),
                zap.invoice,
                zap.amount_msat as i64,
                zap.created_at as i64,
                zap.expires_at as i64,
            ],
        )?;
        Ok(())
    }

    /// The zap with payment hash `hash` (hex).
    pub fn get(&self, hash: &str) -> Result<Option<PendingZap>, ZapError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM zaps WHERE payment_hash = ?1"),
                [hash],
                row_to_zap,
            )
            .optional()?)
    }

    /// Zaps whose receipt is not published yet (pending or paid), oldest first.
    pub fn unpublished(&self) -> Result<Vec<PendingZap>, ZapError> {
        let db = self.lock();
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM zaps WHERE state IN ('pending', 'paid') ORDER BY created_at"
        ))?;
        let rows = stmt.query_map([], row_to_zap)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores the signed receipt of a pending zap and marks it paid. If a
    /// receipt was stored before, that one is kept. Returns the stored receipt.
    pub fn set_receipt(&self, hash: &str, receipt: &str) -> Result<Option<String>, ZapError> {
        let db = self.lock();
        db.execute(
            "UPDATE zaps SET state = 'paid', receipt = ?2
             WHERE payment_hash = ?1 AND state = 'pending'",
            params![hash, receipt],
        )?;
        Ok(db
            .query_row(
                "SELECT receipt FROM zaps WHERE payment_hash = ?1",
                [hash],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Marks a paid zap's receipt published; false if it was not `paid`
    /// (already published, or unknown).
    pub fn mark_published(&self, hash: &str, at: u64) -> Result<bool, ZapError> {
        Ok(self.lock().execute(
            "UPDATE zaps SET state = ?3, published_at = ?2
             WHERE payment_hash = ?1 AND state = 'paid'",
            params![hash, at as i64, ZapState::Published.as_str()],
        )? == 1)
    }

    /// Marks a pending zap expired; false if it was not pending.
    pub fn mark_expired(&self, hash: &str) -> Result<bool, ZapError> {
        Ok(self.lock().execute(
            "UPDATE zaps SET state = 'expired' WHERE payment_hash = ?1 AND state = 'pending'",
            [hash],
        )? == 1)
    }

    /// Zaps paid whose receipt is not published yet (what the receipts
    /// metric shows as pending).
    pub fn count_unpublished_receipts(&self) -> Result<u64, ZapError> {
        Ok(self
            .lock()
            .query_row("SELECT COUNT(*) FROM zaps WHERE state = 'paid'", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Unpaid zaps whose invoice has not expired at `now` (what the cap on
    /// outstanding zap invoices counts), and the earliest of their expiries.
    pub fn count_pending(&self, now: u64) -> Result<(u64, Option<u64>), ZapError> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*), MIN(expires_at) FROM zaps WHERE state = 'pending' AND expires_at > ?1",
            [now as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<i64>>(1)?.map(|t| t as u64),
                ))
            },
        )?)
    }

    /// Adds the relays a paid zap's receipt goes to (already known ones are
    /// kept as they are), each due at `now`.
    pub fn add_deliveries(&self, hash: &str, relays: &[String], now: u64) -> Result<(), ZapError> {
        let db = self.lock();
        for relay in relays {
            db.execute(
                "INSERT OR IGNORE INTO zap_deliveries
                    (payment_hash, relay, first_attempt_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?3)",
                params![hash, relay, now as i64],
            )?;
        }
        Ok(())
    }

    /// Relays of zap `hash` that have not taken its receipt, are due at
    /// `now`, and were first tried less than `window_secs` ago.
    pub fn due_deliveries(
        &self,
        hash: &str,
        now: u64,
        window_secs: u64,
    ) -> Result<Vec<String>, ZapError> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT relay FROM zap_deliveries
             WHERE payment_hash = ?1 AND outcome IS NULL AND next_attempt_at <= ?2
               AND first_attempt_at + ?3 > ?2
             ORDER BY relay",
        )?;
        let rows = stmt.query_map(params![hash, now as i64, window_secs as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Published zaps with relays still to retry at `now` (see
    /// [`Self::due_deliveries`]), oldest first.
    pub fn published_with_due_deliveries(
        &self,
        now: u64,
        window_secs: u64,
    ) -> Result<Vec<PendingZap>, ZapError> {
        let db = self.lock();
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM zaps WHERE state = 'published' AND payment_hash IN (
                SELECT payment_hash FROM zap_deliveries
                WHERE outcome IS NULL AND next_attempt_at <= ?1 AND first_attempt_at + ?2 > ?1)
             ORDER BY created_at"
        ))?;
        let rows = stmt.query_map(params![now as i64, window_secs as i64], row_to_zap)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records one attempt to give zap `hash`'s receipt to `relay`.
    pub fn record_delivery(
        &self,
        hash: &str,
        relay: &str,
        outcome: DeliveryOutcome,
    ) -> Result<(), ZapError> {
        let (outcome, next) = match outcome {
            DeliveryOutcome::Delivered { at } => (Some("delivered"), at),
            DeliveryOutcome::Dropped { at } => (Some("dropped"), at),
            DeliveryOutcome::Failed { retry_at } => (None, retry_at),
        };
        self.lock().execute(
            "UPDATE zap_deliveries SET attempts = attempts + 1, outcome = ?3, next_attempt_at = ?4
             WHERE payment_hash = ?1 AND relay = ?2 AND outcome IS NULL",
            params![hash, relay, outcome, next as i64],
        )?;
        Ok(())
    }

    /// Where the receipt of zap `hash` went, relay by relay.
    pub fn deliveries(&self, hash: &str) -> Result<Vec<Delivery>, ZapError> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT relay, attempts, next_attempt_at, outcome FROM zap_deliveries
             WHERE payment_hash = ?1 ORDER BY relay",
        )?;
        let rows = stmt.query_map([hash], |r| {
            Ok(Delivery {
                relay: r.get(0)?,
                attempts: r.get::<_, i64>(1)? as u32,
                next_attempt_at: r.get::<_, i64>(2)? as u64,
                delivered: r.get::<_, Option<String>>(3)?.as_deref() == Some("delivered"),
                dropped: r.get::<_, Option<String>>(3)?.as_deref() == Some("dropped"),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes expired zaps: an unpaid request is of no further use, and
    /// anyone can ask for invoices, so they must not pile up. Returns how many.
    pub fn prune_expired(&self) -> Result<usize, ZapError> {
        Ok(self
            .lock()
            .execute("DELETE FROM zaps WHERE state = 'expired'", [])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zap(hash: &str) -> PendingZap {
        PendingZap {
            payment_hash: hash.into(),
            request: "{}".into(),
            relays: vec!["ws://a".into(), "wss://b".into()],
            invoice: "lnbcrt1".into(),
            amount_msat: 1000,
            created_at: 10,
            expires_at: 3610,
            state: ZapState::Pending,
            receipt: None,
        }
    }

    #[test]
    fn pending_count_ignores_paid_and_expired_invoices() {
        let dir = tempfile::tempdir().unwrap();
        let store = ZapStore::open(&dir.path().join("zaps.sqlite")).unwrap();
        assert_eq!(store.count_pending(0).unwrap(), (0, None));
        for (hash, expires) in [("a", 100), ("b", 200), ("c", 300), ("d", 400)] {
            store
                .insert(&PendingZap {
                    expires_at: expires,
                    ..zap(hash)
                })
                .unwrap();
        }
        store.set_receipt("a", "R").unwrap();
        store.mark_expired("d").unwrap();
        assert_eq!(store.count_pending(150).unwrap(), (2, Some(200)));
        assert_eq!(store.count_pending(250).unwrap(), (1, Some(300)));
    }

    #[test]
    fn states_survive_reopen_and_first_receipt_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zaps.sqlite");
        {
            let store = ZapStore::open(&path).unwrap();
            store.insert(&zap("aa")).unwrap();
            store.insert(&zap("bb")).unwrap();
            assert!(
                store.insert(&zap("aa")).is_err(),
                "one row per payment hash"
            );
            assert_eq!(
                store.set_receipt("aa", "R1").unwrap().as_deref(),
                Some("R1")
            );
            // A second signing (e.g. after a crash) keeps the stored receipt.
            assert_eq!(
                store.set_receipt("aa", "R2").unwrap().as_deref(),
                Some("R1")
            );
            assert!(store.mark_expired("bb").unwrap());
            assert!(!store.mark_expired("aa").unwrap(), "paid, not pending");
        }
        let store = ZapStore::open(&path).unwrap();
        let a = store.get("aa").unwrap().unwrap();
        assert_eq!(a.state, ZapState::Paid);
        assert_eq!(a.relays, vec!["ws://a", "wss://b"]);
        assert_eq!(store.unpublished().unwrap().len(), 1);
        assert!(store.mark_published("aa", 20).unwrap());
        assert!(!store.mark_published("aa", 21).unwrap(), "published once");
        assert_eq!(store.get("aa").unwrap().unwrap().state, ZapState::Published);
        assert!(store.unpublished().unwrap().is_empty());
        // Per-relay delivery: only due, undelivered relays inside the window.
        let relays = vec!["ws://a".to_owned(), "ws://b".to_owned()];
        store.add_deliveries("aa", &relays, 100).unwrap();
        assert_eq!(store.due_deliveries("aa", 100, 3600).unwrap(), relays);
        store
            .record_delivery("aa", "ws://a", DeliveryOutcome::Delivered { at: 100 })
            .unwrap();
        store
            .record_delivery("aa", "ws://b", DeliveryOutcome::Failed { retry_at: 130 })
            .unwrap();
        // Adding again (a restart) keeps what happened.
        store.add_deliveries("aa", &relays, 110).unwrap();
        assert!(store.due_deliveries("aa", 129, 3600).unwrap().is_empty());
        assert_eq!(store.due_deliveries("aa", 130, 3600).unwrap(), ["ws://b"]);
        assert_eq!(
            store
                .published_with_due_deliveries(130, 3600)
                .unwrap()
                .len(),
            1
        );
        assert!(
            store.due_deliveries("aa", 3700, 3600).unwrap().is_empty(),
            "window over"
        );
        assert!(store
            .published_with_due_deliveries(3700, 3600)
            .unwrap()
            .is_empty());
        let d = store.deliveries("aa").unwrap();
        assert!(d[0].delivered && d[0].attempts == 1);
        assert!(!d[1].delivered && d[1].attempts == 1 && d[1].next_attempt_at == 130);
        assert_eq!(store.prune_expired().unwrap(), 1);
        assert!(store.get("bb").unwrap().is_none(), "expired zap forgotten");
        assert!(store.get("aa").unwrap().is_some(), "published zap kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
