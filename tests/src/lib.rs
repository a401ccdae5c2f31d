//! End-to-end test harness: real Cairn nodes on loopback, driven by a raw
//! WebSocket client (for byte-precise assertions) and by nostr-sdk.
//!
//! Every test case is an `async fn(Backend) -> anyhow::Result<()>` and runs once
//! per storage backend through [`backend_tests!`]: SQLite always, Postgres when
//! `CAIRN_TEST_POSTGRES_URL` is set (each case gets a fresh database that is
//! dropped afterwards).

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use cairn_node::{RunningNode, Settings};
use futures::{SinkExt as _, StreamExt as _};
use nostr::prelude::*;
use serde_json::{json, Value};
use sqlx::{Connection as _, Executor as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use serde_json;

/// Upper bound for any single network wait.
pub const WAIT: Duration = Duration::from_secs(10);
/// Upper bound for a whole test case.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(90);
/// Environment variable naming an admin Postgres URL.
pub const POSTGRES_ENV: &str = "CAIRN_TEST_POSTGRES_URL";

/// `tokio::time::timeout` with a readable error.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| anyhow!("timed out after {WAIT:?} waiting for {what}"))
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Storage backend a case runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite in the node's data directory.
    Sqlite,
    /// Postgres; the admin URL used to create and drop per-test databases.
    Postgres {
        /// e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
        admin_url: String,
    },
}

impl Backend {
    /// The Postgres backend if `CAIRN_TEST_POSTGRES_URL` is set.
    pub fn postgres_from_env() -> Option<Self> {
        std::env::var(POSTGRES_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|admin_url| Backend::Postgres { admin_url })
    }

    /// Whether this is Postgres.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres { .. })
    }
}

/// Print (once per test binary, bypassing the test harness' output capture)
/// why the Postgres variants are skipped.
pub fn skip_postgres(case: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPING Postgres variants of the e2e tests (first: {case}): {POSTGRES_ENV} is not set.\n\
             Run them with e.g. {POSTGRES_ENV}=postgres://postgres@127.0.0.1:5432/postgres cargo test -p cairn-e2e\n"
        );
    });
}

/// Panics seen outside test threads, i.e. in the server's tasks and threads
/// (tokio would otherwise swallow them), with when they happened.
static WORKER_PANICS: std::sync::Mutex<Vec<(std::time::Instant, String)>> =
    std::sync::Mutex::new(Vec::new());

fn install_panic_recorder() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Test bodies run on threads named after the test (`mod::case`);
            // everything else (tokio workers, blocking pools, the server's own
            // threads) belongs to the server.
            let thread = std::thread::current();
            let name = thread.name().unwrap_or_default();
            if !name.contains("::") && name != "main" {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                if let Ok(mut panics) = WORKER_PANICS.lock() {
                    panics.push((std::time::Instant::now(), format!("{location}: {payload}")));
                }
            }
            default(info);
        }));
    });
}

/// Run one case with a global timeout; errors fail the test with their chain.
/// A panic in any server task during the case fails it too (tests run in
/// parallel, so it may belong to the case running alongside: see the location).
pub async fn run_case<F, Fut>(name: &str, backend: Backend, case: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    install_panic_recorder();
    let started = std::time::Instant::now();
    match tokio::time::timeout(CASE_TIMEOUT, case(backend.clone())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{name} ({backend:?}) failed: {e:#}"),
        Err(_) => panic!("{name} ({backend:?}) timed out after {CASE_TIMEOUT:?}"),
    }
    let panics: Vec<String> = WORKER_PANICS
        .lock()
        .map(|p| {
            p.iter()
                .filter(|(at, _)| *at >= started)
                .map(|(_, m)| m.clone())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        panics.is_empty(),
        "{name} ({backend:?}): a server task or thread panicked during this case: {panics:?}"
    );
}

/// Generate one `#[tokio::test]` per case and backend:
/// `sqlite::<case>` and `postgres::<case>` (skipped with a message when
/// `CAIRN_TEST_POSTGRES_URL` is unset).
#[macro_export]
macro_rules! backend_tests {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::run_case(stringify!($case), $crate::Backend::Sqlite, super::$case).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    match $crate::Backend::postgres_from_env() {
                        Some(backend) => $crate::run_case(stringify!($case), backend, super::$case).await,
                        None => $crate::skip_postgres(stringify!($case)),
                    }
                }
            )+
        }
    };
}

