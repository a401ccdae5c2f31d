//! HTTP API of the identity service (`/identity/v1/…`) and NIP-05
//! (`/.well-known/nostr.json`), mounted only when `[identity] enabled`.
//!
//! Errors are JSON `{"error": "<code>", "message": "<text>"}` with a matching
//! HTTP status; a 429 also carries `Retry-After` (seconds), and so does the
//! 503 `log_busy` (other processes sharing the database kept extending the
//! identity log while this one tried to store the operation; sending it
//! again is safe).
//!
//! Challenges are stored until they expire, so issuing them is limited: per
//! client IP by a token bucket (the relay's [`RateLimiter`], as for its own
//! EVENT and REQ limits, keyed like them by `cairn_relay::ws::client_key`:
//! the TCP peer, or the client a trusted proxy names, IPv6 per prefix), and
//! in total by the service's cap on outstanding challenges. Binding
//! submissions may make the node ask X, so they are limited per client IP
//! and per challenge, and a submission whose proof check failed is answered
//! from memory for a short time when sent again unchanged ([`BindingGuard`]):
//! resubmitting a failing proof does not make the node ask X each time
//! (which could get its address throttled by X). Internal failures are logged and answered with a generic
//! message, so nothing about the database, the wallet or the RPC
//! credentials leaks into responses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cairn_identity::service::{IdentityDb, IdentityService, Publisher, ServiceError};
use cairn_relay::net::NetworkConfig;
use cairn_relay::ratelimit::RateLimiter;
use cairn_relay::store::Database;
use cairn_relay::Relay;
use nostr::nips::nip19::FromBech32;
use nostr::{Event, EventId, PublicKey};
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};

use crate::settings::IdentitySettings;
use crate::settings::Settings;

/// Publishes the service's events on the node's own relay. Holds the relay
/// weakly: the relay's writer stops only once the last strong handle is gone.
struct RelayPublisher(Weak<Relay>);

impl Publisher for RelayPublisher {
    fn publish(&self, event: Event) {
        let Some(relay) = self.0.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let id = event.id;
            if let Err(err) = relay.submit(event).await {
                tracing::warn!(%id, error = %err, "could not publish an identity event on the relay");
            }
        });
    }
}

/// Opens the identity service on the relay's database.
pub async fn open_service(
    settings: &Settings,
    relay: &Arc<Relay>,
) -> anyhow::Result<Arc<IdentityService>> {
    let db = match relay.store().database() {
        Some(Database::Sqlite(pool)) => IdentityDb::Sqlite(pool),
        Some(Database::Postgres(pool)) => IdentityDb::Postgres(pool),
        None => anyhow::bail!("the identity service needs an SQL store"),
    };
    let config = settings
        .identity
        .service_config(&settings.bitcoin, &settings.data_dir)?;
    let publisher: Arc<dyn Publisher> = Arc::new(RelayPublisher(Arc::downgrade(relay)));
    IdentityService::open(config, db, Some(publisher))
        .await
        .context("cannot start the identity service")
}

/// Per-IP buckets for `POST /identity/v1/challenges`.
type ChallengeLimiter = Arc<RateLimiter<IpAddr>>;

/// How the per-IP limits tell clients apart (`[relay.network]`).
#[derive(Clone)]
struct ClientRules(Arc<NetworkConfig>);

impl ClientRules {
    fn key(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        cairn_relay::ws::client_key(&self.0, peer.ip(), headers)
    }
}

/// Longest `challenge` tag value used as a rate-limit key (issued
/// challenges are far shorter; a longer one cannot be valid).
const MAX_CHALLENGE_KEY: usize = 128;
/// Failed submissions remembered at most (memory bound).
const MAX_CACHED_FAILURES: usize = 10_000;

/// One binding submission: its event and the post id it names.
type Submission = (EventId, Option<u64>);

