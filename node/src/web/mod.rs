//! The node's public web pages: `/` for a browser (what this node is and
//! offers, with a "verify a handle" form) and a page per handle
//! (`/@alice`), server-rendered from askama templates (`node/templates/`).
//!
//! Invariants:
//! - Nothing a page shows is computed here that the identity service already
//!   answers: pages render [`IdentityService`] lookups (the same ones the
//!   JSON API at `/identity/v1/` serves) and the bundle check is
//!   [`cairn_identity_core::bundle::verify`], as `cairn verify` runs it.
//! - `/` stays the relay's: a WebSocket upgrade and `Accept:
//!   application/nostr+json` (NIP-11) reach `cairn_relay::ws` untouched;
//!   only a plain `GET /` that accepts `text/html` gets the page
//!   ([`browser_root`]).
//! - Every page works without JavaScript and loads nothing from another
//!   origin: the one stylesheet is compiled into the binary, and every HTML
//!   answer carries [`SECURITY_HEADERS`] (CSP `default-src 'self'`, no
//!   framing, no referrer, no sniffing).
//! - User-controlled text (handles, X user ids, the `Host` header) reaches
//!   HTML only through askama's auto-escaping; handles are normalized with
//!   the protocol's own rule before they are used anywhere.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use cairn_identity::binding::normalize_handle;
use cairn_identity::service::IdentityService;
use cairn_relay::Relay;
use serde::Deserialize;
use tokio::sync::Semaphore;

mod app;
mod check;
mod handle;
mod home;
mod identity;
mod messages;
mod once;
pub mod passphrase;
mod relay_stats;
mod session;
mod store;
mod wallet;

pub use app::App;

/// The stylesheet, compiled in: no build step, nothing fetched at run time.
const CSS: &str = include_str!("assets/cairn.css");
/// Where the stylesheet is served. The version in the path lets browsers
/// cache it for long: a new release names a new path.
pub const CSS_PATH: &str = concat!("/assets/cairn-", env!("CARGO_PKG_VERSION"), ".css");

/// Headers on every HTML answer. The CSP allows this origin only and no
/// script at all (no page needs one), forms post only here, and no other
/// site may frame the pages.
pub const SECURITY_HEADERS: [(header::HeaderName, &str); 6] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
    (
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    ),
];

/// Most bundle checks against the node's Bitcoin node at once: each page
/// view of a bound handle asks it twice (block height, tip), and a burst
/// of views must queue rather than pile calls onto it.
const MAX_CONCURRENT_CHECKS: usize = 4;

/// What the pages read: the relay, the identity service when enabled, and
/// what the node's configuration enables.
pub struct Web {
    relay: Arc<Relay>,
    identity: Option<Identity>,
    /// Lightning addresses' names, when name payments are mounted.
    lightning_names: Vec<String>,
    /// `http(s)://host[:port]` of `[relay] public_url`; `None`: from each
    /// request's `Host` header.
    public_base: Option<String>,
    /// The owner's app (`/app/`), when the node serves it.
    app: Option<App>,
}

/// The identity witness as the pages show it.
struct Identity {
    service: Arc<IdentityService>,
    /// Confirmations after which this node calls an anchor final.
    confirmations: u32,
    checks: Semaphore,
}

impl Web {
    /// The pages of a node serving `relay`; `identity` when `[identity]
    /// enabled` (with its `confirmations`), `lightning_names` when
    /// LNURL-pay is mounted for them.
    pub fn new(
        relay: Arc<Relay>,
        identity: Option<(Arc<IdentityService>, u32)>,
        lightning_names: Vec<String>,
    ) -> Self {
        let public_base = relay
            .config()
            .public_url
            .as_deref()
            .and_then(crate::server::routes::zaps::http_base_of);
        Self {
            relay,
            identity: identity.map(|(service, confirmations)| Identity {
                service,
                confirmations,
                checks: Semaphore::new(MAX_CONCURRENT_CHECKS),
            }),
            lightning_names,
            public_base,
            app: None,
        }
    }

    /// Serves the owner's app (`/app/`) too.
    pub fn with_app(mut self, app: App) -> Self {
        self.app = Some(app);
        self
    }

