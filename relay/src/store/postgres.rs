//! PostgreSQL backend, chosen with `database_url = "postgres://…"`.
//!
//! Several processes may share one database: each announces the events it
//! stores (and the ephemeral events it relays) with `NOTIFY` and hears the
//! others' on a listener connection, so that live subscribers on every
//! process get every event once ([`notify`] has the rules, [`listen`] the
//! connection).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nostr::{Event, Filter};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Postgres;

use super::common::{budget_error, check_bound_values, BatchState, PreparedEvent};
use super::{
    QueryBudget, QueryContext, QueryRow, RemoteEvent, SaveOutcome, Store, StoreError, StoredEvent,
};

mod listen;
pub mod notify;

use notify::{Origin, OwnSeqs};

/// Events from the listener waiting for the relay's fan-out; when full, the
/// listener waits (and Postgres queues the notifications meanwhile).
const REMOTE_QUEUE: usize = 1_024;

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
    /// This store among the processes sharing the database.
    origin: Origin,
    /// Seqs this store committed that its listener has not passed yet.
    own: Arc<OwnSeqs>,
    /// The highest seq when the store opened: the listener delivers what
    /// other processes store after it (nobody here can be subscribed to
    /// anything earlier).
    opened_at: i64,
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
        let opened_at: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&pool)
            .await?;
        Ok(Self {
            pool,
            origin: Origin::random(),
            own: Arc::default(),
            opened_at,
        })
    }

    /// `Store::save_batch`, announcing each stored event to the other
    /// processes inside the same transaction (see [`notify`]).
    async fn save_and_notify(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, sqlx::Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let prepared: Vec<PreparedEvent> = events.iter().map(PreparedEvent::new).collect();
        let mut tx = self.pool.begin().await?;
        lock_writes(&mut tx).await?;
        let outcomes = save_all(&mut tx, &prepared).await?;
        let stored: HashMap<&[u8], &PreparedEvent> = prepared
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == SaveOutcome::Stored)
            .map(|(ev, _)| (ev.id.as_slice(), ev))
            .collect();
        if !stored.is_empty() {
            let ids: Vec<&[u8]> = stored.keys().copied().collect();
            // Events deleted again later in the batch are not there: nothing
            // to announce for them.
            let seqs: Vec<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT seq, id FROM events WHERE id = ANY($1) ORDER BY seq")
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await?;
            let sent_at_ms = crate::relay::unix_millis();
            let payloads: Vec<String> = seqs
                .iter()
                .filter_map(|(seq, id)| {
                    let ev = stored.get(id.as_slice())?;
                    Some(notify::payload_for_stored(
                        self.origin,
                        *seq,
                        &hex::encode(id),
                        &ev.json,
                        sent_at_ms,
                    ))
                })
                .collect();
            // Recorded before the commit, so that no notification (and no
            // catch-up) can see these seqs before they are known as ours.
            self.own.record(seqs.iter().map(|(seq, _)| *seq));
            // In seq order, so that listeners see seqs rising (notifications
            // of one transaction arrive in the order sent).
            sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i")
                .bind(notify::CHANNEL)
                .bind(&payloads)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// What the database already knows about the batch's ids: the stored ones
/// (one `= ANY($1)` lookup), then the tombstones of the others.
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
    let stored: std::collections::HashSet<&[u8]> =
        known.iter().map(|(id, _, _)| id.as_slice()).collect();
    let unknown: Vec<&[u8]> = ids
        .iter()
        .copied()
        .filter(|id| !stored.contains(id))
        .collect();
    let tombstones = tombstones_of(conn, &unknown).await?;
    Ok(BatchState::new(known, tombstones))
}

