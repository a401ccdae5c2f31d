//! PostgreSQL backend, chosen with `database_url = "postgres://…"`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use nostr::{Event, Filter};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};

use super::common::{
    count_query, id_array, push_filter_select, to_i64, BatchState, FilterPlan, PreparedEvent,
    Select, Visibility,
};
use super::{QueryContext, SaveOutcome, Store, StoreError, StoredEvent};

/// Connections in the pool.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How long a query waits for a connection before failing. Kept short so that
/// while the database is down, clients get a prompt `error:` instead of a hang;
/// the pool reconnects by itself once the server is back.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Advisory lock key that serialises `save_batch` transactions, so replacement
/// and deletion checks never race, even with several nodes on one database.
const WRITE_LOCK_KEY: i64 = 0x6361_6972_6e00_0001;

/// Rows per multi-row tag INSERT (5 bound values each; Postgres allows 65,535).
const TAG_INSERT_CHUNK: usize = 1000;

/// Rows per multi-row event INSERT (7 bound values each).
const EVENT_CHUNK: usize = 500;

/// Expired events removed per purge transaction.
const PURGE_CHUNK: i64 = 1000;

/// Event store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connect to `postgres://…` and run the embedded migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

/// Apply a batch in order inside the caller's transaction. Plain events are
/// decided by [`BatchState`] and inserted in bulk; the rest (replaceable,
/// addressable, deletions) go one by one after pending inserts are flushed,
/// so they see everything before them.
async fn save_all(
    conn: &mut PgConnection,
    prepared: &[PreparedEvent],
) -> Result<Vec<SaveOutcome>, sqlx::Error> {
    let ids: Vec<&[u8]> = prepared.iter().map(|ev| ev.id.as_slice()).collect();
    let known: Vec<(Vec<u8>, Vec<u8>, i32)> =
        sqlx::query_as("SELECT id, pubkey, kind FROM events WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    let tombstones: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT id, pubkey FROM deleted_ids WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
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
    conn: &mut PgConnection,
    pending: &mut Vec<&PreparedEvent>,
) -> Result<(), sqlx::Error> {
    for chunk in pending.chunks(EVENT_CHUNK) {
        let mut qb: QueryBuilder<'_, Postgres> = QueryBuilder::new(
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
            let mut qb: QueryBuilder<'_, Postgres> =
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

async fn save_one(conn: &mut PgConnection, ev: &PreparedEvent) -> Result<SaveOutcome, sqlx::Error> {
    let (duplicate, tombstoned): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM events WHERE id = $1), \
         EXISTS (SELECT 1 FROM deleted_ids WHERE id = $1 AND pubkey = $2)",
    )
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
            "SELECT deleted_up_to FROM deleted_coords \
             WHERE pubkey = $1 AND kind = $2 AND d_tag = $3",
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
            "SELECT seq, created_at, id FROM events WHERE pubkey = $1 AND kind = $2 AND d_tag = $3",
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
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
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
        let mut qb: QueryBuilder<'_, Postgres> =
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
async fn apply_deletion(conn: &mut PgConnection, ev: &PreparedEvent) -> Result<(), sqlx::Error> {
    for id in &ev.deletes_ids {
        // Deleting a deletion request has no effect (NIP-09).
        let seqs: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM events WHERE id = $1 AND pubkey = $2 AND kind <> 5 RETURNING seq",
        )
        .bind(id)
        .bind(&ev.pubkey)
        .fetch_all(&mut *conn)
        .await?;
        delete_tags(conn, &seqs).await?;
        sqlx::query("INSERT INTO deleted_ids (id, pubkey) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(&ev.pubkey)
            .execute(&mut *conn)
            .await?;
    }
    for (kind, d_tag) in &ev.deletes_coords {
        let seqs: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM events \
             WHERE pubkey = $1 AND kind = $2 AND d_tag = $3 AND created_at <= $4 RETURNING seq",
        )
        .bind(&ev.pubkey)
        .bind(kind)
        .bind(d_tag)
        .bind(ev.created_at)
        .fetch_all(&mut *conn)
        .await?;
        delete_tags(conn, &seqs).await?;
        sqlx::query(
            "INSERT INTO deleted_coords (pubkey, kind, d_tag, deleted_up_to) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (pubkey, kind, d_tag) DO UPDATE \
             SET deleted_up_to = GREATEST(deleted_coords.deleted_up_to, excluded.deleted_up_to)",
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

async fn delete_seqs(conn: &mut PgConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    delete_tags(conn, seqs).await?;
    sqlx::query("DELETE FROM events WHERE seq = ANY($1)")
        .bind(seqs)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn delete_tags(conn: &mut PgConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM tags WHERE event_seq = ANY($1)")
        .bind(seqs)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn save_batch(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let prepared: Vec<PreparedEvent> = events.iter().map(PreparedEvent::new).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
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
        let mut qb: QueryBuilder<'_, Postgres> = QueryBuilder::new("");
        push_filter_select(&mut qb, &plan, &vis, Select::Rows);
        let rows: Vec<(Vec<u8>, i64, i32, String)> =
            qb.build_query_as().fetch_all(&self.pool).await?;
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
        let Some(mut qb) = count_query::<Postgres>(&plans, &vis) else {
            return Ok(0);
        };
        let n: i64 = qb.build_query_scalar().fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let now = to_i64(now);
        let mut purged = 0u64;
        loop {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            let seqs: Vec<i64> =
                sqlx::query_scalar("SELECT seq FROM events WHERE expires_at <= $1 LIMIT $2")
                    .bind(now)
                    .bind(PURGE_CHUNK)
                    .fetch_all(&mut *tx)
                    .await?;
            delete_seqs(&mut tx, &seqs).await?;
            tx.commit().await?;
            purged += seqs.len() as u64;
            if (seqs.len() as i64) < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn database(&self) -> Option<super::Database> {
        Some(super::Database::Postgres(self.pool.clone()))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
