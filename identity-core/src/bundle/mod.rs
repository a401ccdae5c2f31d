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

mod absence;
mod chain;
mod codec;
mod error;
mod json;
mod pow;
mod record;
mod rpc;
mod verify;

pub use absence::{verify_absence, AbsenceBundle, VerifiedAbsence, ABSENCE_VERSION};
pub use chain::{ChainView, ChainViewError, Checkpoint, HeaderChain, HeaderChainError};
pub use codec::{DecodeError, BUNDLE_MAGIC, BUNDLE_VERSION, MAX_BUNDLE_LEN};
pub use error::{BundleError, Step};
pub use pow::{
    decode_compact, encode_compact, hash_as_number, permitted_transition, NetworkRules, Retarget,
    Target256, MAINNET_POW_LIMIT, REGTEST_POW_LIMIT, RETARGET_INTERVAL, SIGNET_POW_LIMIT,
};
pub use record::{parse_record, RecordError};
pub use rpc::RpcChainView;
pub use verify::{
    verify, VerifiedIdentity, VerifiedStatus, VerifyPolicy, DEFAULT_MIN_CONFIRMATIONS,
};

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
    /// Where the head operation's leaf is in the header's log.
    pub op_path: LogPath,
    /// Where each attestation's leaf is in the header's log, parallel to
    /// [`ProofBundle::attestations`]. Logging ties each attestation to this node's
    /// log, so an attestation cannot be swapped for another one signed later.
    pub attestation_paths: Vec<LogPath>,
    /// Inclusion proof of `key(x_uid) → record hash` against the header's state root.
    pub state_proof: StateProof,
    /// The epoch header the proofs lead to.
    pub epoch_header: EpochHeader,
    /// The anchor transaction, without witness data: the txid covers exactly
    /// those bytes, so none can be changed unnoticed. (Witnesses are dropped by
    /// [`ProofBundle::assemble`] and by the encoding.)
    pub anchor_tx: Transaction,
    /// Height of the block holding the anchor (checked against the verifier's chain).
    pub block_height: u32,
    /// `gettxoutproof` output for the anchor: block header and partial Merkle tree.
    pub merkle_block: MerkleBlock,
}

/// A leaf's position in the log and its RFC 6962 audit path; the tree size is
/// the epoch header's `log_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPath {
    /// Zero-based leaf index.
    pub leaf_index: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<Hash>,
}

/// Why a bundle could not be assembled from a node's stores.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// No operations were given.
    #[error("a bundle needs at least one operation")]
    NoOperations,
    /// The log could not produce a path.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    /// The state tree could not produce a proof.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

impl ProofBundle {
    /// Assembles a bundle for `identity` from a node's log and state tree as
    /// they stood at `header` (paths are taken at `header.log_size` and
    /// `header.state_root`, which must be in the stores).
    ///
    /// `ops` and `attestations` are as documented on the fields; the head
    /// operation's leaf is at `op_leaf_index` and the attestations' leaves at
    /// `attestation_indexes`. Nothing is verified here: run [`verify`] on the result.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble<L: crate::log::LogStore, S: crate::state::StateStore>(
        identity: &crate::binding::Identity,
        ops: Vec<Event>,
        attestations: Vec<Event>,
        op_leaf_index: u64,
        attestation_indexes: &[u64],
        log: &crate::log::MerkleLog<L>,
        state: &crate::state::SparseMerkleTree<S>,
        epoch_header: EpochHeader,
        anchor_tx: Transaction,
        block_height: u32,
        merkle_block: MerkleBlock,
    ) -> Result<Self, AssembleError> {
        if ops.is_empty() {
            return Err(AssembleError::NoOperations);
        }
        let path_of = |leaf_index: u64| -> Result<LogPath, AssembleError> {
            Ok(LogPath {
                leaf_index,
                path: log.inclusion_proof(leaf_index, epoch_header.log_size)?.path,
            })
        };
        let op_path = path_of(op_leaf_index)?;
        let attestation_paths = attestation_indexes
            .iter()
            .map(|&i| path_of(i))
            .collect::<Result<Vec<_>, _>>()?;
        let state_proof = state.prove_at(
            &epoch_header.state_root,
            &crate::state::state_key(identity.x_uid),
        )?;
        Ok(Self {
            record: identity.record_bytes(),
            ops,
            attestations,
            op_path,
            attestation_paths,
            state_proof,
            epoch_header,
            anchor_tx: codec::strip_witness(&anchor_tx),
            block_height,
            merkle_block,
        })
    }
}
