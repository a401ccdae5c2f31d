//! The identity service a node runs: challenges, proof-post checks, witness
//! attestations, the registry, the log and state tree, epochs and anchoring.
//!
//! # Persistence
//!
//! The source of truth is SQL ([`IdentityDb`], in the relay's own database,
//! in tables that identity's own migrations create, see [`db`]):
//! issued challenges, accepted operations in log order (event, attestation,
//! epoch, block height) and closed epochs (header, anchor txid). The log, the
//! state tree and the registry are kept **in memory** and rebuilt at start by
//! replaying those rows; every closed epoch's stored header is compared with
//! the replayed log and state roots, so a damaged or edited database is
//! refused instead of served. Replaying is cheap (a few seconds per million
//! operations, dominated by signature checks) and keeps one code path for
//! live and recovered state; a node with a far larger registry would move
//! the trees into SQL behind [`crate::log::LogStore`] and
//! [`crate::state::StateStore`] instead. The anchoring wallet and the anchor
//! records stay in the wallet's own file (see [`crate::anchor`]).
//!
//! # Several processes on one Postgres database
//!
//! Every process serves the API from its own in-memory core, and **catches
//! it up** from the tables before each use: when the stored log or epochs
//! end further than the core, the missing rows are applied through the same
//! replay as at start (so a process never serves less than what was stored
//! when the request began). Every write (an operation, an epoch close)
//! takes identity's advisory write lock ([`db::WRITE_LOCK_KEY`]) in its
//! transaction and is stored only if the tables still end where the core
//! did when it decided ([`db::Insert::Stale`] otherwise: catch up and decide
//! again), so all processes extend one log in one order. A core that had
//! advanced its height past rows it has yet to apply (the anchoring process
//! follows the chain tip) is rebuilt from all rows instead, so that rows
//! are applied at exactly the heights they were decided at.
//!
//! An epoch close takes the write lock *before* it catches up, and
//! catches up, decides and stores the epoch under it ([`db::WriteLock`]):
//! operations other processes log meanwhile wait for it, so a close with
//! operations to close always closes ([`EpochClose::Skipped`] means the
//! epoch was empty).
//!
//! Only the process running [`IdentityService::run`] (the node runs it
//! under a lease) closes epochs, anchors, and publishes anchor updates; it
//! reopens the anchoring wallet from its file when it starts, as another
//! process may have anchored since. The processes must share the data
//! directory (the witness key, and the wallet file `anchor.sqlite`): see
//! `docs/scale-out.md`.
//!
//! # The anchoring fence
//!
//! A lease can overlap: the server may end an old holder's session (and
//! give the lease to another process) a few seconds before the old holder
//! notices. Anchoring is fenced by a **term** so that the overlap cannot
//! produce two anchor transactions. Invariant: *an anchor is signed and
//! broadcast, and an anchor txid recorded, only by the process whose term
//! is the stored one* — one rule (`term_is!` in [`db`]), checked in the
//! transaction that records a txid ([`IdentityDb::set_anchor_txid`]) and
//! in the one held around each signing and broadcast
//! ([`IdentityDb::hold_anchor_term`], through the anchorer's
//! [`crate::anchor::Fence`]).
//!
//! - [`IdentityService::start_anchoring`] (the start of `run`) takes a new
//!   term ([`IdentityDb::take_anchor_term`]) before it reopens the wallet:
//!   every earlier holder is fenced off from then on.
//! - On Postgres the hold keeps the term's row locked `FOR SHARE`, and
//!   taking a term waits for it: an old holder's signing and broadcast
//!   already under way finishes (and is saved to the wallet file) before
//!   the new holder reopens the wallet, and none starts after.
//! - A process that never took a term has term 0, current only until some
//!   process takes one (a single process, or tests, that close epochs
//!   without `run`).
//! - An old holder may still close an epoch during the overlap (a
//!   transaction under the write lock, which the new holder then sees) and
//!   queue it in the wallet file; the new holder anchors it.
//!
//! # Linking epochs
//!
//! An epoch header names the previous epoch by its header hash, which is
//! fixed the moment that epoch closes. Its anchor txid is not: a fee bump
//! (RBF) or re-anchoring after a reorg replaces the transaction, so a header
//! naming a txid could later point at a transaction that never confirmed.
//! Linking by header hash also means an epoch never waits for the previous
//! one's transaction: epochs close on schedule and the anchorer anchors them
//! in order (each anchor spending the previous one's change) once it can.
//!
//! # Modules
//!
//! - `config`, `error`: [`ServiceConfig`], [`Publisher`], [`ServiceError`];
//! - `witness`: the witness key file;
//! - `memory`, `replay`: the in-memory registry, log and state tree, and
//!   rebuilding them from SQL at start;
//! - `bindings`: challenges, proof-post checks and accepting operations;
//! - `anchoring`: closing epochs, following their anchors, epoch and status views;
//! - `lookup`, `proofs`: where an identity stands, proof and absence bundles;
//! - [`mirror`]: following another witness from its published events, and
//!   the log segments (kind 3473) this witness publishes for mirrors;
//! - `views`: the answer types (the HTTP API's JSON bodies);
//! - [`db`]: the SQL tables and the migrations that create them.

