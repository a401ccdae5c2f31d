//! Identity on a database shared by several processes (here: several
//! services, each with its own connection pool, as separate processes
//! would have): the anchoring fence (an old holder whose term is stale
//! neither broadcasts an anchor nor records a txid; the current holder
//! does), and an epoch close that runs while another process logs an
//! operation.
//!
//! SQLite always (the fence); Postgres when `CAIRN_TEST_POSTGRES_URL` is
//! set (a fresh database on that server, dropped afterwards):
//! `CAIRN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test -p cairn-identity --test scale_out`.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use bitcoin::{Amount, Network, Txid};
use cairn_bitcoin::RpcConfig;
use cairn_identity::anchor::AnchorPolicy;
use cairn_identity::binding::{proof_post_op, RegistryConfig};
use cairn_identity::service::db::WRITE_LOCK_KEY;
use cairn_identity::service::{
    EpochClose, IdentityDb, IdentityService, ServiceConfig, DEFAULT_ANCHOR_SYNC_INTERVAL,
    DEFAULT_EPOCH_INTERVAL, DEFAULT_MAX_OUTSTANDING_CHALLENGES,
};
use cairn_identity::x::fake::{FakeX, Post};
use cairn_identity::x::CheckPolicy;
use cairn_relay::store::{self, Database, Store};
use cairn_testchain::TestChain;
use nostr::Keys;
use sqlx::Connection as _;

/// Every wait in these tests; generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {WAIT:?}"))?
}

fn config(data_dir: &Path, rpc: RpcConfig, x: &FakeX) -> ServiceConfig {
    ServiceConfig {
        data_dir: data_dir.to_path_buf(),
        network: Network::Regtest,
        rpc,
        anchor_policy: AnchorPolicy::default(),
        x: x.config(),
        check: CheckPolicy::default(),
        registry: RegistryConfig::default(),
        epoch_interval: DEFAULT_EPOCH_INTERVAL,
        anchor_sync_interval: DEFAULT_ANCHOR_SYNC_INTERVAL,
        challenge_ttl: Duration::from_secs(600),
        max_outstanding_challenges: DEFAULT_MAX_OUTSTANDING_CHALLENGES,
    }
}

fn chain_rpc(chain: &TestChain) -> RpcConfig {
    let mut cfg = RpcConfig::new(chain.rpc_url(), chain.rpc_user(), chain.rpc_password());
    cfg.timeout = Duration::from_secs(10);
    cfg
}

/// A node that refuses connections: anchoring queues, quickly.
fn no_chain() -> RpcConfig {
    RpcConfig::new("http://127.0.0.1:9", "user", "password")
}

fn identity_db(store: &Arc<dyn Store>) -> Result<IdentityDb> {
    Ok(match store.database() {
        Some(Database::Sqlite(pool)) => IdentityDb::Sqlite(pool),
        Some(Database::Postgres(pool)) => IdentityDb::Postgres(pool),
        None => bail!("the store has no SQL database"),
    })
}

/// A fresh Postgres database, dropped by [`PgDb::drop_now`].
struct PgDb {
    admin: sqlx::PgConnection,
    name: String,
    url: String,
}

impl PgDb {
    async fn create() -> Result<Option<Self>> {
        let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
            eprintln!("skipping Postgres: CAIRN_TEST_POSTGRES_URL not set");
            return Ok(None);
        };
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        // Digits and underscores only: safe to splice into the statements below.
        let name = format!("cairn_test_id_scale_{}_{nanos}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .context("connect to CAIRN_TEST_POSTGRES_URL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let mut url = url::Url::parse(&admin_url)?;
        url.set_path(&name);
        Ok(Some(Self {
            admin,
            name,
            url: url.to_string(),
        }))
    }

    async fn drop_now(mut self) -> Result<()> {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await?;
        Ok(())
    }
}

/// The full bind flow on `service`: a challenge, its text posted on the
/// fake X, the signed `bind`, submitted.
async fn bind(
    service: &IdentityService,
    x: &FakeX,
    x_uid: u64,
    handle: &str,
    seq: u64,
) -> Result<()> {
    let keys = Keys::generate();
    let issued = service.issue_challenge(&keys.public_key()).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let post = Post::new(x_uid, handle, &issued.text, now, seq);
    x.publish(&post);
    let event = proof_post_op(false, x_uid, 0, None, handle, post.id, &issued.nonce)
        .sign_with_keys(&keys)?;
    service.submit(&event, Some(post.id)).await?;
    Ok(())
}

