//! Payments carried inside NIP-17 private messages: the tags a sender puts in
//! the kind-14 rumor, and how a recipient checks them.
//!
//! Grammar (docs/payments-in-messages.md is the reference; exactly these
//! shapes, three elements each, at most one tag of each name per rumor):
//!
//! ```text
//! ["payment", "lightning", "<BOLT11 invoice, lowercase>"]
//! ["receipt", "preimage",  "<payment preimage, 64 lowercase hex digits>"]
//!
//! ["payment", "onchain",   "<BIP21 URI: bitcoin:<address>?amount=<BTC>>"]
//! ["receipt", "txid",      "<transaction id, 64 lowercase hex digits>"]
//! ```
//!
//! A receipt claims nothing by itself: a sender can paste any invoice and any
//! preimage, or any txid. So a payment is only reported as paid when the
//! recipient's own node says it received it ([`NodeReport`]); a receipt that
//! is merely consistent (the preimage hashes to the invoice's payment hash) is
//! [`Verification::Unconfirmed`], and anything else
//! [`Verification::Unverified`] with the reason.
//!
//! Everything here is pure: parsing, building and checking. Fetching invoices
//! and asking the node are the caller's business (the `cairn msg` commands).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bitcoin::address::NetworkUnchecked;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Amount, Denomination, Network, Txid};
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescriptionRef};
use nostr::{Tag, TagKind};

/// Name of the tag carrying the payment request.
pub const PAYMENT_TAG: &str = "payment";
/// Name of the tag carrying the proof of payment.
pub const RECEIPT_TAG: &str = "receipt";
/// `payment` method: a BOLT11 invoice.
pub const LIGHTNING: &str = "lightning";
/// `payment` method: a BIP21 URI.
pub const ONCHAIN: &str = "onchain";
/// `receipt` type proving a Lightning payment.
pub const PREIMAGE: &str = "preimage";
/// `receipt` type proving an on-chain payment.
pub const TXID: &str = "txid";

/// Why a payment in a message is malformed or does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagePaymentError {
    /// A `payment` or `receipt` tag does not follow the grammar.
    #[error("malformed `{tag}` tag: {reason}")]
    MalformedTag {
        /// `payment` or `receipt`.
        tag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// More than one tag of a name; which one counts would be ambiguous.
    #[error("more than one `{0}` tag")]
    DuplicateTag(&'static str),
    /// A `receipt` tag without a `payment` tag.
    #[error("a receipt without a payment")]
    ReceiptWithoutPayment,
    /// A `payment` tag without a `receipt` tag.
    #[error("the {method} payment carries no receipt")]
    MissingReceipt {
        /// The payment's method.
        method: Method,
    },
    /// The receipt's type does not prove this payment's method.
    #[error("a `{receipt}` receipt cannot prove a {method} payment")]
    ReceiptMismatch {
        /// The payment's method.
        method: Method,
        /// The receipt's type.
        receipt: &'static str,
    },
    /// The invoice does not parse.
    #[error("invalid invoice: {0}")]
    InvalidInvoice(String),
    /// An amountless invoice: nothing says how much was meant.
    #[error("the invoice has no amount")]
    InvoiceWithoutAmount,
    /// The invoice or address is for another Bitcoin network.
    #[error("the {what} is for {found}, not {expected}")]
    WrongNetwork {
        /// `invoice` or `address`.
        what: &'static str,
        /// The network in use.
        expected: Network,
        /// What it is for.
        found: String,
    },
    /// SHA-256 of the preimage is not the invoice's payment hash.
    #[error("wrong preimage: it does not hash to the invoice's payment hash {payment_hash}")]
    WrongPreimage {
        /// The invoice's payment hash (hex).
        payment_hash: String,
    },
    /// An amount differs from the one asked for or claimed.
    #[error("amount mismatch: expected {expected_msat} msat, found {found_msat} msat")]
    AmountMismatch {
        /// The amount required.
        expected_msat: u64,
        /// The amount found.
        found_msat: u64,
    },
    /// The invoice's description hash is not SHA-256 of the LNURL metadata
    /// (LUD-06), so it may not be the invoice the name's LNURL meant.
    #[error("the invoice's description hash is not the SHA-256 of the LNURL metadata")]
    DescriptionHashMismatch,
    /// The invoice expired before it could be paid.
    #[error("the invoice has expired")]
    InvoiceExpired,
    /// The BIP21 URI does not parse or lacks what the grammar requires.
    #[error("invalid payment URI: {0}")]
    InvalidUri(String),
    /// The URI's address is not the one the payee's node gave.
    #[error("the URI pays {found}, not the address the node gave ({expected})")]
    AddressMismatch {
        /// The address given.
        expected: String,
        /// The one in the URI.
        found: String,
    },
    /// The recipient's node has no record of this payment.
    #[error("your node has no record of {what}")]
    UnknownToNode {
        /// The payment hash or txid.
        what: String,
    },
    /// The recipient's node knows the payment but not as a settled inbound one.
    #[error("your node reports {what} as {state}")]
    NotReceived {
        /// The payment hash or txid.
        what: String,
        /// What the node says instead (`pending`, `failed`, `outbound`, …).
        state: String,
    },
    /// The node recorded another preimage for this payment hash.
    #[error("the preimage your node recorded differs from the receipt's")]
    PreimageDiffers,
    /// The invoice is not one your LNURL-pay gave: its description hash is
    /// not SHA-256 of your LNURL metadata. Other invoices of your node (zaps,
    /// NWC, admin) may have public preimages, so they prove nothing about
    /// who paid.
    #[error("the invoice is not one of your LNURL-pay invoices (its description hash is not SHA-256 of your LNURL metadata)")]
    NotYourLnurlInvoice,
    /// The transaction's outputs do not show that it pays the URI's address
    /// and that the address is your wallet's.
    #[error("cannot tell that the transaction pays your wallet at the URI's address: {0}")]
    AddressUnchecked(String),
    /// The payment was already claimed by another message (gift wrap).
    #[error("this payment was already claimed by gift wrap {by}")]
    AlreadyClaimed {
        /// The id of the gift wrap that claimed it first.
        by: String,
    },
    /// An amount larger than all bitcoin (21 million BTC).
    #[error("the amount is larger than 21 million BTC")]
    AmountTooLarge,
}

/// How a payment is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Over Lightning, against a BOLT11 invoice.
    Lightning,
    /// On-chain, to a BIP21 URI's address.
    Onchain,
}

