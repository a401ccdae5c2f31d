//! The web app's tables in the node's database (SQLite or Postgres), so
//! that every `cairn serve` process sharing that database sees the same
//! owner's sessions ([`super::session`]) and the same spent one-time form
//! tokens ([`super::once`]). Created by the node's migrations
//! ([`crate::db`], `20260112000000_web_sessions.sql`).
//!
//! The SQL is written once: both backends take `$N` placeholders and every
//! column is `TEXT` or a 64-bit integer. Keys are hex SHA-256 digests (the
//! callers hash; no session id or form token is ever stored).
//!
//! Invariants:
//! - A token is spent by one `INSERT … ON CONFLICT DO NOTHING` on its
//!   primary key: of two processes (or two requests) spending the same
//!   token at once, the database lets exactly one insert the row, and only
//!   that one is told "spent now".
//! - Signing in trims the table to the newest sessions in the same
//!   transaction as the insert; a sign-out or "sign out everywhere" is one
//!   `DELETE`, seen by every process at its next lookup (a lookup reads the
//!   row each time: nothing is cached per process).

use cairn_relay::store::Database;

/// The node's database, for the web app's tables.
#[derive(Debug, Clone)]
pub(super) struct WebDb(Database);

macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.0 {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

fn to_i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl WebDb {
    /// The web app's tables on `db`, created or brought up to date.
    pub(super) async fn open(db: Database) -> Result<Self, sqlx::migrate::MigrateError> {
        crate::db::migrate(&db).await?;
        Ok(Self(db))
    }

    /// Stores a session (`id_hash`, its `csrf`), deleting the sessions
    /// expired at `now` and then all but the `keep - 1` newest others, in
    /// one transaction.
    pub(super) async fn insert_session(
        &self,
        id_hash: &str,
        csrf: &str,
        started_ms: u64,
        expires_at: u64,
        now: u64,
        keep: usize,
    ) -> Result<(), sqlx::Error> {
        let others = i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
                .bind(to_i(now))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO web_sessions (id_hash, csrf, started_ms, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id_hash)
            .bind(csrf)
            .bind(to_i(started_ms))
            .bind(to_i(expires_at))
            .execute(&mut *tx)
            .await?;
            // The new session is never the one trimmed, whatever the
            // clocks of the processes that opened the others.
            sqlx::query(
                "DELETE FROM web_sessions WHERE id_hash <> $1 AND id_hash NOT IN \
                 (SELECT id_hash FROM web_sessions WHERE id_hash <> $1 \
                  ORDER BY started_ms DESC, id_hash LIMIT $2)",
            )
            .bind(id_hash)
            .bind(others)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }

    /// The CSRF token of session `id_hash` when it is live at `now`. An
    /// expired one is deleted and answers `None`.
    pub(super) async fn session(
        &self,
        id_hash: &str,
        now: u64,
    ) -> Result<Option<String>, sqlx::Error> {
        let row: Option<(String, i64)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT csrf, expires_at FROM web_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .fetch_optional(pool)
                .await?
        });
        match row {
            Some((csrf, expires_at)) if expires_at > to_i(now) => Ok(Some(csrf)),
            Some(_) => {
                self.delete_session(id_hash).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Ends session `id_hash`.
    pub(super) async fn delete_session(&self, id_hash: &str) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Ends every session.
    pub(super) async fn delete_all_sessions(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM web_sessions").execute(pool).await?;
        });
        Ok(())
    }

    /// How many sessions are stored (live or not yet purged).
    #[cfg(test)]
    pub(super) async fn session_count(&self) -> Result<i64, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM web_sessions")
                .fetch_one(pool)
                .await
        })
    }

    /// Spends token `token_hash` at `now`: true when this call spent it,
    /// false when it was spent before. Spent tokens from before
    /// `forget_before` are deleted first.
    pub(super) async fn spend(
        &self,
        token_hash: &str,
        now: u64,
        forget_before: u64,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM web_spent_tokens WHERE spent_at < $1")
                .bind(to_i(forget_before))
                .execute(pool)
                .await?;
            let done = sqlx::query(
                "INSERT INTO web_spent_tokens (token_hash, spent_at) VALUES ($1, $2) \
                 ON CONFLICT (token_hash) DO NOTHING",
            )
            .bind(token_hash)
            .bind(to_i(now))
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// How many spent tokens are remembered.
    #[cfg(test)]
    pub(super) async fn spent_count(&self) -> Result<i64, sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM web_spent_tokens")
                .fetch_one(pool)
                .await
        })
    }
}

/// Test databases for the web app's tables: an SQLite file, and a fresh
/// Postgres database on `CAIRN_TEST_POSTGRES_URL` when it is set.
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// A database that lives as long as this value.
    pub(in crate::web) struct TestDb {
        pub(in crate::web) db: WebDb,
        _dir: Option<tempfile::TempDir>,
        pg: Option<(String, String)>,
    }

    impl TestDb {
        /// A fresh SQLite file.
        pub(in crate::web) async fn sqlite() -> TestDb {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
            let store = cairn_relay::store::open(&url).await.unwrap();
            let db = WebDb::open(store.database().unwrap()).await.unwrap();
            TestDb {
                db,
                _dir: Some(dir),
                pg: None,
            }
        }

        /// A fresh Postgres database, or `None` (with a message) when
        /// `CAIRN_TEST_POSTGRES_URL` is not set.
        pub(in crate::web) async fn postgres() -> Option<TestDb> {
            use sqlx::Connection as _;
            let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
                eprintln!("skipping the Postgres half: CAIRN_TEST_POSTGRES_URL not set");
                return None;
            };
            let mut bytes = [0u8; 6];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            // Digits, hex and underscores only: safe in the statement.
            let name = format!("cairn_web_{}_{}", std::process::id(), hex::encode(bytes));
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let _ = admin.close().await;
            let mut url = url::Url::parse(&admin_url).unwrap();
            url.set_path(&name);
            let store = cairn_relay::store::open(url.as_str()).await.unwrap();
            let db = WebDb::open(store.database().unwrap()).await.unwrap();
            Some(TestDb {
                db,
                _dir: None,
                pg: Some((admin_url, name)),
            })
        }

        /// Drops the Postgres database (SQLite's file goes with the value).
        pub(in crate::web) async fn finish(self) {
            use sqlx::Connection as _;
            let TestDb { db, pg, _dir } = self;
            if let Database::Postgres(pool) = &db.0 {
                pool.close().await;
            }
            drop(db);
            if let Some((admin_url, name)) = pg {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        }
    }

    /// `f` on an SQLite file, then on Postgres when it is configured; each
    /// run bounded by 60 s.
    pub(in crate::web) async fn on_both<F, Fut>(f: F)
    where
        F: Fn(WebDb) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
        let sqlite = TestDb::sqlite().await;
        tokio::time::timeout(LIMIT, f(sqlite.db.clone()))
            .await
            .expect("the SQLite run timed out");
        sqlite.finish().await;
        if let Some(pg) = TestDb::postgres().await {
            tokio::time::timeout(LIMIT, f(pg.db.clone()))
                .await
                .expect("the Postgres run timed out");
            pg.finish().await;
        }
    }
}
