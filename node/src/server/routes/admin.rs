//! The admin API (`/admin/v1/…`): the node owner's wallet, Lightning node and
//! NWC connections over HTTP, for `cairn wallet|ln|nwc` and other local tools.
//! Mounted only when `[payments] enabled`.
//!
//! Every request needs `Authorization: Bearer <token>`, the token being the
//! content of `<data_dir>/admin.token` (see [`crate::admin_token`]); anything
//! else is answered 401 before any handler runs. Errors are JSON
//! `{"error":"message"}`; amounts are integers (`_sat`, `_msat`). While
//! payments are not running (Bitcoin Core unreachable at start, see
//! [`crate::server::runtimes::payments`]) every endpoint answers 503 with the reason.
//!
//! Endpoints:
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/admin/v1/status` | payments running, network, node id |
//! | POST | `/admin/v1/sync` | sync the on-chain and Lightning wallets now |
//! | GET | `/admin/v1/wallet/balance` | on-chain and Lightning balances |
//! | GET | `/admin/v1/wallet/address` | a fresh receive address |
//! | POST | `/admin/v1/wallet/send` | pay on-chain |
//! | GET | `/admin/v1/wallet/transactions` | on-chain history |
//! | GET | `/admin/v1/lightning/info` | node id, listening address |
//! | GET | `/admin/v1/lightning/funding-address` | address of the Lightning node's own wallet (funds channels) |
//! | POST | `/admin/v1/lightning/withdraw` | send from the Lightning node's own wallet |
//! | GET/POST | `/admin/v1/lightning/channels` | list / open |
//! | POST | `/admin/v1/lightning/channels/{user_channel_id}/close` | close (`force`) |
//! | POST | `/admin/v1/lightning/invoices` | BOLT11 invoice |
//! | POST | `/admin/v1/lightning/pay` | pay BOLT11, wait ≤ 60 s |
//! | GET | `/admin/v1/lightning/payments[/{payment_hash}]` | payments |
//! | POST | `/admin/v1/lightning/offers` | BOLT12 offer |
//! | POST | `/admin/v1/lightning/pay-offer` | pay BOLT12, wait ≤ 60 s |
//! | GET/POST | `/admin/v1/nwc/connections` | list / create (returns the URI once) |
//! | DELETE | `/admin/v1/nwc/connections/{id}` | revoke |

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bitcoin::address::NetworkUnchecked;
use bitcoin::hashes::{sha256, Hash as _};
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Amount, FeeRate, Network};
use cairn_payments::ldk_node::lightning::ln::msgs::SocketAddress;
use cairn_payments::ldk_node::lightning::offers::offer::Offer;
use cairn_payments::ldk_node::lightning_invoice::Bolt11Invoice;
use cairn_payments::ldk_node::lightning_types::payment::PaymentHash;
use cairn_payments::ldk_node::payment::{
    PaymentDetails, PaymentDirection, PaymentKind, PaymentStatus,
};
use cairn_payments::ldk_node::{ChannelDetails, NodeError, UserChannelId};
use cairn_payments::lightning::{
    payment_hash_of, preimage_of, InvoiceDescription, LightningError, PaymentOutcome, SentPayment,
    Withdrawal, DEFAULT_INVOICE_EXPIRY_SECS, DEFAULT_PAYMENT_TIMEOUT,
};
use cairn_payments::nwc::{BudgetRenewal, NewConnection, NwcConnection, NwcError};
use cairn_payments::wallet::WalletError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::admin_token::AdminToken;
use crate::server::runtimes::payments::{Payments, PaymentsSlot};

#[derive(Clone)]
struct AdminState {
    slot: Arc<PaymentsSlot>,
}

/// The admin routes, behind the bearer-token check.
pub fn router(slot: Arc<PaymentsSlot>, token: AdminToken) -> Router {
    let token = Arc::new(token);
    Router::new()
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/sync", post(sync))
        .route("/admin/v1/wallet/balance", get(balance))
        .route("/admin/v1/wallet/address", get(address))
        .route("/admin/v1/wallet/send", post(send))
        .route("/admin/v1/wallet/transactions", get(transactions))
        .route("/admin/v1/lightning/info", get(ln_info))
        .route("/admin/v1/lightning/funding-address", get(funding_address))
        .route("/admin/v1/lightning/withdraw", post(withdraw))
        .route(
            "/admin/v1/lightning/channels",
            get(channels).post(open_channel),
        )
        .route(
            "/admin/v1/lightning/channels/{user_channel_id}/close",
            post(close_channel),
        )
        .route("/admin/v1/lightning/invoices", post(invoice))
        .route("/admin/v1/lightning/pay", post(pay))
        .route("/admin/v1/lightning/payments", get(payments))
        .route("/admin/v1/lightning/payments/{payment_hash}", get(payment))
        .route("/admin/v1/lightning/offers", post(offer))
        .route("/admin/v1/lightning/pay-offer", post(pay_offer))
        .route(
            "/admin/v1/nwc/connections",
            get(nwc_connections).post(nwc_create),
        )
        .route("/admin/v1/nwc/connections/{id}", delete(nwc_revoke))
        .with_state(AdminState { slot })
        .route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| require_token(Arc::clone(&token), req, next),
        ))
}

pub(crate) async fn require_token(token: Arc<AdminToken>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if token.matches(t.trim()) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <admin token>` (the token is in <data_dir>/admin.token)",
        )
        .into_response(),
    }
}

