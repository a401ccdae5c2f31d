//! Mirrored identity logs (`[[identity.mirror]]`): this node follows other
//! witnesses from the events they publish on a relay, checks them as a
//! verifier would, and serves what it verified under the witness it came from.
//!
//! The logic (replay, conflict detection) is `cairn_identity::service::mirror`;
//! this module is its I/O:
//!
//! - **Subscription**: one task per mirror subscribes on the configured
//!   relay to kinds 3470-3473 (stored events first, then live ones) through
//!   the WebSocket [`RelayLink`] the payments services use, and reconnects
//!   with backoff. Every event goes through [`Mirror::add`].
//! - **Anchors on this node's Bitcoin view**: an epoch whose pieces are all
//!   there is looked up on this node's Bitcoin Core ([`find_anchor`]): the
//!   anchor txids the witness published, searched in the blocks from a little
//!   before the epoch's close time, then `gettxoutproof`. Nothing the witness
//!   says about the chain is taken on trust; a txid is only where to look.
//! - **Persistence**, under `<data_dir>/mirror/<witness hex>/`: `events.jsonl`
//!   (every event taken, one JSON line each, replayed at start so a mirror
//!   serves without its relay) and `stopped.json` (the evidence of a split
//!   view, both signed headers, or a fault; written with fsync before the
//!   mirror reports it, and read at start: a stopped mirror stays stopped
//!   until an operator removes the file).
//! - **Serving**: [`Mirrors::lookup`] answers the identity API's handle and
//!   key routes (see [`routes`]) with the mirror's record and bundle, naming
//!   the witness; `GET /identity/v1/mirrors` is the status of each mirror.
//!
//! Invariants: the mirror's lock is never held across a network call; a
//! mirror that stopped takes no further events and never restarts itself.

pub mod routes;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bitcoin::consensus::deserialize;
use bitcoin::{BlockHash, Txid};
use cairn_bitcoin::{ChainError, RpcClient, RpcConfig};
use cairn_identity::binding::RegistryConfig;
use cairn_identity::service::mirror::{
    AnchorQuery, AnchorSighting, Mirror, MirroredIdentity, Rejected, SplitView, Stop,
    MIRRORED_KINDS,
};
use cairn_payments::relay_link::{RelayEvents, RelayLink, RelayLinkError, WebSocketLink};
use nostr::{Event, Filter, JsonUtil, Keys, Kind, PublicKey, RelayUrl};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::npub;
use crate::settings::Settings;

/// How far before an epoch's close time the anchor search starts (block
/// times may be up to two hours off).
const SEARCH_SLACK_SECS: u64 = 3 * 3600;
/// Most blocks looked at for one txid in one attempt.
const MAX_SCAN_BLOCKS: u32 = 2016;
/// Longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// File of the evidence of why a mirror stopped.
pub const STOPPED_FILE: &str = "stopped.json";
/// File of the events a mirror took.
pub const EVENTS_FILE: &str = "events.jsonl";

/// What a mirror reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorStatus {
    /// The witness followed, NIP-19.
    pub witness: String,
    /// The relay it is followed on.
    pub relay: String,
    /// `following` or `stopped`.
    pub state: &'static str,
    /// Whether the subscription is up.
    pub connected: bool,
    /// Epochs verified against their anchors.
    pub verified_epochs: u64,
    /// Latest epoch header seen (verified or not).
    pub latest_seen_epoch: Option<u64>,
    /// Log size at the latest verified epoch.
    pub log_size: u64,
    /// Identities with a verified record.
    pub identities: usize,
    /// Events refused (bad signature, wrong author, malformed).
    pub rejected_events: u64,
    /// The latest refusal or error.
    pub last_error: Option<String>,
    /// Why it stopped, when it did.
    pub stop_reason: Option<String>,
    /// The evidence, when it stopped on a split view: both signed header events.
    pub evidence: Option<Evidence>,
}

