//! The Bitcoin Core JSON-RPC adapter: wallet sync through
//! `bdk_bitcoind_rpc::Emitter`, fee estimates, broadcast and mempool lookups.
//! Every call here blocks; the [`Anchorer`](super::Anchorer) runs them on
//! tokio's blocking pool.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bdk_bitcoind_rpc::bitcoincore_rpc::jsonrpc;
use bdk_bitcoind_rpc::bitcoincore_rpc::{self, Client, RpcApi};
use bdk_bitcoind_rpc::Emitter;
use bdk_wallet::Wallet;
use bitcoin::{FeeRate, Transaction, Txid};

/// Default timeout of one RPC call.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach Bitcoin Core's JSON-RPC server.
#[derive(Clone)]
pub struct RpcConfig {
    /// `http://host:port` (with a `/wallet/<name>` path if wanted; not needed).
    pub url: String,
    /// RPC user (`-rpcuser`).
    pub user: String,
    /// RPC password (`-rpcpassword`); never printed.
    pub password: String,
    /// Timeout of each call.
    pub timeout: Duration,
}

impl RpcConfig {
    /// A configuration with the default timeout.
    pub fn new(
        url: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            user: user.into(),
            password: password.into(),
            timeout: DEFAULT_RPC_TIMEOUT,
        }
    }
}

impl fmt::Debug for RpcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What went wrong talking to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// No answer: connection refused, timeout, HTTP failure.
    Unreachable(String),
    /// The node answered with a JSON-RPC error.
    Rpc {
        /// Bitcoin Core's error code.
        code: i32,
        /// Its message.
        message: String,
    },
    /// Anything else (unexpected answer, blocks that do not connect).
    Other(String),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "node unreachable: {e}"),
            Self::Rpc { code, message } => write!(f, "RPC error {code}: {message}"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

impl From<bitcoincore_rpc::Error> for ChainError {
    fn from(e: bitcoincore_rpc::Error) -> Self {
        match e {
            bitcoincore_rpc::Error::JsonRpc(jsonrpc::Error::Rpc(rpc)) => Self::Rpc {
                code: rpc.code,
                message: rpc.message,
            },
            bitcoincore_rpc::Error::JsonRpc(jsonrpc::Error::Transport(t)) => {
                Self::Unreachable(t.to_string())
            }
            other => Self::Other(other.to_string()),
        }
    }
}

/// Bitcoin Core's "not in mempool / no such transaction" code.
const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;

/// A connection to Bitcoin Core.
pub struct Chain {
    client: Arc<Client>,
}

impl Chain {
    /// Builds the client; no request is made yet.
    pub fn new(cfg: &RpcConfig) -> Result<Self, ChainError> {
        let transport = jsonrpc::simple_http::SimpleHttpTransport::builder()
            .url(&cfg.url)
            .map_err(|e| ChainError::Other(format!("bad RPC URL: {e}")))?
            .auth(cfg.user.as_str(), Some(cfg.password.as_str()))
            .timeout(cfg.timeout)
            .build();
        let client = Client::from_jsonrpc(jsonrpc::Client::with_transport(transport));
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// Height of the node's best block.
    pub fn tip_height(&self) -> Result<u32, ChainError> {
        Ok(self.client.get_block_count()? as u32)
    }

    /// Brings `wallet` up to the node's best chain (blocks from `start_height`
    /// when the wallet has never synced) and its mempool, at logical time `now`.
    pub fn sync(&self, wallet: &mut Wallet, start_height: u32, now: u64) -> Result<(), ChainError> {
        // Tell the emitter which unconfirmed transactions the wallet believes
        // in, so that it reports those that left the mempool as evicted.
        let expected: Vec<Arc<Transaction>> = wallet
            .transactions()
            .filter(|t| !t.chain_position.is_confirmed())
            .map(|t| t.tx_node.tx.clone())
            .collect();
        let mut emitter = Emitter::new(
            self.client.as_ref(),
            wallet.latest_checkpoint(),
            start_height,
            expected,
        );
        while let Some(ev) = emitter.next_block()? {
            wallet
                .apply_block_connected_to(&ev.block, ev.block_height(), ev.connected_to())
                .map_err(|e| ChainError::Other(format!("block does not connect: {e}")))?;
        }
        let mempool = emitter.mempool_at(now)?;
        wallet.apply_evicted_txs(mempool.evicted);
        wallet.apply_unconfirmed_txs(mempool.update);
        Ok(())
    }

    /// `estimatesmartfee` for `target` blocks; `None` when the node has no estimate.
    pub fn estimate_fee_rate(&self, target: u16) -> Result<Option<FeeRate>, ChainError> {
        let est = self.client.estimate_smart_fee(target, None)?;
        // BTC per 1000 vB → sat per 1000 WU: divide by 4.
        Ok(est
            .fee_rate
            .map(|per_kvb| FeeRate::from_sat_per_kwu(per_kvb.to_sat() / 4)))
    }

    /// `sendrawtransaction`.
    pub fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        Ok(self.client.send_raw_transaction(tx)?)
    }

    /// Whether `txid` is in the node's mempool (`getmempoolentry`).
    pub fn in_mempool(&self, txid: &Txid) -> Result<bool, ChainError> {
        match self.client.get_mempool_entry(txid) {
            Ok(_) => Ok(true),
            Err(e) => match ChainError::from(e) {
                ChainError::Rpc { code, .. } if code == RPC_INVALID_ADDRESS_OR_KEY => Ok(false),
                other => Err(other),
            },
        }
    }
}