/// A fresh Postgres database, dropped by [`PgDatabase::drop_now`] or, after a
/// panic, by `Drop`.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    /// Database name.
    pub name: String,
    /// URL of the database itself.
    pub url: String,
    dropped: bool,
}

impl PgDatabase {
    /// Create a database with a random name.
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!(
            "cairn_e2e_{}",
            &Keys::generate().public_key().to_hex()[..20]
        );
        let mut admin = within(
            "postgres admin connection",
            sqlx::PgConnection::connect(admin_url),
        )
        .await?
        .with_context(|| format!("connecting to {POSTGRES_ENV}"))?;
        within(
            "CREATE DATABASE",
            admin.execute(format!("CREATE DATABASE \"{name}\"").as_str()),
        )
        .await??;
        let _ = admin.close().await;
        let mut url = url::Url::parse(admin_url).context("parsing the Postgres URL")?;
        url.set_path(&format!("/{name}"));
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
            dropped: false,
        })
    }

    /// Terminate every session connected to this database (simulates the
    /// database going away without restarting the cluster).
    pub async fn terminate_connections(&self) -> anyhow::Result<u64> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        let rows: Vec<(Option<bool>,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_all(&mut admin)
        .await?;
        let _ = admin.close().await;
        Ok(rows.iter().filter(|r| r.0 == Some(true)).count() as u64)
    }

    /// Drop the database now.
    pub async fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await?;
    let _ = admin.close().await;
    Ok(())
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Runs after a failed test: use a private runtime on its own thread so
        // this works from inside the test's runtime too.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(async {
                    tokio::time::timeout(WAIT, drop_database(&admin_url, &name)).await
                });
            }
        })
        .join();
    }
}

// ---------------------------------------------------------------------------
// Test node
// ---------------------------------------------------------------------------

/// A Cairn node on loopback with its own data directory (and database).
#[derive(Debug)]
pub struct TestNode {
    node: Option<RunningNode>,
    /// Settings the node was started with (bind is port 0 until started).
    pub settings: Settings,
    /// Address bound by the running node.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    pg: Option<PgDatabase>,
}

/// Settings for a test node: loopback port 0, the given data directory and database.
pub fn test_settings(data_dir: PathBuf, database_url: Option<String>) -> Settings {
    Settings {
        bind: "127.0.0.1:0".parse().expect("valid address"),
        data_dir,
        database_url,
        expiration_purge_interval_secs: 1,
        ..Settings::default()
    }
}

impl TestNode {
    /// Start a node with default settings.
    pub async fn start(backend: &Backend) -> anyhow::Result<Self> {
        Self::start_with(backend, |_| {}).await
    }

