//! Event storage: the [`Store`] trait, its SQLite and Postgres backends, and
//! the group-commit [`Writer`] that batches writes without giving up durability.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use nostr::{Event, Filter, PublicKey};

mod common;
pub mod postgres;
mod retention;
pub mod sqlite;
mod writer;

pub(crate) use common::push_in;
pub use writer::{
    write_cost, Writer, WriterLimits, DEFAULT_HEAVY_COST, DEFAULT_HEAVY_QUEUE_CAPACITY,
    DEFAULT_IDLE_AFTER, DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH_COST, DEFAULT_MAX_HEAVY_BATCH_COST,
    DEFAULT_QUEUE_CAPACITY,
};

/// An event that another process sharing the database stored (or relayed,
/// if ephemeral), for this process's live fan-out (see
/// [`Store::remote_events`]).
#[derive(Debug, Clone)]
pub struct RemoteEvent {
    /// The event's JSON as stored.
    pub json: String,
    /// When the sending process announced it (its clock, milliseconds since
    /// the Unix epoch), for the fan-out lag metric; `None` for an event read
    /// in a catch-up or announced without a time.
    pub sent_at_ms: Option<u64>,
}

/// What happened to one event handed to [`Store::save_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Newly and durably committed (for kind 5, its deletions were applied too).
    Stored,
    /// An event with this id is already stored.
    Duplicate,
    /// The author deleted this event (NIP-09, by `e` or `a`); it may not come back.
    Deleted,
    /// Replaceable or addressable event older than the stored version
    /// (newer `created_at`, or same `created_at` and lower id, wins).
    Superseded,
}

/// One stored event as the relay sends it out.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Event id (hex is `json`'s `id`).
    pub id: [u8; 32],
    /// Unix seconds.
    pub created_at: u64,
    /// Kind number.
    pub kind: u16,
    /// The event's JSON as stored (nostr's `as_json` of the saved event:
    /// same fields and values as received, so id and signature verify).
    pub json: String,
}

/// One row of [`Store::query_rows`]: an event's sort key, and its JSON
/// unless the caller's read-ahead budget was spent (then it is fetched later
/// with [`Store::fetch_json`], by `seq`).
#[derive(Debug, Clone)]
pub struct QueryRow {
    /// The store's own key for the event (what [`Store::fetch_json`] takes).
    pub seq: i64,
    /// Event id.
    pub id: [u8; 32],
    /// Unix seconds.
    pub created_at: u64,
    /// Kind number.
    pub kind: u16,
    /// Length of the event's JSON in bytes.
    pub json_len: usize,
    /// The JSON, while within the read-ahead budget.
    pub json: Option<String>,
}

/// One record of a NIP-77 (negentropy) reconciliation, from
/// [`Store::sync_items`]: what the protocol compares (`created_at`, `id`),
/// and what the relay needs to re-check a private event before it counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncItem {
    /// The store's own key for the event (what [`Store::fetch_json`] takes).
    pub seq: i64,
    /// Event id.
    pub id: [u8; 32],
    /// Unix seconds.
    pub created_at: u64,
    /// Kind number.
    pub kind: u16,
}

/// What one REQ or COUNT may cost the database.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryBudget {
    /// Statements still running at this instant are stopped and the call
    /// fails with [`StoreError::Timeout`] (`None`: no bound). SQLite checks
    /// it inside the statement (a progress handler), Postgres as
    /// `statement_timeout`.
    pub deadline: Option<Instant>,
}

impl QueryBudget {
    /// A budget of `ms` milliseconds from now.
    pub fn millis(ms: u64) -> Self {
        Self {
            deadline: Some(Instant::now() + std::time::Duration::from_millis(ms)),
        }
    }
}

/// Most values one statement may bind. SQLite accepts 32,766 and Postgres
/// 65,535; queries that would need more fail with
/// [`StoreError::TooManyValues`] before any SQL is run.
pub const MAX_BOUND_VALUES: usize = 32_000;