impl Method {
    /// The method's name in the `payment` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lightning => LIGHTNING,
            Self::Onchain => ONCHAIN,
        }
    }

    /// The receipt type that proves a payment of this method.
    pub fn receipt_type(self) -> &'static str {
        match self {
            Self::Lightning => PREIMAGE,
            Self::Onchain => TXID,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A BIP21 payment URI with the amount the grammar requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnchainRequest {
    address: Address<NetworkUnchecked>,
    amount: Amount,
}

impl OnchainRequest {
    /// A request for `amount` to `address`.
    pub fn new(address: Address, amount: Amount) -> Self {
        Self {
            address: address.into_unchecked(),
            amount,
        }
    }

    /// Parses `bitcoin:<address>?amount=<BTC>[&…]`. Unknown parameters are
    /// ignored, unknown `req-` parameters refused (BIP21), and `amount` is
    /// required and must be positive.
    pub fn parse(uri: &str) -> Result<Self, MessagePaymentError> {
        let bad = |m: &str| MessagePaymentError::InvalidUri(m.to_owned());
        let rest = uri
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("bitcoin:"))
            .map(|_| &uri[8..])
            .ok_or_else(|| bad("it does not start with bitcoin:"))?;
        let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
        let address = Address::<NetworkUnchecked>::from_str(address)
            .map_err(|e| MessagePaymentError::InvalidUri(format!("address: {e}")))?;
        let mut amount = None;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key {
                "amount" => {
                    if amount.is_some() {
                        return Err(bad("more than one amount"));
                    }
                    let a = Amount::from_str_in(value, Denomination::Bitcoin)
                        .map_err(|e| MessagePaymentError::InvalidUri(format!("amount: {e}")))?;
                    amount = Some(a);
                }
                k if k.starts_with("req-") => {
                    return Err(MessagePaymentError::InvalidUri(format!(
                        "required parameter `{k}` is not understood"
                    )))
                }
                _ => {}
            }
        }
        let amount = amount.ok_or_else(|| bad("it has no amount"))?;
        if amount == Amount::ZERO {
            return Err(bad("the amount is zero"));
        }
        if amount > Amount::MAX_MONEY {
            return Err(bad("the amount is larger than 21 million BTC"));
        }
        Ok(Self { address, amount })
    }

    /// The amount asked for.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// The amount in millisatoshis; amounts above 21 million BTC (which a
    /// URI from [`new`](Self::new) may carry) are refused rather than overflowing.
    pub fn amount_msat(&self) -> Result<u64, MessagePaymentError> {
        sat_to_msat(self.amount.to_sat())
    }

    /// The address, checked to be for `network`.
    pub fn address(&self, network: Network) -> Result<Address, MessagePaymentError> {
        self.address.clone().require_network(network).map_err(|_| {
            MessagePaymentError::WrongNetwork {
                what: "address",
                expected: network,
                found: "another network".to_owned(),
            }
        })
    }

    /// The address as written, whatever its network.
    pub fn address_text(&self) -> String {
        self.address.clone().assume_checked().to_string()
    }

    /// Checks that this URI is the one the payee's node answered for
    /// `amount_sat`: same address, same amount, on `network`.
    pub fn check_answer(
        &self,
        address: &str,
        amount_sat: u64,
        network: Network,
    ) -> Result<Address, MessagePaymentError> {
        let checked = self.address(network)?;
        let given = Address::<NetworkUnchecked>::from_str(address)
            .map_err(|e| MessagePaymentError::InvalidUri(format!("address: {e}")))?;
        if given != self.address {
            return Err(MessagePaymentError::AddressMismatch {
                expected: address.to_owned(),
                found: self.address_text(),
            });
        }
        if self.amount.to_sat() != amount_sat {
            return Err(MessagePaymentError::AmountMismatch {
                expected_msat: sat_to_msat(amount_sat)?,
                found_msat: self.amount_msat()?,
            });
        }
        Ok(checked)
    }
}

impl fmt::Display for OnchainRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bitcoin:{}?amount={}",
            self.address_text(),
            self.amount.to_string_in(Denomination::Bitcoin)
        )
    }
}

/// What is paid: the `payment` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentRequest {
    /// A BOLT11 invoice.
    Lightning(Bolt11Invoice),
    /// A BIP21 URI.
    Onchain(OnchainRequest),
}

impl PaymentRequest {
    /// The method.
    pub fn method(&self) -> Method {
        match self {
            Self::Lightning(_) => Method::Lightning,
            Self::Onchain(_) => Method::Onchain,
        }
    }

    /// The amount asked for, in millisatoshis (`None`: amountless invoice).
    pub fn amount_msat(&self) -> Option<u64> {
        match self {
            Self::Lightning(i) => i.amount_milli_satoshis(),
            Self::Onchain(r) => r.amount_msat().ok(),
        }
    }
}

/// The proof of payment: the `receipt` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The Lightning payment preimage.
    Preimage([u8; 32]),
    /// The id of the transaction paying the URI.
    Txid(Txid),
}

impl Receipt {
    fn type_str(&self) -> &'static str {
        match self {
            Self::Preimage(_) => PREIMAGE,
            Self::Txid(_) => TXID,
        }
    }
}

/// A payment and (normally) its receipt, as carried by one rumor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePayment {
    /// What was paid.
    pub request: PaymentRequest,
    /// The proof; `None` when the message only carries the request.
    pub receipt: Option<Receipt>,
}

impl MessagePayment {
    /// A paid invoice and its preimage.
    pub fn lightning(invoice: Bolt11Invoice, preimage: [u8; 32]) -> Self {
        Self {
            request: PaymentRequest::Lightning(invoice),
            receipt: Some(Receipt::Preimage(preimage)),
        }
    }

    /// An on-chain payment of `request` by transaction `txid`.
    pub fn onchain(request: OnchainRequest, txid: Txid) -> Self {
        Self {
            request: PaymentRequest::Onchain(request),
            receipt: Some(Receipt::Txid(txid)),
        }
    }

    /// The `payment` and `receipt` tags for the rumor.
    pub fn to_tags(&self) -> Vec<Tag> {
        let (method, value) = match &self.request {
            PaymentRequest::Lightning(i) => (LIGHTNING, i.to_string()),
            PaymentRequest::Onchain(r) => (ONCHAIN, r.to_string()),
        };
        let mut tags = vec![Tag::custom(TagKind::custom(PAYMENT_TAG), [method, &value])];
        if let Some(receipt) = &self.receipt {
            let value = match receipt {
                Receipt::Preimage(p) => hex::encode(p),
                Receipt::Txid(t) => t.to_string(),
            };
            tags.push(Tag::custom(
                TagKind::custom(RECEIPT_TAG),
                [receipt.type_str(), &value],
            ));
        }
        tags
    }

