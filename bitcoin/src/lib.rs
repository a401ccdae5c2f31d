//! Cairn's foundation for keys and Bitcoin, on which identity and payments
//! both stand (and no longer on each other):
//!
//! - [`seed`]: the node's one BIP39 seed file;
//! - [`derive`]: the table of everything derived from it (the anchor and
//!   payments accounts, the Lightning entropy);
//! - [`rpc`]: Bitcoin Core's JSON-RPC — one config, one error, one client;
//! - [`source`]: the chain source of a wallet (Core's RPC or Esplora);
//! - [`private_file`]: the one rule for files holding secrets;
//! - with the `wallet` feature, [`wallet`] (open a bdk wallet, emitter sync) and
//!   [`esplora`] (an Esplora client, its errors and fee estimates).
//!
//! A verifier needs only the default features: no bdk wallet, no HTTP client.

#![warn(missing_docs)]

pub mod derive;
#[cfg(feature = "wallet")]
pub mod esplora;
pub mod private_file;
pub mod rpc;
pub mod seed;
pub mod source;
#[cfg(feature = "wallet")]
pub mod wallet;

pub use derive::{lightning_seed_bytes, ANCHOR_ACCOUNT, PAYMENTS_ACCOUNT};
pub use rpc::{ChainError, RpcClient, RpcConfig, DEFAULT_RPC_TIMEOUT};
pub use seed::{Seed, SeedError, SeedOrigin, SEED_FILE_NAME};
pub use source::ChainSource;
