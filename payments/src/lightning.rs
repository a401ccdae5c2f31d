//! The Lightning node: a thin wrapper over ldk-node 0.7.1.
//!
//! [`LightningNode::build`] configures ldk-node's `Builder` from a
//! [`LightningConfig`] (network, listening address, storage under
//! `<data_dir>/lightning`, Bitcoin Core RPC as chain source) and the node's
//! seed ([`crate::entropy`]); [`LightningNode::build_on`] takes any
//! [`ChainSource`] (Bitcoin Core RPC or Esplora) instead. [`LightningNode::start`] starts it and an event
//! loop that records every ldk-node event once in an [`EventStore`] before
//! acknowledging it (`event_handled`), and forwards new events to subscribers.
//!
//! ## Paying
//!
//! [`LightningNode::pay_and_wait`] (BOLT11) and [`LightningNode::pay_offer_and_wait`]
//! (BOLT12) are the one way Cairn pays and waits: the NWC service, the admin API
//! and the Lightning benchmark all go through them, and
//! [`LightningNode::payment_outcome`] answers "what became of payment H" for
//! all of them. The rules they keep:
//!
//! - **Exactly once.** ldk-node keys a BOLT11 payment by its payment hash and
//!   refuses a second send of the same invoice while the first is pending or
//!   has succeeded (`DuplicatePayment`); only a failed payment, which moved no
//!   money, may be sent again. So "has this invoice been paid?" is answered by
//!   ldk-node's payment record ([`LightningNode::payment_outcome`]), never by a
//!   caller's own bookkeeping, and a caller resuming after a restart asks it
//!   before paying.
//! - **A timeout abandons nothing.** When the wait ends with the payment still
//!   in flight the answer is [`PaymentOutcome::Pending`]; the payment goes on
//!   (ldk-node retries routes on its own), is never re-sent by this module,
//!   and its outcome lands in the record, where a later
//!   [`LightningNode::payment_outcome`] finds it.
//! - **The record is the truth.** Waiting subscribes before sending and looks
//!   at the record on each new event and at least every
//!   [`OUTCOME_POLL_INTERVAL`], so neither a missed nor a lagged event can hide
//!   the outcome.
//!
//! ldk-node's synchronous calls (`start`, `stop`, `sync_wallets`, sending)
//! block through `tokio::task::block_in_place`, so this type must be used from
//! a **multi-threaded** tokio runtime; ldk-node spawns its background tasks on
//! the runtime that is current when [`LightningNode::build`] runs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::sha256;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, FeeRate, Network, Txid};
use ldk_node::lightning::events::PaymentFailureReason;
use ldk_node::lightning::ln::channelmanager::PaymentId;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning::ln::types::ChannelId;
use ldk_node::lightning::offers::offer::Offer;
use ldk_node::lightning::routing::router::RouteParametersConfig;
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description, Sha256};
use ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};
use ldk_node::payment::{PaymentDetails, PaymentDirection, PaymentKind, PaymentStatus};
use ldk_node::{BuildError, Builder, ChannelDetails, Event, Node, NodeError, UserChannelId};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::events::{EventStore, EventStoreError, HandledEvent, EVENTS_DB_FILE_NAME};
use cairn_bitcoin::{lightning_seed_bytes, ChainError, ChainSource, RpcConfig, Seed, SeedError};

use ldk_node::lightning::chain::channelmonitor::BalanceSource;
pub use ldk_node::BalanceDetails;
use ldk_node::LightningBalance;

/// Directory of ldk-node's storage inside the data directory.
pub const LIGHTNING_DIR_NAME: &str = "lightning";
/// Default expiry of the invoices and offers this node issues: one hour.
pub const DEFAULT_INVOICE_EXPIRY_SECS: u32 = 3600;
/// How many new events a slow subscriber may lag behind before losing some.
const EVENT_CHANNEL_CAPACITY: usize = 256;
/// Pause after failing to record an event, before ldk-node re-delivers it.
const EVENT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long callers wait for a payment's outcome by default (the NWC service's
/// `pay_invoice`, the admin API's `pay` and `pay-offer`) before answering
/// "pending".
pub const DEFAULT_PAYMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause between two looks at a pending payment's record while
/// waiting: covers events a lagging subscriber lost.
pub const OUTCOME_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Why a failed payment failed, when neither ldk-node's record (it keeps the
/// status, not the reason) nor a `PaymentFailed` event seen while waiting
/// tells more.
const FAILED_REASON: &str = "no route worked or the recipient refused";

