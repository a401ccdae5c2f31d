//! The payments runtime of a node with `[payments] enabled`: the on-chain
//! wallet, the Lightning node, the NWC service on the node's own relay, and
//! their background jobs, started by [`crate::server::start`] and stopped by
//! `RunningNode::shutdown` before the relay.
//!
//! **One Lightning node per data directory.** Before it opens anything, the
//! process takes an exclusive `flock` on `<data_dir>/lightning.lock` (0600,
//! see [`DataDirFence`]) and holds it until its Lightning node has stopped;
//! the kernel releases it when the process dies. On Postgres the payments
//! lease and [`TAKEOVER_DELAY`] already keep two holders apart, but an old
//! holder that is paused or slow to stop its node would still run it on the
//! same seed, which can lose channel funds: the fence makes the new holder
//! wait for it instead of relying on timing alone.
//!
//! Start order: the seed (`<data_dir>/seed`, 0600, shared with identity
//! anchoring) → the on-chain wallet (BIP86 account 0) → the Lightning node
//! (built and started; ldk-node syncs itself every few seconds) → the NWC
//! service (opened and started at once: it subscribes and publishes its 13194
//! info event in-process on the node's relay, see [`crate::server::own_relay`], so it
//! does not wait for the server to listen; an `nwc_relay_url` naming another
//! relay is reached over a WebSocket) → NWC notifications from the Lightning
//! event stream and a periodic on-chain wallet sync.
//!
//! **When Bitcoin Core is unreachable at start** the node does not fail
//! because of payments: the relay keeps working, the admin API
//! answers every request with 503 and the reason (e.g. "payments are not
//! running: Lightning node: …"), and the start is retried every
//! `start_retry_interval_secs` until it succeeds or the node shuts down. Why: a
//! relay is useful on its own, and Bitcoin Core often comes up after Cairn (or
//! is restarted under it); failing the whole node would take messaging down
//! with the wallet. A wrong configuration (bad RPC URL, seed file readable by
//! others) fails the same way, visibly, rather than silently.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bitcoin::{FeeRate, Network};
use cairn_bitcoin::esplora::Esplora;
use cairn_bitcoin::{ChainError, ChainSource, RpcClient, RpcConfig, Seed};
use cairn_payments::lightning::LightningNode;
use cairn_payments::nwc::{service_keys, NwcService, NwcServiceConfig};
use cairn_payments::wallet::OnchainWallet;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::zaps::ZapsRuntime;
use crate::redact::redact_url;
use crate::server::lease::{self, LeaseState};
use crate::server::own_relay::OwnRelay;
use crate::settings::payments::ChainSourceKind;
use crate::settings::Settings;

/// The node's wallet, Lightning node and NWC service, running.
pub struct Payments {
    wallet: Arc<OnchainWallet>,
    lightning: Arc<LightningNode>,
    nwc: Arc<NwcService<LightningNode>>,
    network: Network,
    default_fee_rate: FeeRate,
    wallet_sync_interval: Duration,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("network", &self.network)
            .field("lightning", &self.lightning)
            .finish_non_exhaustive()
    }
}

