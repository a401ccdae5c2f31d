//! Event storage: the [`Store`] trait, its SQLite and Postgres backends, and
//! the group-commit [`Writer`] that batches writes without giving up durability.

use std::sync::Arc;

use async_trait::async_trait;
use nostr::{Event, Filter, PublicKey};

mod common;
pub mod postgres;
pub mod sqlite;
mod writer;

pub(crate) use common::push_in;
pub use writer::{Writer, DEFAULT_IDLE_AFTER, DEFAULT_MAX_BATCH, DEFAULT_QUEUE_CAPACITY};

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

    /// Events matching one filter, newest first (ties: lowest id first),
    /// at most `min(filter.limit, ctx.max_limit)`, with privacy and
    /// expiration applied as [`QueryContext`] describes.
    ///
    /// Matching agrees with [`Filter::match_event`]: `since`/`until` are
    /// inclusive, empty `ids`/`authors`/`kinds` sets constrain nothing, an
    /// empty `#x` set matches nothing, `#x` values are matched exactly (OR
    /// within a letter, AND across letters, first tag value only). A filter
    /// with NIP-50 `search` matches nothing (unsupported), as does `limit: 0`.
    /// Callers should cap the number of values per filter: every value is a
    /// bound parameter, and SQLite accepts at most 32,766 per statement.
    async fn query(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Number of distinct events matching any of `filters` (NIP-45), with
    /// the same privacy and expiration rules as [`Store::query`] (no limit).
    async fn count(&self, filters: &[Filter], ctx: &QueryContext) -> Result<u64, StoreError>;

    /// Upkeep of the write path that must not run inside a commit but may
    /// hold up the next one for a moment (SQLite: starting the WAL over; see
    /// `sqlite::wal`). The [`Writer`] calls it between its batches and while
    /// idle, never during a `save_batch` of its own. The default does nothing.
    async fn maintain(&self, _pause: WriterPause) -> Result<(), StoreError> {
        Ok(())
    }

    /// Delete events whose NIP-40 expiration is `<= now`; returns how many.
    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError>;

    /// A cheap round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Close connections (after the writer has drained).
    async fn close(&self);

    /// The database behind this store, for other parts of the node that keep
    /// their own tables in it (and run their own migrations on it).
    /// `None` for stores without one.
    fn database(&self) -> Option<Database> {
        None
    }
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
