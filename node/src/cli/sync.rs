//! `cairn sync --relay ws(s)://… [--filter JSON] [--pull|--push|--both]`:
//! reconcile this node's events with another relay over NIP-77 (negentropy)
//! and transfer the difference.
//!
//! How it works, and why:
//!
//! - **This node's side is read from its database, not through its relay's
//!   WebSocket.** A negentropy initiator needs its own set of
//!   `(created_at, id)`; a NIP-77 relay only answers, so two relays cannot be
//!   reconciled by a client holding neither set, and a REQ for a whole set is
//!   capped by `max_limit`. The command opens the node's event database
//!   (`--config`/`--data-dir`/`--database-url`, as `cairn serve` does; the
//!   node may be serving meanwhile: SQLite in WAL mode and Postgres both take
//!   a second process) and lists the set with the same
//!   [`cairn_relay::store::Store::sync_items`] the relay answers NEG-OPEN with.
//! - **The remote relay is the NIP-77 server**, reached with rust-nostr's
//!   relay client (TLS, NIP-42 AUTH as the key given with `--key-file` or
//!   `CAIRN_NSEC`, answered before the reconciliation starts). Without a key
//!   the command does not authenticate.
//! - **Both sides see the same set.** The local set applies the relay's
//!   privacy rule for the same pubkey the remote sees (the key's, or nobody
//!   without one): gift wraps and kind 4 are reconciled only for that key,
//!   so the remote's hidden events are not mistaken for ours-only.
//! - **Pulled events enter through the relay engine's ingest path**
//!   ([`Relay::publish`]: the checks of a client's EVENT, the signature
//!   check, the group-commit writer; `OK` means durably stored), not raw
//!   inserts. On SQLite, live subscribers of a `cairn serve` running on the
//!   same database do not see them as they arrive (they are stored, not
//!   fanned out by that process; they see them on their next REQ); on
//!   Postgres this command's `Relay` NOTIFYs like any node, so the serving
//!   process fans them out (docs/scale-out.md). On SQLite this command is
//!   a second writer process on the node's database file: each write waits
//!   up to the busy timeout (5 s) for the other's transaction, and a
//!   pulled event whose write still finds the file locked counts as failed
//!   (exit status 2; run again).
//! - **Pushed events go out as EVENTs**, a bounded number in flight, each
//!   waiting for its OK; `rate-limited:` answers are retried with backoff.
//!
//! Progress goes to stderr, the summary to stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cairn_relay::store::{QueryBudget, QueryContext};
use cairn_relay::Relay;
use futures::StreamExt;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::{Event, EventId, Filter, JsonUtil, Keys, RelayMessage, SubscriptionId, Timestamp};
use nostr_sdk::prelude::{ClientMessage, RelayNotification, RelayStatus, ReqExitPolicy};
use nostr_sdk::Client;

use crate::cli::support::keys::{load_keys, KeyArgs, NSEC_ENV};
use crate::cli::support::output::outln;
use crate::settings::Settings;

/// Largest negentropy message this side sends, before hex encoding: what
/// rust-nostr uses, so that a hex-encoded message stays under 128 KiB.
pub const FRAME_SIZE_LIMIT: u64 = 60_000;
/// Ids asked for in one REQ while pulling (within any relay's `max_limit`
/// this side has seen: Cairn's is 500).
pub const PULL_BATCH: usize = 200;
/// EVENTs waiting for their OK at once while pushing.
pub const PUSH_IN_FLIGHT: usize = 16;
/// How long one reply (NEG-MSG, a REQ's EOSE, an OK, the connection) may take.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the remote may take to ask for and confirm AUTH.
const AUTH_WAIT: Duration = Duration::from_secs(5);
/// Tries of one EVENT answered `rate-limited:`.
const PUSH_TRIES: u32 = 8;

/// Which way events travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Fetch what the remote has and this node lacks.
    Pull,
    /// Send what this node has and the remote lacks.
    Push,
    /// Both.
    Both,
}

impl Direction {
    fn pulls(self) -> bool {
        matches!(self, Self::Pull | Self::Both)
    }

    fn pushes(self) -> bool {
        matches!(self, Self::Push | Self::Both)
    }
}

