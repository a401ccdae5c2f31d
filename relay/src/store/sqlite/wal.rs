//! Keeping SQLite's write-ahead log bounded under sustained writes.
//!
//! SQLite appends every committed page to the WAL; a checkpoint copies the
//! pages back into the database file, and the log starts over from the
//! beginning of its file only when a writer begins a transaction while
//! *every* frame has been copied and no reader still reads from the log.
//! PASSIVE checkpoints running beside a busy writer never see that moment
//! (the writer keeps appending while they copy), so on their own they let
//! the log grow without bound: 29 GB of WAL beside a 972 MB database after
//! 1M events, with every read walking the huge WAL index.
//!
//! The rules, and where each one is kept:
//! - **No checkpoint inside a commit.** The write connection runs with
//!   `wal_autocheckpoint = 0` (see `SqliteStore::open`), so no client's
//!   commit ever pays for copying pages or for the database file's `fsync`.
//! - **The copying happens off the write path.** [`run_checkpointer`], on a
//!   connection of its own, runs PASSIVE checkpoints after commits (PASSIVE
//!   never blocks the writer or the readers), at most every
//!   [`PASS_INTERVAL`], and `fsync`s the database file before it asks for a
//!   restart, so the pages it copied are on disk before anyone waits for them.
//! - **The log starts over between two batches.** When a pass finds the log
//!   at [`WalConfig::restart_at`] bytes or more, the checkpointer flags it
//!   and parks. The group-commit writer, after answering one batch and
//!   before starting the next, lets the store run a RESTART checkpoint on
//!   the write connection ([`Checkpoint::Restart`]): it copies only the
//!   frames written since the last pass (about one batch: this is the one
//!   pause a restart costs the writer), waits at most
//!   [`WalConfig::reader_wait`] for readers still on the old log, and the
//!   next batch writes from the start of the file. Until that batch
//!   commits, passes still report the old log at its old length; the
//!   checkpointer knows it for what it is and does not ask again
//!   ([`WalMonitor::frames_to_restart`]). `journal_size_limit`
//!   ([`WalConfig::size_limit`]) then cuts a file that grew past it back.
//! - **A hard stop before the limit.** Should the checkpointer fall behind
//!   (a slow disk makes its syncs slow), the writer restarts the log, asked
//!   or not, as soon as one more batch as big as its last would take the
//!   log past `size_limit`. It reads the log's length after each batch from
//!   the WAL index ([`LogFiles::log_frames`]); on a 1M-event store one
//!   batch can add ~17 MB, and a stop that waited for the file to pass the
//!   limit let it reach 67 MB.
//! - **Idle means empty.** When the writer has had nothing to write for a
//!   while, a TRUNCATE checkpoint leaves a zero-byte WAL.
//! - **One checkpoint at a time.** SQLite refuses a checkpoint at once
//!   (`SQLITE_BUSY`, no busy handler) while another one runs, so the
//!   writer's RESTART and TRUNCATE and the checkpointer's passes take turns
//!   ([`WalMonitor::checkpointing`]): a restart waits for a pass to finish
//!   rather than fail on it (on a 1M-event store, restarts refused that
//!   way let the WAL file reach 74 MB, past its 48 MiB limit).
//! - **Readers never hold up the writer for long.** A RESTART or TRUNCATE
//!   that finds a reader on the old log for longer than `reader_wait` gives
//!   up; the next pass (or idle tick) tries again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::{watch, Mutex, Notify};

/// Most bytes the WAL file keeps once its log has started over
/// (`journal_size_limit`), which is also the writer's hard stop. 48 MiB,
/// not 64: the log can still grow by one batch after the file passes it
/// before the writer restarts it (up to ~20 MiB on a 1M-event store, where
/// a batch dirties pages all over its indexes), and the file should stay
/// under 64 MiB even then.
pub const DEFAULT_WAL_SIZE_LIMIT: u64 = 48 << 20;