    /// `http(s)://host[:port]` people reach this node at: the public URL's,
    /// else the request's `Host` (shown escaped, used in no link target
    /// outside this origin).
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(base) = &self.public_base {
            return base.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("localhost");
        format!("http://{host}")
    }
}

/// Adds the pages to `app` (the relay's router with the node's routes
/// merged in): `/` for browsers, `/verify`, `/@{handle}`,
/// `/@{handle}/bundle` and the stylesheet.
pub fn mount(app: Router, web: Web) -> Router {
    let web = Arc::new(web);
    let pages = Router::new()
        .route("/verify", get(verify_redirect))
        .route("/@{handle}", get(handle::page))
        .route("/@{handle}/bundle", get(handle::bundle))
        .route(CSS_PATH, get(css))
        .merge(app::routes())
        .with_state(Arc::clone(&web));
    app.merge(pages)
        .layer(middleware::from_fn_with_state(web, browser_root))
}

/// `GET /` from a browser gets the home page; everything else (WebSocket
/// upgrades, NIP-11, other clients, other paths) goes on unchanged.
async fn browser_root(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET && req.uri().path() == "/" && wants_html(req.headers()) {
        return home::page(&web, req.headers());
    }
    next.run(req).await
}

/// A browser's navigation: it accepts `text/html`, is no WebSocket upgrade
/// and does not ask for NIP-11 (which wins when both are named, as before).
fn wants_html(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::UPGRADE) {
        return false;
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("text/html") && !accept.contains("application/nostr+json")
}

#[derive(Deserialize)]
struct VerifyQuery {
    #[serde(default)]
    handle: String,
}

/// The home page's form (`GET /verify?handle=@Alice`) → `303 /@alice`: a
/// form without JavaScript cannot put its value into the path itself.
async fn verify_redirect(State(web): State<Arc<Web>>, Query(q): Query<VerifyQuery>) -> Response {
    match normalize_handle(q.handle.trim()) {
        Ok(handle) => Redirect::to(&format!("/@{handle}")).into_response(),
        Err(_) => error_page(
            &web,
            StatusCode::BAD_REQUEST,
            "Not an X handle",
            "An X handle is 1 to 15 letters, digits or underscores, with or without the @.",
        ),
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        CSS,
    )
        .into_response()
}

/// What every page's frame (`base.html`) needs.
struct Frame {
    css: &'static str,
    node_name: String,
    version: &'static str,
}

impl Frame {
    fn of(web: &Web) -> Self {
        Self {
            css: CSS_PATH,
            node_name: web.relay.config().name.clone(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    frame: Frame,
    title: &'a str,
    message: &'a str,
    identity: bool,
}

/// A page saying what went wrong, with the verify form to try again.
fn error_page(web: &Web, status: StatusCode, title: &str, message: &str) -> Response {
    let page = ErrorPage {
        frame: Frame::of(web),
        title,
        message,
        identity: web.identity.is_some(),
    };
    html(status, page.render())
}

/// An HTML answer with [`SECURITY_HEADERS`]; a template that failed to
/// render (a bug) is logged and answered with a plain 500.
fn html(status: StatusCode, body: askama::Result<String>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "a web page did not render");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the node's log",
            )
                .into_response();
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Standing changes with every block: never show a stale one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn browsers_get_html_and_nostr_clients_keep_nip11_and_websockets() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_html(&headers(&[("accept", browser)])));
        assert!(!wants_html(&headers(&[(
            "accept",
            "application/nostr+json"
        )])));
        assert!(!wants_html(&headers(&[(
            "accept",
            "application/nostr+json, text/html"
        )])));
        assert!(!wants_html(&headers(&[
            ("accept", browser),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_html(&headers(&[])), "curl without Accept: text");
        assert!(!wants_html(&headers(&[("accept", "*/*")])));
    }

    #[test]
    fn the_csp_allows_only_this_origin_and_no_framing() {
        let csp = SECURITY_HEADERS
            .iter()
            .find(|(n, _)| n == header::CONTENT_SECURITY_POLICY)
            .map(|(_, v)| *v)
            .unwrap();
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
    }

    #[test]
    fn the_stylesheet_loads_nothing_from_elsewhere() {
        assert!(!CSS.contains("url("), "no fonts or images from anywhere");
        assert!(!CSS.contains("@import"));
    }
}
