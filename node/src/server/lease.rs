//! Work that must run on one process at a time when several `cairn serve`
//! share one Postgres database: each such job (the expiration purge,
//! retention, identity's epochs and anchoring) runs under a [`Lease`], a
//! Postgres session advisory lock held on a connection of its own.
//!
//! Invariants:
//! - **One holder.** A process starts the job only after
//!   `pg_try_advisory_lock(key)` succeeded on its lease connection, and the
//!   lock lives exactly as long as that connection's session.
//! - **It moves when the holder stops.** A clean shutdown stops the job,
//!   then unlocks; a crash or kill closes the connection, which releases
//!   the lock. Standbys try again every [`DEFAULT_POLL`], so the job
//!   resumes elsewhere within about that long; a standby keeps one
//!   connection per job for its attempts (not a new one each time), and
//!   opens another only when that one failed.
//! - **A holder that loses its connection stops the job.** The holder
//!   checks its connection every [`DEFAULT_CHECK`] (a query bounded by
//!   [`CHECK_TIMEOUT`]); when the check fails the job is cancelled and
//!   awaited, and the process competes for the lease again. Between the
//!   server ending the session (which frees the lock for another process)
//!   and the holder noticing, both may run the job for at most about
//!   `DEFAULT_CHECK + CHECK_TIMEOUT`: the jobs gated here are safe to
//!   overlap that briefly (purges delete under the store's write lock;
//!   an epoch close is a database transaction; identity's anchoring is
//!   fenced by a term the new holder takes when it starts, checked around
//!   every anchor signing and broadcast and in the transaction recording
//!   a txid: see `cairn_identity::service`), except payments, whose
//!   new holder waits that long before it starts its Lightning node (see
//!   `crate::server::runtimes::payments::TAKEOVER_DELAY`), and then for the
//!   old holder's lock on the data directory (`DataDirFence` there).
//! - **SQLite: always the holder.** One process owns an SQLite database, so
//!   the job simply runs.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Connection as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a standby tries to take a lease.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// How often the holder checks its lease connection.
pub const DEFAULT_CHECK: Duration = Duration::from_secs(1);

/// Longest a lease query may take before the connection counts as lost.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The jobs that run once, each with its own advisory lock key, so that
/// they may be spread over processes (and a job enabled on only one
/// process, such as identity, always runs there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// NIP-40 expiration purge.
    Expiration,
    /// Retention purges.
    Retention,
    /// Identity epochs and anchoring.
    Identity,
    /// Payments: the wallet, Lightning node, NWC and zap receipts (see
    /// `crate::server::runtimes::payments`).
    Payments,
    /// The outbox's check of the owner's inbox list.
    InboxList,
    /// One `[[sync]]` entry (see `crate::sync::scheduled`), by a hash of
    /// its relay, filter and direction.
    Sync(u32),
}

impl Job {
    /// Its name in logs, `/ready` and the `cairn_lease_held` gauge's `job`
    /// label: a `[[sync]]` entry's is `sync:` and its hash in hex, so that
    /// each entry has a gauge and log label of its own.
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Job::Expiration => "expiration",
            Job::Retention => "retention",
            Job::Identity => "identity",
            Job::Payments => "payments",
            Job::InboxList => "inbox-list",
            Job::Sync(hash) => return Cow::Owned(format!("sync:{hash:08x}")),
        })
    }

    /// Its advisory lock key ("cairn" and a number; the store's write lock
    /// is `…0001`); syncs use `"cairs"` and their 32-bit hash, apart from
    /// those.
    fn key(self) -> i64 {
        0x6361_6972_6e00_0100
            + match self {
                Job::Expiration => 1,
                Job::Retention => 2,
                Job::Identity => 3,
                Job::Payments => 5,
                Job::InboxList => 4,
                Job::Sync(hash) => return 0x6361_6972_7300_0000 + i64::from(hash),
            }
    }
}

/// A job's work: started with the token that stops it.
pub type BoxedWork = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What starts a job's work, each time the lease is taken.
pub type WorkFn = Box<dyn Fn(CancellationToken) -> BoxedWork + Send + Sync + 'static>;

/// Whether this process holds a job's lease right now (for `/ready`).
#[derive(Debug, Clone)]
pub struct LeaseState {
    /// The job.
    pub job: Job,
    held: Arc<AtomicBool>,
}

