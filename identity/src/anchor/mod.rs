//! Anchoring epochs on Bitcoin with a bdk_wallet 2.x taproot wallet.
//!
//! Each epoch gets one transaction with exactly one OP_RETURN output (the
//! epoch's payload, see [`crate::epoch`]) and one change output back to the
//! wallet. Every anchor spends the previous anchor's change output, so the
//! anchors form a chain and two conflicting anchors would be a double spend.
//!
//! - the seed, its BIP86 account and Bitcoin Core access come from
//!   `cairn_bitcoin` (account [`cairn_bitcoin::ANCHOR_ACCOUNT`]);
//! - [`plan`]: pure rules — feerates, coin selection, sizes, the next step per record;
//! - [`store`]: anchor records and the queue of pending epochs (SQLite, next to
//!   the wallet's own tables);
//! - Core's RPC through [`cairn_bitcoin::RpcClient`], the wallet synced by
//!   [`cairn_bitcoin::wallet::sync_from_core`].
//!
//! [`Anchorer`] ties them together. Its [`Anchorer::sync`] is meant to run on
//! every new block (or periodically): it follows the chain, records
//! confirmations, fee-bumps anchors left unconfirmed for
//! [`AnchorPolicy::bump_after_blocks`], rebroadcasts or re-anchors epochs whose
//! transaction a reorg dropped, and anchors queued epochs in order. When the
//! node is unreachable or the wallet too poor, epochs stay queued and
//! [`Anchorer::status`] says why.
//!
//! A [`Fence`] ([`Anchorer::set_fence`]) guards every signing and
//! broadcast: each one runs inside [`Fence::hold`], and is not made when
//! the fence refuses (another process took the anchoring over; see
//! `crate::service`'s anchoring term).

pub mod plan;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bdk_wallet::chain::ChainPosition;
use bdk_wallet::rusqlite::Connection;
use bdk_wallet::{KeychainKind, PersistedWallet, SignOptions, TxOrdering};
use bitcoin::script::PushBytesBuf;
use bitcoin::{Address, Amount, BlockHash, FeeRate, Network, OutPoint, Transaction, Txid};
use tracing::{info, warn};

use cairn_bitcoin::private_file::restrict_to_owner;
use cairn_bitcoin::wallet::{self, sync_from_core};
use cairn_bitcoin::{ChainError, RpcClient, RpcConfig, Seed, SeedError, SeedOrigin};
use plan::{Coin, Seen, Step, Stored};
use store::{Row, TxVersion};

use crate::epoch::MAX_OP_RETURN_DATA;

/// Name of the SQLite file holding the wallet and the anchor records.
pub const DB_FILE_NAME: &str = "anchor.sqlite";
/// Default feerate floor, also used when the node has no estimate: 1 sat/vB.
pub const DEFAULT_FEE_FLOOR: FeeRate = FeeRate::from_sat_per_vb_u32(1);
/// Default feerate cap: 50 sat/vB.
pub const DEFAULT_FEE_CAP: FeeRate = FeeRate::from_sat_per_vb_u32(50);
/// Default `estimatesmartfee` target, in blocks.
pub const DEFAULT_CONF_TARGET: u16 = 6;
/// Default number of blocks an anchor may stay unconfirmed before a fee bump.
pub const DEFAULT_BUMP_AFTER_BLOCKS: u32 = 3;
/// Default confirmations after which an anchor is final.
pub const DEFAULT_CONFIRMATIONS: u32 = 6;

/// Fee and confirmation rules of the anchor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorPolicy {
    /// Lowest feerate; used as is when the node has no estimate.
    pub fee_floor: FeeRate,
    /// Highest feerate, for first transactions and fee bumps alike.
    pub fee_cap: FeeRate,
    /// Confirmation target passed to `estimatesmartfee`.
    pub conf_target: u16,
    /// Blocks an anchor may stay unconfirmed before it is replaced with a higher fee.
    pub bump_after_blocks: u32,
    /// Confirmations after which an anchor counts as final.
    pub confirmations: u32,
}

impl Default for AnchorPolicy {
    fn default() -> Self {
        Self {
            fee_floor: DEFAULT_FEE_FLOOR,
            fee_cap: DEFAULT_FEE_CAP,
            conf_target: DEFAULT_CONF_TARGET,
            bump_after_blocks: DEFAULT_BUMP_AFTER_BLOCKS,
            confirmations: DEFAULT_CONFIRMATIONS,
        }
    }
}

