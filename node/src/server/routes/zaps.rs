//! Payments to names: LNURL-pay (LUD-06/LUD-16) with NIP-57 zaps, and
//! on-chain addresses for `cairn msg send --onchain`.
//!
//! - `GET /.well-known/lnurlp/{name}` — the payRequest, with
//!   `allowsNostr: true` and the zapper's `nostrPubkey`.
//! - `GET /lnurlp/{name}/callback?amount=MSAT[&nostr=<9734>]` — a BOLT11
//!   invoice: with a zap request, its description hash is SHA-256 of the
//!   request JSON and the receipt is published once it is paid; without, it
//!   is SHA-256 of the metadata (plain LUD-06).
//! - `GET /payments/v1/names/{name}/onchain?amount_sat=N` — a fresh address of
//!   the node's on-chain wallet and a BIP21 URI.
//!
//! A name is served only when `[zaps] names` lists it and it has a verified
//! binding on this node (see [`crate::settings::ZapSettings`]). Errors
//! are LUD-06 `{"status":"ERROR","reason":…}` with a matching HTTP status;
//! internal failures are logged and answered generically. CORS is open:
//! web clients call these endpoints directly.
//!
//! Each callback may create an inbound payment (and a zap row) and each
//! on-chain request reveals an address, so both are limited per client IP
//! by the relay's token bucket ([`RateLimiter`], keyed by the TCP peer as
//! for identity challenges), and zap invoices also by a cap on how many are
//! outstanding; over either: 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Once};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bitcoin::hashes::{sha256, Hash};
use cairn_identity::service::IdentityService;
use cairn_payments::lightning::{InvoiceDescription, LightningNode, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_payments::zap::{ZapError, ZapRequest, ZapService};
use cairn_relay::ratelimit::RateLimiter;
use nostr::PublicKey;
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};

use super::identity::with_retry_after;
use crate::server::runtimes::payments::{Payments, PaymentsSlot};
use crate::server::runtimes::zaps::{ZapCell, ZapsRuntime};
use crate::settings::Settings;
use crate::settings::ZapSettings;

/// What the name-payment routes need.
pub struct ZapRoutes {
    /// Verified bindings (the NIP-05 lookup).
    pub identity: Arc<IdentityService>,
    /// The wallet and Lightning node, once payments run.
    pub payments: Arc<PaymentsSlot>,
    /// Zap invoices and receipts, once the zap service runs.
    pub zaps: ZapCell,
    /// `[zaps]`.
    pub settings: ZapSettings,
    /// `http(s)://host[:port]` clients reach this node at; `None`: taken from
    /// each request's `Host` header.
    pub public_base: Option<String>,
    /// Per-IP buckets for the callback and on-chain routes (`[zaps] requests_per_ip`).
    pub limiter: RateLimiter<IpAddr>,
}

/// `ws://…` → `http://…`, `wss://…` → `https://…` (no trailing slash): the
/// HTTP base of a relay URL.
pub fn http_base_of(relay_url: &str) -> Option<String> {
    let url = url::Url::parse(relay_url).ok()?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return None,
    };
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// Checks `[zaps]` when the node starts, before payments do: the amounts
/// and limits must make sense, and names listed on a node that cannot
/// serve them get a warning (once per process) instead of silence.
pub fn check_settings(settings: &Settings) -> anyhow::Result<()> {
    settings.zaps.validate().map_err(anyhow::Error::msg)?;
    let can_serve = settings.identity.enabled && settings.payments.enabled;
    if !settings.zaps.names.is_empty() && !can_serve {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            let missing = match (settings.identity.enabled, settings.payments.enabled) {
                (false, false) => "[identity] and [payments] are",
                (false, true) => "[identity] is",
                _ => "[payments] is",
            };
            tracing::warn!(
                "[zaps] names is set, but {missing} not enabled: LNURL-pay, zaps and \
                 name payments are OFF (they need both identity and payments)"
            );
        });
    }
    Ok(())
}

/// The name-payment routes. Needs a server with `ConnectInfo<SocketAddr>`
/// for the per-IP limit.
pub fn router(state: Arc<ZapRoutes>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([header::RETRY_AFTER]);
    Router::new()
        .route("/.well-known/lnurlp/{name}", get(pay_request))
        .route("/lnurlp/{name}/callback", get(callback))
        .route("/payments/v1/names/{name}/onchain", get(onchain))
        .layer(cors)
        .with_state(state)
}

