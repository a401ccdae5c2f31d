//! The owner's app under `/app/`: sign-in and sessions ([`super::session`],
//! kept in the node's database so that they work on every process sharing
//! it), then the Messages pages ([`super::messages`]).
//!
//! Invariants:
//! - Every `/app/` page but the sign-in page needs a live session; without
//!   one it redirects (`303`) to `/app/login`.
//! - Every change is a `POST` checked by [`session::check_post`] (origin
//!   and CSRF token) before anything else happens; a refused one changes
//!   nothing and is answered `403`.
//! - App pages are `Cache-Control: no-store` (they show private messages)
//!   and their CSP allows scripts from this origin only (`script-src
//!   'self'`): the one script is [`APP_JS`], compiled in.
//! - Neither the admin token, the passphrase nor the owner's key ever
//!   reaches a page, a log line or an error message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use cairn_relay::Relay;
use serde::Deserialize;

use super::messages::{self, Messaging};
use super::session::{self, Sessions, LOGIN_COOKIE, SESSION_COOKIE, SESSION_TTL};
use super::{html, passphrase, Frame, Web};
use crate::admin_token::AdminToken;
use crate::outbox::Outbox;
use crate::server::runtimes::payments::PaymentsSlot;
use crate::settings::Settings;

/// The app's one script: refreshes an open conversation's messages.
const APP_JS: &str = include_str!("assets/app.js");
/// Where it is served (versioned like the stylesheet).
pub const APP_JS_PATH: &str = concat!("/assets/cairn-app-", env!("CARGO_PKG_VERSION"), ".js");
/// The CSP of app pages: [`super::SECURITY_HEADERS`]' with this origin's
/// scripts allowed.
pub const APP_CSP: &str = "default-src 'self'; script-src 'self'; object-src 'none'; \
                           base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// How long the sign-in form's pre-session cookie lasts.
const LOGIN_FORM_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the owner's app holds.
pub struct App {
    data_dir: PathBuf,
    token: AdminToken,
    pub(super) sessions: Sessions,
    /// Cookies get `Secure` (the node is reached over https).
    secure: bool,
    /// Messaging, when the owner's key and the outbox are there.
    pub(super) messaging: Result<Messaging, &'static str>,
    /// Serializes writes of the contacts file.
    pub(super) contacts_lock: tokio::sync::Mutex<()>,
    /// Gift wraps already opened (wrap id → message, or `None`: not one
    /// for us), so a page view does not decrypt every wrap again.
    pub(super) opened: Mutex<messages::OpenedCache>,
    /// The Identity page's state (the challenge being posted).
    pub(super) identity: super::identity::IdentityState,
    /// The Relay page's samples and its cached count of events by kind.
    pub(super) relay_stats: super::relay_stats::RelayStats,
    /// The node's payments (`[payments] enabled`): the Wallet and
    /// Connections pages ([`super::wallet`]).
    pub(super) payments: Option<Arc<PaymentsSlot>>,
    /// Tokens of paying forms already posted ([`super::once`]), in the
    /// node's database.
    pub(super) paid_forms: super::once::OnceTokens,
}

impl App {
    /// The app of a node with `settings`: signs in with `token` (the admin
    /// token) or the web passphrase; messages when `outbox` runs and
    /// `[outbox] key_file` names the owner's key. Sessions and spent form
    /// tokens are kept in the relay's database (its tables migrated here).
    pub async fn new(
        settings: &Settings,
        relay: &Arc<Relay>,
        token: AdminToken,
        outbox: Option<Arc<Outbox>>,
    ) -> anyhow::Result<Self> {
        let secure = relay
            .config()
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("wss://") || u.starts_with("https://"));
        let db = relay
            .store()
            .database()
            .ok_or_else(|| anyhow::anyhow!("the owner's app needs an SQL store"))?;
        let db = super::store::WebDb::open(db)
            .await
            .map_err(|e| anyhow::anyhow!("the web sessions' tables: {e}"))?;
        let messaging = match (outbox, crate::outbox::owner_keys(settings)?) {
            (Some(outbox), Some(keys)) => Ok(Messaging::new(settings, outbox, keys)),
            (None, _) => Err("it needs the outbox: set [outbox] enabled = true in cairn.toml."),
            (Some(_), None) => Err("it needs your key: create it with `cairn key generate` (or `cairn key import`, which reads your nsec from standard input), or set [outbox] key_file to your secret key's file (nsec1… or hex, mode 0600); then restart the node."),
        };
        Ok(Self {
            data_dir: settings.data_dir.clone(),
            token,
            sessions: Sessions::new(db.clone()),
            secure,
            messaging,
            contacts_lock: tokio::sync::Mutex::new(()),
            opened: Mutex::new(messages::OpenedCache::default()),
            identity: super::identity::IdentityState::new(settings),
            relay_stats: super::relay_stats::RelayStats::new(settings),
            payments: None,
            paid_forms: super::once::OnceTokens::new(db),
        })
    }

    /// The node's payments (`[payments] enabled`) for the Wallet and
    /// Connections pages.
    pub fn with_payments(mut self, payments: Option<Arc<PaymentsSlot>>) -> Self {
        self.payments = payments;
        self
    }

    /// Where the contacts are kept.
    pub(super) fn contacts_path(&self) -> PathBuf {
        self.data_dir.join(messages::CONTACTS_FILE_NAME)
    }
}

