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
use crate::fsutil::restrict_to_owner;

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
             CREATE INDEX IF NOT EXISTS zaps_state ON zaps (state);",
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