    /// The payment carried by a rumor's tags: `Ok(None)` when it has neither
    /// a `payment` nor a `receipt` tag.
    pub fn from_tags<'a>(
        tags: impl IntoIterator<Item = &'a Tag>,
    ) -> Result<Option<Self>, MessagePaymentError> {
        let mut payment = None;
        let mut receipt = None;
        for tag in tags {
            let parts = tag.as_slice();
            let slot = match parts.first().map(String::as_str) {
                Some(PAYMENT_TAG) => &mut payment,
                Some(RECEIPT_TAG) => &mut receipt,
                _ => continue,
            };
            let name = if parts[0] == PAYMENT_TAG {
                PAYMENT_TAG
            } else {
                RECEIPT_TAG
            };
            if slot.is_some() {
                return Err(MessagePaymentError::DuplicateTag(name));
            }
            if parts.len() != 3 {
                return Err(MessagePaymentError::MalformedTag {
                    tag: name,
                    reason: format!("it has {} elements, not 3", parts.len()),
                });
            }
            *slot = Some((parts[1].as_str(), parts[2].as_str()));
        }
        let Some((method, value)) = payment else {
            return match receipt {
                Some(_) => Err(MessagePaymentError::ReceiptWithoutPayment),
                None => Ok(None),
            };
        };
        let request = match method {
            LIGHTNING => PaymentRequest::Lightning(parse_invoice(value)?),
            ONCHAIN => PaymentRequest::Onchain(OnchainRequest::parse(value)?),
            other => {
                return Err(MessagePaymentError::MalformedTag {
                    tag: PAYMENT_TAG,
                    reason: format!("unknown method `{other}`"),
                })
            }
        };
        let receipt = receipt
            .map(|(kind, value)| parse_receipt(request.method(), kind, value))
            .transpose()?;
        Ok(Some(Self { request, receipt }))
    }

    /// Checks what can be checked without the payee's node: there is a
    /// receipt of the right type, the amount is known, the invoice or address
    /// is for `network`, and a preimage hashes to the invoice's payment hash.
    /// Returns the amount in millisatoshis.
    pub fn check_receipt(&self, network: Network) -> Result<u64, MessagePaymentError> {
        let method = self.request.method();
        let receipt = self
            .receipt
            .as_ref()
            .ok_or(MessagePaymentError::MissingReceipt { method })?;
        match (&self.request, receipt) {
            (PaymentRequest::Lightning(invoice), Receipt::Preimage(preimage)) => {
                check_invoice_network(invoice, network)?;
                let amount = invoice
                    .amount_milli_satoshis()
                    .ok_or(MessagePaymentError::InvoiceWithoutAmount)?;
                check_preimage(invoice, preimage)?;
                Ok(amount)
            }
            (PaymentRequest::Onchain(request), Receipt::Txid(_)) => {
                request.address(network)?;
                request.amount_msat()
            }
            (_, r) => Err(MessagePaymentError::ReceiptMismatch {
                method,
                receipt: r.type_str(),
            }),
        }
    }

    /// The Lightning payment hash (hex), for asking the node.
    pub fn payment_hash(&self) -> Option<String> {
        match &self.request {
            PaymentRequest::Lightning(i) => Some(i.payment_hash().to_string()),
            PaymentRequest::Onchain(_) => None,
        }
    }

    /// The receipt's txid, for asking the wallet.
    pub fn txid(&self) -> Option<Txid> {
        match self.receipt {
            Some(Receipt::Txid(t)) => Some(t),
            _ => None,
        }
    }

    /// What the payment is known by: its payment hash, or its txid.
    pub fn reference(&self) -> String {
        match (&self.request, self.txid()) {
            (PaymentRequest::Lightning(i), _) => i.payment_hash().to_string(),
            (PaymentRequest::Onchain(_), Some(t)) => t.to_string(),
            (PaymentRequest::Onchain(r), None) => r.to_string(),
        }
    }

    /// What one payment can be claimed by only once: the Lightning payment
    /// hash, or the on-chain address (a fresh one per request).
    pub fn claim_key(&self) -> String {
        match &self.request {
            PaymentRequest::Lightning(i) => format!("lightning:{}", i.payment_hash()),
            PaymentRequest::Onchain(r) => format!("onchain:{}", r.address_text()),
        }
    }

    /// Verifies the payment as received by the holder of the node that made
    /// `report`: [`check_receipt`](Self::check_receipt); for Lightning, that
    /// the invoice commits to one of `lnurl_metadata` (the recipient's own
    /// LNURL-pay metadata, LUD-06); then the node's word.
    pub fn verify_inbound(
        &self,
        network: Network,
        lnurl_metadata: &[String],
        report: &NodeReport,
    ) -> Verification {
        let amount_msat = match self.check_receipt(network) {
            Ok(a) => a,
            Err(e) => return Verification::Unverified(e),
        };
        if let PaymentRequest::Lightning(invoice) = &self.request {
            if !lnurl_metadata
                .iter()
                .any(|m| check_description_hash(invoice, m).is_ok())
            {
                return Verification::Unverified(MessagePaymentError::NotYourLnurlInvoice);
            }
        }
        let method = self.request.method();
        let result = match (&self.request, self.receipt, report) {
            (_, _, NodeReport::Unavailable(why)) => {
                return Verification::Unconfirmed {
                    method,
                    amount_msat,
                    reason: format!(
                        "the receipt is consistent, but your node was not asked: {why}"
                    ),
                }
            }
            (
                PaymentRequest::Lightning(invoice),
                Some(Receipt::Preimage(p)),
                NodeReport::Lightning(l),
            ) => check_inbound_lightning(invoice, &p, amount_msat, l.as_ref()).map(|()| None),
            (PaymentRequest::Onchain(r), Some(Receipt::Txid(txid)), NodeReport::Onchain(w)) => {
                check_inbound_onchain(r, &txid, amount_msat, w.as_ref()).map(Some)
            }
            _ => {
                return Verification::Unconfirmed {
                    method,
                    amount_msat,
                    reason: "your node's report is about another kind of payment".to_owned(),
                }
            }
        };
        match result {
            Ok(confirmations) => Verification::Paid {
                method,
                amount_msat,
                confirmations,
            },
            Err(e) => Verification::Unverified(e),
        }
    }
}