/// Log size at which the writer starts the log over. Each restart holds the
/// writer for about one batch's copy and `fsync` (~45 ms on a disk where a
/// 4 KiB synced write takes 2.3 ms), so restarts should be rare; but the log
/// keeps growing until a pass notices and the writer has finished its
/// batch (~10 MiB at full speed), so this stays well under the limit.
pub const DEFAULT_WAL_RESTART_AT: u64 = 24 << 20;

/// Longest a RESTART or TRUNCATE on the write connection waits for readers
/// still reading the old log. Queries take milliseconds; one that takes
/// longer pins the log, and the writer does not wait for it.
pub const DEFAULT_READER_WAIT: Duration = Duration::from_millis(50);

/// Least time between the starts of two checkpointer passes. Each pass
/// copies every page changed since the last one, so passes apart copy a
/// page that many commits change (an index's inner pages) once instead of
/// many times, and a reader pinning the log cannot make the checkpointer
/// spin. Passes leave writing their pages back to the kernel; the
/// checkpointer syncs before it asks for a restart (`catch_up`).
pub const PASS_INTERVAL: Duration = Duration::from_millis(50);

/// At most this many sync-and-copy rounds before a restart ...
const CATCH_UP_ROUNDS: usize = 2;

/// ... fewer when a sync takes less than this (little was left to write).
const QUICK_SYNC: Duration = Duration::from_millis(5);

/// A pass runs at least this often even when no commit signals one (other
/// parts of the node write through the same connection without signalling).
pub const IDLE_PASS_INTERVAL: Duration = Duration::from_secs(1);

/// Longest the checkpointer stays parked waiting for the writer to start
/// the log over, before it goes back to copying.
const MAX_PARK: Duration = Duration::from_secs(1);

/// Bytes of a WAL frame besides its page.
const FRAME_HEADER: u64 = 24;

/// How big the WAL may get. [`Default`] gives the `DEFAULT_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalConfig {
    /// `journal_size_limit`: the WAL file is cut back to this many bytes
    /// when its log starts over.
    pub size_limit: u64,
    /// Log size in bytes at which the writer starts the log over.
    pub restart_at: u64,
    /// Longest the writer waits for readers before giving up a restart.
    pub reader_wait: Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            size_limit: DEFAULT_WAL_SIZE_LIMIT,
            restart_at: DEFAULT_WAL_RESTART_AT,
            reader_wait: DEFAULT_READER_WAIT,
        }
    }
}

impl WalConfig {
    /// Whether a log of `frames` frames of `page_size`-byte pages is due
    /// to start over.
    pub(super) fn restart_due(&self, frames: u64, page_size: u64) -> bool {
        log_bytes(frames, page_size) >= self.restart_at
    }

    /// Whether the log is close enough to the size limit that the
    /// checkpointer should ask for the restart at once, catching up or not:
    /// halfway from `restart_at` to `size_limit`.
    pub(super) fn urgent(&self, frames: u64, page_size: u64) -> bool {
        log_bytes(frames, page_size) >= self.restart_at / 2 + self.size_limit / 2
    }
}

fn log_bytes(frames: u64, page_size: u64) -> u64 {
    frames.saturating_mul(page_size + FRAME_HEADER)
}

/// The files beside the database that the writer's hard stop reads.
#[derive(Debug)]
pub(super) struct LogFiles {
    /// The `-wal` file.
    wal: PathBuf,
    /// The `-shm` file: the WAL index, which SQLite keeps mapped in every
    /// connection's memory; reading it is one `pread`.
    index: File,
    page_size: u64,
}

/// `iVersion` of the WAL index header SQLite has written since 3.7.0.
const WAL_INDEX_VERSION: u32 = 3_007_000;

impl LogFiles {
    /// Opens the WAL index of `database`. It exists, as the WAL file does,
    /// while a connection to the database is open in WAL mode.
    pub(super) fn open(database: &Path, page_size: u64) -> std::io::Result<Self> {
        let beside = |suffix: &str| {
            let mut path = database.as_os_str().to_owned();
            path.push(suffix);
            PathBuf::from(path)
        };
        Ok(Self {
            index: File::open(beside("-shm"))?,
            wal: beside("-wal"),
            page_size,
        })
    }

