//! The HTTP edge of the relay ([`cairn_relay::ws::serve`]) on a real
//! socket: what a connection past `max_pending_per_ip` is told.
//!
//! Run: `cargo test -p cairn-relay --features ws --test edge` (the
//! workspace's `cargo test` enables `ws` through the node).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_relay::config::RelayConfig;
use cairn_relay::{store, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::task::TaskTracker;

/// Upper bound for the test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one answer may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind the client address");
    socket.connect(addr).await.expect("connect")
}

/// Everything the server sends until it closes the connection.
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(REPLY_TIMEOUT, tcp.read_to_end(&mut answer)).await;
    // A reset after the answer is a close too.
    let _ = read.expect("the server closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A NIP-11 request that asks the server to close afterwards.
const NIP11_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: relay\r\nAccept: application/nostr+json\r\n\
Connection: close\r\n\r\n";

/// A connection past the cap on not-yet-upgraded connections per address
/// gets `503` with `Retry-After` before it is closed, instead of a silent
/// close that a real client behind a busy NAT cannot tell from a dead
/// relay; other addresses are served, and the address gets in again once
/// one of its pending connections ends. (Before: closed without a word.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_pending_cap_are_told_to_come_back() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/relay.db", dir.path().display());
        let store = store::open(&url).await.expect("open sqlite");
        let mut config = RelayConfig::default();
        config.network.max_pending_per_ip = 2;
        // Far longer than the test: the held connections stay pending.
        config.network.header_read_timeout = 600;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (relay, writer) = Relay::new(config.clone(), &format!("ws://{addr}"), store);
        let connections = TaskTracker::new();
        let app = cairn_relay::ws::router(Arc::clone(&relay), connections.clone());
        let server = cairn_relay::ws::serve(
            listener,
            app,
            config.network.clone(),
            relay.shutdown_token().clone(),
        );

        // Two half-sent requests take the address's two pending slots.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut tcp = connect_from(addr, "127.0.0.1").await;
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n")
                .await
                .expect("write");
            held.push(tcp);
        }
        // The accept loop takes connections in order, so the third is
        // counted after them: it is answered and closed, whatever it sends.
        let mut third = connect_from(addr, "127.0.0.1").await;
        let answer = read_until_closed(&mut third).await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
        assert!(answer.contains("\r\nRetry-After: 1\r\n"), "{answer:?}");
        assert!(answer.contains("rate-limited: "), "{answer:?}");

        // Another address is served meanwhile.
        let mut other = connect_from(addr, "127.0.0.2").await;
        other.write_all(NIP11_GET).await.expect("write");
        let answer = read_until_closed(&mut other).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        assert!(answer.contains("\"limitation\""), "{answer:?}");

        // Once one pending connection of the address ends, a new one is
        // served (the server notices the close in its own time).
        drop(held.pop());
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let mut tcp = connect_from(addr, "127.0.0.1").await;
            // The 503 may come before the request is written.
            let _ = tcp.write_all(NIP11_GET).await;
            let answer = read_until_closed(&mut tcp).await;
            if answer.starts_with("HTTP/1.1 200 ") {
                break;
            }
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
            assert!(
                Instant::now() < deadline,
                "the freed slot was not given back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        drop(held);
        relay.begin_shutdown();
        server.await.expect("server task").expect("server");
        connections.close();
        connections.wait().await;
        drop(relay);
        let _ = writer.await;
    })
    .await
    .expect("test timed out");
}