/// An error answer: status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// What went wrong, as the answer's `error` says it (the web app shows it too).
    pub(crate) fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::bad_request(format!("invalid request body: {}", e.body_text()))
    }
}

impl From<WalletError> for ApiError {
    fn from(e: WalletError) -> Self {
        let status = match &e {
            WalletError::Build(_) | WalletError::WrongNetwork(_) => StatusCode::BAD_REQUEST,
            WalletError::Chain(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<LightningError> for ApiError {
    fn from(e: LightningError) -> Self {
        use cairn_payments::ldk_node::NodeError as N;
        let status = match &e {
            LightningError::DescriptionTooLong
            | LightningError::OnchainFunds { .. }
            | LightningError::Dust { .. }
            | LightningError::AmountMissing
            | LightningError::AmountMismatch { .. } => StatusCode::BAD_REQUEST,
            LightningError::Node(
                N::InsufficientFunds
                | N::InvalidAmount
                | N::InvalidAddress
                | N::InvalidInvoice
                | N::InvalidOffer
                | N::InvalidNodeId
                | N::InvalidSocketAddress
                | N::InvalidChannelId
                | N::InvalidPublicKey
                | N::ChannelCreationFailed
                | N::DuplicatePayment,
            ) => StatusCode::BAD_REQUEST,
            // No route, or no capacity: the network (or our channels) cannot carry it.
            LightningError::NotSent(_) => StatusCode::BAD_GATEWAY,
            // The peer (or the chain source) did not answer.
            LightningError::Node(N::ConnectionFailed) => StatusCode::BAD_GATEWAY,
            LightningError::Node(N::NotRunning) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<NwcError> for ApiError {
    fn from(e: NwcError) -> Self {
        let status = match &e {
            NwcError::UnknownMethod(_) => StatusCode::BAD_REQUEST,
            NwcError::NoSuchConnection(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: impl Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

fn running(state: &AdminState) -> Result<Arc<Payments>, ApiError> {
    state
        .slot
        .running()
        .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason))
}

/// ldk-node's synchronous calls block (in place) on network and chain I/O.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

// ---------------------------------------------------------------------------
// Status and sync.

async fn status(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    ok(json!({
        "payments": "running",
        "network": p.network().to_string(),
        "node_id": p.lightning().node_id().to_string(),
        "nwc_pubkey": p.nwc().service_pubkey().to_hex(),
    }))
}

async fn sync(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    p.wallet().sync().await?;
    let ln = Arc::clone(p.lightning());
    blocking(move || ln.sync_wallets().map_err(ApiError::from)).await?;
    ok(json!({ "synced": true }))
}

// ---------------------------------------------------------------------------
// On-chain wallet.

// The on-chain wallet's synchronous calls take its std mutex, which a sync
// holds for as long as it talks to the chain source: they run on the blocking
// pool so a long sync cannot park a runtime worker.

async fn balance(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    let wallet = Arc::clone(p.wallet());
    let onchain = blocking(move || Ok(wallet.balance())).await?;
    let ln = p.lightning().balances();
    ok(json!({
        "onchain": {
            "confirmed_sat": onchain.confirmed.to_sat(),
            "pending_sat": onchain.pending.to_sat(),
        },
        "lightning": {
            // What the node's channels hold for it (NWC get_balance reports the same).
            // Each sat once: a cooperative close's output awaiting its
            // confirmations is already in total_onchain_sat.
            "spendable_sat": p.lightning().channel_balance_sats(),
            // The Lightning node's own on-chain wallet, which funds channels.
            "total_onchain_sat": ln.total_onchain_balance_sats,
            "spendable_onchain_sat": ln.spendable_onchain_balance_sats,
        },
    }))
}

async fn address(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    let wallet = Arc::clone(p.wallet());
    let addr = blocking(move || Ok(wallet.receive_address()?)).await?;
    ok(json!({ "address": addr.to_string() }))
}

#[derive(Deserialize)]
struct SendRequest {
    address: String,
    amount_sat: u64,
    fee_rate_sat_per_vb: Option<u64>,
}

async fn send(
    State(state): State<AdminState>,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    let txid = send_onchain(&p, &req.address, req.amount_sat, req.fee_rate_sat_per_vb).await?;
    ok(json!({ "txid": txid.to_string() }))
}

/// Pays `amount_sat` on-chain to `address` from the node's wallet, at
/// `fee_rate_sat_per_vb` (else `[payments] default_fee_rate_sat_per_vb`):
/// the one place the admin API and the web app send on-chain.
pub(crate) async fn send_onchain(
    p: &Payments,
    address: &str,
    amount_sat: u64,
    fee_rate_sat_per_vb: Option<u64>,
) -> Result<bitcoin::Txid, ApiError> {
    let address = parse_address(address, p.network())?;
    if amount_sat == 0 {
        return Err(ApiError::bad_request("the amount must be positive"));
    }
    let fee_rate = match fee_rate_sat_per_vb {
        Some(r) => parse_fee_rate(r)?,
        None => p.default_fee_rate(),
    };
    // The wallet must know its latest coins before it picks some.
    p.wallet().sync().await?;
    Ok(p.wallet()
        .send(address, Amount::from_sat(amount_sat), fee_rate)
        .await?)
}

/// An address for `network`. (Messages name no API field: the CLI shows them too.)
fn parse_address(text: &str, network: Network) -> Result<Address, ApiError> {
    text.trim()
        .parse::<Address<NetworkUnchecked>>()
        .map_err(|e| ApiError::bad_request(format!("invalid address: {e}")))?
        .require_network(network)
        .map_err(|_| ApiError::bad_request(format!("the address is not for {network}")))
}

/// A feerate of `sat_per_vb` (positive).
fn parse_fee_rate(sat_per_vb: u64) -> Result<FeeRate, ApiError> {
    FeeRate::from_sat_per_vb(sat_per_vb)
        .filter(|_| sat_per_vb > 0)
        .ok_or_else(|| ApiError::bad_request("the fee rate is out of range (positive sat/vB)"))
}

async fn transactions(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    let wallet = Arc::clone(p.wallet());
    let txs: Vec<Value> = blocking(move || Ok(wallet.transactions()))
        .await?
        .into_iter()
        .map(|t| {
            json!({
                "txid": t.txid.to_string(),
                "received_sat": t.received.to_sat(),
                "sent_sat": t.sent.to_sat(),
                "fee_sat": t.fee.map(|f| f.to_sat()),
                "confirmation_height": t.confirmation_height,
                "time": t.time,
            })
        })
        .collect();
    ok(txs)
}

// ---------------------------------------------------------------------------
// Lightning: node and channels.

async fn ln_info(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    let ln = p.lightning();
    ok(json!({
        "node_id": ln.node_id().to_string(),
        "listening_address": ln.listening_address().map(|a| a.to_string()),
        "network": p.network().to_string(),
        "channels": ln.list_channels().len(),
    }))
}

async fn funding_address(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    let addr = p.lightning().funding_address()?;
    ok(json!({ "address": addr.to_string() }))
}

#[derive(Deserialize)]
struct WithdrawRequest {
    address: String,
    amount_sat: Option<u64>,
    #[serde(default)]
    all: bool,
    fee_rate_sat_per_vb: Option<u64>,
}

/// Sends from the Lightning node's own on-chain wallet (where channel
/// closes pay out) to any address.
async fn withdraw(
    State(state): State<AdminState>,
    body: Result<Json<WithdrawRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    let address = parse_address(&req.address, p.network())?;
    let amount = match (req.amount_sat, req.all) {
        (Some(_), true) => return Err(ApiError::bad_request("give an amount or all, not both")),
        (Some(0), false) => return Err(ApiError::bad_request("the amount must be positive")),
        (Some(sat), false) => Withdrawal::Sats(sat),
        (None, true) => Withdrawal::All,
        (None, false) => return Err(ApiError::bad_request("give an amount, or all")),
    };
    // Without a rate, ldk-node estimates one from the chain source.
    let fee_rate = req.fee_rate_sat_per_vb.map(parse_fee_rate).transpose()?;
    let ln = Arc::clone(p.lightning());
    let txid = blocking(move || {
        // The latest coins (e.g. a close that just confirmed) first.
        ln.sync_wallets()?;
        Ok(ln.withdraw(&address, amount, fee_rate)?)
    })
    .await?;
    ok(json!({ "txid": txid.to_string() }))
}

fn channel_json(c: &ChannelDetails) -> Value {
    json!({
        "user_channel_id": c.user_channel_id.0.to_string(),
        "channel_id": c.channel_id.to_string(),
        "counterparty_node_id": c.counterparty_node_id.to_string(),
        "channel_value_sat": c.channel_value_sats,
        "outbound_capacity_msat": c.outbound_capacity_msat,
        "inbound_capacity_msat": c.inbound_capacity_msat,
        "funding_txid": c.funding_txo.map(|o| o.txid.to_string()),
        "confirmations": c.confirmations,
        "is_outbound": c.is_outbound,
        "is_channel_ready": c.is_channel_ready,
        "is_usable": c.is_usable,
        "is_announced": c.is_announced,
    })
}

async fn channels(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    ok(p.lightning()
        .list_channels()
        .iter()
        .map(channel_json)
        .collect::<Vec<_>>())
}

#[derive(Deserialize)]
struct OpenChannelRequest {
    node_id: String,
    address: String,
    amount_sat: u64,
    push_msat: Option<u64>,
}

async fn open_channel(
    State(state): State<AdminState>,
    body: Result<Json<OpenChannelRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    let (ucid, note) = open_channel_to(
        &p,
        &req.node_id,
        &req.address,
        req.amount_sat,
        req.push_msat,
    )
    .await?;
    ok(json!({ "user_channel_id": ucid.0.to_string(), "note": note }))
}

/// Opens a channel of `amount_sat` to the peer `node_id` at `address`
/// (`host:port`), with a note when an existing connection to the peer is
/// used instead: the one place the admin API and the web app open channels.
pub(crate) async fn open_channel_to(
    p: &Payments,
    node_id: &str,
    address: &str,
    amount_sat: u64,
    push_msat: Option<u64>,
) -> Result<(UserChannelId, Option<String>), ApiError> {
    let peer = PublicKey::from_str(node_id.trim())
        .map_err(|_| ApiError::bad_request("node_id is not a public key (66 hex digits)"))?;
    let addr = SocketAddress::from_str(address.trim())
        .map_err(|_| ApiError::bad_request("address is not host:port"))?;
    let ln = Arc::clone(p.lightning());
    // ldk-node uses a live connection to the peer and does not try the
    // address given: say so when they differ.
    let note = ln
        .connected_address(&peer)
        .filter(|connected| *connected != addr)
        .map(|connected| {
            format!(
                "already connected to this peer (at {connected}): the channel uses that connection; {addr} was not tried"
            )
        });
    let ucid = blocking(move || {
        ln.open_channel(peer, addr, amount_sat, push_msat)
            .map_err(|e| match e {
                LightningError::Node(NodeError::InsufficientFunds) => {
                    let spendable = ln.balances().spendable_onchain_balance_sats;
                    ApiError::bad_request(format!(
                        "the Lightning node's on-chain wallet has {spendable} sat spendable, \
                         not enough for a {} sat channel and its fee: send funds to its \
                         funding address (`cairn ln funding-address`, \
                         GET /admin/v1/lightning/funding-address) and wait for a confirmation",
                        amount_sat
                    ))
                }
                e => ApiError::from(e),
            })
    })
    .await?;
    Ok((ucid, note))
}

#[derive(Deserialize, Default)]
struct CloseRequest {
    #[serde(default)]
    force: bool,
}

async fn close_channel(
    State(state): State<AdminState>,
    Path(ucid): Path<String>,
    body: Result<Json<CloseRequest>, JsonRejection>,
) -> ApiResult {
    // An empty body means a cooperative close.
    let req = match body {
        Ok(Json(r)) => r,
        Err(JsonRejection::MissingJsonContentType(_)) => CloseRequest::default(),
        Err(e) => return Err(e.into()),
    };
    let p = running(&state)?;
    close_channel_by(&p, &ucid, req.force).await?;
    ok(json!({ "user_channel_id": ucid, "force": req.force, "status": "closing" }))
}

/// Closes the channel `ucid` (its user channel id, decimal), cooperatively
/// or by `force`: the one place the admin API and the web app close channels.
pub(crate) async fn close_channel_by(
    p: &Payments,
    ucid: &str,
    force: bool,
) -> Result<(), ApiError> {
    let id = UserChannelId(
        ucid.trim()
            .parse::<u128>()
            .map_err(|_| ApiError::bad_request("user_channel_id is a decimal number"))?,
    );
    let chan = p
        .lightning()
        .list_channels()
        .into_iter()
        .find(|c| c.user_channel_id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no channel {ucid}")))?;
    let ln = Arc::clone(p.lightning());
    blocking(move || {
        let peer = chan.counterparty_node_id;
        if force {
            ln.force_close_channel(&id, peer, None)
        } else {
            ln.close_channel(&id, peer)
        }
        .map_err(ApiError::from)
    })
    .await
}

// ---------------------------------------------------------------------------
// Lightning: receiving and paying.

#[derive(Deserialize)]
struct InvoiceRequest {
    amount_msat: Option<u64>,
    description: Option<String>,
    description_hash: Option<String>,
    expiry_secs: Option<u32>,
}

async fn invoice(
    State(state): State<AdminState>,
    body: Result<Json<InvoiceRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    let description = match (req.description, req.description_hash) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give description or description_hash, not both",
            ))
        }
        (_, Some(h)) => InvoiceDescription::Hash(
            sha256::Hash::from_str(h.trim())
                .map_err(|_| ApiError::bad_request("description_hash is not 64 hex digits"))?,
        ),
        (d, None) => InvoiceDescription::Text(d.unwrap_or_default()),
    };
    let inv = p.lightning().receive_bolt11(
        req.amount_msat,
        &description,
        req.expiry_secs.unwrap_or(DEFAULT_INVOICE_EXPIRY_SECS),
    )?;
    ok(json!({
        "invoice": inv.to_string(),
        "payment_hash": hex::encode(inv.payment_hash().to_byte_array()),
    }))
}

#[derive(Deserialize)]
struct PayRequest {
    invoice: String,
    amount_msat: Option<u64>,
}

async fn pay(
    State(state): State<AdminState>,
    body: Result<Json<PayRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    outcome_response(pay_invoice(&p, &req.invoice, req.amount_msat).await?)
}

/// Pays the BOLT11 `invoice` (`amount_msat` for one without an amount) and
/// waits for the outcome at most [`DEFAULT_PAYMENT_TIMEOUT`]: the one place
/// the admin API and the web app pay invoices.
pub(crate) async fn pay_invoice(
    p: &Payments,
    invoice: &str,
    amount_msat: Option<u64>,
) -> Result<SentPayment, ApiError> {
    let inv = Bolt11Invoice::from_str(invoice.trim())
        .map_err(|e| ApiError::bad_request(format!("invalid BOLT11 invoice: {e}")))?;
    // A missing or contradicting amount_msat is refused (400) before
    // anything is sent.
    p.lightning()
        .pay_and_wait(&inv, amount_msat, None, DEFAULT_PAYMENT_TIMEOUT)
        .await
        .map_err(payment_refused)
}

#[derive(Deserialize)]
struct OfferRequest {
    amount_msat: Option<u64>,
    #[serde(default)]
    description: String,
    expiry_secs: Option<u32>,
}

async fn offer(
    State(state): State<AdminState>,
    body: Result<Json<OfferRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    let offer = p
        .lightning()
        .receive_offer(req.amount_msat, &req.description, req.expiry_secs)?;
    ok(json!({ "offer": offer.to_string() }))
}

#[derive(Deserialize)]
struct PayOfferRequest {
    offer: String,
    amount_msat: Option<u64>,
    payer_note: Option<String>,
}

async fn pay_offer(
    State(state): State<AdminState>,
    body: Result<Json<PayOfferRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    let offer = Offer::from_str(req.offer.trim())
        .map_err(|e| ApiError::bad_request(format!("invalid BOLT12 offer: {e:?}")))?;
    let sent = p
        .lightning()
        .pay_offer_and_wait(
            &offer,
            req.amount_msat,
            req.payer_note,
            DEFAULT_PAYMENT_TIMEOUT,
        )
        .await
        .map_err(payment_refused)?;
    outcome_response(sent)
}

/// A payment that could not even be sent (no route, no funds, duplicate…).
fn payment_refused(e: LightningError) -> ApiError {
    let api = ApiError::from(e);
    if api.0 == StatusCode::INTERNAL_SERVER_ERROR {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("payment failed: {}", api.1),
        )
    } else {
        api
    }
}

pub(crate) fn kind_name(k: &PaymentKind) -> &'static str {
    match k {
        PaymentKind::Onchain { .. } => "onchain",
        PaymentKind::Bolt11 { .. } => "bolt11",
        PaymentKind::Bolt11Jit { .. } => "bolt11_jit",
        PaymentKind::Bolt12Offer { .. } => "bolt12_offer",
        PaymentKind::Bolt12Refund { .. } => "bolt12_refund",
        PaymentKind::Spontaneous { .. } => "spontaneous",
    }
}

pub(crate) fn status_name(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Pending => "pending",
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Failed => "failed",
    }
}

/// The answer to `pay` and `pay-offer` once the wait (≤
/// [`DEFAULT_PAYMENT_TIMEOUT`]) ended: 200 with the preimage, 502 when the
/// payment failed, 202 while it is still pending (it goes on).
fn outcome_response(sent: SentPayment) -> ApiResult {
    let payment_id = hex::encode(sent.id.0);
    // A BOLT12 payment's hash is unknown until the issuer's invoice arrives;
    // a BOLT11 payment's id is its hash.
    let payment_hash = sent
        .payment_hash
        .map_or_else(|| payment_id.clone(), |h| hex::encode(h.0));
    match sent.outcome {
        PaymentOutcome::Succeeded { preimage, fee_msat } => ok(json!({
            "payment_hash": payment_hash,
            "payment_id": payment_id,
            "preimage": hex::encode(preimage.0),
            "fee_msat": fee_msat,
            "amount_msat": sent.amount_msat,
            "status": "succeeded",
        })),
        PaymentOutcome::Failed { reason } => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("payment {payment_hash} failed: {reason}"),
        )),
        PaymentOutcome::Pending => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "payment_hash": payment_hash,
                "payment_id": payment_id,
                "status": "pending",
            })),
        )
            .into_response()),
    }
}

