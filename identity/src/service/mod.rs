//! The identity service a node runs: challenges, proof-post checks, witness
//! attestations, the registry, the log and state tree, epochs and anchoring.
//!
//! # Persistence
//!
//! The source of truth is SQL ([`IdentityDb`], in the relay's own database):
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

pub mod db;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::consensus::deserialize;
use bitcoin::{BlockHash, MerkleBlock, Network, Txid};
use nostr::nips::nip19::ToBech32;
use nostr::{Event, JsonUtil, Keys, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

pub use db::IdentityDb;
use db::{ChallengeRow, EpochRow, OperationRow};

use cairn_bitcoin::private_file;
use cairn_bitcoin::{RpcClient, RpcConfig};

use crate::anchor::{AnchorError, AnchorPolicy, AnchorRecord, AnchorState, Anchorer, Health};
use crate::binding::{
    log_entry, BindingError, BindingOp, Identity, IdentityStatus, LogEntryKind, OpContext, OpKind,
    Registry, RegistryConfig, RegistryError, Status, WitnessAttestation,
};
use crate::bundle::{AbsenceBundle, ProofBundle};
use crate::epoch::{EpochHeader, HEADER_VERSION};
use crate::log::{LogError, MemoryLogStore, MerkleLog};
use crate::state::{state_key, MemoryStateStore, SparseMerkleTree, StateError};
use crate::x::{
    Challenge, CheckPolicy, FetchError, ProofChecker, ProofClaim, ProofError, PublicXClient,
    XClientConfig,
};

/// File in the data directory holding the witness key (hex secret, mode 0600).
pub const WITNESS_KEY_FILE: &str = "witness.key";
/// Default time between epoch closes.
pub const DEFAULT_EPOCH_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Default time between anchor syncs (new blocks, fee bumps, reorgs).
pub const DEFAULT_ANCHOR_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Publishes the service's records (bindings, attestations, epoch headers)
/// on the node's own relay, so that other nodes can mirror them.
pub trait Publisher: Send + Sync {
    /// Hands `event` to the relay; failures are the publisher's to log.
    fn publish(&self, event: Event);
}

/// Everything the service needs besides its database.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Holds the witness key, the wallet seed and the wallet database.
    pub data_dir: PathBuf,
    /// Bitcoin network of the anchoring wallet.
    pub network: Network,
    /// Bitcoin Core JSON-RPC endpoint.
    pub rpc: RpcConfig,
    /// Fees and confirmations of anchors.
    pub anchor_policy: AnchorPolicy,
    /// X endpoints and retries.
    pub x: XClientConfig,
    /// Proof-post check tunables.
    pub check: CheckPolicy,
    /// Registry rules (recovery delay).
    pub registry: RegistryConfig,
    /// Time between epoch closes.
    pub epoch_interval: Duration,
    /// Time between anchor syncs.
    pub anchor_sync_interval: Duration,
    /// How long an issued challenge is accepted.
    pub challenge_ttl: Duration,
    /// Most challenges that may be outstanding (issued, unused, unexpired)
    /// at once, across all clients: bounds the challenge table whatever
    /// per-client limits the caller applies.
    pub max_outstanding_challenges: u64,
}

/// Default [`ServiceConfig::max_outstanding_challenges`].
pub const DEFAULT_MAX_OUTSTANDING_CHALLENGES: u64 = 10_000;

