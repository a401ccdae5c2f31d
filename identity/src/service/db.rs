//! The registry's tables in the relay's database (SQLite or Postgres).
//!
//! The SQL is written once: both backends accept `$N` placeholders, and every
//! column is `TEXT` or a 64-bit integer, which both map to the same Rust types.
//!
//! The tables are created by identity's own migrations
//! (`identity/migrations/{sqlite,postgres}/`, embedded at build time), which
//! [`IdentityDb::migrate`] runs and [`super::IdentityService::open`] calls.
//! They share sqlx's `_sqlx_migrations` table with the relay's migrations,
//! so versions must stay unique across both sets (the relay's start at
//! `20260101…`, identity's at `20260102…`), and each migrator ignores the
//! other's rows. A migration, once released, is never edited: its checksum is
//! checked on every start.
//!
//! Two rules make several processes on one Postgres database safe, each
//! written once here: every log write checks where the log ends under
//! identity's write lock (`head_is!`, and [`WriteLock`] for an epoch
//! close, which catches up and inserts under one lock), and every anchor
//! signing, broadcast and txid record checks the anchoring term
//! (`term_is!`, see [`IdentityDb::take_anchor_term`]).

use sqlx::{PgPool, SqlitePool};

/// A connection pool to the database holding the registry's tables.
#[derive(Debug, Clone)]
pub enum IdentityDb {
    /// SQLite (the relay's write connection).
    Sqlite(SqlitePool),
    /// Postgres.
    Postgres(PgPool),
}

/// A stored challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRow {
    /// The nonce.
    pub nonce: String,
    /// Hex key it was issued for.
    pub pubkey: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Whether an accepted operation quoted it.
    pub used: bool,
}

/// A stored accepted operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRow {
    /// Log index of the operation's leaf.
    pub log_index: u64,
    /// Event id, hex.
    pub event_id: String,
    /// The identity.
    pub x_uid: u64,
    /// The binding event, JSON.
    pub event_json: String,
    /// The witness attestation event, JSON (bind and recover only).
    pub attestation_json: Option<String>,
    /// Log index of the attestation's leaf.
    pub attestation_index: Option<u64>,
    /// Epoch it was logged in.
    pub epoch: u64,
    /// Block height the registry used.
    pub height: u32,
    /// Unix seconds.
    pub accepted_at: u64,
}

/// A stored closed epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRow {
    /// Epoch number.
    pub epoch: u64,
    /// The 113 header bytes, hex.
    pub header: String,
    /// Height used to complete recoveries at close.
    pub close_height: u32,
    /// Anchor txid (display hex), once known.
    pub anchor_txid: Option<String>,
    /// Unix seconds.
    pub closed_at: u64,
}

/// Where the stored log and epochs end (see [`IdentityDb::head`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The next free log index (the log's size).
    pub next_log_index: u64,
    /// How many epochs are closed: the open epoch's number.
    pub epochs: u64,
}

/// What became of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Stored.
    Stored,
    /// The operation's challenge was used in the meantime; nothing stored.
    ChallengeUsed,
    /// Another process logged an operation or closed an epoch since the
    /// caller last read the tables; nothing stored. Catch up and decide again.
    Stale,
}

/// Advisory lock key serialising identity's log writes across the
/// processes that share a Postgres database ("cairn", then a number apart
/// from the relay's write lock `…0001` and the node's leases `…01xx`).
pub const WRITE_LOCK_KEY: i64 = 0x6361_6972_6e00_0201;

const HEAD: &str = "SELECT COALESCE((SELECT MAX(log_index) FROM identity_operations), -1) + 1, \
                    (SELECT COUNT(*) FROM identity_epochs)";

/// Inside transaction `$tx` of `$db`: takes the write lock (Postgres; an
/// SQLite database has one writer, and its transaction is that lock) and
/// tells whether the tables end at `$expected`. Every log write checks this
/// under the lock, so operations and epoch closes decided by several
/// processes are stored in one order, each against the state it was
/// decided on.
macro_rules! head_is {
    ($db:expr, $tx:expr, $expected:expr) => {{
        if matches!($db, IdentityDb::Postgres(_)) {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *$tx)
                .await?;
        }
        let (next, epochs): (i64, i64) = sqlx::query_as(HEAD).fetch_one(&mut *$tx).await?;
        to_u(next) == $expected.next_log_index && to_u(epochs) == $expected.epochs
    }};
}