    /// Start a node, letting the caller adjust the settings first.
    pub async fn start_with(
        backend: &Backend,
        configure: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres { admin_url } => Some(PgDatabase::create(admin_url).await?),
        };
        let mut settings = test_settings(
            dir.path().to_path_buf(),
            pg.as_ref().map(|db| db.url.clone()),
        );
        configure(&mut settings);
        let node = within("cairn_node::start", cairn_node::start(settings.clone()))
            .await?
            .context("cairn_node::start")?;
        Ok(Self {
            addr: node.addr,
            node: Some(node),
            settings,
            dir,
            pg,
        })
    }

    /// The Postgres database, if any.
    pub fn pg(&self) -> Option<&PgDatabase> {
        self.pg.as_ref()
    }

    /// `ws://ADDR` (what the relay expects in AUTH by default).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The running node (`None` while stopped).
    pub fn running(&self) -> Option<&RunningNode> {
        self.node.as_ref()
    }

    /// The metrics listener's address, when the node runs with `[metrics] bind`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.node.as_ref().and_then(|n| n.metrics_addr)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// How many rows of the store's `events` table hold the event `id_hex`
    /// (reads the database directly, to observe background purges).
    pub async fn stored_rows(&self, id_hex: &str) -> anyhow::Result<i64> {
        let mut reader = self.db_reader().await?;
        let n = reader.stored_rows(id_hex).await?;
        reader.close().await;
        Ok(n)
    }

    /// A direct connection to the node's database, bypassing the relay.
    pub async fn db_reader(&self) -> anyhow::Result<DbReader> {
        Ok(match &self.pg {
            Some(pg) => DbReader::Postgres(Box::new(sqlx::PgConnection::connect(&pg.url).await?)),
            None => {
                let path = self.dir.path().join(cairn_node::settings::SQLITE_FILE);
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true);
                DbReader::Sqlite(sqlx::SqliteConnection::connect_with(&opts).await?)
            }
        })
    }

    /// Open a raw WebSocket connection and read the AUTH challenge.
    pub async fn connect(&self) -> anyhow::Result<WsClient> {
        WsClient::connect(&self.ws_url()).await
    }

    /// Open a raw WebSocket connection from another loopback source address
    /// (e.g. `127.0.0.2`), i.e. as a different client IP.
    pub async fn connect_from(&self, source: std::net::IpAddr) -> anyhow::Result<WsClient> {
        WsClient::connect_from(&self.ws_url(), self.addr, source).await
    }

    /// Shut the node down (finishing in-flight writes), keep its data.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(node) = self.node.take() {
            within("node shutdown", node.shutdown()).await??;
        }
        Ok(())
    }

    /// Shut down and start again on the same data directory and database
    /// (on a new port).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let mut settings = self.settings.clone();
        settings.bind = "127.0.0.1:0".parse().expect("valid address");
        let node = within("cairn_node::start (restart)", cairn_node::start(settings))
            .await?
            .context("cairn_node::start (restart)")?;
        self.addr = node.addr;
        self.node = Some(node);
        Ok(())
    }

    /// Shut down and drop the test database.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop().await?;
        if let Some(pg) = self.pg.take() {
            pg.drop_now().await?;
        }
        Ok(())
    }
}

/// A direct database connection (see [`TestNode::db_reader`]).
#[derive(Debug)]
pub enum DbReader {
    /// SQLite, read-only.
    Sqlite(sqlx::SqliteConnection),
    /// Postgres (boxed: a `PgConnection` is large).
    Postgres(Box<sqlx::PgConnection>),
}

impl DbReader {
    /// Rows of `events` holding the event `id_hex` (0 or 1).
    pub async fn stored_rows(&mut self, id_hex: &str) -> anyhow::Result<i64> {
        let pattern = format!("%\"id\":\"{id_hex}\"%");
        let sql = "SELECT COUNT(*) FROM events WHERE json LIKE $1";
        let (n,): (i64,) = match self {
            DbReader::Postgres(conn) => {
                sqlx::query_as(sql)
                    .bind(&pattern)
                    .fetch_one(conn.as_mut())
                    .await?
            }
            DbReader::Sqlite(conn) => sqlx::query_as(sql).bind(&pattern).fetch_one(conn).await?,
        };
        Ok(n)
    }

    /// Close the connection.
    pub async fn close(self) {
        let _ = match self {
            DbReader::Postgres(conn) => (*conn).close().await,
            DbReader::Sqlite(conn) => conn.close().await,
        };
    }
}

// ---------------------------------------------------------------------------
// Raw WebSocket client
// ---------------------------------------------------------------------------

