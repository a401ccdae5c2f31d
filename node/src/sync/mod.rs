//! NIP-77 (negentropy) reconciliation of this node's store with another
//! relay, and the transfer of the difference: what `cairn sync` runs once
//! and what [`scheduled`] runs inside `cairn serve` from `[[sync]]`.
//!
//! How it works, and why:
//!
//! - **This node's side is read from its database, not through its relay's
//!   WebSocket.** A negentropy initiator needs its own set of
//!   `(created_at, id)`; a NIP-77 relay only answers, so two relays cannot be
//!   reconciled by a client holding neither set, and a REQ for a whole set is
//!   capped by `max_limit`. The set is listed with the same
//!   [`cairn_relay::store::Store::sync_items`] the relay answers NEG-OPEN
//!   with.
//! - **The remote relay is the NIP-77 server**, reached with rust-nostr's
//!   relay client (TLS, NIP-42 AUTH as [`SyncRequest::keys`], answered
//!   before the reconciliation starts). Without a key nothing is
//!   authenticated.
//! - **Both sides see the same set.** The local set applies the relay's
//!   privacy rule for the same pubkey the remote sees (the key's, or nobody
//!   without one): gift wraps and kind 4 are reconciled only for that key,
//!   so the remote's hidden events are not mistaken for ours-only.
//! - **Pulled events enter through the relay engine's ingest path**
//!   ([`Relay::publish`]: the checks of a client's EVENT, the signature
//!   check, the group-commit writer; `OK` means durably stored), not raw
//!   inserts; inside `cairn serve` they are fanned out to its subscribers
//!   like any published event.
//! - **Pushed events go out as EVENTs**, at most [`PUSH_IN_FLIGHT`] in
//!   flight, each waiting for its OK; `rate-limited:` answers are retried
//!   with backoff.
//! - **Every wait is bounded** by [`SyncRequest::reply_timeout`] (one
//!   reply); a caller bounds a whole run with its own timeout (the
//!   scheduled syncs do).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_relay::store::{QueryBudget, QueryContext, StoreError, SyncItem};
use cairn_relay::Relay;
use futures::StreamExt;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::{Event, EventId, Filter, JsonUtil, Keys, RelayMessage, SubscriptionId, Timestamp};
use nostr_sdk::prelude::{ClientMessage, RelayNotification, RelayStatus, ReqExitPolicy};
use nostr_sdk::Client;
use tokio::sync::broadcast::{error::RecvError, Receiver};

pub mod scheduled;

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

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// This node's store failed.
    #[error("this node's store: {0}")]
    Store(#[from] StoreError),
    /// The relay URL is not one the client takes.
    #[error("bad relay URL {url}: {reason}")]
    RelayUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The remote relay could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The remote relay refused, failed or did not answer in time.
    #[error("{0}")]
    Remote(String),
    /// The negentropy engine failed (a malformed message, the set).
    #[error("negentropy: {0}")]
    Negentropy(String),
}

fn neg(e: negentropy::Error) -> SyncError {
    SyncError::Negentropy(e.to_string())
}

/// Which way events travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Fetch what the remote has and this node lacks.
    Pull,
    /// Send what this node has and the remote lacks.
    Push,
    /// Both.
    Both,
}

impl Direction {
    /// Whether events are fetched.
    pub fn pulls(self) -> bool {
        matches!(self, Self::Pull | Self::Both)
    }

    /// Whether events are sent.
    pub fn pushes(self) -> bool {
        matches!(self, Self::Push | Self::Both)
    }

