//! Bitcoin Core's JSON-RPC interface over HTTP (basic auth, JSON-RPC 1.0 and
//! 2.0 envelopes, batches) for the subset of calls BDK, ldk-node and tests make.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::merkle_tree::MerkleBlock;
use bitcoin::{Address, Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::chain::Chain;
use crate::dialect::Dialect;
use crate::error::{codes, Error, RejectKind, RpcError};
use crate::format::{
    btc, descriptor_checksum, difficulty, script_descriptor, script_pubkey_json, tx_json,
};
use crate::loopback::LoopbackServer;
use crate::mempool::{Mempool, MempoolEntry};
use crate::node::{Node, DEFAULT_MAX_FEE_RATE_SAT_PER_KVB};

/// Every method the server answers.
pub const METHODS: &[&str] = &[
    "decoderawtransaction",
    "estimatesmartfee",
    "generateblock",
    "generatetoaddress",
    "getbestblockhash",
    "getblock",
    "getblockchaininfo",
    "getblockcount",
    "getblockfilter",
    "getblockhash",
    "getblockheader",
    "getdifficulty",
    "getmempoolentry",
    "getmempoolinfo",
    "getnetworkinfo",
    "getrawmempool",
    "getrawtransaction",
    "gettxout",
    "gettxoutproof",
    "invalidateblock",
    "ping",
    "reconsiderblock",
    "scantxoutset",
    "sendrawtransaction",
    "testmempoolaccept",
    "uptime",
    "verifytxoutproof",
];

struct ServerState {
    node: Arc<Mutex<Node>>,
    expected_auth: String,
    started: Instant,
}

/// A running RPC server; dropping it shuts the listener down.
#[derive(Debug)]
pub struct RpcServer {
    server: LoopbackServer,
}

impl RpcServer {
    /// Binds 127.0.0.1 on a random port and serves `node`.
    pub async fn start(
        node: Arc<Mutex<Node>>,
        user: &str,
        password: &str,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let state = Arc::new(ServerState {
            node,
            expected_auth: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            started: Instant::now(),
        });
        let app = Router::new()
            .route("/", post(handle))
            .route("/wallet/{name}", post(handle))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state);
        Ok(Self {
            server: LoopbackServer::spawn(listener, app)?,
        })
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops accepting connections.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

async fn handle(State(st): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == st.expected_auth);
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")],
        )
            .into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            let body = json!({"result": null, "error": {"code": codes::PARSE_ERROR, "message": "Parse error"}, "id": null});
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, &body);
        }
    };
    match request {
        Value::Array(reqs) => {
            let out: Vec<Value> = reqs.iter().map(|r| process_one(&st, r).1).collect();
            json_response(StatusCode::OK, &Value::Array(out))
        }
        req => {
            let (status, body) = process_one(&st, &req);
            json_response(status, &body)
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Core 28+: JSON-RPC 2.0 requests always get HTTP 200 and no `error: null`;
/// legacy requests get `result` and `error` both, and HTTP errors on failure.
fn process_one(st: &ServerState, req: &Value) -> (StatusCode, Value) {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let v2 = req.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let result = match (req.get("method").and_then(Value::as_str), req.get("params")) {
        (None, _) => Err((
            codes::INVALID_REQUEST,
            "Method must be a string".to_string(),
        )),
        (Some(m), None | Some(Value::Null)) => {
            call(st, m, &[]).map_err(|e| (e.code(), e.to_string()))
        }
        (Some(m), Some(Value::Array(p))) => call(st, m, p).map_err(|e| (e.code(), e.to_string())),
        (Some(_), Some(_)) => Err((
            codes::INVALID_REQUEST,
            "Params must be an array".to_string(),
        )),
    };
    match (result, v2) {
        (Ok(r), true) => (
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "result": r, "id": id}),
        ),
        (Ok(r), false) => (
            StatusCode::OK,
            json!({"result": r, "error": null, "id": id}),
        ),
        (Err((code, message)), true) => (
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id}),
        ),
        (Err((code, message)), false) => {
            let status = match code {
                codes::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
                codes::INVALID_REQUEST => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (
                status,
                json!({"result": null, "error": {"code": code, "message": message}, "id": id}),
            )
        }
    }
}

fn call(st: &ServerState, method: &str, params: &[Value]) -> Result<Value, Error> {
    if method == "uptime" {
        return Ok(json!(st.started.elapsed().as_secs()));
    }
    let mut node = st.node.lock();
    dispatch(&mut node, method, params)
}

