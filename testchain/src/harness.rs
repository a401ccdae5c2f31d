//! The test harness: one API over either the in-process node or a real
//! `bitcoind -regtest` (when `BITCOIND_EXE` is set).

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Address, Amount, BlockHash, OutPoint, TxOut, Txid};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::bitcoind::Bitcoind;
use crate::chain::COINBASE_MATURITY;
use crate::dialect::Dialect;
use crate::error::RpcError;
use crate::esplora::EsploraServer;
use crate::node::Node;
use crate::rpc::RpcServer;
use crate::wallet::InternalWallet;

/// Environment variable naming a `bitcoind` binary to test against instead.
pub const BITCOIND_EXE_ENV: &str = "BITCOIND_EXE";
/// RPC user name of every test chain.
pub const DEFAULT_RPC_USER: &str = "testchain";
/// Timeout of a single RPC call made by the harness.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// Harness failures.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The node answered with a JSON-RPC error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// HTTP transport failure.
    #[error("RPC transport: {0}")]
    Http(#[from] reqwest::Error),
    /// Local I/O failure (sockets, temp dirs, processes).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// `bitcoind` did not start or answer.
    #[error("bitcoind: {0}")]
    Bitcoind(String),
    /// A response did not have the expected shape.
    #[error("unexpected RPC response: {0}")]
    Unexpected(String),
    /// The internal wallet could not pay the requested amount.
    #[error("cannot fund {0}")]
    Funding(Amount),
    /// The backend does not offer this (e.g. the Esplora facade over a real bitcoind).
    #[error("not available: {0}")]
    Unsupported(&'static str),
}

/// A block in the active chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    /// Height.
    pub height: u32,
    /// Hash.
    pub hash: BlockHash,
}

enum Backend {
    InProcess {
        node: Arc<Mutex<Node>>,
        server: RpcServer,
    },
    Bitcoind(Bitcoind),
}

/// A regtest chain for one test. Dropping it (or [`TestChain::stop`]) shuts it down.
pub struct TestChain {
    backend: Backend,
    url: String,
    user: String,
    password: String,
    http: reqwest::Client,
    next_id: AtomicU64,
    /// The harness's own key: coinbases are mined to it and payments made
    /// from it, so no Core wallet is needed (Core may be built without one).
    wallet: InternalWallet,
    /// Held while choosing coins and broadcasting, so two concurrent
    /// payments never pick the same coin (the second would replace the first).
    paying: tokio::sync::Mutex<()>,
    /// The Esplora facade, started by the first [`TestChain::esplora_url`].
    esplora: tokio::sync::Mutex<Option<EsploraServer>>,
}

impl std::fmt::Debug for TestChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        f.debug_struct("TestChain")
            .field("url", &self.url)
            .field("real_bitcoind", &self.is_real_bitcoind())
            .finish()
    }
}

