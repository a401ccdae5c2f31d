//! The relay over WebSockets (feature `ws`): an axum [`router`] that serves
//! the relay at `/` — a WebSocket upgrade becomes a [`Session`] through
//! [`serve_connection`], `Accept: application/nostr+json` gets NIP-11, and
//! anything else a short text page.
//!
//! The one copy of the glue between a socket and the relay engine: the node
//! merges this router into its own, and [`crate::testing`] serves it to
//! other crates' tests, so those test the very code that runs.
//!
//! [`serve`] runs its own accept loop (hyper's HTTP/1 server) so that the
//! edge rules of `[relay.network]` hold before any handler runs: a header
//! read timeout, a cap on not-yet-upgraded connections per client key, an
//! accept loop that waits out `EMFILE` instead of spinning, and (in
//! [`Keepalive`]) pings and an idle timeout on WebSockets. Per-IP limits
//! key on [`client_key`]: the forwarded client only behind a trusted proxy,
//! IPv6 by prefix.
//!
//! [`Session`]: crate::connection

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{Sink, SinkExt, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{serve_connection, Incoming, Outgoing};
use crate::net::NetworkConfig;
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
/// connect info, under the rules of `net` (see [`accept_loop`]).
pub fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    net: NetworkConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(accept_loop(listener, app, Arc::new(net), shutdown))
}

