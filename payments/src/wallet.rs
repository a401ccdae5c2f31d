//! The payments on-chain wallet: bdk_wallet 2.x on BIP86 account 0 of the
//! node's seed, persisted in `<data_dir>/payments_wallet.sqlite` (mode 0600),
//! synced from Bitcoin Core through `bdk_bitcoind_rpc::Emitter`, or from an
//! Esplora server through `bdk_esplora` (see [`cairn_bitcoin::ChainSource`]).
//!
//! The identity anchor chain lives in a different bdk wallet on BIP86 account
//! 1, so nothing this wallet builds can spend an anchor output.
//!
//! Every method that talks to the node is `async`: the blocking RPC client
//! runs on tokio's blocking pool; the Esplora client is async, and only the
//! wallet database work goes to the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bdk_esplora::EsploraAsyncExt;
use bdk_wallet::chain::ChainPosition;
use bdk_wallet::rusqlite::Connection;
use bdk_wallet::{KeychainKind, PersistedWallet, SignOptions};
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Transaction, Txid};
use cairn_bitcoin::esplora::{self, Esplora};
use cairn_bitcoin::private_file::restrict_to_owner;
use cairn_bitcoin::wallet::{self, sync_from_core};
use cairn_bitcoin::{ChainError, ChainSource, RpcClient, RpcConfig, Seed, SeedError, SeedOrigin};
/// Name of the wallet's SQLite file inside the data directory.
pub const WALLET_DB_FILE_NAME: &str = "payments_wallet.sqlite";
/// Feerate used with [`FeeChoice::Target`] when the node has no estimate and
/// none was given: Bitcoin Core's minimum relay feerate.
pub const DEFAULT_FALLBACK_FEE_RATE: FeeRate = FeeRate::from_sat_per_vb_u32(1);
/// Esplora full scan: stop after this many consecutive unused addresses.
const ESPLORA_STOP_GAP: usize = 20;
/// Esplora requests in flight at once during a sync.
const ESPLORA_PARALLEL_REQUESTS: usize = 4;

/// On-chain wallet failures. Messages never contain keys or descriptors.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The seed could not be read or derived.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// The data directory or database file could not be prepared.
    #[error("wallet file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database belongs to another seed or network.
    #[error("the wallet database belongs to another seed or network")]
    Mismatch,
    /// Loading, creating or persisting the wallet failed.
    #[error("wallet database: {0}")]
    Store(String),
    /// Talking to Bitcoin Core failed.
    #[error("chain source: {0}")]
    Chain(ChainError),
    /// The wallet cannot pay: not enough funds, dust amount, bad feerate…
    #[error("cannot build the transaction: {0}")]
    Build(String),
    /// The address is for another network.
    #[error("address is not valid on {0}")]
    WrongNetwork(Network),
    /// Signing did not complete.
    #[error("the wallet could not sign every input")]
    Sign,
    /// A selected outpoint is not an unspent output of this wallet.
    #[error("{0} is not an unspent output of this wallet")]
    UnknownUtxo(OutPoint),
    /// A blocking task panicked or was cancelled.
    #[error("wallet task failed: {0}")]
    Task(String),
}

/// Balance in satoshis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalletBalance {
    /// Confirmed and spendable.
    pub confirmed: Amount,
    /// Unconfirmed (incoming or our own change) plus immature coinbase.
    pub pending: Amount,
}

impl WalletBalance {
    /// Confirmed plus pending.
    pub fn total(&self) -> Amount {
        self.confirmed + self.pending
    }
}

/// How the fee of a payment is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeChoice {
    /// An explicit feerate (e.g. from `--fee-rate` in sat/vB).
    Rate(FeeRate),
    /// Bitcoin Core's `estimatesmartfee` for confirmation within `blocks`,
    /// or `fallback` when the node has no estimate yet (a fresh node, regtest).
    Target {
        /// Confirmation target in blocks (1–1008).
        blocks: u16,
        /// Feerate when there is no estimate.
        fallback: FeeRate,
    },
}

