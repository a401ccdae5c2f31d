//! Cairn's payments: an on-chain wallet ([`wallet`], bdk_wallet 2.x) and a
//! Lightning node ([`lightning`], ldk-node 0.7.1), both derived from the node's
//! one BIP39 seed ([`cairn_bitcoin::Seed`], file `seed` in the data
//! directory, mode 0600). Which key serves what is one table in
//! [`cairn_bitcoin::derive`]: the payments wallet is BIP86 account 0, the
//! Lightning entropy an HMAC of the master key, and the identity anchor chain
//! (account 1) is a separate wallet this crate never opens.

#![warn(missing_docs)]

pub mod events;
pub mod keyfile;
pub mod lightning;
pub mod message_payment;
pub mod nwc;
pub mod relay_link;
pub mod wallet;
pub mod wallet_backend;
pub mod zap;

mod clock;

/// ldk-node, re-exported so callers use the same types (events, payment details).
pub use ldk_node;