async fn mempool(chain: &TestChain) -> Result<Vec<Txid>> {
    let v = chain.rpc("getrawmempool", vec![]).await?;
    v.as_array()
        .ok_or_else(|| anyhow!("mempool: {v}"))?
        .iter()
        .map(|t| Ok(Txid::from_str(t.as_str().unwrap_or_default())?))
        .collect()
}

/// An old holder (A) whose term a new holder (B) superseded closes an
/// epoch: the epoch is stored, but A signs and broadcasts nothing (the
/// mempool stays empty, also after A's anchor sync) and cannot record a
/// txid; the holder of the current term then anchors it and records the
/// txid.
async fn stale_term_is_fenced(database_url: &str, dir: &Path) -> Result<()> {
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    let store = store::open(database_url).await.context("relay store")?;
    let db = identity_db(&store)?;
    let cfg = config(dir, chain_rpc(&chain), &x);

    let a = IdentityService::open(cfg.clone(), db.clone(), None).await?;
    let addr = within("receive_address", async {
        Ok(a.anchorer().receive_address().await?)
    })
    .await?;
    within("fund", async {
        Ok(chain.fund(&addr, Amount::from_sat(200_000)).await?)
    })
    .await?;
    within("sync", async { Ok(a.sync_anchors().await?) }).await?;
    bind(&a, &x, 1001, "alice_cairn", 1).await?;

    let term_a = a.start_anchoring().await?;
    // The new holder, on the same data directory (the shared wallet file).
    let b = IdentityService::open(cfg.clone(), db.clone(), None).await?;
    let term_b = b.start_anchoring().await?;
    ensure!(term_b > term_a, "terms {term_a} then {term_b}");
    ensure!(db.anchor_term().await? == term_b);

    match within("close_epoch (old holder)", async {
        Ok(a.close_epoch().await?)
    })
    .await?
    {
        EpochClose::Closed {
            epoch: 0,
            txid: None,
            queued: Some(reason),
        } => ensure!(
            reason.contains("no longer current"),
            "refused for the term: {reason}"
        ),
        other => bail!("the old holder closes epoch 0 but must not anchor it: {other:?}"),
    }
    ensure!(
        mempool(&chain).await?.is_empty(),
        "the old holder broadcast an anchor"
    );
    within("sync (old holder)", async { Ok(a.sync_anchors().await?) }).await?;
    ensure!(
        mempool(&chain).await?.is_empty(),
        "the old holder's sync broadcast an anchor"
    );
    let record = a.anchorer().record(0).await?.context("epoch 0 queued")?;
    ensure!(record.tx.is_none(), "nothing signed: {record:?}");
    let stored = db.epochs().await?;
    ensure!(
        stored.len() == 1 && stored[0].anchor_txid.is_none(),
        "{stored:?}"
    );

    // The txid record, in its own transaction: refused under the old term.
    let made_up = "11".repeat(32);
    ensure!(!db.set_anchor_txid(0, &made_up, term_a).await?);
    ensure!(db.epochs().await?[0].anchor_txid.is_none());

    // The current holder (a fresh open: on SQLite a service does not follow
    // rows another one wrote) anchors the queued epoch and records it.
    let c = IdentityService::open(cfg, db.clone(), None).await?;
    let term_c = c.start_anchoring().await?;
    ensure!(term_c > term_b);
    within("sync (holder)", async { Ok(c.sync_anchors().await?) }).await?;
    let pool = mempool(&chain).await?;
    ensure!(pool.len() == 1, "one anchor broadcast: {pool:?}");
    let recorded = db.epochs().await?[0].anchor_txid.clone();
    ensure!(
        recorded.as_deref() == Some(pool[0].to_string().as_str()),
        "the holder recorded its anchor: {recorded:?} vs {pool:?}"
    );
    // ... which the superseded holders cannot change.
    ensure!(!db.set_anchor_txid(0, &made_up, term_b).await?);
    ensure!(db.epochs().await?[0].anchor_txid == recorded);
    drop((a, b, c));
    store.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_old_holder_with_a_stale_term_neither_broadcasts_nor_records() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    within("test", stale_term_is_fenced(&url, dir.path())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_old_holder_with_a_stale_term_neither_broadcasts_nor_records() -> Result<()> {
    let Some(pg) = PgDb::create().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let result = within("test", stale_term_is_fenced(&pg.url, dir.path())).await;
    pg.drop_now().await?;
    result
}

/// Waits until `n` sessions of the test database wait for a lock, as
/// `sql` (returning a count) sees it.
async fn until_waiting(db: &sqlx::PgPool, sql: &str, n: i64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(sql).fetch_one(db).await?;
        if waiting >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{n} lock waiters expected, {waiting} after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Postgres: taking a new term waits for a signing and broadcast in flight
/// under the old one (its hold keeps the term's row `FOR SHARE`), and the
/// old term is refused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_taking_a_term_waits_for_the_broadcast_in_flight() -> Result<()> {
    let Some(pg) = PgDb::create().await? else {
        return Ok(());
    };
    let result = within("test", async {
        let dir = tempfile::tempdir()?;
        let x = FakeX::start().await?;
        let store = store::open(&pg.url).await?;
        let db = identity_db(&store)?;
        // Opening creates the tables.
        let service =
            IdentityService::open(config(dir.path(), no_chain(), &x), db.clone(), None).await?;
        let term = service.start_anchoring().await?;
        let hold = db
            .hold_anchor_term(term)
            .await?
            .context("the term is current")?;
        let taker = {
            let db = db.clone();
            tokio::spawn(async move { db.take_anchor_term().await })
        };
        let IdentityDb::Postgres(pool) = &db else {
            bail!("a Postgres store");
        };
        until_waiting(
            pool,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'UPDATE identity_anchor_term%'",
            1,
        )
        .await?;
        ensure!(!taker.is_finished(), "a new term was taken during the hold");
        hold.release().await;
        let next = taker.await??;
        ensure!(next == term + 1, "{term} then {next}");
        ensure!(
            db.hold_anchor_term(term).await?.is_none(),
            "the old term is refused"
        );
        ensure!(db.hold_anchor_term(next).await?.is_some());
        drop(service);
        store.close().await;
        Ok(())
    })
    .await;
    pg.drop_now().await?;
    result
}

/// Postgres: A closes the epoch while B (another pool, as another process)
/// logs an operation that is stored between A's decision to close and its
/// insert in the old order of things. With the close, catch-up and insert
/// under one lock, A closes the epoch with B's operation in it (not
/// "skipped").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_epoch_close_under_concurrent_binds_closes_the_epoch() -> Result<()> {
    let Some(pg) = PgDb::create().await? else {
        return Ok(());
    };
    let result = within("test", async {
        let dir = tempfile::tempdir()?;
        let x = Arc::new(FakeX::start().await?);
        let store_a = store::open(&pg.url).await?;
        let store_b = store::open(&pg.url).await?;
        let cfg = config(dir.path(), no_chain(), &x);
        let a = IdentityService::open(cfg.clone(), identity_db(&store_a)?, None).await?;
        let b = IdentityService::open(cfg, identity_db(&store_b)?, None).await?;
        bind(&b, &x, 2001, "bob_cairn", 1).await?;

        // Identity's write lock, held by the test: B's next operation and
        // then A's close queue behind it, in that order.
        let mut blocker = sqlx::PgConnection::connect(&pg.url).await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(WRITE_LOCK_KEY)
            .execute(&mut blocker)
            .await?;
        let waiters = format!(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid::bigint = {} AND objid::bigint = {}",
            WRITE_LOCK_KEY >> 32,
            WRITE_LOCK_KEY & 0xffff_ffff
        );
        let IdentityDb::Postgres(pool) = identity_db(&store_a)? else {
            bail!("a Postgres store");
        };
        let b = Arc::new(b);
        let second = {
            let (b, x) = (Arc::clone(&b), Arc::clone(&x));
            tokio::spawn(async move { bind(&b, &x, 2002, "carol_cairn", 2).await })
        };
        until_waiting(&pool, &waiters, 1).await?;
        let a = Arc::new(a);
        let close = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.close_epoch().await })
        };
        until_waiting(&pool, &waiters, 2).await?;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(WRITE_LOCK_KEY)
            .execute(&mut blocker)
            .await?;
        second.await??;
        match close.await?? {
            EpochClose::Closed { epoch: 0, .. } => {}
            other => bail!("the close under a concurrent bind: {other:?}"),
        }
        let epochs = identity_db(&store_a)?.epochs().await?;
        ensure!(epochs.len() == 1, "{epochs:?}");
        let status = a.status().await?;
        ensure!(
            status.open_epoch == 1 && status.open_epoch_operations == 0 && status.log_size == 4,
            "both binds (attestation and operation each) are in epoch 0: {status:?}"
        );
        let latest = b.latest_epoch().await?;
        ensure!(latest.epoch == 0 && latest.log_size == 4, "{latest:?}");
        drop((a, b));
        store_a.close().await;
        store_b.close().await;
        Ok(())
    })
    .await;
    pg.drop_now().await?;
    result
}