/// When the [`Writer`] hands the store a moment for [`Store::maintain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterPause {
    /// A batch has just been committed and answered; the next one waits.
    BetweenBatches,
    /// Nothing has been queued for [`DEFAULT_IDLE_AFTER`] (and again each
    /// time that passes while it stays so).
    Idle,
}

/// Who is asking, and when: applied inside the query itself.
#[derive(Debug, Clone, Default)]
pub struct QueryContext {
    /// Pubkeys authenticated (NIP-42) on the asking connection. Kind 1059
    /// events are returned only when one of them is `p`-tagged; kind 4 when
    /// one of them is `p`-tagged or is the author. Empty: no private events.
    pub viewers: Vec<PublicKey>,
    /// Unix seconds; events whose NIP-40 expiration is `<= now` are hidden.
    pub now: u64,
    /// Upper bound on rows returned per filter, applied on top of the
    /// filter's own `limit` (the relay's `max_limit`). A filter without
    /// `limit` gets this many.
    pub max_limit: usize,
}

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Running the embedded migrations failed.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database URL is not one Cairn understands. Holds only the URL's
    /// scheme, since the rest may carry a password.
    #[error("unsupported database url scheme {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The group-commit writer has shut down.
    #[error("the writer has shut down")]
    WriterClosed,
    /// The group-commit batch this event was part of failed; every caller in
    /// the batch shares the one underlying error.
    #[error("{0}")]
    Batch(#[source] Arc<StoreError>),
    /// A query would bind more values than [`MAX_BOUND_VALUES`].
    #[error("query lists {values} values (max {max})")]
    TooManyValues {
        /// Values it would bind.
        values: usize,
        /// The most a statement may bind.
        max: usize,
    },
    /// A query ran past its [`QueryBudget`] and was stopped.
    #[error("query ran past its time budget")]
    Timeout,
    /// A NIP-77 reconciliation would cover more events than it may
    /// ([`Store::sync_items`]'s `max_items`).
    #[error("more than {max} events match")]
    TooManyItems {
        /// The most it may cover.
        max: usize,
    },
    /// Committed writes could not be synced to disk: they may not survive
    /// a power loss, so their callers are told they failed.
    #[error("cannot sync the database to disk: {0}")]
    Sync(#[source] std::io::Error),
    /// A backend returned a different number of outcomes than events
    /// (a bug in the backend; nothing can be assumed about the batch).
    #[error("store returned the wrong number of outcomes")]
    OutcomeMismatch,
}

impl StoreError {
    /// The error behind a shared [`StoreError::Batch`], or `self`.
    pub fn root(&self) -> &StoreError {
        match self {
            StoreError::Batch(inner) => inner.root(),
            other => other,
        }
    }
}

/// Event storage. Implementations must make `save_batch` atomic and durable:
/// when it returns `Ok`, every `Stored` outcome survives a crash.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Commit a batch of already-validated, non-ephemeral events in one
    /// transaction, returning one outcome per event in input order. Events
    /// are applied in order, so later ones see earlier ones (a duplicate, a
    /// replacement, a deletion). On `Err` nothing from the batch is stored.
    /// Applies NIP-01 replacement, NIP-09 deletions (kind 5, by `e` and `a`,
    /// author only, recorded so that deleted events cannot be re-published)
    /// and indexes single-letter tags and NIP-40 expiration.
    async fn save_batch(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, StoreError>;

    /// [`Store::save_batch`], except that it may return once the batch is
    /// committed (visible to readers, atomic) but before it is on disk; it
    /// becomes durable at the end of the next [`Store::sync_commits`]. For
    /// the group-commit [`Writer`], which answers no caller before that, so
    /// the next batch can be written while this one's sync runs. The
    /// default is `save_batch`, durable at once.
    async fn save_batch_unsynced(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, StoreError> {
        self.save_batch(events).await
    }

    /// Make every batch that [`Store::save_batch_unsynced`] returned before
    /// this call durable. The default does nothing (nothing is deferred).
    async fn sync_commits(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Events matching one filter, newest first (ties: lowest id first),
    /// at most `min(filter.limit, ctx.max_limit)`, with privacy and
    /// expiration applied as [`QueryContext`] describes.
    ///
    /// Matching agrees with [`Filter::match_event`]: `since`/`until` are
    /// inclusive, empty `ids`/`authors`/`kinds` sets constrain nothing, an
    /// empty `#x` set matches nothing, `#x` values are matched exactly (OR
    /// within a letter, AND across letters, first tag value only). A filter
    /// with NIP-50 `search` matches nothing (unsupported), as does `limit: 0`.
    /// Every value is a bound parameter: a filter that would bind more than
    /// [`MAX_BOUND_VALUES`] fails with [`StoreError::TooManyValues`] before
    /// any SQL runs (the relay's own limits refuse it earlier).
    async fn query(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Number of distinct events matching any of `filters` (NIP-45), with
    /// the same privacy and expiration rules as [`Store::query`] (no limit).
    async fn count(&self, filters: &[Filter], ctx: &QueryContext) -> Result<u64, StoreError>;

    /// [`Store::query`] as rows, streamed from the database: the JSON of the
    /// first rows is kept while their total stays within `hold_json` bytes,
    /// later rows carry only their key and length (fetch them with
    /// [`Store::fetch_json`]). Stops with [`StoreError::Timeout`] at the
    /// budget's deadline; dropping the future stops the statement too where
    /// the backend allows it (SQLite). The default (for stores without
    /// either) keeps every JSON and ignores the budget.
    async fn query_rows(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
        _budget: QueryBudget,
        _hold_json: usize,
    ) -> Result<Vec<QueryRow>, StoreError> {
        Ok(self
            .query(filter, ctx)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, e)| QueryRow {
                seq: i64::try_from(i).unwrap_or(i64::MAX),
                id: e.id,
                created_at: e.created_at,
                kind: e.kind,
                json_len: e.json.len(),
                json: Some(e.json),
            })
            .collect())
    }

    /// `(seq, id, json)` of events by `seq` (from [`Store::query_rows`]), in
    /// no particular order; events deleted since are missing. The id is
    /// returned because SQLite may give a deleted event's `seq` to a newer
    /// event (rowids are reused without AUTOINCREMENT): the caller must
    /// check it is the event it listed, or it could send another one (even
    /// someone's gift wrap) under the first one's filter and kind.
    async fn fetch_json(
        &self,
        _seqs: &[i64],
        _budget: QueryBudget,
    ) -> Result<Vec<(i64, Vec<u8>, String)>, StoreError> {
        Ok(Vec::new())
    }

    /// The records a NIP-77 reconciliation over `filter` compares: every
    /// event matching it that `ctx` may see (privacy and expiration exactly
    /// as [`Store::query`]), without reading their JSON. `ctx.max_limit` does
    /// not apply; a filter's own `limit` keeps the newest `limit` (as REQ).
    /// More than `max_items` fails with [`StoreError::TooManyItems`] after
    /// reading at most `max_items + 1` rows; `budget` as [`Store::query_rows`].
    /// In no particular order. The default goes through
    /// [`Store::query_rows`] (which may read the JSON).
    async fn sync_items(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
        budget: QueryBudget,
        max_items: usize,
    ) -> Result<Vec<SyncItem>, StoreError> {
        let ctx = QueryContext {
            max_limit: max_items.saturating_add(1),
            ..ctx.clone()
        };
        let rows = self.query_rows(filter, &ctx, budget, 0).await?;
        if rows.len() > max_items {
            return Err(StoreError::TooManyItems { max: max_items });
        }
        Ok(rows
            .into_iter()
            .map(|row| SyncItem {
                seq: row.seq,
                id: row.id,
                created_at: row.created_at,
                kind: row.kind,
            })
            .collect())
    }

    /// [`Store::count`] within `budget`: [`StoreError::Timeout`] when the
    /// count cannot finish by its deadline. The default ignores the budget.
    async fn count_within(
        &self,
        filters: &[Filter],
        ctx: &QueryContext,
        _budget: QueryBudget,
    ) -> Result<u64, StoreError> {
        self.count(filters, ctx).await
    }

    /// Upkeep of the write path that must not run inside a commit but may
    /// hold up the next one for a moment (SQLite: starting the WAL over; see
    /// `sqlite::wal`). The [`Writer`] calls it between its batches and while
    /// idle, never during a `save_batch` of its own. The default does nothing.
    async fn maintain(&self, _pause: WriterPause) -> Result<(), StoreError> {
        Ok(())
    }

    /// Delete events whose NIP-40 expiration is `<= now`; returns how many.
    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError>;

    /// Delete at most `limit` events matching `selection`, oldest first, in
    /// one transaction (with their tags); returns how many. For retention
    /// (`crate::retention`). The default deletes nothing.
    async fn purge_selected(
        &self,
        _selection: &PurgeSelection,
        _limit: usize,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Bytes of live data in the event database, for a size cap; `None`
    /// when the backend cannot tell cheaply (the default; Postgres, whose
    /// files do not shrink when rows are deleted).
    async fn live_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Stored events per kind, `(kind, count)` by ascending kind, every
    /// stored event counted (private ones too: numbers, never content), for
    /// the owner's relay page. Read on a reader connection, never the write
    /// connection, and stopped at `budget`'s deadline
    /// ([`StoreError::Timeout`]); it walks the `(kind, created_at)` index,
    /// so callers should cache it rather than ask on every page view.
    /// `None` (the default) for a store that cannot tell.
    async fn kind_counts(
        &self,
        _budget: QueryBudget,
    ) -> Result<Option<Vec<(u16, u64)>>, StoreError> {
        Ok(None)
    }

    /// A cheap round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Close connections (after the writer has drained).
    async fn close(&self);

    /// Start hearing of the events that *other* processes sharing this
    /// database store or relay, for this process's live fan-out: each once,
    /// none of this store's own, and none missed across a lost connection
    /// (retried after `retry`, doubling). Ends with `shutdown` or when the
    /// receiver is dropped. `None` (the default) when the database cannot
    /// be shared (SQLite). Must be called inside a Tokio runtime.
    fn remote_events(
        &self,
        _retry: std::time::Duration,
        _shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::sync::mpsc::Receiver<RemoteEvent>> {
        None
    }

    /// Tell the other processes sharing this database about an ephemeral
    /// event (fanned out, never stored) so that their subscribers get it
    /// too. The default, for a store nobody shares, does nothing.
    async fn relay_ephemeral(&self, _event: &Event) -> Result<(), StoreError> {
        Ok(())
    }

    /// The database behind this store, for other parts of the node that keep
    /// their own tables in it (and run their own migrations on it).
    /// `None` for stores without one.
    fn database(&self) -> Option<Database> {
        None
    }
}

/// Which events [`Store::purge_selected`] deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeSelection {
    /// Inclusive kind ranges; an event must be in one of them (none: no event).
    pub kinds: Vec<(u16, u16)>,
    /// Kinds left alone even inside `kinds`.
    pub except: Vec<u16>,
    /// Only events with `created_at` before this (Unix seconds); `None`: any.
    pub created_before: Option<u64>,
}

/// A connection pool to the relay's database (see [`Store::database`]).
#[derive(Debug, Clone)]
pub enum Database {
    /// SQLite: the store's single write connection, so that other writers
    /// queue behind the relay's instead of failing with `SQLITE_BUSY`.
    Sqlite(sqlx::SqlitePool),
    /// Postgres.
    Postgres(sqlx::PgPool),
}

/// Open the store named by `database_url` and run its migrations.
///
/// `sqlite://PATH` (created if missing, WAL, `synchronous=FULL`) or
/// `postgres://…` / `postgresql://…`.
pub async fn open(database_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(database_url).await?))
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(database_url).await?))
    } else {
        let scheme = database_url.split(':').next().unwrap_or_default();
        Err(StoreError::UnsupportedUrl(scheme.to_owned()))
    }
}