/// Executes one RPC call against `node`. Public so tests can call it without HTTP.
pub fn dispatch(node: &mut Node, method: &str, params: &[Value]) -> Result<Value, Error> {
    let p = Params(params);
    match method {
        "ping" => Ok(Value::Null),
        "getblockcount" => Ok(json!(node.chain.tip_height())),
        "getbestblockhash" => Ok(json!(node.chain.tip_hash().to_string())),
        "getdifficulty" => Ok(json!(difficulty(
            node.chain.tip().block.header.bits.to_consensus()
        ))),
        "getblockhash" => {
            let h = p.i64(0, "height")?;
            u32::try_from(h)
                .ok()
                .and_then(|h| node.chain.hash_at(h))
                .map(|h| json!(h.to_string()))
                .ok_or(Error::HeightOutOfRange)
        }
        "getblockchaininfo" => Ok(blockchain_info(&node.chain, &node.dialect)),
        "getblockheader" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            let e = node.chain.entry(&hash).ok_or(Error::BlockNotFound)?;
            if p.opt_bool(1, "verbose")?.unwrap_or(true) {
                Ok(Value::Object(header_json(
                    &node.chain,
                    &node.dialect,
                    &hash,
                )))
            } else {
                Ok(json!(serialize_hex(&e.block.header)))
            }
        }
        "getblock" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            let verbosity = p.verbosity(1, 1)?;
            getblock(&node.chain, &node.dialect, &hash, verbosity)
        }
        "getrawtransaction" => getrawtransaction(node, &p),
        "getblockfilter" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            if let Some(t) = p.opt_str(1, "filtertype")? {
                if t != "basic" {
                    return Err(Error::UnknownFilterType);
                }
            }
            let (filter, header) = node.block_filter(&hash)?;
            Ok(json!({"filter": hex::encode(filter), "header": header.to_string()}))
        }
        "decoderawtransaction" => {
            let tx = p.tx(0)?;
            Ok(Value::Object(tx_json(&tx, false)))
        }
        "sendrawtransaction" => {
            let tx = p.tx(0)?;
            let max_rate = p.fee_rate(1)?.unwrap_or(DEFAULT_MAX_FEE_RATE_SAT_PER_KVB);
            let max_burn = p.amount(2)?.unwrap_or(Amount::ZERO);
            if tx
                .output
                .iter()
                .any(|o| o.script_pubkey.is_op_return() && o.value > max_burn)
            {
                return Err(Error::MaxBurnExceeded);
            }
            node.send_raw_transaction(tx, max_rate)
                .map(|t| json!(t.to_string()))
        }
        "testmempoolaccept" => testmempoolaccept(node, &p),
        "getrawmempool" => {
            if p.opt_bool(1, "mempool_sequence")?.unwrap_or(false) {
                return Err(Error::InvalidParameter(
                    "mempool_sequence is not supported by testchain".into(),
                ));
            }
            if p.opt_bool(0, "verbose")?.unwrap_or(false) {
                let mut m = Map::new();
                for e in node.mempool.entries() {
                    m.insert(
                        e.txid.to_string(),
                        mempool_entry_json(&node.mempool, &node.dialect, e),
                    );
                }
                Ok(Value::Object(m))
            } else {
                Ok(json!(node
                    .mempool
                    .entries()
                    .iter()
                    .map(|e| e.txid.to_string())
                    .collect::<Vec<_>>()))
            }
        }
        "getmempoolentry" => {
            let txid: Txid = p.hash(0, "txid")?;
            let e = node.mempool.get(&txid).ok_or(Error::NotInMempool)?;
            Ok(mempool_entry_json(&node.mempool, &node.dialect, e))
        }
        "getmempoolinfo" => {
            let entries = node.mempool.entries();
            let bytes: u64 = entries.iter().map(|e| e.vsize).sum();
            let fees: Amount = entries.iter().map(|e| e.fee).sum();
            let min = Amount::from_sat(node.dialect.version.min_relay_fee_sat_per_kvb());
            let mut info = json!({
                "loaded": true,
                "size": entries.len(),
                "bytes": bytes,
                "usage": entries.iter().map(|e| e.weight + 256).sum::<u64>(),
                "total_fee": btc(fees),
                "maxmempool": 300_000_000u64,
                "mempoolminfee": btc(min),
                "minrelaytxfee": btc(min),
                "incrementalrelayfee": btc(min),
                "unbroadcastcount": 0,
            });
            if node.dialect.cluster_mempool_fields() {
                info["permitbaremultisig"] = json!(true);
                info["maxdatacarriersize"] = json!(100_000);
                info["limitclustercount"] = json!(64);
                info["limitclustersize"] = json!(101_000);
                info["optimal"] = json!(true);
            } else {
                info["fullrbf"] = json!(true);
            }
            Ok(info)
        }
        "gettxout" => gettxout(node, &p),
        "scantxoutset" => scantxoutset(&node.chain, &node.dialect, &p),
        "gettxoutproof" => gettxoutproof(&node.chain, &p),
        "verifytxoutproof" => verifytxoutproof(&node.chain, &p),
        "estimatesmartfee" => {
            let target = p.i64(0, "conf_target")?;
            if !(1..=1008).contains(&target) {
                return Err(Error::InvalidParameter(
                    "Invalid conf_target, must be between 1 and 1008".into(),
                ));
            }
            if let Some(mode) = p.opt_str(1, "estimate_mode")? {
                if !["unset", "economical", "conservative"].contains(&mode.to_lowercase().as_str())
                {
                    return Err(Error::InvalidParameter(
                        "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"".into(),
                    ));
                }
            }
            // A fresh regtest node has no fee data: Core answers exactly this.
            Ok(json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}))
        }
        "generatetoaddress" => {
            let n = p.i64(0, "nblocks")?;
            let addr = parse_address(p.str(1, "address")?)?;
            let n =
                u32::try_from(n).map_err(|_| Error::InvalidParameter("Invalid nblocks".into()))?;
            let hashes = node.generate(n, &addr);
            Ok(json!(hashes
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()))
        }
        "generateblock" => generateblock(node, &p),
        "invalidateblock" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            node.invalidate_block(&hash).map(|_| Value::Null)
        }
        "reconsiderblock" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            node.reconsider_block(&hash).map(|_| Value::Null)
        }
        "getnetworkinfo" => Ok(json!({
            "version": node.dialect.version.client_version(),
            "subversion": node.dialect.version.subversion(),
            "protocolversion": 70016,
            "localservices": "0000000000000c09",
            "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
            "localrelay": true,
            "timeoffset": 0,
            "networkactive": true,
            "connections": 0,
            "connections_in": 0,
            "connections_out": 0,
            "networks": [],
            "relayfee": btc(Amount::from_sat(node.dialect.version.min_relay_fee_sat_per_kvb())),
            "incrementalfee": btc(Amount::from_sat(node.dialect.version.min_relay_fee_sat_per_kvb())),
            "localaddresses": [],
            "warnings": warnings(&node.dialect),
        })),
        _ => Err(Error::MethodNotFound),
    }
}