impl Payments {
    /// Opens the wallet, builds and starts the Lightning node and opens the
    /// NWC service on the relay at `nwc_relay_url` (`own_relay` in-process
    /// when it names it; not yet started: see [`Self::start_services`]). Must
    /// run on a multi-threaded tokio runtime (ldk-node blocks in place).
    pub async fn open(
        settings: &Settings,
        nwc_relay_url: &str,
        own_relay: &OwnRelay,
    ) -> anyhow::Result<Arc<Self>> {
        let cfg = &settings.payments;
        let data_dir = settings.data_dir.clone();
        let wallet_config = cfg.wallet_config(&settings.bitcoin, &data_dir);
        let source = cfg.chain_source(&settings.bitcoin)?;
        let default_fee_rate = cfg.default_fee_rate()?;
        check_chain_source(settings).await?;
        // File and SQLite I/O, and one chain call on the very first start.
        let wallet_source = source.clone();
        let (wallet, seed) = tokio::task::spawn_blocking(move || {
            let wallet = match wallet_source {
                // `open` keeps the RPC client's bounded timeout.
                ChainSource::BitcoindRpc(_) => OnchainWallet::open(&wallet_config),
                ChainSource::Esplora { .. } => OnchainWallet::open_on(
                    wallet_config.network,
                    &wallet_config.data_dir,
                    &wallet_source,
                ),
            }
            .context("on-chain wallet")?;
            let (seed, _) = Seed::load_or_create(&wallet_config.data_dir).context("seed")?;
            anyhow::Ok((wallet, seed))
        })
        .await
        .context("wallet task failed")??;
        let lightning = Arc::new(
            LightningNode::build_on(
                settings.bitcoin.network.into(),
                &data_dir,
                cfg.lightning_listen,
                &source,
                &seed,
            )
            .context("Lightning node")?,
        );
        lightning
            .start()
            .context("Lightning node (is the chain source reachable?)")?;
        let nwc = match service_keys(&data_dir)
            .map_err(anyhow::Error::new)
            .and_then(|keys| own_relay.link_to(nwc_relay_url, keys))
            .and_then(|link| {
                let config = NwcServiceConfig {
                    data_dir: data_dir.clone(),
                    relay_url: nwc_relay_url.to_owned(),
                };
                Ok(NwcService::open(&config, Arc::clone(&lightning), link)?)
            }) {
            Ok(nwc) => Arc::new(nwc),
            Err(e) => {
                let _ = lightning.stop().await;
                return Err(e.context("NWC service"));
            }
        };
        tracing::info!(
            node_id = %lightning.node_id(),
            listen = %cfg.lightning_listen,
            nwc_pubkey = %nwc.service_pubkey(),
            "payments started"
        );
        Ok(Arc::new(Self {
            wallet: Arc::new(wallet),
            lightning,
            nwc,
            network: settings.bitcoin.network.into(),
            default_fee_rate,
            wallet_sync_interval: Duration::from_secs(cfg.wallet_sync_interval_secs.max(1)),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Starts the NWC service on its relay, the NWC notifications and the
    /// periodic wallet sync. A relay that cannot be reached is logged:
    /// Lightning and the admin API work without NWC.
    pub(crate) async fn start_services(self: &Arc<Self>) {
        if let Err(e) = self.nwc.start().await {
            tracing::error!(error = %e, "NWC service could not connect to its relay; NWC is off");
        }
        self.nwc.spawn_notifications(self.lightning.subscribe());
        let me = Arc::clone(self);
        let sync = tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.wallet_sync_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = me.stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match me.wallet.sync().await {
                    Ok(()) if failing => {
                        tracing::info!("on-chain wallet sync works again");
                        failing = false;
                    }
                    Ok(()) => {}
                    // Once per outage, not every interval.
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "on-chain wallet sync failed");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sync);
    }

    /// Stops the jobs, disconnects NWC from the relay and stops the Lightning node.
    pub async fn stop(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        self.nwc.stop().await;
        if let Err(e) = self.lightning.stop().await {
            tracing::warn!(error = %e, "stopping the Lightning node");
        }
        tracing::info!("payments stopped");
    }

    /// The on-chain wallet (BIP86 account 0).
    pub fn wallet(&self) -> &Arc<OnchainWallet> {
        &self.wallet
    }

    /// The Lightning node.
    pub fn lightning(&self) -> &Arc<LightningNode> {
        &self.lightning
    }

    /// The NWC service.
    pub fn nwc(&self) -> &Arc<NwcService<LightningNode>> {
        &self.nwc
    }

    /// The Bitcoin network.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Feerate of on-chain sends that name none (`[payments] default_fee_rate_sat_per_vb`).
    pub fn default_fee_rate(&self) -> FeeRate {
        self.default_fee_rate
    }
}

/// Bound on the reachability check of Bitcoin Core.
const CHAIN_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails unless Bitcoin Core answers `getblockcount` with these credentials.
///
/// Checked before anything is created: the on-chain wallet dates a brand-new
/// seed from the current tip, but a seed that already exists (say, created by
/// a start that then failed to reach the node) must be scanned from genesis.
/// Not creating the seed while the chain is unreachable keeps that scan away.
async fn check_chain_source(settings: &Settings) -> anyhow::Result<()> {
    match settings.payments.chain_source {
        ChainSourceKind::Bitcoind => check_bitcoin_core(settings).await,
        ChainSourceKind::Esplora => check_esplora(&settings.payments.esplora_url).await,
    }
}

/// `GET /blocks/tip/height` must answer a number.
async fn check_esplora(base: &str) -> anyhow::Result<()> {
    let shown = redact_url(base);
    let esplora = Esplora::new(base).map_err(|e| anyhow::anyhow!("Esplora at {shown}: {e}"))?;
    match tokio::time::timeout(CHAIN_CHECK_TIMEOUT, esplora.tip_height()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(ChainError::Unreachable(e))) => {
            anyhow::bail!("Esplora at {shown} is unreachable: {e}")
        }
        Ok(Err(e)) => anyhow::bail!("Esplora at {shown} answered {e} to /blocks/tip/height"),
        Err(_) => anyhow::bail!("Esplora at {shown} is unreachable: timed out"),
    }
}

async fn check_bitcoin_core(settings: &Settings) -> anyhow::Result<()> {
    let b = &settings.bitcoin;
    let shown = redact_url(&b.rpc_url);
    let rpc =
        RpcConfig::new(&b.rpc_url, &b.rpc_user, &b.rpc_password).with_timeout(CHAIN_CHECK_TIMEOUT);
    let answer = match RpcClient::new(&rpc) {
        Ok(client) => client.run(|c| c.tip_height()).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(_) => Ok(()),
        Err(ChainError::Unauthorized) => anyhow::bail!(
            "Bitcoin Core at {shown} refused the RPC credentials ([bitcoin] rpc_user, rpc_password)"
        ),
        // ChainError never quotes the URL, which may hold credentials.
        Err(ChainError::Unreachable(e)) => {
            anyhow::bail!("Bitcoin Core at {shown} is unreachable: {e}")
        }
        Err(e) => anyhow::bail!("Bitcoin Core at {shown} answered: {e} ([bitcoin] rpc_url)"),
    }
}

/// Where the node keeps its [`Payments`] while they run here, and why they
/// do not. Shared by the node and the admin, zap and health routes, so a
/// start that succeeds on a later retry, or payments that move to this
/// process or away from it (see [`PaymentsRuntime`]), are seen by all.
#[derive(Debug, Default)]
pub struct PaymentsSlot {
    running: Mutex<Option<Arc<Payments>>>,
    /// Bumped whenever `running` changes: what [`Self::wait`] waits on.
    changed: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
    /// True while another process holds the payments lease.
    standby: std::sync::atomic::AtomicBool,
}

impl PaymentsSlot {
    /// The running payments, if they run in this process.
    pub fn get(&self) -> Option<Arc<Payments>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The running payments, once they run here (at once if they do).
    pub async fn wait(&self) -> Arc<Payments> {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(p) = self.get() {
                return p;
            }
            // `changed` fails only once the sender is dropped, and `self`
            // holds it: no error to handle.
            let _ = changed.changed().await;
        }
    }

    /// The running payments, or why they are not running here.
    pub fn running(&self) -> Result<Arc<Payments>, String> {
        self.get().ok_or_else(|| {
            if self.standby() {
                return "payments run on another process (it holds the payments lease); \
                        this one stands by"
                    .to_owned();
            }
            let reason = self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "starting".to_owned());
            format!("payments are not running: {reason}")
        })
    }

