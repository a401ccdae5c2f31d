//! Cairn's payments: an on-chain wallet ([`wallet`], bdk_wallet 2.x) and a
//! Lightning node ([`lightning`], ldk-node 0.7.1), both derived from the node's
//! one BIP39 seed (`cairn_identity::anchor::Seed`, file `seed` in the data
//! directory, mode 0600).
//!
//! Key separation, all from that seed:
//!
//! | use | derivation |
//! | --- | --- |
//! | identity anchor chain | BIP86 account 1 (`cairn_identity::anchor::ANCHOR_ACCOUNT`) |
//! | payments on-chain wallet | BIP86 account 0 ([`wallet::PAYMENTS_ACCOUNT`]) |
//! | Lightning node entropy | [`entropy::lightning_seed_bytes`]: HMAC-SHA512 keyed with a Cairn tag over the BIP32 master key |
//!
//! The two on-chain wallets are separate bdk wallets on separate accounts, so
//! the payments wallet can never spend the anchor chain's output.

#![warn(missing_docs)]

pub mod chain_source;
pub mod entropy;
pub mod events;
pub mod keyfile;
pub mod lightning;
pub mod message_payment;
pub mod nwc;
pub mod wallet;
pub mod zap;

mod fsutil;

pub use cairn_identity::anchor::{Seed, SeedError, SeedOrigin};
/// ldk-node, re-exported so callers use the same types (events, payment details).
pub use ldk_node;