    /// The `-wal` file.
    pub(super) fn wal(&self) -> &Path {
        &self.wal
    }

    /// Frames in the log as of the last commit: `mxFrame` of the WAL index
    /// header (<https://sqlite.org/walformat.html>, in native byte order;
    /// processes of different SQLite versions share the file, so its
    /// layout does not change). Between two batches only this writer has
    /// changed it, so the header is not being rewritten while it is read.
    fn log_frames(&self) -> std::io::Result<u64> {
        let mut header = [0u8; 20];
        self.index.read_exact_at(&mut header, 0)?;
        let word = |at: usize| {
            u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if word(0) != WAL_INDEX_VERSION || header[12] == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not an initialised WAL index",
            ));
        }
        Ok(u64::from(word(16)))
    }
}

/// What the checkpointer and the write path tell each other.
#[derive(Debug)]
pub(super) struct WalMonitor {
    /// A commit happened: the checkpointer should run a pass.
    committed: Notify,
    /// The log is due to start over; set by the checkpointer, taken by the writer.
    restart_due: AtomicBool,
    /// Counts the writer's attempts to start the log over. A parked
    /// checkpointer waits for the count to move past the value it saw when
    /// it set `restart_due`, so an earlier attempt can never release it
    /// early (two checkpoints at once make one of them fail).
    restarts: watch::Sender<u64>,
    /// The log may hold frames: the idle writer should truncate it.
    dirty: AtomicBool,
    /// Frames in the log that the writer's last RESTART copied in full, -1
    /// for none. SQLite starts the log over at the writer's *next* commit,
    /// not at the RESTART, so until then every pass still reports that old
    /// log, as long as before; it must not count as one due to start over
    /// (measured on a 1M-event store: before this, every restart was
    /// followed by a second one of a log holding one batch, ~80 ms of
    /// writer pause each).
    restarted_log: AtomicI64,
    /// Held by whoever runs a checkpoint (see the module doc).
    checkpointing: Mutex<()>,
    /// Frames in the log after the writer's previous batch, and how many
    /// that batch added (for the hard stop; only the writer touches them).
    log_after_batch: AtomicU64,
    last_batch_frames: AtomicU64,
}

impl Default for WalMonitor {
    fn default() -> Self {
        Self {
            committed: Notify::new(),
            restart_due: AtomicBool::new(false),
            restarts: watch::Sender::new(0),
            dirty: AtomicBool::new(false),
            restarted_log: AtomicI64::new(-1),
            checkpointing: Mutex::new(()),
            log_after_batch: AtomicU64::new(0),
            last_batch_frames: AtomicU64::new(0),
        }
    }
}

impl WalMonitor {
    /// Called after every commit on the write connection.
    pub(super) fn committed(&self) {
        self.dirty.store(true, Ordering::Relaxed);
        self.committed.notify_one();
    }

    /// Between two batches: start the log over if a pass asked for it, or
    /// if the next batch could take it past the size limit anyway: a
    /// checkpointer slowed down by a busy disk must not let it grow further.
    pub(super) async fn between_batches(
        &self,
        write: &SqlitePool,
        files: &LogFiles,
        config: &WalConfig,
    ) -> Result<(), sqlx::Error> {
        let asked = self.restart_due.swap(false, Ordering::AcqRel);
        let full = self.next_batch_may_pass_limit(files, config);
        if !asked && !full {
            return Ok(());
        }
        let result = checkpoint_on_writer(write, self, Checkpoint::Restart, config).await;
        if let Ok(outcome) = &result {
            if outcome.busy {
                tracing::debug!("WAL restart gave way to a reader; the next pass retries");
            } else {
                self.restarted_log
                    .store(outcome.log_frames, Ordering::Release);
            }
        }
        self.restarts.send_modify(|n| *n += 1);
        result.map(drop)
    }

