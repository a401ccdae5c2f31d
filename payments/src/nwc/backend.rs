//! The wallet behind the NWC service, as a small trait, and its
//! implementation for [`LightningNode`].

use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use ldk_node::lightning::ln::channelmanager::PaymentId;
use ldk_node::lightning::routing::router::RouteParametersConfig;
use ldk_node::lightning_invoice::Bolt11Invoice;
use ldk_node::payment::{PaymentDetails, PaymentDirection, PaymentKind, PaymentStatus};
use ldk_node::Event;

use crate::lightning::{InvoiceDescription, LightningError, LightningNode};

/// How long `pay_invoice` waits for the payment's outcome.
pub const DEFAULT_PAYMENT_TIMEOUT: Duration = Duration::from_secs(60);

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
pub struct PaymentOutcome {
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

/// What the NWC service needs from a wallet.
#[async_trait::async_trait]
pub trait WalletBackend: Send + Sync + 'static {
    /// Pays `invoice` (with `amount_msat` when the invoice has none), paying
    /// at most `max_fee_msat` in routing fees, and waits for the outcome.
    async fn pay_invoice(
        &self,
        invoice: &Bolt11Invoice,
        amount_msat: Option<u64>,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, BackendError>;
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
    ) -> Result<Option<PaymentOutcome>, BackendError> {
        let start = tokio::time::Instant::now();
        loop {
            match self.lookup(payment_hash).await? {
                Some(tx) if !tx.incoming => match tx.status {
                    PaymentStatus::Succeeded => {
                        return Ok(Some(PaymentOutcome {
                            preimage: tx.preimage.unwrap_or_default(),
                            fee_msat: tx.fee_msat,
                        }))
                    }
                    PaymentStatus::Failed => {
                        return Err(BackendError::PaymentFailed(
                            "no route or the recipient refused".into(),
                        ))
                    }
                    PaymentStatus::Pending if start.elapsed() >= wait => {
                        return Err(BackendError::Pending)
                    }
                    PaymentStatus::Pending => {}
                },
                _ => return Ok(None),
            }
            tokio::time::sleep(OUTCOME_POLL_INTERVAL).await;
        }
    }
}

/// How often [`WalletBackend::sent_payment_outcome`] looks at a pending payment.
const OUTCOME_POLL_INTERVAL: Duration = Duration::from_millis(200);

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
    ) -> Result<PaymentOutcome, BackendError> {
        // Subscribe before sending so the outcome cannot slip past.
        let mut events = self.subscribe();
        // The router never picks a route costing more than the budget holds
        // for fees (ldk's own default would be 1% + 50 sat).
        let route =
            Some(RouteParametersConfig::default().with_max_total_routing_fee_msat(max_fee_msat));
        let bolt11 = self.inner().bolt11_payment();
        let sent = match (invoice.amount_milli_satoshis(), amount_msat) {
            (Some(_), _) => bolt11.send(invoice, route),
            (None, Some(a)) => bolt11.send_using_amount(invoice, a, route),
            (None, None) => {
                return Err(BackendError::BadRequest(
                    "invoice has no amount and none was given".into(),
                ))
            }
        };
        let id = sent.map_err(|e| BackendError::PaymentFailed(e.to_string()))?;
        let outcome = |id: &PaymentId| -> Option<Result<PaymentOutcome, BackendError>> {
            let p = self.payment(id)?;
            match p.status {
                PaymentStatus::Succeeded => {
                    let preimage = match &p.kind {
                        PaymentKind::Bolt11 {
                            preimage: Some(pi), ..
                        } => hex::encode(pi.0),
                        _ => return None,
                    };
                    Some(Ok(PaymentOutcome {
                        preimage,
                        fee_msat: p.fee_paid_msat.unwrap_or(0),
                    }))
                }
                PaymentStatus::Failed => Some(Err(BackendError::PaymentFailed(
                    "no route or the recipient refused".into(),
                ))),
                PaymentStatus::Pending => None,
            }
        };
        let wait = async {
            loop {
                if let Some(r) = outcome(&id) {
                    return r;
                }
                match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
                    Ok(Ok(Event::PaymentSuccessful { payment_id, .. }))
                    | Ok(Ok(Event::PaymentFailed { payment_id, .. }))
                        if payment_id == Some(id) => {}
                    _ => {}
                }
            }
        };
        tokio::time::timeout(DEFAULT_PAYMENT_TIMEOUT, wait)
            .await
            .unwrap_or(Err(BackendError::Pending))
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
        let Ok(hash) = payment_hash.parse::<sha256::Hash>() else {
            return Ok(None);
        };
        // ldk-node keys BOLT11 payments by their hash.
        if let Some(p) = self.payment(&PaymentId(hash.to_byte_array())) {
            return Ok(to_wallet_tx(&p));
        }
        Ok(self
            .list_payments()
            .iter()
            .filter_map(to_wallet_tx)
            .find(|t| t.payment_hash == payment_hash))
    }

    async fn list(&self) -> Result<Vec<WalletTx>, BackendError> {
        Ok(self
            .list_payments()
            .iter()
            .filter_map(to_wallet_tx)
            .collect())
    }

    async fn balance_msat(&self) -> Result<u64, BackendError> {
        Ok(self.balances().total_lightning_balance_sats * 1000)
    }

    fn info(&self) -> (String, String) {
        (
            self.node_id().to_string(),
            self.inner().config().network.to_string(),
        )
    }
}
