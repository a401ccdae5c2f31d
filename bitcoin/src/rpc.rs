//! Bitcoin Core's JSON-RPC: one configuration type ([`RpcConfig`]), one error
//! type ([`ChainError`]) and one client ([`RpcClient`]) for every part of the
//! node that talks to Core — the anchor and payments wallets, the bundle
//! verifier's chain view, the message CLI and the start-up check.
//!
//! Every method of [`RpcClient`] blocks (bounded by [`RpcConfig::timeout`]);
//! async code calls [`RpcClient::run`], which moves the call to tokio's
//! blocking pool.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bdk_bitcoind_rpc::bitcoincore_rpc::jsonrpc;
use bdk_bitcoind_rpc::bitcoincore_rpc::jsonrpc::simple_http;
use bdk_bitcoind_rpc::bitcoincore_rpc::{self, Client, RpcApi};
use bitcoin::block::Header;
use bitcoin::{Amount, BlockHash, FeeRate, Transaction, Txid};

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

    /// The same configuration with another call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The host and port of [`Self::url`], for clients that want them apart
    /// (ldk-node). Only `http://` URLs: Core's RPC server speaks plain HTTP.
    pub fn host_port(&self) -> Result<(String, u16), ChainError> {
        let bad = |why: &str| ChainError::Other(format!("bad RPC URL: {why}"));
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| bad("it must start with http://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        // Credentials in the URL are not the host.
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| bad("the port is not a number"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        Ok((host.to_owned(), port))
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

/// What went wrong talking to the chain source (Core's RPC or Esplora).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// No answer: connection refused, timeout, HTTP failure.
    Unreachable(String),
    /// Core refused the RPC user and password (HTTP 401 or 403).
    Unauthorized,
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

impl std::error::Error for ChainError {}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "node unreachable: {e}"),
            Self::Unauthorized => write!(f, "the node refused the RPC user and password"),
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
                match t.downcast_ref::<simple_http::Error>() {
                    Some(simple_http::Error::HttpErrorCode(401 | 403)) => Self::Unauthorized,
                    _ => Self::Unreachable(t.to_string()),
                }
            }
            other => Self::Other(other.to_string()),
        }
    }
}

/// Bitcoin Core's "not in mempool / no such transaction / block not found" code.
pub const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;
/// Bitcoin Core's code for a height out of range.
pub const RPC_INVALID_PARAMETER: i32 = -8;

/// A client of Bitcoin Core's JSON-RPC. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    client: Arc<Client>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the RPC password; never print it.
        f.debug_struct("RpcClient").finish_non_exhaustive()
    }
}

impl RpcClient {
    /// Builds the client; no request is made yet.
    pub fn new(cfg: &RpcConfig) -> Result<Self, ChainError> {
        let transport = jsonrpc::simple_http::SimpleHttpTransport::builder()
            .url(&cfg.url)
            // The URL may hold credentials: name only what is wrong with it.
            .map_err(|e| match e {
                simple_http::Error::InvalidUrl { reason, .. } => {
                    ChainError::Other(format!("bad RPC URL: {reason}"))
                }
                other => ChainError::Unreachable(other.to_string()),
            })?
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

    /// `estimatesmartfee` for `target` blocks; `None` when the node has no estimate.
    pub fn estimate_fee_rate(&self, target: u16) -> Result<Option<FeeRate>, ChainError> {
        let est = self.client.estimate_smart_fee(target, None)?;
        Ok(est.fee_rate.map(fee_rate_from_btc_per_kvb))
    }

    /// `sendrawtransaction`.
    pub fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        Ok(self.client.send_raw_transaction(tx)?)
    }

    /// The hash of the active chain's block at `height`; `None` above the tip.
    pub fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, ChainError> {
        not_found_is_none(self.client.get_block_hash(u64::from(height)))
    }

    /// The header of block `hash`.
    pub fn header(&self, hash: &BlockHash) -> Result<Header, ChainError> {
        Ok(self.client.get_block_header(hash)?)
    }

    /// The height of block `hash` when it is on the active chain; `None` for
    /// an unknown block or one a reorg left behind.
    pub fn active_height(&self, hash: &BlockHash) -> Result<Option<u32>, ChainError> {
        // Read only the two fields needed rather than bitcoincore-rpc's whole
        // typed header, whose other fields Core releases may add or drop.
        let info = self.client.call::<jsonrpc::serde_json::Value>(
            "getblockheader",
            &[
                jsonrpc::serde_json::Value::String(hash.to_string()),
                jsonrpc::serde_json::Value::Bool(true),
            ],
        );
        let Some(info) = not_found_is_none(info)? else {
            return Ok(None);
        };
        let field = |name: &str| {
            info.get(name)
                .and_then(jsonrpc::serde_json::Value::as_i64)
                .ok_or_else(|| {
                    ChainError::Other(format!("getblockheader answer without {name}: {info}"))
                })
        };
        // Core reports -1 confirmations for a block off the active chain.
        if field("confirmations")? < 0 {
            return Ok(None);
        }
        let height = field("height")?;
        u32::try_from(height)
            .map(Some)
            .map_err(|_| ChainError::Other(format!("block height {height} out of range")))
    }