/// What the recipient's own node says about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeReport {
    /// The node could not be asked (why).
    Unavailable(String),
    /// Its Lightning payment with the invoice's hash; `None`: no such payment.
    Lightning(Option<LightningLookup>),
    /// Its wallet's transaction with the receipt's txid; `None`: no such transaction.
    Onchain(Option<WalletTxLookup>),
}

/// State of a Lightning payment as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LightningState {
    /// Not settled yet.
    Pending,
    /// Settled.
    Succeeded,
    /// Failed.
    Failed,
}

/// A node's record of a Lightning payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightningLookup {
    /// Received (rather than sent) by the node.
    pub inbound: bool,
    /// Its state.
    pub state: LightningState,
    /// The amount received, when known.
    pub amount_msat: Option<u64>,
    /// The preimage the node recorded, when it has it.
    pub preimage: Option<[u8; 32]>,
}

/// A node wallet's record of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletTxLookup {
    /// Total the transaction pays to the wallet.
    pub received_sat: u64,
    /// Total it spends from the wallet (non-zero: the wallet paid, not a payment to it).
    pub sent_sat: u64,
    /// Confirmations (0: unconfirmed).
    pub confirmations: u32,
    /// The transaction's outputs, when the caller could read them; without
    /// them nothing shows that the URI's address was paid, so it is not PAID.
    pub outputs: Option<TxOutputs>,
}

/// A transaction's outputs, split by whether they pay the URI's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxOutputs {
    /// Total paid to the URI's address.
    pub to_address_sat: u64,
    /// Each other output's value.
    pub others_sat: Vec<u64>,
}

/// Most other outputs [`address_is_owned`] examines (2^n subsets).
const MAX_OTHER_OUTPUTS: usize = 16;

/// Whether the outputs prove the URI's address is the wallet's: the wallet's
/// `received_sat` is the sum of the outputs it owns, so when no set of the
/// *other* outputs adds up to it, the address's outputs must be among them.
/// Without this, a sender could name a foreign output (say the change) of a
/// transaction that paid the recipient something else.
fn address_is_owned(outputs: &TxOutputs, received_sat: u64) -> bool {
    if outputs.to_address_sat == 0
        || outputs.to_address_sat > received_sat
        || outputs.others_sat.len() > MAX_OTHER_OUTPUTS
    {
        return false;
    }
    let n = outputs.others_sat.len();
    !(0u32..(1 << n)).any(|mask| {
        let sum: u128 = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| u128::from(outputs.others_sat[i]))
            .sum();
        sum == u128::from(received_sat)
    })
}

fn check_inbound_lightning(
    invoice: &Bolt11Invoice,
    preimage: &[u8; 32],
    amount_msat: u64,
    lookup: Option<&LightningLookup>,
) -> Result<(), MessagePaymentError> {
    let what = format!("payment {}", invoice.payment_hash());
    let l = lookup.ok_or_else(|| MessagePaymentError::UnknownToNode { what: what.clone() })?;
    if !l.inbound {
        return Err(MessagePaymentError::NotReceived {
            what,
            state: "outbound (your node paid it)".to_owned(),
        });
    }
    let state = match l.state {
        LightningState::Succeeded => None,
        LightningState::Pending => Some("pending"),
        LightningState::Failed => Some("failed"),
    };
    if let Some(state) = state {
        return Err(MessagePaymentError::NotReceived {
            what,
            state: state.to_owned(),
        });
    }
    if let Some(received) = l.amount_msat {
        if received < amount_msat {
            return Err(MessagePaymentError::AmountMismatch {
                expected_msat: amount_msat,
                found_msat: received,
            });
        }
    }
    if l.preimage.is_some_and(|p| &p != preimage) {
        return Err(MessagePaymentError::PreimageDiffers);
    }
    Ok(())
}

fn check_inbound_onchain(
    request: &OnchainRequest,
    txid: &Txid,
    amount_msat: u64,
    lookup: Option<&WalletTxLookup>,
) -> Result<u32, MessagePaymentError> {
    let what = format!("transaction {txid}");
    let w = lookup.ok_or_else(|| MessagePaymentError::UnknownToNode { what: what.clone() })?;
    if w.sent_sat > 0 {
        return Err(MessagePaymentError::NotReceived {
            what,
            state: "spending from your wallet".to_owned(),
        });
    }
    let outputs = w.outputs.as_ref().ok_or_else(|| {
        MessagePaymentError::AddressUnchecked(
            "its outputs could not be read (configure [bitcoin] RPC)".to_owned(),
        )
    })?;
    let paid = outputs.to_address_sat;
    if paid < request.amount.to_sat() {
        return Err(MessagePaymentError::AmountMismatch {
            expected_msat: amount_msat,
            found_msat: paid.saturating_mul(1000),
        });
    }
    if !address_is_owned(outputs, w.received_sat) {
        return Err(MessagePaymentError::AddressUnchecked(
            "the outputs do not show that the address is your wallet's".to_owned(),
        ));
    }
    Ok(w.confirmations)
}

/// The outcome of verifying a payment carried by a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every check passed, including the recipient node's own record.
    Paid {
        /// The method.
        method: Method,
        /// The amount, in millisatoshis.
        amount_msat: u64,
        /// On-chain: the transaction's confirmations.
        confirmations: Option<u32>,
    },
    /// The receipt is consistent, but the node could not confirm it; not paid.
    Unconfirmed {
        /// The method.
        method: Method,
        /// The amount claimed, in millisatoshis.
        amount_msat: u64,
        /// Why it is not confirmed.
        reason: String,
    },
    /// A check failed; not paid.
    Unverified(MessagePaymentError),
}

impl Verification {
    /// Whether the payment is verified as received.
    pub fn is_paid(&self) -> bool {
        matches!(self, Self::Paid { .. })
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Paid {
                method,
                amount_msat,
                confirmations,
            } => {
                write!(
                    f,
                    "PAID {} ({method}, verified by your node",
                    Sats(*amount_msat)
                )?;
                match confirmations {
                    Some(0) => f.write_str("; unconfirmed, in the mempool)"),
                    Some(n) => write!(f, "; {n} confirmations)"),
                    None => f.write_str(")"),
                }
            }
            Self::Unconfirmed {
                method,
                amount_msat,
                reason,
            } => write!(f, "UNVERIFIED {} ({method}): {reason}", Sats(*amount_msat)),
            Self::Unverified(e) => write!(f, "UNVERIFIED: {e}"),
        }
    }
}

/// Millisatoshis shown as satoshis (with the fraction when there is one).
struct Sats(u64);

