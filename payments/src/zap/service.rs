//! The zap service: issues zap invoices and publishes their receipts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldk_node::payment::PaymentStatus;
use ldk_node::Event as LdkEvent;
use nostr::{Event, JsonUtil, Keys, PublicKey, RelayUrl, Timestamp};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::delivery::{ReceiptPublisher, RetryPolicy, PUBLISH_TIMEOUT};
use super::receipt::build_receipt;
use super::relay_filter::RelayPolicy;
use super::request::ZapRequest;
use super::store::{PendingZap, ZapState, ZapStore};
use super::ZapError;
use crate::clock::now;
use crate::keyfile::load_or_create_keys;
use crate::lightning::InvoiceDescription;
use crate::relay_link::RelayLink;
use crate::wallet_backend::{IncomingInvoice, WalletBackend};

/// File of the zapper's secret key (hex, 0600), in the data directory.
pub const ZAP_KEY_FILE_NAME: &str = "zap.key";
/// File of the zap database, in the data directory.
pub const ZAP_STORE_FILE_NAME: &str = "zaps.sqlite";
/// How often unpublished zaps are looked at again (missed events, relays
/// that were down).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long after its expiry an unpaid zap is kept before it is dropped
/// from the sweep (a payment in flight at expiry may still settle).
const EXPIRY_GRACE_SECS: u64 = 600;

/// Where the service keeps its files, where receipts go, and how long
/// invoices live.
#[derive(Debug, Clone)]
pub struct ZapServiceConfig {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The node's own relay; every receipt is also published there.
    pub own_relay_url: String,
    /// Expiry of zap invoices, seconds.
    pub invoice_expiry_secs: u32,
    /// Also send receipts to relays on loopback, private, link-local or
    /// CGNAT addresses named in requests (see [`RelayPolicy`]).
    pub allow_private_relays: bool,
    /// Most zap invoices outstanding (unpaid, unexpired) at once; more
    /// requests get [`ZapError::TooManyPending`].
    pub max_pending: u64,
    /// When relays that missed a receipt are tried again.
    pub retry: RetryPolicy,
}

struct Inner<B> {
    keys: Keys,
    store: ZapStore,
    backend: Arc<B>,
    own_relay: RelayUrl,
    invoice_expiry_secs: u32,
    policy: RelayPolicy,
    max_pending: u64,
    publisher: ReceiptPublisher,
}

struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// NIP-57 zaps over a [`WalletBackend`].
pub struct ZapService<B: WalletBackend> {
    inner: Arc<Inner<B>>,
    worker: Mutex<Option<Worker>>,
}

impl<B: WalletBackend> std::fmt::Debug for ZapService<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZapService")
            .field("zapper", &self.inner.keys.public_key())
            .field("own_relay", &self.inner.own_relay)
            .finish()
    }
}

impl<B: WalletBackend> ZapService<B> {
    /// Opens the zapper key and the database under `config.data_dir`
    /// (creating them on first use); `own_link` reaches the node's relay, at
    /// `config.own_relay_url`. Nothing is published until [`Self::start`].
    pub fn open(
        config: &ZapServiceConfig,
        backend: Arc<B>,
        own_link: Arc<dyn RelayLink>,
    ) -> Result<Self, ZapError> {
        let keys = load_or_create_keys(&config.data_dir.join(ZAP_KEY_FILE_NAME))?;
        let store = ZapStore::open(&config.data_dir.join(ZAP_STORE_FILE_NAME))?;
        let own_relay = RelayUrl::parse(&config.own_relay_url)
            .map_err(|_| ZapError::RelayUrl(config.own_relay_url.clone()))?;
        let policy = RelayPolicy {
            allow_private: config.allow_private_relays,
        };
        let publisher =
            ReceiptPublisher::new(own_relay.clone(), own_link, policy.clone(), config.retry);
        Ok(Self {
            inner: Arc::new(Inner {
                keys,
                store,
                backend,
                own_relay,
                invoice_expiry_secs: config.invoice_expiry_secs,
                policy,
                max_pending: config.max_pending,
                publisher,
            }),
            worker: Mutex::new(None),
        })
    }

    /// The zapper's public key: LNURL-pay's `nostrPubkey`, the receipts' author.
    pub fn zapper_pubkey(&self) -> PublicKey {
        self.inner.keys.public_key()
    }

    /// The database.
    pub fn store(&self) -> &ZapStore {
        &self.inner.store
    }

    /// Issues an invoice for `amount_msat` whose description hash commits to
    /// the (validated) zap request, and remembers the zap — unless
    /// `max_pending` zap invoices are outstanding already. Relays the
    /// [`RelayPolicy`] forbids by address alone are not remembered.
    pub async fn create_invoice(
        &self,
        request: &ZapRequest,
        amount_msat: u64,
    ) -> Result<IncomingInvoice, ZapError> {
        let at = now();
        let (pending, first_expiry) = self.inner.store.count_pending(at)?;
        if pending >= self.inner.max_pending {
            return Err(ZapError::TooManyPending {
                retry_after_secs: first_expiry.map_or(60, |t| t.saturating_sub(at)).max(1),
            });
        }
        let relays = request
            .relays()
            .iter()
            .filter(|r| self.inner.policy.allows(r))
            .map(|r| r.to_string())
            .collect();
        let invoice = self
            .inner
            .backend
            .make_invoice(
                amount_msat,
                &InvoiceDescription::Hash(request.description_hash()),
                self.inner.invoice_expiry_secs,
            )
            .await?;
        self.inner.store.insert(&PendingZap {
            payment_hash: invoice.payment_hash.clone(),
            request: request.json().to_owned(),
            relays,
            invoice: invoice.invoice.clone(),
            amount_msat,
            created_at: invoice.created_at,
            expires_at: invoice.expires_at,
            state: ZapState::Pending,
            receipt: None,
        })?;
        Ok(invoice)
    }

