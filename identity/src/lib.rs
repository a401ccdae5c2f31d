//! Cairn's identity witness service: what a node runs to register and anchor
//! X (Twitter) bindings.
//!
//! The records, the log, the state tree, epochs and proof bundles are the
//! verifier core, [`cairn_identity_core`], re-exported here under the same
//! paths (`cairn_identity::binding`, `::bundle`, …). This crate adds what needs
//! the network, a wallet or a database:
//!
//! - [`x`]: issuing challenges and checking proof posts on X's public endpoints;
//! - [`anchor`]: the BDK wallet that anchors each epoch header in an OP_RETURN,
//!   with fee bumps and re-anchoring after reorgs;
//! - [`service`]: the node-side service tying them to SQL storage (identity's
//!   own migrations, `identity/migrations/`) and to the relay.
//!
//! # Dependency rule
//!
//! This crate stands on `cairn-identity-core` and `cairn-bitcoin` (with its
//! `wallet` feature), never the other way round; nothing that only verifies
//! bundles should depend on it. It knows nothing of the relay except the
//! database pool it is handed ([`service::IdentityDb`]) and the
//! [`service::Publisher`] it publishes through.
//!
//! The normative description lives in `docs/identity-protocol.md`; keep both in step.

#![warn(missing_docs)]

pub mod anchor;
pub mod service;
pub mod x;

pub use cairn_identity_core::{
    binding, bundle, epoch, hash, kinds, log, segment, state, Hash, StoreError,
};