mod anchoring;
mod bindings;
mod config;
pub mod db;
mod error;
mod lookup;
mod memory;
pub mod mirror;
mod proofs;
mod replay;
mod views;
mod witness;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::{BlockHash, MerkleBlock, Txid};
use nostr::nips::nip19::ToBech32;
use nostr::{Event, Keys, PublicKey};
use tokio::sync::{Mutex, MutexGuard};
use tracing::{info, warn};

pub use config::{
    Publisher, ServiceConfig, DEFAULT_ANCHOR_SYNC_INTERVAL, DEFAULT_EPOCH_INTERVAL,
    DEFAULT_MAX_OUTSTANDING_CHALLENGES,
};
pub use db::IdentityDb;
pub use error::ServiceError;
pub use views::{
    AnchorView, AnchoringStatus, BindingReceipt, BindingState, EpochClose, EpochView, HistoryEntry,
    IdentityView, IssuedChallenge, Nip05Answer, ServiceStatus, Standing,
};
pub use witness::{load_or_create_witness_key, WITNESS_KEY_FILE};

use crate::anchor::{AnchorRecord, Anchorer};
use crate::x::{ProofChecker, PublicXClient};
use memory::Core;

/// The identity service. Cheap to share behind an [`Arc`]; all methods take `&self`.
pub struct IdentityService {
    config: ServiceConfig,
    db: IdentityDb,
    witness: Keys,
    checker: ProofChecker<PublicXClient>,
    /// Replaced when this process starts running the epochs and anchoring
    /// (see the module documentation): a clone is taken for each use.
    anchorer: std::sync::Mutex<Anchorer>,
    core: Mutex<Core>,
    /// Whether other processes may write the tables (Postgres): the core
    /// is then caught up before each use.
    shared: bool,
    /// True while this process runs [`Self::run`]: only then does it
    /// record anchor txids in the tables and publish epoch events.
    running: std::sync::atomic::AtomicBool,
    /// This process's anchoring term (see the module documentation; 0
    /// until [`Self::start_anchoring`]), shared with the anchorer's fence.
    term: Arc<AtomicU64>,
    /// Best block height from the wallet's last sync.
    tip: AtomicU32,
    publisher: Option<Arc<dyn Publisher>>,
    /// Serializes challenge issuance, so that counting the outstanding
    /// challenges and storing a new one cannot interleave past the cap.
    issuing: Mutex<()>,
    /// Anchor records as of the last sync or close: lookups read these
    /// instead of waiting for the wallet, which a slow sync may hold.
    records: std::sync::Mutex<HashMap<u64, AnchorRecord>>,
    /// `gettxoutproof` answers by (txid, block): a block's proof never changes.
    proofs: std::sync::Mutex<HashMap<(Txid, BlockHash), MerkleBlock>>,
    /// The anchoring wallet's funding address, once known (its first one
    /// needs the node): the status page shows it without waiting for the wallet.
    funding_address: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the witness key.
        f.debug_struct("IdentityService")
            .field("witness", &self.witness.public_key())
            .finish_non_exhaustive()
    }
}

