//! Proof bundles: everything needed to check one `x_uid`'s binding offline.
//!
//! A [`ProofBundle`] carries the signed binding operations of an identity, the
//! witness attestations behind them, a log inclusion path, a state tree path,
//! the epoch header, the anchor transaction and its `gettxoutproof` Merkle
//! block. [`verify`] checks every link from the user's signature up to a block
//! header on the verifier's own chain ([`ChainView`]), so nothing the node says
//! is taken on trust except what the trusted witness attested.
//!
//! The wire format is a canonical binary encoding ([`ProofBundle::to_bytes`]);
//! any byte changed in it makes decoding or verification fail. The format and
//! the verification algorithm are normative in `docs/identity-protocol.md` §11.

mod chain;
mod codec;
mod error;
mod record;
mod rpc;
mod verify;

pub use chain::{ChainView, ChainViewError, Checkpoint, HeaderChain, HeaderChainError};
pub use codec::{DecodeError, BUNDLE_MAGIC, BUNDLE_VERSION, MAX_BUNDLE_LEN};
pub use error::BundleError;
pub use record::{parse_record, RecordError};
pub use rpc::RpcChainView;
pub use verify::{verify, VerifiedIdentity, VerifiedStatus, VerifyPolicy, DEFAULT_MIN_CONFIRMATIONS};

use bitcoin::{MerkleBlock, Transaction};
use nostr::Event;

use crate::{epoch::EpochHeader, state::StateProof, Hash};

/// A proof of one `x_uid`'s current binding as of one anchored epoch.
///
/// Fields are public so that bundles can be assembled from a node's stores and
/// inspected; [`verify`] trusts none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofBundle {
    /// The identity's record as committed in the state tree (§6.1 bytes).
    pub record: Vec<u8>,
    /// Binding operations in `seq` order, from a `bind` up to the record's head:
    /// either the whole chain from `seq` 0 or a suffix starting at a later `bind`.
    pub ops: Vec<Event>,
    /// One witness attestation per `bind`/`recover` in [`ProofBundle::ops`], in the same order.
    pub attestations: Vec<Event>,
    /// Log index of the head operation's leaf.
    pub op_leaf_index: u64,
    /// RFC 6962 audit path of the head operation's leaf in the header's log.
    pub op_path: Vec<Hash>,
    /// Audit path of the head operation's attestation, whose leaf sits right
    /// before the operation's (index `op_leaf_index - 1`). Present exactly when
    /// the head operation is a `bind` or `recover`.
    pub attestation_path: Option<Vec<Hash>>,
    /// Inclusion proof of `key(x_uid) → record hash` against the header's state root.
    pub state_proof: StateProof,
    /// The epoch header the proofs lead to.
    pub epoch_header: EpochHeader,
    /// The anchor transaction. Encoded without witness data: the txid covers
    /// exactly those bytes, so none can be changed unnoticed.
    pub anchor_tx: Transaction,
    /// Height of the block holding the anchor (checked against the verifier's chain).
    pub block_height: u32,
    /// `gettxoutproof` output for the anchor: block header and partial Merkle tree.
    pub merkle_block: MerkleBlock,
}