/// An `OK` answer.
#[derive(Debug, Clone)]
pub struct Ok_ {
    /// Event id echoed by the relay.
    pub id: String,
    /// Accepted?
    pub accepted: bool,
    /// Message (with its machine-readable prefix).
    pub message: String,
}

impl Ok_ {
    /// Assert the event was accepted.
    pub fn assert_accepted(&self, what: &str) {
        assert!(
            self.accepted,
            "{what}: expected OK true, got OK false {:?}",
            self.message
        );
    }

    /// Assert a rejection whose message starts with one of `prefixes`.
    pub fn assert_rejected(&self, what: &str, prefixes: &[&str]) {
        assert!(
            !self.accepted,
            "{what}: expected OK false with one of {prefixes:?}, got OK true {:?}",
            self.message
        );
        assert!(
            prefixes.iter().any(|p| self.message.starts_with(p)),
            "{what}: expected OK false with a prefix in {prefixes:?}, got {:?}",
            self.message
        );
    }
}

/// The end of a REQ's stored-events phase.
#[derive(Debug, Clone)]
pub enum ReqEnd {
    /// `EOSE`: the subscription is open for live events.
    Eose,
    /// `CLOSED` with its message.
    Closed(String),
}

/// Events received for a REQ up to its EOSE or CLOSED.
#[derive(Debug, Clone)]
pub struct ReqResult {
    /// Stored events, in the order sent.
    pub events: Vec<Event>,
    /// How it ended.
    pub end: ReqEnd,
}

impl ReqResult {
    /// Events, asserting that the REQ ended with EOSE.
    pub fn eose(self, what: &str) -> Vec<Event> {
        match self.end {
            ReqEnd::Eose => self.events,
            ReqEnd::Closed(m) => panic!("{what}: expected EOSE, got CLOSED {m:?}"),
        }
    }

    /// The CLOSED message, asserting that the REQ was closed.
    pub fn closed(self, what: &str) -> String {
        match self.end {
            ReqEnd::Closed(m) => m,
            ReqEnd::Eose => panic!(
                "{what}: expected CLOSED, got EOSE after {} events",
                self.events.len()
            ),
        }
    }

    /// Ids of the events, in order.
    pub fn ids(&self) -> Vec<EventId> {
        self.events.iter().map(|e| e.id).collect()
    }
}

/// Answer to COUNT.
#[derive(Debug, Clone, PartialEq)]
pub enum CountResult {
    /// `["COUNT",sub,{"count":n}]`.
    Count(u64),
    /// `["CLOSED",sub,msg]`.
    Closed(String),
}

/// What came back from the socket.
#[derive(Debug)]
pub enum Incoming {
    /// A JSON text message.
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// The socket was closed (close frame, EOF or error), with detail.
    Closed(String),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client that speaks NIP-01 frames.
pub struct WsClient {
    ws: Ws,
    url: String,
    /// The challenge from the relay's initial `["AUTH",…]`.
    pub challenge: String,
    pending: VecDeque<Value>,
    closed: Option<String>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").field("url", &self.url).finish()
    }
}