/// The limits of `POST /identity/v1/bindings` and its memory of failed
/// proof checks, keyed by (event id, post id): the same submission again
/// gets the same answer until `failure_ttl` has passed.
struct BindingGuard {
    per_ip: RateLimiter<IpAddr>,
    per_challenge: RateLimiter<String>,
    failure_ttl: Duration,
    failures: Mutex<HashMap<Submission, (Instant, ApiError)>>,
}

impl BindingGuard {
    fn new(settings: &IdentitySettings) -> Self {
        Self {
            per_ip: RateLimiter::new(settings.bindings_per_ip),
            per_challenge: RateLimiter::new(settings.bindings_per_challenge),
            failure_ttl: Duration::from_secs(settings.failed_binding_cache_secs),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The remembered answer to this submission, while it is fresh.
    fn cached_failure(&self, key: &Submission) -> Option<ApiError> {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failures.get(key) {
            Some((at, error)) if at.elapsed() < self.failure_ttl => {
                let ApiError(status, code, message) = error;
                let left = self.failure_ttl.saturating_sub(at.elapsed()).as_secs() + 1;
                Some(ApiError(
                    *status,
                    code,
                    format!(
                        "{message} (the same submission failed moments ago; it is not checked \
                         again for {left} s)"
                    ),
                ))
            }
            Some(_) => {
                failures.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember_failure(&self, key: Submission, error: &ApiError) {
        if self.failure_ttl.is_zero() {
            return;
        }
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_CACHED_FAILURES {
            let ttl = self.failure_ttl;
            failures.retain(|_, (at, _)| at.elapsed() < ttl);
            if failures.len() >= MAX_CACHED_FAILURES {
                return;
            }
        }
        failures.insert(key, (Instant::now(), error.clone()));
    }
}

/// The identity routes (with permissive CORS: browsers verify too).
/// Needs a server with `ConnectInfo<SocketAddr>` for the per-IP limits,
/// which tell clients apart by the rules of `network`.
///
/// `owner_inboxes`: the node owner's key and inbox relays (`[outbox]
/// key_file`), listed as `relays` in the NIP-05 answers for the owner's names.
pub fn router(
    service: Arc<IdentityService>,
    settings: &IdentitySettings,
    network: &NetworkConfig,
    owner_inboxes: Option<(PublicKey, Vec<String>)>,
) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([header::RETRY_AFTER]);
    let limiter: ChallengeLimiter = Arc::new(RateLimiter::new(settings.challenges_per_ip));
    let author_limiter: ChallengeLimiter = Arc::new(RateLimiter::new(settings.challenges_per_ip));
    let bindings = Arc::new(BindingGuard::new(settings));
    Router::new()
        .route(
            "/identity/v1/challenges",
            post(create_challenge).layer(Extension(limiter)),
        )
        .route(
            "/identity/v1/bindings",
            post(submit_binding).layer(Extension(bindings)),
        )
        // Asks X: limited per IP like challenges (a bucket of its own).
        .route(
            "/identity/v1/posts/{post_id}/author",
            get(post_author).layer(Extension(author_limiter)),
        )
        .route("/identity/v1/handles/{handle}", get(by_handle))
        .route("/identity/v1/keys/{key}", get(by_key))
        .route("/identity/v1/absence/{x_uid}", get(absence))
        .route("/identity/v1/epochs/{epoch}", get(epoch))
        .route("/identity/v1/status", get(status))
        .route(
            "/.well-known/nostr.json",
            get(nip05).layer(Extension(Nip05Policy {
                serves_pending: settings.nip05_serves_pending,
                owner_inboxes: owner_inboxes.map(Arc::new),
            })),
        )
        .layer(Extension(ClientRules(Arc::new(network.clone()))))
        .layer(cors)
        .with_state(service)
}

/// An API error: status, stable code, message.
#[derive(Clone)]
struct ApiError(StatusCode, &'static str, String);

/// The code of the 503 answered when the identity log stayed busy
/// ([`ServiceError::Contended`]); it carries `Retry-After`.
const LOG_BUSY: &str = "log_busy";

/// The `Retry-After` of a [`LOG_BUSY`] answer: the other processes' burst
/// of writes is usually over by then.
const LOG_BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(status, code, message) = self;
        let response = (status, Json(json!({ "error": code, "message": message }))).into_response();
        if code == LOG_BUSY {
            with_retry_after(response, LOG_BUSY_RETRY_AFTER)
        } else {
            response
        }
    }
}

/// 429 with `Retry-After` in whole seconds (rounded up, at least 1).
fn too_many(code: &'static str, message: String, retry_after: Duration) -> Response {
    let response = ApiError(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    with_retry_after(response, retry_after)
}

/// Adds `Retry-After` in whole seconds (rounded up, at least 1) to a 429
/// or 503 (also used by the name-payment routes, whose error body differs).
pub(crate) fn with_retry_after(mut response: Response, retry_after: Duration) -> Response {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, secs.max(1).into());
    response
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError as E;
        let (status, code) = match &e {
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            E::InvalidEvent(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            E::UnknownChallenge => (StatusCode::BAD_REQUEST, "unknown_challenge"),
            E::ChallengeUsed => (StatusCode::CONFLICT, "challenge_used"),
            E::ChallengeExpired { .. } => (StatusCode::BAD_REQUEST, "challenge_expired"),
            E::ChallengeKeyMismatch => (StatusCode::BAD_REQUEST, "challenge_key_mismatch"),
            E::Proof(p) if p.is_transient() => (StatusCode::SERVICE_UNAVAILABLE, "x_unavailable"),
            E::Proof(_) => (StatusCode::UNPROCESSABLE_ENTITY, "proof_rejected"),
            E::Mismatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, "proof_mismatch"),
            E::Refused(_) => (StatusCode::CONFLICT, "refused"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Known(_) => (StatusCode::CONFLICT, "bound"),
            E::TooManyChallenges { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_challenges"),
            E::Contended => {
                // The service logged the attempts; this says what the client got.
                tracing::warn!(
                    "identity log busy (other processes kept writing first): answered 503, retry"
                );
                (StatusCode::SERVICE_UNAVAILABLE, LOG_BUSY)
            }
            _ => {
                tracing::error!(error = %e, "identity request failed");
                return ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the node's log".into(),
                );
            }
        };
        ApiError(status, code, e.to_string())
    }
}

fn bad_json(rejection: JsonRejection) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        rejection.body_text(),
    )
}

fn parse_key(s: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_bech32(s)
        .or_else(|_| PublicKey::from_hex(s))
        .map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_key",
                "expected an npub or a 64-character hex public key".into(),
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeRequest {
    /// `npub1…` or hex.
    npub: String,
}

/// `POST /identity/v1/challenges` `{"npub"}` → nonce and the text to post.
async fn create_challenge(
    State(service): State<Arc<IdentityService>>,
    Extension(limiter): Extension<ChallengeLimiter>,
    Extension(clients): Extension<ClientRules>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<ChallengeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    // Limited before the body is looked at: malformed requests count too.
    if let Err(wait) = limiter.acquire(&clients.key(peer, &headers)) {
        return Ok(too_many(
            "rate_limited",
            "too many challenges requested from this address".into(),
            wait,
        ));
    }
    let Json(req) = body.map_err(bad_json)?;
    let key = parse_key(&req.npub)?;
    match service.issue_challenge(&key).await {
        Ok(issued) => Ok((StatusCode::CREATED, Json(issued)).into_response()),
        Err(e @ ServiceError::TooManyChallenges { retry_after_secs }) => Ok(too_many(
            "too_many_challenges",
            e.to_string(),
            Duration::from_secs(retry_after_secs),
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingRequest {
    /// The signed kind-3470 event.
    event: Event,
    /// The proof post's id (decimal string or number); must match the `i` tag.
    #[serde(default)]
    post_id: Option<serde_json::Value>,
}

/// `POST /identity/v1/bindings` `{"event", "post_id"}` → the receipt.
/// Limited per client IP (before the body is looked at) and per challenge;
/// a failed proof check is remembered (see [`BindingGuard`]).
async fn submit_binding(
    State(service): State<Arc<IdentityService>>,
    Extension(guard): Extension<Arc<BindingGuard>>,
    Extension(clients): Extension<ClientRules>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<BindingRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    if let Err(wait) = guard.per_ip.acquire(&clients.key(peer, &headers)) {
        return Ok(too_many(
            "rate_limited",
            "too many binding submissions from this address".into(),
            wait,
        ));
    }
    let Json(req) = body.map_err(bad_json)?;
    let post_id = match req.post_id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.parse::<u64>().ok()),
        Some(serde_json::Value::Number(n)) => Some(n.as_u64()),
        Some(_) => Some(None),
    };
    let post_id = match post_id {
        Some(None) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "post_id must be a decimal post id".into(),
            ))
        }
        Some(Some(id)) => Some(id),
        None => None,
    };
    let submission = (req.event.id, post_id);
    if let Some(cached) = guard.cached_failure(&submission) {
        return Err(cached);
    }
    let challenge = req
        .event
        .tags
        .iter()
        .map(|t| t.as_slice())
        .find(|t| t.first().is_some_and(|name| name == "challenge"))
        .and_then(|t| t.get(1));
    // Charged per (challenge, signer) and only for a signed event: the
    // challenge is public (it is in the X post), so a limit on the bare
    // challenge, or on unsigned junk, would let anyone lock its owner out.
    // An unsigned event goes on to `submit`, which refuses it without X.
    if let Some(challenge) = challenge.filter(|_| req.event.verify().is_ok()) {
        let key = format!(
            "{}:{}",
            challenge
                .chars()
                .take(MAX_CHALLENGE_KEY)
                .collect::<String>(),
            req.event.pubkey.to_hex()
        );
        if let Err(wait) = guard.per_challenge.acquire(&key) {
            return Ok(too_many(
                "rate_limited",
                "too many submissions for this challenge".into(),
                wait,
            ));
        }
    }
    match service.submit(&req.event, post_id).await {
        Ok(receipt) => Ok((StatusCode::CREATED, Json(receipt)).into_response()),
        Err(e) => {
            // The failures that cost a request to X.
            let asked_x = matches!(e, ServiceError::Proof(_) | ServiceError::Mismatch(_));
            let error = ApiError::from(e);
            if asked_x {
                guard.remember_failure(submission, &error);
            }
            Err(error)
        }
    }
}

/// `GET /identity/v1/posts/{post_id}/author`: the numeric X user id and
/// handle of a proof post's author, from X's syndication answer.
async fn post_author(
    State(service): State<Arc<IdentityService>>,
    Extension(limiter): Extension<ChallengeLimiter>,
    Extension(clients): Extension<ClientRules>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(post_id): Path<String>,
) -> Result<Response, ApiError> {
    if let Err(wait) = limiter.acquire(&clients.key(peer, &headers)) {
        return Ok(too_many(
            "rate_limited",
            "too many requests to X from this address".into(),
            wait,
        ));
    }
    let post_id = post_id.parse::<u64>().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "post_id must be a decimal post id".into(),
        )
    })?;
    Ok(Json(service.post_author(post_id).await?).into_response())
}