    /// `pull`, `push` or `both`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
            Self::Both => "both",
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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

/// Reconcile `local`'s store with the remote relay and transfer the
/// difference as `request` says; `progress` gets one line per step.
pub async fn sync(
    local: &Arc<Relay>,
    request: &SyncRequest,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<SyncReport, SyncError> {
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
        .await?;
    let mut report = SyncReport {
        local: items.len(),
        ..SyncReport::default()
    };
    progress(&format!("{} local events match the filter", items.len()));

    let client = match &request.keys {
        Some(keys) => Client::builder().signer(keys.clone()).build(),
        // Without a key, answering a relay's AUTH challenge can only fail,
        // and nostr-sdk then ends the request in flight: read anonymously.
        None => Client::builder()
            .opts(nostr_sdk::ClientOptions::new().automatic_authentication(false))
            .build(),
    };
    let result = sync_with(&client, local, request, &ctx, items, &mut report, progress).await;
    client.shutdown().await;
    result.map(|()| report)
}

async fn sync_with(
    client: &Client,
    local: &Arc<Relay>,
    request: &SyncRequest,
    ctx: &QueryContext,
    items: Vec<SyncItem>,
    report: &mut SyncReport,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), SyncError> {
    let bad_url = |e: &dyn std::fmt::Display| SyncError::RelayUrl {
        url: request.relay_url.clone(),
        reason: e.to_string(),
    };
    client
        .add_relay(&request.relay_url)
        .await
        .map_err(|e| bad_url(&e))?;
    let remote = client
        .relay(&request.relay_url)
        .await
        .map_err(|e| bad_url(&e))?;
    let mut notifications = remote.notifications();
    remote
        .try_connect(request.reply_timeout)
        .await
        .map_err(|e| SyncError::Connect {
            url: request.relay_url.clone(),
            reason: e.to_string(),
        })?;
    if request.keys.is_some() {
        wait_for_auth(&mut notifications).await?;
    }

    let (have, need) = reconcile(
        &remote,
        &mut notifications,
        request,
        items,
        report,
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
                .map_err(|e| {
                    SyncError::Remote(format!("cannot fetch events from the remote relay: {e}"))
                })?;
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
                .query(&filter, ctx)
                .await?
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
    Ok(())
}

/// Wait until the remote has asked for AUTH and confirmed ours; a relay
/// that asks for nothing within [`AUTH_WAIT`] is synced without.
async fn wait_for_auth(notifications: &mut Receiver<RelayNotification>) -> Result<(), SyncError> {
    let fail = |s: &str| Err(SyncError::Remote(s.to_owned()));
    let mut deadline = Instant::now() + AUTH_WAIT;
    let mut asked = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, notifications.recv()).await {
            Err(_) if asked => return fail("the remote relay did not confirm AUTH"),
            Err(_) => return Ok(()),
            Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(_)) => return fail("the connection to the remote relay closed"),
            Ok(Ok(RelayNotification::Authenticated)) => return Ok(()),
            Ok(Ok(RelayNotification::AuthenticationFailed)) => {
                return fail("the remote relay refused AUTH")
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
    notifications: &mut Receiver<RelayNotification>,
    request: &SyncRequest,
    items: Vec<SyncItem>,
    report: &mut SyncReport,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(Vec<EventId>, Vec<EventId>), SyncError> {
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for item in &items {
        storage
            .insert(item.created_at, Id::from_byte_array(item.id))
            .map_err(neg)?;
    }
    drop(items);
    storage.seal().map_err(neg)?;
    let mut engine = Negentropy::owned(storage, FRAME_SIZE_LIMIT).map_err(neg)?;
    let initial = hex::encode(engine.initiate().map_err(neg)?);
    let sub_id = SubscriptionId::generate();
    report.bytes += initial.len();
    let send = |msg: ClientMessage<'_>| {
        remote
            .send_msg(msg)
            .map_err(|e| SyncError::Remote(format!("cannot send to the remote relay: {e}")))
    };
    send(ClientMessage::NegOpen {
        subscription_id: Cow::Borrowed(&sub_id),
        filter: Cow::Borrowed(&request.filter),
        id_size: None,
        initial_message: Cow::Owned(initial),
    })?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        let message = next_neg_message(notifications, &sub_id, request.reply_timeout).await?;
        report.bytes += message.len();
        report.rounds += 1;
        let bytes = hex::decode(&message).map_err(|_| {
            SyncError::Remote("the remote sent a NEG-MSG that is not hex".to_owned())
        })?;
        let next = engine
            .reconcile_with_ids(&bytes, &mut have, &mut need)
            .map_err(neg)?;
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
        send(ClientMessage::NegMsg {
            subscription_id: Cow::Borrowed(&sub_id),
            message: Cow::Owned(next),
        })?;
    }
    send(ClientMessage::NegClose {
        subscription_id: Cow::Borrowed(&sub_id),
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
    notifications: &mut Receiver<RelayNotification>,
    sub_id: &SubscriptionId,
    timeout: Duration,
) -> Result<String, SyncError> {
    let fail = |s: String| Err(SyncError::Remote(s));
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let notification = match tokio::time::timeout(left, notifications.recv()).await {
            Err(_) => {
                return fail(format!(
                    "the remote relay did not answer within {timeout:?}"
                ))
            }
            Ok(Err(RecvError::Lagged(n))) => {
                return fail(format!("fell {n} messages behind the remote relay"))
            }
            Ok(Err(_)) => return fail("the connection to the remote relay closed".to_owned()),
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
                return fail(format!(
                    "the remote relay refused the reconciliation: {message}"
                ))
            }
            RelayNotification::Message {
                message: RelayMessage::Notice(notice),
            } => tracing::info!(%notice, "NOTICE from the remote relay"),
            RelayNotification::RelayStatus {
                status: RelayStatus::Disconnected | RelayStatus::Terminated | RelayStatus::Banned,
            } => return fail("the remote relay disconnected".to_owned()),
            RelayNotification::Shutdown => return fail("the relay client shut down".to_owned()),
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
