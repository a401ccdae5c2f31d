//! Persistent NWC state: connections, budget reservations, handled requests,
//! the invoices issued through `make_invoice` and the payments sent through
//! `pay_invoice`, each with the connection that issued it (a connection sees
//! and is notified about its own payments only).
//!
//! The app's secret key is never stored: only its public key is needed to
//! authenticate requests, and the URI holding the secret is shown once, at
//! creation. Databases from before this change have the old `client_secret`
//! column dropped (and the freed pages wiped) when opened.
//!
//! One SQLite file (`<data_dir>/nwc.sqlite`, 0600) through the same rusqlite
//! that bdk_wallet and ldk-node link, so no second `libsqlite3-sys`. Budget
//! checks and reservations run inside one `IMMEDIATE` transaction, so two
//! concurrent payments on one connection cannot both fit into the same
//! remaining budget.

use std::path::Path;
use std::sync::Mutex;

use bdk_wallet::rusqlite::{self, params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashSet;

use nostr::PublicKey;

use super::{BudgetRenewal, NwcConnection, NwcError};
use crate::clock::now;
use cairn_bitcoin::private_file::restrict_to_owner;

/// What happened to a request event the service has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// First sighting: the caller must execute it.
    New,
    /// Another task is executing it right now.
    InFlight,
    /// Already answered; the stored signed response event (JSON).
    Answered(String),
}

/// The NWC database.
pub struct NwcStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for NwcStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NwcStore")
    }
}

fn row_to_connection(r: &rusqlite::Row<'_>) -> rusqlite::Result<NwcConnection> {
    let renewal: String = r.get(5)?;
    Ok(NwcConnection {
        id: r.get::<_, i64>(0)?,
        name: r.get(1)?,
        client_pubkey: PublicKey::from_hex(&r.get::<_, String>(2)?)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        permissions: r
            .get::<_, String>(3)?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        budget_msat: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        renewal: renewal.parse().unwrap_or(BudgetRenewal::Never),
        max_payment_msat: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        expires_at: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        revoked: r.get::<_, i64>(8)? != 0,
        created_at: r.get::<_, i64>(9)? as u64,
    })
}

const CONNECTION_COLUMNS: &str = "id, name, client_pubkey, permissions, budget_msat, \
     renewal, max_payment_msat, expires_at, revoked, created_at";

