//! The Lightning wallet as the NWC ([`crate::nwc`]) and zap ([`crate::zap`])
//! services see it: a small trait, [`WalletBackend`], its error, and its
//! implementation for [`LightningNode`].
//!
//! The implementation adds no payment logic of its own: paying, waiting and
//! "what became of payment H" are [`LightningNode::pay_and_wait`] and
//! [`LightningNode::payment_outcome`], whose docs say how a payment is made
//! exactly once and what a timeout leaves behind.

use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use ldk_node::lightning_invoice::Bolt11Invoice;
use ldk_node::lightning_types::payment::PaymentHash;
use ldk_node::payment::{PaymentDetails, PaymentDirection, PaymentKind, PaymentStatus};

use crate::lightning::{
    InvoiceDescription, LightningError, LightningNode, PaymentOutcome, DEFAULT_PAYMENT_TIMEOUT,
};

/// Wallet failures, as the NWC service maps them to NIP-47 codes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The payment was attempted and failed (`PAYMENT_FAILED`).
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// The outcome is not known yet; the amount stays reserved.
    #[error("payment still pending")]
    Pending,
    /// The request was malformed (`OTHER`).
    #[error("{0}")]
    BadRequest(String),
    /// Anything else (`INTERNAL`).
    #[error("wallet: {0}")]
    Internal(String),
}

impl From<LightningError> for BackendError {
    fn from(e: LightningError) -> Self {
        BackendError::Internal(e.to_string())
    }
}

/// A settled outgoing payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    /// The preimage, hex.
    pub preimage: String,
    /// Routing fee paid, millisatoshis.
    pub fee_msat: u64,
}

/// A freshly issued invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingInvoice {
    /// BOLT11 string.
    pub invoice: String,
    /// Payment hash, hex.
    pub payment_hash: String,
    /// Unix time of creation.
    pub created_at: u64,
    /// Unix time of expiry.
    pub expires_at: u64,
}

/// One Lightning payment, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletTx {
    /// Incoming (received) or outgoing (sent).
    pub incoming: bool,
    /// Payment hash, hex.
    pub payment_hash: String,
    /// Preimage, hex, once known.
    pub preimage: Option<String>,
    /// Amount in millisatoshis.
    pub amount_msat: u64,
    /// Fee paid, millisatoshis.
    pub fee_msat: u64,
    /// Pending, succeeded or failed.
    pub status: PaymentStatus,
    /// Unix time of the last update (ldk-node keeps no creation time).
    pub updated_at: u64,
}

/// What the NWC and zap services need from a wallet.
#[async_trait::async_trait]
pub trait WalletBackend: Send + Sync + 'static {
    /// Pays `invoice` once (with `amount_msat` when the invoice has none),
    /// paying at most `max_fee_msat` in routing fees, and waits up to
    /// [`DEFAULT_PAYMENT_TIMEOUT`] for the outcome: `Err(Pending)` when it
    /// is still in flight then (it is not abandoned).
    async fn pay_invoice(
        &self,
        invoice: &Bolt11Invoice,
        amount_msat: Option<u64>,
        max_fee_msat: u64,
    ) -> Result<Paid, BackendError>;
    /// Issues an invoice.
    async fn make_invoice(
        &self,
        amount_msat: u64,
        description: &InvoiceDescription,
        expiry_secs: u32,
    ) -> Result<IncomingInvoice, BackendError>;
    /// One payment by hash (hex).
    async fn lookup(&self, payment_hash: &str) -> Result<Option<WalletTx>, BackendError>;
    /// Every Lightning payment.
    async fn list(&self) -> Result<Vec<WalletTx>, BackendError>;
    /// Spendable Lightning balance, millisatoshis.
    async fn balance_msat(&self) -> Result<u64, BackendError>;
    /// Node public key (hex) and network name.
    fn info(&self) -> (String, String);

    /// The outcome of an outgoing payment with `payment_hash` (hex) sent
    /// earlier, possibly before a restart, waiting up to `wait` while it is
    /// pending. `Ok(None)` when the wallet never sent one (so paying now
    /// cannot pay twice); `Err(Pending)` when it is still in flight.
    async fn sent_payment_outcome(
        &self,
        payment_hash: &str,
        wait: Duration,
    ) -> Result<Option<Paid>, BackendError>;
}