/// The two signed headers of a split view.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Evidence {
    /// The epoch.
    pub epoch: u64,
    /// The header event seen first.
    pub first: serde_json::Value,
    /// The conflicting one.
    pub second: serde_json::Value,
}

/// `stopped.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct StoppedFile {
    reason: String,
    epoch: u64,
    split_view: Option<Evidence>,
}

struct Health {
    connected: bool,
    rejected: u64,
    last_error: Option<String>,
}

/// One followed witness.
pub struct MirrorHandle {
    witness: PublicKey,
    relay: String,
    dir: PathBuf,
    mirror: Mutex<Mirror>,
    health: Mutex<Health>,
    /// Held from taking an event (or verifying an epoch) until its stop is
    /// persisted, and by `status`: a stop is reported only once its
    /// evidence is on disk.
    io: Mutex<()>,
}

impl std::fmt::Debug for MirrorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorHandle")
            .field("witness", &self.witness)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MirrorHandle {
    /// Opens the mirror of `witness`, replaying its persisted events and
    /// restoring a persisted stop.
    fn open(
        dir: PathBuf,
        witness: PublicKey,
        relay: String,
        registry: RegistryConfig,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut mirror = Mirror::new(witness, registry);
        let stopped = dir.join(STOPPED_FILE);
        let restored = match std::fs::read(&stopped) {
            Ok(bytes) => Some(
                serde_json::from_slice::<StoppedFile>(&bytes)
                    .with_context(|| format!("{} is not readable", stopped.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context(format!("cannot read {}", stopped.display())),
        };
        if let Ok(text) = std::fs::read_to_string(dir.join(EVENTS_FILE)) {
            // A line cut short by a crash is skipped: the relay has it.
            for event in text.lines().filter_map(|l| Event::from_json(l).ok()) {
                let _ = mirror.add(event);
            }
        }
        let handle = Self {
            witness,
            relay,
            dir,
            mirror: Mutex::new(mirror),
            health: Mutex::new(Health {
                connected: false,
                rejected: 0,
                last_error: None,
            }),
            io: Mutex::new(()),
        };
        if let Some(s) = restored {
            let split = s.split_view.as_ref().and_then(|e| {
                Some(SplitView {
                    epoch: e.epoch,
                    first: Event::from_json(e.first.to_string()).ok()?,
                    second: Event::from_json(e.second.to_string()).ok()?,
                })
            });
            let stop = match split {
                Some(split) => Stop::SplitView(Box::new(split)),
                None => Stop::Fault {
                    epoch: s.epoch,
                    reason: s.reason.clone(),
                },
            };
            tracing::error!(witness = %npub(&witness), reason = %s.reason,
                "identity mirror stays stopped ({} in its directory)", STOPPED_FILE);
            lock(&handle.mirror).restore_stop(stop);
        }
        Ok(handle)
    }

    /// The witness followed.
    pub fn witness(&self) -> PublicKey {
        self.witness
    }

    /// The relay it is followed on.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// The status.
    pub fn status(&self) -> MirrorStatus {
        let _io = lock(&self.io);
        let m = lock(&self.mirror);
        let h = lock(&self.health);
        MirrorStatus {
            witness: npub(&self.witness),
            relay: self.relay.clone(),
            state: if m.stopped().is_some() {
                "stopped"
            } else {
                "following"
            },
            connected: h.connected,
            verified_epochs: m.verified_epochs(),
            latest_seen_epoch: m.latest_seen_epoch(),
            log_size: m.log_size(),
            identities: m.identities(),
            rejected_events: h.rejected,
            last_error: h.last_error.clone(),
            stop_reason: m.stopped().map(ToString::to_string),
            evidence: match m.stopped() {
                Some(Stop::SplitView(s)) => Some(evidence(s)),
                _ => None,
            },
        }
    }

    fn note_error(&self, e: impl std::fmt::Display) {
        lock(&self.health).last_error = Some(e.to_string());
    }

    /// Takes `event`; appends it to the events file when new. Returns
    /// whether the mirror stopped because of it.
    fn take(&self, event: Event) -> bool {
        let _io = lock(&self.io);
        let json = event.as_json();
        let result = lock(&self.mirror).add(event);
        match result {
            Ok(true) => {
                if let Err(e) = self.append(&json) {
                    tracing::warn!(error = %e, "cannot persist a mirrored event");
                }
                self.persist_stop_locked()
            }
            Ok(false) => false,
            Err(Rejected::Stopped) => false,
            Err(e) => {
                let mut h = lock(&self.health);
                h.rejected += 1;
                h.last_error = Some(e.to_string());
                tracing::debug!(witness = %npub(&self.witness), error = %e, "mirrored event refused");
                false
            }
        }
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(EVENTS_FILE))?;
        f.write_all(format!("{line}\n").as_bytes())
    }

    /// Writes `stopped.json` (fsync'd) when the mirror stopped and it is
    /// not written yet, and logs it. Returns whether it is stopped.
    fn persist_stop_if_any(&self) -> bool {
        let _io = lock(&self.io);
        self.persist_stop_locked()
    }

    /// [`Self::persist_stop_if_any`] with `io` held by the caller.
    fn persist_stop_locked(&self) -> bool {
        let stop = lock(&self.mirror).stopped().cloned();
        let Some(stop) = stop else {
            return false;
        };
        let path = self.dir.join(STOPPED_FILE);
        if path.exists() {
            return true;
        }
        let file = StoppedFile {
            reason: stop.to_string(),
            epoch: match &stop {
                Stop::SplitView(s) => s.epoch,
                Stop::Fault { epoch, .. } => *epoch,
            },
            split_view: match &stop {
                Stop::SplitView(s) => Some(evidence(s)),
                Stop::Fault { .. } => None,
            },
        };
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        if let Err(e) = write() {
            tracing::error!(error = %e, path = %path.display(), "cannot persist the mirror's evidence");
        }
        tracing::error!(witness = %npub(&self.witness), relay = %self.relay, reason = %file.reason,
            evidence = %path.display(), "identity mirror stopped following this witness");
        true
    }

    /// Verifies every epoch that is ready, looking its anchor up on `rpc`.
    async fn advance(&self, rpc: &RpcClient) {
        loop {
            let Some(query) = lock(&self.mirror).wanted() else {
                return;
            };
            let found = {
                let rpc = rpc.clone();
                let q = query.clone();
                rpc.run(move |c| find_anchor(c, &q)).await
            };
            match found {
                Ok(Some(sighting)) => {
                    let io = lock(&self.io);
                    let result = lock(&self.mirror).verify_epoch(query.epoch, sighting);
                    let stopped = result.is_err() && self.persist_stop_locked();
                    drop(io);
                    match result {
                        Ok(()) => tracing::info!(witness = %npub(&self.witness),
                            epoch = query.epoch, "mirrored identity epoch verified"),
                        Err(e) => {
                            self.note_error(&e);
                            if !stopped {
                                tracing::warn!(witness = %npub(&self.witness), error = %e,
                                    "mirrored epoch not verified");
                            }
                            return;
                        }
                    }
                }
                // Not in a block yet: the next block or event tries again.
                Ok(None) => return,
                Err(e) => {
                    self.note_error(format!("Bitcoin node: {e}"));
                    return;
                }
            }
        }
    }

    /// The verified record of `subject` and its bundle.
    pub fn lookup(
        &self,
        subject: &Subject,
    ) -> Option<(MirroredIdentity, Option<serde_json::Value>)> {
        let m = lock(&self.mirror);
        let found = match subject {
            Subject::Handle(h) => m.lookup_handle(h),
            Subject::Key(k) => m.lookup_key(k),
        }?;
        let bundle = m
            .bundle(found.identity.x_uid)
            .and_then(|b| serde_json::to_value(&b).ok());
        Some((found, bundle))
    }
}

fn evidence(s: &SplitView) -> Evidence {
    let value = |e: &Event| serde_json::from_str(&e.as_json()).unwrap_or_default();
    Evidence {
        epoch: s.epoch,
        first: value(&s.first),
        second: value(&s.second),
    }
}

/// What a lookup is about.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A handle, lowercase.
    Handle(String),
    /// A key.
    Key(PublicKey),
}

/// Every configured mirror, and the Bitcoin node they check anchors on.
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    handles: Vec<Arc<MirrorHandle>>,
    /// Confirmations after which a mirrored binding is `final`.
    pub confirmations: u32,
    rpc: Option<RpcConfig>,
}