const TERM: &str = "SELECT term FROM identity_anchor_term WHERE id = 0";
const TERM_FOR_SHARE: &str = "SELECT term FROM identity_anchor_term WHERE id = 0 FOR SHARE";

/// The anchoring fence's one rule. Inside transaction `$tx` of `$db`: is
/// `$term` the current anchoring term? On Postgres the term's row is then
/// locked `FOR SHARE` until the transaction ends, so no process can take a
/// new term ([`IdentityDb::take_anchor_term`] waits) while what the
/// transaction guards (a signing and broadcast, a txid record) goes on. An
/// SQLite database has one process, whose transactions are serialised.
macro_rules! term_is {
    ($db:expr, $tx:expr, $term:expr) => {{
        let current: i64 = if matches!($db, IdentityDb::Postgres(_)) {
            sqlx::query_scalar(TERM_FOR_SHARE)
                .fetch_one(&mut *$tx)
                .await?
        } else {
            sqlx::query_scalar(TERM).fetch_one(&mut *$tx).await?
        };
        to_u(current) == $term
    }};
}

/// Runs the same statement on either backend: `$pool` is bound to the pool.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            IdentityDb::Sqlite($pool) => $body,
            IdentityDb::Postgres($pool) => $body,
        }
    };
}

// Values are stored as i64; u64 ids and heights round-trip through the cast.
fn to_i(v: u64) -> i64 {
    v as i64
}

fn to_u(v: i64) -> u64 {
    v as u64
}

type ChallengeTuple = (String, String, i64, i64, i64);
type OperationTuple = (
    i64,
    String,
    i64,
    String,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    i64,
);
type EpochTuple = (i64, String, i64, Option<String>, i64);

