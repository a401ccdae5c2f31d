//! [`ServiceError`]: why a request to the service, or opening it, failed.
//!
//! Messages name what went wrong and never carry a secret (the witness key,
//! RPC credentials); callers map the variants to HTTP statuses.

use std::path::PathBuf;

use crate::anchor::AnchorError;
use crate::binding::{BindingError, RegistryError};
use crate::log::LogError;
use crate::state::StateError;
use crate::x::{FetchError, ProofError};

/// Why a request to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The binding event is not a well-formed operation.
    #[error("invalid binding event: {0}")]
    InvalidEvent(#[from] BindingError),
    /// No challenge with the operation's nonce was issued here.
    #[error("unknown challenge; request one from this node first")]
    UnknownChallenge,
    /// The challenge was already used by an accepted operation.
    #[error("challenge was already used")]
    ChallengeUsed,
    /// The challenge expired.
    #[error("challenge expired at {expires_at}")]
    ChallengeExpired {
        /// Unix seconds.
        expires_at: u64,
    },
    /// The challenge was issued for another key than the event's signer.
    #[error("challenge was issued for another key")]
    ChallengeKeyMismatch,
    /// The proof post does not prove the claim (or X could not be asked).
    #[error("proof post: {0}")]
    Proof(#[from] ProofError),
    /// What the post showed does not match the operation.
    #[error("proof post does not match the operation: {0}")]
    Mismatch(&'static str),
    /// The registry refused the operation.
    #[error("operation refused: {0}")]
    Refused(#[from] RegistryError),
    /// Nothing known under that name.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// An absence proof was asked for an `x_uid` that has a record.
    #[error("x_uid {0} has a record; look it up instead")]
    Known(u64),
    /// The cap on outstanding challenges is reached.
    #[error("too many outstanding challenges; retry in {retry_after_secs} s")]
    TooManyChallenges {
        /// Seconds until the oldest outstanding challenge expires.
        retry_after_secs: u64,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The anchoring wallet failed to open.
    #[error("anchoring: {0}")]
    Anchor(#[from] AnchorError),
    /// The witness key file.
    #[error("witness key {path}: {reason}")]
    WitnessKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The X client could not be set up.
    #[error("X client: {0}")]
    XSetup(FetchError),
    /// Other processes sharing the database kept extending the log while
    /// this one tried to store an operation; sending it again is safe.
    #[error(
        "the identity log is busy: other processes sharing the database kept writing first, \
         and nothing was stored; send it again"
    )]
    Contended,
    /// The stored rows do not replay to the stored epoch headers.
    #[error("stored identity registry is inconsistent: {0}")]
    Corrupt(String),
    /// The in-memory log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The in-memory state tree.
    #[error(transparent)]
    State(#[from] StateError),
}