    /// Whether another process runs payments (this one holds no lease).
    pub fn standby(&self) -> bool {
        self.standby.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_standby(&self, standby: bool) {
        self.standby
            .store(standby, std::sync::atomic::Ordering::Release);
    }

    fn set(&self, payments: Arc<Payments>) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(payments);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.changed.send_modify(|n| *n += 1);
    }

    fn clear(&self) -> Option<Arc<Payments>> {
        let taken = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.changed.send_modify(|n| *n += 1);
        taken
    }

    fn set_error(&self, e: &anyhow::Error) {
        // `{:#}`: the chain of causes, which names what failed. No secret
        // reaches it: the seed, keys and RPC password are never in errors.
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
    }
}

/// How long a process that has just taken the payments lease waits before
/// it starts the Lightning node, on Postgres: a previous holder whose lease
/// connection broke (rather than closed with its process) runs on until
/// its next lease check fails, at most about `DEFAULT_CHECK +
/// CHECK_TIMEOUT`, and must have stopped its node before this one starts
/// on the same seed and data directory.
pub const TAKEOVER_DELAY: Duration =
    Duration::from_secs(lease::DEFAULT_CHECK.as_secs() + lease::CHECK_TIMEOUT.as_secs() + 2);

/// The file, in the data directory, whose exclusive `flock` a process
/// holds while its payments run.
pub const FENCE_FILE: &str = "lightning.lock";

/// How long a process waits between tries of the data-directory fence.
const FENCE_RETRY: Duration = Duration::from_millis(500);

/// An exclusive advisory lock (`flock`) on `<data_dir>/lightning.lock`,
/// held for as long as this value lives: by the process whose wallet and
/// Lightning node run on that data directory. Dropping it (or the process
/// dying) releases it. A `flock` belongs to the open file, so two values in
/// one process exclude each other as two processes do.
#[derive(Debug)]
pub struct DataDirFence {
    _file: File,
}