impl IdentityDb {
    /// Creates identity's tables, or brings them up to date: runs the
    /// migrations in `identity/migrations/` that are not applied yet, and
    /// checks the checksums of those that are.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        // The relay's migrations record themselves in the same
        // `_sqlx_migrations` table: without `ignore_missing`, their rows
        // would read as applied migrations missing from this set.
        match self {
            IdentityDb::Sqlite(pool) => {
                let mut migrator = sqlx::migrate!("migrations/sqlite");
                migrator.set_ignore_missing(true).run(pool).await?;
            }
            IdentityDb::Postgres(pool) => {
                let mut migrator = sqlx::migrate!("migrations/postgres");
                migrator.set_ignore_missing(true).run(pool).await?;
            }
        }
        Ok(())
    }

    /// Stores a freshly issued challenge.
    pub async fn insert_challenge(&self, c: &ChallengeRow) -> Result<(), sqlx::Error> {
        const SQL: &str =
            "INSERT INTO identity_challenges (nonce, pubkey, issued_at, expires_at, used) \
                           VALUES ($1, $2, $3, $4, 0)";
        on_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(&c.nonce)
                .bind(&c.pubkey)
                .bind(to_i(c.issued_at))
                .bind(to_i(c.expires_at))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The challenge with this nonce.
    pub async fn challenge(&self, nonce: &str) -> Result<Option<ChallengeRow>, sqlx::Error> {
        const SQL: &str = "SELECT nonce, pubkey, issued_at, expires_at, used \
                           FROM identity_challenges WHERE nonce = $1";
        let row: Option<ChallengeTuple> = on_pool!(self, pool => {
            sqlx::query_as(SQL).bind(nonce).fetch_optional(pool).await?
        });
        Ok(row.map(
            |(nonce, pubkey, issued_at, expires_at, used)| ChallengeRow {
                nonce,
                pubkey,
                issued_at: to_u(issued_at),
                expires_at: to_u(expires_at),
                used: used != 0,
            },
        ))
    }

    /// Unused challenges still valid at `now`: how many, and the earliest
    /// expiry among them.
    pub async fn outstanding_challenges(
        &self,
        now: u64,
    ) -> Result<(u64, Option<u64>), sqlx::Error> {
        // `expires_at` is indexed, so this reads only the last TTL's rows.
        const SQL: &str = "SELECT COUNT(*), MIN(expires_at) FROM identity_challenges \
                           WHERE expires_at >= $1 AND used = 0";
        let (n, oldest): (i64, Option<i64>) = on_pool!(self, pool => {
            sqlx::query_as(SQL).bind(to_i(now)).fetch_one(pool).await?
        });
        Ok((to_u(n), oldest.map(to_u)))
    }

    /// Deletes unused challenges that expired before `now`; returns how many.
    pub async fn purge_challenges(&self, now: u64) -> Result<u64, sqlx::Error> {
        const SQL: &str = "DELETE FROM identity_challenges WHERE used = 0 AND expires_at < $1";
        let n = on_pool!(self, pool => {
            sqlx::query(SQL).bind(to_i(now)).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// Where the stored log and epochs end: the next free log index and
    /// the number of closed epochs (the open epoch's number).
    pub async fn head(&self) -> Result<Head, sqlx::Error> {
        let (next_log_index, epochs): (i64, i64) = on_pool!(self, pool => {
            sqlx::query_as(HEAD).fetch_one(pool).await?
        });
        Ok(Head {
            next_log_index: to_u(next_log_index),
            epochs: to_u(epochs),
        })
    }

    /// Logs an accepted operation and, when it quotes one, marks its
    /// challenge used, in one transaction, provided the stored log still
    /// ends where the operation was decided against (its first leaf is the
    /// next free log index, its epoch the open one): otherwise
    /// [`Insert::Stale`], and nothing is stored. [`Insert::ChallengeUsed`]
    /// (nothing stored) when the challenge was used in the meantime.
    pub async fn insert_operation(
        &self,
        op: &OperationRow,
        challenge: Option<&str>,
    ) -> Result<Insert, sqlx::Error> {
        const USE: &str = "UPDATE identity_challenges SET used = 1 WHERE nonce = $1 AND used = 0";
        const SQL: &str =
            "INSERT INTO identity_operations (log_index, event_id, x_uid, event_json, \
                           attestation_json, attestation_index, epoch, height, accepted_at) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let expected = Head {
            next_log_index: op.attestation_index.unwrap_or(op.log_index),
            epochs: op.epoch,
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if !head_is!(self, tx, expected) {
                tx.rollback().await?;
                return Ok(Insert::Stale);
            }
            if let Some(nonce) = challenge {
                let n = sqlx::query(USE).bind(nonce).execute(&mut *tx).await?.rows_affected();
                if n != 1 {
                    tx.rollback().await?;
                    return Ok(Insert::ChallengeUsed);
                }
            }
            sqlx::query(SQL)
                .bind(to_i(op.log_index))
                .bind(&op.event_id)
                .bind(to_i(op.x_uid))
                .bind(&op.event_json)
                .bind(&op.attestation_json)
                .bind(op.attestation_index.map(to_i))
                .bind(to_i(op.epoch))
                .bind(i64::from(op.height))
                .bind(to_i(op.accepted_at))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(Insert::Stored)
    }

    /// Every accepted operation, in log order.
    pub async fn operations(&self) -> Result<Vec<OperationRow>, sqlx::Error> {
        self.operations_from(0).await
    }

    /// The accepted operations whose log index is `from` or above, in log order.
    pub async fn operations_from(&self, from: u64) -> Result<Vec<OperationRow>, sqlx::Error> {
        let rows: Vec<OperationTuple> = on_pool!(self, pool => {
            sqlx::query_as(OPERATIONS_FROM).bind(to_i(from)).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(operation_row).collect())
    }

    /// Begins a transaction holding identity's write lock (see
    /// [`WriteLock`]): no other process logs an operation or closes an
    /// epoch until it ends.
    pub async fn write_lock(&self) -> Result<WriteLock, sqlx::Error> {
        Ok(WriteLock(match self {
            IdentityDb::Sqlite(pool) => WriteTx::Sqlite(pool.begin().await?),
            IdentityDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                WriteTx::Postgres(tx)
            }
        }))
    }

    /// Starts a new anchoring term and returns it: raises the stored term
    /// by one. A process anchors (signs and broadcasts anchor transactions,
    /// records their txids) only while the stored term is the one it took,
    /// so taking a term fences off every earlier holder. On Postgres this
    /// waits for any signing and broadcast in flight under the old term
    /// (it holds the row `FOR SHARE`, see [`Self::hold_anchor_term`]):
    /// once it returns, no earlier holder signs or broadcasts again.
    pub async fn take_anchor_term(&self) -> Result<u64, sqlx::Error> {
        const SQL: &str =
            "UPDATE identity_anchor_term SET term = term + 1 WHERE id = 0 RETURNING term";
        let term: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(SQL).fetch_one(pool).await?
        });
        Ok(to_u(term))
    }

    /// The current anchoring term (0 until a process took one).
    pub async fn anchor_term(&self) -> Result<u64, sqlx::Error> {
        let term: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(TERM).fetch_one(pool).await?
        });
        Ok(to_u(term))
    }

    /// Holds anchoring term `term` while an anchor is signed and
    /// broadcast: `None` when it is no longer the current term (another
    /// process took over; the caller must not sign or broadcast). On
    /// Postgres the hold is a transaction keeping the term's row locked
    /// `FOR SHARE` until [`TermHold::release`], so no new term can be taken
    /// meanwhile; on SQLite (one process) the check is all there is.
    pub async fn hold_anchor_term(&self, term: u64) -> Result<Option<TermHold>, sqlx::Error> {
        match self {
            IdentityDb::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let current = term_is!(self, tx, term);
                tx.rollback().await?;
                Ok(current.then_some(TermHold(None)))
            }
            IdentityDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if term_is!(self, tx, term) {
                    Ok(Some(TermHold(Some(tx))))
                } else {
                    tx.rollback().await?;
                    Ok(None)
                }
            }
        }
    }

    /// Records (or changes, after a fee bump or re-anchoring) an epoch's
    /// anchor txid, provided `term` is still the current anchoring term,
    /// checked in the same transaction: `false`, and nothing changed, when
    /// another process took the anchoring over.
    pub async fn set_anchor_txid(
        &self,
        epoch: u64,
        txid: &str,
        term: u64,
    ) -> Result<bool, sqlx::Error> {
        const SQL: &str = "UPDATE identity_epochs SET anchor_txid = $1 WHERE epoch = $2";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if !term_is!(self, tx, term) {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(SQL).bind(txid).bind(to_i(epoch)).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Every closed epoch, in order.
    pub async fn epochs(&self) -> Result<Vec<EpochRow>, sqlx::Error> {
        self.epochs_from(0).await
    }

    /// The closed epochs numbered `from` or above, in order.
    pub async fn epochs_from(&self, from: u64) -> Result<Vec<EpochRow>, sqlx::Error> {
        let rows: Vec<EpochTuple> = on_pool!(self, pool => {
            sqlx::query_as(EPOCHS_FROM).bind(to_i(from)).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(epoch_row).collect())
    }
}

const OPERATIONS_FROM: &str = "SELECT log_index, event_id, x_uid, event_json, attestation_json, \
                               attestation_index, epoch, height, accepted_at \
                               FROM identity_operations WHERE log_index >= $1 ORDER BY log_index";

const EPOCHS_FROM: &str = "SELECT epoch, header, close_height, anchor_txid, closed_at \
                           FROM identity_epochs WHERE epoch >= $1 ORDER BY epoch";

fn operation_row(r: OperationTuple) -> OperationRow {
    OperationRow {
        log_index: to_u(r.0),
        event_id: r.1,
        x_uid: to_u(r.2),
        event_json: r.3,
        attestation_json: r.4,
        attestation_index: r.5.map(to_u),
        epoch: to_u(r.6),
        height: r.7 as u32,
        accepted_at: to_u(r.8),
    }
}

fn epoch_row(r: EpochTuple) -> EpochRow {
    EpochRow {
        epoch: to_u(r.0),
        header: r.1,
        close_height: r.2 as u32,
        anchor_txid: r.3,
        closed_at: to_u(r.4),
    }
}

/// A transaction holding identity's write lock ([`IdentityDb::write_lock`];
/// on SQLite the database's one writer makes the transaction that lock):
/// what it reads stays where the log ends until it commits, so an epoch
/// close catches up, decides and inserts against one state, instead of
/// losing to operations other processes log meanwhile. Dropped without
/// [`Self::insert_epoch`], it rolls back and unlocks.
pub struct WriteLock(WriteTx);

// One per epoch close, moved once and never kept in a collection: boxing the
// larger transaction would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum WriteTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs the same statement on the lock's transaction: `$c` is its connection.
macro_rules! on_tx {
    ($lock:expr, $c:ident => $body:expr) => {
        match &mut $lock.0 {
            WriteTx::Sqlite(tx) => {
                let $c = &mut **tx;
                $body
            }
            WriteTx::Postgres(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}

impl WriteLock {
    /// Where the stored log and epochs end.
    pub async fn head(&mut self) -> Result<Head, sqlx::Error> {
        let (next, epochs): (i64, i64) =
            on_tx!(self, c => sqlx::query_as(HEAD).fetch_one(c).await?);
        Ok(Head {
            next_log_index: to_u(next),
            epochs: to_u(epochs),
        })
    }

    /// The accepted operations whose log index is `from` or above, in log order.
    pub async fn operations_from(&mut self, from: u64) -> Result<Vec<OperationRow>, sqlx::Error> {
        let rows: Vec<OperationTuple> = on_tx!(self, c => {
            sqlx::query_as(OPERATIONS_FROM).bind(to_i(from)).fetch_all(c).await?
        });
        Ok(rows.into_iter().map(operation_row).collect())
    }

    /// The closed epochs numbered `from` or above, in order.
    pub async fn epochs_from(&mut self, from: u64) -> Result<Vec<EpochRow>, sqlx::Error> {
        let rows: Vec<EpochTuple> = on_tx!(self, c => {
            sqlx::query_as(EPOCHS_FROM).bind(to_i(from)).fetch_all(c).await?
        });
        Ok(rows.into_iter().map(epoch_row).collect())
    }

    /// Stores a closed epoch whose header covers a log of `log_size`
    /// leaves and commits, provided the stored log and epochs end there
    /// (they do when the caller caught up under this lock): otherwise
    /// [`Insert::Stale`], and nothing is stored.
    pub async fn insert_epoch(
        mut self,
        e: &EpochRow,
        log_size: u64,
    ) -> Result<Insert, sqlx::Error> {
        const SQL: &str =
            "INSERT INTO identity_epochs (epoch, header, close_height, anchor_txid, closed_at) \
                           VALUES ($1, $2, $3, $4, $5)";
        let head = self.head().await?;
        if head.next_log_index != log_size || head.epochs != e.epoch {
            return Ok(Insert::Stale);
        }
        on_tx!(self, c => {
            sqlx::query(SQL)
                .bind(to_i(e.epoch))
                .bind(&e.header)
                .bind(i64::from(e.close_height))
                .bind(&e.anchor_txid)
                .bind(to_i(e.closed_at))
                .execute(c)
                .await?;
        });
        match self.0 {
            WriteTx::Sqlite(tx) => tx.commit().await?,
            WriteTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(Insert::Stored)
    }
}

/// Where rows are read from: the pool, or a [`WriteLock`]'s transaction.
pub enum Rows<'a> {
    /// Outside any lock.
    Pool(&'a IdentityDb),
    /// Under identity's write lock.
    Locked(&'a mut WriteLock),
}

impl Rows<'_> {
    /// Where the stored log and epochs end.
    pub async fn head(&mut self) -> Result<Head, sqlx::Error> {
        match self {
            Rows::Pool(db) => db.head().await,
            Rows::Locked(lock) => lock.head().await,
        }
    }

    /// The accepted operations from log index `from`, in log order.
    pub async fn operations_from(&mut self, from: u64) -> Result<Vec<OperationRow>, sqlx::Error> {
        match self {
            Rows::Pool(db) => db.operations_from(from).await,
            Rows::Locked(lock) => lock.operations_from(from).await,
        }
    }

    /// The closed epochs from number `from`, in order.
    pub async fn epochs_from(&mut self, from: u64) -> Result<Vec<EpochRow>, sqlx::Error> {
        match self {
            Rows::Pool(db) => db.epochs_from(from).await,
            Rows::Locked(lock) => lock.epochs_from(from).await,
        }
    }
}

/// An anchoring term held while an anchor is signed and broadcast (see
/// [`IdentityDb::hold_anchor_term`]).
pub struct TermHold(Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl TermHold {
    /// Ends the hold: a new term may be taken from now on.
    pub async fn release(self) {
        if let Some(tx) = self.0 {
            // Nothing was written: ending the transaction either way frees the row.
            let _ = tx.rollback().await;
        }
    }
}