/// The routes and the zap service of a node with payments and identity
/// enabled and `[zaps] names` set; `None` when no name is listed (LNURL off).
/// The zap service itself runs with payments (see
/// [`crate::server::runtimes::payments::PaymentsRuntime`]), which `zaps` is
/// handed to.
pub fn mount(
    settings: &Settings,
    own_relay: &crate::server::own_relay::OwnRelay,
) -> anyhow::Result<Option<(MountZaps, Arc<ZapsRuntime>)>> {
    if settings.zaps.names.is_empty() {
        return Ok(None);
    }
    settings.zaps.validate().map_err(anyhow::Error::msg)?;
    let runtime = Arc::new(ZapsRuntime::new(settings, own_relay));
    let public_base = settings.relay.public_url.as_deref().and_then(http_base_of);
    if public_base.is_none() {
        // LUD-06 wallets behind TLS need the real https URL, and the metadata
        // (which invoices commit to) names the host.
        tracing::warn!(
            "[zaps] names are set but [relay] public_url is not: LNURL callbacks and metadata \
             use the request's Host header over http://; set public_url to the URL clients use"
        );
    }
    let cell = Arc::clone(runtime.cell());
    let settings = settings.zaps.clone();
    let routes = move |identity, payments| {
        router(Arc::new(ZapRoutes {
            identity,
            payments,
            zaps: cell,
            limiter: RateLimiter::new(settings.requests_per_ip),
            settings,
            public_base,
        }))
    };
    Ok(Some((Box::new(routes), runtime)))
}

/// Builds the name-payment routes once identity and the payments slot exist.
pub type MountZaps = Box<dyn FnOnce(Arc<IdentityService>, Arc<PaymentsSlot>) -> Router + Send>;

/// A LUD-06 error response.
struct LnurlError(StatusCode, String);

impl IntoResponse for LnurlError {
    fn into_response(self) -> Response {
        let LnurlError(status, reason) = self;
        (status, Json(json!({ "status": "ERROR", "reason": reason }))).into_response()
    }
}

fn bad(reason: impl Into<String>) -> LnurlError {
    LnurlError(StatusCode::BAD_REQUEST, reason.into())
}

/// 429 with a LUD-06 body and `Retry-After`.
fn too_many(reason: impl Into<String>, wait: Duration) -> Response {
    with_retry_after(
        LnurlError(StatusCode::TOO_MANY_REQUESTS, reason.into()).into_response(),
        wait,
    )
}

fn unavailable(reason: &str) -> LnurlError {
    LnurlError(StatusCode::SERVICE_UNAVAILABLE, reason.into())
}

fn internal(what: &str, e: impl std::fmt::Display) -> LnurlError {
    tracing::error!(error = %e, "{what}");
    LnurlError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; see the node's log".into(),
    )
}

impl ZapRoutes {
    /// Takes a token of `peer`'s bucket; the 429 when it is empty. Counted
    /// before anything else is looked at: malformed requests count too.
    fn limited(&self, peer: &SocketAddr) -> Option<Response> {
        self.limiter
            .acquire(&peer.ip())
            .err()
            .map(|wait| too_many("too many payment requests from this address", wait))
    }

    /// The key behind `name` when this node takes payments for it.
    async fn resolve(&self, name: &str) -> Result<(String, PublicKey), LnurlError> {
        let name = name.to_ascii_lowercase();
        if self.settings.lists(&name) {
            if let Some(key) = self.identity.nip05(&name).await {
                return Ok((name, key));
            }
        }
        Err(LnurlError(
            StatusCode::NOT_FOUND,
            format!("this node takes no payments for {name:?}"),
        ))
    }

    fn payments(&self) -> Result<Arc<Payments>, LnurlError> {
        self.payments.get().ok_or_else(|| {
            unavailable(if self.payments.standby() {
                "payments run on another process of this node; try again"
            } else {
                "payments are not running yet"
            })
        })
    }

    fn zaps(&self) -> Result<Arc<ZapService<LightningNode>>, LnurlError> {
        let running = self.zaps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        running.ok_or_else(|| {
            unavailable(if self.payments.standby() {
                "zaps run on another process of this node; try again"
            } else {
                "zaps are not running yet"
            })
        })
    }

    fn base(&self, headers: &HeaderMap) -> Result<String, LnurlError> {
        if let Some(base) = &self.public_base {
            return Ok(base.clone());
        }
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
            .map(|h| format!("http://{h}"))
            .ok_or_else(|| bad("missing Host header"))
    }
}

/// `host[:port]` of an `http(s)://` base.
fn host_of(base: &str) -> &str {
    base.split_once("://").map_or(base, |(_, rest)| rest)
}

/// LUD-06 metadata: the text shown to the payer and the LUD-16 identifier.
/// Plain invoices commit to its SHA-256, so it must be the same string in the
/// payRequest and the callback.
fn metadata(name: &str, base: &str) -> String {
    let host = host_of(base);
    json!([
        ["text/plain", format!("Payment to {name}@{host}")],
        ["text/identifier", format!("{name}@{host}")],
    ])
    .to_string()
}