impl FeeChoice {
    /// A confirmation target with [`DEFAULT_FALLBACK_FEE_RATE`] as fallback.
    pub fn target(blocks: u16) -> Self {
        Self::Target {
            blocks,
            fallback: DEFAULT_FALLBACK_FEE_RATE,
        }
    }
}

/// How much to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAmount {
    /// Exactly this much; change goes back to the wallet.
    Exact(Amount),
    /// Everything the spendable coins (or the selected ones) hold, minus the
    /// fee, with no change output ("send max").
    All,
}

/// Coin control and fee of a payment, for [`OnchainWallet::send_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    /// The fee.
    pub fee: FeeChoice,
    /// When not empty, spend exactly these outputs of the wallet and no
    /// others (every one is spent, even if fewer would do).
    pub utxos: Vec<OutPoint>,
    /// Outputs the wallet must not spend (ignored for those in `utxos`).
    pub avoid: Vec<OutPoint>,
}

impl SendOptions {
    /// The wallet picks the coins; the fee is `fee`.
    pub fn new(fee: FeeChoice) -> Self {
        Self {
            fee,
            utxos: Vec::new(),
            avoid: Vec::new(),
        }
    }
}

/// An unspent output of the wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utxo {
    /// Where it is.
    pub outpoint: OutPoint,
    /// What it holds.
    pub value: Amount,
    /// Change (internal keychain) rather than a receive address.
    pub is_change: bool,
    /// Block height of the confirmation, `None` while unconfirmed.
    pub confirmation_height: Option<u32>,
}

/// One transaction touching the wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRecord {
    /// Its id.
    pub txid: Txid,
    /// What the wallet's outputs in it are worth.
    pub received: Amount,
    /// What the wallet's inputs to it were worth.
    pub sent: Amount,
    /// The fee, when every input is known to the wallet.
    pub fee: Option<Amount>,
    /// Block height of the confirmation, `None` while unconfirmed.
    pub confirmation_height: Option<u32>,
    /// Block time of the confirmation, or when it was last seen unconfirmed.
    pub time: Option<u64>,
}

impl TxRecord {
    /// Net effect on the balance, in satoshis (negative when paying out).
    pub fn net_sats(&self) -> i64 {
        self.received.to_sat() as i64 - self.sent.to_sat() as i64
    }
}

/// Where the wallet lives and which node it follows.
#[derive(Debug, Clone)]
pub struct WalletConfig {
    /// Bitcoin network.
    pub network: Network,
    /// The node's data directory (holds `seed` and the wallet file).
    pub data_dir: PathBuf,
    /// Bitcoin Core RPC.
    pub rpc: RpcConfig,
}

struct Inner {
    wallet: PersistedWallet<Connection>,
    conn: Connection,
    /// Height to start the very first sync from.
    start_height: u32,
    /// Strictly increasing mempool clock (bdk orders conflicting unconfirmed
    /// transactions by when they were seen).
    clock: u64,
    /// Esplora only: whether this process has done a full scan (every
    /// keychain up to the stop gap); later syncs check revealed addresses only.
    scanned: bool,
}

/// The chain backend the wallet talks to.
#[derive(Clone)]
enum Backend {
    Rpc(RpcClient),
    Esplora(Esplora),
}

/// The payments on-chain wallet.
#[derive(Clone)]
pub struct OnchainWallet {
    inner: Arc<Mutex<Inner>>,
    backend: Backend,
    network: Network,
}

impl std::fmt::Debug for OnchainWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnchainWallet")
            .field("network", &self.network)
            .finish()
    }
}

impl From<ChainError> for WalletError {
    fn from(e: ChainError) -> Self {
        Self::Chain(e)
    }
}

fn store_err(e: impl std::fmt::Display) -> WalletError {
    WalletError::Store(e.to_string())
}

impl OnchainWallet {
    /// Opens the wallet on Bitcoin Core's RPC, creating the seed (0600) and
    /// the wallet file (0600) on first use. Blocking (file and SQLite I/O,
    /// and one `getblockcount` for a brand-new seed).
    pub fn open(config: &WalletConfig) -> Result<Self, WalletError> {
        let client = RpcClient::new(&config.rpc)?;
        Self::open_with(config.network, &config.data_dir, Backend::Rpc(client))
    }