/// Why the data-directory fence could not be tried.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The lock file could not be opened or created.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `flock` failed for another reason than the lock being held.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DataDirFence {
    /// Takes the fence of `data_dir` if no one holds it (`None` if someone
    /// does); never blocks.
    pub fn try_acquire(data_dir: &Path) -> Result<Option<Self>, FenceError> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let path = data_dir.join(FENCE_FILE);
        let open = |source| FenceError::Open {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(open)?;
        // The mode applies only on creation; a file left by an older umask is
        // tightened too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(open)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(FenceError::Lock {
                path,
                source: e.into(),
            }),
        }
    }

    /// Takes the fence of `data_dir`, trying every [`FENCE_RETRY`] while
    /// another holds it (calling `waiting` with the reason each time it
    /// cannot), until `stop` (then `None`).
    pub async fn acquire(
        data_dir: &Path,
        stop: &CancellationToken,
        mut waiting: impl FnMut(Option<&FenceError>),
    ) -> Option<Self> {
        loop {
            match Self::try_acquire(data_dir) {
                Ok(Some(fence)) => return Some(fence),
                Ok(None) => waiting(None),
                Err(e) => waiting(Some(&e)),
            }
            if sleep_or_stop(FENCE_RETRY, stop).await {
                return None;
            }
        }
    }
}

/// What one process does while it holds the payments lease.
struct Term {
    settings: Settings,
    nwc_relay_url: String,
    own_relay: OwnRelay,
    slot: Arc<PaymentsSlot>,
    zaps: Option<Arc<ZapsRuntime>>,
    /// Wait [`TAKEOVER_DELAY`] first (the lease is shared with other processes).
    shared: bool,
    /// Turns true once the first start attempt of the first term is over
    /// (succeeded, with zaps started, or failed and recorded).
    attempted: watch::Sender<bool>,
}

impl Term {
    /// Starts payments (retrying every `start_retry_interval_secs` while
    /// they cannot start), then the zap service, serves until `stop`, and
    /// stops them: zaps first, then NWC and the Lightning node.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let slot = &self.slot;
        slot.set_standby(false);
        if self.shared {
            tracing::info!(
                delay_secs = TAKEOVER_DELAY.as_secs(),
                "payments lease taken; waiting out a previous holder before starting payments"
            );
            if sleep_or_stop(TAKEOVER_DELAY, &stop).await {
                slot.set_standby(true);
                return;
            }
        }
        // Held until the Lightning node has stopped (dropped at the end).
        let mut logged = false;
        let fence = DataDirFence::acquire(&self.settings.data_dir, &stop, |e| {
            let reason = match e {
                None => "waiting for the previous holder's Lightning node to stop (its data-directory lock is held)".to_owned(),
                Some(e) => format!("the data-directory lock cannot be taken: {e}"),
            };
            if !logged {
                tracing::warn!(file = FENCE_FILE, "payments not started: {reason}");
                logged = true;
            }
            slot.set_error(&anyhow::anyhow!("{reason}"));
            // On SQLite the node comes up without payments rather than
            // waiting here.
            self.attempted.send_replace(true);
        })
        .await;
        let Some(fence) = fence else {
            slot.set_standby(true);
            return;
        };
        let every = Duration::from_secs(self.settings.payments.start_retry_interval_secs.max(1));
        let mut first = true;
        let payments = loop {
            match Payments::open(&self.settings, &self.nwc_relay_url, &self.own_relay).await {
                Ok(p) => break p,
                Err(e) => {
                    if first {
                        tracing::error!(
                            error = %format!("{e:#}"),
                            "payments could not start; the relay runs without them and the start is retried"
                        );
                    } else {
                        tracing::debug!(error = %format!("{e:#}"), "payments still cannot start");
                    }
                    first = false;
                    slot.set_error(&e);
                    self.attempted.send_replace(true);
                    if sleep_or_stop(every, &stop).await {
                        slot.set_standby(true);
                        return;
                    }
                }
            }
        };
        if stop.is_cancelled() {
            payments.stop().await;
            drop(fence);
            slot.set_standby(true);
            return;
        }
        payments.start_services().await;
        slot.set(Arc::clone(&payments));
        if !first {
            tracing::info!("payments started after a retry");
        }
        if let Some(zaps) = &self.zaps {
            zaps.start_on(&payments);
        }
        self.attempted.send_replace(true);
        stop.cancelled().await;
        if let Some(zaps) = &self.zaps {
            zaps.stop_service().await;
        }
        slot.clear();
        payments.stop().await;
        // Only now may another process start a Lightning node here.
        drop(fence);
        slot.set_standby(true);
    }
}