fn random_password() -> String {
    use bitcoin::secp256k1::rand::{thread_rng, RngCore};
    let mut b = [0u8; 16];
    thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl TestChain {
    /// Starts a real `bitcoind -regtest` if `BITCOIND_EXE` is set, else the in-process node.
    pub async fn start() -> Result<Self, HarnessError> {
        match std::env::var_os(BITCOIND_EXE_ENV) {
            Some(exe) if !exe.is_empty() => Self::start_bitcoind(Path::new(&exe)).await,
            _ => Self::start_in_process().await,
        }
    }

    /// Like [`TestChain::start`], with the in-process node answering in
    /// `dialect`. A real bitcoind (`BITCOIND_EXE`) answers as it does.
    pub async fn start_with(dialect: Dialect) -> Result<Self, HarnessError> {
        match std::env::var_os(BITCOIND_EXE_ENV) {
            Some(exe) if !exe.is_empty() => Self::start_bitcoind(Path::new(&exe)).await,
            _ => Self::start_in_process_with(dialect).await,
        }
    }

    /// Starts the in-process node and its RPC server on 127.0.0.1.
    pub async fn start_in_process() -> Result<Self, HarnessError> {
        Self::start_in_process_with(Dialect::default()).await
    }

    /// Starts the in-process node answering in `dialect`.
    pub async fn start_in_process_with(dialect: Dialect) -> Result<Self, HarnessError> {
        let password = random_password();
        let node = Arc::new(Mutex::new(Node::with_dialect(dialect)));
        let server = RpcServer::start(node.clone(), DEFAULT_RPC_USER, &password).await?;
        let url = format!("http://{}", server.addr());
        Ok(Self::with_backend(
            Backend::InProcess { node, server },
            url,
            password,
        ))
    }

    /// Starts `bitcoind -regtest` from `exe` in a temporary data directory.
    pub async fn start_bitcoind(exe: &Path) -> Result<Self, HarnessError> {
        let password = random_password();
        let bitcoind = Bitcoind::spawn(exe, DEFAULT_RPC_USER, &password)?;
        let url = format!("http://127.0.0.1:{}", bitcoind.rpc_port());
        let chain = Self::with_backend(Backend::Bitcoind(bitcoind), url, password);
        chain.wait_ready().await?;
        Ok(chain)
    }

    fn with_backend(backend: Backend, url: String, password: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_RPC_TIMEOUT)
            .build()
            .expect("static client configuration");
        Self {
            backend,
            url,
            user: DEFAULT_RPC_USER.to_string(),
            password,
            http,
            next_id: AtomicU64::new(0),
            wallet: InternalWallet::new(),
            paying: tokio::sync::Mutex::new(()),
            esplora: tokio::sync::Mutex::new(None),
        }
    }

    async fn wait_ready(&self) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Backend::Bitcoind(b) = &self.backend {
                b.check_running()?;
            }
            match self.rpc("getblockchaininfo", vec![]).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(HarnessError::Bitcoind(format!(
                        "RPC not ready after 30 s: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// RPC URL, e.g. `http://127.0.0.1:18443`.
    pub fn rpc_url(&self) -> &str {
        &self.url
    }

    /// RPC port on 127.0.0.1.
    pub fn rpc_port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// RPC user name.
    pub fn rpc_user(&self) -> &str {
        &self.user
    }

    /// RPC password (random per chain).
    pub fn rpc_password(&self) -> &str {
        &self.password
    }

    /// Base URL of an Esplora REST facade over this chain (see
    /// [`crate::esplora`]), started on the first call, e.g. `http://127.0.0.1:41234`.
    /// In-process only: with a real bitcoind there is no Esplora server, and
    /// this fails with [`HarnessError::Unsupported`].
    pub async fn esplora_url(&self) -> Result<String, HarnessError> {
        let Backend::InProcess { node, .. } = &self.backend else {
            return Err(HarnessError::Unsupported(
                "the Esplora facade serves only the in-process chain, not a real bitcoind",
            ));
        };
        let mut slot = self.esplora.lock().await;
        if slot.is_none() {
            *slot = Some(EsploraServer::start(node.clone()).await?);
        }
        Ok(slot.as_ref().map(EsploraServer::url).unwrap_or_default())
    }

    /// Whether this chain is a real `bitcoind`.
    pub fn is_real_bitcoind(&self) -> bool {
        matches!(self.backend, Backend::Bitcoind(_))
    }

    /// The in-process node, for white-box assertions; `None` with a real bitcoind.
    pub fn in_process_node(&self) -> Option<Arc<Mutex<Node>>> {
        match &self.backend {
            Backend::InProcess { node, .. } => Some(node.clone()),
            Backend::Bitcoind(_) => None,
        }
    }

    /// Calls an RPC method with positional parameters.
    pub async fn rpc(&self, method: &str, params: Vec<Value>) -> Result<Value, HarnessError> {
        self.rpc_at("", method, params).await
    }

    async fn rpc_at(
        &self,
        path: &str,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, HarnessError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .basic_auth(&self.user, Some(&self.password))
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| HarnessError::Unexpected(format!("HTTP {status}: {text}")))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(RpcError {
                code: err["code"].as_i64().unwrap_or(0) as i32,
                message: err["message"].as_str().unwrap_or_default().to_string(),
            }
            .into());
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The active tip.
    pub async fn tip(&self) -> Result<Tip, HarnessError> {
        let info = self.rpc("getblockchaininfo", vec![]).await?;
        let height = info["blocks"].as_u64().ok_or_else(|| unexpected(&info))? as u32;
        let hash = parse_hash(&info["bestblockhash"])?;
        Ok(Tip { height, hash })
    }

    /// Mines `n` blocks paying `address` (with the mempool's transactions).
    pub async fn mine(&self, n: u32, address: &Address) -> Result<Vec<BlockHash>, HarnessError> {
        let v = self
            .rpc(
                "generatetoaddress",
                vec![json!(n), json!(address.to_string())],
            )
            .await?;
        v.as_array()
            .ok_or_else(|| unexpected(&v))?
            .iter()
            .map(parse_hash)
            .collect()
    }

    /// An address of the harness's own key (mining rewards and change go there).
    pub async fn internal_address(&self) -> Result<Address, HarnessError> {
        Ok(self.wallet.address())
    }

    /// Pays `amount` to `address` from the harness's key and leaves the
    /// transaction unconfirmed in the mempool. Mines (and matures) coinbases
    /// to the key first when it has too little.
    ///
    /// Only calls every `bitcoind` has, wallet or not: `scantxoutset`,
    /// `gettxout`, `sendrawtransaction`, `generatetoaddress`; the
    /// transaction is built and signed here.
    pub async fn send(&self, address: &Address, amount: Amount) -> Result<Txid, HarnessError> {
        let _paying = self.paying.lock().await;
        let own = self.wallet.address();
        for attempt in 0..20 {
            let coins = self.spendable_coins(amount).await?;
            if let Some(tx) = self.wallet.pay(&coins, address.script_pubkey(), amount) {
                let v = self
                    .rpc("sendrawtransaction", vec![json!(serialize_hex(&tx))])
                    .await?;
                return parse_hash(&v);
            }
            // First time: one coinbase plus 100 blocks to mature it. Regtest
            // subsidies halve every 150 blocks, so later rounds may need more.
            self.mine(if attempt == 0 { 101 } else { 50 }, &own).await?;
        }
        Err(HarnessError::Funding(amount))
    }

    /// Mature confirmed coins of the harness's key that no mempool
    /// transaction spends, oldest first, until they cover `amount` with room
    /// for the fee (all of them if they do not).
    async fn spendable_coins(
        &self,
        amount: Amount,
    ) -> Result<Vec<(OutPoint, TxOut)>, HarnessError> {
        let own = self.wallet.script_pubkey();
        let desc = format!("addr({})", self.wallet.address());
        let scan = self
            .rpc("scantxoutset", vec![json!("start"), json!([desc])])
            .await?;
        let mut found: Vec<(u64, OutPoint)> = scan["unspents"]
            .as_array()
            .ok_or_else(|| unexpected(&scan))?
            .iter()
            .map(|u| {
                let txid = parse_hash(&u["txid"])?;
                let vout = u["vout"].as_u64().ok_or_else(|| unexpected(u))? as u32;
                Ok((u["height"].as_u64().unwrap_or(0), OutPoint::new(txid, vout)))
            })
            .collect::<Result<_, HarnessError>>()?;
        found.sort();
        // Generous: the wallet's fee for a few inputs is far below this.
        let target = amount + Amount::from_sat(10_000);
        let mut coins = Vec::new();
        let mut total = Amount::ZERO;
        for (_, op) in found {
            // gettxout with the mempool: null once a mempool transaction
            // spends it; it also says whether the coin is a coinbase and how
            // deep it is, which every Core release reports the same way.
            let out = self
                .rpc(
                    "gettxout",
                    vec![json!(op.txid.to_string()), json!(op.vout), json!(true)],
                )
                .await?;
            if out.is_null() {
                continue;
            }
            let confirmations = out["confirmations"].as_u64().unwrap_or(0);
            if out["coinbase"].as_bool() == Some(true)
                && confirmations < u64::from(COINBASE_MATURITY)
            {
                continue;
            }
            let value = btc_amount(&out["value"]).ok_or_else(|| unexpected(&out))?;
            total += value;
            coins.push((
                op,
                TxOut {
                    value,
                    script_pubkey: own.clone(),
                },
            ));
            if total >= target {
                break;
            }
        }
        Ok(coins)
    }

    /// Pays `amount` to `address` in a real signed transaction and confirms it
    /// in one block; returns the paid outpoint.
    pub async fn fund(&self, address: &Address, amount: Amount) -> Result<OutPoint, HarnessError> {
        let txid = self.send(address, amount).await?;
        let own = self.internal_address().await?;
        self.mine(1, &own).await?;
        let tx = self
            .rpc(
                "getrawtransaction",
                vec![json!(txid.to_string()), json!(true)],
            )
            .await?;
        let want = hex::encode(address.script_pubkey().as_bytes());
        let vout = tx["vout"]
            .as_array()
            .and_then(|outs| {
                outs.iter().find(|o| {
                    o["scriptPubKey"]["hex"].as_str() == Some(want.as_str())
                        && o["value"].as_f64().map(|v| (v * 1e8).round() as u64)
                            == Some(amount.to_sat())
                })
            })
            .and_then(|o| o["n"].as_u64())
            .ok_or_else(|| unexpected(&tx))?;
        Ok(OutPoint::new(txid, vout as u32))
    }

    /// Replaces the top `depth` blocks with `depth + 1` empty blocks: their
    /// transactions go back to the mempool. Returns the new tip.
    pub async fn reorg(&self, depth: u32) -> Result<Tip, HarnessError> {
        let tip = self.tip().await?;
        if depth == 0 || depth > tip.height {
            return Err(HarnessError::Unexpected(format!(
                "cannot reorg {depth} blocks at height {}",
                tip.height
            )));
        }
        let fork = self
            .rpc("getblockhash", vec![json!(tip.height - depth + 1)])
            .await?;
        self.rpc("invalidateblock", vec![fork]).await?;
        let own = self.internal_address().await?;
        for _ in 0..=depth {
            self.rpc("generateblock", vec![json!(own.to_string()), json!([])])
                .await?;
        }
        self.tip().await
    }

    /// Shuts the chain down (also done on drop).
    pub async fn stop(mut self) -> Result<(), HarnessError> {
        if self.is_real_bitcoind() {
            let _ = self.rpc("stop", vec![]).await;
        }
        match &mut self.backend {
            Backend::InProcess { server, .. } => {
                server.stop();
                if let Some(mut e) = self.esplora.get_mut().take() {
                    e.stop();
                }
                Ok(())
            }
            Backend::Bitcoind(b) => b.wait_or_kill(Duration::from_secs(15)).await,
        }
    }
}

/// A BTC amount as Core prints it (a JSON number with up to 8 decimals).
fn btc_amount(v: &Value) -> Option<Amount> {
    let btc = v.as_f64()?;
    (btc >= 0.0).then(|| Amount::from_sat((btc * 1e8).round() as u64))
}

fn unexpected(v: &Value) -> HarnessError {
    HarnessError::Unexpected(v.to_string())
}

fn parse_hash<T: FromStr>(v: &Value) -> Result<T, HarnessError> {
    v.as_str()
        .and_then(|s| T::from_str(s).ok())
        .ok_or_else(|| unexpected(v))
}
