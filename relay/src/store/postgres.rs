//! PostgreSQL backend, chosen with `database_url = "postgres://…"`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use nostr::{Event, Filter};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Postgres;

use super::common::{BatchState, PreparedEvent};
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
        // Other parts of the node (identity) run their own migrations here, recorded in
        // the same `_sqlx_migrations`: ignore their versions, which this set does not know.
        let mut migrator = sqlx::migrate!("../migrations/postgres");
        migrator.set_ignore_missing(true).run(&pool).await?;
        Ok(Self { pool })
    }
}

/// What the database already knows about the batch's ids: one `= ANY($1)`
/// lookup each for stored events and tombstones.
async fn lookup_batch(
    conn: &mut PgConnection,
    prepared: &[PreparedEvent],
) -> Result<BatchState, sqlx::Error> {
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
    Ok(BatchState::new(known, tombstones))
}

/// Serialise write transactions: one advisory lock for every writer, so
/// replacement and deletion checks never race, even with several nodes on
/// one database.
async fn lock_writes(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

super::common::backend_sql!(Postgres, PgConnection, greatest = "GREATEST", kind = i32);

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
        Ok(save_batch_on(&self.pool, events).await?)
    }

    async fn query(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(query_events(&self.pool, filter, ctx).await?)
    }

    async fn count(&self, filters: &[Filter], ctx: &QueryContext) -> Result<u64, StoreError> {
        Ok(count_events(&self.pool, filters, ctx).await?)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        Ok(purge_expired_on(&self.pool, now).await?)
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
