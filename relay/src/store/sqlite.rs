//! SQLite backend: one file in the data directory, WAL journal,
//! `synchronous=FULL`, one write connection and a small pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use nostr::{Event, Filter};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use super::common::{
    count_query, id_array, push_filter_select, BatchState, FilterPlan, PreparedEvent, Select,
    Visibility,
};
use super::{QueryContext, SaveOutcome, Store, StoreError, StoredEvent};

/// How long a connection waits for a lock before reporting `SQLITE_BUSY`.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections kept open; reads run in parallel with the single writer under WAL.
pub const DEFAULT_READ_CONNECTIONS: u32 = 4;

/// Rows per multi-row tag INSERT (5 bound values each, far below SQLite's
/// 32,766-parameter limit).
const TAG_INSERT_CHUNK: usize = 1000;

/// Rows per multi-row event INSERT (7 bound values each) and ids per lookup.
const EVENT_CHUNK: usize = 500;

/// How often committed WAL frames are copied into the database file.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Expired events removed per purge transaction, so a large purge never holds
/// the write lock for long.
const PURGE_CHUNK: usize = 1000;

/// Event store in one SQLite file.
///
/// All writes go through one connection (SQLite allows a single writer
/// anyway, and this avoids `SQLITE_BUSY` between our own writers); reads use
/// a separate pool and, thanks to WAL, never wait for writes.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
}

impl SqliteStore {
    /// Open (creating the file and its parent directory if missing) the
    /// database named by a `sqlite://PATH` URL and run the embedded migrations.
    ///
    /// `sqlite::memory:` gives a private in-memory database (for tests); it
    /// uses one connection for reads and writes.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // OK is only sent after commit, so a commit must survive power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(DEFAULT_BUSY_TIMEOUT)
            .foreign_keys(false)
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
            // The writer never checkpoints: that would put the copy back into
            // the database file, and its fsync, inside some unlucky client's
            // commit. A background task does it instead (see below).
            .connect_with(if in_memory {
                options.clone()
            } else {
                options.clone().pragma("wal_autocheckpoint", "0")
            })
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&write).await?;

        let read = if in_memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(DEFAULT_READ_CONNECTIONS)
                .min_connections(1)
                // Reads map the file (up to SQLite's 2 GiB cap): a REQ touches
                // hundreds of scattered rows, and page faults on a warm map are
                // far cheaper than one pread per page.
                .connect_with(options.pragma("mmap_size", "2147418112"))
                .await?
        };
        if !in_memory {
            tokio::spawn(checkpoint_loop(read.clone()));
        }
        Ok(Self { write, read })
    }

    /// Refresh the planner's statistics (`PRAGMA optimize`). Cheap; worth
    /// calling now and then on a long-running store.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA optimize").execute(&self.write).await?;
        Ok(())
    }
}

/// Copy committed WAL frames back into the database file now and then, off
/// the write path. PASSIVE never blocks the writer or readers; SQLite then
/// restarts the WAL from its beginning, so it stays bounded. Ends when the
/// store is closed.
async fn checkpoint_loop(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %err, "WAL checkpoint failed");
        }
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

