//! A facade serving the part of the Esplora REST API that `bdk_esplora` 0.22
//! (through esplora-client 0.12) and ldk-node 0.7.1's Esplora chain source
//! (its BDK wallet sync, lightning-transaction-sync 0.2, fee estimates and
//! broadcast) call, from the in-process node's chain and mempool.
//!
//! Dev-only, like the rest of the crate: it has no address index, so
//! script-hash queries walk the active chain (fine for test-sized chains).
//! Answers use Esplora's (electrs) JSON field names; errors are plain text
//! with electrs' status codes (404 for unknown objects, 400 for bad input and
//! rejected transactions).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bitcoin::consensus::encode::{serialize, serialize_hex};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::merkle_tree::MerkleBlock;
use bitcoin::{BlockHash, OutPoint, Script, Transaction, TxOut, Txid};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::chain::{BlockEntry, Chain};
use crate::error::RpcError;
use crate::format::{difficulty, script_address, script_asm, script_type};
use crate::loopback::LoopbackServer;
use crate::node::{Node, DEFAULT_MAX_FEE_RATE_SAT_PER_KVB};

/// Confirmed transactions per page of `/scripthash/:hash/txs` (as electrs).
const CHAIN_TXS_PER_PAGE: usize = 25;
/// Mempool transactions on the first page of `/scripthash/:hash/txs` (as electrs).
const MEMPOOL_TXS_PER_PAGE: usize = 50;
/// Blocks per answer of `/blocks` (as Blockstream's Esplora).
const BLOCKS_PER_PAGE: u32 = 10;

type Shared = Arc<Mutex<Node>>;

/// A running Esplora facade; dropping it shuts the listener down.
#[derive(Debug)]
pub struct EsploraServer {
    server: LoopbackServer,
}

impl EsploraServer {
    /// Binds 127.0.0.1 on a random port and serves `node`.
    pub async fn start(node: Shared) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let app = Router::new()
            .route("/blocks/tip/height", get(tip_height))
            .route("/blocks/tip/hash", get(tip_hash))
            .route("/blocks", get(blocks_at_tip))
            .route("/blocks/{height}", get(blocks_from))
            .route("/block-height/{height}", get(block_at_height))
            .route("/block/{hash}", get(block_info))
            .route("/block/{hash}/header", get(block_header))
            .route("/block/{hash}/status", get(block_status))
            .route("/block/{hash}/txids", get(block_txids))
            .route("/block/{hash}/raw", get(block_raw))
            .route("/tx", post(broadcast))
            .route("/tx/{txid}", get(tx_info))
            .route("/tx/{txid}/raw", get(tx_raw))
            .route("/tx/{txid}/hex", get(tx_hex))
            .route("/tx/{txid}/status", get(tx_status_route))
            .route("/tx/{txid}/merkleblock-proof", get(merkleblock_proof))
            .route("/tx/{txid}/outspend/{vout}", get(outspend))
            .route("/tx/{txid}/outspends", get(outspends))
            .route("/scripthash/{hash}/txs", get(scripthash_txs))
            .route("/scripthash/{hash}/txs/mempool", get(scripthash_mempool))
            .route(
                "/scripthash/{hash}/txs/chain/{last_seen}",
                get(scripthash_chain_after),
            )
            .route("/fee-estimates", get(fee_estimates))
            .with_state(node);
        Ok(Self {
            server: LoopbackServer::spawn(listener, app)?,
        })
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops accepting connections.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body.into()).into_response()
}

fn ok_text(body: impl Into<String>) -> Response {
    text(StatusCode::OK, body)
}