    /// Opens the wallet on `source` (Bitcoin Core RPC or Esplora). Blocking
    /// like [`Self::open`]; with Esplora no request is made here (the first
    /// [`Self::sync`] does a full scan).
    pub fn open_on(
        network: Network,
        data_dir: &Path,
        source: &ChainSource,
    ) -> Result<Self, WalletError> {
        let backend = match source {
            ChainSource::BitcoindRpc(rpc) => Backend::Rpc(RpcClient::new(rpc)?),
            ChainSource::Esplora { url } => Backend::Esplora(Esplora::new(url)?),
        };
        Self::open_with(network, data_dir, backend)
    }

    fn open_with(network: Network, dir: &Path, backend: Backend) -> Result<Self, WalletError> {
        let dir = &dir.to_path_buf();
        std::fs::create_dir_all(dir).map_err(|source| WalletError::Io {
            path: dir.clone(),
            source,
        })?;
        let (seed, origin) = Seed::load_or_create(dir)?;
        let (external, internal) = seed.payments_descriptors(network)?;
        let db_path = dir.join(WALLET_DB_FILE_NAME);
        let mut conn = open_private(&db_path)?;
        let (wallet, created) =
            wallet::open(&mut conn, (external, internal), network).map_err(|e| match e {
                wallet::OpenError::Mismatch => WalletError::Mismatch,
                other => store_err(other),
            })?;
        // A seed made just now cannot have received coins before the
        // current tip; an older seed may have, so scan from genesis.
        // (Esplora scans by address, so it needs no start height.)
        let start_height = match &backend {
            Backend::Rpc(client) if created && origin == SeedOrigin::Created => {
                client.tip_height()?
            }
            _ => 0,
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                wallet,
                conn,
                start_height,
                clock: 0,
                scanned: false,
            })),
            backend,
            network,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the wallet (and the RPC client) on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        client: RpcClient,
        f: impl FnOnce(&mut Inner, &RpcClient) -> Result<T, WalletError> + Send + 'static,
    ) -> Result<T, WalletError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard, &client)
        })
        .await
        .map_err(|e| WalletError::Task(e.to_string()))?
    }

    /// Runs `f` with the wallet on the blocking pool (SQLite writes).
    async fn with_inner<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, WalletError> + Send + 'static,
    ) -> Result<T, WalletError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| WalletError::Task(e.to_string()))?
    }

    /// Brings the wallet up to the node's best chain and mempool.
    pub async fn sync(&self) -> Result<(), WalletError> {
        match &self.backend {
            Backend::Rpc(client) => {
                self.blocking(client.clone(), |inner, client| inner.sync(client))
                    .await
            }
            Backend::Esplora(client) => self.sync_esplora(client).await,
        }
    }

    /// Esplora: a full scan (up to the stop gap) the first time in this
    /// process, then a sync of the revealed addresses and of the unconfirmed
    /// transactions the wallet expects. The wallet lock is not held while
    /// requests are in flight.
    async fn sync_esplora(&self, esplora: &Esplora) -> Result<(), WalletError> {
        let client = esplora.client();
        let full = !self.lock().scanned;
        let update: bdk_wallet::Update = if full {
            let request = self.lock().wallet.start_full_scan().build();
            client
                .full_scan(request, ESPLORA_STOP_GAP, ESPLORA_PARALLEL_REQUESTS)
                .await
                .map_err(|e| esplora::error(&e))?
                .into()
        } else {
            let request = self.lock().wallet.start_sync_with_revealed_spks().build();
            client
                .sync(request, ESPLORA_PARALLEL_REQUESTS)
                .await
                .map_err(|e| esplora::error(&e))?
                .into()
        };
        self.with_inner(move |inner| {
            inner
                .wallet
                .apply_update(update)
                .map_err(|e| ChainError::Other(format!("chain update does not connect: {e}")))?;
            if full {
                inner.scanned = true;
            }
            inner.persist()
        })
        .await
    }

    /// A fresh receive address (revealed and persisted, so never handed out twice).
    pub fn receive_address(&self) -> Result<Address, WalletError> {
        let mut inner = self.lock();
        let info = inner.wallet.reveal_next_address(KeychainKind::External);
        inner.persist()?;
        Ok(info.address)
    }

    /// Confirmed and pending balance, as of the last sync.
    pub fn balance(&self) -> WalletBalance {
        let b = self.lock().wallet.balance();
        WalletBalance {
            confirmed: b.confirmed,
            pending: b.trusted_pending + b.untrusted_pending + b.immature,
        }
    }

    /// Pays `amount` to `address` at `fee_rate`, broadcasts it and records it
    /// as pending. Sync first so the wallet knows its coins.
    pub async fn send(
        &self,
        address: Address,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<Txid, WalletError> {
        self.send_with(
            address,
            SendAmount::Exact(amount),
            SendOptions::new(FeeChoice::Rate(fee_rate)),
        )
        .await
    }

    /// Pays `amount` to `address` with coin control (`options.utxos`,
    /// `options.avoid`) and a chosen fee, broadcasts it and records it as
    /// pending. Sync first so the wallet knows its coins.
    pub async fn send_with(
        &self,
        address: Address,
        amount: SendAmount,
        options: SendOptions,
    ) -> Result<Txid, WalletError> {
        let network = self.network;
        if !address.as_unchecked().is_valid_for_network(network) {
            return Err(WalletError::WrongNetwork(network));
        }
        let client = match &self.backend {
            Backend::Rpc(client) => client.clone(),
            Backend::Esplora(esplora) => {
                return self
                    .send_with_esplora(esplora, address, amount, options)
                    .await
            }
        };
        self.blocking(client, move |inner, client| {
            let fee_rate = match options.fee {
                FeeChoice::Rate(rate) => rate,
                FeeChoice::Target { blocks, fallback } => {
                    client.estimate_fee_rate(blocks)?.unwrap_or(fallback)
                }
            };
            let tx = inner.build_signed(&address, amount, fee_rate, &options)?;
            let txid = client.broadcast(&tx)?;
            let t = inner.tick();
            inner.wallet.apply_unconfirmed_txs([(tx, t)]);
            inner.persist()?;
            Ok(txid)
        })
        .await
    }

    async fn send_with_esplora(
        &self,
        client: &Esplora,
        address: Address,
        amount: SendAmount,
        options: SendOptions,
    ) -> Result<Txid, WalletError> {
        let fee_rate = match options.fee {
            FeeChoice::Rate(rate) => rate,
            FeeChoice::Target { blocks, fallback } => {
                client.estimate_fee_rate(blocks).await?.unwrap_or(fallback)
            }
        };
        let tx = self
            .with_inner(move |inner| inner.build_signed(&address, amount, fee_rate, &options))
            .await?;
        let txid = client.broadcast(&tx).await?;
        self.with_inner(move |inner| {
            let t = inner.tick();
            inner.wallet.apply_unconfirmed_txs([(tx, t)]);
            inner.persist()
        })
        .await?;
        Ok(txid)
    }

    /// The feerate the chain source estimates for confirmation within
    /// `blocks`, `None` when it has no estimate.
    pub async fn estimate_fee_rate(&self, blocks: u16) -> Result<Option<FeeRate>, WalletError> {
        match &self.backend {
            Backend::Rpc(client) => {
                self.blocking(client.clone(), move |_, client| {
                    Ok(client.estimate_fee_rate(blocks)?)
                })
                .await
            }
            Backend::Esplora(client) => Ok(client.estimate_fee_rate(blocks).await?),
        }
    }

    /// The wallet's unspent outputs (confirmed and unconfirmed), as of the
    /// last sync, largest first.
    pub fn utxos(&self) -> Vec<Utxo> {
        let inner = self.lock();
        let mut out: Vec<Utxo> = inner
            .wallet
            .list_unspent()
            .map(|o| Utxo {
                outpoint: o.outpoint,
                value: o.txout.value,
                is_change: o.keychain == KeychainKind::Internal,
                confirmation_height: match o.chain_position {
                    ChainPosition::Confirmed { anchor, .. } => Some(anchor.block_id.height),
                    ChainPosition::Unconfirmed { .. } => None,
                },
            })
            .collect();
        out.sort_by_key(|u| std::cmp::Reverse(u.value));
        out
    }

    /// Every transaction touching the wallet, newest first (unconfirmed on top).
    pub fn transactions(&self) -> Vec<TxRecord> {
        let inner = self.lock();
        let mut out: Vec<TxRecord> = inner
            .wallet
            .transactions()
            .map(|t| {
                let tx = &t.tx_node.tx;
                let (sent, received) = inner.wallet.sent_and_received(tx);
                let fee = inner.wallet.calculate_fee(tx).ok();
                let (confirmation_height, time) = match &t.chain_position {
                    ChainPosition::Confirmed { anchor, .. } => {
                        (Some(anchor.block_id.height), Some(anchor.confirmation_time))
                    }
                    ChainPosition::Unconfirmed { last_seen, .. } => (None, *last_seen),
                };
                TxRecord {
                    txid: t.tx_node.txid,
                    received,
                    sent,
                    fee,
                    confirmation_height,
                    time,
                }
            })
            .collect();
        out.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.confirmation_height.unwrap_or(u32::MAX)),
                std::cmp::Reverse(r.time.unwrap_or(0)),
            )
        });
        out
    }

    /// The wallet's network.
    pub fn network(&self) -> Network {
        self.network
    }
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock = crate::clock::now().max(self.clock + 1);
        self.clock
    }

    fn persist(&mut self) -> Result<(), WalletError> {
        self.wallet.persist(&mut self.conn).map_err(store_err)?;
        Ok(())
    }

    fn sync(&mut self, client: &RpcClient) -> Result<(), WalletError> {
        let t = self.tick();
        sync_from_core(client, &mut self.wallet, self.start_height, t)?;
        self.persist()
    }

    fn build_signed(
        &mut self,
        address: &Address,
        amount: SendAmount,
        fee_rate: FeeRate,
        options: &SendOptions,
    ) -> Result<Transaction, WalletError> {
        // bdk ignores unknown outpoints in `unspendable` but refuses unknown
        // ones in `add_utxos`; check first to name the bad one.
        if let Some(bad) = options
            .utxos
            .iter()
            .find(|op| self.wallet.get_utxo(**op).is_none_or(|o| o.is_spent))
        {
            return Err(WalletError::UnknownUtxo(*bad));
        }
        let mut builder = self.wallet.build_tx();
        builder.fee_rate(fee_rate);
        if !options.avoid.is_empty() {
            builder.unspendable(options.avoid.clone());
        }
        if !options.utxos.is_empty() {
            builder
                .add_utxos(&options.utxos)
                .map_err(|e| WalletError::Build(e.to_string()))?
                .manually_selected_only();
        }
        match amount {
            SendAmount::Exact(amount) => {
                builder.add_recipient(address.script_pubkey(), amount);
            }
            SendAmount::All => {
                builder.drain_to(address.script_pubkey());
                if options.utxos.is_empty() {
                    builder.drain_wallet();
                }
            }
        }
        let mut psbt = builder.finish().map_err(|e| match e {
            // bdk names the output's index, not the limit.
            bdk_wallet::error::CreateTxError::OutputBelowDustLimit(_) => {
                let limit = address.script_pubkey().minimal_non_dust().to_sat();
                WalletError::Build(match amount {
                    SendAmount::Exact(a) => format!(
                        "{} sat is below the dust limit of {limit} sat for this address",
                        a.to_sat()
                    ),
                    SendAmount::All => format!(
                        "what is left after the fee is below the dust limit of {limit} sat for this address"
                    ),
                })
            }
            e => WalletError::Build(e.to_string()),
        })?;
        let finalized = self
            .wallet
            .sign(&mut psbt, SignOptions::default())
            .map_err(|_| WalletError::Sign)?;
        if !finalized {
            return Err(WalletError::Sign);
        }
        // Keep the revealed change address across restarts.
        self.persist()?;
        psbt.extract_tx()
            .map_err(|e| WalletError::Build(e.to_string()))
    }
}

fn open_private(path: &Path) -> Result<Connection, WalletError> {
    let conn = Connection::open(path).map_err(store_err)?;
    restrict_to_owner(path).map_err(|source| WalletError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(conn)
}