/// `cairn sync …`
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The relay to reconcile with (ws:// or wss://).
    #[arg(long)]
    pub relay: String,
    /// NIP-01 filter (JSON) selecting the events to reconcile; default: all.
    #[arg(long, default_value = "{}")]
    pub filter: String,
    /// Only fetch the remote's events this node lacks.
    #[arg(long, conflicts_with_all = ["push", "both"])]
    pub pull: bool,
    /// Only send this node's events the remote lacks.
    #[arg(long, conflicts_with = "both")]
    pub push: bool,
    /// Both ways (the default).
    #[arg(long)]
    pub both: bool,
    /// The node's TOML config file (default: ./cairn.toml if it exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The node's data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The node's database (default: from its settings).
    #[arg(long)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Events of this node in the reconciled set.
    pub local: usize,
    /// Ids only the remote has.
    pub remote_only: usize,
    /// Ids only this node has.
    pub local_only: usize,
    /// Events fetched and stored (or already stored meanwhile).
    pub pulled: usize,
    /// Events fetched but refused by this node, or not sent by the remote.
    pub pull_failed: usize,
    /// Events the remote accepted.
    pub pushed: usize,
    /// Events the remote refused (or did not answer).
    pub push_failed: usize,
    /// NEG-MSG round trips.
    pub rounds: usize,
    /// Bytes of negentropy messages exchanged (hex, both directions).
    pub bytes: usize,
}

/// What to sync, and how.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The remote relay.
    pub relay_url: String,
    /// The events to reconcile.
    pub filter: Filter,
    /// Which way.
    pub direction: Direction,
    /// AUTH (NIP-42) as this key; also whose private events are reconciled.
    pub keys: Option<Keys>,
    /// Most records the local set may hold.
    pub max_records: usize,
    /// See [`DEFAULT_REPLY_TIMEOUT`].
    pub reply_timeout: Duration,
}

/// `cairn sync`: parse the arguments, open the node's database, sync, and
/// print the summary.
pub async fn run_sync(args: SyncArgs) -> Result<()> {
    let mut settings = Settings::load(args.config.as_deref())
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    if let Some(dir) = &args.data_dir {
        settings.data_dir = dir.clone();
    }
    if let Some(url) = &args.database_url {
        settings.database_url = Some(url.clone());
    }
    let filter = Filter::from_json(&args.filter).context("--filter is not a NIP-01 filter")?;
    let direction = match (args.pull, args.push) {
        (true, _) => Direction::Pull,
        (_, true) => Direction::Push,
        _ => Direction::Both,
    };
    let keys = if args.keys.key_file.is_some() || std::env::var_os(NSEC_ENV).is_some() {
        Some(load_keys(args.keys.key_file.as_deref())?)
    } else {
        None
    };
    let request = SyncRequest {
        relay_url: args.relay.clone(),
        filter,
        direction,
        keys,
        max_records: settings.relay.negentropy.max_records,
        reply_timeout: DEFAULT_REPLY_TIMEOUT,
    };
    let store = cairn_relay::store::open(&settings.database_url())
        .await
        .context("cannot open the node's database")?;
    let public_url = settings
        .relay
        .public_url
        .clone()
        .unwrap_or_else(|| format!("ws://{}", settings.bind));
    let (relay, writer) = Relay::new(settings.relay.clone(), &public_url, Arc::clone(&store));
    let result = sync(&relay, &request, &mut |line| eprintln!("sync: {line}")).await;
    // The writer commits what is queued once the last handle is gone.
    drop(relay);
    let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
    store.close().await;
    let report = result?;
    outln!("{}", render_report(&request, &report))?;
    if report.pull_failed > 0 || report.push_failed > 0 {
        bail!(
            "{} events could not be pulled and {} not pushed",
            report.pull_failed,
            report.push_failed
        );
    }
    Ok(())
}

/// The summary printed on stdout.
pub fn render_report(request: &SyncRequest, report: &SyncReport) -> String {
    format!(
        "relay        {}\n\
         local        {} events in the set\n\
         remote only  {} (pulled {}, failed {})\n\
         local only   {} (pushed {}, failed {})\n\
         exchange     {} rounds, {} bytes",
        request.relay_url,
        report.local,
        report.remote_only,
        report.pulled,
        report.pull_failed,
        report.local_only,
        report.pushed,
        report.push_failed,
        report.rounds,
        report.bytes,
    )
}