/// `GET /identity/v1/handles/{handle}`.
async fn by_handle(
    State(service): State<Arc<IdentityService>>,
    Path(handle): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(service.lookup_handle(&handle).await?).into_response())
}

/// `GET /identity/v1/keys/{npub or hex}`.
async fn by_key(
    State(service): State<Arc<IdentityService>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let key = parse_key(&key)?;
    Ok(Json(service.lookup_key(&key).await?).into_response())
}

/// `GET /identity/v1/absence/{x_uid}`: proof that `x_uid` has no record
/// (protocol §11.5), against the latest epoch anchored in a block.
async fn absence(
    State(service): State<Arc<IdentityService>>,
    Path(x_uid): Path<String>,
) -> Result<Response, ApiError> {
    let x_uid = x_uid.parse::<u64>().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "x_uid must be a decimal X user id".into(),
        )
    })?;
    Ok(Json(service.absence(x_uid).await?).into_response())
}

/// `GET /identity/v1/epochs/{n}` and `/identity/v1/epochs/latest`.
async fn epoch(
    State(service): State<Arc<IdentityService>>,
    Path(epoch): Path<String>,
) -> Result<Response, ApiError> {
    let view = if epoch == "latest" {
        service.latest_epoch().await?
    } else {
        let n = epoch.parse::<u64>().map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "epoch must be a number or `latest`".into(),
            )
        })?;
        service.epoch(n).await?
    };
    Ok(Json(view).into_response())
}

