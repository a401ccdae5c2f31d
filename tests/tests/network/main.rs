//! The relay's network edge over real loopback sockets: half-sent HTTP
//! requests time out and are capped per address (so they cannot starve
//! everyone else of file descriptors), per-IP limits key on an IPv6 /64 and
//! believe `X-Forwarded-For` / `Forwarded` only from trusted proxies, and
//! silent WebSockets are closed while ones that answer pings stay.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_e2e::{within, Backend, TestNode, WsClient};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// A TCP connection from `source` that sends the start of a request and
/// never finishes its headers.
async fn half_sent(server: SocketAddr, source: IpAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut tcp = socket.connect(server).await?;
    // The server may have closed it already (over the per-address cap).
    let _ = tcp
        .write_all(b"GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n")
        .await;
    Ok(tcp)
}

/// Whether the server has closed `tcp` (EOF or reset), without waiting.
fn closed_by_server(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tcp.try_read(&mut buf) {
            Ok(0) => return true,
            // An error response before the close: read on.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_after_the_header_timeout() -> Result<()> {
    within_case(async {
        let node = TestNode::start_with(&Backend::Sqlite, |s| {
            s.relay.network.header_read_timeout = 1;
        })
        .await?;
        let started = Instant::now();
        let mut partial = half_sent(node.addr, "127.0.0.1".parse()?).await?;
        let mut silent = TcpStream::connect(node.addr).await?;
        for (what, tcp) in [("half-sent", &mut partial), ("silent", &mut silent)] {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
                .await
                .with_context(|| format!("the {what} connection is still open after 5 s"))?;
            // EOF or a reset: either way the server let go.
            let _ = read;
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "closed too early: {took:?}"
        );
        assert!(took < Duration::from_secs(4), "closed late: {took:?}");
        // A client that sends its request in time is served.
        let client = node.connect().await?;
        client.close().await;
        node.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_half_sent_requests_from_one_address_do_not_lock_others_out() -> Result<()> {
    within_case(async {
        // Default settings: the header timeout (10 s) is far longer than
        // this test; the per-address cap on pending connections is what
        // must keep the server's descriptors free.
        let node = TestNode::start(&Backend::Sqlite).await?;
        let attacker: IpAddr = "127.0.0.1".parse()?;
        let mut held = Vec::with_capacity(1_100);
        for _ in 0..1_100 {
            held.push(half_sent(node.addr, attacker).await?);
        }
        // A new client from another address connects within 1 s.
        let started = Instant::now();
        let mut client = tokio::time::timeout(
            Duration::from_secs(1),
            WsClient::connect_from(&node.ws_url(), node.addr, "127.0.0.2".parse()?),
        )
        .await
        .context("a new client could not connect within 1 s")??;
        let connected = started.elapsed();
        client
            .req("s", &[json!({"kinds": [1], "limit": 1})])
            .await?
            .eose("bystander REQ");
        client.close().await;

        // All but the per-address cap were closed by the server, at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cap = node.settings.relay.network.max_pending_per_ip;
        let open = held.iter().filter(|tcp| !closed_by_server(tcp)).count();
        assert!(
            open <= cap,
            "{open} half-sent requests from one address are open (cap {cap})"
        );
        assert!(open > 0, "the first {cap} wait for their headers");
        eprintln!("new client connected in {connected:?}; {open} of 1100 half-sent left open");
        drop(held);
        node.finish().await
    })
    .await
}

/// Opens a WebSocket to `node` with extra request headers; the HTTP status
/// when the upgrade is refused.
async fn ws_with_headers(
    node: &TestNode,
    headers: &[(&'static str, &str)],
) -> Result<std::result::Result<WsStream, u16>> {
    let mut request = node.ws_url().into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse()?);
    }
    match within(
        "WebSocket connect",
        tokio_tungstenite::connect_async(request),
    )
    .await?
    {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Ok(Err(response.status().as_u16()))
        }
        Err(e) => bail!("connect: {e}"),
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_key_on_the_ipv6_prefix_and_trust_only_configured_proxies() -> Result<()> {
    within_case(async {
        // The test connects from 127.0.0.1, configured as a reverse proxy.
        let proxied = TestNode::start_with(&Backend::Sqlite, |s| {
            s.relay.limits.max_connections_per_ip = 2;
            s.relay.network.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        })
        .await?;
        let xff = |v: &'static str| [("x-forwarded-for", v)];
        let mut open = Vec::new();
        // Two addresses of one /64: two connections of one client.
        for client in ["2001:db8:1:2::1", "2001:db8:1:2:ffff:0:0:2"] {
            let ws = ws_with_headers(&proxied, &xff(client)).await?;
            open.push(ws.map_err(|s| anyhow::anyhow!("{client}: refused with {s}"))?);
        }
        let third = ws_with_headers(&proxied, &xff("2001:db8:1:2:abcd::3")).await?;
        assert_eq!(third.err(), Some(503), "a third address of the same /64");
        // Another /64 is another client.
        let other = ws_with_headers(&proxied, &xff("2001:db8:1:3::1")).await?;
        open.push(other.map_err(|s| anyhow::anyhow!("another /64 refused with {s}"))?);
        // This proxy writes X-Forwarded-For (the default `forwarded_header`):
        // a `Forwarded` header is the client's own and names nobody, so
        // these count against the /64 of their X-Forwarded-For entry.
        let spoof = |xff: &'static str| {
            [
                ("forwarded", "for=\"[2001:db8:9::1]:443\""),
                ("x-forwarded-for", xff),
            ]
        };
        let ws = ws_with_headers(&proxied, &spoof("2001:db8:1:3::7")).await?;
        open.push(ws.map_err(|s| anyhow::anyhow!("second of that /64 refused: {s}"))?);
        let ws = ws_with_headers(&proxied, &spoof("2001:db8:1:3::8")).await?;
        assert_eq!(ws.err(), Some(503), "a Forwarded header chose the key");
        // A client that spoofs the header through the proxy is still
        // counted by the address the proxy saw (the rightmost entry).
        for _ in 0..2 {
            let ws = ws_with_headers(&proxied, &xff("198.51.100.1, 203.0.113.5")).await?;
            open.push(ws.map_err(|s| anyhow::anyhow!("proxied IPv4 client refused: {s}"))?);
        }
        let ws = ws_with_headers(&proxied, &xff("198.51.100.2, 203.0.113.5")).await?;
        assert_eq!(ws.err(), Some(503), "the spoofed first hop is not the key");
        for ws in open.drain(..) {
            drop(ws);
        }
        proxied.finish().await?;

        // Without trusted proxies, the headers are anyone's to write: ignored.
        let direct = TestNode::start_with(&Backend::Sqlite, |s| {
            s.relay.limits.max_connections_per_ip = 2;
        })
        .await?;
        for client in ["198.51.100.1", "198.51.100.2"] {
            let ws = ws_with_headers(&direct, &xff(client)).await?;
            open.push(ws.map_err(|s| anyhow::anyhow!("{client}: refused with {s}"))?);
        }
        let ws = ws_with_headers(&direct, &xff("198.51.100.3")).await?;
        assert_eq!(
            ws.err(),
            Some(503),
            "an untrusted peer's header was believed"
        );
        drop(open);
        direct.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_websockets_are_closed_and_ones_that_answer_pings_stay() -> Result<()> {
    within_case(async {
        let node = TestNode::start_with(&Backend::Sqlite, |s| {
            s.relay.network.idle_timeout = 2;
        })
        .await?;
        let (mut live, _) = tokio_tungstenite::connect_async(node.ws_url()).await?;
        let (mut silent, _) = tokio_tungstenite::connect_async(node.ws_url()).await?;
        // `live` reads all along (its library answers pings); `silent`
        // is never read, so it never answers.
        let started = Instant::now();
        let mut pings = 0;
        while started.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_millis(200), live.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Close(frame)))) => bail!("live socket closed: {frame:?}"),
                Ok(None) => bail!("live socket ended"),
                Ok(Some(Err(e))) => bail!("live socket failed: {e}"),
                Ok(Some(Ok(_))) | Err(_) => {}
            }
        }
        assert!(pings >= 2, "the server pinged {pings} times in 5 s");
        // Still served.
        use futures::SinkExt;
        live.send(Message::text(r#"["REQ","s",{"kinds":[1],"limit":1}]"#))
            .await?;
        let eose = loop {
            match within("EOSE", live.next()).await? {
                Some(Ok(Message::Text(t))) if t.contains("EOSE") => break t,
                Some(Ok(_)) => continue,
                other => bail!("live socket: {other:?}"),
            }
        };
        assert!(eose.contains("\"s\""), "{eose}");

        // The silent one was closed (a close frame, then the end).
        let mut closed = None;
        while closed.is_none() {
            match within("the silent socket's end", silent.next()).await? {
                Some(Ok(Message::Close(frame))) => closed = Some(format!("{frame:?}")),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => closed = Some("ended".into()),
            }
        }
        let closed = closed.unwrap_or_default();
        assert!(
            closed.contains("idle") || closed == "ended",
            "silent socket: {closed}"
        );
        node.finish().await
    })
    .await
}

async fn within_case(case: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(CASE_TIMEOUT, case)
        .await
        .context("test case timed out")?
}