fn parse_address(s: &str) -> Result<ScriptBuf, Error> {
    Address::from_str(s)
        .ok()
        .and_then(|a| a.require_network(Network::Regtest).ok())
        .map(|a| a.script_pubkey())
        .ok_or(Error::InvalidAddress)
}

/// No warnings, as a string before Core 28 and an array since.
fn warnings(dialect: &Dialect) -> Value {
    if dialect.warnings_as_string() {
        json!("")
    } else {
        json!([])
    }
}

/// Core 29+'s `target`: the header's proof-of-work target as 64 hex digits.
fn target_hex(header: &bitcoin::block::Header) -> String {
    hex::encode(header.target().to_be_bytes())
}

fn blockchain_info(chain: &Chain, dialect: &Dialect) -> Value {
    let tip = chain.tip();
    let mut info = json!({
        "chain": "regtest",
        "blocks": tip.height,
        "headers": tip.height,
        "bestblockhash": chain.tip_hash().to_string(),
        "difficulty": difficulty(tip.block.header.bits.to_consensus()),
        "time": tip.block.header.time,
        "mediantime": tip.median_time,
        "verificationprogress": 1.0,
        "initialblockdownload": false,
        "chainwork": hex::encode(tip.chainwork.to_be_bytes()),
        "size_on_disk": 0,
        "pruned": false,
        "warnings": warnings(dialect),
    });
    if dialect.sends_target() {
        info["bits"] = json!(format!("{:08x}", tip.block.header.bits.to_consensus()));
        info["target"] = json!(target_hex(&tip.block.header));
    }
    info
}