fn ok_json(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn ok_bytes(b: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        b,
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    text(StatusCode::NOT_FOUND, format!("{what} not found"))
}

fn bad_request(msg: impl Into<String>) -> Response {
    text(StatusCode::BAD_REQUEST, msg)
}

/// A malformed path parameter: 400 with electrs' message.
struct BadInput(String);

impl IntoResponse for BadInput {
    fn into_response(self) -> Response {
        bad_request(self.0)
    }
}

fn parse<T: FromStr>(s: &str, what: &str) -> Result<T, BadInput> {
    T::from_str(s).map_err(|_| BadInput(format!("Invalid {what}")))
}

async fn tip_height(State(node): State<Shared>) -> Response {
    ok_text(node.lock().chain.tip_height().to_string())
}

async fn tip_hash(State(node): State<Shared>) -> Response {
    ok_text(node.lock().chain.tip_hash().to_string())
}

async fn blocks_at_tip(State(node): State<Shared>) -> Response {
    let node = node.lock();
    ok_json(blocks_down_from(&node.chain, node.chain.tip_height()))
}

async fn blocks_from(State(node): State<Shared>, Path(height): Path<String>) -> Response {
    let height: u32 = match parse(&height, "height") {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let node = node.lock();
    ok_json(blocks_down_from(
        &node.chain,
        height.min(node.chain.tip_height()),
    ))
}

/// Up to [`BLOCKS_PER_PAGE`] active blocks from `height` downwards.
fn blocks_down_from(chain: &Chain, height: u32) -> Value {
    let lowest = height.saturating_sub(BLOCKS_PER_PAGE - 1);
    Value::Array(
        (lowest..=height)
            .rev()
            .filter_map(|h| chain.hash_at(h))
            .filter_map(|hash| chain.entry(&hash).map(block_info_json))
            .collect(),
    )
}

fn block_info_json(e: &BlockEntry) -> Value {
    let h = &e.block.header;
    json!({
        "id": e.block.block_hash().to_string(),
        "height": e.height,
        "version": h.version.to_consensus(),
        "timestamp": h.time,
        "tx_count": e.block.txdata.len(),
        "size": e.block.total_size(),
        "weight": e.block.weight().to_wu(),
        "merkle_root": h.merkle_root.to_string(),
        "previousblockhash": if e.height == 0 { Value::Null } else { json!(h.prev_blockhash.to_string()) },
        "mediantime": e.median_time,
        "nonce": h.nonce,
        "bits": h.bits.to_consensus(),
        "difficulty": difficulty(h.bits.to_consensus()),
    })
}

async fn block_at_height(State(node): State<Shared>, Path(height): Path<String>) -> Response {
    let height: u32 = match parse(&height, "height") {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    match node.lock().chain.hash_at(height) {
        Some(hash) => ok_text(hash.to_string()),
        None => not_found("Block"),
    }
}

/// Runs `f` on a known block (active or stale), or answers 404.
fn with_block(
    node: &Shared,
    hash: &str,
    f: impl FnOnce(&Chain, &BlockEntry) -> Response,
) -> Response {
    let hash: BlockHash = match parse(hash, "hex string") {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let node = node.lock();
    match node.chain.entry(&hash) {
        Some(e) => f(&node.chain, e),
        None => not_found("Block"),
    }
}

async fn block_info(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    with_block(&node, &hash, |_, e| ok_json(block_info_json(e)))
}

async fn block_header(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    with_block(&node, &hash, |_, e| ok_text(serialize_hex(&e.block.header)))
}

async fn block_status(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    with_block(&node, &hash, |chain, e| {
        let h = e.block.block_hash();
        // electrs omits height and next_best for blocks off the best chain.
        if chain.is_active(&h) {
            ok_json(json!({
                "in_best_chain": true,
                "height": e.height,
                "next_best": chain.next_hash(&h).map(|n| n.to_string()),
            }))
        } else {
            ok_json(json!({"in_best_chain": false}))
        }
    })
}

async fn block_txids(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    with_block(&node, &hash, |_, e| {
        ok_json(json!(e
            .block
            .txdata
            .iter()
            .map(|t| t.compute_txid().to_string())
            .collect::<Vec<_>>()))
    })
}

async fn block_raw(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    with_block(&node, &hash, |_, e| ok_bytes(serialize(&e.block)))
}

/// Where a transaction is: in an active block (with its entry) or the mempool.
enum Found<'a> {
    Confirmed(&'a Transaction, &'a BlockEntry),
    Mempool(&'a Transaction),
}

impl Found<'_> {
    fn tx(&self) -> &Transaction {
        match self {
            Found::Confirmed(t, _) | Found::Mempool(t) => t,
        }
    }
}

fn find<'a>(node: &'a Node, txid: &Txid) -> Option<Found<'a>> {
    if let Some((tx, e)) = node.chain.tx(txid) {
        return Some(Found::Confirmed(tx, e));
    }
    node.mempool.get(txid).map(|e| Found::Mempool(&e.tx))
}

/// The output an input spends, from the chain's transactions or the mempool.
fn prevout(node: &Node, op: &OutPoint) -> Option<TxOut> {
    find(node, &op.txid).and_then(|f| f.tx().output.get(op.vout as usize).cloned())
}

fn status_json(found: &Found<'_>) -> Value {
    match found {
        Found::Confirmed(_, e) => json!({
            "confirmed": true,
            "block_height": e.height,
            "block_hash": e.block.block_hash().to_string(),
            "block_time": e.block.header.time,
        }),
        Found::Mempool(_) => json!({"confirmed": false}),
    }
}

fn output_json(out: &TxOut) -> Value {
    let s: &Script = &out.script_pubkey;
    let mut v = json!({
        "scriptpubkey": hex::encode(s.as_bytes()),
        "scriptpubkey_asm": script_asm(s),
        "scriptpubkey_type": script_type(s),
        "value": out.value.to_sat(),
    });
    if let Some(a) = script_address(s) {
        v["scriptpubkey_address"] = json!(a);
    }
    v
}

fn tx_json(node: &Node, found: &Found<'_>) -> Value {
    let tx = found.tx();
    let coinbase = tx.is_coinbase();
    let mut value_in = 0u64;
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            let prev = if coinbase {
                None
            } else {
                prevout(node, &i.previous_output)
            };
            value_in += prev.as_ref().map_or(0, |p| p.value.to_sat());
            json!({
                "txid": i.previous_output.txid.to_string(),
                "vout": i.previous_output.vout,
                "prevout": prev.as_ref().map(output_json),
                "scriptsig": hex::encode(i.script_sig.as_bytes()),
                "scriptsig_asm": script_asm(&i.script_sig),
                "witness": i.witness.iter().map(hex::encode).collect::<Vec<_>>(),
                "is_coinbase": coinbase,
                "sequence": i.sequence.0,
            })
        })
        .collect();
    let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
    json!({
        "txid": tx.compute_txid().to_string(),
        "version": tx.version.0,
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": tx.output.iter().map(output_json).collect::<Vec<_>>(),
        "size": tx.total_size(),
        "weight": tx.weight().to_wu(),
        "fee": if coinbase { 0 } else { value_in.saturating_sub(value_out) },
        "status": status_json(found),
    })
}