impl WsClient {
    /// Connect and read the AUTH challenge the relay must send first.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = within("WebSocket connect", tokio_tungstenite::connect_async(url))
            .await?
            .with_context(|| format!("connecting to {url}"))?;
        Self::after_handshake(ws, url).await
    }

    /// Connect from a given loopback source address.
    pub async fn connect_from(
        url: &str,
        server: SocketAddr,
        source: std::net::IpAddr,
    ) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = within("TCP connect", socket.connect(server)).await??;
        let (ws, _) = within(
            "WebSocket handshake",
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await??;
        Self::after_handshake(ws, url).await
    }

    /// Connect without reading anything (for tests of the very first message).
    pub async fn connect_raw(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = within("WebSocket connect", tokio_tungstenite::connect_async(url))
            .await?
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            ws,
            url: url.to_owned(),
            challenge: String::new(),
            pending: VecDeque::new(),
            closed: None,
        })
    }

    async fn after_handshake(ws: Ws, url: &str) -> anyhow::Result<Self> {
        let mut client = Self {
            ws,
            url: url.to_owned(),
            challenge: String::new(),
            pending: VecDeque::new(),
            closed: None,
        };
        let first = client.recv_json().await.context("first message (AUTH)")?;
        match first.as_array().map(|a| a.as_slice()) {
            Some([kind, Value::String(challenge)]) if kind == "AUTH" && !challenge.is_empty() => {
                client.challenge = challenge.clone();
            }
            _ => bail!("expected [\"AUTH\", <challenge>] as first message, got {first}"),
        }
        Ok(client)
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        let text: String = text.into();
        within("send", self.ws.send(Message::text(text))).await??;
        Ok(())
    }

    /// Send a JSON message.
    pub async fn send_json(&mut self, value: &Value) -> anyhow::Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Send a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        within("send", self.ws.send(Message::binary(bytes))).await??;
        Ok(())
    }

    /// Send a text frame whose payload is the given bytes (may be invalid UTF-8).
    pub async fn send_raw_text_frame(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
        within("send", self.ws.send(Message::Frame(frame))).await??;
        Ok(())
    }

    /// Send a text message split into `parts` WebSocket fragments
    /// (a first text frame, then continuation frames).
    pub async fn send_fragmented(&mut self, text: &str, parts: usize) -> anyhow::Result<()> {
        let bytes = text.as_bytes();
        let size = bytes.len().div_ceil(parts.max(1)).max(1);
        let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let frame = Frame::message(chunk.to_vec(), opcode, i + 1 == chunks.len());
            within("send fragment", self.ws.send(Message::Frame(frame))).await??;
        }
        Ok(())
    }

    /// Send a close frame.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }

    /// Next message of any kind from the socket (ignores pings/pongs; skips
    /// the pending queue).
    pub async fn recv_incoming(&mut self) -> anyhow::Result<Incoming> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(Incoming::Json(v));
        }
        self.recv_socket().await
    }

    async fn recv_socket(&mut self) -> anyhow::Result<Incoming> {
        if let Some(why) = &self.closed {
            return Ok(Incoming::Closed(why.clone()));
        }
        loop {
            let next = within("a message from the relay", self.ws.next()).await?;
            let incoming = match next {
                None => Incoming::Closed("EOF".into()),
                Some(Err(e)) => Incoming::Closed(format!("error: {e}")),
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                    Ok(v) => Incoming::Json(v),
                    Err(_) => Incoming::Text(t.as_str().to_owned()),
                },
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    Incoming::Closed(format!("close frame {frame:?}"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            };
            if let Incoming::Closed(why) = &incoming {
                self.closed = Some(why.clone());
            }
            return Ok(incoming);
        }
    }

    /// Next JSON message; errors on close, non-JSON or timeout.
    pub async fn recv_json(&mut self) -> anyhow::Result<Value> {
        match self.recv_incoming().await? {
            Incoming::Json(v) => Ok(v),
            other => bail!("expected a JSON message, got {other:?}"),
        }
    }

    /// Wait for the first message matching `pred`; the others stay queued, in order.
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        if let Some(pos) = self.pending.iter().position(&mut pred) {
            return Ok(self.pending.remove(pos).expect("position is valid"));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        let result = loop {
            let next = tokio::time::timeout_at(deadline, self.recv_socket()).await;
            match next {
                Err(_) => break Err(anyhow!("timed out waiting for {what}")),
                Ok(Err(e)) => break Err(e.context(format!("waiting for {what}"))),
                Ok(Ok(Incoming::Json(v))) => {
                    if pred(&v) {
                        break Ok(v);
                    }
                    skipped.push(v);
                }
                Ok(Ok(other)) => break Err(anyhow!("waiting for {what}, got {other:?}")),
            }
        };
        self.pending.extend(skipped);
        result.with_context(|| format!("(other messages received: {:?})", self.pending))
    }

    /// Queued messages that were skipped by [`WsClient::recv_until`].
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Send an event and wait for its OK.
    pub async fn publish(&mut self, event: &Event) -> anyhow::Result<Ok_> {
        self.publish_json(&serde_json::to_value(event)?).await
    }

    /// Publish events that must all be accepted.
    pub async fn publish_all(&mut self, events: &[&Event]) -> anyhow::Result<()> {
        for event in events {
            let ok = self.publish(event).await?;
            if !ok.accepted {
                bail!(
                    "event {} (kind {}) was rejected: {:?}",
                    event.id,
                    event.kind,
                    ok.message
                );
            }
        }
        Ok(())
    }

    /// Send `["EVENT", value]` and wait for the OK echoing `value.id`.
    pub async fn publish_json(&mut self, event: &Value) -> anyhow::Result<Ok_> {
        self.send_json(&json!(["EVENT", event])).await?;
        let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
        self.wait_ok(id).await
    }

    /// Wait for `["OK", id, …]`.
    pub async fn wait_ok(&mut self, id: &str) -> anyhow::Result<Ok_> {
        let id = id.to_owned();
        let v = self
            .recv_until(&format!("OK for {id}"), |v| {
                v[0] == "OK" && v[1].as_str() == Some(id.as_str())
            })
            .await?;
        parse_ok(&v)
    }

    /// Send a REQ and collect stored events until EOSE or CLOSED.
    pub async fn req(&mut self, sub: &str, filters: &[Value]) -> anyhow::Result<ReqResult> {
        let mut msg = vec![json!("REQ"), json!(sub)];
        msg.extend(filters.iter().cloned());
        self.send_json(&Value::Array(msg)).await?;
        self.collect_stored(sub).await
    }

    /// Collect `EVENT`s for `sub` until its EOSE or CLOSED.
    pub async fn collect_stored(&mut self, sub: &str) -> anyhow::Result<ReqResult> {
        let mut events = Vec::new();
        loop {
            let v = self
                .recv_until(&format!("EVENT/EOSE/CLOSED for {sub:?}"), |v| {
                    v[1].as_str() == Some(sub)
                        && (v[0] == "EVENT" || v[0] == "EOSE" || v[0] == "CLOSED")
                })
                .await?;
            match v[0].as_str() {
                Some("EVENT") => events.push(parse_event(&v[2])?),
                Some("EOSE") => {
                    return Ok(ReqResult {
                        events,
                        end: ReqEnd::Eose,
                    })
                }
                _ => {
                    return Ok(ReqResult {
                        events,
                        end: ReqEnd::Closed(v[2].as_str().unwrap_or_default().to_owned()),
                    })
                }
            }
        }
    }

    /// REQ, assert EOSE, return the events.
    pub async fn query(&mut self, sub: &str, filters: &[Value]) -> anyhow::Result<Vec<Event>> {
        Ok(self.req(sub, filters).await?.eose(sub))
    }

    /// REQ then CLOSE: a one-shot query.
    pub async fn query_once(&mut self, filters: &[Value]) -> anyhow::Result<Vec<Event>> {
        let sub = format!("q{}", rand_suffix());
        let events = self.query(&sub, filters).await?;
        self.send_json(&json!(["CLOSE", sub])).await?;
        Ok(events)
    }

    /// Send a COUNT and wait for its answer.
    pub async fn count(&mut self, sub: &str, filters: &[Value]) -> anyhow::Result<CountResult> {
        let mut msg = vec![json!("COUNT"), json!(sub)];
        msg.extend(filters.iter().cloned());
        self.send_json(&Value::Array(msg)).await?;
        let v = self
            .recv_until(&format!("COUNT/CLOSED for {sub:?}"), |v| {
                v[1].as_str() == Some(sub) && (v[0] == "COUNT" || v[0] == "CLOSED")
            })
            .await?;
        if v[0] == "COUNT" {
            let n = v[2]["count"]
                .as_u64()
                .ok_or_else(|| anyhow!("COUNT without a numeric count: {v}"))?;
            Ok(CountResult::Count(n))
        } else {
            Ok(CountResult::Closed(
                v[2].as_str().unwrap_or_default().to_owned(),
            ))
        }
    }

    /// Wait for the next live `EVENT` on `sub`.
    pub async fn next_event(&mut self, sub: &str) -> anyhow::Result<Event> {
        let v = self
            .recv_until(&format!("live EVENT for {sub:?}"), |v| {
                v[0] == "EVENT" && v[1].as_str() == Some(sub)
            })
            .await?;
        parse_event(&v[2])
    }

    /// Wait for a NOTICE.
    pub async fn next_notice(&mut self) -> anyhow::Result<String> {
        let v = self.recv_until("NOTICE", |v| v[0] == "NOTICE").await?;
        Ok(v[1].as_str().unwrap_or_default().to_owned())
    }

    /// Authenticate as `keys` with the stored challenge and `relay_url`.
    pub async fn auth_as(&mut self, keys: &Keys, relay_url: &str) -> anyhow::Result<Ok_> {
        let event = auth_event(keys, &self.challenge, relay_url, Timestamp::now());
        self.send_auth(&event).await
    }

    /// Authenticate with the URL this client connected to.
    pub async fn auth(&mut self, keys: &Keys) -> anyhow::Result<Ok_> {
        let url = self.url.clone();
        self.auth_as(keys, &url).await
    }

    /// Send `["AUTH", event]` and wait for its OK.
    pub async fn send_auth(&mut self, event: &Event) -> anyhow::Result<Ok_> {
        self.send_json(&json!(["AUTH", event])).await?;
        self.wait_ok(&event.id.to_hex()).await
    }

    /// Wait until the socket is closed by the server (skipping messages);
    /// returns the messages seen before the close.
    pub async fn wait_closed(&mut self) -> anyhow::Result<Vec<Value>> {
        let mut seen: Vec<Value> = self.pending.drain(..).collect();
        loop {
            match self.recv_socket().await? {
                Incoming::Closed(_) => return Ok(seen),
                Incoming::Json(v) => seen.push(v),
                Incoming::Text(t) => seen.push(Value::String(t)),
                Incoming::Binary(_) => {}
            }
        }
    }

    /// How the socket ended, if it has: `close frame …`, `EOF` or `error: …`.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Whether the server has closed the socket (as far as we have read).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Read whatever arrives during `dur` (for asserting that nothing is delivered).
    pub async fn drain_for(&mut self, dur: Duration) -> Vec<Value> {
        let mut seen: Vec<Value> = self.pending.drain(..).collect();
        let deadline = tokio::time::Instant::now() + dur;
        while let Ok(Ok(incoming)) = tokio::time::timeout_at(deadline, self.recv_socket()).await {
            match incoming {
                Incoming::Json(v) => seen.push(v),
                Incoming::Closed(_) => break,
                _ => {}
            }
        }
        seen
    }
}