/// `getblockheader` verbose object (also the common part of `getblock`).
fn header_json(chain: &Chain, dialect: &Dialect, hash: &BlockHash) -> Map<String, Value> {
    let e = chain.entry(hash).expect("caller checked");
    let h = &e.block.header;
    let mut o = Map::new();
    o.insert("hash".into(), json!(hash.to_string()));
    o.insert("confirmations".into(), json!(chain.confirmations(hash)));
    o.insert("height".into(), json!(e.height));
    o.insert("version".into(), json!(h.version.to_consensus()));
    o.insert(
        "versionHex".into(),
        json!(format!("{:08x}", h.version.to_consensus())),
    );
    o.insert("merkleroot".into(), json!(h.merkle_root.to_string()));
    o.insert("time".into(), json!(h.time));
    o.insert("mediantime".into(), json!(e.median_time));
    o.insert("nonce".into(), json!(h.nonce));
    o.insert(
        "bits".into(),
        json!(format!("{:08x}", h.bits.to_consensus())),
    );
    if dialect.sends_target() {
        o.insert("target".into(), json!(target_hex(h)));
    }
    o.insert(
        "difficulty".into(),
        json!(difficulty(h.bits.to_consensus())),
    );
    o.insert(
        "chainwork".into(),
        json!(hex::encode(e.chainwork.to_be_bytes())),
    );
    o.insert("nTx".into(), json!(e.block.txdata.len()));
    if e.height > 0 {
        o.insert(
            "previousblockhash".into(),
            json!(h.prev_blockhash.to_string()),
        );
    }
    if let Some(next) = chain.next_hash(hash) {
        o.insert("nextblockhash".into(), json!(next.to_string()));
    }
    o
}

fn getblock(
    chain: &Chain,
    dialect: &Dialect,
    hash: &BlockHash,
    verbosity: u8,
) -> Result<Value, Error> {
    let e = chain.entry(hash).ok_or(Error::BlockNotFound)?;
    if verbosity == 0 {
        return Ok(json!(serialize_hex(&e.block)));
    }
    let mut o = header_json(chain, dialect, hash);
    let b = &e.block;
    o.insert("strippedsize".into(), json!(b.header_and_base_size()));
    o.insert("size".into(), json!(b.total_size()));
    o.insert("weight".into(), json!(b.weight().to_wu()));
    let txs: Vec<Value> = if verbosity == 1 {
        b.txdata
            .iter()
            .map(|t| json!(t.compute_txid().to_string()))
            .collect()
    } else {
        let prevouts: std::collections::HashMap<OutPoint, Amount> = e
            .undo()
            .iter()
            .map(|(op, c)| (*op, c.output.value))
            .collect();
        b.txdata
            .iter()
            .map(|t| {
                let mut j = tx_json(t, true);
                if !t.is_coinbase() {
                    let ins: Option<Amount> = t
                        .input
                        .iter()
                        .map(|i| prevouts.get(&i.previous_output).copied())
                        .sum();
                    if let Some(ins) = ins {
                        let outs: Amount = t.output.iter().map(|o| o.value).sum();
                        j.insert("fee".into(), btc(ins - outs));
                    }
                }
                Value::Object(j)
            })
            .collect()
    };
    o.insert("tx".into(), Value::Array(txs));
    if dialect.sends_coinbase_tx() {
        if let Some(cb) = b.txdata.first() {
            o.insert("coinbase_tx".into(), coinbase_tx_json(cb));
        }
    }
    Ok(Value::Object(o))
}

/// Core 30+'s `coinbase_tx`: what the coinbase carries besides its outputs.
fn coinbase_tx_json(cb: &bitcoin::Transaction) -> Value {
    let mut o = Map::new();
    o.insert("version".into(), json!(cb.version.0));
    o.insert("locktime".into(), json!(cb.lock_time.to_consensus_u32()));
    if let Some(input) = cb.input.first() {
        o.insert("sequence".into(), json!(input.sequence.0));
        o.insert(
            "coinbase".into(),
            json!(hex::encode(input.script_sig.as_bytes())),
        );
        // The witness reserved value, when the coinbase has a witness.
        if let Some(item) = input.witness.nth(0) {
            o.insert("witness".into(), json!(hex::encode(item)));
        }
    }
    Value::Object(o)
}

trait BlockSizes {
    fn header_and_base_size(&self) -> usize;
}

impl BlockSizes for bitcoin::Block {
    fn header_and_base_size(&self) -> usize {
        let txs: usize = self.txdata.iter().map(|t| t.base_size()).sum();
        80 + bitcoin::VarInt(self.txdata.len() as u64).size() + txs
    }
}

