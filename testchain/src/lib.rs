//! `cairn-testchain`: an in-process Bitcoin regtest node for tests.
//!
//! Real rust-bitcoin blocks at regtest difficulty, really mined; a mempool that
//! checks inputs, fees, standardness, finality and scripts (with
//! `libbitcoinconsensus`); and Bitcoin Core's JSON-RPC for the calls BDK's
//! `bdk_bitcoind_rpc` and ldk-node make. [`TestChain`] is the entry point; with
//! `BITCOIND_EXE` set it drives a real `bitcoind -regtest` instead.
//!
//! Dev-only: never a normal dependency of the `cairn` binary. See the crate's
//! README for the RPC subset, the checks and the real-bitcoind switch.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_testchain::HarnessError> {
//! use bitcoin::Amount;
//! use cairn_testchain::{wallet::InternalWallet, TestChain};
//!
//! let chain = TestChain::start().await?;
//! let mine = InternalWallet::new();
//! let coin = chain.fund(&mine.address(), Amount::from_sat(100_000)).await?;
//! chain.mine(6, &mine.address()).await?;
//! let tip = chain.reorg(2).await?;
//! # let _ = (coin, tip);
//! chain.stop().await?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod bitcoind;
pub mod chain;
pub mod dialect;
pub mod error;
pub mod esplora;
pub mod format;
pub mod harness;
pub mod loopback;
pub mod mempool;
pub mod miner;
pub mod node;
pub mod ports;
pub mod rpc;
pub mod validation;
pub mod wallet;

pub use dialect::{CoreVersion, Dialect};
pub use error::{Error, RejectKind, RpcError, TxReject};
pub use harness::{HarnessError, TestChain, Tip, BITCOIND_EXE_ENV};
pub use node::Node;