/// Anchoring failures. With [`AnchorError::WaitingForFunds`],
/// [`AnchorError::ChainUnreachable`] and [`AnchorError::Rejected`] the epoch is
/// safely queued and is anchored by a later [`Anchorer::sync`].
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The wallet cannot pay for the anchor; fund [`Anchorer::receive_address`].
    #[error("waiting for funds: an anchor needs {needed}, the wallet has {available} usable")]
    WaitingForFunds {
        /// Fee plus the minimum change the chain output must keep.
        needed: Amount,
        /// What the usable coins (confirmed, plus the chain output) hold.
        available: Amount,
    },
    /// Bitcoin Core did not answer.
    #[error("Bitcoin node unreachable: {reason}")]
    ChainUnreachable {
        /// The transport error.
        reason: String,
    },
    /// Bitcoin Core refused an anchor transaction.
    #[error("epoch {epoch}: node rejected the anchor transaction (code {code}): {message}")]
    Rejected {
        /// The epoch.
        epoch: u64,
        /// Bitcoin Core's error code.
        code: i32,
        /// Its reject reason.
        message: String,
    },
    /// Another RPC failure while syncing.
    #[error("Bitcoin node: {0}")]
    Chain(ChainError),
    /// The payload is empty or longer than 80 bytes.
    #[error("OP_RETURN payload of {len} bytes; it must be 1 to {MAX_OP_RETURN_DATA}")]
    InvalidPayload {
        /// Its length.
        len: usize,
    },
    /// Epochs must be anchored in increasing order.
    #[error("epoch {epoch} is not after the latest queued epoch {latest}")]
    EpochOutOfOrder {
        /// The epoch asked for.
        epoch: u64,
        /// The latest epoch already queued or anchored.
        latest: u64,
    },
    /// The epoch was already queued with a different payload.
    #[error("epoch {epoch} was already queued with a different payload")]
    EpochConflict {
        /// The epoch.
        epoch: u64,
    },
    /// The seed file.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// The anchor records.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The wallet database or transaction building.
    #[error("wallet: {0}")]
    Wallet(String),
    /// The data directory.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The blocking task running the wallet panicked or was cancelled.
    #[error("anchoring task failed: {0}")]
    Task(String),
    /// The [`Fence`] refused: this process may no longer sign or broadcast
    /// anchors (nothing was signed or broadcast).
    #[error("not anchoring here: {reason}")]
    Fenced {
        /// Why (another process holds a later anchoring term, or the term
        /// could not be checked).
        reason: String,
    },
}

/// Decides whether this process may still sign and broadcast anchors.
/// Called, on the wallet's blocking thread, around every signing and
/// broadcast; what it returns is held until that broadcast is done.
pub trait Fence: Send + Sync + 'static {
    /// `Err(reason)`: do not sign or broadcast. `Ok(hold)`: go ahead, and
    /// release the hold afterwards (it may keep others from taking over
    /// meanwhile).
    fn hold(&self) -> Result<Box<dyn FenceHold>, String>;
}

/// What a [`Fence`] keeps while one signing and broadcast goes on.
pub trait FenceHold: Send {
    /// Called once the broadcast is done (or failed).
    fn release(self: Box<Self>);
}

impl AnchorError {
    /// Whether the epoch stays queued and will be retried by [`Anchorer::sync`].
    pub fn is_queued(&self) -> bool {
        matches!(
            self,
            Self::WaitingForFunds { .. } | Self::ChainUnreachable { .. } | Self::Rejected { .. }
        )
    }
}

impl From<ChainError> for AnchorError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Unreachable(reason) => Self::ChainUnreachable { reason },
            other => Self::Chain(other),
        }
    }
}

/// Where an epoch's anchor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorState {
    /// Waiting for funds or for the node; no transaction yet.
    Queued,
    /// Built and saved, not yet accepted by the node (it was unreachable).
    Signed,
    /// In the mempool.
    Unconfirmed,
    /// In the best chain.
    Confirmed {
        /// Block height.
        height: u32,
        /// Block hash.
        block_hash: BlockHash,
        /// Confirmations at the wallet's tip.
        confirmations: u32,
    },
}

/// One epoch's anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorRecord {
    /// Epoch number.
    pub epoch: u64,
    /// OP_RETURN payload.
    pub payload: Vec<u8>,
    /// Where it stands.
    pub state: AnchorState,
    /// The anchor transaction (absent while queued).
    pub tx: Option<Transaction>,
    /// Its id.
    pub txid: Option<Txid>,
    /// Its fee.
    pub fee: Option<Amount>,
    /// Its size in vbytes.
    pub vsize: Option<u64>,
    /// Its first input: the previous anchor's change output, except for the
    /// first anchor of the chain.
    pub chain_input: Option<OutPoint>,
    /// Its change output, which the next anchor spends.
    pub change: Option<OutPoint>,
    /// Earlier transactions of this epoch (replaced by fee bumps or re-anchoring).
    pub replaced: Vec<Txid>,
    /// Whether it has the policy's number of confirmations.
    pub is_final: bool,
}

/// Why anchoring is or is not progressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Everything anchored or on its way (or nothing synced yet).
    Ok,
    /// The wallet cannot pay the next anchor.
    WaitingForFunds {
        /// What the anchor needs.
        needed: Amount,
        /// What the usable coins hold.
        available: Amount,
    },
    /// Bitcoin Core did not answer the last sync.
    ChainUnreachable {
        /// The transport error.
        reason: String,
    },
    /// Bitcoin Core refused an anchor.
    Rejected {
        /// The epoch.
        epoch: u64,
        /// Error code.
        code: i32,
        /// Reject reason.
        message: String,
    },
    /// An anchor should be fee-bumped but already pays the configured cap.
    FeeCapReached {
        /// The epoch.
        epoch: u64,
    },
    /// Another failure (database, wallet, unexpected RPC answer).
    Error(String),
}