impl Mirrors {
    /// Whether no mirror is configured.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The mirrors.
    pub fn handles(&self) -> &[Arc<MirrorHandle>] {
        &self.handles
    }

    /// The first mirror with a verified record of `subject`.
    pub fn lookup(
        &self,
        subject: &Subject,
        witness: Option<&PublicKey>,
    ) -> Option<(
        Arc<MirrorHandle>,
        MirroredIdentity,
        Option<serde_json::Value>,
    )> {
        self.handles
            .iter()
            .filter(|h| witness.is_none_or(|w| *w == h.witness))
            .find_map(|h| {
                let (found, bundle) = h.lookup(subject)?;
                Some((Arc::clone(h), found, bundle))
            })
    }

    /// This node's chain tip, for confirmations.
    pub async fn tip_height(&self) -> Option<u32> {
        let rpc = RpcClient::new(self.rpc.as_ref()?).ok()?;
        rpc.run(|c| c.tip_height()).await.ok()
    }
}

/// Opens every `[[identity.mirror]]` and spawns its task.
pub fn spawn_all(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Mirrors, Vec<JoinHandle<()>>)> {
    let id = &settings.identity;
    if id.mirror.is_empty() {
        return Ok((Mirrors::default(), Vec::new()));
    }
    let mut rpc = RpcConfig::new(
        &settings.bitcoin.rpc_url,
        &settings.bitcoin.rpc_user,
        &settings.bitcoin.rpc_password,
    );
    rpc.timeout = Duration::from_secs(10);
    let client = RpcClient::new(&rpc).context("identity.mirror: the [bitcoin] RPC settings")?;
    let mut handles = Vec::new();
    let mut jobs = Vec::new();
    for m in &id.mirror {
        let witness = m.witness_key()?;
        let url = RelayUrl::parse(&m.relay)
            .with_context(|| format!("identity.mirror: relay {:?} is not a relay URL", m.relay))?;
        anyhow::ensure!(
            !handles
                .iter()
                .any(|h: &Arc<MirrorHandle>| h.witness == witness),
            "identity.mirror: witness {} is listed twice",
            m.witness
        );
        let dir = mirror_dir(&settings.data_dir, &witness);
        let handle = Arc::new(MirrorHandle::open(
            dir,
            witness,
            m.relay.clone(),
            RegistryConfig {
                recovery_delay_blocks: m.recovery_delay_blocks,
            },
        )?);
        tracing::info!(witness = %npub(&witness), relay = %m.relay, "mirroring an identity witness");
        jobs.push(tokio::spawn(follow(
            Arc::clone(&handle),
            url,
            client.clone(),
            Duration::from_secs(id.mirror_recheck_secs.max(1)),
            shutdown.clone(),
        )));
        handles.push(handle);
    }
    Ok((
        Mirrors {
            handles,
            confirmations: id.confirmations.max(1),
            rpc: Some(rpc),
        },
        jobs,
    ))
}

