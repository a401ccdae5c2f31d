//! SQLite backend: one file in the data directory, WAL journal,
//! `synchronous=FULL`, one write connection, a small pool of readers and a
//! checkpointer that keeps the WAL bounded ([`wal`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nostr::{Event, Filter};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Encode, QueryBuilder, Sqlite, Type};

use super::common::{budget_error, check_bound_values, BatchState, PreparedEvent, EVENT_CHUNK};
use super::{
    QueryBudget, QueryContext, QueryRow, SaveOutcome, Store, StoreError, StoredEvent, WriterPause,
};

mod wal;

pub use wal::{
    WalConfig, DEFAULT_READER_WAIT, DEFAULT_WAL_RESTART_AT, DEFAULT_WAL_SIZE_LIMIT,
    IDLE_PASS_INTERVAL, PASS_INTERVAL,
};

/// How long a connection waits for a lock before reporting `SQLITE_BUSY`.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections kept open; reads run in parallel with the single writer under WAL.
pub const DEFAULT_READ_CONNECTIONS: u32 = 4;

/// Event store in one SQLite file.
///
/// All writes go through one connection (SQLite allows a single writer
/// anyway, and this avoids `SQLITE_BUSY` between our own writers); reads use
/// a separate pool and, thanks to WAL, never wait for writes.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    /// The WAL's upkeep; `None` for an in-memory database (no WAL).
    wal: Option<Wal>,
}

#[derive(Debug, Clone)]
struct Wal {
    config: WalConfig,
    monitor: Arc<wal::WalMonitor>,
    /// The checkpointer's own connection.
    checkpointer: SqlitePool,
    /// The `-wal` file and the WAL index beside the database.
    log: Arc<wal::LogFiles>,
    /// That file, open for [`Store::sync_commits`]: SQLite keeps the same
    /// file (truncated or rewritten from its start, never replaced) while
    /// any of our connections is open.
    sync_file: Arc<std::fs::File>,
}

impl SqliteStore {
    /// Open (creating the file and its parent directory if missing) the
    /// database named by a `sqlite://PATH` URL and run the embedded migrations.
    ///
    /// `sqlite::memory:` gives a private in-memory database (for tests); it
    /// uses one connection for reads and writes.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, WalConfig::default()).await
    }

    /// [`SqliteStore::open`] with the WAL bounded as `wal` says.
    pub async fn open_with(url: &str, wal: WalConfig) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // OK is only sent after commit, so a commit must survive power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(DEFAULT_BUSY_TIMEOUT)
            .foreign_keys(false)
            .pragma("journal_size_limit", wal.size_limit.to_string())
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-32768");

        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            create_parent_dir(options.get_filename())?;
        }

        // Never recycle the writer: an in-memory database lives only as long
        // as its connection, and reconnecting a file buys nothing.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            // The writer never checkpoints inside a commit: that would put the
            // copy into the database file, and its fsync, inside some unlucky
            // client's commit. See `wal` for who does it instead.
            .connect_with(if in_memory {
                options.clone()
            } else {
                options.clone().pragma("wal_autocheckpoint", "0")
            })
            .await?;
        // Other parts of the node (identity) run their own migrations here, recorded in
        // the same `_sqlx_migrations`: ignore their versions, which this set does not know.
        let mut migrator = sqlx::migrate!("../migrations/sqlite");
        migrator.set_ignore_missing(true).run(&write).await?;

        if in_memory {
            return Ok(Self {
                read: write.clone(),
                write,
                wal: None,
            });
        }

        let read = SqlitePoolOptions::new()
            .max_connections(DEFAULT_READ_CONNECTIONS)
            .min_connections(1)
            // Reads map the file (up to SQLite's 2 GiB cap): a REQ touches
            // hundreds of scattered rows, and page faults on a warm map are
            // far cheaper than one pread per page.
            .connect_with(options.clone().pragma("mmap_size", "2147418112"))
            .await?;
        let database_file: PathBuf = options.get_filename().to_path_buf();
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&checkpointer)
            .await?;
        let page_size = u64::try_from(page_size).unwrap_or(4096);
        // The migrations ran in WAL mode, so the files exist.
        let log = wal::LogFiles::open(&database_file, page_size).map_err(StoreError::Sync)?;
        let sync_file = std::fs::File::open(log.wal()).map_err(StoreError::Sync)?;
        let monitor = Arc::new(wal::WalMonitor::default());
        tokio::spawn({
            let pool = checkpointer.clone();
            let monitor = Arc::clone(&monitor);
            async move {
                wal::run_checkpointer(pool, &database_file, page_size, monitor, wal).await;
            }
        });
        Ok(Self {
            write,
            read,
            wal: Some(Wal {
                config: wal,
                monitor,
                checkpointer,
                log: Arc::new(log),
                sync_file: Arc::new(sync_file),
            }),
        })
    }

    /// A read connection whose statements stop at `budget`'s deadline or
    /// once the returned guard is dropped (a client that went away).
    ///
    /// Every use of the read pool goes through here, and each installs its
    /// own progress handler, so the handler a cancelled query leaves on its
    /// connection never outlives the next acquire. The in-memory store
    /// (tests) reads on its write connection, which must never carry a
    /// stopping handler, so it gets none and no budget.
    async fn reader(&self, budget: QueryBudget) -> Result<Reader, sqlx::Error> {
        let mut conn = self.read.acquire().await?;
        let stop = Arc::new(AtomicBool::new(false));
        if self.wal.is_some() {
            let flag = Arc::clone(&stop);
            let deadline = budget.deadline;
            conn.lock_handle()
                .await?
                .set_progress_handler(PROGRESS_OPS, move || {
                    // `true` continues the statement.
                    !(flag.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d))
                });
        }
        Ok(Reader { conn, stop })
    }

    /// Tell the checkpointer that the write connection committed.
    fn committed(&self) {
        if let Some(wal) = &self.wal {
            wal.monitor.committed();
        }
    }

    /// Refresh the planner's statistics (`PRAGMA optimize`). Cheap; worth
    /// calling now and then on a long-running store.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA optimize").execute(&self.write).await?;
        Ok(())
    }
}