/// Clears [`IdentityService::running`] when `run` ends, however it ends.
struct RunningFlag<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for RunningFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Now, in Unix seconds (0 if the clock is before 1970).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl IdentityService {
    /// Opens the service: identity's migrations on `db` (creating its tables
    /// on first start), witness key, anchoring wallet (no network call), X
    /// client, and the registry replayed from `db`.
    pub async fn open(
        config: ServiceConfig,
        db: IdentityDb,
        publisher: Option<Arc<dyn Publisher>>,
    ) -> Result<Arc<Self>, ServiceError> {
        let witness = load_or_create_witness_key(&config.data_dir)?;
        let anchorer = Anchorer::open(
            config.data_dir.clone(),
            config.network,
            config.rpc.clone(),
            config.anchor_policy,
        )
        .await?;
        let client = PublicXClient::new(config.x.clone()).map_err(ServiceError::XSetup)?;
        let checker = ProofChecker::new(client, config.check);
        db.migrate().await?;
        let ops = db.operations().await?;
        let epochs = db.epochs().await?;
        let (n_ops, n_epochs) = (ops.len(), epochs.len());
        let core = Core::replay(config.registry, ops, epochs)?;
        info!(
            operations = n_ops,
            epochs = n_epochs,
            witness = %witness.public_key().to_bech32().unwrap_or_default(),
            "identity registry loaded"
        );
        let tip = AtomicU32::new(core.height);
        let shared = matches!(db, IdentityDb::Postgres(_));
        let term = Arc::new(AtomicU64::new(0));
        anchorer
            .set_fence(anchoring::term_fence(&db, &term))
            .await?;
        let service = Arc::new(Self {
            config,
            db,
            witness,
            checker,
            anchorer: std::sync::Mutex::new(anchorer),
            core: Mutex::new(core),
            shared,
            running: std::sync::atomic::AtomicBool::new(false),
            term,
            tip,
            publisher,
            issuing: Mutex::new(()),
            records: std::sync::Mutex::new(HashMap::new()),
            proofs: std::sync::Mutex::new(HashMap::new()),
            funding_address: std::sync::Mutex::new(None),
        });
        // Local reads only (the wallet's records): fills the lookup cache.
        service.refresh_anchor_txids().await?;
        Ok(service)
    }

    /// The witness key's public half.
    pub fn witness_public_key(&self) -> PublicKey {
        self.witness.public_key()
    }