fn getrawtransaction(node: &Node, p: &Params) -> Result<Value, Error> {
    let txid: Txid = p.hash(0, "txid")?;
    let verbose = p.verbosity(1, 0)? > 0;
    let blockhash: Option<BlockHash> = p.opt_hash(2, "blockhash")?;
    let chain = &node.chain;
    let (tx, block): (Transaction, Option<BlockHash>) = if let Some(bh) = blockhash {
        let e = chain.entry(&bh).ok_or(Error::BlockHashNotFound)?;
        let tx = e
            .block
            .txdata
            .iter()
            .find(|t| t.compute_txid() == txid)
            .ok_or(Error::TxNotInBlock)?;
        (tx.clone(), Some(bh))
    } else if let Some(e) = node.mempool.get(&txid) {
        (e.tx.clone(), None)
    } else if let Some((tx, e)) = chain.tx(&txid) {
        (tx.clone(), Some(e.block.block_hash()))
    } else {
        return Err(Error::TxNotFound);
    };
    if !verbose {
        return Ok(json!(serialize_hex(&tx)));
    }
    let mut o = Map::new();
    if blockhash.is_some() {
        o.insert(
            "in_active_chain".into(),
            json!(block.is_some_and(|b| chain.is_active(&b))),
        );
    }
    o.extend(tx_json(&tx, true));
    if let Some(bh) = block {
        let e = chain.entry(&bh).expect("known");
        o.insert("blockhash".into(), json!(bh.to_string()));
        let conf = chain.confirmations(&bh);
        o.insert("confirmations".into(), json!(conf.max(0)));
        o.insert("time".into(), json!(e.block.header.time));
        o.insert("blocktime".into(), json!(e.block.header.time));
    }
    Ok(Value::Object(o))
}

fn testmempoolaccept(node: &Node, p: &Params) -> Result<Value, Error> {
    let raw = p.array(0, "rawtxs")?;
    if raw.is_empty() || raw.len() > 25 {
        return Err(Error::InvalidParameter(
            "Array must contain between 1 and 25 transactions.".into(),
        ));
    }
    let max_rate = p.fee_rate(1)?.unwrap_or(DEFAULT_MAX_FEE_RATE_SAT_PER_KVB);
    let mut out = Vec::new();
    for r in raw {
        let hex = r.as_str().ok_or_else(|| type_error(r, "string"))?;
        let tx: Transaction = deserialize_hex(hex).map_err(|_| {
            Error::Deserialization(format!(
                "TX decode failed: {hex} Make sure the tx has at least one input."
            ))
        })?;
        let mut o = Map::new();
        o.insert("txid".into(), json!(tx.compute_txid().to_string()));
        o.insert("wtxid".into(), json!(tx.compute_wtxid().to_string()));
        match node.test_accept(&tx, max_rate) {
            Ok(acc) => {
                o.insert("allowed".into(), json!(true));
                o.insert("vsize".into(), json!(acc.vsize));
                o.insert(
                    "fees".into(),
                    json!({
                        "base": btc(acc.fee),
                        "effective-feerate": btc(Amount::from_sat(acc.fee.to_sat() * 1000 / acc.vsize)),
                        "effective-includes": [tx.compute_wtxid().to_string()],
                    }),
                );
            }
            Err(Error::Rejected(r)) => {
                o.insert("allowed".into(), json!(false));
                o.insert("reject-reason".into(), json!(r.testmempoolaccept_reason()));
                // Core 29+ adds the details, except for missing inputs.
                if node.dialect.version.sends_reject_details()
                    && r.kind != RejectKind::MissingInputs
                {
                    o.insert("reject-details".into(), json!(r.to_string()));
                }
            }
            Err(Error::MaxFeeExceeded) => {
                o.insert("allowed".into(), json!(false));
                o.insert("reject-reason".into(), json!("max-fee-exceeded"));
            }
            Err(e) => return Err(e),
        }
        out.push(Value::Object(o));
    }
    Ok(Value::Array(out))
}