/// Serialise write transactions: one advisory lock for every writer, so
/// replacement and deletion checks never race, even with several nodes on
/// one database.
pub(super) async fn lock_writes(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

super::common::backend_sql!(Postgres, PgConnection, greatest = "GREATEST", kind = i32);

pub(super) async fn delete_seqs(conn: &mut PgConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    keep_tombstones(conn, seqs).await?;
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

/// Run `$body` (an expression over `$conn: &mut PgConnection`) within
/// `$budget`: without a deadline on a pooled connection; with one inside a
/// read transaction whose `statement_timeout` is the time left, so the
/// server itself stops the statement (also when the client has gone: a
/// dropped query's statement runs at most until then). Errors map through
/// [`budget_error`].
macro_rules! budgeted {
    ($store:expr, $budget:expr, |$conn:ident| $body:expr) => {{
        match $budget.deadline {
            None => {
                let mut pooled = $store.pool.acquire().await?;
                let $conn: &mut PgConnection = &mut pooled;
                $body.await.map_err(budget_error)
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let ms = left.as_millis().clamp(1, i32::MAX as u128);
                let mut tx = $store.pool.begin().await?;
                // A number formatted here, not client input.
                sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
                    .execute(&mut *tx)
                    .await?;
                let result = {
                    let $conn: &mut PgConnection = &mut tx;
                    $body.await.map_err(budget_error)?
                };
                tx.commit().await?;
                Ok(result)
            }
        }
    }};
}

/// `sync_items_on` within `budget`, as [`budgeted!`] does for the others
/// (its body returns `StoreError` already, so it is spelled out here).
async fn budgeted_items(
    store: &PostgresStore,
    budget: QueryBudget,
    filter: &Filter,
    ctx: &QueryContext,
    max_items: usize,
) -> Result<Vec<super::SyncItem>, StoreError> {
    match budget.deadline {
        None => {
            let mut pooled = store.pool.acquire().await?;
            sync_items_on(&mut pooled, filter, ctx, max_items).await
        }
        Some(deadline) => {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = left.as_millis().clamp(1, i32::MAX as u128);
            let mut tx = store.pool.begin().await?;
            // A number formatted here, not client input.
            sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
                .execute(&mut *tx)
                .await?;
            let items = sync_items_on(&mut tx, filter, ctx, max_items).await?;
            tx.commit().await?;
            Ok(items)
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn save_batch(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, StoreError> {
        Ok(self.save_and_notify(events).await?)
    }

    fn remote_events(
        &self,
        retry: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::sync::mpsc::Receiver<RemoteEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(REMOTE_QUEUE);
        tokio::spawn(listen::run(
            self.pool.clone(),
            self.origin,
            Arc::clone(&self.own),
            tx,
            retry,
            self.opened_at,
            shutdown,
        ));
        Some(rx)
    }

    async fn relay_ephemeral(&self, event: &Event) -> Result<(), StoreError> {
        use nostr::JsonUtil;
        let json = event.as_json();
        let Some(payload) =
            notify::payload_for_ephemeral(self.origin, &json, crate::relay::unix_millis())
        else {
            tracing::debug!(
                bytes = json.len(),
                "ephemeral event too big for NOTIFY: delivered on this process only"
            );
            metrics::counter!(crate::metrics::CLUSTER_EPHEMERAL_TOO_BIG).increment(1);
            return Ok(());
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(notify::CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
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
        budgeted!(self, budget, |conn| query_rows_on(
            conn, filter, ctx, hold_json
        ))
    }

    async fn sync_items(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
        budget: QueryBudget,
        max_items: usize,
    ) -> Result<Vec<super::SyncItem>, StoreError> {
        check_bound_values([filter], ctx)?;
        budgeted_items(self, budget, filter, ctx, max_items).await
    }

    async fn fetch_json(
        &self,
        seqs: &[i64],
        budget: QueryBudget,
    ) -> Result<Vec<(i64, Vec<u8>, String)>, StoreError> {
        budgeted!(self, budget, |conn| fetch_json_on(conn, seqs))
    }

    async fn count_within(
        &self,
        filters: &[Filter],
        ctx: &QueryContext,
        budget: QueryBudget,
    ) -> Result<u64, StoreError> {
        check_bound_values(filters, ctx)?;
        budgeted!(self, budget, |conn| count_events(conn, filters, ctx))
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        Ok(purge_expired_on(&self.pool, now).await?)
    }

    async fn purge_selected(
        &self,
        selection: &super::PurgeSelection,
        limit: usize,
    ) -> Result<u64, StoreError> {
        Ok(super::retention::purge_postgres(&self.pool, selection, limit).await?)
    }

    async fn kind_counts(
        &self,
        budget: QueryBudget,
    ) -> Result<Option<Vec<(u16, u64)>>, StoreError> {
        let rows: Vec<(i32, i64)> = budgeted!(self, budget, |conn| sqlx::query_as(
            "SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind"
        )
        .fetch_all(&mut *conn))?;
        Ok(Some(
            rows.into_iter()
                .map(|(kind, n)| (kind as u16, n.max(0) as u64))
                .collect(),
        ))
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