/// The `/app/` routes.
pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/app", get(|| async { Redirect::to("/app/messages") }))
        .route("/app/", get(|| async { Redirect::to("/app/messages") }))
        .route("/app/login", get(login_page).post(login))
        .route("/app/logout", post(logout))
        .route("/app/messages", get(messages::list_page))
        .route("/app/contacts", post(messages::add_contact))
        .route("/app/c/{key}", get(messages::conversation_page))
        .route("/app/c/{key}/list", get(messages::conversation_fragment))
        .route("/app/c/{key}/send", post(messages::send))
        .merge(super::identity::routes())
        .merge(super::relay_stats::routes())
        .merge(super::wallet::routes())
        .route(APP_JS_PATH, get(js))
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        APP_JS,
    )
        .into_response()
}

/// An app page: [`html`] with the app's CSP and `no-store`.
pub(super) fn app_html(status: StatusCode, body: askama::Result<String>) -> Response {
    let mut response = html(status, body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(APP_CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The app, or the page saying it is not there.
// The error is the answer to send back at once; it is built only on that path.
#[allow(clippy::result_large_err)]
pub(super) fn app_of(web: &Web) -> Result<&App, Response> {
    web.app.as_ref().ok_or_else(|| {
        super::error_page(
            web,
            StatusCode::NOT_FOUND,
            "No owner's app",
            "This node does not serve the owner's app.",
        )
    })
}

/// The live session, or a redirect to the sign-in page.
// The error is the answer to send back at once; it is built only on that path.
#[allow(clippy::result_large_err)]
pub(super) async fn signed_in(
    app: &App,
    headers: &HeaderMap,
) -> Result<session::Session, Response> {
    app.sessions
        .get(headers)
        .await
        .ok_or_else(|| Redirect::to("/app/login").into_response())
}

/// The app and the signed-in owner's session, for a page: else the answer
/// to send instead (no app on this node, or a redirect to sign in).
// The error is the answer to send back at once; it is built only on that path.
#[allow(clippy::result_large_err)]
pub(super) async fn signed_in_app<'w>(
    web: &'w Web,
    headers: &HeaderMap,
) -> Result<(&'w App, session::Session), Response> {
    let app = app_of(web)?;
    Ok((app, signed_in(app, headers).await?))
}

/// Checks a `POST` of a signed-in owner (session, origin, CSRF token).
// The error is the answer to send back at once; it is built only on that path.
#[allow(clippy::result_large_err)]
pub(super) async fn checked_post(
    web: &Web,
    app: &App,
    headers: &HeaderMap,
    csrf: Option<&str>,
    back: &str,
) -> Result<session::Session, Response> {
    let Some(s) = app.sessions.get(headers).await else {
        return Err(refused(
            web,
            StatusCode::FORBIDDEN,
            "Signed out",
            "Your session ended (signed out, or expired). Sign in again; nothing was changed.",
            "/app/login",
        ));
    };
    session::check_post(headers, csrf, &s.csrf).map_err(|why| post_refused(web, why, back))?;
    Ok(s)
}

fn post_refused(web: &Web, why: session::PostRefused, back: &str) -> Response {
    let message = match why {
        session::PostRefused::CrossOrigin => {
            "This form was sent from another site, so it was refused and nothing was changed."
        }
        session::PostRefused::Csrf => {
            "This form is missing its security token or the token is stale (the page was open \
             before you signed in again), so nothing was changed. Reload the page and try again."
        }
    };
    refused(web, StatusCode::FORBIDDEN, "Refused", message, back)
}

#[derive(Template)]
#[template(path = "app/refused.html")]
struct RefusedPage<'a> {
    frame: Frame,
    app_csrf: Option<String>,
    title: &'a str,
    message: &'a str,
    back: &'a str,
}

pub(super) fn refused(
    web: &Web,
    status: StatusCode,
    title: &str,
    message: &str,
    back: &str,
) -> Response {
    app_html(
        status,
        RefusedPage {
            frame: Frame::of(web),
            app_csrf: None,
            title,
            message,
            back,
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "app/login.html")]
struct LoginPage {
    frame: Frame,
    app_csrf: Option<String>,
    login_token: String,
    notice: Option<&'static str>,
    error: Option<String>,
    burst: u32,
}

#[derive(Deserialize)]
struct LoginQuery {
    signed_out: Option<String>,
}

/// `GET /app/login`: the form, with a fresh pre-session token.
async fn login_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if app.sessions.get(&headers).await.is_some() {
        return Redirect::to("/app/messages").into_response();
    }
    let notice = q.signed_out.map(|_| "You are signed out.");
    login_form(&web, app, StatusCode::OK, notice, None)
}

fn login_form(
    web: &Web,
    app: &App,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
) -> Response {
    let login_token = session::random_token();
    let page = LoginPage {
        frame: Frame::of(web),
        app_csrf: None,
        login_token: login_token.clone(),
        notice,
        error,
        burst: session::LOGIN_BURST as u32,
    };
    let mut response = app_html(status, page.render());
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        LOGIN_COOKIE,
        &login_token,
        LOGIN_FORM_TTL,
        app.secure,
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    #[serde(default)]
    secret: String,
}

/// `POST /app/login`: rate limit, origin and form token, then the secret.
async fn login(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let client = cairn_relay::ws::client_key(&web.relay.config().network, peer.ip(), &headers);
    if let Err(wait) = app.attempt(client) {
        let secs = wait.as_secs().max(1);
        let mut response = login_form(
            &web,
            app,
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some(format!(
                "Too many sign-in attempts from your address. Try again in {secs} seconds."
            )),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() {
        return post_refused(&web, session::PostRefused::Csrf, "/app/login");
    }
    if let Err(why) = session::check_post(&headers, form.csrf.as_deref(), &expected) {
        return post_refused(&web, why, "/app/login");
    }
    let accepted = match app.accepts(&form.secret).await {
        Ok(accepted) => accepted,
        Err(passphrase::Busy) => {
            let mut response = login_form(
                &web,
                app,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                Some(
                    "The node is checking other sign-ins right now. Try again in a few seconds."
                        .to_owned(),
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(2));
            return response;
        }
    };
    if !accepted {
        tracing::info!(client = %client, "web: a sign-in was refused");
        return login_form(
            &web,
            app,
            StatusCode::UNAUTHORIZED,
            None,
            Some("That is not the admin token or the passphrase.".to_owned()),
        );
    }
    let id = match app.sessions.open().await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "web: cannot store a session");
            return login_form(
                &web,
                app,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                Some(
                    "The node's database did not answer, so you are not signed in. Try again."
                        .to_owned(),
                ),
            );
        }
    };
    tracing::info!(client = %client, "web: the owner signed in");
    let mut response = Redirect::to("/app/messages").into_response();
    for cookie in [
        session::set_cookie(SESSION_COOKIE, &id, SESSION_TTL, app.secure),
        session::set_cookie(LOGIN_COOKIE, "", std::time::Duration::ZERO, app.secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

impl App {
    fn attempt(&self, client: std::net::IpAddr) -> Result<(), std::time::Duration> {
        self.sessions.attempt(client)
    }

    /// Whether `secret` (read by [`passphrase::normalize`], the rule of
    /// `cairn web passphrase`) is the admin token or the passphrase;
    /// [`passphrase::Busy`] when every scrypt slot is taken.
    async fn accepts(&self, secret: &str) -> Result<bool, passphrase::Busy> {
        let secret = passphrase::normalize(secret);
        if secret.is_empty() {
            return Ok(false);
        }
        if self.token.matches(secret) {
            return Ok(true);
        }
        let Some(stored) = passphrase::load(&self.data_dir) else {
            return Ok(false);
        };
        passphrase::check(stored, secret.to_owned()).await
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: Option<String>,
    everywhere: Option<String>,
}

/// `POST /app/logout`: ends this session (or all of them).
async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = checked_post(&web, app, &headers, form.csrf.as_deref(), "/app/messages").await {
        return r;
    }
    let closed = if form.everywhere.is_some() {
        app.sessions.close_all().await
    } else {
        app.sessions.close(&headers).await
    };
    if let Err(e) = closed {
        // The session still works: say so rather than pretend.
        tracing::warn!(error = %e, "web: cannot end a session");
        return refused(
            &web,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not signed out",
            "The node's database did not answer, so the session was not ended. Try again.",
            "/app/messages",
        );
    }
    tracing::info!("web: the owner signed out");
    let mut response = Redirect::to("/app/login?signed_out=1").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        SESSION_COOKIE,
        "",
        std::time::Duration::ZERO,
        app.secure,
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}
