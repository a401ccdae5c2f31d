//! Cairn's identity registry, pure logic.
//!
//! People bind an X (Twitter) account, identified by its numeric user id, to a
//! secp256k1 key. This crate holds the parts that need no network, wallet or
//! database, so that they can be checked exhaustively and reused by verifiers:
//!
//! - [`log`]: the append-only Merkle log of accepted operations (RFC 6962 hashing);
//! - [`state`]: the sparse Merkle tree mapping each `x_uid` to its current record;
//! - [`epoch`]: epoch headers and the OP_RETURN payload that anchors them on Bitcoin;
//! - [`bundle`]: proof bundles and their offline verification against Bitcoin headers;
//! - [`binding`]: binding operations as Nostr events, witness attestations and the
//!   per-`x_uid` state machine that decides which operations are accepted;
//! - [`service`]: the node-side service tying them to X, SQL storage and anchoring.
//!
//! The normative description lives in `docs/identity-protocol.md`; keep both in step.

#![warn(missing_docs)]

pub mod anchor;
pub mod binding;
pub mod bundle;
pub mod epoch;
pub mod hash;
pub mod kinds;
pub mod log;
pub mod service;
pub mod state;
pub mod x;

pub use hash::Hash;

/// A failure of a storage backend behind [`log::LogStore`] or [`state::StateStore`].
///
/// Backends live in other crates (SQLite, Postgres) and have their own error
/// types; boxing them keeps the tree code independent of any one of them.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct StoreError {
    /// What the store was doing.
    pub context: &'static str,
    /// The backend's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// Wraps a backend error with a short description of the failed operation.
    pub fn new(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            context,
            source: source.into(),
        }
    }
}