/// How long the accept loop waits after an error such as `EMFILE` (out of
/// file descriptors) before it tries again: accepting at once would fail
/// again and spin; the connection waits in the listen backlog meanwhile.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long, at shutdown, HTTP connections that are not WebSockets get to
/// finish their request (idle keep-alive ones close at once).
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown`, each served on a task of its own.
///
/// - Every socket gets TCP_NODELAY: without it a reply split over several
///   writes waits for the client's delayed ACK (~40 ms), which every REQ
///   with more than a few results would pay.
/// - A connection counts as pending for its client key
///   ([`NetworkConfig::client_key`] of the TCP peer) until its HTTP
///   connection ends, which for a WebSocket is at the upgrade; past
///   `max_pending_per_ip` it is answered `503` with `Retry-After` and
///   closed at once ([`refuse_pending`]), so that half-sent requests from
///   one address cannot hold the process's file descriptors, while a real
///   client behind a busy NAT learns to come back shortly. Trusted proxies
///   are exempt (they carry everyone).
/// - Request headers must arrive within `header_read_timeout`.
/// - An accept error other than a reset connection (`EMFILE`, `ENFILE`,
///   `ENOMEM`) is logged once, then the loop sleeps [`ACCEPT_RETRY`] and
///   retries until accepting works again (which is logged too).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    net: Arc<NetworkConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let pending = Arc::new(PendingCounts::default());
    let connections = TaskTracker::new();
    let header_timeout = Duration::from_secs(net.header_read_timeout.max(1));
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                if failing {
                    tracing::debug!(error = %err, "accept error");
                } else {
                    tracing::warn!(
                        error = %err,
                        "cannot accept connections (out of file descriptors?); retrying every \
                         {} ms",
                        ACCEPT_RETRY.as_millis()
                    );
                    failing = true;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!("accepting connections again");
        }
        let slot = if net.is_trusted_proxy(peer.ip()) {
            None
        } else {
            let key = net.client_key(peer.ip());
            match pending.enter(key, net.max_pending_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, "too many pending connections from this address");
                    refuse_pending(tcp);
                    continue;
                }
            }
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        connections.spawn(serve_http(
            tcp,
            peer,
            app.clone(),
            header_timeout,
            slot,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(HTTP_SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after the shutdown grace");
    }
    Ok(())
}

/// The answer to a connection past `max_pending_per_ip`, whatever it asked.
const TOO_MANY_PENDING: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Retry-After: 1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 65\r\n\
Connection: close\r\n\
\r\n\
rate-limited: too many unfinished connections from your address\r\n";

/// Answers a connection past `max_pending_per_ip` with [`TOO_MANY_PENDING`]
/// and closes it, without parsing its request and without ever waiting: the
/// whole point is that it holds nothing. Best effort: what the client sent
/// already is read first (closing over unread data sends a reset, which
/// can overtake the answer), and a socket that cannot take the few bytes
/// of the answer at once is just closed.
fn refuse_pending(tcp: tokio::net::TcpStream) {
    use std::io::{Read, Write};
    // The std socket (still non-blocking) reads and writes at once; tokio's
    // would report "would block" until its reactor has seen the socket.
    let Ok(mut tcp) = tcp.into_std() else {
        return;
    };
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match tcp.read(&mut scratch) {
            Ok(n) if n == scratch.len() => continue,
            _ => break,
        }
    }
    let _ = tcp.write(TOO_MANY_PENDING);
}

/// Errors of one connection that came and went before it was accepted.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One HTTP/1 connection (WebSockets upgrade from it); `_slot` is its
/// pending count, given back when the connection ends or is upgraded.
async fn serve_http(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    _slot: Option<PendingSlot>,
    shutdown: CancellationToken,
) {
    let inner = hyper_util::service::TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&inner, req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
    }
}

/// Connections per client key that are not WebSockets (yet).
#[derive(Default)]
struct PendingCounts(Mutex<HashMap<IpAddr, usize>>);

/// One pending connection of `key`; dropping it gives the slot back.
struct PendingSlot {
    counts: Arc<PendingCounts>,
    key: IpAddr,
}

impl PendingCounts {
    fn enter(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<PendingSlot> {
        let mut counts = self.0.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            counts: Arc::clone(self),
            key,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The key per-IP limits count a request under: the client's address by
/// the rules of `net` (forwarding headers only from trusted proxies),
/// folded by [`NetworkConfig::client_key`]. Other routes of the node
/// (identity) limit by it too.
pub fn client_key(net: &NetworkConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    let client = net.client_ip(peer, values("forwarded"), values("x-forwarded-for"));
    net.client_key(client)
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
        let key = client_key(&state.relay.config().network, peer.ip(), &headers);
        return accept_websocket(state, peer, key, upgrade);
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

/// Upgrades a client whose per-IP limits count under `key`.
fn accept_websocket(
    state: AppState,
    peer: SocketAddr,
    key: IpAddr,
    upgrade: WebSocketUpgrade,
) -> Response {
    let permit = match state.relay.admit(key) {
        Ok(permit) => permit,
        Err(err) => {
            tracing::debug!(%peer, client = %key, %err, "connection refused");
            return (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response();
        }
    };
    let max_message = state.relay.config().limits.max_message_length;
    let idle = match state.relay.config().network.idle_timeout {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let relay = Arc::clone(&state.relay);
    let tracker = state.connections.clone();
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            // Tracked so that shutdown can wait for every connection.
            tracker.track_future(run_socket(relay, permit, Keepalive::new(socket, idle)))
        })
}

async fn run_socket(relay: Arc<Relay>, permit: ConnectionPermit, socket: Keepalive) {
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

/// A WebSocket that is closed when it stays silent: `idle / 2` after the
/// last frame received the server pings, and `idle` after it the stream
/// ends (with a close frame, when the socket takes one). Any frame — a pong
/// included — counts as a sign of life, so a client whose WebSocket library
/// answers pings stays connected however quiet it is; a peer that vanished
/// (or never reads) does not hold its slot forever.
struct Keepalive {
    socket: WebSocket,
    /// `None`: no idle timeout.
    idle: Option<Duration>,
    last_seen: Instant,
    timer: Pin<Box<Sleep>>,
    /// A ping is waiting for room in the socket's write buffer.
    ping_due: bool,
    /// A ping was written and is being flushed.
    flushing: bool,
}

impl Keepalive {
    fn new(socket: WebSocket, idle: Option<Duration>) -> Self {
        let now = Instant::now();
        let first = idle.map_or(now, |idle| now + idle / 2);
        Self {
            socket,
            idle,
            last_seen: now,
            timer: Box::pin(tokio::time::sleep_until(first)),
            ping_due: false,
            flushing: false,
        }
    }

    /// Writes a queued ping as far as the socket lets it; `Err` when the
    /// socket failed.
    fn poll_ping(&mut self, cx: &mut Context<'_>) -> Result<(), axum::Error> {
        if self.ping_due {
            match self.socket.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    self.socket
                        .start_send_unpin(Message::Ping(Default::default()))?;
                    self.ping_due = false;
                    self.flushing = true;
                }
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => return Ok(()),
            }
        }
        if self.flushing {
            match self.socket.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.flushing = false,
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => {}
            }
        }
        Ok(())
    }
}

impl Stream for Keepalive {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(item) = this.socket.poll_next_unpin(cx) {
                if let (Some(idle), Some(_)) = (this.idle, &item) {
                    this.last_seen = Instant::now();
                    this.timer.as_mut().reset(this.last_seen + idle / 2);
                }
                return Poll::Ready(item);
            }
            let Some(idle) = this.idle else {
                return Poll::Pending;
            };
            if this.poll_ping(cx).is_err() {
                return Poll::Ready(None);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= this.last_seen + idle {
                tracing::debug!("closing an idle WebSocket");
                // Best effort: a peer that is gone does not read it anyway.
                if let Poll::Ready(Ok(())) = this.socket.poll_ready_unpin(cx) {
                    let _ = this
                        .socket
                        .start_send_unpin(Message::Close(Some(CloseFrame {
                            code: 1001,
                            reason: "idle timeout".into(),
                        })));
                    let _ = this.socket.poll_flush_unpin(cx);
                }
                return Poll::Ready(None);
            }
            this.ping_due = true;
            this.timer.as_mut().reset(this.last_seen + idle);
        }
    }
}

impl Sink<Message> for Keepalive {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.socket.poll_ready_unpin(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.socket.start_send_unpin(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.socket.poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.socket.poll_close_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pending_refusal_is_a_complete_http_response() {
        let text = std::str::from_utf8(super::TOO_MANY_PENDING).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nRetry-After: 1\r\n"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
    }
}