/// The reason LDK gives for a failed payment, in words.
pub fn failure_reason_text(reason: Option<PaymentFailureReason>) -> &'static str {
    use PaymentFailureReason as R;
    match reason {
        Some(R::RecipientRejected) => "the recipient rejected the payment",
        Some(R::UserAbandoned) => "the payment was abandoned",
        Some(R::RetriesExhausted) => {
            "every route tried failed (retries exhausted): not enough capacity along the way, or peers offline"
        }
        Some(R::PaymentExpired) => "the invoice expired",
        Some(R::RouteNotFound) => {
            "no route to the recipient with enough capacity"
        }
        Some(R::UnexpectedError) => "unexpected error in the Lightning node",
        Some(R::UnknownRequiredFeatures) => {
            "the invoice requires features this node does not support"
        }
        Some(R::InvoiceRequestExpired) => "the offer's issuer did not answer in time",
        Some(R::InvoiceRequestRejected) => "the offer's issuer rejected the request",
        Some(R::BlindedPathCreationFailed) => "no blinded path back to this node could be built",
        None => FAILED_REASON,
    }
}

/// How much [`LightningNode::withdraw`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Exactly this many satoshis (the fee comes on top).
    Sats(u64),
    /// Everything spendable, minus the fee (keeping the reserve that open
    /// anchor channels need).
    All,
}

/// Settings of the Lightning node.
#[derive(Debug, Clone)]
pub struct LightningConfig {
    /// Bitcoin network.
    pub network: Network,
    /// The node's data directory; ldk-node stores under `<data_dir>/lightning`.
    pub data_dir: PathBuf,
    /// Address the node accepts Lightning peer connections on.
    pub listening_address: SocketAddr,
    /// Bitcoin Core's RPC (an `http://host:port` URL).
    pub bitcoind: RpcConfig,
}

/// What an invoice says it is for.
#[derive(Debug, Clone)]
pub enum InvoiceDescription {
    /// A text description (BOLT11 `d` field).
    Text(String),
    /// The SHA-256 of a longer description (BOLT11 `h` field), e.g. a NIP-57 zap request.
    Hash(sha256::Hash),
}

/// What became of an outgoing payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Paid: the recipient released the preimage, the proof of payment.
    Succeeded {
        /// The preimage of the payment hash.
        preimage: PaymentPreimage,
        /// Routing fee paid, millisatoshis.
        fee_msat: u64,
    },
    /// Not paid, and no money moved; the invoice may be paid again.
    Failed {
        /// Why, as far as the node knows.
        reason: String,
    },
    /// Still in flight: it may yet succeed or fail, so whatever it would
    /// spend stays spoken for.
    Pending,
}

impl PaymentOutcome {
    /// The outcome a payment record shows. ldk-node records a success and its
    /// preimage in one update, so a success without a preimage is not one yet.
    pub fn of(payment: &PaymentDetails) -> Self {
        match payment.status {
            PaymentStatus::Succeeded => match preimage_of(payment) {
                Some(preimage) => Self::Succeeded {
                    preimage,
                    fee_msat: payment.fee_paid_msat.unwrap_or(0),
                },
                None => Self::Pending,
            },
            PaymentStatus::Failed => Self::Failed {
                reason: FAILED_REASON.to_owned(),
            },
            PaymentStatus::Pending => Self::Pending,
        }
    }
}

/// A payment sent by [`LightningNode::pay_and_wait`] or
/// [`LightningNode::pay_offer_and_wait`], as it stood when the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentPayment {
    /// ldk-node's id of the payment (for BOLT11, the payment hash's bytes).
    pub id: PaymentId,
    /// The payment hash, once known (a BOLT12 payment learns it from the
    /// invoice the offer's issuer sends back).
    pub payment_hash: Option<PaymentHash>,
    /// Amount sent to the recipient, routing fees not included.
    pub amount_msat: Option<u64>,
    /// What became of it.
    pub outcome: PaymentOutcome,
}