/// Whether `table` has a column named `column`.
fn has_column(db: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = db.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Brings a database written by an earlier version up to the current schema.
fn migrate(db: &Connection) -> rusqlite::Result<()> {
    if has_column(db, "nwc_connections", "client_secret")? {
        // Blank the secrets, drop the column, then rewrite the file and the
        // WAL so no freed page still holds one.
        db.execute_batch(
            "PRAGMA secure_delete = ON;
             UPDATE nwc_connections SET client_secret = '';
             ALTER TABLE nwc_connections DROP COLUMN client_secret;
             VACUUM;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )?;
    }
    if !has_column(db, "nwc_invoices", "connection_id")? {
        // Invoices issued before are attributed to no connection: none sees them.
        db.execute_batch("ALTER TABLE nwc_invoices ADD COLUMN connection_id INTEGER;")?;
    }
    if !has_column(db, "nwc_payments", "invoice")? {
        // Payments sent before are notified and looked up without their invoice.
        db.execute_batch("ALTER TABLE nwc_payments ADD COLUMN invoice TEXT;")?;
    }
    if !has_column(db, "nwc_spends", "fee_reserve_msat")? {
        // Older reservations hold the bare amount: settling adds the fee.
        db.execute_batch(
            "ALTER TABLE nwc_spends ADD COLUMN fee_reserve_msat INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    Ok(())
}

impl NwcStore {
    /// Opens (or creates, mode 0600) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, NwcError> {
        let conn = Connection::open(path)?;
        restrict_to_owner(path).map_err(|source| NwcError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS nwc_connections (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                client_pubkey TEXT NOT NULL UNIQUE,
                permissions TEXT NOT NULL,
                budget_msat INTEGER,
                renewal TEXT NOT NULL,
                max_payment_msat INTEGER,
                expires_at INTEGER,
                revoked INTEGER NOT NULL DEFAULT 0,
                created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS nwc_spends (
                request_id TEXT PRIMARY KEY,
                connection_id INTEGER NOT NULL,
                payment_hash TEXT NOT NULL,
                amount_msat INTEGER NOT NULL,
                state TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                fee_reserve_msat INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS nwc_spends_conn ON nwc_spends (connection_id, created_at);
             CREATE INDEX IF NOT EXISTS nwc_spends_hash ON nwc_spends (payment_hash);
             CREATE TABLE IF NOT EXISTS nwc_requests (
                event_id TEXT PRIMARY KEY,
                connection_id INTEGER,
                response TEXT,
                created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS nwc_invoices (
                payment_hash TEXT PRIMARY KEY,
                invoice TEXT NOT NULL,
                description TEXT,
                description_hash TEXT,
                amount_msat INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL,
                connection_id INTEGER
             );
             CREATE TABLE IF NOT EXISTS nwc_payments (
                connection_id INTEGER NOT NULL,
                payment_hash TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                invoice TEXT,
                PRIMARY KEY (connection_id, payment_hash)
             );",
        )?;
        migrate(&conn)?;
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS nwc_invoices_conn ON nwc_invoices (connection_id);",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new connection; `conn.id` and `conn.created_at` are ignored.
    pub fn insert_connection(&self, conn: &NwcConnection) -> Result<NwcConnection, NwcError> {
        let db = self.lock();
        let created_at = now();
        db.execute(
            "INSERT INTO nwc_connections (name, client_pubkey, permissions, budget_msat,
                renewal, max_payment_msat, expires_at, revoked, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)",
            params![
                conn.name,
                conn.client_pubkey.to_hex(),
                conn.permissions.join(" "),
                conn.budget_msat.map(|v| v as i64),
                conn.renewal.as_str(),
                conn.max_payment_msat.map(|v| v as i64),
                conn.expires_at.map(|v| v as i64),
                created_at as i64,
            ],
        )?;
        Ok(NwcConnection {
            id: db.last_insert_rowid(),
            created_at,
            revoked: false,
            ..conn.clone()
        })
    }

    /// Every connection, oldest first.
    pub fn list_connections(&self) -> Result<Vec<NwcConnection>, NwcError> {
        let db = self.lock();
        let mut stmt = db.prepare(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM nwc_connections ORDER BY id"
        ))?;
        let rows = stmt.query_map([], row_to_connection)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The connection of app key `pubkey`.
    pub fn connection_by_pubkey(
        &self,
        pubkey: &PublicKey,
    ) -> Result<Option<NwcConnection>, NwcError> {
        let db = self.lock();
        Ok(db
            .query_row(
                &format!(
                    "SELECT {CONNECTION_COLUMNS} FROM nwc_connections WHERE client_pubkey = ?1"
                ),
                [pubkey.to_hex()],
                row_to_connection,
            )
            .optional()?)
    }

    /// The connection with row id `id`.
    pub fn connection_by_id(&self, id: i64) -> Result<Option<NwcConnection>, NwcError> {
        let db = self.lock();
        Ok(db
            .query_row(
                &format!("SELECT {CONNECTION_COLUMNS} FROM nwc_connections WHERE id = ?1"),
                [id],
                row_to_connection,
            )
            .optional()?)
    }

    /// Marks a connection revoked; returns whether it existed.
    pub fn revoke(&self, id: i64) -> Result<bool, NwcError> {
        let db = self.lock();
        Ok(db.execute("UPDATE nwc_connections SET revoked = 1 WHERE id = ?1", [id])? == 1)
    }

    /// Changes a connection's expiry (e.g. to end it at a given time).
    pub fn set_expiry(&self, id: i64, expires_at: Option<u64>) -> Result<bool, NwcError> {
        let db = self.lock();
        Ok(db.execute(
            "UPDATE nwc_connections SET expires_at = ?2 WHERE id = ?1",
            params![id, expires_at.map(|v| v as i64)],
        )? == 1)
    }

    /// Amount counted against `conn`'s budget in the current renewal window
    /// (settled and still reserved spends).
    pub fn spent_in_window(&self, conn: &NwcConnection) -> Result<u64, NwcError> {
        let db = self.lock();
        spent(&db, conn)
    }

    /// Atomically checks that `amount_msat` plus the most the payment may
    /// cost in routing fees (`max_fee_msat`) fits into `conn`'s remaining
    /// budget and reserves both under `request_id` for the payment with
    /// `payment_hash` (hex). `Ok(false)` when it does not fit. Settling
    /// replaces the fee reserve with the fee actually paid.
    pub fn reserve(
        &self,
        conn: &NwcConnection,
        request_id: &str,
        payment_hash: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<bool, NwcError> {
        let total = amount_msat.saturating_add(max_fee_msat);
        let mut db = self.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A request resumed after a restart already holds its reservation
        // (or its settled spend): it must not count twice.
        let held: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM nwc_spends WHERE request_id = ?1",
                [request_id],
                |r| r.get(0),
            )
            .optional()?;
        if held.is_some() {
            return Ok(true);
        }
        if let Some(budget) = conn.budget_msat {
            let used = spent(&tx, conn)?;
            if used.saturating_add(total) > budget {
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT INTO nwc_spends
                (request_id, connection_id, payment_hash, amount_msat, state, created_at, fee_reserve_msat)
             VALUES (?1, ?2, ?3, ?4, 'reserved', ?5, ?6)",
            params![
                request_id,
                conn.id,
                payment_hash,
                total as i64,
                now() as i64,
                max_fee_msat as i64
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The payment of request `request_id` went through: the reservation
    /// becomes the amount plus the routing fee actually paid (the fee
    /// reserve is given back). Only a pending reservation
    /// changes, so settling twice (the request handler and the Lightning
    /// event) counts the fee once.
    pub fn settle(&self, request_id: &str, fee_msat: u64) -> Result<(), NwcError> {
        let db = self.lock();
        db.execute(
            "UPDATE nwc_spends SET state = 'settled',
                amount_msat = amount_msat - fee_reserve_msat + ?2, fee_reserve_msat = 0
             WHERE request_id = ?1 AND state = 'reserved'",
            params![request_id, fee_msat as i64],
        )?;
        Ok(())
    }

    /// The payment of request `request_id` failed: its pending reservation
    /// no longer counts.
    pub fn release(&self, request_id: &str) -> Result<(), NwcError> {
        let db = self.lock();
        db.execute(
            "DELETE FROM nwc_spends WHERE request_id = ?1 AND state = 'reserved'",
            [request_id],
        )?;
        Ok(())
    }

    /// Resolves pending reservations for `payment_hash` (hex) from the
    /// Lightning outcome, for payments whose request handler gave up waiting
    /// (or did not survive a restart): `Some(fee)` settles, `None` releases.
    pub fn resolve_by_hash(
        &self,
        payment_hash: &str,
        fee_msat: Option<u64>,
    ) -> Result<(), NwcError> {
        let db = self.lock();
        match fee_msat {
            Some(fee) => db.execute(
                "UPDATE nwc_spends SET state = 'settled',
                    amount_msat = amount_msat - fee_reserve_msat + ?2, fee_reserve_msat = 0
                 WHERE payment_hash = ?1 AND state = 'reserved'",
                params![payment_hash, fee as i64],
            )?,
            None => db.execute(
                "DELETE FROM nwc_spends WHERE payment_hash = ?1 AND state = 'reserved'",
                [payment_hash],
            )?,
        };
        Ok(())
    }

    /// Reservations whose payment outcome is not recorded yet, as
    /// `(request_id, payment_hash)`; oldest first.
    pub fn pending_reservations(&self) -> Result<Vec<(String, String)>, NwcError> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT request_id, payment_hash FROM nwc_spends
             WHERE state = 'reserved' ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The state (`"reserved"` or `"settled"`) and amount (msat) of the
    /// spend recorded for request `request_id`, if any.
    pub fn spend(&self, request_id: &str) -> Result<Option<(String, u64)>, NwcError> {
        let db = self.lock();
        Ok(db
            .query_row(
                "SELECT state, amount_msat FROM nwc_spends WHERE request_id = ?1",
                [request_id],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    /// Forgets the handled requests first seen before unix time
    /// `seen_before`; returns how many. Only safe together with refusing
    /// requests whose `created_at` is that old (see `NwcService`), or a
    /// pruned request could be replayed and executed again.
    pub fn prune_requests(&self, seen_before: u64) -> Result<usize, NwcError> {
        let db = self.lock();
        Ok(db.execute(
            "DELETE FROM nwc_requests WHERE created_at < ?1",
            [seen_before as i64],
        )?)
    }

    /// Claims request `event_id` of connection `connection_id` for
    /// execution, or reports that it was seen. Only requests of a known
    /// connection are recorded, so an unknown key cannot grow the database.
    pub fn begin_request(
        &self,
        event_id: &str,
        connection_id: i64,
    ) -> Result<RequestState, NwcError> {
        let mut db = self.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<Option<String>> = tx
            .query_row(
                "SELECT response FROM nwc_requests WHERE event_id = ?1",
                [event_id],
                |r| r.get(0),
            )
            .optional()?;
        let state = match existing {
            Some(Some(resp)) => RequestState::Answered(resp),
            Some(None) => RequestState::InFlight,
            None => {
                tx.execute(
                    "INSERT INTO nwc_requests (event_id, connection_id, response, created_at)
                     VALUES (?1, ?2, NULL, ?3)",
                    params![event_id, connection_id, now() as i64],
                )?;
                RequestState::New
            }
        };
        tx.commit()?;
        Ok(state)
    }

    /// How many handled request ids the replay record holds.
    pub fn request_count(&self) -> Result<u64, NwcError> {
        let db = self.lock();
        let n: i64 = db.query_row("SELECT COUNT(*) FROM nwc_requests", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Stores the signed response event (JSON) of request `event_id`.
    pub fn finish_request(&self, event_id: &str, response_json: &str) -> Result<(), NwcError> {
        let db = self.lock();
        db.execute(
            "UPDATE nwc_requests SET response = ?2 WHERE event_id = ?1",
            params![event_id, response_json],
        )?;
        Ok(())
    }

    /// Remembers an invoice issued through `make_invoice` by connection
    /// `connection_id`, for its `lookup_invoice` and notifications.
    pub fn insert_invoice(&self, connection_id: i64, inv: &IssuedInvoice) -> Result<(), NwcError> {
        let db = self.lock();
        db.execute(
            "INSERT OR REPLACE INTO nwc_invoices
                (payment_hash, invoice, description, description_hash, amount_msat, created_at,
                 expires_at, connection_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                inv.payment_hash,
                inv.invoice,
                inv.description,
                inv.description_hash,
                inv.amount_msat as i64,
                inv.created_at as i64,
                inv.expires_at as i64,
                connection_id
            ],
        )?;
        Ok(())
    }

    /// Records that connection `connection_id` sends the payment of
    /// `invoice` (BOLT11) with `payment_hash` (hex), for its
    /// `lookup_invoice`, `list_transactions` and notifications (which carry
    /// the invoice). Recording twice is harmless.
    pub fn record_payment(
        &self,
        connection_id: i64,
        payment_hash: &str,
        invoice: &str,
    ) -> Result<(), NwcError> {
        let db = self.lock();
        db.execute(
            "INSERT INTO nwc_payments (connection_id, payment_hash, created_at, invoice)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (connection_id, payment_hash)
             DO UPDATE SET invoice = COALESCE(invoice, excluded.invoice)",
            params![connection_id, payment_hash, now() as i64, invoice],
        )?;
        Ok(())
    }

    /// The BOLT11 invoice of a payment sent through `pay_invoice`, by
    /// payment hash (hex), if one was recorded.
    pub fn payment_invoice(&self, payment_hash: &str) -> Result<Option<String>, NwcError> {
        let db = self.lock();
        Ok(db
            .query_row(
                "SELECT invoice FROM nwc_payments
                 WHERE payment_hash = ?1 AND invoice IS NOT NULL
                 ORDER BY created_at LIMIT 1",
                [payment_hash],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
    }

    /// Payment hashes (hex) of the invoices connection `connection_id`
    /// issued and the payments it sent.
    pub fn hashes_of(&self, connection_id: i64) -> Result<HashSet<String>, NwcError> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT payment_hash FROM nwc_invoices WHERE connection_id = ?1
             UNION SELECT payment_hash FROM nwc_payments WHERE connection_id = ?1",
        )?;
        let rows = stmt.query_map([connection_id], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether connection `connection_id` issued the invoice or sent the
    /// payment with `payment_hash` (hex).
    pub fn is_owned_by(&self, connection_id: i64, payment_hash: &str) -> Result<bool, NwcError> {
        let db = self.lock();
        let found: Option<i64> = db
            .query_row(
                "SELECT 1 FROM nwc_invoices WHERE connection_id = ?1 AND payment_hash = ?2
                 UNION SELECT 1 FROM nwc_payments WHERE connection_id = ?1 AND payment_hash = ?2",
                params![connection_id, payment_hash],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// The connection that issued the invoice with `payment_hash` (hex), if any.
    pub fn invoice_owner(&self, payment_hash: &str) -> Result<Option<i64>, NwcError> {
        let db = self.lock();
        Ok(db
            .query_row(
                "SELECT connection_id FROM nwc_invoices WHERE payment_hash = ?1",
                [payment_hash],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten())
    }

    /// The connections that sent the payment with `payment_hash` (hex)
    /// (more than one only if one retried another's failed payment).
    pub fn payment_owners(&self, payment_hash: &str) -> Result<Vec<i64>, NwcError> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT connection_id FROM nwc_payments WHERE payment_hash = ?1 ORDER BY connection_id",
        )?;
        let rows = stmt.query_map([payment_hash], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// An invoice issued through `make_invoice`, by payment hash (hex).
    pub fn invoice(&self, payment_hash: &str) -> Result<Option<IssuedInvoice>, NwcError> {
        let db = self.lock();
        Ok(db
            .query_row(
                "SELECT payment_hash, invoice, description, description_hash, amount_msat, created_at, expires_at
                 FROM nwc_invoices WHERE payment_hash = ?1",
                [payment_hash],
                |r| {
                    Ok(IssuedInvoice {
                        payment_hash: r.get(0)?,
                        invoice: r.get(1)?,
                        description: r.get(2)?,
                        description_hash: r.get(3)?,
                        amount_msat: r.get::<_, i64>(4)? as u64,
                        created_at: r.get::<_, i64>(5)? as u64,
                        expires_at: r.get::<_, i64>(6)? as u64,
                    })
                },
            )
            .optional()?)
    }
}

/// An invoice issued through NWC `make_invoice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedInvoice {
    /// Payment hash, hex.
    pub payment_hash: String,
    /// The BOLT11 string.
    pub invoice: String,
    /// Text description, if any.
    pub description: Option<String>,
    /// Description hash (hex), if any.
    pub description_hash: Option<String>,
    /// Amount in millisatoshis.
    pub amount_msat: u64,
    /// Unix time of creation.
    pub created_at: u64,
    /// Unix time of expiry.
    pub expires_at: u64,
}

fn spent(db: &Connection, conn: &NwcConnection) -> Result<u64, NwcError> {
    let since = conn.renewal.window_start(conn.created_at, now());
    let total: i64 = db.query_row(
        "SELECT COALESCE(SUM(amount_msat), 0) FROM nwc_spends
         WHERE connection_id = ?1 AND created_at >= ?2",
        params![conn.id, since as i64],
        |r| r.get(0),
    )?;
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nwc::BudgetRenewal;
    use nostr::Keys;

    fn conn(store: &NwcStore, budget: Option<u64>) -> NwcConnection {
        let app = Keys::generate();
        let c = NwcConnection {
            id: 0,
            name: "t".into(),
            client_pubkey: app.public_key(),
            permissions: vec!["pay_invoice".into()],
            budget_msat: budget,
            renewal: BudgetRenewal::Daily,
            max_payment_msat: None,
            expires_at: None,
            revoked: false,
            created_at: 0,
        };
        store.insert_connection(&c).unwrap()
    }

    #[test]
    fn reservations_count_until_released_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nwc.sqlite");
        let store = NwcStore::open(&path).unwrap();
        let c = conn(&store, Some(10_000));
        assert!(store.reserve(&c, "r1", "h1", 6_000, 0).unwrap());
        assert!(
            !store.reserve(&c, "r2", "h2", 5_000, 0).unwrap(),
            "over budget"
        );
        assert!(
            store.reserve(&c, "r3", "h3", 4_000, 0).unwrap(),
            "exactly fits"
        );
        store.release("r3").unwrap();
        store.settle("r1", 100).unwrap();
        store.settle("r1", 100).unwrap();
        assert_eq!(store.spent_in_window(&c).unwrap(), 6_100);
        // Another connection has its own budget.
        let other = conn(&store, Some(1_000));
        assert!(store.reserve(&other, "r4", "h4", 1_000, 0).unwrap());
        drop(store);
        let store = NwcStore::open(&path).unwrap();
        assert_eq!(store.spent_in_window(&c).unwrap(), 6_100);
        assert!(!store.reserve(&c, "r5", "h5", 4_000, 0).unwrap());
        // A pending reservation resolved from the Lightning event.
        assert!(store.reserve(&c, "r6", "h6", 3_000, 0).unwrap());
        store.resolve_by_hash("h6", None).unwrap();
        assert_eq!(store.spent_in_window(&c).unwrap(), 6_100);
        assert!(store.reserve(&c, "r7", "h7", 3_000, 0).unwrap());
        store.resolve_by_hash("h7", Some(50)).unwrap();
        store.release("r7").unwrap(); // too late: already settled
        assert_eq!(store.spent_in_window(&c).unwrap(), 9_150);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn requests_are_claimed_once_and_answered_from_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = NwcStore::open(&dir.path().join("nwc.sqlite")).unwrap();
        assert_eq!(store.begin_request("e1", 1).unwrap(), RequestState::New);
        assert_eq!(
            store.begin_request("e1", 1).unwrap(),
            RequestState::InFlight
        );
        store.finish_request("e1", "{\"id\":\"x\"}").unwrap();
        assert_eq!(
            store.begin_request("e1", 1).unwrap(),
            RequestState::Answered("{\"id\":\"x\"}".into())
        );
        assert_eq!(store.begin_request("e2", 1).unwrap(), RequestState::New);
    }

    #[test]
    fn old_requests_are_pruned_and_recent_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = NwcStore::open(&dir.path().join("nwc.sqlite")).unwrap();
        store.begin_request("old", 1).unwrap();
        store.finish_request("old", "{}").unwrap();
        store.begin_request("recent", 1).unwrap();
        store.finish_request("recent", "{}").unwrap();
        let t = now();
        store
            .lock()
            .execute(
                "UPDATE nwc_requests SET created_at = ?1 WHERE event_id = 'old'",
                [(t - 100) as i64],
            )
            .unwrap();
        assert_eq!(store.prune_requests(t - 50).unwrap(), 1);
        assert_eq!(store.begin_request("old", 1).unwrap(), RequestState::New);
        assert_eq!(
            store.begin_request("recent", 1).unwrap(),
            RequestState::Answered("{}".into())
        );
        assert_eq!(store.prune_requests(t - 50).unwrap(), 0);
    }

    #[test]
    fn reserving_again_for_the_same_request_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = NwcStore::open(&dir.path().join("nwc.sqlite")).unwrap();
        let c = conn(&store, Some(10_000));
        assert!(store.reserve(&c, "r1", "h1", 6_000, 0).unwrap());
        assert!(
            store.reserve(&c, "r1", "h1", 6_000, 0).unwrap(),
            "already held"
        );
        assert_eq!(store.spent_in_window(&c).unwrap(), 6_000);
        assert_eq!(
            store.pending_reservations().unwrap(),
            vec![("r1".to_string(), "h1".to_string())]
        );
        assert_eq!(store.spend("r1").unwrap(), Some(("reserved".into(), 6_000)));
        store.settle("r1", 10).unwrap();
        assert!(store.pending_reservations().unwrap().is_empty());
        assert_eq!(store.spend("r1").unwrap(), Some(("settled".into(), 6_010)));
        assert_eq!(store.spend("r2").unwrap(), None);
    }

    #[test]
    fn revoked_and_expired_connections_are_inactive() {
        let dir = tempfile::tempdir().unwrap();
        let store = NwcStore::open(&dir.path().join("nwc.sqlite")).unwrap();
        let c = conn(&store, None);
        let t = now();
        assert!(store
            .connection_by_pubkey(&c.client_pubkey)
            .unwrap()
            .unwrap()
            .is_active(t));
        store.set_expiry(c.id, Some(t)).unwrap();
        assert!(!store
            .connection_by_pubkey(&c.client_pubkey)
            .unwrap()
            .unwrap()
            .is_active(t));
        store.set_expiry(c.id, None).unwrap();
        assert!(store.revoke(c.id).unwrap());
        let c = store
            .connection_by_pubkey(&c.client_pubkey)
            .unwrap()
            .unwrap();
        assert!(c.revoked && !c.is_active(t));
        assert!(!store.revoke(999).unwrap());
    }

    #[test]
    fn the_fee_reserve_counts_until_the_actual_fee_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = NwcStore::open(&dir.path().join("nwc.sqlite")).unwrap();
        let c = conn(&store, Some(10_000));
        // 6_000 + up to 1_000 in fees: 7_000 held.
        assert!(store.reserve(&c, "r1", "h1", 6_000, 1_000).unwrap());
        assert_eq!(store.spent_in_window(&c).unwrap(), 7_000);
        assert_eq!(store.spend("r1").unwrap(), Some(("reserved".into(), 7_000)));
        // 2_500 + 600 would fit without the fee reserve of r1, not with it.
        assert!(!store.reserve(&c, "r2", "h2", 2_500, 600).unwrap());
        // Settled with a 40 msat fee: the unused reserve is given back.
        store.settle("r1", 40).unwrap();
        assert_eq!(store.spend("r1").unwrap(), Some(("settled".into(), 6_040)));
        assert!(store.reserve(&c, "r2", "h2", 2_500, 600).unwrap());
        // Resolving from the Lightning event does the same.
        store.resolve_by_hash("h2", Some(7)).unwrap();
        assert_eq!(store.spent_in_window(&c).unwrap(), 6_040 + 2_507);
        // A payment that fits only without its fee reserve is refused.
        assert!(!store.reserve(&c, "r3", "h3", 1_453, 1).unwrap());
        assert!(store.reserve(&c, "r3", "h3", 1_452, 1).unwrap());
    }

    #[test]
    fn invoices_and_payments_belong_to_the_connection_that_issued_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = NwcStore::open(&dir.path().join("nwc.sqlite")).unwrap();
        let (a, b) = (conn(&store, None), conn(&store, None));
        let inv = IssuedInvoice {
            payment_hash: "aa".into(),
            invoice: "lnbc".into(),
            description: None,
            description_hash: None,
            amount_msat: 1,
            created_at: 1,
            expires_at: 2,
        };
        store.insert_invoice(a.id, &inv).unwrap();
        store.record_payment(b.id, "bb", "lnbcrt1bb").unwrap();
        store.record_payment(b.id, "bb", "lnbcrt1bb").unwrap();
        assert_eq!(
            store.payment_invoice("bb").unwrap().as_deref(),
            Some("lnbcrt1bb")
        );
        assert_eq!(store.payment_invoice("cc").unwrap(), None);
        assert!(store.is_owned_by(a.id, "aa").unwrap());
        assert!(!store.is_owned_by(b.id, "aa").unwrap());
        assert!(store.is_owned_by(b.id, "bb").unwrap());
        assert!(!store.is_owned_by(a.id, "bb").unwrap());
        assert_eq!(store.invoice_owner("aa").unwrap(), Some(a.id));
        assert_eq!(store.invoice_owner("bb").unwrap(), None);
        assert_eq!(store.payment_owners("bb").unwrap(), vec![b.id]);
        assert!(store.payment_owners("aa").unwrap().is_empty());
        assert_eq!(
            store.hashes_of(a.id).unwrap(),
            HashSet::from(["aa".to_string()])
        );
        assert_eq!(
            store.hashes_of(b.id).unwrap(),
            HashSet::from(["bb".to_string()])
        );
    }

    /// Everything SQLite has on disk for `path` (the file and its WAL).
    fn file_bytes(path: &Path) -> Vec<u8> {
        let mut all = std::fs::read(path).unwrap();
        let wal = path.with_extension("sqlite-wal");
        if let Ok(w) = std::fs::read(wal) {
            all.extend(w);
        }
        all
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn secrets_stored_by_an_older_version_are_wiped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nwc.sqlite");
        let app = Keys::generate();
        let secret = app.secret_key().to_secret_hex();
        {
            // The schema and rows as the previous version wrote them.
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE nwc_connections (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                    client_pubkey TEXT NOT NULL UNIQUE, client_secret TEXT NOT NULL,
                    permissions TEXT NOT NULL, budget_msat INTEGER, renewal TEXT NOT NULL,
                    max_payment_msat INTEGER, expires_at INTEGER,
                    revoked INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL);
                 CREATE TABLE nwc_spends (request_id TEXT PRIMARY KEY,
                    connection_id INTEGER NOT NULL, payment_hash TEXT NOT NULL,
                    amount_msat INTEGER NOT NULL, state TEXT NOT NULL,
                    created_at INTEGER NOT NULL);
                 CREATE TABLE nwc_invoices (payment_hash TEXT PRIMARY KEY,
                    invoice TEXT NOT NULL, description TEXT, description_hash TEXT,
                    amount_msat INTEGER NOT NULL, created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL);",
            )
            .unwrap();
            db.execute(
                "INSERT INTO nwc_connections (name, client_pubkey, client_secret, permissions,
                    budget_msat, renewal, created_at)
                 VALUES ('old', ?1, ?2, 'pay_invoice', 5000, 'never', 1)",
                params![app.public_key().to_hex(), secret],
            )
            .unwrap();
            db.execute(
                "INSERT INTO nwc_spends VALUES ('r0', 1, 'h0', 1000, 'reserved', ?1)",
                [now() as i64],
            )
            .unwrap();
        }
        assert!(contains(&file_bytes(&path), secret.as_bytes()));
        let store = NwcStore::open(&path).unwrap();
        let c = store
            .connection_by_pubkey(&app.public_key())
            .unwrap()
            .unwrap();
        assert_eq!((c.name.as_str(), c.budget_msat), ("old", Some(5_000)));
        // An old reservation has no fee reserve: settling adds the fee.
        store.settle("r0", 3).unwrap();
        assert_eq!(store.spent_in_window(&c).unwrap(), 1_003);
        drop(store);
        assert!(!contains(&file_bytes(&path), secret.as_bytes()));
        // Opening again is a no-op.
        let store = NwcStore::open(&path).unwrap();
        assert_eq!(store.list_connections().unwrap().len(), 1);
    }
}