/// Why a request to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The binding event is not a well-formed operation.
    #[error("invalid binding event: {0}")]
    InvalidEvent(#[from] BindingError),
    /// No challenge with the operation's nonce was issued here.
    #[error("unknown challenge; request one from this node first")]
    UnknownChallenge,
    /// The challenge was already used by an accepted operation.
    #[error("challenge was already used")]
    ChallengeUsed,
    /// The challenge expired.
    #[error("challenge expired at {expires_at}")]
    ChallengeExpired {
        /// Unix seconds.
        expires_at: u64,
    },
    /// The challenge was issued for another key than the event's signer.
    #[error("challenge was issued for another key")]
    ChallengeKeyMismatch,
    /// The proof post does not prove the claim (or X could not be asked).
    #[error("proof post: {0}")]
    Proof(#[from] ProofError),
    /// What the post showed does not match the operation.
    #[error("proof post does not match the operation: {0}")]
    Mismatch(&'static str),
    /// The registry refused the operation.
    #[error("operation refused: {0}")]
    Refused(#[from] RegistryError),
    /// Nothing known under that name.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// An absence proof was asked for an `x_uid` that has a record.
    #[error("x_uid {0} has a record; look it up instead")]
    Known(u64),
    /// The cap on outstanding challenges is reached.
    #[error("too many outstanding challenges; retry in {retry_after_secs} s")]
    TooManyChallenges {
        /// Seconds until the oldest outstanding challenge expires.
        retry_after_secs: u64,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The anchoring wallet failed to open.
    #[error("anchoring: {0}")]
    Anchor(#[from] AnchorError),
    /// The witness key file.
    #[error("witness key {path}: {reason}")]
    WitnessKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The X client could not be set up.
    #[error("X client: {0}")]
    XSetup(FetchError),
    /// The stored rows do not replay to the stored epoch headers.
    #[error("stored identity registry is inconsistent: {0}")]
    Corrupt(String),
    /// The in-memory log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The in-memory state tree.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A challenge as handed to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedChallenge {
    /// The nonce to quote in the binding event's `challenge` tag.
    pub nonce: String,
    /// The key it is for.
    pub npub: String,
    /// The exact text to post on X.
    pub text: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What an accepted operation became.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingReceipt {
    /// `"accepted"`.
    pub status: String,
    /// The operation (`bind`, `recover`, …).
    pub op: String,
    /// The identity (decimal string: X ids exceed JSON's safe integers).
    pub x_uid: String,
    /// Its `seq`.
    pub seq: u64,
    /// The binding event's id.
    pub event_id: String,
    /// The epoch it will be anchored in.
    pub epoch: u64,
    /// The operation's log leaf index.
    pub log_index: u64,
    /// The node's witness attestation (bind and recover).
    pub attestation: Option<Event>,
}

/// Anchor of one epoch, as reported over HTTP.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorView {
    /// `queued`, `signed`, `unconfirmed` or `confirmed`.
    pub state: &'static str,
    /// Current anchor txid.
    pub txid: Option<String>,
    /// Block height when confirmed.
    pub block_height: Option<u32>,
    /// Block hash when confirmed.
    pub block_hash: Option<String>,
    /// Confirmations at the wallet's tip.
    pub confirmations: u32,
    /// Whether it has the configured confirmations.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Fee in satoshis.
    pub fee_sat: Option<u64>,
    /// Size in vbytes.
    pub vsize: Option<u64>,
}

/// One closed epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochView {
    /// Epoch number.
    pub epoch: u64,
    /// The 113-byte header, hex.
    pub header: String,
    /// Its hash (what the OP_RETURN carries), hex.
    pub header_hash: String,
    /// Header hash of the previous epoch, hex (zeros for epoch 0).
    pub prev_header_hash: String,
    /// Log size.
    pub log_size: u64,
    /// Log root, hex.
    pub log_root: String,
    /// State root, hex.
    pub state_root: String,
    /// Unix seconds.
    pub closed_at: u64,
    /// The anchor, when the wallet has a record.
    pub anchor: Option<AnchorView>,
}

/// Where an identity stands, as the node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Accepted, its epoch not anchored in a block yet.
    Pending,
    /// Its epoch's anchor is confirmed, not yet final.
    Anchored,
    /// Its epoch's anchor has the configured confirmations.
    Final,
    /// The handle now belongs to another id.
    Moved,
    /// Revoked, or the key asked about was rotated away.
    Revoked,
}

impl Standing {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Anchored => "anchored",
            Self::Final => "final",
            Self::Moved => "moved",
            Self::Revoked => "revoked",
        }
    }
}

/// The registry's view of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingState {
    /// A key is bound.
    Bound,
    /// A recovery to a new key is waiting out its delay.
    RecoveryPending,
    /// The binding was revoked.
    Revoked,
    /// The key asked about is no longer the bound one.
    Rotated,
}

impl BindingState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bound => "bound",
            Self::RecoveryPending => "recovery_pending",
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
        }
    }
}

macro_rules! wire_name_impls {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // Lets callers compare with the wire name directly.
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}
wire_name_impls!(Standing);
wire_name_impls!(BindingState);

/// Where one identity (or key) stands.
///
/// `B` is how the bundle is held: the node builds a [`ProofBundle`]; a client
/// may read it as raw JSON (`serde_json::Value`) so that a malformed bundle
/// does not hide the rest of the answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityView<B = ProofBundle> {
    /// X numeric user id (decimal string).
    pub x_uid: String,
    /// Handle of the latest proof post.
    pub handle: String,
    /// Currently bound key, hex (none when revoked).
    pub pubkey: Option<String>,
    /// Currently bound key, NIP-19.
    pub npub: Option<String>,
    /// `pending` (not anchored yet), `anchored` (confirmed, not final),
    /// `final`, `moved` (the handle now belongs to another id) or `revoked`.
    pub status: Standing,
    /// The registry's view: `bound`, `recovery_pending` or `revoked`;
    /// `rotated` when the key asked about is no longer the bound one.
    pub binding: BindingState,
    /// The id now holding the handle, when moved.
    pub moved_to: Option<String>,
    /// `seq` of the latest accepted operation.
    pub seq: u64,
    /// Id of the latest accepted operation.
    pub head: String,
    /// Epoch of the latest accepted operation.
    pub epoch: u64,
    /// Confirmations of that epoch's anchor (0 when not confirmed).
    pub confirmations: u32,
    /// That epoch's anchor txid.
    pub anchor_txid: Option<String>,
    /// Height at which a pending recovery completes.
    pub recovery_effective_height: Option<u32>,
    /// The proof bundle, once the epoch holding the record is anchored in a block.
    pub bundle: Option<B>,
}

/// Anchoring health for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct AnchoringStatus {
    /// `ok`, `waiting_for_funds`, `chain_unreachable`, `rejected`, `fee_cap_reached` or `error`.
    pub health: &'static str,
    /// Human-readable reason (no secrets).
    pub message: Option<String>,
    /// Wallet tip height.
    pub tip_height: u32,
    /// Wallet balance, satoshis.
    pub balance_sat: u64,
    /// Epochs waiting for a transaction.
    pub queued_epochs: Vec<u64>,
    /// Epochs whose anchor is not confirmed.
    pub unconfirmed_epochs: Vec<u64>,
}

/// The service as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// The witness key (NIP-19).
    pub witness: String,
    /// The epoch operations are currently accepted into.
    pub open_epoch: u64,
    /// Operations accepted into it so far.
    pub open_epoch_operations: usize,
    /// Log size.
    pub log_size: u64,
    /// Identities known.
    pub identities: usize,
    /// Anchoring.
    pub anchoring: AnchoringStatus,
}