/// The payment hash of a payment record, if its kind has one (yet).
pub fn payment_hash_of(payment: &PaymentDetails) -> Option<PaymentHash> {
    match &payment.kind {
        PaymentKind::Bolt11 { hash, .. }
        | PaymentKind::Bolt11Jit { hash, .. }
        | PaymentKind::Spontaneous { hash, .. } => Some(*hash),
        PaymentKind::Bolt12Offer { hash, .. } | PaymentKind::Bolt12Refund { hash, .. } => *hash,
        PaymentKind::Onchain { .. } => None,
    }
}

/// The preimage of a payment record, once known.
pub fn preimage_of(payment: &PaymentDetails) -> Option<PaymentPreimage> {
    match &payment.kind {
        PaymentKind::Bolt11 { preimage, .. }
        | PaymentKind::Bolt11Jit { preimage, .. }
        | PaymentKind::Spontaneous { preimage, .. }
        | PaymentKind::Bolt12Offer { preimage, .. }
        | PaymentKind::Bolt12Refund { preimage, .. } => *preimage,
        PaymentKind::Onchain { .. } => None,
    }
}

/// [`LightningNode::channel_balance_sats`] of a balance report, as far as
/// the report alone tells: without the cooperative-close outputs that have
/// confirmed and await more confirmations.
pub fn channel_balance_sats(balances: &BalanceDetails) -> u64 {
    let coop_closed: u64 = balances
        .lightning_balances
        .iter()
        .map(|b| match b {
            LightningBalance::ClaimableAwaitingConfirmations {
                amount_satoshis,
                source: BalanceSource::CoopClose,
                ..
            } => *amount_satoshis,
            _ => 0,
        })
        .sum();
    balances
        .total_lightning_balance_sats
        .saturating_sub(coop_closed)
}