/// A payment's outcome as the services take it: paid, or why not (yet).
fn paid(outcome: PaymentOutcome) -> Result<Paid, BackendError> {
    match outcome {
        PaymentOutcome::Succeeded { preimage, fee_msat } => Ok(Paid {
            preimage: hex::encode(preimage.0),
            fee_msat,
        }),
        PaymentOutcome::Failed { reason } => Err(BackendError::PaymentFailed(reason)),
        PaymentOutcome::Pending => Err(BackendError::Pending),
    }
}

/// A payment hash given as hex; `None` when it is not one.
fn parse_hash(payment_hash: &str) -> Option<PaymentHash> {
    let hash = payment_hash.parse::<sha256::Hash>().ok()?;
    Some(PaymentHash(hash.to_byte_array()))
}

fn to_wallet_tx(p: &PaymentDetails) -> Option<WalletTx> {
    let PaymentKind::Bolt11 { hash, preimage, .. } = &p.kind else {
        return None;
    };
    Some(WalletTx {
        incoming: p.direction == PaymentDirection::Inbound,
        payment_hash: hex::encode(hash.0),
        preimage: preimage.map(|pi| hex::encode(pi.0)),
        amount_msat: p.amount_msat.unwrap_or(0),
        fee_msat: p.fee_paid_msat.unwrap_or(0),
        status: p.status,
        updated_at: p.latest_update_timestamp,
    })
}

#[async_trait::async_trait]
impl WalletBackend for LightningNode {
    async fn pay_invoice(
        &self,
        invoice: &Bolt11Invoice,
        amount_msat: Option<u64>,
        max_fee_msat: u64,
    ) -> Result<Paid, BackendError> {
        let sent = self
            .pay_and_wait(
                invoice,
                amount_msat,
                Some(max_fee_msat),
                DEFAULT_PAYMENT_TIMEOUT,
            )
            .await
            .map_err(|e| match e {
                LightningError::AmountMissing | LightningError::AmountMismatch { .. } => {
                    BackendError::BadRequest(e.to_string())
                }
                // Refused before anything was sent (no route, no funds, a
                // duplicate): nothing moved, so the payment failed.
                LightningError::Node(e) => BackendError::PaymentFailed(e.to_string()),
                other => BackendError::PaymentFailed(other.to_string()),
            })?;
        paid(sent.outcome)
    }

    async fn sent_payment_outcome(
        &self,
        payment_hash: &str,
        wait: Duration,
    ) -> Result<Option<Paid>, BackendError> {
        let Some(hash) = parse_hash(payment_hash) else {
            return Ok(None);
        };
        self.payment_outcome(&hash, wait)
            .await
            .map(paid)
            .transpose()
    }

    async fn make_invoice(
        &self,
        amount_msat: u64,
        description: &InvoiceDescription,
        expiry_secs: u32,
    ) -> Result<IncomingInvoice, BackendError> {
        let inv = self
            .receive_bolt11(Some(amount_msat), description, expiry_secs)
            .map_err(|e| match e {
                LightningError::DescriptionTooLong => BackendError::BadRequest(e.to_string()),
                other => other.into(),
            })?;
        let created_at = inv.duration_since_epoch().as_secs();
        Ok(IncomingInvoice {
            invoice: inv.to_string(),
            payment_hash: hex::encode(inv.payment_hash().to_byte_array()),
            created_at,
            expires_at: created_at + inv.expiry_time().as_secs(),
        })
    }

    async fn lookup(&self, payment_hash: &str) -> Result<Option<WalletTx>, BackendError> {
        Ok(parse_hash(payment_hash)
            .and_then(|hash| self.payment_by_hash(&hash))
            .as_ref()
            .and_then(to_wallet_tx))
    }

    async fn list(&self) -> Result<Vec<WalletTx>, BackendError> {
        Ok(self
            .list_payments()
            .iter()
            .filter_map(to_wallet_tx)
            .collect())
    }

    async fn balance_msat(&self) -> Result<u64, BackendError> {
        // Each sat once: a cooperative close's output awaiting confirmations
        // is in the on-chain wallet already.
        Ok(self.channel_balance_sats() * 1000)
    }

    fn info(&self) -> (String, String) {
        (
            self.node_id().to_string(),
            self.inner().config().network.to_string(),
        )
    }
}