/// Apply a batch in order inside the caller's transaction. Plain events are
/// decided by [`BatchState`] and inserted in bulk; the rest (replaceable,
/// addressable, deletions) go one by one after pending inserts are flushed,
/// so they see everything before them.
async fn save_all(
    conn: &mut SqliteConnection,
    prepared: &[PreparedEvent],
) -> Result<Vec<SaveOutcome>, sqlx::Error> {
    let mut known = Vec::new();
    let mut tombstones = Vec::new();
    for chunk in prepared.chunks(EVENT_CHUNK) {
        let mut qb: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("SELECT id, pubkey, kind FROM events WHERE id IN (");
        let mut list = qb.separated(", ");
        for ev in chunk {
            list.push_bind(ev.id.as_slice());
        }
        qb.push(")");
        known.extend(
            qb.build_query_as::<(Vec<u8>, Vec<u8>, i32)>()
                .fetch_all(&mut *conn)
                .await?,
        );
        let mut qb: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("SELECT id, pubkey FROM deleted_ids WHERE id IN (");
        let mut list = qb.separated(", ");
        for ev in chunk {
            list.push_bind(ev.id.as_slice());
        }
        qb.push(")");
        tombstones.extend(
            qb.build_query_as::<(Vec<u8>, Vec<u8>)>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    let mut state = BatchState::new(known, tombstones);

    let mut outcomes = Vec::with_capacity(prepared.len());
    let mut pending: Vec<&PreparedEvent> = Vec::new();
    for ev in prepared {
        if ev.is_plain() {
            let outcome = state.decide_plain(ev);
            if outcome == SaveOutcome::Stored {
                pending.push(ev);
            }
            outcomes.push(outcome);
        } else {
            insert_plain(conn, &mut pending).await?;
            let outcome = save_one(conn, ev).await?;
            if outcome == SaveOutcome::Stored {
                state.record_stored(ev);
            }
            outcomes.push(outcome);
        }
    }
    insert_plain(conn, &mut pending).await?;
    Ok(outcomes)
}

/// Bulk-insert events already decided `Stored`, with their tags.
async fn insert_plain(
    conn: &mut SqliteConnection,
    pending: &mut Vec<&PreparedEvent>,
) -> Result<(), sqlx::Error> {
    for chunk in pending.chunks(EVENT_CHUNK) {
        let mut qb: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO events (id, pubkey, created_at, kind, d_tag, expires_at, json) ",
        );
        qb.push_values(chunk, |mut row, ev| {
            row.push_bind(ev.id.as_slice())
                .push_bind(ev.pubkey.as_slice())
                .push_bind(ev.created_at)
                .push_bind(ev.kind)
                .push_bind(ev.d_tag.as_deref())
                .push_bind(ev.expires_at)
                .push_bind(ev.json.as_str());
        });
        // RETURNING order is unspecified, so map seqs back by id.
        qb.push(" RETURNING id, seq");
        let seqs: std::collections::HashMap<Vec<u8>, i64> = qb
            .build_query_as::<(Vec<u8>, i64)>()
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let mut rows = Vec::new();
        for ev in chunk {
            let seq = *seqs
                .get(&ev.id)
                .ok_or_else(|| sqlx::Error::Protocol("inserted event has no seq".into()))?;
            rows.extend(ev.tags.iter().map(|(name, value)| (seq, name, value, ev)));
        }
        for rows in rows.chunks(TAG_INSERT_CHUNK) {
            let mut qb: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("INSERT INTO tags (event_seq, name, value, created_at, kind) ");
            qb.push_values(rows, |mut row, (seq, name, value, ev)| {
                row.push_bind(*seq)
                    .push_bind(name.as_str())
                    .push_bind(value.as_slice())
                    .push_bind(ev.created_at)
                    .push_bind(ev.kind);
            });
            qb.build().execute(&mut *conn).await?;
        }
    }
    pending.clear();
    Ok(())
}

async fn save_one(
    conn: &mut SqliteConnection,
    ev: &PreparedEvent,
) -> Result<SaveOutcome, sqlx::Error> {
    let (duplicate, tombstoned): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM events WHERE id = ?), \
         EXISTS (SELECT 1 FROM deleted_ids WHERE id = ? AND pubkey = ?)",
    )
    .bind(&ev.id)
    .bind(&ev.id)
    .bind(&ev.pubkey)
    .fetch_one(&mut *conn)
    .await?;
    if duplicate {
        return Ok(SaveOutcome::Duplicate);
    }
    if tombstoned && !ev.is_deletion() {
        return Ok(SaveOutcome::Deleted);
    }

    if let Some(d_tag) = &ev.d_tag {
        let deleted_up_to: Option<i64> = sqlx::query_scalar(
            "SELECT deleted_up_to FROM deleted_coords WHERE pubkey = ? AND kind = ? AND d_tag = ?",
        )
        .bind(&ev.pubkey)
        .bind(ev.kind)
        .bind(d_tag)
        .fetch_optional(&mut *conn)
        .await?;
        if deleted_up_to.is_some_and(|up_to| up_to >= ev.created_at) {
            return Ok(SaveOutcome::Deleted);
        }
        let current: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, created_at, id FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ?",
        )
        .bind(&ev.pubkey)
        .bind(ev.kind)
        .bind(d_tag)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((seq, created_at, id)) = current {
            if created_at > ev.created_at || (created_at == ev.created_at && id < ev.id) {
                return Ok(SaveOutcome::Superseded);
            }
            delete_seqs(conn, &[seq]).await?;
        }
    }

    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, pubkey, created_at, kind, d_tag, expires_at, json) \
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(&ev.id)
    .bind(&ev.pubkey)
    .bind(ev.created_at)
    .bind(ev.kind)
    .bind(&ev.d_tag)
    .bind(ev.expires_at)
    .bind(&ev.json)
    .fetch_one(&mut *conn)
    .await?;

    for chunk in ev.tags.chunks(TAG_INSERT_CHUNK) {
        let mut qb: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("INSERT INTO tags (event_seq, name, value, created_at, kind) ");
        qb.push_values(chunk, |mut row, (name, value)| {
            row.push_bind(seq)
                .push_bind(name.as_str())
                .push_bind(value.as_slice())
                .push_bind(ev.created_at)
                .push_bind(ev.kind);
        });
        qb.build().execute(&mut *conn).await?;
    }

    if ev.is_deletion() {
        apply_deletion(conn, ev).await?;
    }
    Ok(SaveOutcome::Stored)
}