/// Parse `["OK", id, bool, msg]`.
pub fn parse_ok(v: &Value) -> anyhow::Result<Ok_> {
    match v.as_array().map(|a| a.as_slice()) {
        Some([_, Value::String(id), Value::Bool(accepted), Value::String(message)]) => Ok(Ok_ {
            id: id.clone(),
            accepted: *accepted,
            message: message.clone(),
        }),
        _ => bail!("malformed OK message: {v}"),
    }
}

/// Parse and verify an event received from the relay.
pub fn parse_event(v: &Value) -> anyhow::Result<Event> {
    let event: Event = serde_json::from_value(v.clone())
        .with_context(|| format!("relay sent an unparseable event: {v}"))?;
    event
        .verify()
        .with_context(|| format!("relay sent an event that does not verify: {v}"))?;
    Ok(event)
}

fn rand_suffix() -> String {
    Keys::generate().public_key().to_hex()[..8].to_owned()
}

// ---------------------------------------------------------------------------
// Event builders
// ---------------------------------------------------------------------------

/// Build a tag from strings.
pub fn tag(parts: &[&str]) -> Tag {
    Tag::parse(parts.iter().copied()).expect("valid tag")
}

/// Sign an event of any kind with explicit tags and time (self `p` tags kept).
pub fn event_at(keys: &Keys, kind: u16, content: &str, tags: &[&[&str]], at: u64) -> Event {
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags.iter().map(|t| tag(t)))
        .custom_created_at(Timestamp::from_secs(at))
        .allow_self_tagging()
        .sign_with_keys(keys)
        .expect("signing works")
}