/// Reconcile `local`'s store with the remote relay and transfer the
/// difference as `request` says; `progress` gets one line per step.
pub async fn sync(
    local: &Arc<Relay>,
    request: &SyncRequest,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<SyncReport> {
    let ctx = QueryContext {
        viewers: request.keys.iter().map(Keys::public_key).collect(),
        now: Timestamp::now().as_secs(),
        max_limit: PULL_BATCH,
    };
    let items = local
        .store()
        .sync_items(
            &request.filter,
            &ctx,
            QueryBudget::default(),
            request.max_records,
        )
        .await
        .context("cannot list this node's events")?;
    let mut report = SyncReport {
        local: items.len(),
        ..SyncReport::default()
    };
    progress(&format!("{} local events match the filter", items.len()));

    let client = match &request.keys {
        Some(keys) => Client::builder().signer(keys.clone()).build(),
        None => Client::default(),
    };
    client
        .add_relay(&request.relay_url)
        .await
        .with_context(|| format!("bad relay URL {}", request.relay_url))?;
    let remote = client.relay(&request.relay_url).await?;
    let mut notifications = remote.notifications();
    remote
        .try_connect(request.reply_timeout)
        .await
        .with_context(|| format!("cannot connect to {}", request.relay_url))?;
    if request.keys.is_some() {
        wait_for_auth(&mut notifications).await?;
    }

    let (have, need) = reconcile(
        &remote,
        &mut notifications,
        request,
        items,
        &mut report,
        progress,
    )
    .await?;
    report.local_only = have.len();
    report.remote_only = need.len();
    progress(&format!(
        "reconciled in {} rounds: {} only here, {} only there",
        report.rounds,
        have.len(),
        need.len()
    ));

    if request.direction.pulls() {
        for (i, chunk) in need.chunks(PULL_BATCH).enumerate() {
            let filter = Filter::new().ids(chunk.iter().copied());
            let events = remote
                .fetch_events(filter, request.reply_timeout, ReqExitPolicy::ExitOnEOSE)
                .await
                .context("cannot fetch events from the remote relay")?;
            let mut got = 0;
            for event in events {
                got += 1;
                match local.publish(event).await {
                    Ok(_) => report.pulled += 1,
                    Err(refused) => {
                        tracing::warn!(%refused, "a pulled event was refused");
                        report.pull_failed += 1;
                    }
                }
            }
            report.pull_failed += chunk.len().saturating_sub(got);
            progress(&format!(
                "pulled {} of {}",
                (i * PULL_BATCH + chunk.len()).min(need.len()),
                need.len()
            ));
        }
    }
    if request.direction.pushes() {
        let store = Arc::clone(local.store());
        let mut done = 0;
        for chunk in have.chunks(PULL_BATCH) {
            let filter = Filter::new().ids(chunk.iter().copied());
            let events: Vec<Event> = store
                .query(&filter, &ctx)
                .await
                .context("cannot read this node's events")?
                .into_iter()
                .filter_map(|stored| Event::from_json(&stored.json).ok())
                .collect();
            report.push_failed += chunk.len().saturating_sub(events.len());
            let results: Vec<bool> = futures::stream::iter(events)
                .map(|event| {
                    let remote = remote.clone();
                    async move { push_one(&remote, &event).await }
                })
                .buffer_unordered(PUSH_IN_FLIGHT)
                .collect()
                .await;
            for accepted in results {
                if accepted {
                    report.pushed += 1;
                } else {
                    report.push_failed += 1;
                }
            }
            done += chunk.len();
            progress(&format!("pushed {done} of {}", have.len()));
        }
    }
    client.disconnect().await;
    Ok(report)
}

/// Wait until the remote has asked for AUTH and confirmed ours; a relay
/// that asks for nothing within [`AUTH_WAIT`] is synced without.
async fn wait_for_auth(
    notifications: &mut tokio::sync::broadcast::Receiver<RelayNotification>,
) -> Result<()> {
    let mut deadline = Instant::now() + AUTH_WAIT;
    let mut asked = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, notifications.recv()).await {
            Err(_) if asked => bail!("the remote relay did not confirm AUTH"),
            Err(_) => return Ok(()),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) => bail!("the connection to the remote relay closed"),
            Ok(Ok(RelayNotification::Authenticated)) => return Ok(()),
            Ok(Ok(RelayNotification::AuthenticationFailed)) => {
                bail!("the remote relay refused AUTH")
            }
            Ok(Ok(RelayNotification::Message {
                message: RelayMessage::Auth { .. },
            })) => {
                asked = true;
                // Signing and the round trip: give it the full wait again.
                deadline = Instant::now() + AUTH_WAIT;
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// The NIP-77 exchange: this node initiates, the remote answers. Returns
/// the ids only this node has and those only the remote has.
async fn reconcile(
    remote: &nostr_sdk::Relay,
    notifications: &mut tokio::sync::broadcast::Receiver<RelayNotification>,
    request: &SyncRequest,
    items: Vec<cairn_relay::store::SyncItem>,
    report: &mut SyncReport,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(Vec<EventId>, Vec<EventId>)> {
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for item in &items {
        storage
            .insert(item.created_at, Id::from_byte_array(item.id))
            .map_err(|e| anyhow!("negentropy: {e}"))?;
    }
    drop(items);
    storage.seal().map_err(|e| anyhow!("negentropy: {e}"))?;
    let mut engine =
        Negentropy::owned(storage, FRAME_SIZE_LIMIT).map_err(|e| anyhow!("negentropy: {e}"))?;
    let initial = hex::encode(engine.initiate().map_err(|e| anyhow!("negentropy: {e}"))?);
    let sub_id = SubscriptionId::generate();
    report.bytes += initial.len();
    remote.send_msg(ClientMessage::NegOpen {
        subscription_id: std::borrow::Cow::Borrowed(&sub_id),
        filter: std::borrow::Cow::Borrowed(&request.filter),
        id_size: None,
        initial_message: std::borrow::Cow::Owned(initial),
    })?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        let message = next_neg_message(notifications, &sub_id, request.reply_timeout).await?;
        report.bytes += message.len();
        report.rounds += 1;
        let bytes = hex::decode(&message).context("the remote sent a NEG-MSG that is not hex")?;
        let next = engine
            .reconcile_with_ids(&bytes, &mut have, &mut need)
            .map_err(|e| anyhow!("negentropy: {e}"))?;
        let Some(next) = next else { break };
        if report.rounds % 10 == 0 {
            progress(&format!(
                "round {}: {} only here, {} only there so far",
                report.rounds,
                have.len(),
                need.len()
            ));
        }
        let next = hex::encode(next);
        report.bytes += next.len();
        remote.send_msg(ClientMessage::NegMsg {
            subscription_id: std::borrow::Cow::Borrowed(&sub_id),
            message: std::borrow::Cow::Owned(next),
        })?;
    }
    remote.send_msg(ClientMessage::NegClose {
        subscription_id: std::borrow::Cow::Borrowed(&sub_id),
    })?;
    let ids = |ids: Vec<Id>| {
        ids.into_iter()
            .map(|id| EventId::from_byte_array(id.to_bytes()))
            .collect()
    };
    Ok((ids(have), ids(need)))
}

/// The next NEG-MSG of session `sub_id` (hex), or its NEG-ERR as an error.
async fn next_neg_message(
    notifications: &mut tokio::sync::broadcast::Receiver<RelayNotification>,
    sub_id: &SubscriptionId,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let notification = match tokio::time::timeout(left, notifications.recv()).await {
            Err(_) => bail!("the remote relay did not answer within {timeout:?}"),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                bail!("fell {n} messages behind the remote relay")
            }
            Ok(Err(_)) => bail!("the connection to the remote relay closed"),
            Ok(Ok(notification)) => notification,
        };
        match notification {
            RelayNotification::Message {
                message:
                    RelayMessage::NegMsg {
                        subscription_id,
                        message,
                    },
            } if *subscription_id == *sub_id => return Ok(message.into_owned()),
            RelayNotification::Message {
                message:
                    RelayMessage::NegErr {
                        subscription_id,
                        message,
                    },
            } if *subscription_id == *sub_id => {
                bail!("the remote relay refused the reconciliation: {message}")
            }
            RelayNotification::Message {
                message: RelayMessage::Notice(notice),
            } => tracing::info!(%notice, "NOTICE from the remote relay"),
            RelayNotification::RelayStatus {
                status: RelayStatus::Disconnected | RelayStatus::Terminated | RelayStatus::Banned,
            } => {
                bail!("the remote relay disconnected")
            }
            RelayNotification::Shutdown => bail!("the relay client shut down"),
            _ => {}
        }
    }
}

/// Send one event; `rate-limited:` answers are retried with backoff.
async fn push_one(remote: &nostr_sdk::Relay, event: &Event) -> bool {
    let mut wait = Duration::from_millis(250);
    for _ in 0..PUSH_TRIES {
        match remote.send_event(event).await {
            Ok(_) => return true,
            Err(err) if err.to_string().starts_with("rate-limited:") => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
            }
            Err(err) => {
                tracing::warn!(id = %event.id, error = %err, "the remote refused an event");
                return false;
            }
        }
    }
    false
}