impl fmt::Display for Sats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 % 1000 {
            0 => write!(f, "{} sat", self.0 / 1000),
            r => write!(f, "{}.{r:03} sat", self.0 / 1000),
        }
    }
}

/// Checks an invoice returned by an LNURL-pay callback (LUD-06) before paying
/// it: for `network`, for exactly `amount_msat`, committing to `metadata`
/// through its description hash, and not expired.
pub fn check_lnurl_invoice(
    pr: &str,
    amount_msat: u64,
    metadata: &str,
    network: Network,
) -> Result<Bolt11Invoice, MessagePaymentError> {
    let invoice = parse_invoice(pr)?;
    check_invoice_network(&invoice, network)?;
    let found = invoice
        .amount_milli_satoshis()
        .ok_or(MessagePaymentError::InvoiceWithoutAmount)?;
    if found != amount_msat {
        return Err(MessagePaymentError::AmountMismatch {
            expected_msat: amount_msat,
            found_msat: found,
        });
    }
    check_description_hash(&invoice, metadata)?;
    // A little margin: an invoice about to expire would fail mid-payment.
    if invoice.would_expire(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(10),
    ) {
        return Err(MessagePaymentError::InvoiceExpired);
    }
    Ok(invoice)
}

/// Checks that `invoice`'s description hash is SHA-256 of the LNURL
/// `metadata` (LUD-06).
pub fn check_description_hash(
    invoice: &Bolt11Invoice,
    metadata: &str,
) -> Result<(), MessagePaymentError> {
    let expected = sha256::Hash::hash(metadata.as_bytes());
    match invoice.description() {
        Bolt11InvoiceDescriptionRef::Hash(h) if h.0 == expected => Ok(()),
        _ => Err(MessagePaymentError::DescriptionHashMismatch),
    }
}

fn sat_to_msat(sat: u64) -> Result<u64, MessagePaymentError> {
    if sat > Amount::MAX_MONEY.to_sat() {
        return Err(MessagePaymentError::AmountTooLarge);
    }
    sat.checked_mul(1000)
        .ok_or(MessagePaymentError::AmountTooLarge)
}

/// Checks that `preimage` hashes to `invoice`'s payment hash.
pub fn check_preimage(
    invoice: &Bolt11Invoice,
    preimage: &[u8; 32],
) -> Result<(), MessagePaymentError> {
    if sha256::Hash::hash(preimage) != *invoice.payment_hash() {
        return Err(MessagePaymentError::WrongPreimage {
            payment_hash: invoice.payment_hash().to_string(),
        });
    }
    Ok(())
}