/// Sign an event created now.
pub fn event(keys: &Keys, kind: u16, content: &str, tags: &[&[&str]]) -> Event {
    event_at(keys, kind, content, tags, now())
}

/// A kind 1 note.
pub fn note(keys: &Keys, content: &str) -> Event {
    event(keys, 1, content, &[])
}

/// Current unix time.
pub fn now() -> u64 {
    Timestamp::now().as_secs()
}

/// A kind 1059 "gift wrap" addressed to `recipient`, signed by a fresh
/// one-time key (content is opaque to the relay).
pub fn gift_wrap_to(recipient: &PublicKey, content: &str) -> Event {
    event(
        &Keys::generate(),
        1059,
        content,
        &[&["p", &recipient.to_hex()]],
    )
}

/// A kind 4 legacy DM from `sender` to `recipient`.
pub fn dm(sender: &Keys, recipient: &PublicKey, content: &str) -> Event {
    event(sender, 4, content, &[&["p", &recipient.to_hex()]])
}

/// A NIP-42 AUTH event (kind 22242) with exactly these tags.
pub fn auth_event(keys: &Keys, challenge: &str, relay_url: &str, at: Timestamp) -> Event {
    EventBuilder::new(Kind::Authentication, "")
        .tags([tag(&["relay", relay_url]), tag(&["challenge", challenge])])
        .custom_created_at(at)
        .sign_with_keys(keys)
        .expect("signing works")
}