/// What [`IdentityService::close_epoch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochClose {
    /// No operation was accepted since the last close.
    Skipped,
    /// The epoch closed and was handed to the anchorer.
    Closed {
        /// Its number.
        epoch: u64,
        /// Its anchor, if one was built now.
        txid: Option<Txid>,
        /// Why it is queued instead, if it is.
        queued: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct ClosedEpoch {
    header: EpochHeader,
    close_height: u32,
    anchor_txid: Option<Txid>,
    closed_at: u64,
}

#[derive(Debug, Clone)]
struct AcceptedOp {
    event: Event,
    op: OpKind,
    attestation: Option<Event>,
    log_index: u64,
    attestation_index: Option<u64>,
    epoch: u64,
}

/// In-memory registry, log and state tree, rebuilt from SQL at start.
struct Core {
    registry: Registry,
    log: MerkleLog<MemoryLogStore>,
    state: SparseMerkleTree<MemoryStateStore>,
    epochs: Vec<ClosedEpoch>,
    open_ops: usize,
    /// Highest block height used so far; never goes back (a reorg must not
    /// make replay disagree with what was decided live).
    height: u32,
    history: HashMap<u64, Vec<AcceptedOp>>,
    /// Record of each identity at the close of every epoch that changed it.
    snapshots: HashMap<u64, BTreeMap<u64, Identity>>,
    dirty: HashSet<u64>,
    /// Every key ever bound, to the identity it was bound to.
    keys: HashMap<PublicKey, u64>,
}

impl Core {
    fn new(config: RegistryConfig) -> Self {
        Self {
            registry: Registry::new(config),
            log: MerkleLog::new(MemoryLogStore::new()),
            state: SparseMerkleTree::new(MemoryStateStore::new()),
            epochs: Vec::new(),
            open_ops: 0,
            height: 0,
            history: HashMap::new(),
            snapshots: HashMap::new(),
            dirty: HashSet::new(),
            keys: HashMap::new(),
        }
    }

    fn open_epoch(&self) -> u64 {
        self.epochs.len() as u64
    }

    /// Completes due recoveries at `height` (and remembers the height).
    fn advance(&mut self, height: u32) -> Result<(), StateError> {
        self.height = self.height.max(height);
        for applied in self.registry.advance(self.height) {
            self.state
                .insert(state_key(applied.x_uid), applied.record_hash)?;
            self.dirty.insert(applied.x_uid);
            self.note_key(applied.x_uid);
        }
        Ok(())
    }

    fn note_key(&mut self, x_uid: u64) {
        if let Some(key) = self.registry.get(x_uid).and_then(|i| i.key) {
            self.keys.insert(key, x_uid);
        }
    }

    fn ctx(&self) -> OpContext {
        OpContext {
            epoch: self.open_epoch(),
            height: self.height,
        }
    }

    /// Applies an operation already checked against the registry.
    fn apply(
        &mut self,
        op: &BindingOp,
        attestation: Option<Event>,
        ctx: OpContext,
    ) -> Result<AcceptedOp, ServiceError> {
        let applied = self.registry.apply(op, ctx)?;
        let attestation_index = match &attestation {
            Some(att) => Some(
                self.log
                    .append(&log_entry(LogEntryKind::Attestation, &att.id))?,
            ),
            None => None,
        };
        let log_index = self.log.append(&op.log_entry())?;
        self.state
            .insert(state_key(applied.x_uid), applied.record_hash)?;
        self.dirty.insert(op.x_uid);
        self.note_key(op.x_uid);
        // A key that signed an operation for this id stays findable, even
        // when it is not (or no longer) the bound one.
        self.keys.entry(op.signer()).or_insert(op.x_uid);
        self.open_ops += 1;
        let accepted = AcceptedOp {
            event: op.event.clone(),
            op: op.op,
            attestation,
            log_index,
            attestation_index,
            epoch: ctx.epoch,
        };
        self.history
            .entry(op.x_uid)
            .or_default()
            .push(accepted.clone());
        Ok(accepted)
    }

    /// Closes the open epoch at the current height and returns its header,
    /// linked to the previous epoch by that epoch's header hash.
    fn close(&mut self) -> Result<EpochHeader, ServiceError> {
        let prev_header_hash = self
            .epochs
            .last()
            .map_or([0; 32], |prev| prev.header.hash());
        let header = EpochHeader {
            version: HEADER_VERSION,
            epoch: self.open_epoch(),
            prev_header_hash,
            log_size: self.log.size()?,
            log_root: self.log.root()?,
            state_root: self.state.root(),
        };
        Ok(header)
    }

    fn commit_close(&mut self, epoch: ClosedEpoch) {
        let n = epoch.header.epoch;
        for x_uid in self.dirty.drain() {
            if let Some(identity) = self.registry.get(x_uid) {
                self.snapshots
                    .entry(x_uid)
                    .or_default()
                    .insert(n, identity.clone());
            }
        }
        self.epochs.push(epoch);
        self.open_ops = 0;
    }

    /// Rebuilds the core from stored rows, checking every stored header.
    fn replay(
        config: RegistryConfig,
        ops: Vec<OperationRow>,
        epochs: Vec<EpochRow>,
    ) -> Result<Self, ServiceError> {
        let corrupt = |m: String| ServiceError::Corrupt(m);
        let mut core = Self::new(config);
        let mut ops = ops.into_iter().peekable();
        let replay_op = |core: &mut Core, row: OperationRow| -> Result<(), ServiceError> {
            if row.epoch != core.open_epoch() {
                return Err(corrupt(format!(
                    "operation {} is in epoch {} while epoch {} is open",
                    row.log_index,
                    row.epoch,
                    core.open_epoch()
                )));
            }
            let event = Event::from_json(&row.event_json)
                .map_err(|e| corrupt(format!("operation {}: {e}", row.log_index)))?;
            let op = BindingOp::from_event(&event)
                .map_err(|e| corrupt(format!("operation {}: {e}", row.log_index)))?;
            let attestation = row
                .attestation_json
                .as_deref()
                .map(Event::from_json)
                .transpose()
                .map_err(|e| corrupt(format!("attestation of {}: {e}", row.log_index)))?;
            core.advance(row.height)?;
            let ctx = OpContext {
                epoch: row.epoch,
                height: row.height,
            };
            let accepted = core.apply(&op, attestation, ctx).map_err(|e| {
                corrupt(format!("operation {} does not replay: {e}", row.log_index))
            })?;
            if accepted.log_index != row.log_index
                || accepted.attestation_index != row.attestation_index
            {
                return Err(corrupt(format!(
                    "operation {} replays at log index {}",
                    row.log_index, accepted.log_index
                )));
            }
            Ok(())
        };
        for stored in epochs {
            if stored.epoch != core.open_epoch() {
                return Err(corrupt(format!("epoch {} is missing", core.open_epoch())));
            }
            while let Some(row) = ops.next_if(|o| o.epoch == stored.epoch) {
                replay_op(&mut core, row)?;
            }
            core.advance(stored.close_height)?;
            let bytes = hex::decode(&stored.header)
                .map_err(|e| corrupt(format!("epoch {} header: {e}", stored.epoch)))?;
            let header = EpochHeader::from_bytes(&bytes)
                .map_err(|e| corrupt(format!("epoch {} header: {e}", stored.epoch)))?;
            let replayed = core.close()?;
            if replayed != header {
                return Err(corrupt(format!(
                    "epoch {} header does not match the replayed log and state",
                    stored.epoch
                )));
            }
            let anchor_txid = stored
                .anchor_txid
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| corrupt(format!("epoch {} anchor txid: {e}", stored.epoch)))?;
            core.commit_close(ClosedEpoch {
                header,
                close_height: stored.close_height,
                anchor_txid,
                closed_at: stored.closed_at,
            });
        }
        for row in ops {
            replay_op(&mut core, row)?;
        }
        Ok(core)
    }
}

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
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the witness key.
        f.debug_struct("IdentityService")
            .field("witness", &self.witness.public_key())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads the witness key from `dir`, creating it (mode 0600) on first start.
