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
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::{BlockHash, MerkleBlock, Txid};
use nostr::nips::nip19::ToBech32;
use nostr::{Event, Keys, PublicKey};
use tokio::sync::Mutex;
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
    anchorer: Anchorer,
    core: Mutex<Core>,
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
        let service = Arc::new(Self {
            config,
            db,
            witness,
            checker,
            anchorer,
            core: Mutex::new(core),
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
    pub fn anchorer(&self) -> &Anchorer {
        &self.anchorer
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

    /// Runs epoch closes and anchor syncs until `shutdown` completes.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
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
