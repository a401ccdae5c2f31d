//! HTTP routes of the mirrors.
//!
//! - `GET /identity/v1/mirrors` → `{"mirrors": [status, …]}` (see
//!   [`super::MirrorStatus`]): state (`following` / `stopped`), verified
//!   epochs, and a split view's evidence (both signed header events).
//! - `GET /identity/v1/mirrors/{witness}/handles/{handle}` and
//!   `…/keys/{key}` → the record the mirror of that witness verified, in the
//!   shape of the identity API's answer (protocol bundle included) plus
//!   `witness` (whose log it is, NIP-19) and `mirrored_from` (the relay).
//! - When this node runs no identity service of its own, the plain
//!   `/identity/v1/handles/{handle}` and `/identity/v1/keys/{key}` answer
//!   the same from the first mirror that knows the subject, so `cairn verify
//!   --node` works against a mirror as against the witness.
//!
//! Only verified epochs are served: `status` is `anchored` or `final`
//! (confirmations on this node's own chain), never `pending`.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cairn_identity::binding::{normalize_handle, Status};
use cairn_identity::service::{BindingState, IdentityView, Standing};
use nostr::nips::nip19::{FromBech32, ToBech32};
use nostr::PublicKey;
use serde_json::{json, Value};
use tower_http::cors::{Any, CorsLayer};

use super::{Mirrors, Subject};

/// The mirror routes; `plain` also mounts the unprefixed handle and key
/// routes (when the node has no identity service of its own).
pub fn router(mirrors: Mirrors, plain: bool) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::OPTIONS])
        .allow_headers(Any);
    let mut r = Router::new()
        .route("/identity/v1/mirrors", get(list))
        .route(
            "/identity/v1/mirrors/{witness}/handles/{handle}",
            get(by_witness_handle),
        )
        .route(
            "/identity/v1/mirrors/{witness}/keys/{key}",
            get(by_witness_key),
        );
    if plain {
        r = r
            .route("/identity/v1/handles/{handle}", get(by_handle))
            .route("/identity/v1/keys/{key}", get(by_key));
    }
    r.layer(cors).with_state(mirrors)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

// Boxed: a `Response` is large, and the error path is the rare one.
fn parse_key(s: &str) -> Result<PublicKey, Box<Response>> {
    PublicKey::from_bech32(s)
        .or_else(|_| PublicKey::from_hex(s))
        .map_err(|_| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "invalid_key",
                "expected an npub or a 64-character hex public key",
            ))
        })
}

fn parse_handle(s: &str) -> Result<String, Box<Response>> {
    normalize_handle(s).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_handle",
            &e.to_string(),
        ))
    })
}

async fn list(State(mirrors): State<Mirrors>) -> Json<Value> {
    let all: Vec<_> = mirrors.handles().iter().map(|h| h.status()).collect();
    Json(json!({ "mirrors": all }))
}

async fn by_witness_handle(
    State(mirrors): State<Mirrors>,
    Path((witness, handle)): Path<(String, String)>,
) -> Response {
    let (w, h) = match (parse_key(&witness), parse_handle(&handle)) {
        (Ok(w), Ok(h)) => (w, h),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    answer(&mirrors, Subject::Handle(h), Some(w)).await
}

async fn by_witness_key(
    State(mirrors): State<Mirrors>,
    Path((witness, key)): Path<(String, String)>,
) -> Response {
    let (w, k) = match (parse_key(&witness), parse_key(&key)) {
        (Ok(w), Ok(k)) => (w, k),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    answer(&mirrors, Subject::Key(k), Some(w)).await
}

async fn by_handle(State(mirrors): State<Mirrors>, Path(handle): Path<String>) -> Response {
    match parse_handle(&handle) {
        Ok(h) => answer(&mirrors, Subject::Handle(h), None).await,
        Err(r) => *r,
    }
}

async fn by_key(State(mirrors): State<Mirrors>, Path(key): Path<String>) -> Response {
    match parse_key(&key) {
        Ok(k) => answer(&mirrors, Subject::Key(k), None).await,
        Err(r) => *r,
    }
}

async fn answer(mirrors: &Mirrors, subject: Subject, witness: Option<PublicKey>) -> Response {
    let Some((handle, found, bundle)) = mirrors.lookup(&subject, witness.as_ref()) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no mirrored witness has a verified record of this",
        );
    };
    let tip = mirrors.tip_height().await.unwrap_or(found.anchor_height);
    let confirmations = tip.saturating_sub(found.anchor_height) + 1;
    let identity = &found.identity;
    let asked = match &subject {
        Subject::Key(k) => Some(*k),
        Subject::Handle(_) => None,
    };
    let rotated = asked.is_some_and(|k| identity.key.is_some_and(|bound| bound != k));
    let binding = if rotated {
        BindingState::Rotated
    } else {
        match identity.status {
            Status::Bound => BindingState::Bound,
            Status::RecoveryPending(_) => BindingState::RecoveryPending,
            Status::Revoked => BindingState::Revoked,
        }
    };
    let reflects = if confirmations >= mirrors.confirmations {
        Standing::Final
    } else {
        Standing::Anchored
    };
    let status = if found.moved_to.is_some() {
        Standing::Moved
    } else if identity.status == Status::Revoked || rotated {
        Standing::Revoked
    } else {
        reflects
    };
    let view: IdentityView<Value> = IdentityView {
        x_uid: identity.x_uid.to_string(),
        handle: identity.handle.clone(),
        pubkey: identity.key.map(|k| k.to_hex()),
        npub: identity.key.and_then(|k| k.to_bech32().ok()),
        status,
        reflects,
        binding,
        moved_to: found.moved_to.map(|m| m.to_string()),
        seq: identity.seq,
        head: identity.head.to_hex(),
        epoch: found.epoch,
        confirmations,
        anchor_txid: Some(found.anchor_txid.to_string()),
        recovery_effective_height: match identity.status {
            Status::RecoveryPending(p) => Some(p.effective_height),
            _ => None,
        },
        bundle,
    };
    let mut body = serde_json::to_value(&view).unwrap_or_default();
    body["witness"] = json!(handle.witness().to_bech32().unwrap_or_default());
    body["mirrored_from"] = json!(handle.relay());
    Json(body).into_response()
}
