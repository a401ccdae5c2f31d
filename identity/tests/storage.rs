//! Identity's tables come from identity's own migrations: a fresh database
//! opened by the relay store has the relay's tables only, opening the
//! identity service on it adds identity's, and reopening a database where
//! both sets are applied works (each migrator ignores the other's rows in
//! `_sqlx_migrations`).
//!
//! SQLite always; Postgres too when `CAIRN_TEST_POSTGRES_URL` is set (a fresh
//! database on that server, dropped afterwards):
//! `CAIRN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test -p cairn-identity --test storage`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _, Result};
use bitcoin::Network;
use cairn_bitcoin::RpcConfig;
use cairn_identity::anchor::AnchorPolicy;
use cairn_identity::binding::RegistryConfig;
use cairn_identity::service::{
    IdentityDb, IdentityService, ServiceConfig, DEFAULT_ANCHOR_SYNC_INTERVAL,
    DEFAULT_EPOCH_INTERVAL, DEFAULT_MAX_OUTSTANDING_CHALLENGES,
};
use cairn_identity::x::{CheckPolicy, XClientConfig};
use cairn_relay::store::{self, Database, Store};
use nostr::Keys;
use sqlx::Connection as _;

const RELAY_VERSION: i64 = 20260101000000;
const IDENTITY_VERSIONS: [i64; 2] = [20260102000000, 20260102000001];
const RELAY_TABLES: [&str; 4] = ["deleted_coords", "deleted_ids", "events", "tags"];
const IDENTITY_TABLES: [&str; 4] = [
    "identity_anchor_term",
    "identity_challenges",
    "identity_epochs",
    "identity_operations",
];

/// A service that never reaches the network while opening: the anchoring
/// wallet only reads its file, and no X request is made.
fn config(data_dir: &Path) -> ServiceConfig {
    ServiceConfig {
        data_dir: data_dir.to_path_buf(),
        network: Network::Regtest,
        rpc: RpcConfig::new("http://127.0.0.1:9", "user", "password"),
        anchor_policy: AnchorPolicy::default(),
        x: XClientConfig::default(),
        check: CheckPolicy::default(),
        registry: RegistryConfig::default(),
        epoch_interval: DEFAULT_EPOCH_INTERVAL,
        anchor_sync_interval: DEFAULT_ANCHOR_SYNC_INTERVAL,
        challenge_ttl: Duration::from_secs(600),
        max_outstanding_challenges: DEFAULT_MAX_OUTSTANDING_CHALLENGES,
    }
}

fn identity_db(store: &Arc<dyn Store>) -> Result<IdentityDb> {
    Ok(match store.database() {
        Some(Database::Sqlite(pool)) => IdentityDb::Sqlite(pool),
        Some(Database::Postgres(pool)) => IdentityDb::Postgres(pool),
        None => bail!("the store has no SQL database"),
    })
}

/// Table names (sorted) and applied migration versions (sorted).
async fn schema(db: &IdentityDb) -> Result<(Vec<String>, Vec<i64>)> {
    const VERSIONS: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
    Ok(match db {
        IdentityDb::Sqlite(pool) => (
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
            )
            .fetch_all(pool)
            .await?,
            sqlx::query_scalar(VERSIONS).fetch_all(pool).await?,
        ),
        IdentityDb::Postgres(pool) => (
            sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' \
                 ORDER BY table_name",
            )
            .fetch_all(pool)
            .await?,
            sqlx::query_scalar(VERSIONS).fetch_all(pool).await?,
        ),
    })
}

async fn challenges(db: &IdentityDb) -> Result<i64> {
    const SQL: &str = "SELECT COUNT(*) FROM identity_challenges";
    Ok(match db {
        IdentityDb::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        IdentityDb::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
    })
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Opens `database_url` fresh through the relay store and then the identity
/// service, then both again.
async fn fresh_then_reopen(database_url: &str, data_dir: &Path) -> Result<()> {
    let store = store::open(database_url).await.context("relay store")?;
    let db = identity_db(&store)?;
    let (tables, versions) = schema(&db).await?;
    ensure!(tables == sorted(&RELAY_TABLES), "relay only: {tables:?}");
    ensure!(versions == [RELAY_VERSION], "relay only: {versions:?}");

    let service = IdentityService::open(config(data_dir), db.clone(), None)
        .await
        .context("identity service on a fresh database")?;
    let (tables, versions) = schema(&db).await?;
    let mut both = [RELAY_TABLES.as_slice(), IDENTITY_TABLES.as_slice()].concat();
    both.sort();
    ensure!(tables == sorted(&both), "both: {tables:?}");
    let both_versions = [[RELAY_VERSION].as_slice(), IDENTITY_VERSIONS.as_slice()].concat();
    ensure!(versions == both_versions, "both: {versions:?}");
    service
        .issue_challenge(&Keys::generate().public_key())
        .await?;
    drop(service);
    store.close().await;

    // Both sets applied: neither migrator refuses the other's row.
    let store = store::open(database_url)
        .await
        .context("relay store on an existing database")?;
    let db = identity_db(&store)?;
    let service = IdentityService::open(config(data_dir), db.clone(), None)
        .await
        .context("identity service on an existing database")?;
    ensure!(schema(&db).await?.1 == both_versions);
    ensure!(challenges(&db).await? == 1, "the stored challenge survives");
    drop(service);
    store.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fresh_and_existing_database() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    tokio::time::timeout(Duration::from_secs(60), fresh_then_reopen(&url, dir.path())).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fresh_and_existing_database() -> Result<()> {
    let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
        eprintln!("skipping Postgres: CAIRN_TEST_POSTGRES_URL not set");
        return Ok(());
    };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    // Digits and underscores only: safe to splice into the statements below.
    let name = format!("cairn_test_identity_{}_{nanos}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .context("connect to CAIRN_TEST_POSTGRES_URL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let mut url = url::Url::parse(&admin_url)?;
    url.set_path(&name);
    let dir = tempfile::tempdir()?;
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        fresh_then_reopen(url.as_str(), dir.path()),
    )
    .await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result?
}
