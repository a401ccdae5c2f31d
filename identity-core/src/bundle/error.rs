//! Why a bundle did not verify: one variant per link of the proof.

use bitcoin::{merkle_tree::MerkleBlockError, BlockHash};
use nostr::PublicKey;

use super::{chain::ChainViewError, codec::DecodeError, record::RecordError};
use crate::{binding::BindingError, epoch::EpochError, log::LogProofError, state::StateProofError};

/// A failed link in a proof bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bytes are not a canonical bundle.
    #[error("bundle does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The record bytes are malformed.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// The bundle holds no binding operation.
    #[error("bundle has no binding operation")]
    NoOperations,
    /// A binding operation event is invalid (id, signature, kind or tags).
    #[error("binding operation {index}: {source}")]
    Operation {
        /// Position in the bundle's operations.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: BindingError,
    },
    /// The operations do not form one `seq`/`prev` chain for the record's `x_uid`.
    #[error("operation {index} breaks the chain: {reason}")]
    BrokenChain {
        /// Position in the bundle's operations.
        index: usize,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An operation is not allowed in the state the previous ones produced (§6).
    #[error("operation {index} is not allowed: {reason}")]
    Transition {
        /// Position in the bundle's operations.
        index: usize,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Replaying the operations does not give the committed record.
    #[error("operations do not produce the committed record: {0}")]
    RecordMismatch(&'static str),
    /// The number of attestations differs from the number of `bind`/`recover` operations.
    #[error("expected {expected} witness attestations, found {found}")]
    AttestationCount {
        /// `bind`/`recover` operations in the bundle.
        expected: usize,
        /// Attestations in the bundle.
        found: usize,
    },
    /// An attestation event is invalid, or does not describe its operation.
    #[error("witness attestation {index}: {source}")]
    Attestation {
        /// Position in the bundle's attestations.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: BindingError,
    },
    /// An attestation is signed by a witness the policy does not accept.
    #[error("witness attestation {index} is signed by untrusted witness {witness}")]
    UntrustedWitness {
        /// Position in the bundle's attestations.
        index: usize,
        /// The signing key.
        witness: PublicKey,
    },
    /// The head operation's log path does not lead to the header's log root.
    #[error("log inclusion of the head operation: {0}")]
    OpLogInclusion(#[source] LogProofError),
    /// An attestation's log path does not lead to the header's log root.
    #[error("log inclusion of witness attestation {index}: {source}")]
    AttestationLogInclusion {
        /// Position in the bundle's attestations.
        index: usize,
        /// Why the path failed.
        #[source]
        source: LogProofError,
    },
    /// The number of attestation log paths differs from the number of attestations.
    #[error("{paths} attestation log paths for {attestations} attestations")]
    AttestationPathCount {
        /// Paths in the bundle.
        paths: usize,
        /// Attestations in the bundle.
        attestations: usize,
    },
    /// A log leaf index is above 2^53 − 1 (§11.3 step 6; no JSON reader could carry it exactly).
    #[error("log leaf index {0} is above 2^53 - 1")]
    LeafIndexTooLarge(u64),
    /// An attestation's leaf is not where the node logs it: right before its
    /// operation's leaf (for the head operation), and in order before the head otherwise.
    #[error("witness attestation {index} is not logged before its operation: {reason}")]
    AttestationOrder {
        /// Position in the bundle's attestations.
        index: usize,
        /// Which placement rule it breaks.
        reason: &'static str,
    },
    /// The state proof does not show `x_uid → record hash` under the header's state root.
    #[error("state proof: {0}")]
    StateProof(#[source] StateProofError),
    /// The anchor transaction's serialization (without witness) is 64 bytes,
    /// the length of an inner Merkle node: it could pose as one.
    #[error("anchor transaction is 64 bytes long")]
    SixtyFourByteTransaction,
    /// The anchor transaction has no inputs, so it cannot be an anchor.
    #[error("anchor transaction has no inputs")]
    NoInputs,
    /// The header's `prev_header_hash` does not fit its epoch number (all
    /// zeros exactly for epoch 0).
    #[error("epoch header: {0}")]
    HeaderLink(&'static str),
    /// The anchor transaction does not commit to the epoch header.
    #[error("anchor output: {0}")]
    Anchor(#[source] EpochError),
    /// The partial Merkle tree is malformed or its root is not the block's.
    #[error("merkle block: {0}")]
    MerkleBlock(#[source] MerkleBlockError),
    /// The partial Merkle tree's unused flag bits are not zero.
    #[error("merkle block has non-zero padding bits")]
    MerkleBlockPadding,
    /// The Merkle block does not prove exactly the anchor transaction.
    #[error("merkle block does not prove exactly the anchor transaction")]
    TxNotInBlock,
    /// The block header's difficulty is outside what the network allows.
    #[error("block header bits are not valid for the network")]
    BadBits,
    /// The block header's hash does not meet its target.
    #[error("block header does not meet its proof-of-work target")]
    ProofOfWork,
    /// The block is not on the verifier's active chain.
    #[error("block {0} is not on the verifier's chain")]
    NotOnChain(BlockHash),
    /// The block is on the verifier's chain at another height than the bundle says.
    #[error("block is at height {actual} on the verifier's chain, bundle says {claimed}")]
    HeightMismatch {
        /// Height in the bundle.
        claimed: u32,
        /// Height in the verifier's chain.
        actual: u32,
    },
    /// Too few blocks on top of the anchor.
    #[error("anchor has {confirmations} confirmations, {required} required")]
    InsufficientConfirmations {
        /// Confirmations in the verifier's chain.
        confirmations: u32,
        /// What the policy requires.
        required: u32,
    },
    /// The verifier's chain view failed.
    #[error(transparent)]
    ChainView(#[from] ChainViewError),
}

/// The verification steps of §11.3 (and §11.5), in order. Which step owns a
/// rule is normative: a verifier that reports steps reports the first one, in
/// this order, whose check fails (the test vectors name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// 0. The bytes (or JSON) are not a canonical bundle.
    Decode,
    /// 1. The record bytes (§6.1); for an absence bundle, the `x_uid`.
    Record,
    /// 2. The operations: well-formed, one `x_uid`, one chain from a `bind`.
    Operations,
    /// 3. The witness attestations.
    Attestations,
    /// 4. Replaying the registry rules.
    Replay,
    /// 5. The replay gives the committed record.
    RecordMatch,
    /// 6. Log inclusion of the head operation and the attestations.
    Log,
    /// 7. The state proof.
    State,
    /// 8. The epoch header and the anchor transaction.
    Anchor,
    /// 9. The anchor's inclusion in its block.
    BlockInclusion,
    /// 10. The block's proof of work.
    ProofOfWork,
    /// 11. The block is on the verifier's chain at the claimed height.
    Linkage,
    /// 12. Enough confirmations.
    Confirmations,
}

impl Step {
    /// The step's name as the test vectors spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Step::Decode => "decode",
            Step::Record => "record",
            Step::Operations => "operations",
            Step::Attestations => "attestations",
            Step::Replay => "replay",
            Step::RecordMatch => "record-match",
            Step::Log => "log",
            Step::State => "state",
            Step::Anchor => "anchor",
            Step::BlockInclusion => "block-inclusion",
            Step::ProofOfWork => "proof-of-work",
            Step::Linkage => "linkage",
            Step::Confirmations => "confirmations",
        }
    }

    /// The step's number in §11.3 (0 for decoding).
    pub fn number(&self) -> u8 {
        *self as u8
    }
}

impl BundleError {
    /// The step that rejected the bundle; `None` when the verifier could not
    /// reach a verdict (its chain view failed).
    pub fn step(&self) -> Option<Step> {
        use BundleError as E;
        Some(match self {
            E::Decode(_) => Step::Decode,
            E::Record(_) => Step::Record,
            E::NoOperations | E::Operation { .. } | E::BrokenChain { .. } => Step::Operations,
            E::AttestationCount { .. } | E::Attestation { .. } | E::UntrustedWitness { .. } => {
                Step::Attestations
            }
            E::Transition { .. } => Step::Replay,
            E::RecordMismatch(_) => Step::RecordMatch,
            E::OpLogInclusion(_)
            | E::AttestationLogInclusion { .. }
            | E::AttestationPathCount { .. }
            | E::LeafIndexTooLarge(_)
            | E::AttestationOrder { .. } => Step::Log,
            E::StateProof(_) => Step::State,
            E::HeaderLink(_) | E::SixtyFourByteTransaction | E::NoInputs | E::Anchor(_) => {
                Step::Anchor
            }
            E::MerkleBlock(_) | E::MerkleBlockPadding | E::TxNotInBlock => Step::BlockInclusion,
            E::BadBits | E::ProofOfWork => Step::ProofOfWork,
            E::NotOnChain(_) | E::HeightMismatch { .. } => Step::Linkage,
            E::InsufficientConfirmations { .. } => Step::Confirmations,
            E::ChainView(_) => return None,
        })
    }
}