/// The event's JSON as a mutable value (to tamper with).
pub fn to_value(event: &Event) -> Value {
    serde_json::to_value(event).expect("events serialize")
}

/// Hex ids of events.
pub fn hex_ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.to_hex()).collect()
}

/// Sort events as NIP-01 requires for results: newest first, ties by lowest id.
pub fn newest_first(events: &mut [Event]) {
    events.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.id.to_hex().cmp(&b.id.to_hex()))
    });
}

/// Assert that `got` has exactly the ids of `expected`, in order.
pub fn assert_ids(what: &str, got: &[Event], expected: &[&Event]) {
    let got: Vec<String> = hex_ids(got);
    let want: Vec<String> = expected.iter().map(|e| e.id.to_hex()).collect();
    assert_eq!(got, want, "{what}: wrong events or order");
}

/// Assert that `got` has exactly the ids of `expected`, in any order.
pub fn assert_id_set(what: &str, got: &[Event], expected: &[&Event]) {
    let mut got: Vec<String> = hex_ids(got);
    let mut want: Vec<String> = expected.iter().map(|e| e.id.to_hex()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{what}: wrong set of events");
}

/// Assert that a CLOSED/OK message carries one of the prefixes.
pub fn assert_prefix(what: &str, message: &str, prefixes: &[&str]) {
    assert!(
        prefixes.iter().any(|p| message.starts_with(p)),
        "{what}: expected a message starting with one of {prefixes:?}, got {message:?}"
    );
}