/// SQLite virtual-machine steps between two checks of a read's budget
/// (tens of microseconds of work).
const PROGRESS_OPS: i32 = 1_000;

/// A read connection that stops its statement when dropped (see
/// [`SqliteStore::reader`]).
struct Reader {
    conn: PoolConnection<Sqlite>,
    stop: Arc<AtomicBool>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A statement still running on the worker thread (its future was
        // dropped) is interrupted at its next progress check.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// What the database already knows about the batch's ids: the stored ones,
/// then the tombstones of the others. SQLite has no array binds, so the ids
/// are listed in `IN (…)`, [`EVENT_CHUNK`] at a time.
async fn lookup_batch(
    conn: &mut SqliteConnection,
    prepared: &[PreparedEvent],
) -> Result<BatchState, sqlx::Error> {
    let mut known = Vec::new();
    for chunk in prepared.chunks(EVENT_CHUNK) {
        let ids = chunk.iter().map(|ev| ev.id.as_slice());
        known.extend(
            in_list("SELECT id, pubkey, kind FROM events WHERE id IN (", ids)
                .build_query_as::<(Vec<u8>, Vec<u8>, i32)>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    let stored: std::collections::HashSet<&[u8]> =
        known.iter().map(|(id, _, _)| id.as_slice()).collect();
    let unknown: Vec<&[u8]> = prepared
        .iter()
        .map(|ev| ev.id.as_slice())
        .filter(|id| !stored.contains(id))
        .collect();
    let tombstones = tombstones_of(conn, &unknown).await?;
    Ok(BatchState::new(known, tombstones))
}

/// Take the database's write lock before the transaction reads anything.
///
/// Within this process every write goes through the one write connection,
/// but another process may write to the same file (`cairn sync` beside a
/// serving node). A deferred transaction that reads first and then writes
/// gets `SQLITE_BUSY` at once when the other process wrote meanwhile (its
/// snapshot is stale; the busy timeout does not apply), while a transaction
/// whose first statement writes waits out the busy timeout like
/// `BEGIN IMMEDIATE`. A write that matches no row is such a first statement.
pub(super) async fn lock_writes(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM events WHERE 0")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

super::common::backend_sql!(Sqlite, SqliteConnection, greatest = "max", kind = i64);

/// `sql` followed by the bound `values` and a closing parenthesis: SQLite
/// has no array binds, so `IN (…)` lists are spelled out.
fn in_list<'a, T>(sql: &str, values: impl IntoIterator<Item = T>) -> QueryBuilder<'a, Sqlite>
where
    T: 'a + Encode<'a, Sqlite> + Type<Sqlite>,
{
    let mut qb = QueryBuilder::new(sql);
    let mut list = qb.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    qb.push(")");
    qb
}

pub(super) async fn delete_seqs(
    conn: &mut SqliteConnection,
    seqs: &[i64],
) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    keep_tombstones(conn, seqs).await?;
    delete_tags(conn, seqs).await?;
    in_list("DELETE FROM events WHERE seq IN (", seqs.iter().copied())
        .build()
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn delete_tags(conn: &mut SqliteConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    in_list(
        "DELETE FROM tags WHERE event_seq IN (",
        seqs.iter().copied(),
    )
    .build()
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn save_batch(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, StoreError> {
        let outcomes = save_batch_on(&self.write, events).await?;
        self.committed();
        Ok(outcomes)
    }

    /// The batch's transaction runs with `synchronous=NORMAL`: its commit
    /// appends to the WAL without an fsync, and [`Store::sync_commits`]'s
    /// `fdatasync` of the WAL makes it durable. WAL frames are checksummed
    /// in a chain, so a crash before that sync loses at most a suffix of
    /// unsynced commits, never an earlier synced one; and a checkpoint in
    /// between syncs the WAL itself before copying it.
    async fn save_batch_unsynced(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, StoreError> {
        if self.wal.is_none() {
            return self.save_batch(events).await;
        }
        let mut conn = self.write.acquire().await?;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await?;
        let saved = save_batch_on(&mut *conn, events).await;
        // Back to FULL before the connection goes back to the pool: every
        // other write on it (identity, the outbox, web sessions) syncs in
        // its own commit. A connection that cannot be set back is dropped.
        let restored = sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await;
        if let Err(err) = restored {
            let _ = conn.close().await;
            return Err(err.into());
        }
        let outcomes = saved?;
        self.committed();
        Ok(outcomes)
    }

    async fn sync_commits(&self) -> Result<(), StoreError> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let file = Arc::clone(&wal.sync_file);
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|join| StoreError::Sync(std::io::Error::other(join)))?
            .map_err(StoreError::Sync)
    }

    async fn query(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self
            .query_rows(filter, ctx, QueryBudget::default(), usize::MAX)
            .await?;
        Ok(rows
            .into_iter()
            .map(super::common::stored_event)
            .collect::<Result<_, _>>()?)
    }

    async fn count(&self, filters: &[Filter], ctx: &QueryContext) -> Result<u64, StoreError> {
        self.count_within(filters, ctx, QueryBudget::default())
            .await
    }

    async fn query_rows(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
        budget: QueryBudget,
        hold_json: usize,
    ) -> Result<Vec<QueryRow>, StoreError> {
        check_bound_values([filter], ctx)?;
        let mut conn = self.reader(budget).await?;
        query_rows_on(&mut conn.conn, filter, ctx, hold_json)
            .await
            .map_err(budget_error)
    }

    async fn sync_items(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
        budget: QueryBudget,
        max_items: usize,
    ) -> Result<Vec<super::SyncItem>, StoreError> {
        check_bound_values([filter], ctx)?;
        let mut conn = self.reader(budget).await?;
        sync_items_on(&mut conn.conn, filter, ctx, max_items).await
    }

    async fn fetch_json(
        &self,
        seqs: &[i64],
        budget: QueryBudget,
    ) -> Result<Vec<(i64, Vec<u8>, String)>, StoreError> {
        let mut conn = self.reader(budget).await?;
        fetch_json_on(&mut conn.conn, seqs)
            .await
            .map_err(budget_error)
    }

    async fn count_within(
        &self,
        filters: &[Filter],
        ctx: &QueryContext,
        budget: QueryBudget,
    ) -> Result<u64, StoreError> {
        check_bound_values(filters, ctx)?;
        let mut conn = self.reader(budget).await?;
        count_events(&mut conn.conn, filters, ctx)
            .await
            .map_err(budget_error)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let purged = purge_expired_on(&self.write, now).await?;
        self.committed();
        Ok(purged)
    }

    async fn purge_selected(
        &self,
        selection: &super::PurgeSelection,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let purged = super::retention::purge_sqlite(&self.write, selection, limit).await?;
        self.committed();
        Ok(purged)
    }

    async fn live_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(Some(
            super::retention::live_bytes_sqlite(&self.write).await?,
        ))
    }

    async fn maintain(&self, pause: WriterPause) -> Result<(), StoreError> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        match pause {
            WriterPause::BetweenBatches => {
                wal.monitor
                    .between_batches(&self.write, &wal.log, &wal.config)
                    .await?
            }
            WriterPause::Idle => wal.monitor.idle(&self.write, &wal.config).await?,
        }
        Ok(())
    }

    async fn kind_counts(
        &self,
        budget: QueryBudget,
    ) -> Result<Option<Vec<(u16, u64)>>, StoreError> {
        let mut conn = self.reader(budget).await?;
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")
                .fetch_all(&mut *conn.conn)
                .await
                .map_err(budget_error)?;
        Ok(Some(
            rows.into_iter()
                .map(|(kind, n)| (kind as u16, n.max(0) as u64))
                .collect(),
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.reader(QueryBudget::default()).await?;
        sqlx::query("SELECT 1").execute(&mut *conn.conn).await?;
        Ok(())
    }

    fn database(&self) -> Option<super::Database> {
        Some(super::Database::Sqlite(self.write.clone()))
    }

    async fn close(&self) {
        if let Some(wal) = &self.wal {
            wal.checkpointer.close().await;
        }
        self.read.close().await;
        // Last: SQLite's last connection to close checkpoints and removes the WAL.
        self.write.close().await;
    }
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, Keys, Kind};

    use super::*;

    #[tokio::test]
    async fn kind_counts_count_every_stored_event_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cairn.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        let keys = Keys::generate();
        let events: Vec<Event> = [(1, "a"), (1, "b"), (7, "+"), (1059, "private")]
            .into_iter()
            .map(|(kind, text)| {
                EventBuilder::new(Kind::from(kind), text)
                    .sign_with_keys(&keys)
                    .unwrap()
            })
            .collect();
        store.save_batch(&events).await.unwrap();
        let counts = store
            .kind_counts(QueryBudget::millis(10_000))
            .await
            .unwrap();
        assert_eq!(
            counts,
            Some(vec![(1, 2), (7, 1), (1059, 1)]),
            "gift wraps are counted too"
        );
        store.close().await;
    }

    /// The unsynced path commits like `save_batch` (the events are there
    /// after a reopen), syncs without error, and leaves the shared write
    /// connection at `synchronous=FULL` (2) for every other writer on it.
    #[tokio::test]
    async fn unsynced_batches_commit_and_leave_the_connection_at_full() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cairn.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        let keys = Keys::generate();
        let events: Vec<Event> = (0..20)
            .map(|i| {
                EventBuilder::text_note(format!("note {i}"))
                    .sign_with_keys(&keys)
                    .unwrap()
            })
            .collect();
        let outcomes = store.save_batch_unsynced(&events).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == SaveOutcome::Stored));
        store.sync_commits().await.unwrap();
        let Some(super::super::Database::Sqlite(pool)) = store.database() else {
            panic!("sqlite store without its pool");
        };
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(level, 2, "the write connection is back at FULL");
        store.close().await;

        let reopened = SqliteStore::open(&url).await.unwrap();
        let ctx = QueryContext {
            max_limit: 100,
            ..QueryContext::default()
        };
        assert_eq!(reopened.count(&[Filter::new()], &ctx).await.unwrap(), 20);
        reopened.close().await;
    }
}
