//! Cairn's identity registry: the verifier core.
//!
//! People bind an X (Twitter) account, identified by its numeric user id, to a
//! secp256k1 key. This crate holds everything needed to decide and to check
//! those bindings, and nothing that needs a database, a wallet or X, so that it
//! can be checked exhaustively and used by any program that verifies bundles:
//!
//! - [`binding`]: binding operations as Nostr events, witness attestations and the
//!   per-`x_uid` state machine that decides which operations are accepted;
//! - [`log`]: the append-only Merkle log of accepted operations (RFC 6962 hashing);
//! - [`state`]: the sparse Merkle tree mapping each `x_uid` to its current record;
//! - [`epoch`]: epoch headers and the OP_RETURN payload that anchors them on Bitcoin;
//! - [`segment`]: which operations an epoch holds, in log order, so that a
//!   mirror can replay a witness's log from its published events;
//! - [`bundle`]: proof and absence bundles and their offline verification against
//!   Bitcoin headers (a headers file, or the verifier's own node over RPC);
//! - [`hash`], [`kinds`] and [`nip01`]: the tagged hashes, the Nostr kinds and the
//!   exact NIP-01 event id the others share.
//!
//! # Dependency rule
//!
//! No SQL, BDK wallet, Lightning node or HTTP client: `cargo tree -p
//! cairn-identity-core -e normal` shows none of sqlx, bdk_wallet, ldk-node or
//! reqwest. Bitcoin access is `cairn-bitcoin` with its default features (blocking
//! Bitcoin Core RPC for [`bundle::RpcChainView`]). The witness service (X checks,
//! anchoring, storage) is `cairn-identity`, which stands on this crate; nothing
//! here knows of it.
//!
//! The normative description lives in `docs/identity-protocol.md`; keep both in step.

#![warn(missing_docs)]

pub mod binding;
pub mod bundle;
pub mod epoch;
pub mod hash;
pub mod kinds;
pub mod log;
pub mod nip01;
pub mod segment;
pub mod state;

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