fn payment_json(p: &PaymentDetails) -> Value {
    json!({
        "payment_hash": payment_hash_of(p).map(|h| hex::encode(h.0)),
        "payment_id": hex::encode(p.id.0),
        "kind": kind_name(&p.kind),
        "direction": match p.direction {
            PaymentDirection::Inbound => "inbound",
            PaymentDirection::Outbound => "outbound",
        },
        "status": status_name(p.status),
        "amount_msat": p.amount_msat,
        "fee_msat": p.fee_paid_msat,
        "preimage": preimage_of(p).map(|pi| hex::encode(pi.0)),
        "updated_at": p.latest_update_timestamp,
    })
}

async fn payments(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    let mut list: Vec<PaymentDetails> = p
        .lightning()
        .list_payments()
        .into_iter()
        .filter(|p| !matches!(p.kind, PaymentKind::Onchain { .. }))
        .collect();
    list.sort_by_key(|p| std::cmp::Reverse(p.latest_update_timestamp));
    ok(list.iter().map(payment_json).collect::<Vec<_>>())
}

async fn payment(State(state): State<AdminState>, Path(hash): Path<String>) -> ApiResult {
    let p = running(&state)?;
    let bytes: [u8; 32] = hex::decode(hash.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad_request("payment_hash is 64 hex digits"))?;
    match p.lightning().payment_by_hash(&PaymentHash(bytes)) {
        Some(d) => ok(payment_json(&d)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no payment {}", hex::encode(bytes)),
        )),
    }
}

