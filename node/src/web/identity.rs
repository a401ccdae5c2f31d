//! The owner's Identity page (`/app/identity`): bind the owner's X handle
//! step by step (the text to post, the post's URL, then pending → anchored
//! → final), rotate to a new key, revoke; and the witness's anchoring
//! wallet (funding address, balance, epochs waiting for funds).
//!
//! Invariants:
//! - "My key" is the owner's key: `[outbox] key_file`, else
//!   `<data_dir>/owner.key` ([`crate::cli::key::owner_key_file`]), read at
//!   each request, on the node only. The browser never sees a secret key.
//! - Everything goes through the in-process [`IdentityService`]: the calls
//!   behind the JSON API (`issue_challenge`, `post_author`, `submit`,
//!   `lookup_key`, `history`, `status`), with the events built by the
//!   protocol's own builders (`proof_post_op`, `rotate_op`, `revoke_op`),
//!   as `cairn identity bind|rotate|revoke` does over HTTP. The service
//!   checks the proof post and the operation chain; this page adds none of
//!   its own rules.
//! - Every change is a `POST` through [`checked_post`] (session, origin,
//!   CSRF token). Rotate and revoke need a ticked confirmation too.
//! - A rotation writes the new secret key to `<key file>.next` (0600)
//!   before the rotation is submitted, and only once the node accepted it
//!   moves the old key aside (`<key file>.replaced-<unix>`) and the new one
//!   into place: no state of the files loses the key the binding names.

use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use cairn_bitcoin::private_file;
use cairn_identity::service::{
    BindingReceipt, BindingState, IdentityService, IdentityView, IssuedChallenge, ServiceError,
    Standing,
};
use cairn_identity_core::binding::{normalize_handle, proof_post_op, revoke_op, rotate_op};
use nostr::{EventId, Keys};
use serde::Deserialize;

use super::app::{app_html, app_of, checked_post, signed_in_app, App};
use super::{Frame, Web};
use crate::cli::npub;
use crate::cli::support::time::format_unix;
use crate::settings::Settings;

/// The Identity page's script: the copy button (the page works without it).
const IDENTITY_JS: &str = include_str!("assets/identity.js");
/// Where it is served (versioned like the stylesheet).
pub const IDENTITY_JS_PATH: &str =
    concat!("/assets/cairn-identity-", env!("CARGO_PKG_VERSION"), ".js");
/// Longest the page waits for the witness's status (it may ask the wallet).
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the Identity page keeps between requests.
pub struct IdentityState {
    settings: Settings,
    /// The challenge last issued for the owner's key, shown until it expires.
    challenge: Mutex<Option<IssuedChallenge>>,
    /// One operation (bind, rotate, revoke) at a time: a rotation swaps the
    /// key file.
    ops: tokio::sync::Mutex<()>,
}

impl IdentityState {
    /// The state of a node with `settings`.
    pub fn new(settings: &Settings) -> Self {
        Self {
            settings: settings.clone(),
            challenge: Mutex::new(None),
            ops: tokio::sync::Mutex::new(()),
        }
    }

    /// The owner's key file, when there is one.
    fn key_file(&self) -> Option<PathBuf> {
        crate::cli::key::owner_key_file(&self.settings)
    }

    /// The owner's keys, or why there are none (safe to show).
    fn keys(&self) -> Result<(PathBuf, Keys), String> {
        let Some(path) = self.key_file() else {
            return Err(
                "This node has no owner's key yet. Create one with `cairn key generate` (or \
                 `cairn key import`, reading your nsec from standard input), then restart the node."
                    .to_owned(),
            );
        };
        match crate::cli::support::keys::load_keys(Some(&path)) {
            Ok(keys) => Ok((path, keys)),
            Err(e) => {
                tracing::warn!(error = %e, "web: the owner's key file is not usable");
                Err("The owner's key file cannot be read (see the node's log).".to_owned())
            }
        }
    }
}

/// The Identity page's routes.
pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/app/identity", get(page))
        .route("/app/identity/status", get(status_fragment))
        .route("/app/identity/challenge", post(challenge))
        .route("/app/identity/bind", post(bind))
        .route("/app/identity/rotate", post(rotate))
        .route("/app/identity/revoke", post(revoke))
        .route(IDENTITY_JS_PATH, get(js))
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        IDENTITY_JS,
    )
        .into_response()
}