fn mempool_entry_json(mempool: &Mempool, dialect: &Dialect, e: &MempoolEntry) -> Value {
    let anc = mempool.ancestors_inclusive(&e.txid);
    let desc = mempool.descendants_inclusive(&e.txid);
    let sum = |set: &std::collections::BTreeSet<Txid>| -> (u64, Amount) {
        set.iter()
            .filter_map(|t| mempool.get(t))
            .fold((0, Amount::ZERO), |(s, f), x| (s + x.vsize, f + x.fee))
    };
    let (anc_size, anc_fee) = sum(&anc);
    let (desc_size, desc_fee) = sum(&desc);
    let mut entry = json!({
        "vsize": e.vsize,
        "weight": e.weight,
        "time": e.time,
        "height": e.height,
        "descendantcount": desc.len(),
        "descendantsize": desc_size,
        "ancestorcount": anc.len(),
        "ancestorsize": anc_size,
        "wtxid": e.wtxid.to_string(),
        "fees": {
            "base": btc(e.fee),
            "modified": btc(e.fee),
            "ancestor": btc(anc_fee),
            "descendant": btc(desc_fee),
        },
        "depends": mempool.parents(&e.tx).iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "spentby": mempool.children(&e.txid).iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "unbroadcast": false,
    });
    // Current Core sends it only with -deprecatedrpc=bip125 (every
    // transaction is replaceable under full RBF); clients must not need it.
    if dialect.sends_bip125_replaceable() {
        entry["bip125-replaceable"] = json!(e.bip125_replaceable);
    }
    if dialect.cluster_mempool_fields() {
        let (weight, fee) = mempool.chunk(&e.txid);
        entry["chunkweight"] = json!(weight);
        entry["fees"]["chunk"] = btc(fee);
    }
    entry
}

fn gettxout(node: &Node, p: &Params) -> Result<Value, Error> {
    let txid: Txid = p.hash(0, "txid")?;
    let n = p.i64(1, "n")?;
    let include_mempool = p.opt_bool(2, "include_mempool")?.unwrap_or(true);
    let Ok(vout) = u32::try_from(n) else {
        return Ok(Value::Null);
    };
    let op = OutPoint::new(txid, vout);
    let chain = &node.chain;
    let (out, confirmations, coinbase) = if include_mempool {
        if node.mempool.spender(&op).is_some() {
            return Ok(Value::Null);
        }
        if let Some(e) = node.mempool.get(&txid) {
            match e.tx.output.get(vout as usize) {
                Some(o) => (o.clone(), 0, false),
                None => return Ok(Value::Null),
            }
        } else {
            match chain.coin(&op) {
                Some(c) => (
                    c.output.clone(),
                    chain.tip_height() - c.height + 1,
                    c.is_coinbase,
                ),
                None => return Ok(Value::Null),
            }
        }
    } else {
        match chain.coin(&op) {
            Some(c) => (
                c.output.clone(),
                chain.tip_height() - c.height + 1,
                c.is_coinbase,
            ),
            None => return Ok(Value::Null),
        }
    };
    Ok(json!({
        "bestblock": chain.tip_hash().to_string(),
        "confirmations": confirmations,
        "value": btc(out.value),
        "scriptPubKey": script_pubkey_json(&out.script_pubkey),
        "coinbase": coinbase,
    }))
}

/// `scantxoutset start [descriptors]` for `addr(...)` and `raw(...)`
/// descriptors: the confirmed UTXOs paying them. Core has it without a wallet,
/// so a harness can find its own coins on any `bitcoind`.
fn scantxoutset(chain: &Chain, dialect: &Dialect, p: &Params) -> Result<Value, Error> {
    match p.str(0, "action")? {
        "start" => {}
        // No scan ever runs in the background here.
        "status" => return Ok(Value::Null),
        "abort" => return Ok(json!(false)),
        other => return Err(Error::InvalidParameter(format!("Invalid action '{other}'"))),
    }
    let mut scripts = Vec::new();
    for d in p.array(1, "scanobjects")? {
        let desc = match d {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o
                .get("desc")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::InvalidParameter("Invalid scan object".into()))?,
            other => {
                return Err(Error::InvalidParameter(format!(
                    "Invalid scan object {other}"
                )))
            }
        };
        scripts.push(descriptor_script(desc)?);
    }
    let mut unspents: Vec<(&OutPoint, &crate::chain::Coin)> = chain
        .utxos()
        .filter(|(_, c)| scripts.contains(&c.output.script_pubkey))
        .collect();
    unspents.sort_by_key(|(op, c)| (c.height, **op));
    let tip = chain.tip_height();
    let mut total = Amount::ZERO;
    let list: Vec<Value> = unspents
        .iter()
        .map(|(op, c)| {
            total += c.output.value;
            let mut u = json!({
                "txid": op.txid.to_string(),
                "vout": op.vout,
                "scriptPubKey": hex::encode(c.output.script_pubkey.as_bytes()),
                "desc": script_descriptor(&c.output.script_pubkey),
                "amount": btc(c.output.value),
                "coinbase": c.is_coinbase,
                "height": c.height,
            });
            // Core 28 added where the coin is.
            if dialect.version >= crate::dialect::CoreVersion::V28 {
                let hash = chain.hash_at(c.height).expect("a coin's block is active");
                u["blockhash"] = json!(hash.to_string());
                u["confirmations"] = json!(tip - c.height + 1);
            }
            u
        })
        .collect();
    Ok(json!({
        "success": true,
        "txouts": chain.utxos().count(),
        "height": tip,
        "bestblock": chain.tip_hash().to_string(),
        "unspents": list,
        "total_amount": btc(total),
    }))
}