pub fn load_or_create_witness_key(dir: &Path) -> Result<Keys, ServiceError> {
    let path = dir.join(WITNESS_KEY_FILE);
    let err = |reason: String| ServiceError::WitnessKey {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let (text, origin) = private_file::load_or_create(&path, || {
        format!("{}\n", Keys::generate().secret_key().to_secret_hex())
    })
    // The messages name the file and the fix (chmod 600), never the key.
    .map_err(|e| err(e.to_string()))?;
    // The parse error could echo the file's content: keep it out.
    let keys = Keys::parse(text.trim()).map_err(|_| err("not a valid secret key".into()))?;
    if origin == private_file::Origin::Created {
        info!(witness = %keys.public_key().to_bech32().unwrap_or_default(),
            "created a new witness key");
    }
    Ok(keys)
}

fn anchor_view(record: &crate::anchor::AnchorRecord) -> AnchorView {
    let (state, height, hash, confirmations) = match record.state {
        AnchorState::Queued => ("queued", None, None, 0),
        AnchorState::Signed => ("signed", None, None, 0),
        AnchorState::Unconfirmed => ("unconfirmed", None, None, 0),
        AnchorState::Confirmed {
            height,
            block_hash,
            confirmations,
        } => (
            "confirmed",
            Some(height),
            Some(block_hash.to_string()),
            confirmations,
        ),
    };
    AnchorView {
        state,
        txid: record.txid.map(|t| t.to_string()),
        block_height: height,
        block_hash: hash,
        confirmations,
        is_final: record.is_final,
        fee_sat: record.fee.map(|f| f.to_sat()),
        vsize: record.vsize,
    }
}

fn health_view(health: &Health) -> (&'static str, Option<String>) {
    match health {
        Health::Ok => ("ok", None),
        Health::WaitingForFunds { needed, available } => (
            "waiting_for_funds",
            Some(format!(
                "an anchor needs {needed}, the wallet has {available} usable"
            )),
        ),
        Health::ChainUnreachable { reason } => (
            "chain_unreachable",
            Some(format!("Bitcoin node unreachable: {reason}")),
        ),
        Health::Rejected {
            epoch,
            code,
            message,
        } => (
            "rejected",
            Some(format!(
                "epoch {epoch}: anchor rejected (code {code}): {message}"
            )),
        ),
        Health::FeeCapReached { epoch } => (
            "fee_cap_reached",
            Some(format!(
                "epoch {epoch}: unconfirmed anchor already pays the fee cap"
            )),
        ),
        Health::Error(m) => ("error", Some(m.clone())),
    }
}

impl IdentityService {
    /// Opens the service: witness key, anchoring wallet (no network call),
    /// X client, and the registry replayed from `db`.
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

    /// Issues a challenge for `pubkey` and stores it, unless
    /// [`ServiceConfig::max_outstanding_challenges`] are already outstanding.
    pub async fn issue_challenge(
        &self,
        pubkey: &PublicKey,
    ) -> Result<IssuedChallenge, ServiceError> {
        let _issuing = self.issuing.lock().await;
        let now = unix_now();
        let (outstanding, oldest_expiry) = self.db.outstanding_challenges(now).await?;
        if outstanding >= self.config.max_outstanding_challenges {
            return Err(ServiceError::TooManyChallenges {
                // A challenge is valid through its `expires_at` second.
                retry_after_secs: oldest_expiry.map_or(1, |e| (e + 1).saturating_sub(now).max(1)),
            });
        }
        let challenge = Challenge::issue(pubkey, now, self.config.challenge_ttl);
        self.db
            .insert_challenge(&ChallengeRow {
                nonce: challenge.nonce.clone(),
                pubkey: pubkey.to_hex(),
                issued_at: challenge.issued_at,
                expires_at: challenge.expires_at,
                used: false,
            })
            .await?;
        Ok(IssuedChallenge {
            text: challenge.proof_text(),
            nonce: challenge.nonce,
            npub: challenge.npub,
            issued_at: challenge.issued_at,
            expires_at: challenge.expires_at,
        })
    }

    /// Checks a `bind`/`recover` proof post and signs the attestation.
    async fn attest(&self, op: &BindingOp, post_id: Option<u64>) -> Result<Event, ServiceError> {
        let identity = op.identity.as_ref().expect("bind and recover carry i");
        if post_id.is_some_and(|p| p != identity.post_id) {
            return Err(ServiceError::BadRequest(
                "post_id differs from the event's `i` tag".into(),
            ));
        }
        let nonce = op.challenge.as_deref().expect("bind and recover carry one");
        let row = self
            .db
            .challenge(nonce)
            .await?
            .ok_or(ServiceError::UnknownChallenge)?;
        if row.used {
            return Err(ServiceError::ChallengeUsed);
        }
        if row.pubkey != op.signer().to_hex() {
            return Err(ServiceError::ChallengeKeyMismatch);
        }
        let now = unix_now();
        if now > row.expires_at {
            return Err(ServiceError::ChallengeExpired {
                expires_at: row.expires_at,
            });
        }
        let challenge = Challenge {
            nonce: row.nonce.clone(),
            npub: op.signer().to_bech32().unwrap_or_default(),
            issued_at: row.issued_at,
            expires_at: row.expires_at,
        };
        let claim = ProofClaim {
            x_uid: op.x_uid,
            handle: identity.handle.clone(),
            post_id: identity.post_id,
        };
        let post = self.checker.check_at(&challenge, &claim, now).await?;
        if post.subject != op.signer() {
            return Err(ServiceError::Mismatch(
                "the post names another key than the signer",
            ));
        }
        if post.x_uid != op.x_uid {
            return Err(ServiceError::Mismatch("the post's author is another id"));
        }
        let attestation = WitnessAttestation {
            x_uid: post.x_uid,
            handle: identity.handle.clone(),
            post_id: identity.post_id,
            subject: post.subject,
            challenge: post.nonce.clone(),
            post_text_sha256: post.text_sha256,
            posted_at: post.created_at,
            fetched_at: post.fetched_at,
        };
        attestation
            .matches(op)
            .map_err(|_| ServiceError::Mismatch("attestation does not match the operation"))?;
        let event = attestation
            .to_event_builder()
            .sign_with_keys(&self.witness)
            .map_err(|e| ServiceError::BadRequest(format!("signing the attestation: {e}")))?;
        Ok(event)
    }

    /// Validates and logs a signed binding operation. For `bind` and
    /// `recover` the proof post is fetched from X and attested first.
    /// `post_id`, when given, must equal the event's `i` tag.
    pub async fn submit(
        &self,
        event: &Event,
        post_id: Option<u64>,
    ) -> Result<BindingReceipt, ServiceError> {
        let op = BindingOp::from_event(event)?;
        // Cheap refusal before asking X: history may already rule it out.
        {
            let mut core = self.core.lock().await;
            core.advance(self.tip.load(Ordering::Relaxed))?;
            let ctx = core.ctx();
            core.registry.check(&op, ctx)?;
        }
        let attestation = match op.op {
            OpKind::Bind | OpKind::Recover => Some(self.attest(&op, post_id).await?),
            _ => None,
        };
        let mut core = self.core.lock().await;
        core.advance(self.tip.load(Ordering::Relaxed))?;
        let ctx = core.ctx();
        // Again: another operation may have been accepted while X was asked.
        core.registry.check(&op, ctx)?;
        let size = core.log.size()?;
        let (attestation_index, log_index) = match attestation {
            Some(_) => (Some(size), size + 1),
            None => (None, size),
        };
        let row = OperationRow {
            log_index,
            event_id: op.id().to_hex(),
            x_uid: op.x_uid,
            event_json: event.as_json(),
            attestation_json: attestation.as_ref().map(|a| a.as_json()),
            attestation_index,
            epoch: ctx.epoch,
            height: ctx.height,
            accepted_at: unix_now(),
        };
        if !self
            .db
            .insert_operation(&row, op.challenge.as_deref())
            .await?
        {
            return Err(ServiceError::ChallengeUsed);
        }
        let accepted = core.apply(&op, attestation.clone(), ctx)?;
        debug_assert_eq!(accepted.log_index, log_index);
        drop(core);
        info!(op = %op.op, x_uid = op.x_uid, seq = op.seq, epoch = ctx.epoch, "identity operation accepted");
        self.publish(event.clone());
        if let Some(att) = &attestation {
            self.publish(att.clone());
        }
        Ok(BindingReceipt {
            status: "accepted".to_owned(),
            op: op.op.as_str().to_owned(),
            x_uid: op.x_uid.to_string(),
            seq: op.seq,
            event_id: op.id().to_hex(),
            epoch: ctx.epoch,
            log_index,
            attestation,
        })
    }

    /// Closes the open epoch if it has operations, stores it and hands it
    /// to the anchorer (which queues it behind any epoch still waiting for
    /// a transaction).
    pub async fn close_epoch(&self) -> Result<EpochClose, ServiceError> {
        self.refresh_anchor_txids().await?;
        let mut core = self.core.lock().await;
        if core.open_ops == 0 {
            return Ok(EpochClose::Skipped);
        }
        core.advance(self.tip.load(Ordering::Relaxed))?;
        let header = core.close()?;
        let closed = ClosedEpoch {
            header,
            close_height: core.height,
            anchor_txid: None,
            closed_at: unix_now(),
        };
        self.db
            .insert_epoch(&EpochRow {
                epoch: header.epoch,
                header: hex::encode(header.to_bytes()),
                close_height: closed.close_height,
                anchor_txid: None,
                closed_at: closed.closed_at,
            })
            .await?;
        core.commit_close(closed);
        drop(core);
        info!(
            epoch = header.epoch,
            log_size = header.log_size,
            "identity epoch closed"
        );
        let (txid, queued) = match self
            .anchorer
            .anchor(header.epoch, &header.op_return_payload())
            .await
        {
            Ok(txid) => {
                self.set_txid(header.epoch, txid).await?;
                self.refresh_anchor_txids().await?;
                (Some(txid), None)
            }
            Err(e) if e.is_queued() => {
                warn!(epoch = header.epoch, reason = %e, "epoch queued for anchoring");
                (None, Some(e.to_string()))
            }
            Err(e) => {
                warn!(epoch = header.epoch, error = %e, "anchoring failed; will retry on sync");
                (None, Some(e.to_string()))
            }
        };
        if let Ok(event) = header
            .to_event_builder(txid.as_ref())
            .sign_with_keys(&self.witness)
        {
            self.publish(event);
        }
        Ok(EpochClose::Closed {
            epoch: header.epoch,
            txid,
            queued,
        })
    }

    async fn set_txid(&self, epoch: u64, txid: Txid) -> Result<(), ServiceError> {
        self.db.set_anchor_txid(epoch, &txid.to_string()).await?;
        let mut core = self.core.lock().await;
        if let Some(e) = core.epochs.get_mut(epoch as usize) {
            e.anchor_txid = Some(txid);
        }
        Ok(())
    }

    /// Copies the anchorer's current txids (new anchors, fee bumps,
    /// re-anchoring after a reorg) into the epochs table.
    async fn refresh_anchor_txids(&self) -> Result<(), ServiceError> {
        let records = match self.anchorer.records().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read anchor records");
                return Ok(());
            }
        };
        *self.records.lock().unwrap_or_else(|p| p.into_inner()) =
            records.iter().map(|r| (r.epoch, r.clone())).collect();
        let known: Vec<Option<Txid>> = {
            let core = self.core.lock().await;
            core.epochs.iter().map(|e| e.anchor_txid).collect()
        };
        for r in records {
            let (Some(txid), Some(current)) = (r.txid, known.get(r.epoch as usize)) else {
                continue;
            };
            if *current != Some(txid) {
                let fresh = current.is_none();
                self.set_txid(r.epoch, txid).await?;
                if fresh {
                    // The epoch event published at close had no anchor yet.
                    let header = {
                        let core = self.core.lock().await;
                        core.epochs[r.epoch as usize].header
                    };
                    if let Ok(event) = header
                        .to_event_builder(Some(&txid))
                        .sign_with_keys(&self.witness)
                    {
                        self.publish(event);
                    }
                }
            }
        }
        Ok(())
    }

    /// Syncs the anchoring wallet with the chain (confirmations, fee bumps,
    /// reorgs, queued epochs) and records the new tip and txids.
    pub async fn sync_anchors(&self) -> Result<(), ServiceError> {
        if let Err(e) = self.anchorer.sync().await {
            if e.is_queued() {
                warn!(reason = %e, "anchoring is waiting");
            } else {
                warn!(error = %e, "anchor sync failed");
            }
        }
        if let Ok(status) = self.anchorer.status().await {
            self.tip.fetch_max(status.tip_height, Ordering::Relaxed);
        }
        {
            // Recoveries whose delay passed complete now, not only when the
            // next operation or epoch close comes along.
            let mut core = self.core.lock().await;
            core.advance(self.tip.load(Ordering::Relaxed))?;
        }
        self.refresh_anchor_txids().await
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

    /// Where the identity holding `handle` stands.
    pub async fn lookup_handle(&self, handle: &str) -> Result<IdentityView, ServiceError> {
        let x_uid = {
            let core = self.core.lock().await;
            core.registry
                .resolve_handle(handle)
                .map(|i| i.x_uid)
                .ok_or(ServiceError::NotFound("handle"))?
        };
        self.view(x_uid, None).await
    }

    /// Where the identity `key` is (or was) bound to stands.
    pub async fn lookup_key(&self, key: &PublicKey) -> Result<IdentityView, ServiceError> {
        let x_uid = {
            let core = self.core.lock().await;
            *core.keys.get(key).ok_or(ServiceError::NotFound("key"))?
        };
        self.view(x_uid, Some(*key)).await
    }

    /// The key NIP-05 should serve for `name`: the bound key of the identity
    /// currently holding that handle.
    pub async fn nip05(&self, name: &str) -> Option<PublicKey> {
        let core = self.core.lock().await;
        let identity = core.registry.resolve_handle(name)?;
        match identity.status {
            Status::Revoked => None,
            _ => identity.key,
        }
    }

    async fn view(
        &self,
        x_uid: u64,
        asked_key: Option<PublicKey>,
    ) -> Result<IdentityView, ServiceError> {
        let (identity, moved_to, last_epoch, snapshot_epoch) = {
            let core = self.core.lock().await;
            let status = core
                .registry
                .status(x_uid)
                .ok_or(ServiceError::NotFound("identity"))?;
            let (identity, moved_to) = match status {
                IdentityStatus::Bound(i) | IdentityStatus::Revoked(i) => (i.clone(), None),
                IdentityStatus::Moved { identity, now } => (identity.clone(), Some(now)),
            };
            let snapshot_epoch = core
                .snapshots
                .get(&x_uid)
                .and_then(|s| s.keys().next_back().copied());
            (
                identity.clone(),
                moved_to,
                identity.last_epoch,
                snapshot_epoch,
            )
        };
        let record = self.cached_record(last_epoch);
        let (confirmations, is_final, anchor_txid) = match &record {
            Some(r) => match r.state {
                AnchorState::Confirmed { confirmations, .. } => (confirmations, r.is_final, r.txid),
                _ => (0, false, r.txid),
            },
            None => (0, false, None),
        };
        let rotated = asked_key.is_some_and(|k| identity.key != Some(k));
        let binding = if rotated {
            BindingState::Rotated
        } else {
            match identity.status {
                Status::Bound => BindingState::Bound,
                Status::RecoveryPending(_) => BindingState::RecoveryPending,
                Status::Revoked => BindingState::Revoked,
            }
        };
        let status = if moved_to.is_some() {
            Standing::Moved
        } else if identity.status == Status::Revoked || rotated {
            Standing::Revoked
        } else if is_final {
            Standing::Final
        } else if confirmations > 0 {
            Standing::Anchored
        } else {
            Standing::Pending
        };
        let bundle = match snapshot_epoch {
            Some(epoch) => match self.bundle(x_uid, epoch).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(x_uid, epoch, error = %e, "cannot assemble a proof bundle");
                    None
                }
            },
            None => None,
        };
        Ok(IdentityView {
            x_uid: x_uid.to_string(),
            handle: identity.handle.clone(),
            pubkey: identity.key.map(|k| k.to_hex()),
            npub: identity.key.and_then(|k| k.to_bech32().ok()),
            status,
            binding,
            moved_to: moved_to.map(|m| m.to_string()),
            seq: identity.seq,
            head: identity.head.to_hex(),
            epoch: last_epoch,
            confirmations,
            anchor_txid: anchor_txid.map(|t| t.to_string()),
            recovery_effective_height: match identity.status {
                Status::RecoveryPending(p) => Some(p.effective_height),
                _ => None,
            },
            bundle,
        })
    }

    /// The proof bundle of `x_uid` as of `epoch` (which must have changed it),
    /// once that epoch's anchor is in a block.
    async fn bundle(&self, x_uid: u64, epoch: u64) -> Result<Option<ProofBundle>, ServiceError> {
        let Some(record) = self.cached_record(epoch) else {
            return Ok(None);
        };
        let (
            AnchorState::Confirmed {
                height, block_hash, ..
            },
            Some(tx),
        ) = (record.state, record.tx.clone())
        else {
            return Ok(None);
        };
        let merkle_block = self.merkle_block(tx.compute_txid(), block_hash).await?;
        let core = self.core.lock().await;
        let Some(closed) = core.epochs.get(epoch as usize) else {
            return Ok(None);
        };
        let Some(identity) = core.snapshots.get(&x_uid).and_then(|s| s.get(&epoch)) else {
            return Ok(None);
        };
        let ops: Vec<&AcceptedOp> = core
            .history
            .get(&x_uid)
            .map(|h| h.iter().filter(|o| o.epoch <= epoch).collect())
            .unwrap_or_default();
        let Some(head) = ops.last() else {
            return Ok(None);
        };
        let attestations: Vec<(Event, u64)> = ops
            .iter()
            .filter(|o| matches!(o.op, OpKind::Bind | OpKind::Recover))
            .filter_map(|o| Some((o.attestation.clone()?, o.attestation_index?)))
            .collect();
        let bundle = ProofBundle::assemble(
            identity,
            ops.iter().map(|o| o.event.clone()).collect(),
            attestations.iter().map(|(e, _)| e.clone()).collect(),
            head.log_index,
            &attestations.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
            &core.log,
            &core.state,
            closed.header,
            tx,
            height,
            merkle_block,
        )
        .map_err(|e| ServiceError::Corrupt(format!("assembling a bundle: {e}")))?;
        Ok(Some(bundle))
    }

    /// Proof that `x_uid` has no record, against the latest epoch whose
    /// anchor is in a block (protocol §11.5).
    pub async fn absence(&self, x_uid: u64) -> Result<AbsenceBundle, ServiceError> {
        if x_uid == 0 {
            return Err(ServiceError::BadRequest("x_uid must be non-zero".into()));
        }
        if self.core.lock().await.registry.get(x_uid).is_some() {
            return Err(ServiceError::Known(x_uid));
        }
        let confirmed = {
            let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            records
                .values()
                .filter_map(|r| match (r.state, &r.tx) {
                    (
                        AnchorState::Confirmed {
                            height, block_hash, ..
                        },
                        Some(tx),
                    ) => Some((r.epoch, height, block_hash, tx.clone())),
                    _ => None,
                })
                .max_by_key(|(epoch, ..)| *epoch)
        };
        let (epoch, height, block_hash, tx) =
            confirmed.ok_or(ServiceError::NotFound("anchored epoch"))?;
        let merkle_block = self.merkle_block(tx.compute_txid(), block_hash).await?;
        let core = self.core.lock().await;
        let header = core
            .epochs
            .get(epoch as usize)
            .ok_or(ServiceError::NotFound("anchored epoch"))?
            .header;
        let state_proof = core.state.prove_at(&header.state_root, &state_key(x_uid))?;
        // A record is never removed, so absent now means absent then too.
        if state_proof
            .verify(&header.state_root, &state_key(x_uid))
            .map_err(|e| ServiceError::Corrupt(format!("state proof: {e}")))?
            .is_some()
        {
            return Err(ServiceError::Known(x_uid));
        }
        Ok(AbsenceBundle {
            x_uid,
            state_proof,
            epoch_header: header,
            anchor_tx: tx,
            block_height: height,
            merkle_block,
        })
    }

    fn cached_record(&self, epoch: u64) -> Option<AnchorRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&epoch)
            .cloned()
    }

    async fn merkle_block(
        &self,
        txid: Txid,
        block_hash: BlockHash,
    ) -> Result<MerkleBlock, ServiceError> {
        let cached = self
            .proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(txid, block_hash))
            .cloned();
        if let Some(mb) = cached {
            return Ok(mb);
        }
        let mb = self.fetch_merkle_block(txid, block_hash).await?;
        self.proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((txid, block_hash), mb.clone());
        Ok(mb)
    }

    async fn fetch_merkle_block(
        &self,
        txid: Txid,
        block_hash: BlockHash,
    ) -> Result<MerkleBlock, ServiceError> {
        let unreachable =
            |reason: String| ServiceError::Anchor(AnchorError::ChainUnreachable { reason });
        let client = RpcClient::new(&self.config.rpc).map_err(|e| unreachable(e.to_string()))?;
        let bytes = client
            .run(move |c| c.tx_out_proof(&txid, &block_hash))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        deserialize(&bytes).map_err(|e| ServiceError::Corrupt(format!("gettxoutproof: {e}")))
    }

    /// One closed epoch.
    pub async fn epoch(&self, n: u64) -> Result<EpochView, ServiceError> {
        let closed = {
            let core = self.core.lock().await;
            core.epochs
                .get(n as usize)
                .cloned()
                .ok_or(ServiceError::NotFound("epoch"))?
        };
        let anchor = self.cached_record(n).as_ref().map(anchor_view);
        let h = closed.header;
        Ok(EpochView {
            epoch: h.epoch,
            header: hex::encode(h.to_bytes()),
            header_hash: hex::encode(h.hash()),
            prev_header_hash: hex::encode(h.prev_header_hash),
            log_size: h.log_size,
            log_root: hex::encode(h.log_root),
            state_root: hex::encode(h.state_root),
            closed_at: closed.closed_at,
            anchor,
        })
    }

    /// The latest closed epoch.
    pub async fn latest_epoch(&self) -> Result<EpochView, ServiceError> {
        let n = {
            let core = self.core.lock().await;
            core.epochs
                .len()
                .checked_sub(1)
                .ok_or(ServiceError::NotFound("epoch"))?
        };
        self.epoch(n as u64).await
    }

    /// Health of the service and of anchoring.
    pub async fn status(&self) -> Result<ServiceStatus, ServiceError> {
        let anchor = self.anchorer.status().await?;
        let (health, message) = health_view(&anchor.health);
        let core = self.core.lock().await;
        Ok(ServiceStatus {
            witness: self.witness.public_key().to_bech32().unwrap_or_default(),
            open_epoch: core.open_epoch(),
            open_epoch_operations: core.open_ops,
            log_size: core.log.size()?,
            identities: core.history.len(),
            anchoring: AnchoringStatus {
                health,
                message,
                tip_height: anchor.tip_height,
                balance_sat: anchor.balance.to_sat(),
                queued_epochs: anchor.queued,
                unconfirmed_epochs: anchor.unconfirmed,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let created = load_or_create_witness_key(dir.path()).unwrap();
        let path = dir.path().join(WITNESS_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = load_or_create_witness_key(dir.path()).unwrap();
        assert_eq!(created.public_key(), loaded.public_key());
    }

    #[cfg(unix)]
    #[test]
    fn witness_key_readable_by_others_is_refused_without_echoing_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = load_or_create_witness_key(dir.path()).unwrap();
        let path = dir.path().join(WITNESS_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_witness_key(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains(&keys.secret_key().to_secret_hex()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        let err = load_or_create_witness_key(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a valid secret key") && !err.contains("not a key\""),
            "{err}"
        );
    }

    #[test]
    fn replay_refuses_rows_that_do_not_match_their_header() {
        let user = Keys::generate();
        let event = crate::binding::proof_post_op(
            false,
            42,
            0,
            None,
            "alice",
            7,
            "abcdefabcdefabcdefabcdefabcdefab",
        )
        .sign_with_keys(&user)
        .unwrap();
        let op = OperationRow {
            log_index: 0,
            event_id: event.id.to_hex(),
            x_uid: 42,
            event_json: event.as_json(),
            attestation_json: None,
            attestation_index: None,
            epoch: 0,
            height: 100,
            accepted_at: 1,
        };
        // The right header replays; any other is refused.
        let mut core = Core::new(RegistryConfig::default());
        let parsed = BindingOp::from_event(&event).unwrap();
        core.apply(
            &parsed,
            None,
            OpContext {
                epoch: 0,
                height: 100,
            },
        )
        .unwrap();
        let header = core.close().unwrap();
        let row = |h: &EpochHeader| EpochRow {
            epoch: 0,
            header: hex::encode(h.to_bytes()),
            close_height: 100,
            anchor_txid: None,
            closed_at: 2,
        };
        let replayed = Core::replay(
            RegistryConfig::default(),
            vec![op.clone()],
            vec![row(&header)],
        )
        .unwrap();
        assert_eq!(replayed.log.size().unwrap(), 1);
        assert_eq!(
            replayed.registry.get(42).unwrap().key,
            Some(user.public_key())
        );
        let mut forged = header;
        forged.state_root[0] ^= 1;
        assert!(matches!(
            Core::replay(RegistryConfig::default(), vec![op], vec![row(&forged)]),
            Err(ServiceError::Corrupt(_))
        ));
    }
}