/// `GET /.well-known/lnurlp/{name}`.
async fn pay_request(
    State(state): State<Arc<ZapRoutes>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, LnurlError> {
    let (name, _) = state.resolve(&name).await?;
    let base = state.base(&headers)?;
    Ok(Json(json!({
        "tag": "payRequest",
        "callback": format!("{base}/lnurlp/{name}/callback"),
        "minSendable": state.settings.min_sendable_msat,
        "maxSendable": state.settings.max_sendable_msat,
        "metadata": metadata(&name, &base),
        "allowsNostr": true,
        "nostrPubkey": state.zaps()?.zapper_pubkey().to_hex(),
    }))
    .into_response())
}

/// `GET /lnurlp/{name}/callback?amount=MSAT[&nostr=…]`.
async fn callback(
    State(state): State<Arc<ZapRoutes>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, LnurlError> {
    if let Some(limited) = state.limited(&peer) {
        return Ok(limited);
    }
    let (name, key) = state.resolve(&name).await?;
    let amount: u64 = query
        .get("amount")
        .ok_or_else(|| bad("missing amount (millisatoshis)"))?
        .parse()
        .map_err(|_| bad("amount must be a whole number of millisatoshis"))?;
    let (min, max) = (
        state.settings.min_sendable_msat,
        state.settings.max_sendable_msat,
    );
    if amount < min || amount > max {
        return Err(bad(format!(
            "amount must be between {min} and {max} millisatoshis"
        )));
    }
    let invoice = match query.get("nostr") {
        Some(json) => {
            let request =
                ZapRequest::validate(json, amount, &key).map_err(|e| bad(e.to_string()))?;
            match state.zaps()?.create_invoice(&request, amount).await {
                Ok(invoice) => invoice.invoice,
                Err(e @ ZapError::TooManyPending { retry_after_secs }) => {
                    return Ok(too_many(
                        e.to_string(),
                        Duration::from_secs(retry_after_secs),
                    ))
                }
                Err(e) => return Err(internal("cannot issue a zap invoice", e)),
            }
        }
        None => {
            let base = state.base(&headers)?;
            let hash = sha256::Hash::hash(metadata(&name, &base).as_bytes());
            state
                .payments()?
                .lightning()
                .receive_bolt11(
                    Some(amount),
                    &InvoiceDescription::Hash(hash),
                    DEFAULT_INVOICE_EXPIRY_SECS,
                )
                .map_err(|e| internal("cannot issue an LNURL invoice", e))?
                .to_string()
        }
    };
    Ok(Json(json!({ "pr": invoice, "routes": [] })).into_response())
}

/// Satoshis as a BIP21 BTC amount: decimal, no trailing zeros.
fn btc_amount(sat: u64) -> String {
    let s = format!("{}.{:08}", sat / 100_000_000, sat % 100_000_000);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `GET /payments/v1/names/{name}/onchain?amount_sat=N`.
async fn onchain(
    State(state): State<Arc<ZapRoutes>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, LnurlError> {
    if let Some(limited) = state.limited(&peer) {
        return Ok(limited);
    }
    state.resolve(&name).await?;
    let amount = match query.get("amount_sat") {
        None => None,
        Some(a) => match a.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad("amount_sat must be a positive whole number")),
        },
    };
    // The wallet's lock may be held by a long chain sync: wait for it on the
    // blocking pool, not on an async worker the relay needs.
    let wallet = Arc::clone(state.payments()?.wallet());
    let address = tokio::task::spawn_blocking(move || wallet.receive_address())
        .await
        .map_err(|e| internal("cannot reveal an on-chain address", e))?
        .map_err(|e| internal("cannot reveal an on-chain address", e))?;
    let bip21 = match amount {
        Some(sat) => format!("bitcoin:{address}?amount={}", btc_amount(sat)),
        None => format!("bitcoin:{address}"),
    };
    Ok(Json(json!({ "address": address.to_string(), "bip21": bip21 })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bip21_amounts_and_bases() {
        assert_eq!(btc_amount(1), "0.00000001");
        assert_eq!(btc_amount(150_000_000), "1.5");
        assert_eq!(btc_amount(100_000_000), "1");
        assert_eq!(
            http_base_of("wss://relay.example.com/").as_deref(),
            Some("https://relay.example.com")
        );
        assert_eq!(
            http_base_of("ws://127.0.0.1:7777").as_deref(),
            Some("http://127.0.0.1:7777")
        );
        assert_eq!(http_base_of("ftp://x"), None);
        let m = metadata("alice", "http://127.0.0.1:7777");
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[1][0], "text/identifier");
        assert_eq!(v[1][1], "alice@127.0.0.1:7777");
    }

    #[test]
    fn start_check_refuses_inverted_amounts_and_allows_unserved_names() {
        let mut settings = Settings::default();
        settings.zaps.names = vec!["alice".into()];
        // Names without identity/payments: a warning, not an error.
        assert!(check_settings(&settings).is_ok());
        settings.zaps.min_sendable_msat = 10_000;
        settings.zaps.max_sendable_msat = 1_000;
        let err = check_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("min_sendable_msat"), "{err}");
    }
}