/// Runs `f` on a known transaction (active chain or mempool), or answers 404.
fn with_tx(node: &Shared, txid: &str, f: impl FnOnce(&Node, Found<'_>) -> Response) -> Response {
    let txid: Txid = match parse(txid, "hex string") {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let node = node.lock();
    match find(&node, &txid) {
        Some(found) => f(&node, found),
        None => not_found("Transaction"),
    }
}

async fn tx_info(State(node): State<Shared>, Path(txid): Path<String>) -> Response {
    with_tx(&node, &txid, |n, f| ok_json(tx_json(n, &f)))
}

async fn tx_raw(State(node): State<Shared>, Path(txid): Path<String>) -> Response {
    with_tx(&node, &txid, |_, f| ok_bytes(serialize(f.tx())))
}

async fn tx_hex(State(node): State<Shared>, Path(txid): Path<String>) -> Response {
    with_tx(&node, &txid, |_, f| ok_text(serialize_hex(f.tx())))
}

async fn tx_status_route(State(node): State<Shared>, Path(txid): Path<String>) -> Response {
    let txid: Txid = match parse(&txid, "hex string") {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let node = node.lock();
    // electrs answers an unknown transaction's status as unconfirmed.
    match find(&node, &txid) {
        Some(found) => ok_json(status_json(&found)),
        None => ok_json(json!({"confirmed": false})),
    }
}

async fn merkleblock_proof(State(node): State<Shared>, Path(txid): Path<String>) -> Response {
    with_tx(&node, &txid, |_, f| match f {
        Found::Confirmed(tx, e) => {
            let want = tx.compute_txid();
            let mb = MerkleBlock::from_block_with_predicate(&e.block, |t| *t == want);
            ok_text(serialize_hex(&mb))
        }
        Found::Mempool(_) => not_found("Transaction"),
    })
}

/// Who spends `op`: a confirmed transaction of the active chain or a mempool one.
fn spend_status(node: &Node, op: &OutPoint) -> Value {
    if let Some(txid) = node.mempool.spender(op) {
        let vin = node
            .mempool
            .get(&txid)
            .and_then(|e| e.tx.input.iter().position(|i| i.previous_output == *op));
        return json!({"spent": true, "txid": txid.to_string(), "vin": vin, "status": {"confirmed": false}});
    }
    for (tx, e) in active_txs(&node.chain) {
        if let Some(vin) = tx.input.iter().position(|i| i.previous_output == *op) {
            if tx.is_coinbase() {
                continue;
            }
            return json!({
                "spent": true,
                "txid": tx.compute_txid().to_string(),
                "vin": vin,
                "status": status_json(&Found::Confirmed(tx, e)),
            });
        }
    }
    json!({"spent": false})
}

async fn outspend(
    State(node): State<Shared>,
    Path((txid, vout)): Path<(String, String)>,
) -> Response {
    let (txid, vout): (Txid, u32) = match (parse(&txid, "hex string"), parse(&vout, "vout")) {
        (Ok(t), Ok(v)) => (t, v),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let node = node.lock();
    ok_json(spend_status(&node, &OutPoint::new(txid, vout)))
}

async fn outspends(State(node): State<Shared>, Path(txid): Path<String>) -> Response {
    with_tx(&node, &txid, |n, f| {
        let txid = f.tx().compute_txid();
        ok_json(Value::Array(
            (0..f.tx().output.len() as u32)
                .map(|v| spend_status(n, &OutPoint::new(txid, v)))
                .collect(),
        ))
    })
}

/// Active-chain transactions, newest block first and, within a block, last first.
fn active_txs(chain: &Chain) -> impl Iterator<Item = (&Transaction, &BlockEntry)> {
    (0..=chain.tip_height())
        .rev()
        .filter_map(|h| chain.hash_at(h).and_then(|hash| chain.entry(&hash)))
        .flat_map(|e| e.block.txdata.iter().rev().map(move |tx| (tx, e)))
}

/// Esplora's script hash: SHA-256 of the script, in plain (not reversed) hex.
fn script_hash(script: &Script) -> String {
    sha256::Hash::hash(script.as_bytes()).to_string()
}

fn touches(node: &Node, tx: &Transaction, hash: &str) -> bool {
    tx.output
        .iter()
        .any(|o| script_hash(&o.script_pubkey) == hash)
        || (!tx.is_coinbase()
            && tx.input.iter().any(|i| {
                prevout(node, &i.previous_output)
                    .is_some_and(|p| script_hash(&p.script_pubkey) == hash)
            }))
}

fn mempool_txs_of(node: &Node, hash: &str) -> Vec<Value> {
    // Newest first, as electrs.
    node.mempool
        .entries()
        .into_iter()
        .rev()
        .filter(|e| touches(node, &e.tx, hash))
        .take(MEMPOOL_TXS_PER_PAGE)
        .map(|e| tx_json(node, &Found::Mempool(&e.tx)))
        .collect()
}

fn chain_txs_of(node: &Node, hash: &str, after: Option<Txid>) -> Vec<Value> {
    let mut skipping = after.is_some();
    active_txs(&node.chain)
        .filter(|(tx, _)| touches(node, tx, hash))
        .filter(|(tx, _)| {
            if skipping {
                skipping = Some(tx.compute_txid()) != after;
                return false;
            }
            true
        })
        .take(CHAIN_TXS_PER_PAGE)
        .map(|(tx, e)| tx_json(node, &Found::Confirmed(tx, e)))
        .collect()
}

fn check_hash(hash: &str) -> Result<String, BadInput> {
    let lower = hash.to_ascii_lowercase();
    if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(lower)
    } else {
        Err(BadInput("Invalid hex string".into()))
    }
}

async fn scripthash_txs(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    let hash = match check_hash(&hash) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let node = node.lock();
    let mut txs = mempool_txs_of(&node, &hash);
    txs.extend(chain_txs_of(&node, &hash, None));
    ok_json(Value::Array(txs))
}

async fn scripthash_mempool(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    let hash = match check_hash(&hash) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let node = node.lock();
    ok_json(Value::Array(mempool_txs_of(&node, &hash)))
}

async fn scripthash_chain_after(
    State(node): State<Shared>,
    Path((hash, last_seen)): Path<(String, String)>,
) -> Response {
    let hash = match check_hash(&hash) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let last_seen: Txid = match parse(&last_seen, "hex string") {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let node = node.lock();
    ok_json(Value::Array(chain_txs_of(&node, &hash, Some(last_seen))))
}

/// Like the in-process `estimatesmartfee`, no fee data: an empty map, which
/// Esplora serves on a quiet regtest chain and clients answer with their fallback.
async fn fee_estimates() -> Response {
    ok_json(json!({}))
}

async fn broadcast(State(node): State<Shared>, body: Bytes) -> Response {
    let Ok(hex_str) = std::str::from_utf8(&body) else {
        return bad_request("Invalid hex string");
    };
    let tx: Transaction = match bitcoin::consensus::encode::deserialize_hex(hex_str.trim()) {
        Ok(t) => t,
        Err(_) => {
            return bad_request(
                "sendrawtransaction RPC error: {\"code\":-22,\"message\":\"TX decode failed\"}",
            )
        }
    };
    match node
        .lock()
        .send_raw_transaction(tx, DEFAULT_MAX_FEE_RATE_SAT_PER_KVB)
    {
        Ok(txid) => ok_text(txid.to_string()),
        Err(e) => {
            // electrs relays bitcoind's error as text.
            let e = RpcError::from(&e);
            bad_request(format!(
                "sendrawtransaction RPC error: {}",
                json!({"code": e.code, "message": e.message})
            ))
        }
    }
}