/// Sleep `d`; true when `stop` came first.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// The payments part of a running node: the slot, and the task that runs
/// payments in this process while it holds the payments lease (see
/// [`crate::server::lease`]; on SQLite always).
///
/// Why a lease: NWC requests and zap payments reach every process that
/// shares the database, and each must be answered by exactly one; and a
/// Lightning node must never run twice on one seed. Only the holder opens
/// the wallet, the Lightning node, the NWC service and the zap service;
/// when it stops (or loses its lease connection) it stops them, and
/// another process takes over after [`TAKEOVER_DELAY`]. Their state is the
/// data directory (seed, Lightning channels, NWC connections, pending
/// zaps): the processes must share it (see `docs/scale-out.md`).
#[derive(Debug)]
pub struct PaymentsRuntime {
    slot: Arc<PaymentsSlot>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    lease: LeaseState,
}

impl PaymentsRuntime {
    /// Starts competing for the payments lease on `lease_pool` (`None`:
    /// SQLite, payments start at once) and, while it is held, runs payments
    /// with NWC on `nwc_relay_url` (see [`Payments::open`]) and, when given,
    /// the zap service. A start that fails is recorded in the slot and
    /// retried. On SQLite this returns once the first attempt is over, so
    /// that payments that can start run when the node is up.
    pub async fn start(
        settings: &Settings,
        nwc_relay_url: &str,
        own_relay: &OwnRelay,
        lease_pool: Option<sqlx::PgPool>,
        zaps: Option<Arc<ZapsRuntime>>,
    ) -> Self {
        let slot = Arc::new(PaymentsSlot::default());
        let shared = lease_pool.is_some();
        slot.set_standby(shared);
        let term = Arc::new(Term {
            settings: settings.clone(),
            nwc_relay_url: nwc_relay_url.to_owned(),
            own_relay: own_relay.clone(),
            slot: Arc::clone(&slot),
            zaps,
            shared,
            attempted: watch::Sender::new(false),
        });
        let mut attempted = term.attempted.subscribe();
        let stop = CancellationToken::new();
        let (task, lease) = lease::spawn(
            lease::Job::Payments,
            lease_pool,
            stop.clone(),
            Box::new(move |stop| Box::pin(Arc::clone(&term).run(stop)) as lease::BoxedWork),
        );
        if !shared {
            // Fails only if the term ended first, which only `stop` does.
            let _ = attempted.wait_for(|done| *done).await;
        }
        Self {
            slot,
            stop,
            task,
            lease,
        }
    }

    /// The shared slot (for the admin routes).
    pub fn slot(&self) -> &Arc<PaymentsSlot> {
        &self.slot
    }

    /// Whether this process holds the payments lease (for `/ready`).
    pub fn lease(&self) -> &LeaseState {
        &self.lease
    }

    /// Stops the payments (zaps first) if they run here, and leaves the lease.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirFence::try_acquire(dir.path())
            .unwrap()
            .expect("free");
        assert!(DataDirFence::try_acquire(dir.path()).unwrap().is_none());
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(FENCE_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(first);
        assert!(DataDirFence::try_acquire(dir.path()).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_second_acquirer_waits_for_the_first_to_drop_the_fence() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirFence::try_acquire(dir.path())
            .unwrap()
            .expect("free");
        let (waited_tx, mut waited_rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let path = dir.path().to_owned();
        let second = tokio::spawn({
            let stop = stop.clone();
            async move {
                DataDirFence::acquire(&path, &stop, |e| {
                    assert!(e.is_none(), "only held, never failing: {e:?}");
                    let _ = waited_tx.send(());
                })
                .await
            }
        });
        // It tried twice and found the fence held both times.
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(30), waited_rx.recv())
                .await
                .expect("the second acquirer tries again")
                .expect("it still waits");
        }
        assert!(!second.is_finished());
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(30), second)
            .await
            .expect("the second acquirer gets the fence once it is free")
            .unwrap();
        assert!(got.is_some());
        assert!(DataDirFence::try_acquire(dir.path()).unwrap().is_none());
    }

    #[tokio::test]
    async fn waiting_for_the_fence_ends_with_stop() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDirFence::try_acquire(dir.path())
            .unwrap()
            .expect("free");
        let stop = CancellationToken::new();
        stop.cancel();
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            DataDirFence::acquire(dir.path(), &stop, |_| {}),
        )
        .await
        .expect("stop ends the wait");
        assert!(got.is_none());
    }
}