// ---------------------------------------------------------------------------
// NWC connections.

fn connection_json(c: &NwcConnection, spent_msat: Option<u64>) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "client_pubkey": c.client_pubkey.to_hex(),
        "permissions": c.permissions,
        "budget_sat": c.budget_msat.map(|m| m / 1000),
        "budget_period": c.renewal.as_str(),
        "spent_sat": spent_msat.map(|m| m / 1000),
        "max_payment_sat": c.max_payment_msat.map(|m| m / 1000),
        "expires_at": c.expires_at,
        "revoked": c.revoked,
        "created_at": c.created_at,
    })
}

async fn nwc_connections(State(state): State<AdminState>) -> ApiResult {
    let p = running(&state)?;
    let store = p.nwc().store();
    // App secrets are not stored: a URI is shown once, at creation.
    let list = store
        .list_connections()?
        .into_iter()
        .map(|c| {
            let spent = store.spent_in_window(&c).ok();
            connection_json(&c, spent)
        })
        .collect::<Vec<_>>();
    ok(list)
}

/// A new NWC connection, as the admin API and the web app ask for it.
#[derive(Deserialize)]
pub(crate) struct CreateConnectionRequest {
    pub(crate) name: String,
    pub(crate) budget_sat: Option<u64>,
    pub(crate) budget_period: Option<String>,
    pub(crate) max_payment_sat: Option<u64>,
    pub(crate) permissions: Vec<String>,
    pub(crate) expires_in_secs: Option<u64>,
}