    /// Whether one more batch as big as the last could take the log past
    /// `config.size_limit` (see the module doc).
    fn next_batch_may_pass_limit(&self, files: &LogFiles, config: &WalConfig) -> bool {
        let frames = match files.log_frames() {
            Ok(frames) => frames,
            Err(err) => {
                // Without the index, the file: never smaller than the log,
                // and cut back to the limit by the first commit after the
                // log starts over, so a file past the limit means this log is.
                tracing::debug!(%err, "WAL index unreadable; the hard stop goes by the file's size");
                return std::fs::metadata(&files.wal).is_ok_and(|m| m.len() > config.size_limit);
            }
        };
        // A log shorter than after the previous batch has started over
        // since: all of it is this batch's.
        let previous = self.log_after_batch.swap(frames, Ordering::Relaxed);
        let batch = frames.checked_sub(previous).unwrap_or(frames);
        let last = self.last_batch_frames.swap(batch, Ordering::Relaxed);
        // The larger of the last two batches: one batch smaller than the
        // one before does not mean the next will be.
        log_bytes(frames + batch.max(last), files.page_size) > config.size_limit
    }

    /// Frames of the log a pass reported that are still to start over: 0
    /// for the old log of a RESTART that only awaits the next commit.
    fn frames_to_restart(&self, pass: &CheckpointOutcome) -> u64 {
        if pass.log_frames == self.restarted_log.load(Ordering::Acquire) {
            0
        } else {
            pass.frames()
        }
    }

    /// The writer is idle: leave an empty WAL file if the log holds anything.
    pub(super) async fn idle(
        &self,
        write: &SqlitePool,
        config: &WalConfig,
    ) -> Result<(), sqlx::Error> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = checkpoint_on_writer(write, self, Checkpoint::Truncate, config).await;
        self.restarts.send_modify(|n| *n += 1);
        match result {
            Ok(outcome) if !outcome.busy => Ok(()),
            other => {
                // Not done (a reader held the log, or an error): try again next tick.
                self.dirty.store(true, Ordering::Relaxed);
                other.map(drop)
            }
        }
    }
}

/// The checkpoint modes Cairn uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checkpoint {
    /// Copy what no reader still needs; never waits, never blocks anyone.
    Passive,
    /// Copy everything, wait for readers to leave the log, so that the next
    /// write starts it over. Holds the write lock: only on the write connection.
    Restart,
    /// As [`Checkpoint::Restart`], then cut the WAL file to zero bytes.
    Truncate,
}

impl Checkpoint {
    fn sql(self) -> &'static str {
        match self {
            Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
            Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }
}

impl CheckpointOutcome {
    /// Frames in the log, 0 when unknown.
    fn frames(&self) -> u64 {
        u64::try_from(self.log_frames).unwrap_or(0)
    }
}

/// The row `PRAGMA wal_checkpoint` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CheckpointOutcome {
    /// The checkpoint could not finish (a reader or writer was in the way).
    pub busy: bool,
    /// Frames in the log (-1 when not in WAL mode).
    pub log_frames: i64,
    /// Frames copied into the database file so far.
    pub checkpointed: i64,
}

async fn checkpoint(
    conn: &mut SqliteConnection,
    mode: Checkpoint,
) -> Result<CheckpointOutcome, sqlx::Error> {
    let (busy, log_frames, checkpointed): (i64, i64, i64) =
        sqlx::query_as(mode.sql()).fetch_one(conn).await?;
    Ok(CheckpointOutcome {
        busy: busy != 0,
        log_frames,
        checkpointed,
    })
}