    /// Starts publishing receipts: first for zaps paid while the service was
    /// not running, then for each `PaymentReceived` on `events` (from
    /// `LightningNode::subscribe`, taken before this call so nothing slips
    /// past), with a periodic sweep for anything missed.
    pub fn start(&self, mut events: broadcast::Receiver<LdkEvent>) {
        let mut slot = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        let (stop, mut stop_rx) = watch::channel(false);
        let inner = Arc::clone(&self.inner);
        // One task does all publishing, so a zap is never handled twice at once.
        let task = tokio::spawn(async move {
            inner.sweep().await;
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => { inner.sweep().await; }
                    ev = events.recv() => match ev {
                        Ok(LdkEvent::PaymentReceived { payment_hash, .. }) => {
                            let hash = hex::encode(payment_hash.0);
                            match inner.store.get(&hash) {
                                Ok(Some(zap)) => {
                                    inner.settle(zap).await;
                                    inner.record_pending();
                                }
                                Ok(None) => {}
                                Err(e) => warn!(error = %e, "zap store unavailable"),
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => { inner.sweep().await; }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        *slot = Some(Worker { stop, task });
        info!(zapper = %self.inner.keys.public_key(), "zap service started");
    }

    /// Looks at every unpublished zap now and publishes the receipts of paid
    /// ones; returns how many were published. (The running service does this
    /// on start and every 30 s.)
    pub async fn sweep(&self) -> usize {
        self.inner.sweep().await
    }

    /// Stops the worker (after the publication in hand, if any).
    pub async fn stop(&self) {
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = worker {
            let _ = w.stop.send(true);
            if tokio::time::timeout(PUBLISH_TIMEOUT * 2, w.task)
                .await
                .is_err()
            {
                warn!("zap service did not stop in time");
            }
        }
    }
}

/// Gauge: paid zaps whose receipt (kind 9735) is not published yet, on the
/// process running the zap service (set after each sweep and payment).
pub const ZAP_RECEIPTS_PENDING: &str = "cairn_zap_receipts_pending";

impl<B: WalletBackend> Inner<B> {
    async fn sweep(&self) -> usize {
        let window = self.publisher.retry().window.as_secs();
        let zaps = self.store.unpublished().and_then(|mut z| {
            // Published receipts some relays missed, due for another try.
            z.extend(self.store.published_with_due_deliveries(now(), window)?);
            Ok(z)
        });
        let zaps = match zaps {
            Ok(z) => z,
            Err(e) => {
                warn!(error = %e, "zap store unavailable");
                return 0;
            }
        };
        let mut published = 0;
        for zap in zaps {
            if self.settle(zap).await {
                published += 1;
            }
        }
        if let Err(e) = self.store.prune_expired() {
            warn!(error = %e, "cannot prune expired zaps");
        }
        self.record_pending();
        published
    }

    /// Sets [`ZAP_RECEIPTS_PENDING`] from the store (after each sweep and
    /// each payment, so it is at most one sweep interval old).
    fn record_pending(&self) {
        match self.store.count_unpublished_receipts() {
            Ok(n) => metrics::gauge!(ZAP_RECEIPTS_PENDING).set(n as f64),
            Err(e) => warn!(error = %e, "zap store unavailable"),
        }
    }

    /// Moves one zap on: signs its receipt once the invoice is paid,
    /// publishes it, records that. True when it was published now.
    async fn settle(&self, zap: PendingZap) -> bool {
        match self.try_settle(&zap).await {
            Ok(published) => published,
            Err(e) => {
                warn!(payment_hash = %zap.payment_hash, error = %e, "zap receipt not published yet");
                false
            }
        }
    }

    async fn try_settle(&self, zap: &PendingZap) -> Result<bool, ZapError> {
        let receipt = match (zap.state, &zap.receipt) {
            (ZapState::Paid | ZapState::Published, Some(receipt)) => receipt.clone(),
            (ZapState::Pending, _) => {
                let tx = self.backend.lookup(&zap.payment_hash).await?;
                match tx {
                    Some(tx) if tx.incoming && tx.status == PaymentStatus::Succeeded => {
                        let receipt = build_receipt(
                            &self.keys,
                            &zap.request,
                            &zap.invoice,
                            tx.preimage.as_deref(),
                            Timestamp::from(tx.updated_at),
                        )?;
                        match self
                            .store
                            .set_receipt(&zap.payment_hash, &receipt.as_json())?
                        {
                            Some(stored) => stored,
                            None => return Ok(false),
                        }
                    }
                    Some(tx) if tx.status == PaymentStatus::Failed => {
                        self.store.mark_expired(&zap.payment_hash)?;
                        return Ok(false);
                    }
                    _ => {
                        if now() > zap.expires_at + EXPIRY_GRACE_SECS {
                            debug!(payment_hash = %zap.payment_hash, "zap invoice expired unpaid");
                            self.store.mark_expired(&zap.payment_hash)?;
                        }
                        return Ok(false);
                    }
                }
            }
            _ => return Ok(false),
        };
        let event = Event::from_json(&receipt)
            .map_err(|e| super::ZapRequestError::NotAnEvent(e.to_string()))?;
        // Always the stored receipt: a retry sends the same event id.
        let accepted = self
            .publisher
            .deliver(&self.store, zap, &event, now())
            .await?;
        if accepted == 0 || zap.state == ZapState::Published {
            return Ok(false);
        }
        let first = self.store.mark_published(&zap.payment_hash, now())?;
        if first {
            info!(payment_hash = %zap.payment_hash, receipt = %event.id, relays = accepted, "zap receipt published");
        }
        Ok(first)
    }
}