/// The owner's binding as the page shows it.
struct BindingView {
    handle: String,
    status: &'static str,
    status_text: String,
    binding: &'static str,
    x_uid: String,
    epoch: u64,
    anchor_txid: Option<String>,
    /// Rotate and revoke apply (a key is bound, this one).
    active: bool,
    /// Still changing: the page's script refreshes it.
    moving: bool,
}

struct HistoryRow {
    op: &'static str,
    when: String,
    epoch: u64,
    anchoring: &'static str,
}

struct ChallengeView {
    text: String,
    nonce: String,
    expires: String,
}

struct WitnessView {
    funding_address: Option<String>,
    balance_sat: u64,
    health: &'static str,
    message: Option<String>,
    tip_height: u32,
    open_epoch: u64,
    open_epoch_operations: usize,
    queued_epochs: String,
    unconfirmed_epochs: String,
    waiting_for_funds: bool,
}

#[derive(Template)]
#[template(path = "app/identity.html")]
struct IdentityPage {
    frame: Frame,
    app_csrf: Option<String>,
    csrf: String,
    js: &'static str,
    unavailable: Option<String>,
    me: String,
    notice: Option<String>,
    error: Option<String>,
    binding: Option<BindingView>,
    history: Vec<HistoryRow>,
    challenge: Option<ChallengeView>,
    witness: Option<WitnessView>,
    witness_note: &'static str,
    confirmations: u32,
    /// Rotate and revoke apply (else: the bind steps).
    active: bool,
    /// The status still changes: the script refreshes it.
    moving: bool,
}

#[derive(Template)]
#[template(path = "app/identity_status.html")]
struct StatusFragment {
    binding: Option<BindingView>,
}

fn status_text(view: &IdentityView, confirmations: u32) -> String {
    match view.status {
        Standing::Pending => "Accepted by this node; waiting for its epoch to be anchored in a \
                              Bitcoin block (the node's word only until then)."
            .to_owned(),
        Standing::Anchored => format!(
            "In a Bitcoin block: {} of {confirmations} confirmations.",
            view.confirmations
        ),
        Standing::Final => format!(
            "Final: {} confirmations (final at {confirmations}).",
            view.confirmations
        ),
        Standing::Moved => "The handle is now proven by another X account.".to_owned(),
        Standing::Revoked => match view.binding {
            BindingState::Rotated => "This key was rotated away from the handle.".to_owned(),
            _ => "Revoked: no key speaks for this X account until it is bound again.".to_owned(),
        },
    }
}

fn binding_view(view: &IdentityView, confirmations: u32) -> BindingView {
    let active = matches!(
        view.binding,
        BindingState::Bound | BindingState::RecoveryPending
    ) && !matches!(view.status, Standing::Moved | Standing::Revoked);
    BindingView {
        handle: view.handle.clone(),
        status: view.status.as_str(),
        status_text: status_text(view, confirmations),
        binding: view.binding.as_str(),
        x_uid: view.x_uid.clone(),
        epoch: view.epoch,
        anchor_txid: view.anchor_txid.clone(),
        active,
        moving: active && matches!(view.status, Standing::Pending | Standing::Anchored),
    }
}

/// The owner's key's record on this witness; `None`: never bound here.
async fn my_view(service: &IdentityService, keys: &Keys) -> Result<Option<IdentityView>, String> {
    match service.lookup_key(&keys.public_key()).await {
        Ok(v) => Ok(Some(v)),
        Err(ServiceError::NotFound(_)) => Ok(None),
        Err(e) => Err(shown_error(e)),
    }
}

/// What the owner may read of a service error: the protocol's refusals in
/// full, the node's own failures (database, wallet) only as "see the log".
fn shown_error(e: ServiceError) -> String {
    match &e {
        ServiceError::BadRequest(_)
        | ServiceError::InvalidEvent(_)
        | ServiceError::UnknownChallenge
        | ServiceError::ChallengeUsed
        | ServiceError::ChallengeKeyMismatch
        | ServiceError::Proof(_)
        | ServiceError::Mismatch(_)
        | ServiceError::Refused(_)
        | ServiceError::NotFound(_)
        | ServiceError::TooManyChallenges { .. }
        | ServiceError::Contended => e.to_string(),
        ServiceError::ChallengeExpired { expires_at } => format!(
            "The challenge expired at {}; get a new text to post.",
            format_unix(*expires_at)
        ),
        _ => {
            tracing::error!(error = %e, "web: identity operation failed");
            "The identity service failed; see the node's log.".to_owned()
        }
    }
}

#[derive(Deserialize)]
struct PageQuery {
    done: Option<String>,
}

