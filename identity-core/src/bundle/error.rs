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