/// A blocking checkpoint on the write connection, after any pass still
/// running, waiting for readers at most `config.reader_wait` (the
/// connection's busy timeout is lowered for the call and put back
/// afterwards).
async fn checkpoint_on_writer(
    write: &SqlitePool,
    monitor: &WalMonitor,
    mode: Checkpoint,
    config: &WalConfig,
) -> Result<CheckpointOutcome, sqlx::Error> {
    let mut conn = write.acquire().await?;
    let started = Instant::now();
    let _turn = monitor.checkpointing.lock().await;
    let waited = started.elapsed();
    sqlx::query(&busy_timeout_sql(config.reader_wait))
        .execute(&mut *conn)
        .await?;
    let outcome = checkpoint(&mut conn, mode).await;
    sqlx::query(&busy_timeout_sql(super::DEFAULT_BUSY_TIMEOUT))
        .execute(&mut *conn)
        .await?;
    tracing::debug!(?mode, ?outcome, ?waited, elapsed = ?started.elapsed(), "WAL checkpoint on the writer");
    outcome
}

fn busy_timeout_sql(wait: Duration) -> String {
    format!("PRAGMA busy_timeout = {}", wait.as_millis())
}

/// Copy committed frames into the database file after commits, off the
/// write path, and flag the writer when the log is due to start over.
/// `pool` is the checkpointer's own connection; ends when it is closed.
pub(super) async fn run_checkpointer(
    pool: SqlitePool,
    database_file: &Path,
    page_size: u64,
    monitor: Arc<WalMonitor>,
    config: WalConfig,
) {
    // Any descriptor of the file will do for `fsync`: it flushes the file's
    // dirty pages, whoever wrote them.
    let file = match File::open(database_file) {
        Ok(file) => Some(file),
        Err(err) => {
            tracing::warn!(error = %err, file = %database_file.display(),
                "cannot open the database file to sync checkpoints; the writer's restarts will sync it");
            None
        }
    };
    let mut restarts = monitor.restarts.subscribe();
    loop {
        tokio::select! {
            () = monitor.committed.notified() => {}
            () = tokio::time::sleep(IDLE_PASS_INTERVAL) => {}
        }
        if pool.is_closed() {
            return;
        }
        let started = tokio::time::Instant::now();
        match passive(&pool, &monitor).await {
            Ok(pass) => {
                if pass.log_frames > 0 {
                    monitor.dirty.store(true, Ordering::Relaxed);
                }
                if config.restart_due(monitor.frames_to_restart(&pass), page_size) {
                    restarts.borrow_and_update();
                    let due = catch_up(&pool, file.as_ref(), &monitor, &config, page_size).await;
                    // Unless the writer restarted on its own meanwhile
                    // (the file passed the limit): then there is nothing
                    // left to ask for.
                    if due && !restarts.has_changed().unwrap_or(true) {
                        monitor.restart_due.store(true, Ordering::Release);
                        let _ = tokio::time::timeout(MAX_PARK, restarts.changed()).await;
                    }
                }
            }
            Err(err) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %err, "WAL checkpoint failed");
            }
        }
        tokio::time::sleep_until(started + PASS_INTERVAL).await;
    }
}

/// Before a restart: put what the passes copied on disk, and copy what was
/// written meanwhile, until a sync finds little left to write, so that the
/// writer's RESTART has only about its last batch to copy and sync. Stops
/// early once the log is urgent ([`WalConfig::urgent`]). Returns whether
/// the log is still due to start over (the writer may have restarted it on
/// its own meanwhile, see [`WalMonitor::between_batches`]).
async fn catch_up(
    pool: &SqlitePool,
    file: Option<&File>,
    monitor: &WalMonitor,
    config: &WalConfig,
    page_size: u64,
) -> bool {
    for _ in 0..CATCH_UP_ROUNDS {
        let started = Instant::now();
        if let Some(file) = file {
            sync_data(file).await;
        }
        let quick = started.elapsed() < QUICK_SYNC;
        match passive(pool, monitor).await {
            Ok(pass) => {
                let frames = monitor.frames_to_restart(&pass);
                if !config.restart_due(frames, page_size) {
                    return false;
                }
                if quick || config.urgent(frames, page_size) {
                    return true;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "WAL checkpoint failed");
                return true;
            }
        }
    }
    true
}

async fn passive(
    pool: &SqlitePool,
    monitor: &WalMonitor,
) -> Result<CheckpointOutcome, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let _turn = monitor.checkpointing.lock().await;
    checkpoint(&mut conn, Checkpoint::Passive).await
}

