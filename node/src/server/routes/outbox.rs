//! The outbox's admin API (`/admin/v1/outbox`), behind the same bearer
//! token as the rest of the admin API but mounted whenever `[outbox]
//! enabled`, payments or not. See docs/admin-api.md.
//!
//! - `POST /admin/v1/outbox` `{"events": [{"event": <gift wrap>, "role":
//!   "message"|"copy", "hints": [relay…], "fallback": relay}]}`: checks each
//!   gift wrap (signature, kind 1059, one `p` tag), finds its destinations
//!   (see [`crate::outbox::destinations`]; a copy goes to the owner's inboxes),
//!   commits them all in one transaction (all or none: a failed request can
//!   be sent again without duplicates) with one row per destination, and
//!   answers the items as
//!   `GET` shows them. The caller signed the wraps: the node never sees the
//!   sender's key.
//! - `GET /admin/v1/outbox?limit=N&rumor=<id>`: `{"totals": {…}, "items":
//!   […]}`, newest first, each with its deliveries (`queued`, `retrying` with
//!   `next_attempt_at` and `last_error`, `delivered` with `delivered_at`,
//!   `failed`, `expired`).

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cairn_relay::Relay;
use nostr::{Event, EventId, Kind, PublicKey, TagKind};
use serde::Deserialize;
use serde_json::json;

use crate::admin_token::AdminToken;
use crate::outbox::{self, NewItem, Outbox, Role};
use crate::settings::Settings;

/// Most events one `POST` may enqueue.
pub const MAX_EVENTS_PER_REQUEST: usize = 16;
/// Most items one `GET` lists.
pub const MAX_LIST: usize = 1_000;

#[derive(Clone)]
struct OutboxState {
    outbox: Arc<Outbox>,
    relay: Arc<Relay>,
    settings: Arc<Settings>,
}

/// The outbox routes, behind the admin token check.
pub fn router(
    outbox: Arc<Outbox>,
    relay: Arc<Relay>,
    settings: Arc<Settings>,
    token: AdminToken,
) -> Router {
    let token = Arc::new(token);
    Router::new()
        .route("/admin/v1/outbox", get(list).post(enqueue))
        .with_state(OutboxState {
            outbox,
            relay,
            settings,
        })
        .route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                super::admin::require_token(Arc::clone(&token), req, next)
            },
        ))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    rumor: Option<String>,
}

async fn list(State(s): State<OutboxState>, Query(q): Query<ListQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let items = s.outbox.db().list(limit, q.rumor.as_deref()).await;
    let totals = s.outbox.db().totals().await;
    match (items, totals) {
        (Ok(items), Ok(totals)) => {
            Json(json!({ "totals": totals, "items": items })).into_response()
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "outbox: cannot list");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the outbox database is unavailable",
            )
        }
    }
}

#[derive(Deserialize)]
struct EnqueueRequest {
    events: Vec<EnqueueEvent>,
}

#[derive(Deserialize)]
struct EnqueueEvent {
    event: Event,
    role: String,
    /// The message (rumor) id, shared by a message's wraps.
    rumor_id: Option<EventId>,
    #[serde(default)]
    hints: Vec<String>,
    fallback: Option<String>,
}

/// The one `p` tag of a gift wrap.
fn wrap_recipient(event: &Event) -> Result<PublicKey, String> {
    let mut ps = event
        .tags
        .iter()
        .filter(|t| t.kind() == TagKind::p())
        .filter_map(|t| t.content());
    match (ps.next(), ps.next()) {
        (Some(p), None) => PublicKey::parse(p).map_err(|_| "its p tag is not a key".to_owned()),
        _ => Err("a gift wrap for the outbox has exactly one p tag".to_owned()),
    }
}

async fn enqueue(
    State(s): State<OutboxState>,
    body: Result<Json<EnqueueRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if req.events.is_empty() || req.events.len() > MAX_EVENTS_PER_REQUEST {
        return error(
            StatusCode::BAD_REQUEST,
            format!("send 1 to {MAX_EVENTS_PER_REQUEST} events"),
        );
    }
    // Everything is checked before anything is stored.
    let mut items = Vec::new();
    for e in &req.events {
        let role = match Role::parse(&e.role) {
            Some(r @ (Role::Message | Role::Copy)) => r,
            _ => return error(StatusCode::BAD_REQUEST, "role is `message` or `copy`"),
        };
        if e.event.kind != Kind::GiftWrap {
            return error(
                StatusCode::BAD_REQUEST,
                "only gift wraps (kind 1059) are queued",
            );
        }
        if e.event.verify().is_err() {
            return error(StatusCode::BAD_REQUEST, "invalid: bad id or signature");
        }
        let recipient = match wrap_recipient(&e.event) {
            Ok(r) => r,
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        };
        items.push((e, role, recipient));
    }
    let settings = &s.settings;
    let now = nostr::Timestamp::now().as_secs();
    // Destinations are found for every item first, then all items are
    // committed in one transaction: a request that fails stores nothing, so
    // sending it again does not deliver a message twice.
    let mut new_items = Vec::with_capacity(items.len());
    for (e, role, recipient) in items {
        let relays = match role {
            Role::Copy => outbox::own_inboxes(settings, &s.relay),
            _ => {
                outbox::destinations(
                    &s.relay,
                    &recipient,
                    &e.hints,
                    &settings.outbox.lookup_relays,
                    e.fallback.as_deref(),
                )
                .await
            }
        };
        if relays.is_empty() {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("no destination relay for {}", recipient.to_hex()),
            );
        }
        new_items.push(NewItem {
            event: e.event.clone(),
            role,
            recipient,
            rumor_id: e.rumor_id,
            created_at: now,
            expires_at: now.saturating_add(settings.outbox.ttl_secs),
            relays,
        });
    }
    let ids = match s.outbox.enqueue_all(&new_items).await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::warn!(error = %err, "outbox: cannot enqueue");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the outbox database is unavailable",
            );
        }
    };
    // The rows as committed (the worker may have started on them already).
    let rumor = req.events[0].rumor_id.map(|r| r.to_hex());
    let items = match &rumor {
        Some(r) => s
            .outbox
            .db()
            .list(MAX_LIST, Some(r))
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let items: Vec<_> = items.into_iter().filter(|i| ids.contains(&i.id)).collect();
    (
        StatusCode::CREATED,
        Json(json!({ "ids": ids, "items": items })),
    )
        .into_response()
}
