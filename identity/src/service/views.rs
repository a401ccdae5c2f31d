//! What the service answers with: challenges, receipts, identity, epoch and
//! status views (the HTTP API's JSON bodies), and their wire names.
//!
//! Ids that may exceed JSON's safe integers (`x_uid`) are decimal strings;
//! hashes and headers are hex. The `as_str` names are part of the API: the
//! `Display` and `PartialEq<&str>` impls use them, and serde renames agree.

use bitcoin::Txid;
use nostr::Event;
use serde::{Deserialize, Serialize};

use crate::anchor::{AnchorRecord, AnchorState, Health};
use crate::bundle::ProofBundle;

/// A challenge as handed to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedChallenge {
    /// The nonce to quote in the binding event's `challenge` tag.
    pub nonce: String,
    /// The key it is for.
    pub npub: String,
    /// The exact text to post on X.
    pub text: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What an accepted operation became.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingReceipt {
    /// `"accepted"`.
    pub status: String,
    /// The operation (`bind`, `recover`, …).
    pub op: String,
    /// The identity (decimal string: X ids exceed JSON's safe integers).
    pub x_uid: String,
    /// Its `seq`.
    pub seq: u64,
    /// The binding event's id.
    pub event_id: String,
    /// The epoch it will be anchored in.
    pub epoch: u64,
    /// The operation's log leaf index.
    pub log_index: u64,
    /// The node's witness attestation (bind and recover).
    pub attestation: Option<Event>,
}

/// Anchor of one epoch, as reported over HTTP.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorView {
    /// `queued`, `signed`, `unconfirmed` or `confirmed`.
    pub state: &'static str,
    /// Current anchor txid.
    pub txid: Option<String>,
    /// Block height when confirmed.
    pub block_height: Option<u32>,
    /// Block hash when confirmed.
    pub block_hash: Option<String>,
    /// Confirmations at the wallet's tip.
    pub confirmations: u32,
    /// Whether it has the configured confirmations.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Fee in satoshis.
    pub fee_sat: Option<u64>,
    /// Size in vbytes.
    pub vsize: Option<u64>,
}

/// One closed epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochView {
    /// Epoch number.
    pub epoch: u64,
    /// The 113-byte header, hex.
    pub header: String,
    /// Its hash (what the OP_RETURN carries), hex.
    pub header_hash: String,
    /// Header hash of the previous epoch, hex (zeros for epoch 0).
    pub prev_header_hash: String,
    /// Log size.
    pub log_size: u64,
    /// Log root, hex.
    pub log_root: String,
    /// State root, hex.
    pub state_root: String,
    /// Unix seconds.
    pub closed_at: u64,
    /// The anchor, when the wallet has a record.
    pub anchor: Option<AnchorView>,
}

/// Where an identity stands, as the node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Accepted, its epoch not anchored in a block yet.
    Pending,
    /// Its epoch's anchor is confirmed, not yet final.
    Anchored,
    /// Its epoch's anchor has the configured confirmations.
    Final,
    /// The handle now belongs to another id.
    Moved,
    /// Revoked, or the key asked about was rotated away.
    Revoked,
}

impl Standing {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Anchored => "anchored",
            Self::Final => "final",
            Self::Moved => "moved",
            Self::Revoked => "revoked",
        }
    }
}

/// The registry's view of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingState {
    /// A key is bound.
    Bound,
    /// A recovery to a new key is waiting out its delay.
    RecoveryPending,
    /// The binding was revoked.
    Revoked,
    /// The key asked about is no longer the bound one.
    Rotated,
}

impl BindingState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bound => "bound",
            Self::RecoveryPending => "recovery_pending",
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
        }
    }
}

macro_rules! wire_name_impls {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // Lets callers compare with the wire name directly.
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}
wire_name_impls!(Standing);
wire_name_impls!(BindingState);

/// Where one identity (or key) stands.
///
/// `B` is how the bundle is held: the node builds a [`ProofBundle`]; a client
/// may read it as raw JSON (`serde_json::Value`) so that a malformed bundle
/// does not hide the rest of the answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityView<B = ProofBundle> {
    /// X numeric user id (decimal string).
    pub x_uid: String,
    /// Handle of the latest proof post.
    pub handle: String,
    /// Currently bound key, hex (none when revoked).
    pub pubkey: Option<String>,
    /// Currently bound key, NIP-19.
    pub npub: Option<String>,
    /// `pending` (not anchored yet), `anchored` (confirmed, not final),
    /// `final`, `moved` (the handle now belongs to another id) or `revoked`.
    pub status: Standing,
    /// Which state of the record this answer reflects: `pending` (the
    /// latest operation, e.g. a bind or a revocation, is accepted but its
    /// epoch is not anchored in a block yet: the node's word only),
    /// `anchored` or `final`. Never `moved` or `revoked`.
    pub reflects: Standing,
    /// The registry's view: `bound`, `recovery_pending` or `revoked`;
    /// `rotated` when the key asked about is no longer the bound one.
    pub binding: BindingState,
    /// The id now holding the handle, when moved.
    pub moved_to: Option<String>,
    /// `seq` of the latest accepted operation.
    pub seq: u64,
    /// Id of the latest accepted operation.
    pub head: String,
    /// Epoch of the latest accepted operation.
    pub epoch: u64,
    /// Confirmations of that epoch's anchor (0 when not confirmed).
    pub confirmations: u32,
    /// That epoch's anchor txid.
    pub anchor_txid: Option<String>,
    /// Height at which a pending recovery completes.
    pub recovery_effective_height: Option<u32>,
    /// The proof bundle, once the epoch holding the record is anchored in a block.
    pub bundle: Option<B>,
}