async fn nwc_create(
    State(state): State<AdminState>,
    body: Result<Json<CreateConnectionRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let p = running(&state)?;
    let (conn, uri) = create_connection(&p, req)?;
    ok(json!({ "id": conn.id, "uri": uri }))
}

/// Creates the NWC connection `req` asks for and returns it with its URI
/// (which holds the app's secret: shown once, never logged): the one place
/// the admin API and the web app create connections.
pub(crate) fn create_connection(
    p: &Payments,
    req: CreateConnectionRequest,
) -> Result<(NwcConnection, String), ApiError> {
    if req.name.trim().is_empty() {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    if req.permissions.is_empty() {
        return Err(ApiError::bad_request("give at least one permission"));
    }
    // A budget without a period never renews: the stricter reading.
    let renewal = match req.budget_period.as_deref() {
        Some(s) => BudgetRenewal::from_str(s).map_err(ApiError::bad_request)?,
        None => BudgetRenewal::Never,
    };
    let msat = |sat: u64| {
        sat.checked_mul(1000)
            .ok_or_else(|| ApiError::bad_request("amount too large"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let new = NewConnection {
        name: req.name.trim().to_owned(),
        permissions: req.permissions,
        budget_msat: req.budget_sat.map(msat).transpose()?,
        renewal,
        max_payment_msat: req.max_payment_sat.map(msat).transpose()?,
        expires_at: req.expires_in_secs.map(|s| now.saturating_add(s)),
    };
    let (conn, uri) = p.nwc().create_connection(new)?;
    tracing::info!(id = conn.id, name = %conn.name, "NWC connection created");
    Ok((conn, uri))
}

async fn nwc_revoke(State(state): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let p = running(&state)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("connection id is a number"))?;
    p.nwc().revoke(id)?;
    tracing::info!(id, "NWC connection revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Without running payments (no Bitcoin node here) the right token gets
    /// past the check and meets the 503 that names the reason; the wrong or a
    /// missing token never does. Real HTTP over loopback.
    #[tokio::test]
    async fn token_is_required_and_checked() {
        let slot = Arc::new(PaymentsSlot::default());
        let app = router(slot, AdminToken::new("right-token"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/admin/v1/status", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let call = |auth: Option<&'static str>| {
            let mut req = http.get(&url);
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            async move {
                let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
                    .await
                    .expect("answer in time")
                    .unwrap();
                let status = resp.status();
                (status, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (s, body) = call(None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body["error"].as_str().unwrap().contains("Authorization"));
        let (s, body) = call(Some("Bearer wrong-token")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(!body.to_string().contains("right-token"));
        let (s, _) = call(Some("right-token")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "the Bearer scheme is required");
        let (s, body) = call(Some("Bearer right-token")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("payments are not running"));
        server.abort();
    }
}
