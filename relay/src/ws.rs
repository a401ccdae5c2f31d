//! The relay over WebSockets (feature `ws`): an axum [`router`] that serves
//! the relay at `/` — a WebSocket upgrade becomes a [`Session`] through
//! [`serve_connection`], `Accept: application/nostr+json` gets NIP-11, and
//! anything else a short text page.
//!
//! The one copy of the glue between a socket and the relay engine: the node
//! merges this router into its own, and [`crate::testing`] serves it to
//! other crates' tests, so those test the very code that runs.
//!
//! [`Session`]: crate::connection

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use tokio_util::task::TaskTracker;

use crate::connection::{serve_connection, Incoming, Outgoing};
use crate::relay::{ConnectionPermit, Relay};

/// Initial WebSocket read buffer; it grows for larger messages. Kept small
/// because idle connections are the common case.
const WS_READ_BUFFER: usize = 4 * 1024;
/// Outgoing bytes buffered before a write is forced (a flush also forces it).
const WS_WRITE_BUFFER: usize = 16 * 1024;

#[derive(Clone)]
struct AppState {
    relay: Arc<Relay>,
    connections: TaskTracker,
}

/// `GET /` (and its CORS preflight) for `relay`. Every connection's task is
/// tracked on `connections`, so that shutdown can wait for them. Serve it
/// with `into_make_service_with_connect_info::<SocketAddr>()`: connections
/// are counted per client address.
pub fn router(relay: Arc<Relay>, connections: TaskTracker) -> Router {
    Router::new()
        .route("/", get(root).options(preflight))
        .with_state(AppState { relay, connections })
}

/// Serves `app` (the [`router`], possibly merged with more routes) on
/// `listener` until `shutdown` is cancelled, with each client's address as
/// connect info. Every socket gets TCP_NODELAY: without it a reply split
/// over several writes waits for the client's delayed ACK (~40 ms), which
/// every REQ with more than a few results would pay.
pub fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    })
}

/// `GET /`: a WebSocket upgrade goes to the relay; `Accept:
/// application/nostr+json` gets NIP-11; anything else a short text page.
async fn root(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Ok(upgrade) = upgrade {
        return accept_websocket(state, peer, upgrade);
    }
    let wants_nip11 = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/nostr+json"));
    if wants_nip11 {
        let body = state.relay.information_document().to_string();
        return (
            CORS_HEADERS,
            [(header::CONTENT_TYPE, "application/nostr+json")],
            body,
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "This is a Cairn Nostr relay. Connect a Nostr client to {}\n",
            state.relay.public_url()
        ),
    )
        .into_response()
}

/// CORS preflight for browser clients fetching NIP-11.
async fn preflight() -> impl IntoResponse {
    (StatusCode::NO_CONTENT, CORS_HEADERS)
}

/// NIP-11 is public: any origin may read it.
const CORS_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
    (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, OPTIONS"),
];

fn accept_websocket(state: AppState, peer: SocketAddr, upgrade: WebSocketUpgrade) -> Response {
    let permit = match state.relay.admit(peer.ip()) {
        Ok(permit) => permit,
        Err(err) => {
            tracing::debug!(%peer, %err, "connection refused");
            return (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response();
        }
    };
    let max_message = state.relay.config().limits.max_message_length;
    let relay = Arc::clone(&state.relay);
    let tracker = state.connections.clone();
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            // Tracked so that shutdown can wait for every connection.
            tracker.track_future(run_socket(relay, permit, socket))
        })
}

async fn run_socket(relay: Arc<Relay>, permit: ConnectionPermit, socket: WebSocket) {
    let (sink, stream) = socket.split();
    // Text and binary frames pass through; control frames are answered by
    // the WebSocket library; a close or a fatal error ends the stream (after
    // reporting the error, when the client can be told why).
    let incoming = futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        loop {
            match stream.next().await? {
                Ok(Message::Text(text)) => {
                    return Some((Incoming::Text(text.to_string()), Some(stream)))
                }
                Ok(Message::Binary(_)) => return Some((Incoming::Binary, Some(stream))),
                Ok(Message::Close(_)) => return None,
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Err(err) => return classify_error(&err).map(|incoming| (incoming, None)),
            }
        }
    });
    let outgoing = sink.with(|out: Outgoing| {
        futures::future::ready(Ok::<_, axum::Error>(match out {
            Outgoing::Text(text) => Message::Text(text.into()),
            Outgoing::Close { code, reason } => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        }))
    });
    serve_connection(relay, permit, Box::pin(incoming), Box::pin(outgoing)).await;
}

fn classify_error(err: &axum::Error) -> Option<Incoming> {
    let source = std::error::Error::source(err)?;
    match source.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some(Incoming::TooLarge),
        tungstenite::Error::Utf8(_) => Some(Incoming::InvalidUtf8),
        tungstenite::Error::Protocol(p) => Some(Incoming::ProtocolError(p.to_string())),
        _ => None,
    }
}