/// One accepted operation of an identity, as the history of a handle page
/// shows it (see [`IdentityService::history`](super::IdentityService::history)).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// `bind`, `rotate`, `revoke`, `recover` or `veto`.
    pub op: &'static str,
    /// Its `seq`.
    pub seq: u64,
    /// The binding event's id, hex.
    pub event_id: String,
    /// The key that signed it, NIP-19.
    pub signer: String,
    /// The event's `created_at` (Unix seconds): when its signer says it signed.
    pub created_at: u64,
    /// The proof post's handle (`bind` and `recover`).
    pub handle: Option<String>,
    /// The proof post's id, decimal (`bind` and `recover`).
    pub post_id: Option<String>,
    /// The key rotated to, NIP-19 (`rotate`).
    pub new_key: Option<String>,
    /// The recovery vetoed, hex (`veto`).
    pub vetoes: Option<String>,
    /// Whether this node's witness attested the proof post (`bind` and `recover`).
    pub attested: bool,
    /// The epoch it was accepted into.
    pub epoch: u64,
    /// How far that epoch's anchor is: `pending`, `anchored` or `final`.
    pub anchoring: Standing,
    /// That epoch's anchor txid, once the wallet has built one.
    pub anchor_txid: Option<String>,
    /// Height of the block holding the anchor, once confirmed.
    pub block_height: Option<u32>,
}

/// What NIP-05 serves for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nip05Answer {
    /// The key.
    pub key: nostr::PublicKey,
    /// Which state of the record it reflects: `pending`, `anchored` or `final`.
    pub state: Standing,
}

/// Anchoring health for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct AnchoringStatus {
    /// `ok`, `waiting_for_funds`, `chain_unreachable`, `rejected`, `fee_cap_reached` or `error`.
    pub health: &'static str,
    /// Human-readable reason (no secrets).
    pub message: Option<String>,
    /// Wallet tip height.
    pub tip_height: u32,
    /// Wallet balance, satoshis.
    pub balance_sat: u64,
    /// Where to send bitcoin to fund anchoring (the same address until it is
    /// paid); `null` only before the wallet first reached the Bitcoin node.
    pub funding_address: Option<String>,
    /// Epochs waiting for a transaction.
    pub queued_epochs: Vec<u64>,
    /// Epochs whose anchor is not confirmed.
    pub unconfirmed_epochs: Vec<u64>,
}

/// The service as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// The witness key (NIP-19).
    pub witness: String,
    /// The epoch operations are currently accepted into.
    pub open_epoch: u64,
    /// Operations accepted into it so far.
    pub open_epoch_operations: usize,
    /// Log size.
    pub log_size: u64,
    /// Identities known.
    pub identities: usize,
    /// Anchoring.
    pub anchoring: AnchoringStatus,
}

/// What [`IdentityService::close_epoch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochClose {
    /// No operation was accepted since the last close.
    Skipped,
    /// The epoch closed and was handed to the anchorer.
    Closed {
        /// Its number.
        epoch: u64,
        /// Its anchor, if one was built now.
        txid: Option<Txid>,
        /// Why it is queued instead, if it is.
        queued: Option<String>,
    },
}

pub(super) fn anchor_view(record: &AnchorRecord) -> AnchorView {
    let (state, height, hash, confirmations) = match record.state {
        AnchorState::Queued => ("queued", None, None, 0),
        AnchorState::Signed => ("signed", None, None, 0),
        AnchorState::Unconfirmed => ("unconfirmed", None, None, 0),
        AnchorState::Confirmed {
            height,
            block_hash,
            confirmations,
        } => (
            "confirmed",
            Some(height),
            Some(block_hash.to_string()),
            confirmations,
        ),
    };
    AnchorView {
        state,
        txid: record.txid.map(|t| t.to_string()),
        block_height: height,
        block_hash: hash,
        confirmations,
        is_final: record.is_final,
        fee_sat: record.fee.map(|f| f.to_sat()),
        vsize: record.vsize,
    }
}

pub(super) fn health_view(
    health: &Health,
    funding_address: Option<&str>,
) -> (&'static str, Option<String>) {
    match health {
        Health::Ok => ("ok", None),
        Health::WaitingForFunds { needed, available } => (
            "waiting_for_funds",
            Some(format!(
                "the next anchor needs {needed}, the wallet has {available} usable (confirmed); \
                 send bitcoin to {}",
                funding_address.unwrap_or("the funding address (`cairn identity funding-address`)")
            )),
        ),
        Health::ChainUnreachable { reason } => (
            "chain_unreachable",
            Some(format!("Bitcoin node unreachable: {reason}")),
        ),
        Health::Rejected {
            epoch,
            code,
            message,
        } => (
            "rejected",
            Some(format!(
                "epoch {epoch}: anchor rejected (code {code}): {message}"
            )),
        ),
        Health::FeeCapReached { epoch } => (
            "fee_cap_reached",
            Some(format!(
                "epoch {epoch}: unconfirmed anchor already pays the fee cap"
            )),
        ),
        Health::Error(m) => ("error", Some(m.clone())),
    }
}
