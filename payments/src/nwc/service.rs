//! The NWC service: relay I/O, request handling and notifications.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::Hash as _;
use ldk_node::lightning_invoice::Bolt11Invoice;
use ldk_node::payment::PaymentStatus;
use ldk_node::Event as LdkEvent;
use nostr::nips::nip44::Version;
use nostr::nips::nip47::{
    ErrorCode, GetBalanceResponse, GetInfoResponse, ListTransactionsRequest, LookupInvoiceRequest,
    LookupInvoiceResponse, MakeInvoiceRequest, MakeInvoiceResponse, Method, NIP47Error,
    NostrWalletConnectURI, PayInvoiceRequest, PayInvoiceResponse, Request, RequestParams,
    ResponseResult, TransactionState, TransactionType,
};
use nostr::nips::{nip04, nip44};
use nostr::{
    Event, EventBuilder, Filter, JsonUtil, Keys, Kind, PublicKey, RelayUrl, SecretKey, Tag,
    TagKind, Timestamp,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::store::{IssuedInvoice, NwcStore, RequestState};
use super::{
    max_routing_fee_msat, NewConnection, NwcConnection, NwcError, GET_BUDGET, SUPPORTED_METHODS,
    SUPPORTED_NOTIFICATIONS,
};
use crate::clock::now;
use crate::keyfile::KeyFileError;
use crate::lightning::{InvoiceDescription, DEFAULT_INVOICE_EXPIRY_SECS, DEFAULT_PAYMENT_TIMEOUT};
use crate::relay_link::{RelayLink, RelayLinkError};
use crate::wallet_backend::{BackendError, WalletBackend, WalletTx};

/// How often [`NwcService::start`] signs a later info event when the relay
/// already holds one as new as the last it signed (a restart within a second).
const INFO_EVENT_TRIES: u32 = 3;
/// File of the wallet-service secret key (hex), in the data directory.
pub const SERVICE_KEY_FILE_NAME: &str = "nwc_service.key";
/// File of the NWC database, in the data directory.
pub const STORE_FILE_NAME: &str = "nwc.sqlite";
/// Kind of NIP-44 notifications (nostr 0.44 names only the NIP-04 one, 23196).
const NOTIFICATION_KIND_NIP44: u16 = 23197;
/// How long handled request ids are kept for replay protection. Requests
/// whose `created_at` is older are refused as expired, so a pruned id can
/// never be executed again.
pub const REQUEST_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// How far in the future a request's `created_at` may be. Bounding it keeps
/// the retention argument sound: a request is pruned only once its
/// `created_at` is older than [`REQUEST_RETENTION`] for sure.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);
/// How often the service prunes handled request ids.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3_600);

/// Where the service keeps its files and which relay it uses.
#[derive(Debug, Clone)]
pub struct NwcServiceConfig {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The relay the service listens on, also written into connection URIs.
    pub relay_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encryption {
    Nip44,
    Nip04,
}

struct Inner<B> {
    keys: Keys,
    store: NwcStore,
    backend: Arc<B>,
    relay_url: RelayUrl,
    /// The relay at `relay_url`: in-process when it is the node's own.
    relay: Arc<dyn RelayLink>,
    /// Request ids this process is executing right now. A request the
    /// database marks in flight but that is not here was cut short by a
    /// restart: its replay resumes it instead of being ignored.
    active: Mutex<HashSet<String>>,
    /// Set once [`NwcService::start`] published the info event: changes to
    /// what it lists are published from then on.
    started: AtomicBool,
    /// `created_at` of the newest info event signed: a newer one must be
    /// later, or the relay keeps the older (a replaceable event with the
    /// same timestamp loses to the lower id).
    info_at: AtomicU64,
}

/// Removes a request id from [`Inner::active`] when its handler ends, also
/// when the handler is aborted (the service stopped mid-payment).
struct ActiveGuard<'a> {
    active: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The NIP-47 wallet service over a [`WalletBackend`].
pub struct NwcService<B: WalletBackend> {
    inner: Arc<Inner<B>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<B: WalletBackend> std::fmt::Debug for NwcService<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NwcService")
            .field("pubkey", &self.inner.keys.public_key())
            .field("relay", &self.inner.relay_url)
            .finish()
    }
}

fn load_or_create_key(path: &Path) -> Result<Keys, NwcError> {
    crate::keyfile::load_or_create_keys(path).map_err(|e| match e {
        KeyFileError::File(e) => NwcError::ServiceKeyFile(e),
        KeyFileError::Invalid(path) => NwcError::BadServiceKey(path),
    })
}

/// The wallet-service keys kept in `data_dir` (created on first use); a
/// link to a remote NWC relay authenticates (NIP-42) as them.
pub fn service_keys(data_dir: &Path) -> Result<Keys, NwcError> {
    load_or_create_key(&data_dir.join(SERVICE_KEY_FILE_NAME))
}

fn nip47_error(code: ErrorCode, message: impl Into<String>) -> NIP47Error {
    NIP47Error {
        code,
        message: message.into(),
    }
}

impl<B: WalletBackend> NwcService<B> {
    /// Opens the service's key and database under `config.data_dir` (creating
    /// them on first use); `relay` is the relay at `config.relay_url`.
    /// Nothing talks to the relay until [`Self::start`].
    pub fn open(
        config: &NwcServiceConfig,
        backend: Arc<B>,
        relay: Arc<dyn RelayLink>,
    ) -> Result<Self, NwcError> {
        let keys = service_keys(&config.data_dir)?;
        let store = NwcStore::open(&config.data_dir.join(STORE_FILE_NAME))?;
        let relay_url = RelayUrl::parse(&config.relay_url)
            .map_err(|_| NwcError::RelayUrl(config.relay_url.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys,
                store,
                backend,
                relay_url,
                relay,
                active: Mutex::new(HashSet::new()),
                started: AtomicBool::new(false),
                info_at: AtomicU64::new(0),
            }),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The wallet-service public key (the host part of every URI).
    pub fn service_pubkey(&self) -> PublicKey {
        self.inner.keys.public_key()
    }

    /// The database (connections, reservations, handled requests).
    pub fn store(&self) -> &NwcStore {
        &self.inner.store
    }

    /// Creates a connection with a fresh app key and returns it with its
    /// `nostr+walletconnect://` URI (which holds the app's secret: show it
    /// to the owner once, never log it). The secret is not stored: the URI
    /// cannot be shown again.
    pub fn create_connection(
        &self,
        new: NewConnection,
    ) -> Result<(NwcConnection, String), NwcError> {
        if let Some(bad) = new
            .permissions
            .iter()
            .find(|p| !SUPPORTED_METHODS.contains(&p.as_str()))
        {
            return Err(NwcError::UnknownMethod(bad.clone()));
        }
        let listed_before = self.inner.lists_get_budget();
        let app = Keys::generate();
        let conn = NwcConnection {
            id: 0,
            name: new.name,
            client_pubkey: app.public_key(),
            permissions: new.permissions,
            budget_msat: new.budget_msat,
            renewal: new.renewal,
            max_payment_msat: new.max_payment_msat,
            expires_at: new.expires_at,
            revoked: false,
            created_at: 0,
        };
        let conn = self.inner.store.insert_connection(&conn)?;
        let uri = self.uri(app.secret_key().clone());
        self.refresh_info(listed_before);
        Ok((conn, uri))
    }

    fn uri(&self, secret: SecretKey) -> String {
        NostrWalletConnectURI::new(
            self.service_pubkey(),
            vec![self.inner.relay_url.clone()],
            secret,
            None,
        )
        .to_string()
    }

    /// Every connection (without URIs: their secrets are not kept).
    pub fn list_connections(&self) -> Result<Vec<NwcConnection>, NwcError> {
        self.inner.store.list_connections()
    }

    /// Revokes connection `id`: its requests are refused with `UNAUTHORIZED`.
    pub fn revoke(&self, id: i64) -> Result<(), NwcError> {
        let listed_before = self.inner.lists_get_budget();
        if self.inner.store.revoke(id)? {
            self.refresh_info(listed_before);
            Ok(())
        } else {
            Err(NwcError::NoSuchConnection(id))
        }
    }

    /// Subscribes to requests addressed to the service, publishes the info
    /// event and starts answering.
    pub async fn start(&self) -> Result<(), NwcError> {
        let inner = &self.inner;
        // Before any request is handled: settle or release what an earlier
        // run left reserved, and forget request ids past the retention.
        inner.reconcile_reservations().await;
        inner.prune();
        // Subscribe before announcing the service, so that no request is missed.
        let filter = Filter::new()
            .kind(Kind::WalletConnectRequest)
            .pubkey(inner.keys.public_key());
        let mut requests = inner.relay.subscribe(filter).await?;
        // The info event is replaceable and a tie on `created_at` keeps the
        // stored one: a restart within the second of the last run's info
        // event is refused as a duplicate. `info_event` signs each new one a
        // second later than the one before, so a few tries get past it.
        let mut tries = 0;
        loop {
            match inner.relay.publish(self.info_event()?).await {
                Ok(()) => break,
                Err(RelayLinkError::Refused(reason))
                    if reason.starts_with("duplicate:") && tries < INFO_EVENT_TRIES =>
                {
                    tries += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        inner.started.store(true, Ordering::SeqCst);
        let me = Arc::clone(inner);
        let task = tokio::spawn(async move {
            // Request handlers live in this set, so stopping the service
            // (aborting this task) aborts them too instead of leaving them
            // running against a wallet that is shutting down.
            let mut handlers = JoinSet::new();
            loop {
                while handlers.try_join_next().is_some() {}
                match requests.next().await {
                    Ok(event) if event.kind == Kind::WalletConnectRequest => {
                        let me = Arc::clone(&me);
                        // One task per request: a slow payment must not hold
                        // up get_balance from another app.
                        handlers.spawn(async move {
                            // The link verified it (see `RelayLink`).
                            if let Some(resp) = me.handle_verified(&event).await {
                                if let Err(e) = me.relay.publish(resp).await {
                                    warn!(error = %e, "cannot publish an NWC response");
                                }
                            }
                        });
                    }
                    Ok(_) => {}
                    // The lost requests get no answer; their apps time out
                    // and may send them again (replays are safe).
                    Err(RelayLinkError::Lagged(n)) => {
                        warn!(skipped = n, "NWC request listener lagged")
                    }
                    Err(e) => {
                        warn!(error = %e, "NWC request subscription ended");
                        break;
                    }
                }
            }
        });
        let me = Arc::clone(inner);
        let pruner = tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_INTERVAL);
            every.tick().await;
            loop {
                every.tick().await;
                me.prune();
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([task, pruner]);
        info!(pubkey = %inner.keys.public_key(), relay = %inner.relay_url, "NWC service started");
        Ok(())
    }

    /// Sends `payment_received` / `payment_sent` notifications for the
    /// Lightning events arriving on `events` (from `LightningNode::subscribe`),
    /// and resolves budget reservations whose request handler stopped waiting
    /// for the outcome (settled on success, released on failure).
    pub fn spawn_notifications(&self, mut events: broadcast::Receiver<LdkEvent>) {
        let me = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            // Outcomes that arrived before `events` was subscribed (e.g.
            // right after the node restarted) are only in the payment record.
            me.reconcile_reservations().await;
            loop {
                let (kind, hash) = match events.recv().await {
                    Ok(LdkEvent::PaymentReceived { payment_hash, .. }) => {
                        ("payment_received", payment_hash)
                    }
                    Ok(LdkEvent::PaymentSuccessful {
                        payment_hash,
                        fee_paid_msat,
                        ..
                    }) => {
                        let hex_hash = hex::encode(payment_hash.0);
                        if let Err(e) = me
                            .store
                            .resolve_by_hash(&hex_hash, Some(fee_paid_msat.unwrap_or(0)))
                        {
                            warn!(error = %e, "cannot settle an NWC budget reservation");
                        }
                        ("payment_sent", payment_hash)
                    }
                    Ok(LdkEvent::PaymentFailed {
                        payment_hash: Some(payment_hash),
                        ..
                    }) => {
                        if let Err(e) = me.store.resolve_by_hash(&hex::encode(payment_hash.0), None)
                        {
                            warn!(error = %e, "cannot release an NWC budget reservation");
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // The missed events may have settled or failed
                        // payments whose handlers stopped waiting: resolve
                        // their reservations from the payment record now
                        // rather than leaving them held until a restart.
                        // (Their notifications are lost.)
                        warn!(skipped = n, "NWC notification listener lagged; reconciling");
                        me.reconcile_reservations().await;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if let Err(e) = me.notify(kind, &hex::encode(hash.0)).await {
                    warn!(error = %e, "cannot send an NWC notification");
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Handles one request event and returns the response event to publish
    /// (`None` when nothing must be sent: not a request for this service,
    /// expired, unreadable, or already being handled).
    pub async fn handle_request(&self, event: &Event) -> Option<Event> {
        self.inner.handle_request(event).await
    }

    /// The kind 13194 info event: the methods of [`SUPPORTED_METHODS`], and
    /// [`GET_BUDGET`] while an active connection has a budget.
    pub fn info_event(&self) -> Result<Event, NwcError> {
        self.inner.info_event()
    }

    /// Publishes the info event again (in the background) when creating or
    /// revoking a connection changed whether it lists [`GET_BUDGET`].
    fn refresh_info(&self, listed_before: bool) {
        let inner = &self.inner;
        if !inner.started.load(Ordering::SeqCst) || inner.lists_get_budget() == listed_before {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(inner);
        runtime.spawn(async move {
            let published = match me.info_event() {
                Ok(ev) => me.relay.publish(ev).await.map_err(NwcError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = published {
                warn!(error = %e, "cannot publish the NWC info event");
            }
        });
    }

    /// Stops listening and lets go of the relay.
    pub async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
            // Wait until it is gone, so that no task holds the wallet after
            // `stop` returns (the caller may stop the node next).
            let _ = t.await;
        }
        self.inner.relay.close().await;
    }
}

impl<B: WalletBackend> Inner<B> {
    /// Whether the info event lists [`GET_BUDGET`]: some active connection
    /// has a budget.
    fn lists_get_budget(&self) -> bool {
        let t = now();
        match self.store.list_connections() {
            Ok(list) => list
                .iter()
                .any(|c| c.is_active(t) && c.budget_msat.is_some()),
            Err(e) => {
                warn!(error = %e, "cannot list NWC connections");
                false
            }
        }
    }

    fn info_event(&self) -> Result<Event, NwcError> {
        let mut methods = SUPPORTED_METHODS.to_vec();
        if self.lists_get_budget() {
            methods.push(GET_BUDGET);
        }
        let t = now();
        let at = match self
            .info_at
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(t.max(last.saturating_add(1)))
            }) {
            Ok(last) | Err(last) => t.max(last.saturating_add(1)),
        };
        Ok(
            EventBuilder::new(Kind::WalletConnectInfo, methods.join(" "))
                .custom_created_at(Timestamp::from(at))
                .tags([
                    Tag::custom(TagKind::custom("encryption"), ["nip44_v2 nip04"]),
                    Tag::custom(
                        TagKind::custom("notifications"),
                        [SUPPORTED_NOTIFICATIONS.join(" ")],
                    ),
                ])
                .sign_with_keys(&self.keys)?,
        )
    }

    /// NIP-47 `get_budget` for `conn`: `{}` when it has no budget.
    fn get_budget(&self, conn: &NwcConnection) -> Result<Value, NIP47Error> {
        let Some(total) = conn.budget_msat else {
            return Ok(json!({}));
        };
        let used = self
            .store
            .spent_in_window(conn)
            .map_err(|e| nip47_error(ErrorCode::Internal, e.to_string()))?;
        let mut result = json!({
            "used_budget": used,
            "total_budget": total,
            "renewal_period": conn.renewal.as_str(),
        });
        if let Some(at) = conn.renewal.next_renewal(conn.created_at, now()) {
            result["renews_at"] = json!(at);
        }
        Ok(result)
    }

    /// The NIP-47 view of the payment with `hash` (see [`describe`]), with
    /// the invoice this service issued or paid for it.
    fn view(&self, hash: &str, tx: Option<&WalletTx>) -> Result<LookupInvoiceResponse, NwcError> {
        let issued = self.store.invoice(hash)?;
        let mut d = describe(hash, tx, issued.as_ref());
        if d.invoice.is_none() {
            d.invoice = self.store.payment_invoice(hash)?;
        }
        Ok(d)
    }

    /// Resolves the budget reservations an earlier run left open from the
    /// wallet's payment record: settled when the payment succeeded, released
    /// when it failed or was never sent; still-pending ones stay reserved
    /// (the Lightning event or a replay of the request resolves them).
    async fn reconcile_reservations(&self) {
        let pending = match self.store.pending_reservations() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list NWC reservations");
                return;
            }
        };
        for (request_id, hash) in pending {
            let handled_now = self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&request_id);
            if handled_now {
                // Its handler (in this process) resolves it.
                continue;
            }
            let done = match self
                .backend
                .sent_payment_outcome(&hash, Duration::ZERO)
                .await
            {
                Ok(Some(o)) => self.store.settle(&request_id, o.fee_msat),
                // The process stopped between reserving and sending.
                Ok(None) | Err(BackendError::PaymentFailed(_)) => self.store.release(&request_id),
                Err(_) => Ok(()),
            };
            if let Err(e) = done {
                warn!(error = %e, "cannot resolve an NWC reservation");
            }
        }
    }

    /// Forgets handled request ids that no acceptable request can carry any more.
    fn prune(&self) {
        let horizon = REQUEST_RETENTION.as_secs() + MAX_CLOCK_SKEW.as_secs();
        match self.store.prune_requests(now().saturating_sub(horizon)) {
            Ok(0) => {}
            Ok(n) => debug!(pruned = n, "pruned old NWC request ids"),
            Err(e) => warn!(error = %e, "cannot prune NWC request ids"),
        }
    }

    fn encrypt(&self, enc: Encryption, to: &PublicKey, plain: &str) -> Option<String> {
        let sk = self.keys.secret_key();
        match enc {
            Encryption::Nip44 => nip44::encrypt(sk, to, plain, Version::V2).ok(),
            Encryption::Nip04 => nip04::encrypt(sk, to, plain).ok(),
        }
    }

    fn decrypt(&self, enc: Encryption, from: &PublicKey, content: &str) -> Option<String> {
        let sk = self.keys.secret_key();
        match enc {
            Encryption::Nip44 => nip44::decrypt(sk, from, content).ok(),
            Encryption::Nip04 => nip04::decrypt(sk, from, content).ok(),
        }
    }

    async fn handle_request(&self, event: &Event) -> Option<Event> {
        if event.verify().is_err() {
            debug!(id = %event.id, "NWC request with a bad signature");
            return None;
        }
        self.handle_verified(event).await
    }

    /// [`Self::handle_request`] for an event whose id and signature are known
    /// to be good: the relay checked them (see [`RelayLink`]).
    async fn handle_verified(&self, event: &Event) -> Option<Event> {
        if event.kind != Kind::WalletConnectRequest
            || !event
                .tags
                .public_keys()
                .any(|p| *p == self.keys.public_key())
        {
            return None;
        }
        if event.is_expired() {
            debug!(id = %event.id, "NWC request expired; not executed");
            return None;
        }
        let t = now();
        let created = event.created_at.as_secs();
        if created.saturating_add(REQUEST_RETENTION.as_secs()) < t
            || created > t.saturating_add(MAX_CLOCK_SKEW.as_secs())
        {
            // Older than the replay record reaches back (or dated so far
            // ahead that it would outlive it): executing it could repeat a
            // request whose id was already pruned.
            debug!(id = %event.id, "NWC request outside the accepted time window; not executed");
            return None;
        }
        // No tag means a NIP-04 client (NIP-47 before the encryption tag).
        let requested: Option<Vec<String>> = event
            .tags
            .iter()
            .find(|t| t.kind() == TagKind::custom("encryption"))
            .map(|t| {
                t.as_slice()
                    .iter()
                    .skip(1)
                    .flat_map(|v| v.split_whitespace())
                    .map(str::to_owned)
                    .collect()
            });
        let enc = match &requested {
            None => Ok(Encryption::Nip04),
            Some(v) if v.iter().any(|s| s == "nip44_v2") => Ok(Encryption::Nip44),
            Some(v) if v.iter().any(|s| s == "nip04") => Ok(Encryption::Nip04),
            Some(_) => Err(()),
        };

        let request_id = event.id.to_hex();
        let conn = match self.store.connection_by_pubkey(&event.pubkey) {
            Ok(c) => c.filter(|c| c.is_active(now())),
            Err(e) => {
                warn!(error = %e, "NWC store unavailable");
                return None;
            }
        };
        let Some(conn) = conn else {
            // Unknown, revoked or expired key: answered UNAUTHORIZED but not
            // recorded, so no key without an active connection can grow the
            // database. Nothing is executed, so answering a replay again is
            // harmless.
            return self.unauthorized(event, enc.ok());
        };
        let (_guard, resume) = {
            // Claim in the database and in memory under one lock, so two
            // copies of a request cannot both decide they are the first.
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let resume = match self.store.begin_request(&request_id, conn.id) {
                Ok(RequestState::New) => false,
                Ok(RequestState::Answered(json)) => {
                    debug!(id = %request_id, "replayed NWC request; answering from the record");
                    return Event::from_json(json).ok();
                }
                Ok(RequestState::InFlight) if active.contains(&request_id) => return None,
                Ok(RequestState::InFlight) => {
                    // Seen before but never answered: an earlier run stopped
                    // while handling it, or its payment was still pending.
                    debug!(id = %request_id, "resuming an unanswered NWC request");
                    true
                }
                Err(e) => {
                    warn!(error = %e, "NWC store unavailable");
                    return None;
                }
            };
            active.insert(request_id.clone());
            (
                ActiveGuard {
                    active: &self.active,
                    id: request_id.clone(),
                },
                resume,
            )
        };

        let (enc, body, settled) = match enc {
            Ok(enc) => {
                let Some(plain) = self.decrypt(enc, &event.pubkey, &event.content) else {
                    debug!(id = %request_id, "undecryptable NWC request");
                    return None;
                };
                let (body, settled) = self.execute(event, &conn, &plain, resume).await;
                (enc, body, settled)
            }
            Err(()) => {
                // Unknown scheme: answer in NIP-44, the scheme NIP-47 prefers.
                let method = self.guess_method(event, None);
                let err = nip47_error(
                    ErrorCode::Other,
                    "encryption scheme not supported; use nip44_v2 or nip04",
                );
                let mut body = error_body(&method, &err);
                body["error"]["code"] = json!("UNSUPPORTED_ENCRYPTION");
                (Encryption::Nip44, body, true)
            }
        };

        count_request(&body, settled);
        let response = self.response(event, enc, &body)?;
        // A payment still in flight is answered "pending" but not recorded:
        // a replay of the request then reports the final outcome (without
        // paying again) instead of the stale "pending".
        if settled {
            if let Err(e) = self.store.finish_request(&request_id, &response.as_json()) {
                warn!(error = %e, "cannot record an NWC response");
            }
        }
        Some(response)
    }

    /// The signed response event to `event` carrying `body`.
    fn response(&self, event: &Event, enc: Encryption, body: &Value) -> Option<Event> {
        let content = self.encrypt(enc, &event.pubkey, &body.to_string())?;
        EventBuilder::new(Kind::WalletConnectResponse, content)
            .tags([Tag::public_key(event.pubkey), Tag::event(event.id)])
            .sign_with_keys(&self.keys)
            .ok()
    }

    /// The request's method, read with `enc` (or whichever scheme decrypts
    /// it); `get_info` when unreadable.
    fn guess_method(&self, event: &Event, enc: Option<Encryption>) -> String {
        let schemes = match enc {
            Some(e) => vec![e],
            None => vec![Encryption::Nip44, Encryption::Nip04],
        };
        schemes
            .into_iter()
            .find_map(|e| self.decrypt(e, &event.pubkey, &event.content))
            .and_then(|p| serde_json::from_str::<Value>(&p).ok())
            .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "get_info".into())
    }

    /// The UNAUTHORIZED answer to a request from a key without an active
    /// connection (`None` when it cannot be read, like any unreadable request).
    fn unauthorized(&self, event: &Event, enc: Option<Encryption>) -> Option<Event> {
        let enc_used = enc.unwrap_or(Encryption::Nip44);
        if enc.is_some()
            && self
                .decrypt(enc_used, &event.pubkey, &event.content)
                .is_none()
        {
            debug!(id = %event.id, "undecryptable NWC request");
            return None;
        }
        let method = self.guess_method(event, enc);
        let body = error_body(
            &method,
            &nip47_error(
                ErrorCode::Unauthorized,
                "no active wallet connection for this key",
            ),
        );
        count_request(&body, true);
        self.response(event, enc_used, &body)
    }

    /// Runs the decrypted request and returns the response body and whether
    /// it is final (`false` only for a payment whose outcome is unknown).
    /// `resume`: the request was seen by an earlier run that did not answer it.
    async fn execute(
        &self,
        event: &Event,
        conn: &NwcConnection,
        plain: &str,
        resume: bool,
    ) -> (Value, bool) {
        let raw: Value = serde_json::from_str(plain).unwrap_or(Value::Null);
        let method_name = raw
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if method_name == GET_BUDGET {
            let body = match self.get_budget(conn) {
                Ok(r) => json!({ "result_type": GET_BUDGET, "result": r }),
                Err(e) => error_body(GET_BUDGET, &e),
            };
            return (body, true);
        }
        if !SUPPORTED_METHODS.contains(&method_name.as_str()) {
            return (
                error_body(
                    &method_name,
                    &nip47_error(ErrorCode::NotImplemented, "method not implemented"),
                ),
                true,
            );
        }
        if !conn.allows(&method_name) {
            return (
                error_body(
                    &method_name,
                    &nip47_error(
                        ErrorCode::Restricted,
                        "this connection may not use this method",
                    ),
                ),
                true,
            );
        }
        let request = match Request::from_value(raw) {
            Ok(r) => r,
            Err(e) => {
                return (
                    error_body(
                        &method_name,
                        &nip47_error(ErrorCode::Other, format!("bad request: {e}")),
                    ),
                    true,
                )
            }
        };
        let mut settled = true;
        let result = match request.params {
            RequestParams::PayInvoice(p) => {
                let (result, known) = self.pay_invoice(conn, &event.id.to_hex(), p, resume).await;
                settled = known;
                result
            }
            RequestParams::MakeInvoice(p) => self.make_invoice(conn, p).await,
            RequestParams::LookupInvoice(p) => self.lookup_invoice(conn, p).await,
            RequestParams::ListTransactions(p) => self.list_transactions(conn, p).await,
            RequestParams::GetBalance => self
                .backend
                .balance_msat()
                .await
                .map(|balance| ResponseResult::GetBalance(GetBalanceResponse { balance }))
                .map_err(backend_error),
            RequestParams::GetInfo => Ok(self.get_info(conn)),
            _ => Err(nip47_error(
                ErrorCode::NotImplemented,
                "method not implemented",
            )),
        };
        let body = match result {
            Ok(r) => json!({ "result_type": method_name, "result": r }),
            Err(e) => error_body(&method_name, &e),
        };
        (body, settled)
    }

    /// Pays (or, for a resumed request, finds the outcome of) an invoice.
    /// The flag is `false` when the outcome is still unknown.
    async fn pay_invoice(
        &self,
        conn: &NwcConnection,
        request_id: &str,
        p: PayInvoiceRequest,
        resume: bool,
    ) -> (Result<ResponseResult, NIP47Error>, bool) {
        let invoice: Bolt11Invoice = match p.invoice.trim().parse() {
            Ok(i) => i,
            Err(_) => {
                return (
                    Err(nip47_error(ErrorCode::Other, "not a BOLT11 invoice")),
                    true,
                )
            }
        };
        let Some(amount) = invoice.amount_milli_satoshis().or(p.amount) else {
            return (
                Err(nip47_error(
                    ErrorCode::Other,
                    "invoice has no amount; give one",
                )),
                true,
            );
        };
        if conn.max_payment_msat.is_some_and(|max| amount > max) {
            return (
                Err(nip47_error(
                    ErrorCode::QuotaExceeded,
                    "payment is above this connection's per-payment maximum",
                )),
                true,
            );
        }
        let payment_hash = hex::encode(invoice.payment_hash().to_byte_array());
        // A resumed request may have paid before the restart: the wallet's
        // own payment record decides, so the invoice is never paid twice.
        let earlier = if resume {
            match self
                .backend
                .sent_payment_outcome(&payment_hash, DEFAULT_PAYMENT_TIMEOUT)
                .await
            {
                Ok(None) => None,
                other => Some(other),
            }
        } else {
            None
        };
        let outcome = match earlier {
            Some(known) => known.and_then(|o| o.ok_or(BackendError::Pending)),
            None => {
                let max_fee = max_routing_fee_msat(amount);
                match self
                    .store
                    .reserve(conn, request_id, &payment_hash, amount, max_fee)
                {
                    Ok(true) => {}
                    Ok(false) => {
                        return (
                            Err(nip47_error(
                                ErrorCode::QuotaExceeded,
                                "payment would exceed this connection's budget",
                            )),
                            true,
                        )
                    }
                    Err(e) => return (Err(nip47_error(ErrorCode::Internal, e.to_string())), true),
                }
                // Before paying, so the outcome's notification and lookups
                // find their connection.
                if let Err(e) = self
                    .store
                    .record_payment(conn.id, &payment_hash, p.invoice.trim())
                {
                    if let Err(e) = self.store.release(request_id) {
                        warn!(error = %e, "cannot release an NWC budget reservation");
                    }
                    return (Err(nip47_error(ErrorCode::Internal, e.to_string())), true);
                }
                self.backend
                    .pay_invoice(
                        &invoice,
                        invoice.amount_milli_satoshis().is_none().then_some(amount),
                        max_fee,
                    )
                    .await
            }
        };
        let bookkeeping = match &outcome {
            Ok(o) => self.store.settle(request_id, o.fee_msat),
            Err(BackendError::PaymentFailed(_) | BackendError::BadRequest(_)) => {
                self.store.release(request_id)
            }
            // Unknown outcome (still pending, or the wallet could not say):
            // the money may still move, so it stays reserved.
            Err(BackendError::Pending | BackendError::Internal(_)) => Ok(()),
        };
        if let Err(e) = bookkeeping {
            warn!(error = %e, "NWC budget bookkeeping failed");
        }
        let known = matches!(
            outcome,
            Ok(_) | Err(BackendError::PaymentFailed(_) | BackendError::BadRequest(_))
        );
        let result = outcome.map_err(backend_error).map(|o| {
            ResponseResult::PayInvoice(PayInvoiceResponse {
                preimage: o.preimage,
                fees_paid: Some(o.fee_msat),
            })
        });
        (result, known)
    }

    async fn make_invoice(
        &self,
        conn: &NwcConnection,
        p: MakeInvoiceRequest,
    ) -> Result<ResponseResult, NIP47Error> {
        let description = match (&p.description_hash, &p.description) {
            (Some(h), _) => InvoiceDescription::Hash(
                h.parse()
                    .map_err(|_| nip47_error(ErrorCode::Other, "bad description_hash"))?,
            ),
            (None, d) => InvoiceDescription::Text(d.clone().unwrap_or_default()),
        };
        let expiry = p
            .expiry
            .map(|e| e.min(u32::MAX as u64) as u32)
            .unwrap_or(DEFAULT_INVOICE_EXPIRY_SECS);
        let inv = self
            .backend
            .make_invoice(p.amount, &description, expiry)
            .await
            .map_err(backend_error)?;
        let issued = IssuedInvoice {
            payment_hash: inv.payment_hash.clone(),
            invoice: inv.invoice.clone(),
            description: p.description.clone(),
            description_hash: p.description_hash.clone(),
            amount_msat: p.amount,
            created_at: inv.created_at,
            expires_at: inv.expires_at,
        };
        self.store
            .insert_invoice(conn.id, &issued)
            .map_err(|e| nip47_error(ErrorCode::Internal, e.to_string()))?;
        Ok(ResponseResult::MakeInvoice(MakeInvoiceResponse {
            invoice: inv.invoice,
            payment_hash: Some(inv.payment_hash),
            description: p.description,
            description_hash: p.description_hash,
            preimage: None,
            amount: Some(p.amount),
            created_at: Some(Timestamp::from(inv.created_at)),
            expires_at: Some(Timestamp::from(inv.expires_at)),
        }))
    }

    /// Looks up an invoice this connection issued or a payment it sent;
    /// anything else is NOT_FOUND, whether or not the wallet knows it.
    async fn lookup_invoice(
        &self,
        conn: &NwcConnection,
        p: LookupInvoiceRequest,
    ) -> Result<ResponseResult, NIP47Error> {
        let hash = match (&p.payment_hash, &p.invoice) {
            (Some(h), _) => h.to_lowercase(),
            (None, Some(inv)) => {
                let inv: Bolt11Invoice = inv
                    .trim()
                    .parse()
                    .map_err(|_| nip47_error(ErrorCode::Other, "not a BOLT11 invoice"))?;
                hex::encode(inv.payment_hash().to_byte_array())
            }
            (None, None) => {
                return Err(nip47_error(
                    ErrorCode::Other,
                    "give payment_hash or invoice",
                ))
            }
        };
        let owned = self
            .store
            .is_owned_by(conn.id, &hash)
            .map_err(|e| nip47_error(ErrorCode::Internal, e.to_string()))?;
        if !owned {
            return Err(nip47_error(ErrorCode::NotFound, "invoice not found"));
        }
        let tx = self.backend.lookup(&hash).await.map_err(backend_error)?;
        let internal = |e: NwcError| nip47_error(ErrorCode::Internal, e.to_string());
        if tx.is_none() && self.store.invoice(&hash).map_err(internal)?.is_none() {
            return Err(nip47_error(ErrorCode::NotFound, "invoice not found"));
        }
        Ok(ResponseResult::LookupInvoice(
            self.view(&hash, tx.as_ref()).map_err(internal)?,
        ))
    }

    /// The invoices this connection issued and the payments it sent (not
    /// the rest of the node's).
    async fn list_transactions(
        &self,
        conn: &NwcConnection,
        p: ListTransactionsRequest,
    ) -> Result<ResponseResult, NIP47Error> {
        let own = self
            .store
            .hashes_of(conn.id)
            .map_err(|e| nip47_error(ErrorCode::Internal, e.to_string()))?;
        let txs = self.backend.list().await.map_err(backend_error)?;
        let mut out = Vec::new();
        for tx in txs.iter().filter(|t| own.contains(&t.payment_hash)) {
            let d = match self.view(&tx.payment_hash, Some(tx)) {
                Ok(d) => d,
                Err(_) => describe(&tx.payment_hash, Some(tx), None),
            };
            if !p.unpaid.unwrap_or(false) && d.state != Some(TransactionState::Settled) {
                continue;
            }
            if p.transaction_type.is_some() && d.transaction_type != p.transaction_type {
                continue;
            }
            if p.from.is_some_and(|f| d.created_at < f) || p.until.is_some_and(|u| d.created_at > u)
            {
                continue;
            }
            out.push(d);
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        let offset = p.offset.unwrap_or(0) as usize;
        let limit = p.limit.map(|l| l as usize).unwrap_or(usize::MAX);
        Ok(ResponseResult::ListTransactions(
            out.into_iter().skip(offset).take(limit).collect(),
        ))
    }

    fn get_info(&self, conn: &NwcConnection) -> ResponseResult {
        let (pubkey, network) = self.backend.info();
        ResponseResult::GetInfo(GetInfoResponse {
            alias: Some("cairn".into()),
            color: None,
            pubkey: Some(pubkey),
            network: Some(network),
            block_height: None,
            block_hash: None,
            methods: conn
                .permissions
                .iter()
                .filter_map(|m| m.parse::<Method>().ok())
                .collect(),
            notifications: conn
                .notifications()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Sends notification `kind` about `payment_hash` to the connection
    /// that issued the invoice (`payment_received`) or sent the payment
    /// (`payment_sent`), if it is active and receives that kind (see
    /// [`NwcConnection::notifications`]); nobody else hears of it.
    async fn notify(&self, kind: &str, payment_hash: &str) -> Result<(), NwcError> {
        let owners = if kind == "payment_received" {
            self.store
                .invoice_owner(payment_hash)?
                .into_iter()
                .collect()
        } else {
            self.store.payment_owners(payment_hash)?
        };
        let t = now();
        let mut recipients = Vec::new();
        for id in owners {
            if let Some(c) = self.store.connection_by_id(id)? {
                if c.is_active(t) && c.notifications().contains(&kind) {
                    recipients.push(c);
                }
            }
        }
        if recipients.is_empty() {
            return Ok(());
        }
        let Ok(Some(tx)) = self.backend.lookup(payment_hash).await else {
            return Ok(());
        };
        // The invoice this connection issued (payment_received) or paid
        // (payment_sent): apps match notifications by it.
        let d = self.view(payment_hash, Some(&tx))?;
        let mut payload = serde_json::to_value(&d).unwrap_or(Value::Null);
        // nwc clients require these fields in notifications.
        if payload.get("invoice").is_none() {
            payload["invoice"] = json!("");
        }
        if payload.get("preimage").is_none() {
            payload["preimage"] = json!("");
        }
        if payload.get("settled_at").is_none() {
            payload["settled_at"] = json!(tx.updated_at);
        }
        let body = json!({ "notification_type": kind, "notification": payload }).to_string();
        for conn in recipients {
            for (enc, kind) in [
                (Encryption::Nip44, Kind::Custom(NOTIFICATION_KIND_NIP44)),
                (Encryption::Nip04, Kind::WalletConnectNotification),
            ] {
                let Some(content) = self.encrypt(enc, &conn.client_pubkey, &body) else {
                    continue;
                };
                let ev = EventBuilder::new(kind, content)
                    .tag(Tag::public_key(conn.client_pubkey))
                    .sign_with_keys(&self.keys)?;
                self.relay.publish(ev).await?;
            }
        }
        Ok(())
    }
}

fn backend_error(e: BackendError) -> NIP47Error {
    match e {
        BackendError::PaymentFailed(m) => nip47_error(ErrorCode::PaymentFailed, m),
        BackendError::Pending => nip47_error(
            ErrorCode::Other,
            "payment still in flight; look it up later",
        ),
        BackendError::BadRequest(m) => nip47_error(ErrorCode::Other, m),
        BackendError::Internal(m) => nip47_error(ErrorCode::Internal, m),
    }
}

/// Counter: NWC requests answered (replays answered from the record are not
/// counted again), labels `method` (a supported method, `get_budget`, or
/// `other` for anything a client made up) and `result`: `ok`, `pending` (a
/// payment whose outcome is not known yet) or the NIP-47 error code,
/// lowercase (`unauthorized`, `restricted`, `quota_exceeded`, …, and
/// `unsupported_encryption`).
pub const NWC_REQUESTS: &str = "cairn_nwc_requests_total";

/// Error codes the service answers with: the `result` label's values
/// besides `ok` and `pending` (anything else is counted as `other`).
const RESULT_CODES: &[&str] = &[
    "RATE_LIMITED",
    "NOT_IMPLEMENTED",
    "INSUFFICIENT_BALANCE",
    "QUOTA_EXCEEDED",
    "RESTRICTED",
    "UNAUTHORIZED",
    "INTERNAL",
    "OTHER",
    "PAYMENT_FAILED",
    "NOT_FOUND",
    "UNSUPPORTED_ENCRYPTION",
];

/// Count one answered request in [`NWC_REQUESTS`].
fn count_request(body: &Value, settled: bool) {
    let (method, result) = request_labels(body, settled);
    metrics::counter!(NWC_REQUESTS, "method" => method, "result" => result).increment(1);
}

/// The `method` and `result` labels of an answered request's body (see
/// [`NWC_REQUESTS`]): from fixed sets only, never what the client wrote.
fn request_labels(body: &Value, settled: bool) -> (&'static str, String) {
    let method = body
        .get("result_type")
        .and_then(Value::as_str)
        .and_then(|m| {
            SUPPORTED_METHODS
                .iter()
                .copied()
                .chain([GET_BUDGET])
                .find(|known| *known == m)
        })
        .unwrap_or("other");
    let result = match body.get("error").and_then(|e| e.get("code")) {
        _ if !settled => "pending".to_owned(),
        None | Some(Value::Null) => "ok".to_owned(),
        Some(code) => {
            let code = code.as_str().unwrap_or("OTHER");
            RESULT_CODES
                .iter()
                .find(|c| **c == code)
                .map_or("other".to_owned(), |c| c.to_ascii_lowercase())
        }
    };
    (method, result)
}

fn error_body(method: &str, err: &NIP47Error) -> Value {
    json!({
        "result_type": method,
        "error": err,
    })
}

/// The NIP-47 view of one payment, from the wallet's record and (for
/// invoices issued through NWC) the stored invoice.
fn describe(
    hash: &str,
    tx: Option<&WalletTx>,
    issued: Option<&IssuedInvoice>,
) -> LookupInvoiceResponse {
    let t = now();
    let state = match tx.map(|t| t.status) {
        Some(PaymentStatus::Succeeded) => TransactionState::Settled,
        Some(PaymentStatus::Failed) => TransactionState::Failed,
        _ if issued.is_some_and(|i| i.expires_at <= t) => TransactionState::Expired,
        _ => TransactionState::Pending,
    };
    let incoming = tx.map(|t| t.incoming).unwrap_or(true);
    LookupInvoiceResponse {
        transaction_type: Some(if incoming {
            TransactionType::Incoming
        } else {
            TransactionType::Outgoing
        }),
        state: Some(state),
        invoice: issued.map(|i| i.invoice.clone()),
        description: issued.and_then(|i| i.description.clone()),
        description_hash: issued.and_then(|i| i.description_hash.clone()),
        preimage: tx.and_then(|t| t.preimage.clone()),
        payment_hash: hash.to_owned(),
        amount: tx
            .map(|t| t.amount_msat)
            .or(issued.map(|i| i.amount_msat))
            .unwrap_or(0),
        fees_paid: tx.map(|t| t.fee_msat).unwrap_or(0),
        created_at: Timestamp::from(
            issued
                .map(|i| i.created_at)
                .or(tx.map(|t| t.updated_at))
                .unwrap_or(t),
        ),
        expires_at: issued.map(|i| Timestamp::from(i.expires_at)),
        settled_at: (state == TransactionState::Settled)
            .then(|| Timestamp::from(tx.map(|t| t.updated_at).unwrap_or(t))),
        metadata: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_labels_come_from_fixed_sets() {
        let ok = json!({"result_type": "get_balance", "result": {"balance": 1}, "error": null});
        assert_eq!(request_labels(&ok, true), ("get_balance", "ok".into()));
        let quota = json!({"result_type": "pay_invoice", "error": {"code": "QUOTA_EXCEEDED"}});
        assert_eq!(
            request_labels(&quota, true),
            ("pay_invoice", "quota_exceeded".into())
        );
        let in_flight = json!({"result_type": "pay_invoice", "error": {"code": "INTERNAL"}});
        assert_eq!(
            request_labels(&in_flight, false),
            ("pay_invoice", "pending".into())
        );
        // A client's made-up method or an unknown code never becomes a label.
        let made_up = json!({"result_type": "x_made_up", "error": {"code": "NOT_IMPLEMENTED"}});
        assert_eq!(
            request_labels(&made_up, true),
            ("other", "not_implemented".into())
        );
        let unknown = json!({"result_type": "get_info", "error": {"code": "SOMETHING_NEW"}});
        assert_eq!(request_labels(&unknown, true), ("get_info", "other".into()));
        // As the service builds its error answers.
        let body = error_body(
            "get_balance",
            &nip47_error(ErrorCode::Unauthorized, "no connection"),
        );
        assert_eq!(
            request_labels(&body, true),
            ("get_balance", "unauthorized".into())
        );
    }
}