/// Parses 64 hex digits (a preimage).
pub fn parse_preimage(hex_str: &str) -> Result<[u8; 32], MessagePaymentError> {
    parse_hex32(hex_str).ok_or_else(|| MessagePaymentError::MalformedTag {
        tag: RECEIPT_TAG,
        reason: "the preimage is not 64 lowercase hex digits".to_owned(),
    })
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    // Lowercase only: one spelling per value, as Nostr does for ids and keys.
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn parse_invoice(s: &str) -> Result<Bolt11Invoice, MessagePaymentError> {
    Bolt11Invoice::from_str(s).map_err(|e| MessagePaymentError::InvalidInvoice(e.to_string()))
}

fn check_invoice_network(
    invoice: &Bolt11Invoice,
    network: Network,
) -> Result<(), MessagePaymentError> {
    // Testnet and testnet4 share an invoice prefix; compare the invoice currency.
    let expected = ldk_node::lightning_invoice::Currency::from(network);
    if invoice.currency() != expected {
        return Err(MessagePaymentError::WrongNetwork {
            what: "invoice",
            expected: network,
            found: format!("{:?}", invoice.currency()),
        });
    }
    Ok(())
}

fn parse_receipt(method: Method, kind: &str, value: &str) -> Result<Receipt, MessagePaymentError> {
    let receipt = match kind {
        PREIMAGE => Receipt::Preimage(parse_preimage(value)?),
        TXID => Receipt::Txid(
            parse_hex32(value)
                .and_then(|_| Txid::from_str(value).ok())
                .ok_or_else(|| MessagePaymentError::MalformedTag {
                    tag: RECEIPT_TAG,
                    reason: "the txid is not 64 lowercase hex digits".to_owned(),
                })?,
        ),
        other => {
            return Err(MessagePaymentError::MalformedTag {
                tag: RECEIPT_TAG,
                reason: format!("unknown receipt type `{other}`"),
            })
        }
    };
    if receipt.type_str() != method.receipt_type() {
        return Err(MessagePaymentError::ReceiptMismatch {
            method,
            receipt: receipt.type_str(),
        });
    }
    Ok(receipt)
}

#[cfg(test)]
mod tests {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use ldk_node::lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};

    use super::*;

    const METADATA: &str = r#"[["text/plain","Pay to @alice"]]"#;

    fn invoice(preimage: &[u8; 32], amount_msat: Option<u64>, currency: Currency) -> Bolt11Invoice {
        let key = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let builder = InvoiceBuilder::new(currency)
            .description_hash(sha256::Hash::hash(METADATA.as_bytes()))
            .payment_hash(sha256::Hash::hash(preimage))
            .payment_secret(PaymentSecret([42u8; 32]))
            .current_timestamp()
            .min_final_cltv_expiry_delta(144);
        let builder = match amount_msat {
            Some(a) => builder.amount_milli_satoshis(a),
            None => builder,
        };
        builder
            .build_signed(|hash| Secp256k1::new().sign_ecdsa_recoverable(hash, &key))
            .unwrap()
    }

    fn meta() -> Vec<String> {
        vec![METADATA.to_owned()]
    }

    fn address() -> Address {
        Address::from_str("bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk")
            .unwrap()
            .assume_checked()
    }

    fn txid() -> Txid {
        Txid::from_str(&"ab".repeat(32)).unwrap()
    }

    fn tag(parts: &[&str]) -> Tag {
        Tag::parse(parts.iter().copied()).unwrap()
    }

    fn lightning_paid(amount_msat: u64) -> (MessagePayment, [u8; 32]) {
        let preimage = [0xabu8; 32];
        let p = MessagePayment::lightning(
            invoice(&preimage, Some(amount_msat), Currency::Regtest),
            preimage,
        );
        (p, preimage)
    }

    fn node_received(amount_msat: u64, preimage: [u8; 32]) -> NodeReport {
        NodeReport::Lightning(Some(LightningLookup {
            inbound: true,
            state: LightningState::Succeeded,
            amount_msat: Some(amount_msat),
            preimage: Some(preimage),
        }))
    }

    #[test]
    fn lightning_tags_round_trip_and_follow_the_grammar() {
        let (p, preimage) = lightning_paid(5_000_000);
        let tags = p.to_tags();
        assert_eq!(tags.len(), 2);
        let PaymentRequest::Lightning(inv) = &p.request else {
            unreachable!()
        };
        assert_eq!(
            tags[0].as_slice(),
            ["payment", "lightning", inv.to_string().as_str()]
        );
        assert_eq!(
            tags[1].as_slice(),
            ["receipt", "preimage", hex::encode(preimage).as_str()]
        );
        assert_eq!(MessagePayment::from_tags(&tags).unwrap(), Some(p));
    }

    #[test]
    fn onchain_tags_round_trip_and_follow_the_grammar() {
        let request = OnchainRequest::new(address(), Amount::from_sat(5_000));
        let p = MessagePayment::onchain(request, txid());
        let tags = p.to_tags();
        assert_eq!(
            tags[0].as_slice(),
            [
                "payment",
                "onchain",
                "bitcoin:bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk?amount=0.00005"
            ]
        );
        assert_eq!(
            tags[1].as_slice(),
            ["receipt", "txid", "ab".repeat(32).as_str()]
        );
        assert_eq!(MessagePayment::from_tags(&tags).unwrap(), Some(p));
    }

    #[test]
    fn rumors_without_payment_tags_carry_no_payment() {
        let tags = [tag(&["p", &"00".repeat(32)]), tag(&["subject", "lunch"])];
        assert_eq!(MessagePayment::from_tags(&tags).unwrap(), None);
    }

    #[test]
    fn correct_lightning_receipt_confirmed_by_the_node_is_paid() {
        let (p, preimage) = lightning_paid(5_000_000);
        let v = p.verify_inbound(
            Network::Regtest,
            &meta(),
            &node_received(5_000_000, preimage),
        );
        assert_eq!(
            v,
            Verification::Paid {
                method: Method::Lightning,
                amount_msat: 5_000_000,
                confirmations: None
            }
        );
        assert!(v.to_string().starts_with("PAID 5000 sat"), "{v}");
    }

    #[test]
    fn wrong_preimage_is_unverified_even_when_the_node_was_paid() {
        let (mut p, preimage) = lightning_paid(5_000_000);
        p.receipt = Some(Receipt::Preimage([8u8; 32]));
        let v = p.verify_inbound(
            Network::Regtest,
            &meta(),
            &node_received(5_000_000, preimage),
        );
        assert!(
            matches!(
                v,
                Verification::Unverified(MessagePaymentError::WrongPreimage { .. })
            ),
            "{v:?}"
        );
        assert!(!v.is_paid());
        assert!(v.to_string().starts_with("UNVERIFIED"), "{v}");
    }

    #[test]
    fn amount_below_the_invoice_is_unverified() {
        let (p, preimage) = lightning_paid(5_000_000);
        let v = p.verify_inbound(
            Network::Regtest,
            &meta(),
            &node_received(4_000_000, preimage),
        );
        assert_eq!(
            v,
            Verification::Unverified(MessagePaymentError::AmountMismatch {
                expected_msat: 5_000_000,
                found_msat: 4_000_000
            })
        );
    }

    #[test]
    fn missing_receipt_is_unverified() {
        let (mut p, preimage) = lightning_paid(5_000_000);
        p.receipt = None;
        let tags = p.to_tags();
        assert_eq!(tags.len(), 1);
        let parsed = MessagePayment::from_tags(&tags).unwrap().unwrap();
        assert_eq!(
            parsed.verify_inbound(
                Network::Regtest,
                &meta(),
                &node_received(5_000_000, preimage)
            ),
            Verification::Unverified(MessagePaymentError::MissingReceipt {
                method: Method::Lightning
            })
        );
    }

    #[test]
    fn consistent_receipt_without_the_node_is_not_paid() {
        let (p, _) = lightning_paid(5_000_000);
        let v = p.verify_inbound(
            Network::Regtest,
            &meta(),
            &NodeReport::Unavailable("no admin token".into()),
        );
        assert!(
            matches!(
                v,
                Verification::Unconfirmed {
                    amount_msat: 5_000_000,
                    ..
                }
            ),
            "{v:?}"
        );
        assert!(!v.is_paid());
    }

    #[test]
    fn payments_the_node_does_not_have_as_received_are_unverified() {
        let (p, preimage) = lightning_paid(1_000);
        let unknown = p.verify_inbound(Network::Regtest, &meta(), &NodeReport::Lightning(None));
        assert!(
            matches!(
                unknown,
                Verification::Unverified(MessagePaymentError::UnknownToNode { .. })
            ),
            "{unknown:?}"
        );
        for (inbound, state) in [
            (false, LightningState::Succeeded),
            (true, LightningState::Pending),
            (true, LightningState::Failed),
        ] {
            let report = NodeReport::Lightning(Some(LightningLookup {
                inbound,
                state,
                amount_msat: Some(1_000),
                preimage: None,
            }));
            let v = p.verify_inbound(Network::Regtest, &meta(), &report);
            assert!(
                matches!(
                    v,
                    Verification::Unverified(MessagePaymentError::NotReceived { .. })
                ),
                "{inbound} {state:?}: {v:?}"
            );
        }
        let mut other = [0u8; 32];
        other[0] = 1;
        let differs = p.verify_inbound(
            Network::Regtest,
            &meta(),
            &NodeReport::Lightning(Some(LightningLookup {
                inbound: true,
                state: LightningState::Succeeded,
                amount_msat: Some(1_000),
                preimage: Some(other),
            })),
        );
        assert_eq!(
            differs,
            Verification::Unverified(MessagePaymentError::PreimageDiffers)
        );
        assert!(p
            .verify_inbound(Network::Regtest, &meta(), &node_received(1_000, preimage))
            .is_paid());
    }

    #[test]
    fn invoices_for_another_network_or_without_amount_are_unverified() {
        let preimage = [3u8; 32];
        let mainnet =
            MessagePayment::lightning(invoice(&preimage, Some(1_000), Currency::Bitcoin), preimage);
        assert!(matches!(
            mainnet.check_receipt(Network::Regtest),
            Err(MessagePaymentError::WrongNetwork {
                what: "invoice",
                ..
            })
        ));
        let amountless =
            MessagePayment::lightning(invoice(&preimage, None, Currency::Regtest), preimage);
        assert_eq!(
            amountless.check_receipt(Network::Regtest),
            Err(MessagePaymentError::InvoiceWithoutAmount)
        );
    }

    #[test]
    fn malformed_tags_are_refused() {
        let (p, _) = lightning_paid(1_000);
        let tags = p.to_tags();
        let inv = tags[0].as_slice()[2].clone();
        let pre = tags[1].as_slice()[2].clone();
        let cases: Vec<(Vec<Tag>, &str)> = vec![
            (vec![tag(&["payment", "lightning"])], "2 elements"),
            (
                vec![tag(&["payment", "lightning", &inv, "x"])],
                "4 elements",
            ),
            (vec![tag(&["payment", "cheque", &inv])], "unknown method"),
            (
                vec![tag(&["payment", "lightning", "lnbcrt1garbage"])],
                "invalid invoice",
            ),
            (
                vec![
                    tag(&["payment", "lightning", &inv]),
                    tag(&["receipt", "preimage", "abcd"]),
                ],
                "short preimage",
            ),
            (
                vec![
                    tag(&["payment", "lightning", &inv]),
                    tag(&["receipt", "preimage", &pre.to_uppercase()]),
                ],
                "uppercase preimage",
            ),
            (
                vec![
                    tag(&["payment", "lightning", &inv]),
                    tag(&["receipt", "iou", &pre]),
                ],
                "unknown receipt",
            ),
            (
                vec![tag(&["payment", "onchain", "bitcoin:nope?amount=1"])],
                "bad address",
            ),
            (
                vec![tag(&[
                    "payment",
                    "onchain",
                    &format!("bitcoin:{}", address()),
                ])],
                "no amount",
            ),
            (
                vec![tag(&[
                    "payment",
                    "onchain",
                    &format!("bitcoin:{}?amount=1&req-pop=x", address()),
                ])],
                "unknown req- parameter",
            ),
        ];
        for (tags, what) in cases {
            let r = MessagePayment::from_tags(&tags);
            assert!(
                matches!(
                    r,
                    Err(MessagePaymentError::MalformedTag { .. }
                        | MessagePaymentError::InvalidInvoice(_)
                        | MessagePaymentError::InvalidUri(_))
                ),
                "{what}: {r:?}"
            );
        }
    }

    #[test]
    fn duplicate_orphan_and_mismatched_tags_are_refused() {
        let (p, _) = lightning_paid(1_000);
        let tags = p.to_tags();
        assert_eq!(
            MessagePayment::from_tags(&[tags[0].clone(), tags[0].clone()]),
            Err(MessagePaymentError::DuplicateTag("payment"))
        );
        assert_eq!(
            MessagePayment::from_tags(&[tags[0].clone(), tags[1].clone(), tags[1].clone()]),
            Err(MessagePaymentError::DuplicateTag("receipt"))
        );
        assert_eq!(
            MessagePayment::from_tags(&[tags[1].clone()]),
            Err(MessagePaymentError::ReceiptWithoutPayment)
        );
        let txid_receipt = tag(&["receipt", "txid", &"ab".repeat(32)]);
        assert_eq!(
            MessagePayment::from_tags(&[tags[0].clone(), txid_receipt]),
            Err(MessagePaymentError::ReceiptMismatch {
                method: Method::Lightning,
                receipt: "txid"
            })
        );
    }

    fn wallet_tx(received_sat: u64, sent_sat: u64, confirmations: u32) -> NodeReport {
        NodeReport::Onchain(Some(WalletTxLookup {
            received_sat,
            sent_sat,
            confirmations,
            // The payment to the URI's address and the payer's change.
            outputs: Some(TxOutputs {
                to_address_sat: received_sat,
                others_sat: vec![77_777],
            }),
        }))
    }

    #[test]
    fn onchain_payment_in_the_wallet_is_paid_with_confirmations() {
        let p = MessagePayment::onchain(
            OnchainRequest::new(address(), Amount::from_sat(5_000)),
            txid(),
        );
        let v = p.verify_inbound(Network::Regtest, &meta(), &wallet_tx(5_000, 0, 2));
        assert_eq!(
            v,
            Verification::Paid {
                method: Method::Onchain,
                amount_msat: 5_000_000,
                confirmations: Some(2)
            }
        );
        assert!(v.to_string().contains("2 confirmations"), "{v}");
    }

    #[test]
    fn onchain_failures_are_unverified() {
        let p = MessagePayment::onchain(
            OnchainRequest::new(address(), Amount::from_sat(5_000)),
            txid(),
        );
        let too_little = p.verify_inbound(Network::Regtest, &meta(), &wallet_tx(4_999, 0, 1));
        assert_eq!(
            too_little,
            Verification::Unverified(MessagePaymentError::AmountMismatch {
                expected_msat: 5_000_000,
                found_msat: 4_999_000
            })
        );
        let to_other_address = p.verify_inbound(
            Network::Regtest,
            &meta(),
            &NodeReport::Onchain(Some(WalletTxLookup {
                received_sat: 10_000,
                sent_sat: 0,
                confirmations: 1,
                outputs: Some(TxOutputs {
                    to_address_sat: 0,
                    others_sat: vec![10_000, 3_000],
                }),
            })),
        );
        assert!(matches!(
            to_other_address,
            Verification::Unverified(MessagePaymentError::AmountMismatch { .. })
        ));
        let own_spend = p.verify_inbound(Network::Regtest, &meta(), &wallet_tx(9_000, 20_000, 1));
        assert!(matches!(
            own_spend,
            Verification::Unverified(MessagePaymentError::NotReceived { .. })
        ));
        let unknown = p.verify_inbound(Network::Regtest, &meta(), &NodeReport::Onchain(None));
        assert!(matches!(
            unknown,
            Verification::Unverified(MessagePaymentError::UnknownToNode { .. })
        ));
        let mainnet = p.verify_inbound(Network::Bitcoin, &meta(), &wallet_tx(5_000, 0, 1));
        assert!(matches!(
            mainnet,
            Verification::Unverified(MessagePaymentError::WrongNetwork {
                what: "address",
                ..
            })
        ));
    }

    #[test]
    fn onchain_claims_need_the_outputs_and_an_address_of_the_wallet() {
        let p = MessagePayment::onchain(
            OnchainRequest::new(address(), Amount::from_sat(20_000)),
            txid(),
        );
        let lookup = |received_sat, outputs| {
            NodeReport::Onchain(Some(WalletTxLookup {
                received_sat,
                sent_sat: 0,
                confirmations: 1,
                outputs,
            }))
        };
        // Without the outputs (no Bitcoin Core RPC): not paid.
        let v = p.verify_inbound(Network::Regtest, &meta(), &lookup(20_000, None));
        assert!(
            matches!(
                v,
                Verification::Unverified(MessagePaymentError::AddressUnchecked(_))
            ),
            "{v:?}"
        );
        // The transaction paid the wallet 30 000 at another output; the
        // claimed address got 20 000 but is someone else's (the change):
        // the wallet's 30 000 is explained without it.
        let foreign = Some(TxOutputs {
            to_address_sat: 20_000,
            others_sat: vec![30_000, 5_000],
        });
        let v = p.verify_inbound(Network::Regtest, &meta(), &lookup(30_000, foreign));
        assert!(
            matches!(
                v,
                Verification::Unverified(MessagePaymentError::AddressUnchecked(_))
            ),
            "{v:?}"
        );
        // The wallet received both: 50 000 needs the address's output.
        let both = Some(TxOutputs {
            to_address_sat: 20_000,
            others_sat: vec![30_000, 5_000],
        });
        assert!(p
            .verify_inbound(Network::Regtest, &meta(), &lookup(50_000, both))
            .is_paid());
    }

    #[test]
    fn only_invoices_of_the_recipients_lnurl_prove_a_payment() {
        // E.g. a zap invoice: its description hash commits to the zap
        // request, and the zap receipt publishes its preimage.
        let (p, preimage) = lightning_paid(5_000_000);
        let report = node_received(5_000_000, preimage);
        let other = vec![r#"[["text/plain","Payment to bob@elsewhere"]]"#.to_owned()];
        for metadata in [&other, &Vec::new()] {
            assert_eq!(
                p.verify_inbound(Network::Regtest, metadata, &report),
                Verification::Unverified(MessagePaymentError::NotYourLnurlInvoice)
            );
        }
        let both = vec![other[0].clone(), METADATA.to_owned()];
        assert!(p.verify_inbound(Network::Regtest, &both, &report).is_paid());
    }

    #[test]
    fn claim_keys_are_the_payment_hash_or_the_address() {
        let (p, preimage) = lightning_paid(1_000);
        assert_eq!(
            p.claim_key(),
            format!("lightning:{}", sha256::Hash::hash(&preimage))
        );
        let a = MessagePayment::onchain(
            OnchainRequest::new(address(), Amount::from_sat(5_000)),
            txid(),
        );
        let b = MessagePayment::onchain(
            OnchainRequest::new(address(), Amount::from_sat(6_000)),
            Txid::from_str(&"cd".repeat(32)).unwrap(),
        );
        assert_eq!(a.claim_key(), b.claim_key(), "one claim per address");
        assert_eq!(a.claim_key(), format!("onchain:{}", address()));
    }

    #[test]
    fn amounts_above_all_bitcoin_are_refused_without_overflow() {
        // 21M BTC parses; one satoshi more does not.
        let max = format!("bitcoin:{}?amount=21000000", address());
        let r = OnchainRequest::parse(&max).unwrap();
        assert_eq!(r.amount_msat(), Ok(2_100_000_000_000_000_000));
        for huge in ["21000000.00000001", "184467440737.09551615", "99999999999"] {
            let uri = format!("bitcoin:{}?amount={huge}", address());
            assert!(OnchainRequest::parse(&uri).is_err(), "{uri}");
        }
        // `new` takes any Amount: the msat conversions refuse it instead of wrapping.
        let huge = OnchainRequest::new(address(), Amount::from_sat(u64::MAX));
        assert_eq!(huge.amount_msat(), Err(MessagePaymentError::AmountTooLarge));
        assert_eq!(
            huge.check_answer(&address().to_string(), 1, Network::Regtest),
            Err(MessagePaymentError::AmountTooLarge)
        );
        let p = MessagePayment::onchain(huge, txid());
        assert_eq!(p.request.amount_msat(), None);
        assert_eq!(
            p.check_receipt(Network::Regtest),
            Err(MessagePaymentError::AmountTooLarge)
        );
        assert_eq!(
            p.verify_inbound(Network::Regtest, &meta(), &wallet_tx(u64::MAX, 0, 1)),
            Verification::Unverified(MessagePaymentError::AmountTooLarge)
        );
    }

    #[test]
    fn bip21_parsing() {
        let r = OnchainRequest::parse(&format!(
            "BITCOIN:{}?label=lunch&amount=0.0001&message=hi",
            address()
        ))
        .unwrap();
        assert_eq!(r.amount(), Amount::from_sat(10_000));
        assert_eq!(r.address(Network::Regtest).unwrap(), address());
        for bad in [
            format!("{}?amount=1", address()),
            format!("bitcoin:{}?amount=0", address()),
            format!("bitcoin:{}?amount=-1", address()),
            format!("bitcoin:{}?amount=1&amount=2", address()),
            format!("bitcoin:{}?amount=1.000000001", address()),
        ] {
            assert!(OnchainRequest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_answers_for_onchain_requests_are_checked() {
        let r = OnchainRequest::new(address(), Amount::from_sat(5_000));
        let text = address().to_string();
        assert_eq!(
            r.check_answer(&text, 5_000, Network::Regtest).unwrap(),
            address()
        );
        assert!(matches!(
            r.check_answer(&text, 6_000, Network::Regtest),
            Err(MessagePaymentError::AmountMismatch { .. })
        ));
        let other = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        assert!(matches!(
            r.check_answer(other, 5_000, Network::Regtest),
            Err(MessagePaymentError::AddressMismatch { .. })
        ));
    }

    #[test]
    fn lnurl_invoices_are_checked_before_paying() {
        let preimage = [5u8; 32];
        let inv = invoice(&preimage, Some(21_000), Currency::Regtest).to_string();
        assert!(check_lnurl_invoice(&inv, 21_000, METADATA, Network::Regtest).is_ok());
        assert_eq!(
            check_lnurl_invoice(&inv, 20_000, METADATA, Network::Regtest),
            Err(MessagePaymentError::AmountMismatch {
                expected_msat: 20_000,
                found_msat: 21_000
            })
        );
        assert_eq!(
            check_lnurl_invoice(&inv, 21_000, "[]", Network::Regtest),
            Err(MessagePaymentError::DescriptionHashMismatch)
        );
        assert!(matches!(
            check_lnurl_invoice(&inv, 21_000, METADATA, Network::Bitcoin),
            Err(MessagePaymentError::WrongNetwork { .. })
        ));
        assert!(matches!(
            check_lnurl_invoice("lnbc1nonsense", 21_000, METADATA, Network::Regtest),
            Err(MessagePaymentError::InvalidInvoice(_))
        ));
    }
}