/// NIP-09: remove the deleter's own events named by `e` and `a` tags and
/// remember them, so they cannot be stored again.
async fn apply_deletion(
    conn: &mut SqliteConnection,
    ev: &PreparedEvent,
) -> Result<(), sqlx::Error> {
    for id in &ev.deletes_ids {
        // Deleting a deletion request has no effect (NIP-09).
        let seqs: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM events WHERE id = ? AND pubkey = ? AND kind <> 5 RETURNING seq",
        )
        .bind(id)
        .bind(&ev.pubkey)
        .fetch_all(&mut *conn)
        .await?;
        delete_tags(conn, &seqs).await?;
        sqlx::query("INSERT INTO deleted_ids (id, pubkey) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(&ev.pubkey)
            .execute(&mut *conn)
            .await?;
    }
    for (kind, d_tag) in &ev.deletes_coords {
        let seqs: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ? AND created_at <= ? \
             RETURNING seq",
        )
        .bind(&ev.pubkey)
        .bind(kind)
        .bind(d_tag)
        .bind(ev.created_at)
        .fetch_all(&mut *conn)
        .await?;
        delete_tags(conn, &seqs).await?;
        sqlx::query(
            "INSERT INTO deleted_coords (pubkey, kind, d_tag, deleted_up_to) VALUES (?, ?, ?, ?) \
             ON CONFLICT (pubkey, kind, d_tag) \
             DO UPDATE SET deleted_up_to = max(deleted_up_to, excluded.deleted_up_to)",
        )
        .bind(&ev.pubkey)
        .bind(kind)
        .bind(d_tag)
        .bind(ev.created_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn delete_seqs(conn: &mut SqliteConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    delete_tags(conn, seqs).await?;
    let mut qb: QueryBuilder<'_, Sqlite> = QueryBuilder::new("DELETE FROM events WHERE seq IN (");
    let mut list = qb.separated(", ");
    for seq in seqs {
        list.push_bind(*seq);
    }
    qb.push(")");
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

async fn delete_tags(conn: &mut SqliteConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new("DELETE FROM tags WHERE event_seq IN (");
    let mut list = qb.separated(", ");
    for seq in seqs {
        list.push_bind(*seq);
    }
    qb.push(")");
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn save_batch(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let prepared: Vec<PreparedEvent> = events.iter().map(PreparedEvent::new).collect();
        let mut tx = self.write.begin().await?;
        let outcomes = save_all(&mut tx, &prepared).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn query(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(plan) = FilterPlan::new(filter, ctx.max_limit) else {
            return Ok(Vec::new());
        };
        if plan.limit == 0 {
            return Ok(Vec::new());
        }
        let vis = Visibility::new(ctx);
        let mut qb: QueryBuilder<'_, Sqlite> = QueryBuilder::new("");
        push_filter_select(&mut qb, &plan, &vis, Select::Rows);
        let rows: Vec<(Vec<u8>, i64, i64, String)> =
            qb.build_query_as().fetch_all(&self.read).await?;
        rows.into_iter()
            .map(|(id, created_at, kind, json)| {
                Ok(StoredEvent {
                    id: id_array(id)?,
                    created_at: u64::try_from(created_at).unwrap_or_default(),
                    kind: u16::try_from(kind).unwrap_or_default(),
                    json,
                })
            })
            .collect()
    }

    async fn count(&self, filters: &[Filter], ctx: &QueryContext) -> Result<u64, StoreError> {
        let plans: Vec<FilterPlan> = filters
            .iter()
            .filter_map(|f| FilterPlan::new(f, ctx.max_limit))
            .collect();
        let vis = Visibility::new(ctx);
        let Some(mut qb) = count_query::<Sqlite>(&plans, &vis) else {
            return Ok(0);
        };
        let n: i64 = qb.build_query_scalar().fetch_one(&self.read).await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let now = super::common::to_i64(now);
        let mut purged = 0u64;
        loop {
            let mut tx = self.write.begin().await?;
            let seqs: Vec<i64> =
                sqlx::query_scalar("SELECT seq FROM events WHERE expires_at <= ? LIMIT ?")
                    .bind(now)
                    .bind(PURGE_CHUNK as i64)
                    .fetch_all(&mut *tx)
                    .await?;
            delete_seqs(&mut tx, &seqs).await?;
            tx.commit().await?;
            purged += seqs.len() as u64;
            if seqs.len() < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    fn database(&self) -> Option<super::Database> {
        Some(super::Database::Sqlite(self.write.clone()))
    }

    async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}