/// Lightning failures.
#[derive(Debug, thiserror::Error)]
pub enum LightningError {
    /// The seed could not be read or derived.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// The chain source's settings are unusable (e.g. an RPC URL without a port).
    #[error("chain source: {0}")]
    ChainSource(#[from] ChainError),
    /// ldk-node refused the configuration.
    #[error("building the Lightning node: {0}")]
    Build(#[from] BuildError),
    /// An ldk-node operation failed.
    #[error("Lightning node: {0}")]
    Node(#[from] NodeError),
    /// A payment could not be sent at all (nothing moved); why.
    #[error("payment not sent: {0}")]
    NotSent(String),
    /// The Lightning node's on-chain wallet cannot pay what was asked.
    #[error("the Lightning node's on-chain wallet has {spendable_sat} sat spendable; {needed}")]
    OnchainFunds {
        /// What it can spend now (anchor reserve excluded).
        spendable_sat: u64,
        /// What was needed, in words.
        needed: String,
    },
    /// An on-chain amount below the dust limit of the address.
    #[error("{amount_sat} sat is below the dust limit of {dust_limit_sat} sat for this address")]
    Dust {
        /// The amount asked for.
        amount_sat: u64,
        /// The smallest amount the address may receive.
        dust_limit_sat: u64,
    },
    /// The event store failed.
    #[error(transparent)]
    Events(#[from] EventStoreError),
    /// Creating the storage directory failed.
    #[error("Lightning storage {path}: {source}")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The invoice description is too long for BOLT11 (639 bytes); use a hash.
    #[error("invoice description is too long; use a description hash")]
    DescriptionTooLong,
    /// `start` was called on a running node, or `stop` on a stopped one.
    #[error("the Lightning node is {0}")]
    State(&'static str),
    /// An invoice without an amount, and no `amount_msat` to pay was given.
    #[error("the invoice has no amount: give the amount to pay")]
    AmountMissing,
    /// The `amount_msat` to pay differs from the invoice's own amount. Paying
    /// the invoice's amount instead would surprise the caller either way.
    #[error("the amount given ({asked_msat} msat) differs from the invoice's amount ({invoice_msat} msat)")]
    AmountMismatch {
        /// The invoice's amount.
        invoice_msat: u64,
        /// The amount asked for.
        asked_msat: u64,
    },
}

struct EventLoop {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running (or stopped) ldk-node with Cairn's event bookkeeping.
pub struct LightningNode {
    node: Arc<Node>,
    events: Arc<EventStore>,
    new_events: broadcast::Sender<Event>,
    /// Channels closed cooperatively (seen by this run's event loop): their
    /// closing transaction pays the on-chain wallet, which counts it while
    /// it is still unconfirmed.
    event_loop: Mutex<Option<EventLoop>>,
}

impl std::fmt::Debug for LightningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LightningNode")
            .field("node_id", &self.node.node_id())
            .finish()
    }
}

impl LightningNode {
    /// Builds the node (not started) on Bitcoin Core's RPC (`config.bitcoind`).
    /// Must run inside a multi-threaded tokio runtime.
    pub fn build(config: &LightningConfig, seed: &Seed) -> Result<Self, LightningError> {
        Self::build_on(
            config.network,
            &config.data_dir,
            config.listening_address,
            &ChainSource::BitcoindRpc(config.bitcoind.clone()),
            seed,
        )
    }

    /// Builds the node (not started) on `source`: Bitcoin Core RPC or
    /// Esplora (ldk-node's default background sync intervals either way).
    /// Must run inside a multi-threaded tokio runtime.
    pub fn build_on(
        network: Network,
        data_dir: &std::path::Path,
        listening_address: SocketAddr,
        source: &ChainSource,
        seed: &Seed,
    ) -> Result<Self, LightningError> {
        let dir = data_dir.join(LIGHTNING_DIR_NAME);
        std::fs::create_dir_all(&dir).map_err(|source| LightningError::Storage {
            path: dir.clone(),
            source,
        })?;
        let mut builder = Builder::new();
        builder
            .set_network(network)
            .set_storage_dir_path(dir.to_string_lossy().into_owned())
            .set_entropy_seed_bytes(lightning_seed_bytes(seed, network)?);
        match source {
            ChainSource::BitcoindRpc(rpc) => {
                let (host, port) = rpc.host_port()?;
                builder.set_chain_source_bitcoind_rpc(
                    host,
                    port,
                    rpc.user.clone(),
                    rpc.password.clone(),
                )
            }
            ChainSource::Esplora { url } => builder.set_chain_source_esplora(url.clone(), None),
        };
        builder.set_listening_addresses(vec![SocketAddress::from(listening_address)])?;
        let node = Arc::new(builder.build()?);
        let events = Arc::new(EventStore::open(&dir.join(EVENTS_DB_FILE_NAME))?);
        let (new_events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        Ok(Self {
            node,
            events,
            new_events,
            event_loop: Mutex::new(None),
        })
    }

    /// Starts ldk-node and the event loop.
    pub fn start(&self) -> Result<(), LightningError> {
        let mut slot = self.event_loop.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(LightningError::State("already running"));
        }
        self.node.start()?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_events(
            Arc::clone(&self.node),
            Arc::clone(&self.events),
            self.new_events.clone(),
            stop_rx,
        ));
        *slot = Some(EventLoop { stop, task });
        info!(node_id = %self.node.node_id(), "Lightning node started");
        Ok(())
    }

    /// Stops the event loop (after the event in hand, if any) and ldk-node.
    pub async fn stop(&self) -> Result<(), LightningError> {
        let ev = self
            .event_loop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(LightningError::State("not running"))?;
        let _ = ev.stop.send(true);
        let _ = ev.task.await;
        self.node.stop()?;
        Ok(())
    }

    /// The node's public key.
    pub fn node_id(&self) -> PublicKey {
        self.node.node_id()
    }

    /// The address peers reach this node at (the configured listening address).
    pub fn listening_address(&self) -> Option<SocketAddress> {
        self.node.listening_addresses()?.into_iter().next()
    }

    /// The underlying ldk-node, for what this wrapper does not cover.
    pub fn inner(&self) -> &Arc<Node> {
        &self.node
    }

    /// Syncs the Lightning and on-chain state with the chain source now,
    /// instead of waiting for ldk-node's background interval.
    pub fn sync_wallets(&self) -> Result<(), LightningError> {
        Ok(self.node.sync_wallets()?)
    }

    /// A new address of the Lightning node's own on-chain wallet (which funds channels).
    pub fn funding_address(&self) -> Result<Address, LightningError> {
        Ok(self.node.onchain_payment().new_address()?)
    }

    /// Sends from the Lightning node's on-chain wallet (where channel
    /// closes pay out) to `address`: a withdrawal to any other wallet. Never
    /// spends the reserve that open anchor channels need. Sync first
    /// ([`Self::sync_wallets`]) so the latest coins are known.
    pub fn withdraw(
        &self,
        address: &Address,
        amount: Withdrawal,
        fee_rate: Option<FeeRate>,
    ) -> Result<Txid, LightningError> {
        let spendable_sat = self.node.list_balances().spendable_onchain_balance_sats;
        let onchain = self.node.onchain_payment();
        let sent = match amount {
            Withdrawal::Sats(amount_sat) => {
                let dust_limit_sat = address.script_pubkey().minimal_non_dust().to_sat();
                if amount_sat < dust_limit_sat {
                    return Err(LightningError::Dust {
                        amount_sat,
                        dust_limit_sat,
                    });
                }
                if amount_sat > spendable_sat {
                    return Err(LightningError::OnchainFunds {
                        spendable_sat,
                        needed: format!("{amount_sat} sat plus the fee asked"),
                    });
                }
                onchain.send_to_address(address, amount_sat, fee_rate)
            }
            Withdrawal::All => {
                if spendable_sat == 0 {
                    return Err(LightningError::OnchainFunds {
                        spendable_sat,
                        needed: "nothing to withdraw".to_owned(),
                    });
                }
                onchain.send_all_to_address(address, true, fee_rate)
            }
        };
        sent.map_err(|e| match e {
            NodeError::InsufficientFunds => LightningError::OnchainFunds {
                spendable_sat,
                needed: "not enough for the amount and the fee".to_owned(),
            },
            e => e.into(),
        })
    }

    /// What the node's channels hold for it, satoshis, each sat counted
    /// once: ldk-node's `total_lightning_balance_sats` without the
    /// cooperative-close outputs that await their confirmations
    /// (`ClaimableAwaitingConfirmations` with `BalanceSource::CoopClose`).
    /// Those pay straight to the Lightning node's on-chain wallet, so once
    /// the closing transaction confirms they are in
    /// `total_onchain_balance_sats` already, for the ~6 blocks ldk-node
    /// keeps listing them.
    ///
    /// Before the closing transaction confirms, ldk-node lists the closed
    /// channel's balance as `ClaimableOnChannelClose` while the on-chain
    /// wallet already counts the unconfirmed output: a channel this node saw
    /// close cooperatively (and no longer open) is left out then too.
    pub fn channel_balance_sats(&self) -> u64 {
        let balances = self.node.list_balances();
        let open: HashSet<ChannelId> = self
            .node
            .list_channels()
            .into_iter()
            .map(|c| c.channel_id)
            .collect();
        let closing: u64 = {
            // The event store is the one record of which closes were
            // cooperative, so this holds after a restart too. Unreadable, the
            // sum errs towards counting the channel (as ldk-node does).
            let coop = self.events.cooperatively_closed().unwrap_or_default();
            balances
                .lightning_balances
                .iter()
                .map(|b| match b {
                    LightningBalance::ClaimableOnChannelClose {
                        channel_id,
                        amount_satoshis,
                        ..
                    } if coop.contains(&channel_id.to_string()) && !open.contains(channel_id) => {
                        *amount_satoshis
                    }
                    _ => 0,
                })
                .sum()
        };
        channel_balance_sats(&balances).saturating_sub(closing)
    }

    /// The address of the live connection to `peer`, if there is one: an
    /// `open_channel` to a connected peer uses that connection and does not
    /// try the address it is given.
    pub fn connected_address(&self, peer: &PublicKey) -> Option<SocketAddress> {
        self.node
            .list_peers()
            .into_iter()
            .find(|p| p.node_id == *peer && p.is_connected)
            .map(|p| p.address)
    }

    /// Connects to `peer` at `address` and opens an unannounced (private)
    /// channel of `amount_sats`, pushing `push_msat` to the peer.
    pub fn open_channel(
        &self,
        peer: PublicKey,
        address: SocketAddress,
        amount_sats: u64,
        push_msat: Option<u64>,
    ) -> Result<UserChannelId, LightningError> {
        Ok(self
            .node
            .open_channel(peer, address, amount_sats, push_msat, None)?)
    }

    /// The node's channels.
    pub fn list_channels(&self) -> Vec<ChannelDetails> {
        self.node.list_channels()
    }

    /// Closes a channel cooperatively.
    pub fn close_channel(
        &self,
        channel: &UserChannelId,
        peer: PublicKey,
    ) -> Result<(), LightningError> {
        Ok(self.node.close_channel(channel, peer)?)
    }

    /// Force-closes a channel: our latest commitment goes on-chain and our funds
    /// come back after the timelock.
    pub fn force_close_channel(
        &self,
        channel: &UserChannelId,
        peer: PublicKey,
        reason: Option<String>,
    ) -> Result<(), LightningError> {
        Ok(self.node.force_close_channel(channel, peer, reason)?)
    }

    /// A BOLT11 invoice for `amount_msat` (or any amount when `None`).
    pub fn receive_bolt11(
        &self,
        amount_msat: Option<u64>,
        description: &InvoiceDescription,
        expiry_secs: u32,
    ) -> Result<Bolt11Invoice, LightningError> {
        let description = match description {
            InvoiceDescription::Text(text) => Bolt11InvoiceDescription::Direct(
                Description::new(text.clone()).map_err(|_| LightningError::DescriptionTooLong)?,
            ),
            InvoiceDescription::Hash(hash) => Bolt11InvoiceDescription::Hash(Sha256(*hash)),
        };
        let bolt11 = self.node.bolt11_payment();
        Ok(match amount_msat {
            Some(amount) => bolt11.receive(amount, &description, expiry_secs)?,
            None => bolt11.receive_variable_amount(&description, expiry_secs)?,
        })
    }

    /// Pays a BOLT11 invoice without waiting; the outcome arrives as a
    /// `PaymentSuccessful` or `PaymentFailed` event and in [`Self::payment`].
    /// [`Self::pay_and_wait`] pays and waits.
    pub fn pay_bolt11(&self, invoice: &Bolt11Invoice) -> Result<PaymentId, LightningError> {
        Ok(self.node.bolt11_payment().send(invoice, None)?)
    }

    /// A BOLT12 offer for `amount_msat` (or any amount when `None`).
    pub fn receive_offer(
        &self,
        amount_msat: Option<u64>,
        description: &str,
        expiry_secs: Option<u32>,
    ) -> Result<Offer, LightningError> {
        let bolt12 = self.node.bolt12_payment();
        Ok(match amount_msat {
            Some(amount) => bolt12.receive(amount, description, expiry_secs, None)?,
            None => bolt12.receive_variable_amount(description, expiry_secs)?,
        })
    }

    /// Pays a BOLT12 offer (`amount_msat` is required when the offer has no amount).
    pub fn pay_offer(
        &self,
        offer: &Offer,
        amount_msat: Option<u64>,
        payer_note: Option<String>,
    ) -> Result<PaymentId, LightningError> {
        let bolt12 = self.node.bolt12_payment();
        Ok(match amount_msat {
            Some(amount) => bolt12.send_using_amount(offer, amount, None, payer_note, None)?,
            None => bolt12.send(offer, None, payer_note, None)?,
        })
    }

    /// Pays a BOLT11 invoice once and waits up to `timeout` for the outcome
    /// (see the module docs on paying). `amount_msat` is required for an
    /// invoice without an amount and must match the invoice's otherwise;
    /// `max_fee_msat` caps the routing fee (ldk's own default cap otherwise).
    /// An error means nothing was sent.
    pub async fn pay_and_wait(
        &self,
        invoice: &Bolt11Invoice,
        amount_msat: Option<u64>,
        max_fee_msat: Option<u64>,
        timeout: Duration,
    ) -> Result<SentPayment, LightningError> {
        // The router never picks a route costing more than the cap in fees.
        let route = max_fee_msat
            .map(|max| RouteParametersConfig::default().with_max_total_routing_fee_msat(max));
        if invoice.is_expired() {
            return Err(LightningError::NotSent(
                failure_reason_text(Some(PaymentFailureReason::PaymentExpired)).to_owned(),
            ));
        }
        let amount = invoice.amount_milli_satoshis().or(amount_msat);
        self.send_and_wait(amount, timeout, || {
            let bolt11 = self.node.bolt11_payment();
            Ok(match (invoice.amount_milli_satoshis(), amount_msat) {
                (Some(own), Some(asked)) if own != asked => {
                    return Err(LightningError::AmountMismatch {
                        invoice_msat: own,
                        asked_msat: asked,
                    })
                }
                (Some(_), _) => bolt11.send(invoice, route)?,
                (None, Some(amount)) => bolt11.send_using_amount(invoice, amount, route)?,
                (None, None) => return Err(LightningError::AmountMissing),
            })
        })
        .await
    }

    /// Pays a BOLT12 offer once (`amount_msat` is required when the offer has
    /// no amount) and waits up to `timeout` for the outcome, like
    /// [`Self::pay_and_wait`].
    pub async fn pay_offer_and_wait(
        &self,
        offer: &Offer,
        amount_msat: Option<u64>,
        payer_note: Option<String>,
        timeout: Duration,
    ) -> Result<SentPayment, LightningError> {
        self.send_and_wait(amount_msat, timeout, || {
            self.pay_offer(offer, amount_msat, payer_note)
        })
        .await
    }

    /// What became of the outgoing payment with `hash` (sent by this node,
    /// possibly before a restart), waiting up to `wait` while it is pending
    /// (`Duration::ZERO`: as it stands now). `None` when this node never sent
    /// one, so paying it now cannot pay twice.
    pub async fn payment_outcome(
        &self,
        hash: &PaymentHash,
        wait: Duration,
    ) -> Option<PaymentOutcome> {
        let events = self.subscribe();
        let sent = self
            .payment_by_hash(hash)
            .filter(|p| p.direction == PaymentDirection::Outbound)?;
        let (last, reason) = self.wait_settled(&sent.id, events, wait).await;
        Some(outcome_with_reason(last.as_ref(), reason))
    }

    /// The payment (either way, any kind) with payment hash `hash`.
    pub fn payment_by_hash(&self, hash: &PaymentHash) -> Option<PaymentDetails> {
        // ldk-node keys BOLT11 payments by their hash; others are found by scanning.
        self.node.payment(&PaymentId(hash.0)).or_else(|| {
            self.node
                .list_payments()
                .into_iter()
                .find(|p| payment_hash_of(p) == Some(*hash))
        })
    }

    /// Sends with `send` and waits for the outcome; what the payment record
    /// says when the wait ends.
    async fn send_and_wait(
        &self,
        amount_msat: Option<u64>,
        timeout: Duration,
        send: impl FnOnce() -> Result<PaymentId, LightningError>,
    ) -> Result<SentPayment, LightningError> {
        // Subscribed before sending, so the outcome's event cannot slip past.
        let events = self.subscribe();
        let id = match send() {
            Ok(id) => id,
            // ldk-node says only "Failed to send the given payment" when LDK
            // found no route (or the onion would not fit): name what this
            // node's channels can send, which is the usual cause.
            Err(LightningError::Node(NodeError::PaymentSendingFailed)) => {
                return Err(LightningError::NotSent(self.why_not_sent(amount_msat)))
            }
            Err(e) => return Err(e),
        };
        let (last, reason) = self.wait_settled(&id, events, timeout).await;
        Ok(SentPayment {
            id,
            payment_hash: last.as_ref().and_then(payment_hash_of),
            amount_msat: last.as_ref().and_then(|p| p.amount_msat),
            outcome: outcome_with_reason(last.as_ref(), reason),
        })
    }

    /// Why LDK found no route for `amount_msat`, as far as this node's own
    /// channels tell.
    fn why_not_sent(&self, amount_msat: Option<u64>) -> String {
        let channels = self.node.list_channels();
        let usable: Vec<&ChannelDetails> = channels.iter().filter(|c| c.is_usable).collect();
        if usable.is_empty() {
            return if channels.is_empty() {
                "no route: this node has no channels".to_owned()
            } else {
                "no route: none of this node's channels is usable yet (waiting for confirmations, or the peer is offline)".to_owned()
            };
        }
        let max_htlc = usable
            .iter()
            .map(|c| c.next_outbound_htlc_limit_msat)
            .max()
            .unwrap_or(0);
        let total: u64 = usable.iter().map(|c| c.outbound_capacity_msat).sum();
        match amount_msat {
            Some(amount) if amount > max_htlc => format!(
                "insufficient capacity: {amount} msat asked, but this node's channels can send at most {max_htlc} msat in one payment now ({total} msat outbound in all)"
            ),
            _ => format!(
                "{} (this node's channels can send up to {max_htlc} msat now)",
                failure_reason_text(Some(PaymentFailureReason::RouteNotFound))
            ),
        }
    }

    /// Waits up to `timeout` for payment `id` to settle; its last record,
    /// and the reason of a `PaymentFailed` event for it seen meanwhile.
    async fn wait_settled(
        &self,
        id: &PaymentId,
        mut events: broadcast::Receiver<Event>,
        timeout: Duration,
    ) -> (Option<PaymentDetails>, Option<PaymentFailureReason>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reason = None;
        loop {
            let record = self.node.payment(id);
            let settled = record
                .as_ref()
                .is_some_and(|p| PaymentOutcome::of(p) != PaymentOutcome::Pending);
            let now = tokio::time::Instant::now();
            if settled || now >= deadline {
                if settled && reason.is_none() {
                    // The event may be queued behind the record's update.
                    while let Ok(ev) = events.try_recv() {
                        reason = reason.or(failure_of(&ev, id));
                    }
                }
                let failed = record.as_ref().is_some_and(|p| {
                    matches!(PaymentOutcome::of(p), PaymentOutcome::Failed { .. })
                });
                if failed && reason.is_none() {
                    // It failed before this wait (or before a restart): the
                    // reason recorded from its event, if it was seen.
                    reason = record
                        .as_ref()
                        .and_then(payment_hash_of)
                        .and_then(|h| self.events.failure_reason(&h.to_string()).ok().flatten());
                }
                return (record, reason);
            }
            // Any event may be the one (and a lagging receiver skips some):
            // the record decides either way.
            let pause = OUTCOME_POLL_INTERVAL.min(deadline - now);
            if let Ok(Ok(ev)) = tokio::time::timeout(pause, events.recv()).await {
                reason = reason.or(failure_of(&ev, id));
            }
        }
    }

    /// On-chain and Lightning balances, as ldk-node reports them (see
    /// [`Self::channel_balance_sats`] for a sum that counts each sat once).
    pub fn balances(&self) -> BalanceDetails {
        self.node.list_balances()
    }

    /// One payment, by id.
    pub fn payment(&self, id: &PaymentId) -> Option<PaymentDetails> {
        self.node.payment(id)
    }

    /// Every payment ldk-node knows (sent and received, any state).
    pub fn list_payments(&self) -> Vec<PaymentDetails> {
        self.node.list_payments()
    }

    /// Events handled from now on; subscribe before the action you wait for.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.new_events.subscribe()
    }

    /// Every event handled so far, across restarts, oldest first.
    pub fn handled_events(&self) -> Result<Vec<HandledEvent>, LightningError> {
        Ok(self.events.list()?)
    }
}

/// The reason of a `PaymentFailed` event for payment `id`.
fn failure_of(event: &Event, id: &PaymentId) -> Option<PaymentFailureReason> {
    match event {
        Event::PaymentFailed {
            payment_id: Some(p),
            reason,
            ..
        } if p == id => *reason,
        _ => None,
    }
}

/// A record's outcome, a failure carrying LDK's reason when one is known.
fn outcome_with_reason(
    record: Option<&PaymentDetails>,
    reason: Option<PaymentFailureReason>,
) -> PaymentOutcome {
    match record.map(PaymentOutcome::of) {
        None => PaymentOutcome::Pending,
        Some(PaymentOutcome::Failed { .. }) => PaymentOutcome::Failed {
            reason: failure_reason_text(reason).to_owned(),
        },
        Some(o) => o,
    }
}

impl Drop for LightningNode {
    fn drop(&mut self) {
        // The event loop holds a reference to the node; ending it lets the
        // last reference go, and ldk-node stops itself when dropped.
        if let Some(ev) = self
            .event_loop
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = ev.stop.send(true);
        }
    }
}

/// Takes each ldk-node event, records it once, tells subscribers about new
/// ones, then acknowledges it so ldk-node drops it from its persisted queue.
async fn run_events(
    node: Arc<Node>,
    store: Arc<EventStore>,
    new_events: broadcast::Sender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = node.next_event_async() => event,
        };
        let store2 = Arc::clone(&store);
        let ev2 = event.clone();
        let recorded = tokio::task::spawn_blocking(move || store2.record(&ev2)).await;
        match recorded {
            Ok(Ok(Some(rec))) => {
                info!(kind = %rec.kind, id = %rec.id, "Lightning event");
                let _ = new_events.send(event);
            }
            Ok(Ok(None)) => debug!("Lightning event re-delivered; already handled"),
            Ok(Err(e)) => {
                // Not acknowledged: ldk-node hands it out again.
                warn!(error = %e, "cannot record a Lightning event; retrying");
                tokio::time::sleep(EVENT_RETRY_DELAY).await;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "event recording task failed; retrying");
                tokio::time::sleep(EVENT_RETRY_DELAY).await;
                continue;
            }
        }
        if let Err(e) = node.event_handled() {
            warn!(error = %e, "ldk-node could not mark an event handled");
        }
    }
}