/// The script of an `addr(ADDRESS)` or `raw(HEX)` descriptor, with or
/// without its checksum (a wrong checksum is an error, as in Core).
fn descriptor_script(desc: &str) -> Result<ScriptBuf, Error> {
    let body = match desc.split_once('#') {
        Some((body, sum)) => {
            if descriptor_checksum(body).as_deref() != Some(sum) {
                return Err(Error::InvalidDescriptor(format!(
                    "Provided checksum '{sum}' does not match computed checksum"
                )));
            }
            body
        }
        None => desc,
    };
    let bad = || Error::InvalidDescriptor(format!("'{body}' is not a valid descriptor function"));
    if let Some(a) = body.strip_prefix("addr(").and_then(|r| r.strip_suffix(')')) {
        return parse_address(a)
            .map_err(|_| Error::InvalidDescriptor("Address is not valid".into()));
    }
    if let Some(h) = body.strip_prefix("raw(").and_then(|r| r.strip_suffix(')')) {
        return hex::decode(h)
            .map(ScriptBuf::from_bytes)
            .map_err(|_| Error::InvalidDescriptor("Raw script is not hex".into()));
    }
    Err(bad())
}

fn gettxoutproof(chain: &Chain, p: &Params) -> Result<Value, Error> {
    let list = p.array(0, "txids")?;
    let mut txids = Vec::new();
    for v in list {
        let s = v.as_str().ok_or_else(|| type_error(v, "string"))?;
        let t: Txid = parse_hash(s, "txid")?;
        if txids.contains(&t) {
            return Err(Error::InvalidParameter(format!(
                "Invalid parameter, duplicated txid: {s}"
            )));
        }
        txids.push(t);
    }
    let blockhash = match p.opt_hash::<BlockHash>(1, "blockhash")? {
        Some(bh) => {
            chain.entry(&bh).ok_or(Error::BlockNotFound)?;
            bh
        }
        None => {
            let first = txids
                .first()
                .ok_or_else(|| Error::InvalidParameter("txids must not be empty".into()))?;
            chain.find_tx(first).ok_or(Error::TxNotYetInBlock)?.0
        }
    };
    let block = &chain.entry(&blockhash).expect("known").block;
    let in_block: Vec<Txid> = block.txdata.iter().map(|t| t.compute_txid()).collect();
    if !txids.iter().all(|t| in_block.contains(t)) {
        return Err(Error::TxsNotInBlock);
    }
    let mb = MerkleBlock::from_block_with_predicate(block, |t| txids.contains(t));
    Ok(json!(serialize_hex(&mb)))
}

fn verifytxoutproof(chain: &Chain, p: &Params) -> Result<Value, Error> {
    let hex = p.str(0, "proof")?;
    let mb: MerkleBlock =
        deserialize_hex(hex).map_err(|_| Error::Deserialization("Proof decode failed".into()))?;
    let mut matches = Vec::new();
    let mut indexes = Vec::new();
    // Like Core: a proof whose tree does not hash to the header's root proves nothing.
    let root = mb.txn.extract_matches(&mut matches, &mut indexes).ok();
    if root != Some(mb.header.merkle_root) {
        return Ok(json!([]));
    }
    if !chain.is_active(&mb.header.block_hash()) {
        return Err(Error::BlockNotInChain);
    }
    Ok(json!(matches
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()))
}