    /// The anchoring wallet (e.g. for a funding address).
    pub fn anchorer(&self) -> Anchorer {
        self.anchorer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The core, caught up with the rows other processes stored (see the
    /// module documentation). A failed catch-up is logged and the core
    /// served as this process has it: reads stay available.
    async fn core(&self) -> MutexGuard<'_, Core> {
        let mut core = self.core.lock().await;
        if let Err(e) = self.catch_up(&mut core).await {
            warn!(error = %e, "cannot catch up with the stored identity log");
        }
        core
    }

    /// Applies the rows stored beyond what `core` holds (Postgres only: an
    /// SQLite database has no other writer).
    async fn catch_up(&self, core: &mut Core) -> Result<(), ServiceError> {
        self.catch_up_from(core, db::Rows::Pool(&self.db)).await
    }

    /// [`Self::catch_up`] from `rows` (the pool, or under the write lock).
    async fn catch_up_from(
        &self,
        core: &mut Core,
        mut rows: db::Rows<'_>,
    ) -> Result<(), ServiceError> {
        if !self.shared {
            return Ok(());
        }
        let head = rows.head().await?;
        let log_size = core.log.size()?;
        if head.next_log_index == log_size && head.epochs == core.open_epoch() {
            return Ok(());
        }
        // Epochs first: an operation read after them belongs to a known
        // epoch or the one open after them; later ones wait for the next
        // catch-up (their epoch's row may have been stored after ours was read).
        let epochs = rows.epochs_from(core.open_epoch()).await?;
        let open_after = core.open_epoch() + epochs.len() as u64;
        let mut ops = rows.operations_from(log_size).await?;
        ops.retain(|o| o.epoch <= open_after);
        let behind = ops.iter().map(|o| o.height).min();
        let closes = epochs.iter().map(|e| e.close_height).min();
        if behind.into_iter().chain(closes).any(|h| h < core.height) {
            // This core advanced past heights the rows were decided at.
            let all_ops = rows.operations_from(0).await?;
            let all_epochs = rows.epochs_from(0).await?;
            *core = Core::replay(self.config.registry, all_ops, all_epochs)?;
            return Ok(());
        }
        core.replay_rows(ops, epochs)
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    fn publish(&self, event: Event) {
        if let Some(p) = &self.publisher {
            p.publish(event);
        }
    }

    /// Keeps this process's view current while another process runs
    /// [`Self::run`] on a shared (Postgres) database: every anchor sync
    /// interval it catches the core up and reads the anchor records the
    /// running process wrote to the shared wallet file. Returns at once on
    /// SQLite; idle while this process runs [`Self::run`] itself.
    pub async fn follow(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        if !self.shared {
            return;
        }
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(
            self.config
                .anchor_sync_interval
                .max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if self.running.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            drop(self.core().await);
            if let Err(e) = self.refresh_anchor_txids().await {
                warn!(error = %e, "cannot read the anchor records");
            }
        }
    }

    /// Makes this process the one that anchors: takes a new anchoring term
    /// (fencing off every earlier holder, see the module documentation),
    /// then, on a shared (Postgres) database, reopens the anchoring wallet
    /// from its file, which the previous holder may have changed. Returns
    /// the term. From then on this process records anchor txids and
    /// publishes epoch events. [`Self::run`] calls it first.
    pub async fn start_anchoring(&self) -> Result<u64, ServiceError> {
        let term = self.db.take_anchor_term().await?;
        self.term.store(term, std::sync::atomic::Ordering::Release);
        info!(term, "identity anchoring term taken");
        if self.shared {
            let reopened = Anchorer::open(
                self.config.data_dir.clone(),
                self.config.network,
                self.config.rpc.clone(),
                self.config.anchor_policy,
            )
            .await;
            match reopened {
                Ok(a) => {
                    a.set_fence(anchoring::term_fence(&self.db, &self.term))
                        .await?;
                    *self.anchorer.lock().unwrap_or_else(|p| p.into_inner()) = a;
                }
                Err(e) => warn!(error = %e, "cannot reopen the anchoring wallet"),
            }
        }
        self.running
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(term)
    }

    /// Runs epoch closes and anchor syncs until `shutdown` completes, after
    /// [`Self::start_anchoring`] (retried every second while the database
    /// cannot be reached).
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let started = tokio::select! {
                _ = &mut shutdown => return,
                r = self.start_anchoring() => r,
            };
            match started {
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "cannot take the identity anchoring term; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        // Set by `start_anchoring`; cleared however `run` ends.
        let _running = RunningFlag(&self.running);
        let mut epochs =
            tokio::time::interval(self.config.epoch_interval.max(Duration::from_millis(10)));
        let mut syncs = tokio::time::interval(
            self.config
                .anchor_sync_interval
                .max(Duration::from_millis(10)),
        );
        epochs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        syncs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval is immediate: sync now, close later.
        epochs.tick().await;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = syncs.tick() => {
                    if let Err(e) = self.sync_anchors().await {
                        warn!(error = %e, "identity anchor sync failed");
                    }
                    if let Err(e) = self.db.purge_challenges(unix_now()).await {
                        warn!(error = %e, "cannot purge expired challenges");
                    }
                }
                _ = epochs.tick() => {
                    if let Err(e) = self.close_epoch().await {
                        warn!(error = %e, "closing the identity epoch failed");
                    }
                }
            }
        }
    }
}