/// `GET /app/identity`.
async fn page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    let (app, session) = match signed_in_app(&web, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let notice = q.done.as_deref().and_then(|d| match d {
        "bind" => Some("The binding was accepted. It is pending until the node anchors its epoch in a Bitcoin block; this page follows it to final."),
        "rotate" => Some("The binding now names your new key, which is in the key file now (the old one is kept beside it). Restart the node so that messages and the outbox use the new key."),
        "revoke" => Some("The binding was revoked."),
        "challenge" => Some("Post the text below on X, then paste the post's address."),
        _ => None,
    });
    render(
        &web,
        app,
        &session.csrf,
        StatusCode::OK,
        notice.map(str::to_owned),
        None,
    )
    .await
}

async fn render(
    web: &Web,
    app: &App,
    csrf: &str,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let mut page = IdentityPage {
        frame: Frame::of(web),
        app_csrf: Some(csrf.to_owned()),
        csrf: csrf.to_owned(),
        js: IDENTITY_JS_PATH,
        unavailable: None,
        me: String::new(),
        notice,
        error,
        binding: None,
        history: Vec::new(),
        challenge: None,
        witness: None,
        witness_note: "This node's identity witness is off.",
        confirmations: 0,
        active: false,
        moving: false,
    };
    let Some(identity) = &web.identity else {
        page.unavailable = Some(
            "This node's identity witness is off: set [identity] enabled = true (with [bitcoin]) \
             in cairn.toml."
                .to_owned(),
        );
        return app_html(status, page.render());
    };
    page.confirmations = identity.confirmations;
    let service = &identity.service;
    match tokio::time::timeout(STATUS_WAIT, service.status()).await {
        Ok(Ok(s)) => {
            let a = s.anchoring;
            let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
            page.witness = Some(WitnessView {
                waiting_for_funds: a.health == "waiting_for_funds",
                funding_address: a.funding_address,
                balance_sat: a.balance_sat,
                health: a.health,
                message: a.message,
                tip_height: a.tip_height,
                open_epoch: s.open_epoch,
                open_epoch_operations: s.open_epoch_operations,
                queued_epochs: list(a.queued_epochs.as_slice()),
                unconfirmed_epochs: list(a.unconfirmed_epochs.as_slice()),
            });
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "web: the witness's status failed");
            page.witness_note = "The witness's status is not available; see the node's log.";
        }
        Err(_) => {
            page.witness_note =
                "The witness's anchoring wallet did not answer in time; reload to try again.";
        }
    }
    let state = &app.identity;
    let keys = match state.keys() {
        Ok((_, keys)) => keys,
        Err(why) => {
            page.unavailable = Some(why);
            return app_html(status, page.render());
        }
    };
    page.me = npub(&keys.public_key());
    match my_view(service, &keys).await {
        Ok(Some(view)) => {
            if let Ok(x_uid) = view.x_uid.parse::<u64>() {
                page.history = service
                    .history(x_uid)
                    .await
                    .into_iter()
                    .map(|h| HistoryRow {
                        op: h.op,
                        when: format_unix(h.created_at),
                        epoch: h.epoch,
                        anchoring: h.anchoring.as_str(),
                    })
                    .collect();
            }
            let b = binding_view(&view, identity.confirmations);
            (page.active, page.moving) = (b.active, b.moving);
            page.binding = Some(b);
        }
        Ok(None) => {}
        Err(e) => {
            if page.error.is_none() {
                page.error = Some(e);
            }
        }
    }
    if !page.active {
        let now = nostr::Timestamp::now().as_secs();
        let current = state
            .challenge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|c| c.expires_at >= now && c.npub == page.me);
        page.challenge = current.map(|c| ChallengeView {
            expires: format_unix(c.expires_at),
            text: c.text,
            nonce: c.nonce,
        });
    }
    app_html(status, page.render())
}