async fn sync_data(file: &File) {
    let file = match file.try_clone() {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!(error = %err, "cannot sync checkpointed pages");
            return;
        }
    };
    match tokio::task::spawn_blocking(move || file.sync_data()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "syncing checkpointed pages failed"),
        Err(err) => tracing::warn!(error = %err, "syncing checkpointed pages did not finish"),
    }
}

#[cfg(test)]
mod tests {
    use nostr::{Event, EventBuilder, Keys, Kind};

    use super::super::SqliteStore;
    use super::*;
    use crate::store::{Store, WriterPause};

    /// Poll `done` every 10 ms until it holds or `within` has passed.
    async fn eventually(within: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !done() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Until the writer's next commit, passes still report the log that a
    /// RESTART copied, as long as before: the checkpointer must not ask for
    /// that log to start over again (which cost a second writer pause per
    /// restart on a large store), yet must ask for the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_log_is_not_asked_to_start_over_again() {
        let config = WalConfig {
            restart_at: 64 << 10,
            size_limit: 4 << 20,
            ..WalConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cairn.db", dir.path().display());
        let store = SqliteStore::open_with(&url, config).await.unwrap();
        let monitor = Arc::clone(&store.wal.as_ref().unwrap().monitor);
        let asked = || monitor.restart_due.load(Ordering::Acquire);
        let keys = Keys::generate();
        let notes = |from: usize, n: usize| -> Vec<Event> {
            (from..from + n)
                .map(|i| {
                    EventBuilder::new(Kind::TextNote, format!("{i} {}", "x".repeat(500)))
                        .sign_with_keys(&keys)
                        .unwrap()
                })
                .collect()
        };

        // ~160 KB of events: well past `restart_at`.
        store.save_batch(&notes(0, 200)).await.unwrap();
        assert!(
            eventually(Duration::from_secs(10), asked).await,
            "a log past restart_at is asked to start over"
        );
        store.maintain(WriterPause::BetweenBatches).await.unwrap();
        assert!(!asked(), "the writer took the request");

        // No commit yet, so the log has not started over: the idle pass
        // (every IDLE_PASS_INTERVAL) sees it at its old length.
        tokio::time::sleep(2 * IDLE_PASS_INTERVAL + PASS_INTERVAL).await;
        assert!(!asked(), "the restarted log was asked to start over again");

        // One small commit starts the log over, short of restart_at.
        store.save_batch(&notes(200, 1)).await.unwrap();
        tokio::time::sleep(4 * PASS_INTERVAL).await;
        assert!(!asked(), "a log of one event is not due");

        store.save_batch(&notes(201, 200)).await.unwrap();
        assert!(
            eventually(Duration::from_secs(10), asked).await,
            "the next log past restart_at is asked to start over"
        );
        store.close().await;
    }

    /// SQLite fails a checkpoint at once while another one runs: the
    /// writer's restart must wait for a pass in progress, not fail on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_waits_for_a_pass_in_progress_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cairn.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        let monitor = Arc::clone(&store.wal.as_ref().unwrap().monitor);
        let keys = Keys::generate();
        let notes: Vec<Event> = (0..50)
            .map(|i| {
                EventBuilder::new(Kind::TextNote, format!("note {i}"))
                    .sign_with_keys(&keys)
                    .unwrap()
            })
            .collect();
        store.save_batch(&notes).await.unwrap();

        let pass = monitor.checkpointing.lock().await;
        monitor.restart_due.store(true, Ordering::Release);
        let restart = tokio::spawn({
            let store = store.clone();
            async move { store.maintain(WriterPause::BetweenBatches).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!restart.is_finished(), "the restart waits for the pass");
        drop(pass);
        tokio::time::timeout(Duration::from_secs(10), restart)
            .await
            .expect("the restart runs once the pass is done")
            .unwrap()
            .unwrap();
        assert!(
            monitor.restarted_log.load(Ordering::Acquire) > 0,
            "the restart copied the log instead of giving way"
        );
        store.close().await;
    }

    /// The writer's hard stop on its own (the checkpointer never asks: its
    /// threshold is out of reach): the log starts over before a batch as
    /// big as the last would take it past the limit, so the WAL file never
    /// passes it. Waiting for the file to pass the limit let it grow by a
    /// whole batch more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hard_stop_restarts_before_a_batch_would_pass_the_limit() {
        let config = WalConfig {
            restart_at: u64::MAX / 4,
            size_limit: 1 << 20,
            ..WalConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cairn.db", dir.path().display());
        let store = SqliteStore::open_with(&url, config).await.unwrap();
        let wal = store.wal.as_ref().unwrap();
        let keys = Keys::generate();
        let mut largest = 0;
        for batch in 0..30 {
            let notes: Vec<Event> = (0..100)
                .map(|i| {
                    EventBuilder::new(Kind::TextNote, format!("{batch} {i} {}", "x".repeat(900)))
                        .sign_with_keys(&keys)
                        .unwrap()
                })
                .collect();
            store.save_batch(&notes).await.unwrap();
            largest = largest.max(std::fs::metadata(wal.log.wal()).unwrap().len());
            store.maintain(WriterPause::BetweenBatches).await.unwrap();
        }
        assert!(
            *wal.monitor.restarts.borrow() >= 2,
            "~3 MB of events through a 1 MiB log start it over"
        );
        assert!(
            largest <= config.size_limit,
            "the WAL file reached {largest} bytes, past its limit of {}",
            config.size_limit
        );
        store.close().await;
    }

    /// The hard stop reads the log's length from the WAL index: it must
    /// agree with what SQLite itself reports.
    #[tokio::test]
    async fn the_wal_index_gives_the_log_length_sqlite_reports() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cairn.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        let wal = store.wal.as_ref().unwrap();
        let keys = Keys::generate();
        for round in 0..3 {
            let notes: Vec<Event> = (0..20)
                .map(|i| {
                    EventBuilder::new(Kind::TextNote, format!("{round} {i}"))
                        .sign_with_keys(&keys)
                        .unwrap()
                })
                .collect();
            store.save_batch(&notes).await.unwrap();
            let from_index = wal.log.log_frames().unwrap();
            let mut conn = wal.checkpointer.acquire().await.unwrap();
            let pass = checkpoint(&mut conn, Checkpoint::Passive).await.unwrap();
            assert!(from_index > 0, "a commit left frames in the log");
            assert_eq!(from_index, pass.frames());
        }
        store.close().await;
    }

    #[test]
    fn restart_is_due_once_the_log_reaches_its_threshold() {
        let config = WalConfig {
            restart_at: 4 * (4096 + FRAME_HEADER),
            ..WalConfig::default()
        };
        assert!(!config.restart_due(0, 4096));
        assert!(!config.restart_due(3, 4096));
        assert!(config.restart_due(4, 4096));
        assert!(config.restart_due(u64::MAX, 4096), "no overflow");
        assert!(!config.restart_due(4, 1024), "counts bytes, not frames");
    }

    #[test]
    fn urgent_lies_between_the_restart_point_and_the_limit() {
        let config = WalConfig::default();
        let frames = |bytes: u64| bytes / (4096 + FRAME_HEADER);
        assert!(!config.urgent(frames(config.restart_at), 4096));
        assert!(config.urgent(frames(config.size_limit), 4096));
        let halfway = (config.restart_at + config.size_limit) / 2;
        assert!(config.urgent(frames(halfway) + 1, 4096));
        assert!(!config.urgent(frames(halfway) - 1, 4096));
    }

    #[test]
    fn defaults_keep_the_restart_point_well_inside_the_limit() {
        let config = WalConfig::default();
        assert!(config.restart_at * 2 <= config.size_limit);
        assert!(config.reader_wait < super::super::DEFAULT_BUSY_TIMEOUT);
    }
}