impl LeaseState {
    /// True while the job runs in this process.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

/// Run `work` (given a token cancelled when it must stop) whenever this
/// process holds `job`'s lease, until `shutdown`. `pool` is the Postgres
/// store's pool (its options give the lease connection); `None` (SQLite):
/// the work runs at once, until `shutdown`.
pub fn spawn(
    job: Job,
    pool: Option<PgPool>,
    shutdown: CancellationToken,
    work: WorkFn,
) -> (JoinHandle<()>, LeaseState) {
    let state = LeaseState {
        job,
        held: Arc::new(AtomicBool::new(false)),
    };
    let held = Arc::clone(&state.held);
    let task = tokio::spawn(async move {
        match pool {
            None => {
                held.store(true, Ordering::Release);
                work(shutdown.child_token()).await;
            }
            Some(pool) => hold_when_possible(job, &pool, &held, &shutdown, &work).await,
        }
        held.store(false, Ordering::Release);
    });
    (task, state)
}

async fn hold_when_possible(
    job: Job,
    pool: &PgPool,
    held: &AtomicBool,
    shutdown: &CancellationToken,
    work: &WorkFn,
) {
    let mut standby_logged = false;
    // The standby's connection, kept between attempts.
    let mut standby: Option<PgConnection> = None;
    loop {
        // Connect and take the lock, or wait and try again.
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = tokio::time::timeout(CHECK_TIMEOUT, acquire(job, pool, &mut standby)) => c,
        };
        let mut conn = match conn {
            Ok(Ok(Some(conn))) => conn,
            Ok(Ok(None)) => {
                if !standby_logged {
                    tracing::info!(
                        job = %job.name(),
                        "another process runs this background job; standing by"
                    );
                    standby_logged = true;
                }
                if sleep_or_shutdown(DEFAULT_POLL, shutdown).await {
                    return;
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(job = %job.name(), error = %e, "cannot reach the database for the lease");
                if sleep_or_shutdown(DEFAULT_POLL, shutdown).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                // Interrupted mid-query: that connection is not reusable.
                standby = None;
                tracing::warn!(job = %job.name(), "the lease query did not answer in time");
                if sleep_or_shutdown(DEFAULT_POLL, shutdown).await {
                    return;
                }
                continue;
            }
        };
        standby_logged = false;
        tracing::info!(
            job = %job.name(),
            "this process holds the lease: running the background job"
        );
        held.store(true, Ordering::Release);
        metrics::gauge!("cairn_lease_held", "job" => job.name()).set(1.0);
        let stop = shutdown.child_token();
        let running = tokio::spawn(work(stop.clone()));
        let lost = keep(&mut conn, shutdown).await;
        stop.cancel();
        let _ = running.await;
        held.store(false, Ordering::Release);
        metrics::gauge!("cairn_lease_held", "job" => job.name()).set(0.0);
        if lost {
            tracing::warn!(
                job = %job.name(),
                "the lease connection failed: stopped the background job here"
            );
            // The lock went with the session (or goes with this connection).
            drop(conn);
            if sleep_or_shutdown(DEFAULT_POLL, shutdown).await {
                return;
            }
        } else {
            let _ = tokio::time::timeout(CHECK_TIMEOUT, release(job, conn)).await;
            return;
        }
    }
}

/// A lease connection holding `job`'s lock, or `None` when another holds
/// it. The attempt is made on `standby` (connected first if it is `None`),
/// which keeps the connection when the lock is not free and is emptied when
/// the attempt failed or took the lock.
async fn acquire(
    job: Job,
    pool: &PgPool,
    standby: &mut Option<PgConnection>,
) -> Result<Option<PgConnection>, sqlx::Error> {
    if standby.is_none() {
        let options = (*pool.connect_options()).clone().application_name(&format!(
            "cairn lease {} {}",
            job.name(),
            std::process::id()
        ));
        *standby = Some(PgConnection::connect_with(&options).await?);
    }
    let Some(conn) = standby.as_mut() else {
        return Ok(None);
    };
    let got = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(job.key())
        .fetch_one(conn)
        .await;
    match got {
        Ok(true) => Ok(standby.take()),
        Ok(false) => Ok(None),
        Err(e) => {
            *standby = None;
            Err(e)
        }
    }
}

/// Hold the lease until shutdown (`false`) or until the connection fails
/// a check (`true`).
async fn keep(conn: &mut PgConnection, shutdown: &CancellationToken) -> bool {
    loop {
        if sleep_or_shutdown(DEFAULT_CHECK, shutdown).await {
            return false;
        }
        let check =
            tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *conn));
        match check.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease connection check failed");
                return true;
            }
            Err(_) => return true,
        }
    }
}

async fn release(job: Job, mut conn: PgConnection) {
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(job.key())
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    tracing::info!(job = %job.name(), "released the lease");
}

/// Sleep `d`; true when `shutdown` came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_has_its_own_key_apart_from_the_write_lock() {
        let keys = [
            Job::Expiration,
            Job::Retention,
            Job::Identity,
            Job::InboxList,
            Job::Payments,
            Job::Sync(0),
            Job::Sync(u32::MAX),
        ]
        .map(Job::key);
        for (i, k) in keys.iter().enumerate() {
            assert_ne!(*k, 0x6361_6972_6e00_0001, "the store's write lock");
            assert!(!keys[..i].contains(k));
        }
    }

    #[test]
    fn every_sync_entry_has_its_own_name_and_the_others_keep_theirs() {
        assert_eq!(Job::Payments.name(), "payments");
        assert_eq!(Job::Sync(0xab).name(), "sync:000000ab");
        assert_ne!(Job::Sync(1).name(), Job::Sync(2).name());
    }

    #[tokio::test]
    async fn without_postgres_the_job_runs_at_once_until_shutdown() {
        let shutdown = CancellationToken::new();
        let (ran_tx, ran_rx) = tokio::sync::oneshot::channel();
        let ran_tx = std::sync::Mutex::new(Some(ran_tx));
        let work: WorkFn = Box::new(move |stop| {
            let tx = ran_tx.lock().unwrap().take();
            Box::pin(async move {
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
                stop.cancelled().await;
            })
        });
        let (task, state) = spawn(Job::Expiration, None, shutdown.clone(), work);
        tokio::time::timeout(Duration::from_secs(30), ran_rx)
            .await
            .expect("the job starts")
            .unwrap();
        assert!(state.held());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the lease task ends with shutdown")
            .unwrap();
        assert!(!state.held());
    }
}