/// A snapshot of the anchorer, without network access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorStatus {
    /// Why anchoring is or is not progressing.
    pub health: Health,
    /// Height of the wallet's chain tip (0 before the first sync).
    pub tip_height: u32,
    /// Wallet balance (all coins, including the chain output).
    pub balance: Amount,
    /// The output the next anchor will spend.
    pub chain_output: Option<OutPoint>,
    /// Epochs without a transaction, in order.
    pub queued: Vec<u64>,
    /// Epochs whose anchor is not confirmed yet.
    pub unconfirmed: Vec<u64>,
    /// The latest epoch's record.
    pub latest: Option<AnchorRecord>,
}

/// The anchoring wallet and anchor chain. Cheap to clone; all clones share one wallet.
#[derive(Clone)]
pub struct Anchorer {
    inner: Arc<Mutex<Inner>>,
    /// The status after the last operation, served while a sync holds the
    /// wallet (a sync may wait for RPC timeouts; a status page must not).
    last_status: Arc<Mutex<Option<AnchorStatus>>>,
}

impl std::fmt::Debug for Anchorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchorer").finish_non_exhaustive()
    }
}

impl Anchorer {
    /// Opens (or on first start creates) the seed, wallet and records in
    /// `data_dir`. Makes no RPC call: the node may be down.
    pub async fn open(
        data_dir: impl Into<PathBuf>,
        network: Network,
        rpc: RpcConfig,
        policy: AnchorPolicy,
    ) -> Result<Self, AnchorError> {
        let data_dir = data_dir.into();
        let inner = blocking(move || Inner::open(&data_dir, network, &rpc, policy)).await??;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            last_status: Arc::new(Mutex::new(None)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, AnchorError> + Send + 'static,
    ) -> Result<T, AnchorError> {
        let inner = self.inner.clone();
        let last_status = self.last_status.clone();
        blocking(move || {
            // A panic mid-operation leaves nothing half-written that the
            // database does not also have, so a poisoned lock is still usable.
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            let out = f(&mut guard);
            if let Ok(status) = guard.status() {
                *last_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
            }
            out
        })
        .await?
    }

    /// Follows the chain and moves every epoch forward: records confirmations,
    /// fee-bumps, re-anchors after reorgs, anchors queued epochs in order.
    pub async fn sync(&self) -> Result<(), AnchorError> {
        self.with(|i| i.process()).await
    }

    /// Queues `epoch` with its OP_RETURN `payload` (1–80 bytes) and anchors it
    /// (after any earlier queued epochs). Returns the anchor's txid. Asking
    /// again for an epoch with the same payload is harmless.
    ///
    /// On [`AnchorError::is_queued`] errors the epoch stays queued.
    pub async fn anchor(&self, epoch: u64, payload: &[u8]) -> Result<Txid, AnchorError> {
        let payload = payload.to_vec();
        self.with(move |i| i.anchor(epoch, payload)).await
    }

    /// Where anchoring stands and why; no network access. While a sync is
    /// running this is the status from just before it, instead of waiting.
    pub async fn status(&self) -> Result<AnchorStatus, AnchorError> {
        if self.inner.try_lock().is_err() {
            let cached = self
                .last_status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(status) = cached {
                return Ok(status);
            }
        }
        self.with(|i| i.status()).await
    }

    /// One epoch's record.
    pub async fn record(&self, epoch: u64) -> Result<Option<AnchorRecord>, AnchorError> {
        self.with(move |i| Ok(i.records()?.into_iter().find(|r| r.epoch == epoch)))
            .await
    }

    /// All records, by epoch.
    pub async fn records(&self) -> Result<Vec<AnchorRecord>, AnchorError> {
        self.with(|i| i.records()).await
    }

    /// A fresh receiving address of the wallet, to fund it.
    ///
    /// The first address of a new seed needs the node (to note the height from
    /// which the wallet must scan); later ones do not.
    pub async fn receive_address(&self) -> Result<Address, AnchorError> {
        self.with(|i| {
            i.start_height()?;
            let a = i.wallet.reveal_next_address(KeychainKind::External).address;
            i.persist_wallet()?;
            Ok(a)
        })
        .await
    }

    /// The wallet's funding address: the first revealed receiving address no
    /// transaction has paid yet (the same one until it is paid), so showing
    /// it on every status request does not reveal addresses without bound.
    /// Like [`Self::receive_address`], the first one of a new seed needs the node.
    pub async fn funding_address(&self) -> Result<Address, AnchorError> {
        self.with(|i| {
            i.start_height()?;
            let a = i.wallet.next_unused_address(KeychainKind::External).address;
            i.persist_wallet()?;
            Ok(a)
        })
        .await
    }

    /// Installs the fence every later signing and broadcast must pass
    /// (replacing any earlier one).
    pub async fn set_fence(&self, fence: Arc<dyn Fence>) -> Result<(), AnchorError> {
        self.with(move |i| {
            i.fence = Some(fence);
            Ok(())
        })
        .await
    }

    /// The outpoints that ordinary wallet spends must leave alone: the chain
    /// output the next anchor spends. Pass them to bdk's
    /// `TxBuilder::unspendable` when spending from the same wallet.
    pub async fn reserved_outputs(&self) -> Result<Vec<OutPoint>, AnchorError> {
        self.with(|i| Ok(i.chain_output()?.into_iter().collect()))
            .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AnchorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AnchorError::Task(e.to_string()))
}

/// Meta key: the height the first sync starts at (`tip` = the node's tip then).
const META_SCAN_FROM: &str = "scan_from";
/// Meta key: the logical clock of mempool observations.
const META_CLOCK: &str = "clock";

struct Inner {
    policy: AnchorPolicy,
    wallet: PersistedWallet<Connection>,
    conn: Connection,
    chain: RpcClient,
    clock: u64,
    health: Health,
    fence: Option<Arc<dyn Fence>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn wallet_err(what: &str, e: impl std::fmt::Display) -> AnchorError {
    AnchorError::Wallet(format!("{what}: {e}"))
}

impl Inner {
    fn open(
        data_dir: &Path,
        network: Network,
        rpc: &RpcConfig,
        policy: AnchorPolicy,
    ) -> Result<Self, AnchorError> {
        std::fs::create_dir_all(data_dir).map_err(|source| AnchorError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let (seed, origin) = Seed::load_or_create(data_dir)?;
        if origin == SeedOrigin::Created {
            info!(dir = %data_dir.display(), "created a new wallet seed");
        }
        let (external, internal) = seed.anchor_descriptors(network)?;
        let db_path = data_dir.join(DB_FILE_NAME);
        let mut conn = Connection::open(&db_path).map_err(|e| AnchorError::Store(e.into()))?;
        // The wallet's history is private too (SQLite gives its journal files
        // the same mode).
        restrict_to_owner(&db_path).map_err(|source| AnchorError::DataDir {
            path: db_path.clone(),
            source,
        })?;
        store::migrate(&conn)?;
        let (wallet, created) = wallet::open(&mut conn, (external, internal), network)
            .map_err(|e| AnchorError::Wallet(e.to_string()))?;
        if created {
            // A brand-new seed cannot own coins from before now, so the
            // first sync may start at the node's tip instead of genesis.
            let scan_from = if origin == SeedOrigin::Created {
                "tip"
            } else {
                "0"
            };
            store::set_meta(&conn, META_SCAN_FROM, scan_from)?;
        }
        let chain = RpcClient::new(rpc)?;
        let clock = store::meta(&conn, META_CLOCK)?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok(Self {
            policy,
            wallet,
            conn,
            chain,
            clock,
            health: Health::Ok,
            fence: None,
        })
    }

    /// A strictly increasing timestamp for mempool observations: bdk decides
    /// between conflicting unconfirmed transactions by these, so a replacement
    /// must always look newer than what it replaces, even within one second.
    fn tick(&mut self) -> Result<u64, AnchorError> {
        self.clock = unix_now().max(self.clock + 1);
        store::set_meta(&self.conn, META_CLOCK, &self.clock.to_string())?;
        Ok(self.clock)
    }

    /// The wallet's confirmed unspent coins. Anchors add other coins only
    /// when confirmed: a replacement may not add unconfirmed inputs, and a
    /// stranger's unconfirmed coin may vanish.
    fn confirmed_coins(&self) -> Vec<Coin> {
        self.wallet
            .list_unspent()
            .filter(|u| u.chain_position.is_confirmed())
            .map(|u| Coin {
                outpoint: u.outpoint,
                value: u.txout.value,
            })
            .collect()
    }

    fn persist_wallet(&mut self) -> Result<(), AnchorError> {
        self.wallet
            .persist(&mut self.conn)
            .map(|_| ())
            .map_err(|e| wallet_err("saving", e))
    }

    fn tip(&self) -> u32 {
        self.wallet.latest_checkpoint().height()
    }

    /// Where the first sync starts. For a new seed this is the node's tip when
    /// the seed's first address is handed out or the first sync runs, whichever
    /// comes first: no coin can pay it earlier.
    fn start_height(&mut self) -> Result<u32, AnchorError> {
        if self.tip() > 0 {
            return Ok(0);
        }
        match store::meta(&self.conn, META_SCAN_FROM)?.as_deref() {
            Some("tip") => {
                let h = self.chain.tip_height()?;
                store::set_meta(&self.conn, META_SCAN_FROM, &h.to_string())?;
                Ok(h)
            }
            Some(h) => Ok(h.parse().unwrap_or(0)),
            None => Ok(0),
        }
    }

    fn anchor(&mut self, epoch: u64, payload: Vec<u8>) -> Result<Txid, AnchorError> {
        if payload.is_empty() || payload.len() > MAX_OP_RETURN_DATA {
            return Err(AnchorError::InvalidPayload { len: payload.len() });
        }
        let rows = store::load_all(&self.conn)?;
        match rows.iter().find(|r| r.epoch == epoch) {
            Some(r) if r.payload != payload => return Err(AnchorError::EpochConflict { epoch }),
            Some(_) => {}
            None => {
                if let Some(last) = rows.last().filter(|l| l.epoch >= epoch) {
                    return Err(AnchorError::EpochOutOfOrder {
                        epoch,
                        latest: last.epoch,
                    });
                }
                store::insert_queued(&self.conn, epoch, &payload, unix_now())?;
                info!(epoch, "epoch queued for anchoring");
            }
        }
        self.process()?;
        store::load_all(&self.conn)?
            .into_iter()
            .find(|r| r.epoch == epoch)
            .and_then(|r| r.current.map(|v| v.txid()))
            .ok_or_else(|| AnchorError::Wallet(format!("epoch {epoch} has no transaction")))
    }

    /// Runs one round and records the outcome in `health`.
    fn process(&mut self) -> Result<(), AnchorError> {
        let result = self.process_inner();
        match &result {
            Ok(note) => self.health = note.clone().unwrap_or(Health::Ok),
            Err(e) => {
                self.health = match e {
                    AnchorError::WaitingForFunds { needed, available } => Health::WaitingForFunds {
                        needed: *needed,
                        available: *available,
                    },
                    AnchorError::ChainUnreachable { reason } => Health::ChainUnreachable {
                        reason: reason.clone(),
                    },
                    AnchorError::Rejected {
                        epoch,
                        code,
                        message,
                    } => Health::Rejected {
                        epoch: *epoch,
                        code: *code,
                        message: message.clone(),
                    },
                    other => Health::Error(other.to_string()),
                };
                warn!(error = %e, "anchoring is stalled; epochs stay queued");
            }
        }
        result.map(|_| ())
    }

    fn process_inner(&mut self) -> Result<Option<Health>, AnchorError> {
        let start = self.start_height()?;
        let now = self.tick()?;
        sync_from_core(&self.chain, &mut self.wallet, start, now)?;
        self.persist_wallet()?;
        let tip = self.tip();
        let mut rows = store::load_all(&self.conn)?;
        let mut versions = store::all_versions(&self.conn)?;
        // One pass over the wallet's history instead of a lookup per record.
        let confirmed: HashMap<Txid, (u32, BlockHash)> = self
            .wallet
            .transactions()
            .filter_map(|t| match t.chain_position {
                ChainPosition::Confirmed { anchor, .. } => Some((
                    t.tx_node.txid,
                    (anchor.block_id.height, anchor.block_id.hash),
                )),
                ChainPosition::Unconfirmed { .. } => None,
            })
            .collect();
        let mut target: Option<FeeRate> = None;
        let mut note = None;
        for i in 0..rows.len() {
            let obs = self.observe(
                &rows[i],
                versions
                    .remove(&rows[i].epoch)
                    .as_deref()
                    .unwrap_or_default(),
                &confirmed,
            )?;
            if let Some(v) = obs.version {
                if rows[i].current.as_ref() != Some(&v) {
                    // An earlier version is the one the chain has: adopt it.
                    info!(epoch = rows[i].epoch, txid = %v.txid(), "earlier anchor version is live");
                    rows[i].current = Some(v);
                    store::save(&self.conn, &rows[i])?;
                }
            }
            let step = plan::decide(rows[i].state, obs.seen, tip, self.policy.bump_after_blocks);
            match step {
                Step::Wait => {}
                Step::Confirm => {
                    let (height, hash) = obs.block.expect("Seen::Confirmed carries its block");
                    let row = &mut rows[i];
                    if row.state != (Stored::Confirmed { height })
                        || row.confirmed_hash != Some(hash)
                    {
                        info!(epoch = row.epoch, height, "anchor confirmed");
                    }
                    row.state = Stored::Confirmed { height };
                    row.confirmed_hash = Some(hash);
                    store::save(&self.conn, row)?;
                }
                Step::Reopen => {
                    if rows[i].state == Stored::Signed {
                        self.accepted(&mut rows[i], tip)?;
                    } else {
                        warn!(
                            epoch = rows[i].epoch,
                            "anchor unconfirmed again after a reorg"
                        );
                        rows[i].state = Stored::Unconfirmed { since: tip };
                        rows[i].confirmed_hash = None;
                        store::save(&self.conn, &rows[i])?;
                    }
                }
                Step::Rebroadcast => {
                    let v = rows[i].current.clone().expect("only records with a tx");
                    match self.fenced(|s| Ok(s.chain.broadcast(&v.tx)))? {
                        Ok(_) => {
                            info!(epoch = rows[i].epoch, txid = %v.txid(), "anchor rebroadcast");
                            self.accepted(&mut rows[i], tip)?;
                        }
                        Err(ChainError::Rpc { message, .. }) if already_known(&message) => {
                            self.accepted(&mut rows[i], tip)?;
                        }
                        Err(ChainError::Rpc { code, message }) => {
                            warn!(epoch = rows[i].epoch, code, %message,
                                "anchor dropped and not rebroadcastable; re-anchoring the epoch");
                            let rate = self.target_rate(&mut target)?;
                            self.rebuild(&mut rows, i, rate, None, tip)?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Step::Build => {
                    let rate = self.target_rate(&mut target)?;
                    self.rebuild(&mut rows, i, rate, None, tip)?;
                }
                Step::Bump => {
                    let rate = self.target_rate(&mut target)?;
                    let v = rows[i].current.clone().expect("only records with a tx");
                    let old_rate = v.fee / v.tx.weight();
                    match plan::bump_fee_rate(old_rate, rate, self.policy.fee_cap) {
                        None => {
                            warn!(
                                epoch = rows[i].epoch,
                                "anchor unconfirmed but fee cap reached"
                            );
                            note.get_or_insert(Health::FeeCapReached {
                                epoch: rows[i].epoch,
                            });
                        }
                        Some(new_rate) => {
                            // A replacement evicts this anchor and every later
                            // one built on its change: it pays for all of them.
                            let evicted: Amount = rows[i..]
                                .iter()
                                .filter(|r| matches!(r.state, Stored::Unconfirmed { .. }))
                                .filter_map(|r| r.current.as_ref().map(|v| v.fee))
                                .sum();
                            let min_fee = plan::replacement_fee(new_rate, v.tx.weight(), evicted);
                            info!(epoch = rows[i].epoch, old = %old_rate, new = %new_rate,
                                "fee-bumping an unconfirmed anchor");
                            self.rebuild(&mut rows, i, new_rate, Some(min_fee), tip)?;
                        }
                    }
                }
            }
        }
        Ok(note)
    }

    fn target_rate(&self, cache: &mut Option<FeeRate>) -> Result<FeeRate, AnchorError> {
        if let Some(r) = cache {
            return Ok(*r);
        }
        let estimate = self.chain.estimate_fee_rate(self.policy.conf_target)?;
        let r = plan::clamp_fee_rate(estimate, self.policy.fee_floor, self.policy.fee_cap);
        *cache = Some(r);
        Ok(r)
    }

    /// Where the record's transaction is: a confirmed version (any of them:
    /// an original may win over its replacement), a version in the mempool
    /// (current first), or nowhere. `confirmed` maps the wallet's confirmed
    /// transactions to their blocks.
    fn observe(
        &self,
        row: &Row,
        versions: &[TxVersion],
        confirmed: &HashMap<Txid, (u32, BlockHash)>,
    ) -> Result<Observation, AnchorError> {
        let Some(current) = &row.current else {
            return Ok(Observation::default());
        };
        let mut all: Vec<&TxVersion> = versions.iter().rev().collect();
        if !all.iter().any(|v| v.txid() == current.txid()) {
            all.push(current);
        }
        // The current version first, then the others newest first.
        all.sort_by_key(|v| v.txid() != current.txid());
        for v in &all {
            if let Some(block) = confirmed.get(&v.txid()) {
                return Ok(Observation {
                    seen: Seen::Confirmed,
                    version: Some((*v).clone()),
                    block: Some(*block),
                });
            }
        }
        for v in &all {
            if self.chain.in_mempool(&v.txid())? {
                return Ok(Observation {
                    seen: Seen::InMempool,
                    version: Some((*v).clone()),
                    block: None,
                });
            }
        }
        Ok(Observation::default())
    }

    /// The node took the record's current transaction.
    fn accepted(&mut self, row: &mut Row, tip: u32) -> Result<(), AnchorError> {
        let v = row.current.clone().expect("accepted records have a tx");
        let t = self.tick()?;
        self.wallet.apply_unconfirmed_txs([(v.tx.clone(), t)]);
        self.persist_wallet()?;
        store::add_version(&self.conn, row.epoch, &v)?;
        row.state = Stored::Unconfirmed { since: tip };
        row.confirmed_hash = None;
        store::save(&self.conn, row)?;
        Ok(())
    }

    /// What the wallet lacks to pay the next anchor at the feerate floor (no
    /// network: the node's estimate may ask for more), from the coins an
    /// anchor may spend: the chain output and confirmed coins.
    fn funding_shortfall(&self) -> Result<Option<plan::Shortfall>, AnchorError> {
        let chain = self.chain_output()?.and_then(|op| {
            self.wallet.get_utxo(op).map(|u| Coin {
                outpoint: op,
                value: u.txout.value,
            })
        });
        let others = self.confirmed_coins();
        Ok(plan::select_inputs(
            chain,
            &others,
            self.policy.fee_floor,
            Amount::ZERO,
            crate::epoch::PAYLOAD_LEN,
        )
        .err())
    }

    /// The output the next anchor spends: the latest anchor's change, if unspent.
    fn chain_output(&self) -> Result<Option<OutPoint>, AnchorError> {
        let rows = store::load_all(&self.conn)?;
        Ok(rows
            .iter()
            .rev()
            .find_map(|r| r.current.as_ref())
            .map(|v| v.change())
            .filter(|op| self.wallet.get_utxo(*op).is_some()))
    }

    /// Runs `f` (a signing or broadcast) inside the fence's hold, or not
    /// at all when the fence refuses. Every signing and broadcast goes
    /// through here.
    fn fenced<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, AnchorError>,
    ) -> Result<T, AnchorError> {
        let Some(fence) = self.fence.clone() else {
            return f(self);
        };
        let hold = fence.hold().map_err(|reason| {
            warn!(%reason, "not signing or broadcasting anchors");
            AnchorError::Fenced { reason }
        })?;
        let out = f(self);
        hold.release();
        out
    }

    /// Builds, signs, saves and broadcasts a new transaction for `rows[i]`,
    /// spending the previous anchor's change, inside the fence's hold. With
    /// `min_fee` it replaces the record's current transaction (a fee bump).
    fn rebuild(
        &mut self,
        rows: &mut [Row],
        i: usize,
        rate: FeeRate,
        min_fee: Option<Amount>,
        tip: u32,
    ) -> Result<(), AnchorError> {
        self.fenced(|s| s.rebuild_unfenced(rows, i, rate, min_fee, tip))
    }

    fn rebuild_unfenced(
        &mut self,
        rows: &mut [Row],
        i: usize,
        rate: FeeRate,
        min_fee: Option<Amount>,
        tip: u32,
    ) -> Result<(), AnchorError> {
        let epoch = rows[i].epoch;
        // Stop the wallet from believing in this record's old transactions
        // and those built on them, so that their inputs are spendable again.
        let stale: Vec<Txid> = rows[i..]
            .iter()
            .filter(|r| !matches!(r.state, Stored::Confirmed { .. }))
            .filter_map(|r| r.current.as_ref().map(|v| v.txid()))
            .collect();
        let restore: Vec<Transaction> = if min_fee.is_some() {
            rows[i..]
                .iter()
                .filter(|r| matches!(r.state, Stored::Unconfirmed { .. }))
                .filter_map(|r| r.current.as_ref().map(|v| v.tx.clone()))
                .collect()
        } else {
            Vec::new()
        };
        if !stale.is_empty() {
            let t = self.tick()?;
            self.wallet
                .apply_evicted_txs(stale.iter().map(|txid| (*txid, t)));
        }
        let built = self.build_tx(rows, i, rate, min_fee.unwrap_or(Amount::ZERO));
        let v = match built {
            Ok(v) => v,
            Err(e) => {
                self.restore(restore)?;
                return Err(e);
            }
        };
        let previous = rows[i].clone();
        rows[i].current = Some(v.clone());
        rows[i].state = Stored::Signed;
        rows[i].confirmed_hash = None;
        store::save(&self.conn, &rows[i])?;
        self.persist_wallet()?;
        match self.chain.broadcast(&v.tx) {
            Ok(_) => {
                info!(epoch, txid = %v.txid(), fee = %v.fee, vsize = v.tx.vsize(),
                    inputs = v.tx.input.len(), "anchor broadcast");
                self.accepted(&mut rows[i], tip)
            }
            Err(ChainError::Rpc { message, .. }) if already_known(&message) => {
                self.accepted(&mut rows[i], tip)
            }
            Err(ChainError::Rpc { code, message }) => {
                // Nothing changed on the node: go back to what was there.
                rows[i] = if min_fee.is_some() {
                    previous
                } else {
                    Row {
                        state: Stored::Queued,
                        current: None,
                        confirmed_hash: None,
                        ..previous
                    }
                };
                store::save(&self.conn, &rows[i])?;
                self.restore(restore)?;
                Err(AnchorError::Rejected {
                    epoch,
                    code,
                    message,
                })
            }
            // Saved as signed: the next round rebroadcasts it.
            Err(e) => Err(e.into()),
        }
    }

    fn restore(&mut self, txs: Vec<Transaction>) -> Result<(), AnchorError> {
        if !txs.is_empty() {
            let t = self.tick()?;
            self.wallet
                .apply_unconfirmed_txs(txs.into_iter().map(|tx| (tx, t)));
        }
        self.persist_wallet()
    }

    fn build_tx(
        &mut self,
        rows: &[Row],
        i: usize,
        rate: FeeRate,
        min_fee: Amount,
    ) -> Result<TxVersion, AnchorError> {
        let payload = rows[i].payload.clone();
        let chain_coin = i
            .checked_sub(1)
            .and_then(|p| rows[p].current.as_ref())
            .map(|v| v.change());
        let chain_coin = match chain_coin {
            Some(op) => match self.wallet.get_utxo(op) {
                Some(utxo) => Some(Coin {
                    outpoint: op,
                    value: utxo.txout.value,
                }),
                None => {
                    warn!(epoch = rows[i].epoch, chain_output = %op,
                        "previous anchor's change is gone; the anchor chain restarts here");
                    None
                }
            },
            None => None,
        };
        // Other coins only when confirmed: a replacement may not add
        // unconfirmed inputs, and a stranger's unconfirmed coin may vanish.
        let others = self.confirmed_coins();
        let selected = plan::select_inputs(chain_coin, &others, rate, min_fee, payload.len())
            .map_err(|s| AnchorError::WaitingForFunds {
                needed: s.needed,
                available: s.available,
            })?;
        let outpoints: Vec<OutPoint> = selected.iter().map(|c| c.outpoint).collect();
        let weight = plan::anchor_tx_weight(outpoints.len(), payload.len());
        let fee = plan::fee_for(rate, weight).max(min_fee);
        let change = self
            .wallet
            .next_unused_address(KeychainKind::Internal)
            .script_pubkey();
        let data =
            PushBytesBuf::try_from(payload).map_err(|_| AnchorError::InvalidPayload { len: 81 })?;
        let mut builder = self.wallet.build_tx();
        builder
            .ordering(TxOrdering::Untouched)
            .add_utxos(&outpoints)
            .map_err(|e| wallet_err("selecting inputs", e))?
            .manually_selected_only()
            .add_data(&data)
            .drain_to(change.clone());
        if min_fee > Amount::ZERO {
            builder.fee_absolute(fee);
        } else {
            builder.fee_rate(rate);
        }
        let mut psbt = builder
            .finish()
            .map_err(|e| wallet_err("building the anchor", e))?;
        let fee = psbt.fee().map_err(|e| wallet_err("fee", e))?;
        let finalized = self
            .wallet
            .sign(&mut psbt, SignOptions::default())
            .map_err(|e| wallet_err("signing", e))?;
        if !finalized {
            return Err(AnchorError::Wallet(
                "anchor transaction not fully signed".into(),
            ));
        }
        let tx = psbt.extract_tx().map_err(|e| wallet_err("extracting", e))?;
        let change_vout = tx
            .output
            .iter()
            .position(|o| o.script_pubkey == change)
            .ok_or_else(|| AnchorError::Wallet("anchor has no change output".into()))?
            as u32;
        debug_assert_eq!(
            tx.output
                .iter()
                .filter(|o| o.script_pubkey.is_op_return())
                .count(),
            1
        );
        Ok(TxVersion {
            tx,
            fee,
            change_vout,
        })
    }

    fn records(&self) -> Result<Vec<AnchorRecord>, AnchorError> {
        let tip = self.tip();
        store::load_all(&self.conn)?
            .into_iter()
            .map(|r| {
                let replaced = store::versions(&self.conn, r.epoch)?
                    .into_iter()
                    .map(|v| v.txid())
                    .filter(|t| Some(*t) != r.current.as_ref().map(|v| v.txid()))
                    .collect();
                Ok(self.to_record(r, tip, replaced))
            })
            .collect()
    }

    fn to_record(&self, r: Row, tip: u32, replaced: Vec<Txid>) -> AnchorRecord {
        let state = match r.state {
            Stored::Queued => AnchorState::Queued,
            Stored::Signed => AnchorState::Signed,
            Stored::Unconfirmed { .. } => AnchorState::Unconfirmed,
            Stored::Confirmed { height } => AnchorState::Confirmed {
                height,
                block_hash: r.confirmed_hash.unwrap_or_else(|| {
                    use bitcoin::hashes::Hash;
                    BlockHash::all_zeros()
                }),
                confirmations: (tip + 1).saturating_sub(height),
            },
        };
        let is_final = matches!(state, AnchorState::Confirmed { confirmations, .. }
            if confirmations >= self.policy.confirmations);
        let cur = r.current.as_ref();
        AnchorRecord {
            epoch: r.epoch,
            payload: r.payload.clone(),
            state,
            txid: cur.map(|v| v.txid()),
            fee: cur.map(|v| v.fee),
            vsize: cur.map(|v| v.tx.vsize() as u64),
            chain_input: cur
                .and_then(|v| v.tx.input.first())
                .map(|i| i.previous_output),
            change: cur.map(|v| v.change()),
            tx: cur.map(|v| v.tx.clone()),
            replaced,
            is_final,
        }
    }

    fn status(&self) -> Result<AnchorStatus, AnchorError> {
        let records = self.records()?;
        let health = match &self.health {
            // Say so before an epoch stalls: funds are needed for the next anchor.
            Health::Ok => match self.funding_shortfall()? {
                Some(s) => Health::WaitingForFunds {
                    needed: s.needed,
                    available: s.available,
                },
                None => Health::Ok,
            },
            other => other.clone(),
        };
        Ok(AnchorStatus {
            health,
            tip_height: self.tip(),
            balance: self.wallet.balance().total(),
            chain_output: self.chain_output()?,
            queued: records
                .iter()
                .filter(|r| r.state == AnchorState::Queued)
                .map(|r| r.epoch)
                .collect(),
            unconfirmed: records
                .iter()
                .filter(|r| matches!(r.state, AnchorState::Unconfirmed | AnchorState::Signed))
                .map(|r| r.epoch)
                .collect(),
            latest: records.last().cloned(),
        })
    }
}

/// Where one record's transaction was found.
#[derive(Debug, Default)]
struct Observation {
    seen: Seen,
    /// The version found (confirmed or in the mempool).
    version: Option<TxVersion>,
    /// Its block, when confirmed.
    block: Option<(u32, BlockHash)>,
}

/// Bitcoin Core's answers for a transaction it already has.
fn already_known(message: &str) -> bool {
    message.contains("already in block chain")
        || message.contains("txn-already-in-mempool")
        || message.contains("txn-already-known")
        || message.contains("already in utxo set")
        || message.contains("outputs already in utxo set")
}
