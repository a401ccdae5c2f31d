//! The node's own tables in the relay's database (the outbox's, the owner's
//! web sessions): one migration set, `node/migrations/{sqlite,postgres}/`,
//! embedded at build time (see `build.rs`).
//!
//! Invariants: the node's versions (`20260110…` on) are unique across the
//! relay's (`20260101…`) and identity's (`20260102…`) sets, which share
//! sqlx's `_sqlx_migrations` table; each migrator ignores the others' rows.
//! A released migration is never edited (its checksum is recorded). Running
//! the set again, or from several processes at once, is harmless: sqlx takes
//! a lock (an advisory lock on Postgres) and skips applied versions.

use cairn_relay::store::Database;

/// Creates the node's tables, or brings them up to date.
pub async fn migrate(db: &Database) -> Result<(), sqlx::migrate::MigrateError> {
    // Without `ignore_missing` the relay's and identity's rows in
    // `_sqlx_migrations` would read as applied migrations missing here.
    match db {
        Database::Sqlite(pool) => {
            let mut m = sqlx::migrate!("migrations/sqlite");
            m.set_ignore_missing(true).run(pool).await
        }
        Database::Postgres(pool) => {
            let mut m = sqlx::migrate!("migrations/postgres");
            m.set_ignore_missing(true).run(pool).await
        }
    }
}