    /// Transaction `txid`, looked up in `block` (without `-txindex` Core finds
    /// a confirmed transaction only in its block) or in the mempool.
    pub fn transaction(
        &self,
        txid: &Txid,
        block: Option<&BlockHash>,
    ) -> Result<Transaction, ChainError> {
        Ok(self.client.get_raw_transaction(txid, block)?)
    }

    /// `gettxoutproof`: the serialized merkle block proving `txid` is in `block`.
    pub fn tx_out_proof(&self, txid: &Txid, block: &BlockHash) -> Result<Vec<u8>, ChainError> {
        Ok(self.client.get_tx_out_proof(&[*txid], Some(block))?)
    }

    /// The underlying client, for bdk's emitter.
    #[cfg(feature = "wallet")]
    pub(crate) fn inner(&self) -> &Client {
        &self.client
    }

    /// Runs `f` (blocking calls on this client) on tokio's blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RpcClient) -> Result<T, ChainError> + Send + 'static,
    ) -> Result<T, ChainError> {
        let client = self.clone();
        tokio::task::spawn_blocking(move || f(&client))
            .await
            .map_err(|e| ChainError::Other(format!("RPC task failed: {e}")))?
    }

    /// The node's network, from `getblockchaininfo`'s `chain` (`main`,
    /// `test`, `testnet4`, `signet`, `regtest`); only that field is read.
    pub fn network(&self) -> Result<bitcoin::Network, ChainError> {
        let info: jsonrpc::serde_json::Value = self.client.call("getblockchaininfo", &[])?;
        let chain = info["chain"]
            .as_str()
            .ok_or_else(|| ChainError::Other("getblockchaininfo has no `chain`".into()))?;
        bitcoin::Network::from_core_arg(chain).map_err(|_| {
            ChainError::Other(format!("unknown chain `{chain}` from getblockchaininfo"))
        })
    }

    /// Whether `txid` is in the node's mempool (`getmempoolentry`).
    pub fn in_mempool(&self, txid: &Txid) -> Result<bool, ChainError> {
        // Only the answer's existence matters. bitcoincore-rpc's typed
        // `get_mempool_entry` demands `bip125-replaceable`, which Core 28+
        // sends only with -deprecatedrpc=bip125; parsing it broke anchoring
        // on current Core. Every call here reads only what Core 25-31 all send.
        let entry = self.client.call::<jsonrpc::serde::de::IgnoredAny>(
            "getmempoolentry",
            &[jsonrpc::serde_json::Value::String(txid.to_string())],
        );
        match entry {
            Ok(_) => Ok(true),
            Err(e) => match ChainError::from(e) {
                ChainError::Rpc { code, .. } if code == RPC_INVALID_ADDRESS_OR_KEY => Ok(false),
                other => Err(other),
            },
        }
    }
}

/// Maps Core's "not found" answers (unknown block or transaction, height
/// out of range) to `None`.
fn not_found_is_none<T>(r: Result<T, bitcoincore_rpc::Error>) -> Result<Option<T>, ChainError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => match ChainError::from(e) {
            ChainError::Rpc { code, .. }
                if code == RPC_INVALID_ADDRESS_OR_KEY || code == RPC_INVALID_PARAMETER =>
            {
                Ok(None)
            }
            other => Err(other),
        },
    }
}

/// Bitcoin Core reports feerates in BTC per 1,000 vB; 1 vB is 4 weight units.
pub fn fee_rate_from_btc_per_kvb(per_kvb: Amount) -> FeeRate {
    FeeRate::from_sat_per_kwu(per_kvb.to_sat() / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_feerates_convert_to_sat_per_vb() {
        // 0.00002 BTC/kvB = 2,000 sat per 1,000 vB = 2 sat/vB.
        let rate = fee_rate_from_btc_per_kvb(Amount::from_sat(2_000));
        assert_eq!(rate.to_sat_per_vb_floor(), 2);
        assert_eq!(rate.to_sat_per_kwu(), 500);
        let rate = fee_rate_from_btc_per_kvb(Amount::from_sat(12_345));
        assert_eq!(rate.to_sat_per_vb_ceil(), 13);
    }

    #[test]
    fn host_and_port_of_rpc_urls() {
        let hp = |url: &str| RpcConfig::new(url, "u", "p").host_port();
        assert_eq!(
            hp("http://127.0.0.1:18443").unwrap(),
            ("127.0.0.1".into(), 18443)
        );
        assert_eq!(
            hp("http://node:8332/wallet/x").unwrap(),
            ("node".into(), 8332)
        );
        assert_eq!(hp("http://[::1]:18443").unwrap(), ("::1".into(), 18443));
        assert_eq!(hp("http://localhost").unwrap(), ("localhost".into(), 80));
        assert!(hp("https://node:8332").is_err());
        assert!(hp("http://:8332").is_err());
        assert!(hp("http://node:port").is_err());
    }
}