/// `GET /identity/v1/status`: the open epoch and anchoring health.
async fn status(State(service): State<Arc<IdentityService>>) -> Result<Response, ApiError> {
    Ok(Json(service.status().await?).into_response())
}

/// `[identity] nip05_serves_pending`, and the owner's inbox relays.
#[derive(Debug, Clone)]
struct Nip05Policy {
    serves_pending: bool,
    owner_inboxes: Option<Arc<(PublicKey, Vec<String>)>>,
}

#[derive(Deserialize)]
struct Nip05Query {
    name: Option<String>,
}

/// NIP-05 from verified bindings: `{"names": {"<handle>": "<hex key>"},
/// "states": {"<handle>": "pending|anchored|final"}}` (`states` says which
/// state of the record the key reflects; NIP-05 clients ignore it). Only the
/// asked name is answered; the whole registry is not listed. Pending
/// bindings only with `nip05_serves_pending`. A name bound to the node
/// owner's key also gets `"relays": {"<hex key>": [this node, …]}`, the
/// owner's inbox relays (where messages to them should go).
async fn nip05(
    State(service): State<Arc<IdentityService>>,
    Extension(policy): Extension<Nip05Policy>,
    Query(query): Query<Nip05Query>,
) -> Response {
    let mut names = serde_json::Map::new();
    let mut states = serde_json::Map::new();
    let mut relays = serde_json::Map::new();
    if let Some(name) = query.name {
        let name = name.to_ascii_lowercase();
        if let Some(answer) = service.nip05_answer(&name, policy.serves_pending).await {
            names.insert(name.clone(), json!(answer.key.to_hex()));
            states.insert(name, json!(answer.state.as_str()));
            if let Some(owner) = policy.owner_inboxes.as_deref() {
                if owner.0 == answer.key {
                    relays.insert(answer.key.to_hex(), json!(owner.1));
                }
            }
        }
    }
    // CORS (`Access-Control-Allow-Origin: *`) comes from the router's layer.
    let mut body = json!({ "names": names, "states": states });
    if !relays.is_empty() {
        body["relays"] = serde_json::Value::Object(relays);
    }
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy identity log ([`ServiceError::Contended`], after the
    /// service's retries) is a 503 the client may retry, with
    /// `Retry-After`, not an internal error.
    #[tokio::test]
    async fn a_busy_identity_log_is_a_503_with_retry_after() {
        let response = ApiError::from(ServiceError::Contended).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"], "log_busy");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("busy") && message.contains("again"),
            "{message}"
        );
    }

    /// Other errors keep their statuses, and only the busy log and 429s
    /// carry `Retry-After`.
    #[tokio::test]
    async fn other_errors_carry_no_retry_after() {
        let response = ApiError::from(ServiceError::ChallengeUsed).into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let response = ApiError::from(ServiceError::Corrupt("x".into())).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