/// Follows one witness until shutdown or until the mirror stops.
async fn follow(
    handle: Arc<MirrorHandle>,
    url: RelayUrl,
    rpc: RpcClient,
    recheck: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    // Persisted events may already make epochs verifiable.
    handle.advance(&rpc).await;
    loop {
        if handle.persist_stop_if_any() {
            return;
        }
        // A fresh key: the subscription reads public kinds only.
        let link = WebSocketLink::new(url.clone(), Keys::generate());
        let filter = Filter::new().kinds(MIRRORED_KINDS.iter().map(|k| Kind::Custom(*k)));
        let run = async {
            let mut events = link.subscribe(filter).await?;
            lock(&handle.health).connected = true;
            subscribed(&handle, &mut *events, &rpc, recheck).await
        };
        let ended = tokio::select! {
            _ = shutdown.cancelled() => None,
            ended = run => Some(ended),
        };
        lock(&handle.health).connected = false;
        link.close().await;
        let Some(ended) = ended else {
            return;
        };
        match ended {
            Ok(()) => return,
            Err(e) => {
                handle.note_error(format!("relay {url}: {e}"));
                tracing::warn!(witness = %npub(&handle.witness), relay = %url, error = %e,
                    "identity mirror lost its relay; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Takes events as they come and re-checks waiting anchors every
/// `recheck`. `Ok(())` once the mirror stopped.
async fn subscribed(
    handle: &MirrorHandle,
    events: &mut dyn RelayEvents,
    rpc: &RpcClient,
    recheck: Duration,
) -> Result<(), RelayLinkError> {
    let mut ticks = tokio::time::interval(recheck);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = events.next() => match next {
                Ok(event) => {
                    let kind = event.kind.as_u16();
                    if handle.take(event) {
                        return Ok(());
                    }
                    // Headers and segments are what complete an epoch.
                    if kind == cairn_identity::kinds::EPOCH_HEADER
                        || kind == cairn_identity::kinds::LOG_SEGMENT
                    {
                        handle.advance(rpc).await;
                    }
                }
                Err(RelayLinkError::Lagged(n)) => {
                    handle.note_error(format!("fell behind the relay: {n} events lost"));
                    return Err(RelayLinkError::Lagged(n));
                }
                Err(e) => return Err(e),
            },
            _ = ticks.tick() => handle.advance(rpc).await,
        }
        if handle.persist_stop_if_any() {
            return Ok(());
        }
    }
}

/// Looks for one of `query.txids` in a block of this node's active chain,
/// from a little before the epoch's close time to the tip.
pub fn find_anchor(
    rpc: &RpcClient,
    query: &AnchorQuery,
) -> Result<Option<AnchorSighting>, ChainError> {
    let tip = rpc.tip_height()?;
    let start = first_height_after(rpc, tip, query.closed_at.saturating_sub(SEARCH_SLACK_SECS))?;
    for txid in &query.txids {
        if rpc.in_mempool(txid)? {
            continue;
        }
        let end = tip.min(start.saturating_add(MAX_SCAN_BLOCKS));
        for height in start..=end {
            let Some(hash) = rpc.block_hash(height)? else {
                break;
            };
            if let Some(s) = sighting_in(rpc, txid, hash, height)? {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

fn sighting_in(
    rpc: &RpcClient,
    txid: &Txid,
    hash: BlockHash,
    height: u32,
) -> Result<Option<AnchorSighting>, ChainError> {
    let tx = match rpc.transaction(txid, Some(&hash)) {
        Ok(tx) => tx,
        Err(ChainError::Rpc { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let proof = rpc.tx_out_proof(txid, &hash)?;
    let merkle_block =
        deserialize(&proof).map_err(|e| ChainError::Other(format!("gettxoutproof: {e}")))?;
    Ok(Some(AnchorSighting {
        tx,
        height,
        block_hash: hash,
        merkle_block,
    }))
}

/// The lowest height whose block time is at or after `time` (binary search;
/// block times are nearly in order, and the search only picks where to start).
fn first_height_after(rpc: &RpcClient, tip: u32, time: u64) -> Result<u32, ChainError> {
    let (mut lo, mut hi) = (0u32, tip);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let hash = rpc
            .block_hash(mid)?
            .ok_or_else(|| ChainError::Other(format!("no block at height {mid}")))?;
        if u64::from(rpc.header(&hash)?.time) < time {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The directory a mirror of `witness` keeps its files in.
pub fn mirror_dir(data_dir: &Path, witness: &PublicKey) -> PathBuf {
    data_dir.join("mirror").join(witness.to_hex())
}