/// `GET /app/identity/status`: the status block alone, for the script.
async fn status_fragment(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if app.sessions.get(&headers).await.is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (Some(identity), Ok((_, keys))) = (&web.identity, app.identity.keys()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let binding = match my_view(&identity.service, &keys).await {
        Ok(v) => v.map(|v| binding_view(&v, identity.confirmations)),
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let fragment = StatusFragment { binding };
    app_html(StatusCode::OK, fragment.render())
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// What a change needs: the app, the session's token, the witness and the
/// owner's key, or the answer saying which is missing.
// The error is the answer to send back at once; it is built only on that path.
#[allow(clippy::result_large_err)]
async fn change_context<'a>(
    web: &'a Web,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<(&'a App, String, &'a IdentityService, PathBuf, Keys), Response> {
    let app = app_of(web)?;
    let session = checked_post(web, app, headers, csrf, "/app/identity").await?;
    let refused = |message: &str| {
        super::app::refused(
            web,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not available",
            message,
            "/app/identity",
        )
    };
    let Some(identity) = &web.identity else {
        return Err(refused("This node's identity witness is off."));
    };
    let (path, keys) = app.identity.keys().map_err(|why| refused(&why))?;
    Ok((app, session.csrf, &identity.service, path, keys))
}

/// `POST /app/identity/challenge`: a fresh challenge for the owner's key.
async fn challenge(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (app, csrf, service, _, keys) =
        match change_context(&web, &headers, form.csrf.as_deref()).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    match service.issue_challenge(&keys.public_key()).await {
        Ok(c) => {
            *app.identity
                .challenge
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(c);
            Redirect::to("/app/identity?done=challenge#step-post").into_response()
        }
        Err(e) => {
            let msg = shown_error(e);
            render(&web, app, &csrf, StatusCode::BAD_REQUEST, None, Some(msg)).await
        }
    }
}

#[derive(Deserialize)]
struct BindForm {
    csrf: Option<String>,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    post_url: String,
}

/// The handle a post URL names (`https://x.com/<handle>/status/<id>`), if any.
fn handle_in_url(url: &str) -> Option<&str> {
    let (before, _) = url.trim().rsplit_once("/status/")?;
    let handle = before.rsplit('/').next()?;
    // `x.com/i/status/<id>` names no one.
    (!handle.is_empty() && handle != "i" && !handle.contains('.')).then_some(handle)
}

/// `POST /app/identity/bind`: signs a `bind` for the post and submits it.
async fn bind(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<BindForm>,
) -> Response {
    let (app, csrf, service, _, keys) =
        match change_context(&web, &headers, form.csrf.as_deref()).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let _one = app.identity.ops.lock().await;
    match bind_post(service, &keys, form.nonce.trim(), &form.post_url).await {
        Ok(receipt) => {
            tracing::info!(x_uid = %receipt.x_uid, epoch = receipt.epoch, "web: the owner bound their X handle");
            *app.identity
                .challenge
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            Redirect::to("/app/identity?done=bind").into_response()
        }
        Err(msg) => render(&web, app, &csrf, StatusCode::BAD_REQUEST, None, Some(msg)).await,
    }
}

/// What `cairn identity bind` does, in process: the post's author from X
/// (through the service), the next position in that identity's chain, the
/// `bind` event signed by the owner's key, submitted.
async fn bind_post(
    service: &IdentityService,
    keys: &Keys,
    nonce: &str,
    post_url: &str,
) -> Result<BindingReceipt, String> {
    if nonce.is_empty() {
        return Err("Get the text to post first (step 1).".to_owned());
    }
    let post_id = crate::cli::parse_post_id(post_url).map_err(|_| {
        "That is not a post's address (https://x.com/<handle>/status/<number>) or a post id."
            .to_owned()
    })?;
    let author = service.post_author(post_id).await.map_err(shown_error)?;
    if let Some(named) = handle_in_url(post_url) {
        if !named.eq_ignore_ascii_case(&author.handle) {
            return Err(format!(
                "Post {post_id} is by @{}, not @{named}.",
                author.handle
            ));
        }
    }
    let handle = normalize_handle(&author.handle)
        .map_err(|_| format!("@{} is not a handle this witness binds.", author.handle))?;
    // After the identity's latest operation (a revoked one is bound again);
    // the service refuses what the chain does not allow.
    let (seq, prev) = match service.history(author.x_uid).await.last() {
        Some(last) => (
            last.seq + 1,
            Some(EventId::from_hex(&last.event_id).map_err(|_| "a corrupt history".to_owned())?),
        ),
        None => (0, None),
    };
    let event = proof_post_op(
        false,
        author.x_uid,
        seq,
        prev.as_ref(),
        &handle,
        post_id,
        nonce,
    )
    .sign_with_keys(keys)
    .map_err(|e| format!("cannot sign the binding: {e}"))?;
    service
        .submit(&event, Some(post_id))
        .await
        .map_err(shown_error)
}

#[derive(Deserialize)]
struct ConfirmForm {
    csrf: Option<String>,
    confirm: Option<String>,
}

/// The owner's active binding: `(x_uid, next seq, head)`.
async fn active_binding(
    service: &IdentityService,
    keys: &Keys,
) -> Result<(u64, u64, EventId), String> {
    let view = my_view(service, keys)
        .await?
        .ok_or_else(|| "Your key is not bound to a handle on this node.".to_owned())?;
    if view.binding != BindingState::Bound || view.status == Standing::Revoked {
        return Err(format!(
            "Your key's binding of @{} is {}; there is nothing to change.",
            view.handle,
            view.binding.as_str()
        ));
    }
    let x_uid = view
        .x_uid
        .parse()
        .map_err(|_| "the node's x_uid is not a number".to_owned())?;
    let head = EventId::from_hex(&view.head).map_err(|_| "a corrupt record".to_owned())?;
    Ok((x_uid, view.seq + 1, head))
}

/// `POST /app/identity/revoke`.
async fn revoke(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<ConfirmForm>,
) -> Response {
    let (app, csrf, service, _, keys) =
        match change_context(&web, &headers, form.csrf.as_deref()).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let fail = |msg: String| render(&web, app, &csrf, StatusCode::BAD_REQUEST, None, Some(msg));
    if form.confirm.is_none() {
        return fail("Tick the box to confirm the revocation.".to_owned()).await;
    }
    let _one = app.identity.ops.lock().await;
    let result = async {
        let (x_uid, seq, head) = active_binding(service, &keys).await?;
        let event = revoke_op(x_uid, seq, &head)
            .sign_with_keys(&keys)
            .map_err(|e| format!("cannot sign the revocation: {e}"))?;
        service.submit(&event, None).await.map_err(shown_error)
    }
    .await;
    match result {
        Ok(_) => {
            tracing::info!("web: the owner revoked their binding");
            Redirect::to("/app/identity?done=revoke").into_response()
        }
        Err(msg) => fail(msg).await,
    }
}

/// `POST /app/identity/rotate`: a new key, generated here, takes over the
/// binding and the key file.
async fn rotate(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<ConfirmForm>,
) -> Response {
    let (app, csrf, service, path, keys) =
        match change_context(&web, &headers, form.csrf.as_deref()).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let fail = |msg: String| render(&web, app, &csrf, StatusCode::BAD_REQUEST, None, Some(msg));
    if form.confirm.is_none() {
        return fail("Tick the box to confirm the rotation.".to_owned()).await;
    }
    let _one = app.identity.ops.lock().await;
    match rotate_key(service, &path, &keys).await {
        Ok(()) => {
            tracing::info!("web: the owner rotated their binding to a new key");
            Redirect::to("/app/identity?done=rotate").into_response()
        }
        Err(msg) => fail(msg).await,
    }
}

fn with_suffix(path: &FsPath, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn rotate_key(service: &IdentityService, path: &FsPath, keys: &Keys) -> Result<(), String> {
    let (x_uid, seq, head) = active_binding(service, keys).await?;
    let new_keys = Keys::generate();
    let next = with_suffix(path, ".next");
    private_file::replace(
        &next,
        format!("{}\n", new_keys.secret_key().to_secret_hex()).as_bytes(),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "web: the key file could not be written");
        "The new key could not be written next to the key file; nothing was changed (see the \
         node's log)."
            .to_owned()
    })?;
    let event = rotate_op(&keys.public_key(), &new_keys, x_uid, seq, &head)
        .sign_with_keys(keys)
        .map_err(|e| format!("cannot sign the rotation: {e}"))?;
    if let Err(e) = service.submit(&event, None).await {
        let _ = std::fs::remove_file(&next);
        return Err(shown_error(e));
    }
    let old = with_suffix(
        path,
        &format!(".replaced-{}", nostr::Timestamp::now().as_secs()),
    );
    // The binding names the new key now: from here on, never lose it.
    if let Err(e) = std::fs::rename(path, &old).and_then(|()| std::fs::rename(&next, path)) {
        tracing::error!(error = %e, next = %next.display(), "web: the rotated key was not moved into place");
        return Err(format!(
            "The binding was rotated, but the new key could not be moved into the key file: it is in {} (see the node's log).",
            next.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_url_names_its_author() {
        assert_eq!(
            handle_in_url("https://x.com/Alice_C/status/123?s=20"),
            Some("Alice_C")
        );
        assert_eq!(
            handle_in_url("https://twitter.com/bob/status/9"),
            Some("bob")
        );
        assert_eq!(handle_in_url("https://x.com/i/status/9"), None);
        assert_eq!(handle_in_url("123456"), None);
        assert_eq!(
            crate::cli::parse_post_id("https://x.com/a/status/77?x=1").unwrap(),
            77
        );
    }
}