fn generateblock(node: &mut Node, p: &Params) -> Result<Value, Error> {
    let output = p.str(0, "output")?;
    let payout = parse_address(output).map_err(|_| Error::InvalidAddressOrDescriptor)?;
    let list = p.array(1, "transactions")?;
    let submit = p.opt_bool(2, "submit")?.unwrap_or(true);
    let mut txs = Vec::new();
    for v in list {
        let s = v.as_str().ok_or_else(|| type_error(v, "string"))?;
        if s.len() == 64 {
            if let Ok(txid) = Txid::from_str(s) {
                let e = node
                    .mempool
                    .get(&txid)
                    .ok_or(Error::GenerateTxNotInMempool(txid))?;
                txs.push(e.tx.clone());
                continue;
            }
        }
        let tx: Transaction = deserialize_hex(s).map_err(|_| {
            Error::Deserialization(format!(
                "Transaction decode failed for {s}. Make sure the tx has at least one input."
            ))
        })?;
        txs.push(tx);
    }
    let block = node.generate_block(&payout, txs, submit)?;
    let mut o = Map::new();
    o.insert("hash".into(), json!(block.block_hash().to_string()));
    if !submit {
        o.insert("hex".into(), json!(serialize_hex(&block)));
    }
    Ok(Value::Object(o))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(v: &Value, expected: &str) -> Error {
    Error::Type(format!(
        "JSON value of type {} is not of expected type {expected}",
        type_name(v)
    ))
}

fn parse_hash<T: FromStr>(s: &str, name: &str) -> Result<T, Error> {
    if s.len() != 64 {
        return Err(Error::InvalidParameter(format!(
            "{name} must be of length 64 (not {}, for '{s}')",
            s.len()
        )));
    }
    T::from_str(s).map_err(|_| {
        Error::InvalidParameter(format!("{name} must be hexadecimal string (not '{s}')"))
    })
}

/// Positional parameter accessors with Core's error messages.
struct Params<'a>(&'a [Value]);

impl Params<'_> {
    fn get(&self, i: usize) -> Option<&Value> {
        self.0.get(i).filter(|v| !v.is_null())
    }

    fn required(&self, i: usize, name: &str) -> Result<&Value, Error> {
        self.get(i)
            .ok_or_else(|| Error::Misc(format!("Missing required parameter \"{name}\"")))
    }

    fn str(&self, i: usize, name: &str) -> Result<&str, Error> {
        let v = self.required(i, name)?;
        v.as_str().ok_or_else(|| type_error(v, "string"))
    }

    fn opt_str(&self, i: usize, _name: &str) -> Result<Option<&str>, Error> {
        match self.get(i) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| type_error(v, "string")),
        }
    }

    fn i64(&self, i: usize, name: &str) -> Result<i64, Error> {
        let v = self.required(i, name)?;
        v.as_i64().ok_or_else(|| type_error(v, "number"))
    }

    fn opt_bool(&self, i: usize, _name: &str) -> Result<Option<bool>, Error> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(type_error(v, "bool")),
        }
    }

    fn array(&self, i: usize, name: &str) -> Result<&Vec<Value>, Error> {
        let v = self.required(i, name)?;
        v.as_array().ok_or_else(|| type_error(v, "array"))
    }

    fn hash<T: FromStr>(&self, i: usize, name: &str) -> Result<T, Error> {
        parse_hash(self.str(i, name)?, name)
    }

    fn opt_hash<T: FromStr>(&self, i: usize, name: &str) -> Result<Option<T>, Error> {
        match self.opt_str(i, name)? {
            None => Ok(None),
            Some(s) => parse_hash(s, name).map(Some),
        }
    }

    /// Verbosity given as bool or number, like `getblock`/`getrawtransaction` accept.
    fn verbosity(&self, i: usize, default: u8) -> Result<u8, Error> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(u8::from(*b)),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|n| *n <= 3)
                .map(|n| n as u8)
                .ok_or_else(|| Error::InvalidParameter("Invalid verbosity".into())),
            Some(v) => Err(type_error(v, "number")),
        }
    }

    fn tx(&self, i: usize) -> Result<Transaction, Error> {
        let hex = self.str(i, "hexstring")?;
        deserialize_hex(hex).map_err(|_| {
            Error::Deserialization(
                "TX decode failed. Make sure the tx has at least one input.".into(),
            )
        })
    }

    /// An amount in BTC (number or string).
    fn amount(&self, i: usize) -> Result<Option<Amount>, Error> {
        let Some(v) = self.get(i) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_f64().and_then(|f| Amount::from_btc(f).ok()),
            Value::String(s) => Amount::from_str_in(s, bitcoin::Denomination::Bitcoin).ok(),
            _ => return Err(type_error(v, "number")),
        };
        parsed
            .map(Some)
            .ok_or_else(|| Error::Type("Invalid amount".into()))
    }

    /// A fee rate in BTC/kvB, returned as sat/kvB.
    fn fee_rate(&self, i: usize) -> Result<Option<u64>, Error> {
        Ok(self.amount(i)?.map(|a| a.to_sat()))
    }
}

/// Converts an [`Error`] to the wire error object.
pub fn error_object(e: &Error) -> RpcError {
    RpcError::from(e)
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
