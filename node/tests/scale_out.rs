//! Several `cairn serve` processes (the built binary) on one Postgres
//! database: live fan-out across them (privacy applied where delivered,
//! events over NOTIFY's 8,000 bytes, ephemeral events), the once-only jobs'
//! lease moving when its holder is killed, and a listener connection
//! terminated with `pg_terminate_backend` catching up with nothing missed
//! or repeated.
//!
//! Each test creates a fresh database on `CAIRN_TEST_POSTGRES_URL` and drops
//! it at the end; without that variable the tests print a message and pass.
//! Every wait has a deadline; absence is checked against a later marker
//! event (a process delivers other processes' events in commit order), not
//! by sleeping. A test that times out is aborted, which kills its `cairn
//! serve` children, and its database is dropped all the same.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_identity::x::fake::{FakeX, Post};
use cairn_payments::ldk_node::lightning::ln::msgs::SocketAddress;
use cairn_payments::ldk_node::lightning_invoice::Bolt11Invoice;
use cairn_payments::lightning::{LightningConfig, LightningNode, PaymentOutcome};
use cairn_payments::zap::{ZapState, ZapStore, ZAP_STORE_FILE_NAME};
use futures::{SinkExt as _, StreamExt as _};
use nostr::{Event, EventBuilder, JsonUtil as _, Keys, Kind, Tag, Timestamp};
use serde_json::{json, Value};
use sqlx::Connection as _;
use tokio_tungstenite::tungstenite::Message;

mod common;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
/// Longest wait for any one condition (generous: CI is a busy 2-core box).
const WAIT: Duration = Duration::from_secs(60);
/// Whole-test bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The listener's reconnection delay in these tests: the events published
/// right after its connection is terminated land in the gap (the test
/// checks that they did: no new listener connection existed yet).
const LISTENER_RETRY_MS: u64 = 15_000;
/// How long two processes may both report a lease: the holder's documented
/// overlap is about `DEFAULT_CHECK + CHECK_TIMEOUT` (4 s), and `/ready` is
/// read from one process after the other, not at one instant.
const LEASE_OVERLAP: Duration = Duration::from_secs(15);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A fresh database ([`common::PgDatabase`]), dropped by [`Db::drop_now`],
/// with what these tests ask of its backends.
struct Db(common::PgDatabase);

impl std::ops::Deref for Db {
    type Target = common::PgDatabase;

    fn deref(&self) -> &common::PgDatabase {
        &self.0
    }
}

impl Db {
    async fn create() -> Option<Db> {
        common::PgDatabase::create("cairn_scale").await.map(Db)
    }

    async fn admin(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.admin_url).await.unwrap()
    }

    /// The backend pids of `pid`'s listener connections.
    async fn listener_backends_of(&self, pid: u32) -> Vec<i32> {
        let mut admin = self.admin().await;
        let backends: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        )
        .bind(&self.name)
        .bind(format!("cairn listener {pid}"))
        .fetch_all(&mut admin)
        .await
        .unwrap();
        let _ = admin.close().await;
        backends
    }

    /// Terminate the backend of `pid`'s listener connection: its backend
    /// pid, if there was exactly one and it was signalled.
    async fn terminate_listener_of(&self, pid: u32) -> Option<i32> {
        let mut admin = self.admin().await;
        let killed: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2",
        )
        .bind(&self.name)
        .bind(format!("cairn listener {pid}"))
        .fetch_all(&mut admin)
        .await
        .unwrap();
        let _ = admin.close().await;
        match killed[..] {
            [(backend, true)] => Some(backend),
            _ => None,
        }
    }

    /// The application names of the sessions holding an advisory lock
    /// taken by a `cairn lease <job>` connection: Postgres' own view of
    /// who holds that lease, at one instant.
    async fn lease_sessions(&self, job: &str) -> Vec<String> {
        let mut admin = self.admin().await;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT a.application_name FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.datname = $1 \
             AND a.application_name LIKE $2",
        )
        .bind(&self.name)
        .bind(format!("cairn lease {job} %"))
        .fetch_all(&mut admin)
        .await
        .unwrap();
        let _ = admin.close().await;
        names
    }

    async fn drop_now(self) {
        self.0.drop_now().await;
    }
}

/// Run a test body with a fresh database and a deadline; the database is
/// dropped whatever the outcome.
async fn with_db<F, Fut>(body: F)
where
    F: FnOnce(Arc<Db>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // One test at a time: each starts several processes (CPU, and
    // connections against Postgres' max_connections).
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _serial = SERIAL.lock().await;
    let Some(db) = Db::create().await else {
        return;
    };
    let db = Arc::new(db);
    let mut task = tokio::spawn(body(Arc::clone(&db)));
    let result = match tokio::time::timeout(TEST_TIMEOUT, &mut task).await {
        Ok(joined) => Some(joined),
        Err(_) => {
            // Dropping the body (its `Serve`s) kills its children and
            // releases its handle on the database.
            task.abort();
            let _ = task.await;
            None
        }
    };
    match Arc::try_unwrap(db) {
        Ok(db) => db.drop_now().await,
        Err(_) => eprintln!("the test body kept its database: not dropped"),
    }
    match result {
        None => panic!("test timed out after {TEST_TIMEOUT:?}"),
        Some(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Some(Ok(())) => {}
    }
}

/// One `cairn serve` process; killed when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _data: Option<tempfile::TempDir>,
}

impl Serve {
    async fn start(db: &Db) -> Serve {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().to_owned();
        Serve::start_in(db, &dir, &[], Some(data)).await
    }

    /// `cairn serve` on `dir` (which several processes may share), with
    /// the extra settings `env`; `keep` is dropped with the process.
    async fn start_in(
        db: &Db,
        dir: &std::path::Path,
        env: &[(String, String)],
        keep: Option<tempfile::TempDir>,
    ) -> Serve {
        let mut child = Command::new(CAIRN)
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("RUST_LOG")
            .env("CAIRN_DATABASE_URL", &db.url)
            .env(
                "CAIRN_RELAY__CLUSTER__LISTENER_RETRY_MS",
                LISTENER_RETRY_MS.to_string(),
            )
            // Quick purges, so that the job really runs where it is held.
            .env("CAIRN_EXPIRATION_PURGE_INTERVAL_SECS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cairn serve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let log = Arc::clone(&log);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            }
        });
        let mut serve = Serve {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            _data: keep,
        };
        let line = serve
            .wait_log("listening", |l| l.contains("listening on ws://"))
            .await;
        let addr = line
            .split("listening on ws://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("an address");
        serve.addr = addr.parse().expect("a socket address");
        serve
            .wait_log("the cluster listener", |l| {
                l.contains("cluster listener connected")
            })
            .await;
        serve
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first log line matching `pred`, waiting up to [`WAIT`].
    async fn wait_log(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| pred(l)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "cairn serve exited ({status}) before {what}: {:?}",
                    self.log
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line for {what} within {WAIT:?}: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `/ready` says this process holds `job`'s lease; `None`
    /// when `/ready` did not answer in time (a busy machine: the caller
    /// polls again).
    async fn holds(&self, job: &str) -> Option<bool> {
        let (_, body) = self.get("/ready").await?;
        Some(body["leases"][job] == json!(true))
    }

    /// `GET path`: status and JSON body; `None` when there was no answer
    /// within 10 s.
    async fn get(&self, path: &str) -> Option<(u16, Value)> {
        self.request(reqwest::Method::GET, path, None, None).await
    }

    /// An HTTP request to this process, bounded by 10 s (`None`: no answer).
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Option<(u16, Value)> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut req = client.request(method, format!("http://{}{path}", self.addr));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.ok()?))
    }

    /// Kill the process (no clean shutdown: its sessions just end).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw NIP-01 client.
struct Client {
    ws: Ws,
    url: String,
    challenge: String,
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

impl Client {
    async fn connect(url: &str) -> Client {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        let mut client = Client {
            ws,
            url: url.to_owned(),
            challenge: String::new(),
        };
        let first = client.recv().await;
        assert_eq!(first[0], "AUTH", "{first}");
        client.challenge = first[1].as_str().unwrap().to_owned();
        client
    }

    async fn send(&mut self, v: Value) {
        within("send", self.ws.send(Message::text(v.to_string())))
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Value {
        loop {
            match within("a message", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("connection to {} ended: {other:?}", self.url),
            }
        }
    }

    /// Send and wait for the OK of `id`: its acceptance and message.
    async fn ok_of(&mut self, id: String) -> (bool, String) {
        loop {
            let m = self.recv().await;
            if m[0] == "OK" && m[1] == id.as_str() {
                return (m[2].as_bool().unwrap(), m[3].as_str().unwrap().to_owned());
            }
        }
    }

    async fn publish(&mut self, event: &Event) {
        self.send(json!([
            "EVENT",
            serde_json::from_str::<Value>(&event.as_json()).unwrap()
        ]))
        .await;
        let (ok, message) = self.ok_of(event.id.to_hex()).await;
        assert!(ok, "event refused: {message}");
    }

    async fn auth(&mut self, keys: &Keys) {
        let event = EventBuilder::new(Kind::Authentication, "")
            .tags([
                Tag::parse(["relay", self.url.as_str()]).unwrap(),
                Tag::parse(["challenge", self.challenge.as_str()]).unwrap(),
            ])
            .sign_with_keys(keys)
            .unwrap();
        self.send(json!([
            "AUTH",
            serde_json::from_str::<Value>(&event.as_json()).unwrap()
        ]))
        .await;
        let (ok, message) = self.ok_of(event.id.to_hex()).await;
        assert!(ok, "AUTH refused: {message}");
    }

    /// Subscribe and wait for EOSE.
    async fn subscribe(&mut self, sub: &str, filter: Value) {
        self.send(json!(["REQ", sub, filter])).await;
        loop {
            let m = self.recv().await;
            if m[0] == "EOSE" && m[1] == sub {
                return;
            }
            assert_ne!(m[0], "CLOSED", "{m}");
        }
    }

    /// The stored events matching `filter` (a REQ read up to EOSE, then closed).
    async fn stored(&mut self, sub: &str, filter: Value) -> Vec<Event> {
        self.send(json!(["REQ", sub, filter])).await;
        let mut got = Vec::new();
        loop {
            let m = self.recv().await;
            if m[1] != sub {
                continue;
            }
            match m[0].as_str() {
                Some("EVENT") => got.push(Event::from_json(m[2].to_string()).unwrap()),
                Some("EOSE") => break,
                _ => panic!("{m}"),
            }
        }
        self.send(json!(["CLOSE", sub])).await;
        got
    }

    /// Event ids received on `sub`, in order, up to and including the event
    /// `until` (other subscriptions' events are dropped).
    async fn ids_until(&mut self, sub: &str, until: &Event) -> Vec<String> {
        let until = until.id.to_hex();
        let mut ids = Vec::new();
        loop {
            let m = self.recv().await;
            if m[0] == "EVENT" && m[1] == sub {
                let id = m[2]["id"].as_str().unwrap().to_owned();
                let done = id == until;
                ids.push(id);
                if done {
                    return ids;
                }
            }
        }
    }
}

fn note(keys: &Keys, text: &str, tags: Vec<Tag>) -> Event {
    EventBuilder::text_note(text)
        .tags(tags)
        .sign_with_keys(keys)
        .unwrap()
}

fn p_tag(keys: &Keys) -> Tag {
    Tag::parse(["p".to_owned(), keys.public_key().to_hex()]).unwrap()
}

fn t_tag(value: &str) -> Tag {
    Tag::parse(["t", value]).unwrap()
}

/// A kind 1059 event for `to` (the relay neither decrypts nor needs to).
fn gift_wrap(to: &Keys) -> Event {
    EventBuilder::new(Kind::GiftWrap, "sealed")
        .tags([p_tag(to)])
        .custom_created_at(Timestamp::now())
        .sign_with_keys(&Keys::generate())
        .unwrap()
}

fn count(ids: &[String], event: &Event) -> usize {
    let id = event.id.to_hex();
    ids.iter().filter(|i| **i == id).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_process_reaches_the_others_once_with_privacy() {
    with_db(|db| async move {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Serve::start(&db).await);
        }
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        let author = Keys::generate();
        let recipient = Keys::generate();
        let stranger = Keys::generate();
        let tag = t_tag("scale-out");
        let public = json!({"kinds": [1, 20001], "#t": ["scale-out"]});

        // Public subscribers on every process, the publisher's own included.
        let mut subs = Vec::new();
        for node in [a, b, c] {
            let mut client = Client::connect(&node.url()).await;
            client.subscribe("pub", public.clone()).await;
            subs.push(client);
        }
        // The recipient, authenticated, on B and C; a stranger authenticated
        // on C and an anonymous client on B, both asking by `#p` without
        // `kinds` (the filter that must not slip past the privacy rule).
        let mut inboxes = Vec::new();
        for node in [b, c] {
            let mut client = Client::connect(&node.url()).await;
            client.auth(&recipient).await;
            client
                .subscribe("inbox", json!({"#p": [recipient.public_key().to_hex()]}))
                .await;
            inboxes.push(client);
        }
        let mut stranger_c = Client::connect(&c.url()).await;
        stranger_c.auth(&stranger).await;
        let mut anonymous_b = Client::connect(&b.url()).await;
        for client in [&mut stranger_c, &mut anonymous_b] {
            client
                .subscribe("peek", json!({"#p": [recipient.public_key().to_hex()]}))
                .await;
        }

        let small = note(&author, "hello from A", vec![tag.clone()]);
        let big = note(&author, &"x".repeat(20_000), vec![tag.clone()]);
        assert!(big.as_json().len() > 8_000);
        let ephemeral = EventBuilder::new(Kind::Custom(20001), "ephemeral")
            .tags([tag.clone()])
            .sign_with_keys(&author)
            .unwrap();
        let wrap = gift_wrap(&recipient);
        // Public and tagged for the recipient: every `#p` subscriber gets it,
        // after the gift wrap (same process, commit order).
        let marker = note(&author, "marker", vec![tag.clone(), p_tag(&recipient)]);

        let mut publisher = Client::connect(&a.url()).await;
        for event in [&small, &big, &ephemeral, &wrap, &marker] {
            publisher.publish(event).await;
        }

        for (i, sub) in subs.iter_mut().enumerate() {
            let ids = sub.ids_until("pub", &marker).await;
            for event in [&small, &big, &ephemeral] {
                assert_eq!(
                    count(&ids, event),
                    1,
                    "process {i}, event {}: {ids:?}",
                    event.content.len()
                );
            }
            assert_eq!(count(&ids, &wrap), 0);
        }
        for inbox in &mut inboxes {
            let ids = inbox.ids_until("inbox", &marker).await;
            assert_eq!(
                count(&ids, &wrap),
                1,
                "the recipient gets the gift wrap: {ids:?}"
            );
        }
        for client in [&mut stranger_c, &mut anonymous_b] {
            let ids = client.ids_until("peek", &marker).await;
            assert_eq!(
                count(&ids, &wrap),
                0,
                "someone else's gift wrap leaked: {ids:?}"
            );
        }

        // Nothing repeats later either: a second marker, published on B,
        // reaches A through A's listener, behind any repeat A could send.
        let marker2 = note(&author, "marker 2", vec![tag.clone()]);
        Client::connect(&b.url()).await.publish(&marker2).await;
        for (i, sub) in subs.iter_mut().enumerate() {
            let ids = sub.ids_until("pub", &marker2).await;
            assert_eq!(ids.len(), 1, "process {i} repeated something: {ids:?}");
        }
    })
    .await;
}

/// Poll until exactly one of `nodes` holds `job`'s lease, both in
/// its own `/ready` and in Postgres' locks (one instant, unlike `/ready`
/// read from one process after the other); its index. Fails when two
/// processes report it for longer than [`LEASE_OVERLAP`], or when no single
/// holder shows within [`WAIT`].
async fn the_one_holder(db: &Db, nodes: &[Serve], job: &str, what: &str) -> usize {
    let deadline = Instant::now() + WAIT;
    let mut two_since: Option<Instant> = None;
    loop {
        let mut held = Vec::new();
        let mut all_answered = true;
        for (i, node) in nodes.iter().enumerate() {
            match node.holds(job).await {
                Some(true) => held.push(i),
                Some(false) => {}
                None => all_answered = false,
            }
        }
        if held.len() > 1 {
            let since = *two_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < LEASE_OVERLAP,
                "{what}: two holders at once for {LEASE_OVERLAP:?}: {held:?}"
            );
        } else {
            two_since = None;
        }
        let mut sessions = Vec::new();
        if let ([one], true) = (&held[..], all_answered) {
            sessions = db.lease_sessions(job).await;
            if sessions == [format!("cairn lease {job} {}", nodes[*one].pid())] {
                return *one;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no single holder within {WAIT:?}: /ready says {held:?}, locks {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_once_only_jobs_move_when_their_holder_is_killed() {
    with_db(|db| async move {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Serve::start(&db).await);
        }
        let holder = the_one_holder(&db, &nodes, "expiration", "the first holder").await;
        nodes[holder]
            .wait_log("the lease", |l| {
                l.contains("holds the lease") && l.contains("expiration")
            })
            .await;

        // Kill the holder (no clean release): its session ends, and another
        // process takes the job over.
        let mut killed = nodes.remove(holder);
        let _ = killed.child.kill();
        let _ = killed.child.wait();
        let successor = the_one_holder(&db, &nodes, "expiration", "the lease moving").await;
        nodes[successor]
            .wait_log("the lease moving", |l| {
                l.contains("holds the lease") && l.contains("expiration")
            })
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listener_catches_up_with_nothing_missed_or_repeated() {
    with_db(|db| async move {
        let a = Serve::start(&db).await;
        let mut b = Serve::start(&db).await;
        let author = Keys::generate();
        let tag = t_tag("gap");
        let mut watcher = Client::connect(&b.url()).await;
        watcher
            .subscribe("gap", json!({"kinds": [1], "#t": ["gap"]}))
            .await;
        let mut on_a = Client::connect(&a.url()).await;
        let mut on_b = Client::connect(&b.url()).await;

        let old_backend = db
            .terminate_listener_of(b.pid())
            .await
            .expect("B's listener connection was found and terminated");
        // B reconnects only after LISTENER_RETRY_MS: these land in the gap.
        // Some are B's own (its subscribers have them already: no repeat).
        let mut published = Vec::new();
        let mut from_a = 0;
        for i in 0..6 {
            let event = note(&author, &format!("in the gap {i}"), vec![tag.clone()]);
            if i % 3 == 2 {
                on_b.publish(&event).await;
            } else {
                on_a.publish(&event).await;
                from_a += 1;
            }
            published.push(event);
        }
        let big = note(&author, &"y".repeat(12_000), vec![tag.clone()]);
        on_a.publish(&big).await;
        from_a += 1;
        published.push(big);

        // The gap was real: B had not connected again (its terminated
        // backend may still be on its way out) when all of these were
        // committed, so its catch-up must deliver every one of A's.
        let backends = db.listener_backends_of(b.pid()).await;
        assert!(
            backends.iter().all(|&p| p == old_backend),
            "B's listener came back within {LISTENER_RETRY_MS} ms, before the gap's events were \
             all published: {backends:?}"
        );

        let line = b
            .wait_log("the reconnection", |l| {
                l.contains("cluster listener reconnected")
            })
            .await;
        let caught_up: u64 = line
            .split("caught_up=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a caught_up count in {line:?}"));
        assert_eq!(
            caught_up, from_a,
            "the catch-up delivered A's gap events, never B's own: {line}"
        );

        // Live delivery resumed; the marker comes after everything above.
        let marker = note(&author, "after the gap", vec![tag.clone()]);
        on_a.publish(&marker).await;
        let ids = watcher.ids_until("gap", &marker).await;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for id in &ids {
            *seen.entry(id.as_str()).or_default() += 1;
        }
        for event in &published {
            assert_eq!(
                seen.get(event.id.to_hex().as_str()).copied(),
                Some(1),
                "event {} once: {ids:?}",
                event.content.chars().take(12).collect::<String>()
            );
        }
        assert_eq!(
            ids.len(),
            published.len() + 1,
            "nothing else, nothing twice: {ids:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Identity on several processes: one registry in the database, the epochs
// and anchoring under the `identity` lease.

/// `CAIRN_BITCOIN__*` for `chain`'s regtest RPC.
fn bitcoin_env(chain: &cairn_testchain::TestChain) -> Vec<(String, String)> {
    [
        ("CAIRN_BITCOIN__NETWORK", "regtest"),
        ("CAIRN_BITCOIN__RPC_URL", chain.rpc_url()),
        ("CAIRN_BITCOIN__RPC_USER", chain.rpc_user()),
        ("CAIRN_BITCOIN__RPC_PASSWORD", chain.rpc_password()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Identity enabled on `x`, epochs closed and anchors synced every second.
fn identity_env(chain: &cairn_testchain::TestChain, x: &FakeX) -> Vec<(String, String)> {
    let mut env = bitcoin_env(chain);
    for (k, v) in [
        ("CAIRN_IDENTITY__ENABLED", "true".to_owned()),
        ("CAIRN_IDENTITY__X_OEMBED_BASE", x.base()),
        ("CAIRN_IDENTITY__X_SYNDICATION_BASE", x.base()),
        ("CAIRN_IDENTITY__X_REQUEST_TIMEOUT_SECS", "5".to_owned()),
        ("CAIRN_IDENTITY__EPOCH_INTERVAL_SECS", "1".to_owned()),
        ("CAIRN_IDENTITY__ANCHOR_SYNC_INTERVAL_SECS", "1".to_owned()),
        ("CAIRN_IDENTITY__FAILED_BINDING_CACHE_SECS", "0".to_owned()),
    ] {
        env.push((k.to_owned(), v));
    }
    env
}

/// Asks `on` for a challenge for `user`, posts its text on the fake X as
/// the account `x_uid`/`handle`, and submits the signed `bind` to `to`.
async fn bind(on: &Serve, to: &Serve, x: &FakeX, user: &Keys, x_uid: u64, handle: &str, seq: u64) {
    use nostr::nips::nip19::ToBech32 as _;
    let npub = user.public_key().to_bech32().unwrap();
    let (status, c) = on
        .request(
            reqwest::Method::POST,
            "/identity/v1/challenges",
            Some(&json!({ "npub": npub })),
            None,
        )
        .await
        .expect("a challenge answer");
    assert_eq!(status, 201, "challenge: {c}");
    let nonce = c["nonce"].as_str().unwrap();
    let now = Timestamp::now().as_secs();
    let post = Post::new(x_uid, handle, c["text"].as_str().unwrap(), now, seq);
    x.publish(&post);
    let event =
        cairn_identity::binding::proof_post_op(false, x_uid, 0, None, handle, post.id, nonce)
            .sign_with_keys(user)
            .unwrap();
    let body = json!({
        "event": serde_json::from_str::<Value>(&event.as_json()).unwrap(),
        "post_id": post.id.to_string(),
    });
    let (status, receipt) = to
        .request(
            reqwest::Method::POST,
            "/identity/v1/bindings",
            Some(&body),
            None,
        )
        .await
        .expect("a binding answer");
    assert_eq!(status, 201, "bind: {receipt}");
    assert_eq!(receipt["status"], "accepted", "{receipt}");
}

/// Polls `node`'s epoch `n` until `done` accepts it, within [`WAIT`].
async fn wait_epoch(node: &Serve, n: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Some((200, view)) = node.get(&format!("/identity/v1/epochs/{n}")).await {
            if done(&view) {
                return view;
            }
            last = Some(view);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: epoch {n} not as expected within {WAIT:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn anchored(view: &Value) -> bool {
    view["anchor"]["txid"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_served_by_every_process_and_its_epochs_move_with_the_lease() {
    with_db(|db| async move {
        let chain = cairn_testchain::TestChain::start().await.unwrap();
        let x = FakeX::start().await.unwrap();
        // One data directory for all: the witness key and the anchoring
        // wallet's file are shared (docs/scale-out.md).
        let data = tempfile::tempdir().unwrap();
        let env = identity_env(&chain, &x);
        // The first start creates the witness key and wallet; then the others.
        let mut nodes = vec![Serve::start_in(&db, data.path(), &env, None).await];
        for _ in 0..2 {
            nodes.push(Serve::start_in(&db, data.path(), &env, None).await);
        }
        let holder = the_one_holder(&db, &nodes, "identity", "the first epoch holder").await;

        // Every process names the same witness.
        let mut witnesses = Vec::new();
        for n in &nodes {
            let (status, body) = n.get("/identity/v1/status").await.expect("status");
            assert_eq!(status, 200, "{body}");
            witnesses.push(body["witness"].clone());
        }
        assert!(
            witnesses.iter().all(|w| *w == witnesses[0]),
            "{witnesses:?}"
        );

        // Fund the anchoring wallet through the holder's funding address.
        let deadline = Instant::now() + WAIT;
        let address = loop {
            let (_, status) = nodes[holder]
                .get("/identity/v1/status")
                .await
                .expect("status");
            if let Some(a) = status["anchoring"]["funding_address"].as_str() {
                break a.parse::<bitcoin::Address<_>>().unwrap().assume_checked();
            }
            assert!(Instant::now() < deadline, "no funding address: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        chain
            .fund(&address, bitcoin::Amount::from_sat(1_000_000))
            .await
            .unwrap();

        // Bind on a process that is not the holder (challenge on another):
        // every process serves the binding at once.
        let (a, b) = ((holder + 1) % 3, (holder + 2) % 3);
        let alice = Keys::generate();
        bind(
            &nodes[b],
            &nodes[a],
            &x,
            &alice,
            1_500_000_000_000_000_001,
            "alice",
            1,
        )
        .await;
        for n in &nodes {
            let (status, view) = n.get("/identity/v1/handles/alice").await.expect("lookup");
            assert_eq!(status, 200, "{view}");
            assert_eq!(view["pubkey"], json!(alice.public_key().to_hex()), "{view}");
        }

        // The holder closes epoch 0 and anchors it; all serve it.
        let first = wait_epoch(&nodes[holder], 0, "epoch 0 anchored", anchored).await;
        for n in &nodes {
            let view = wait_epoch(n, 0, "epoch 0 everywhere", anchored).await;
            assert_eq!(view["header_hash"], first["header_hash"]);
            assert_eq!(view["anchor"]["txid"], first["anchor"]["txid"]);
        }
        assert_eq!(first["log_size"], json!(2), "attestation and bind: {first}");
        let to = chain.internal_address().await.unwrap();
        chain.mine(1, &to).await.unwrap();

        // Kill the holder: the epochs and anchoring move to one survivor.
        nodes.remove(holder).kill();
        let successor = the_one_holder(&db, &nodes, "identity", "the epoch lease moving").await;
        let other = 1 - successor;
        nodes[successor]
            .wait_log("the identity lease", |l| {
                l.contains("holds the lease") && l.contains("identity")
            })
            .await;

        // A bind on the other survivor lands in epoch 1, which the new
        // holder closes on top of epoch 0 and anchors from the same wallet.
        let bob = Keys::generate();
        bind(
            &nodes[other],
            &nodes[other],
            &x,
            &bob,
            1_500_000_000_000_000_002,
            "bob",
            2,
        )
        .await;
        let second = wait_epoch(&nodes[successor], 1, "epoch 1 anchored", anchored).await;
        assert_eq!(second["prev_header_hash"], first["header_hash"], "{second}");
        assert_eq!(second["log_size"], json!(4), "{second}");
        assert_ne!(second["anchor"]["txid"], first["anchor"]["txid"]);
        let view = wait_epoch(&nodes[other], 1, "epoch 1 on the other", anchored).await;
        assert_eq!(view["header_hash"], second["header_hash"]);
        // Epoch 0 is unchanged, and both names resolve on both survivors.
        for n in &nodes {
            let view = wait_epoch(n, 0, "epoch 0 after the move", anchored).await;
            assert_eq!(view["header_hash"], first["header_hash"]);
            for (handle, keys) in [("alice", &alice), ("bob", &bob)] {
                let (status, v) = n
                    .get(&format!("/identity/v1/handles/{handle}"))
                    .await
                    .expect("lookup");
                assert_eq!(status, 200, "{v}");
                assert_eq!(v["pubkey"], json!(keys.public_key().to_hex()), "{v}");
            }
        }
        // The anchor of epoch 1 spends epoch 0's change: one chain of anchors.
        let tx = chain
            .rpc(
                "getrawtransaction",
                vec![second["anchor"]["txid"].clone(), json!(true)],
            )
            .await
            .unwrap();
        assert!(
            tx["vin"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["txid"] == first["anchor"]["txid"]),
            "{tx}"
        );
        drop(nodes);
        chain.stop().await.unwrap();
    })
    .await;
}

// ---------------------------------------------------------------------------
// Payments on several processes: the wallet, Lightning node and NWC service
// run on the `payments` lease holder only.

/// A free loopback port (for the Lightning listener both processes name),
/// one that no `bind(0)` can take before they open it.
fn free_port() -> SocketAddr {
    SocketAddr::from((
        [127, 0, 0, 1],
        cairn_testchain::ports::reserved_port().unwrap(),
    ))
}

/// `CAIRN_PAYMENTS__*`: payments on, the Lightning node listening on
/// `lightning` (the same address on every process, so a peer finds the
/// node again after the lease moved), quick wallet syncs and start retries.
fn payments_env(lightning: SocketAddr) -> Vec<(String, String)> {
    [
        ("CAIRN_PAYMENTS__ENABLED", "true".to_owned()),
        ("CAIRN_PAYMENTS__LIGHTNING_LISTEN", lightning.to_string()),
        ("CAIRN_PAYMENTS__WALLET_SYNC_INTERVAL_SECS", "1".to_owned()),
        ("CAIRN_PAYMENTS__START_RETRY_INTERVAL_SECS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// An NWC request (NIP-47, NIP-04 encrypted) from `client` to `service`.
fn nwc_request(client: &Keys, service: &nostr::PublicKey, method: &str) -> Event {
    let body = json!({ "method": method, "params": {} }).to_string();
    let content = nostr::nips::nip04::encrypt(client.secret_key(), service, body).unwrap();
    EventBuilder::new(Kind::WalletConnectRequest, content)
        .tags([Tag::parse(["p".to_owned(), service.to_hex()]).unwrap()])
        .sign_with_keys(client)
        .unwrap()
}

/// The NWC responses (kind 23195) arriving on `sub`, up to and including
/// the one answering `until`: (request id it answers, the response).
async fn nwc_responses_until(c: &mut Client, sub: &str, until: &Event) -> Vec<(String, Event)> {
    let until = until.id.to_hex();
    let mut got = Vec::new();
    loop {
        let m = c.recv().await;
        if m[0] != "EVENT" || m[1] != sub {
            continue;
        }
        let event = Event::from_json(m[2].to_string()).unwrap();
        let answers = event
            .tags
            .iter()
            .find(|t| t.kind() == nostr::TagKind::e())
            .and_then(|t| t.content())
            .unwrap_or_default()
            .to_owned();
        let done = answers == until;
        got.push((answers, event));
        if done {
            return got;
        }
    }
}

/// Waits until `node`'s `/ready` reports payments running here.
async fn wait_payments_running(node: &Serve, what: &str) {
    let deadline = Instant::now() + WAIT * 2;
    let mut last = None;
    loop {
        if let Some((_, body)) = node.get("/ready").await {
            let p = &body["payments"];
            if p["ok"] == json!(true) && p.get("standby").is_none() {
                return;
            }
            last = Some(body);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: payments not running: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `request` to `on` and checks that each of `subs` (client and
/// subscription, on every process) sees exactly one answer to it, a
/// `get_balance` result decrypting under the connection's key; a second
/// request then marks the end (every process delivers the answers of one
/// origin in order, so a second answer to `request` would come before the
/// marker's).
async fn answered_once(
    on: &mut Client,
    subs: &mut [(&mut Client, &str)],
    client: &Keys,
    service: &nostr::PublicKey,
) {
    let request = nwc_request(client, service, "get_balance");
    on.publish(&request).await;
    let marker = nwc_request(client, service, "get_info");
    // The marker goes out once the request is answered somewhere.
    let (first_client, first_sub) = &mut subs[0];
    let first = nwc_responses_until(first_client, first_sub, &request).await;
    on.publish(&marker).await;
    let mut all = vec![first];
    let (first_client, first_sub) = &mut subs[0];
    all[0].extend(nwc_responses_until(first_client, first_sub, &marker).await);
    for (c, sub) in subs.iter_mut().skip(1) {
        all.push(nwc_responses_until(c, sub, &marker).await);
    }
    let mut ids = Vec::new();
    for got in &all {
        let answers: Vec<&Event> = got
            .iter()
            .filter(|(to, _)| *to == request.id.to_hex())
            .map(|(_, e)| e)
            .collect();
        assert_eq!(answers.len(), 1, "one answer per subscriber: {got:?}");
        let plain =
            nostr::nips::nip04::decrypt(client.secret_key(), service, &answers[0].content).unwrap();
        let body: Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(body["result_type"], "get_balance", "{body}");
        assert!(body["error"].is_null(), "{body}");
        ids.push(answers[0].id);
    }
    // One response event, not one per process.
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nwc_is_answered_once_and_moves_with_the_payments_lease() {
    with_db(|db| async move {
        let chain = cairn_testchain::TestChain::start().await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut env = bitcoin_env(&chain);
        env.extend(payments_env(free_port()));
        let mut nodes = vec![Serve::start_in(&db, data.path(), &env, None).await];
        nodes.push(Serve::start_in(&db, data.path(), &env, None).await);
        let holder = the_one_holder(&db, &nodes, "payments", "the first payments holder").await;
        let standby = 1 - holder;
        wait_payments_running(&nodes[holder], "the first holder").await;
        let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
        let token = token.trim();

        // The standby refuses the admin API; the holder creates a connection.
        let new = json!({ "name": "app", "permissions": ["get_balance", "get_info"] });
        let path = "/admin/v1/nwc/connections";
        let (status, body) = nodes[standby]
            .request(reqwest::Method::POST, path, Some(&new), Some(token))
            .await
            .expect("an answer");
        assert_eq!(status, 503, "{body}");
        let (status, body) = nodes[holder]
            .request(reqwest::Method::POST, path, Some(&new), Some(token))
            .await
            .expect("an answer");
        assert_eq!(status, 200, "{body}");
        let uri = url::Url::parse(body["uri"].as_str().unwrap()).unwrap();
        let service = nostr::PublicKey::from_hex(uri.host_str().unwrap()).unwrap();
        let secret = uri
            .query_pairs()
            .find(|(k, _)| k == "secret")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let client = Keys::parse(&secret).unwrap();

        // Subscribers on both processes; the request goes to the standby.
        let filter = json!({ "kinds": [23195], "#p": [client.public_key().to_hex()] });
        let mut subs = Vec::new();
        for n in &nodes {
            let mut c = Client::connect(&n.url()).await;
            c.auth(&client).await;
            c.subscribe("nwc", filter.clone()).await;
            subs.push(c);
        }
        let mut sender = Client::connect(&nodes[standby].url()).await;
        {
            let (s0, s1) = subs.split_at_mut(1);
            let mut views = [(&mut s0[0], "nwc"), (&mut s1[0], "nwc")];
            answered_once(&mut sender, &mut views, &client, &service).await;
        }

        // Kill the holder: the other takes the lease, starts payments on
        // the same data directory, and answers.
        drop(subs);
        nodes.remove(holder).kill();
        let successor = the_one_holder(&db, &nodes, "payments", "the payments lease moving").await;
        wait_payments_running(&nodes[successor], "the successor").await;
        let mut sub = Client::connect(&nodes[successor].url()).await;
        sub.auth(&client).await;
        sub.subscribe("nwc", filter.clone()).await;
        let mut sender = Client::connect(&nodes[successor].url()).await;
        answered_once(&mut sender, &mut [(&mut sub, "nwc")], &client, &service).await;
        drop(nodes);
        chain.stop().await.unwrap();
    })
    .await;
}

// ---------------------------------------------------------------------------
// Zaps on several processes: invoices and receipts under the `payments`
// lease, the zaps' database in the shared data directory.

/// One zap: 21 sat.
const ZAP_MSAT: u64 = 21_000;

/// The zappers' wallet: a Lightning node of the test's own on `chain`,
/// started, in `dir`.
fn payer_node(dir: &std::path::Path, chain: &cairn_testchain::TestChain) -> LightningNode {
    let (seed, _) = cairn_bitcoin::Seed::load_or_create(dir).unwrap();
    let config = LightningConfig {
        network: bitcoin::Network::Regtest,
        data_dir: dir.to_owned(),
        listening_address: free_port(),
        bitcoind: cairn_bitcoin::RpcConfig::new(
            format!("http://127.0.0.1:{}", chain.rpc_port()),
            chain.rpc_user(),
            chain.rpc_password(),
        ),
    };
    let node = LightningNode::build(&config, &seed).unwrap();
    node.start().unwrap();
    node
}

/// Polls `cond` (an expression that may `.await`) every 300 ms, syncing
/// `payer`'s wallets first, until it holds; fails after [`WAIT`]. A macro,
/// not an async closure: the test body runs in a spawned task, and the
/// compiler cannot yet prove such closures' futures `Send`.
macro_rules! until {
    ($what:expr, $payer:expr, $cond:expr) => {{
        let deadline = Instant::now() + WAIT;
        loop {
            $payer.sync_wallets().unwrap();
            if $cond {
                break;
            }
            assert!(Instant::now() < deadline, "{}: not within {WAIT:?}", $what);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }};
}

/// Whether `node` (running payments) has a usable channel, after syncing
/// its wallets with the chain.
async fn has_usable_channel(node: &Serve, token: &str) -> bool {
    node.request(
        reqwest::Method::POST,
        "/admin/v1/sync",
        Some(&json!({})),
        Some(token),
    )
    .await;
    let channels = node
        .request(
            reqwest::Method::GET,
            "/admin/v1/lightning/channels",
            None,
            Some(token),
        )
        .await;
    matches!(channels, Some((200, Value::Array(c))) if c.iter().any(|c| c["is_usable"] == json!(true)))
}

/// A kind 9734 zap request from `sender` for `ZAP_MSAT` to `to`, its
/// receipt asked for on `relay`.
fn zap_request(sender: &Keys, to: &nostr::PublicKey, relay: &str) -> String {
    EventBuilder::new(Kind::ZapRequest, "zap")
        .tags([
            Tag::parse(["p".to_owned(), to.to_hex()]).unwrap(),
            Tag::parse(["relays", relay]).unwrap(),
            Tag::parse(["amount".to_owned(), ZAP_MSAT.to_string()]).unwrap(),
        ])
        .sign_with_keys(sender)
        .unwrap()
        .as_json()
}

/// `on`'s LNURL callback for alice with `request`: the zap invoice.
async fn zap_invoice(on: &Serve, request: &str) -> Bolt11Invoice {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("amount", &ZAP_MSAT.to_string())
        .append_pair("nostr", request)
        .finish();
    let (status, body) = on
        .get(&format!("/lnurlp/alice/callback?{query}"))
        .await
        .expect("a callback answer");
    assert_eq!(status, 200, "callback: {body}");
    body["pr"].as_str().unwrap().parse().unwrap()
}

/// Pays `invoice` from `payer`; it must succeed.
async fn pay(payer: &LightningNode, invoice: &Bolt11Invoice) {
    let sent = payer
        .pay_and_wait(invoice, None, None, WAIT)
        .await
        .expect("the payment is sent");
    assert!(
        matches!(sent.outcome, PaymentOutcome::Succeeded { .. }),
        "{:?}",
        sent.outcome
    );
}

/// The zap receipts (kind 9735) by `zapper` for `invoice` in the shared
/// database (read through `on`).
async fn receipts_of(on: &Serve, zapper: &str, invoice: &Bolt11Invoice) -> Vec<Event> {
    let mut c = Client::connect(&on.url()).await;
    let all = c
        .stored("r", json!({ "kinds": [9735], "authors": [zapper] }))
        .await;
    let bolt11 = invoice.to_string();
    all.into_iter()
        .filter(|e| {
            e.tags.iter().any(|t| {
                t.as_slice().first().map(String::as_str) == Some("bolt11")
                    && t.content() == Some(bolt11.as_str())
            })
        })
        .collect()
}

/// Waits (within [`WAIT`]) for `invoice`'s receipt, then checks that it is
/// the only one and the very receipt the zap database in `data` stores as
/// published: signed once, published once.
async fn the_one_receipt(
    on: &Serve,
    zapper: &str,
    invoice: &Bolt11Invoice,
    data: &std::path::Path,
    what: &str,
) -> Event {
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = receipts_of(on, zapper, invoice).await;
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no receipt within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(got.len(), 1, "{what}: one receipt: {got:?}");
    // The service marks the zap published once the relay said OK, which
    // may be just after the receipt reached this reader.
    let store = ZapStore::open(&data.join(ZAP_STORE_FILE_NAME)).unwrap();
    let hash = invoice.payment_hash().to_string();
    let zap = loop {
        let zap = store
            .get(&hash)
            .unwrap()
            .expect("the zap is in the database");
        if zap.state == ZapState::Published || Instant::now() >= deadline {
            break zap;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(zap.state, ZapState::Published, "{what}: {zap:?}");
    let stored = Event::from_json(zap.receipt.as_deref().expect("a stored receipt")).unwrap();
    assert_eq!(
        stored.id, got[0].id,
        "{what}: the stored receipt is the published one"
    );
    got.into_iter().next().unwrap()
}

/// How many times `log` says it published the receipt for `invoice`.
fn published_lines(log: &[String], invoice: &Bolt11Invoice) -> usize {
    let hash = invoice.payment_hash().to_string();
    log.iter()
        .filter(|l| l.contains("zap receipt published") && l.contains(&hash))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zap_receipts_are_published_once_and_move_with_the_payments_lease() {
    with_db(|db| async move {
        let chain = cairn_testchain::TestChain::start().await.unwrap();
        let x = FakeX::start().await.unwrap();
        // One data directory: the seed, the Lightning node's state and the
        // zap database (`zaps.sqlite`) move with the lease.
        let data = tempfile::tempdir().unwrap();
        let lightning = free_port();
        let mut env = identity_env(&chain, &x);
        env.extend(payments_env(lightning));
        for (k, v) in [
            ("CAIRN_ZAPS__NAMES", "[alice]"),
            // Every relay here is on 127.0.0.1, which receipts are not sent
            // to by default (SSRF guard).
            ("CAIRN_ZAPS__ALLOW_PRIVATE_RELAYS", "true"),
        ] {
            env.push((k.to_owned(), v.to_owned()));
        }
        let mut nodes = vec![Serve::start_in(&db, data.path(), &env, None).await];
        nodes.push(Serve::start_in(&db, data.path(), &env, None).await);
        let holder = the_one_holder(&db, &nodes, "payments", "the first payments holder").await;
        let standby = 1 - holder;
        wait_payments_running(&nodes[holder], "the first holder").await;
        let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
        let token = token.trim().to_owned();
        let alice = Keys::generate();
        bind(
            &nodes[standby],
            &nodes[holder],
            &x,
            &alice,
            1_500_000_000_000_000_101,
            "alice",
            1,
        )
        .await;

        // The payer opens a channel to the holder's Lightning node.
        let payer_dir = tempfile::tempdir().unwrap();
        let payer = payer_node(payer_dir.path(), &chain);
        let (status, info) = nodes[holder]
            .request(
                reqwest::Method::GET,
                "/admin/v1/lightning/info",
                None,
                Some(&token),
            )
            .await
            .expect("lightning info");
        assert_eq!(status, 200, "{info}");
        let node_id: cairn_payments::ldk_node::bitcoin::secp256k1::PublicKey =
            info["node_id"].as_str().unwrap().parse().unwrap();
        let address = SocketAddress::from(lightning);
        chain
            .fund(
                &payer.funding_address().unwrap(),
                bitcoin::Amount::from_sat(1_000_000),
            )
            .await
            .unwrap();
        until!(
            "the payer's coins",
            payer,
            payer.balances().spendable_onchain_balance_sats == 1_000_000
        );
        payer
            .open_channel(node_id, address.clone(), 400_000, None)
            .unwrap();
        until!(
            "the funding transaction in the mempool",
            payer,
            chain
                .rpc("getrawmempool", vec![])
                .await
                .unwrap()
                .as_array()
                .is_some_and(|m| !m.is_empty())
        );
        let to = chain.internal_address().await.unwrap();
        chain.mine(6, &to).await.unwrap();
        until!(
            "a usable channel",
            payer,
            payer.list_channels().iter().any(|c| c.is_usable)
                && has_usable_channel(&nodes[holder], &token).await
        );

        // LNURL-pay runs on the holder; the standby sends clients there.
        let (status, body) = nodes[standby]
            .get("/.well-known/lnurlp/alice")
            .await
            .expect("an answer");
        assert_eq!(status, 503, "{body}");
        let (status, pay_request) = nodes[holder]
            .get("/.well-known/lnurlp/alice")
            .await
            .expect("an answer");
        assert_eq!(status, 200, "{pay_request}");
        let zapper = pay_request["nostrPubkey"].as_str().unwrap().to_owned();

        // Zap 1, paid on the holder: one receipt, also on the relay the
        // request names (the standby's URL, reached over a WebSocket).
        let sender = Keys::generate();
        let relay = nodes[standby].url();
        let first = zap_invoice(
            &nodes[holder],
            &zap_request(&sender, &alice.public_key(), &relay),
        )
        .await;
        pay(&payer, &first).await;
        the_one_receipt(&nodes[standby], &zapper, &first, data.path(), "zap 1").await;
        // Zap 2: an invoice the holder issues and nobody pays yet.
        let second = zap_invoice(
            &nodes[holder],
            &zap_request(&sender, &alice.public_key(), &relay),
        )
        .await;
        let holder_log = nodes[holder].log.lock().unwrap().clone();
        assert_eq!(published_lines(&holder_log, &first), 1, "{holder_log:?}");

        // Kill the holder. No payment is in flight: zap 1's channel updates
        // took milliseconds on loopback and ended before its receipt (the
        // holder publishes it once it has handled the claim) and invoice 2
        // were seen here. A Lightning node killed mid-update is another
        // matter (LDK may come back with a stale channel and close it).
        nodes.remove(holder).kill();
        let successor = the_one_holder(&db, &nodes, "payments", "the payments lease moving").await;
        assert_eq!(successor, 0);
        wait_payments_running(&nodes[0], "the successor").await;
        // The payer finds the node at the same address (its own reconnection
        // timer runs once a minute).
        until!("the channel back with the successor", payer, {
            let _ = payer.inner().connect(node_id, address.clone(), true);
            payer.list_channels().iter().any(|c| c.is_usable)
        });

        // Zap 2, issued by the old holder, paid to the new one: the zap in
        // the shared database gets its receipt, once.
        pay(&payer, &second).await;
        the_one_receipt(&nodes[0], &zapper, &second, data.path(), "zap 2").await;
        // Zap 3, issued and paid on the new holder.
        let third = zap_invoice(
            &nodes[0],
            &zap_request(&sender, &alice.public_key(), &relay),
        )
        .await;
        pay(&payer, &third).await;
        the_one_receipt(&nodes[0], &zapper, &third, data.path(), "zap 3").await;
        // Zap 1 still has its one receipt; the new holder (whose start-up
        // sweep has run: it published zap 2 after it) did not publish it again.
        the_one_receipt(
            &nodes[0],
            &zapper,
            &first,
            data.path(),
            "zap 1 after the move",
        )
        .await;
        let log = nodes[0].log.lock().unwrap().clone();
        assert_eq!(published_lines(&log, &first), 0, "{log:?}");
        assert_eq!(published_lines(&log, &second), 1, "{log:?}");
        assert_eq!(published_lines(&log, &third), 1, "{log:?}");
        // No other receipts at all: one per zap.
        let mut c = Client::connect(&nodes[0].url()).await;
        let all = c
            .stored("all", json!({ "kinds": [9735], "authors": [zapper] }))
            .await;
        assert_eq!(all.len(), 3, "{all:?}");
        payer.stop().await.unwrap();
        drop(nodes);
        chain.stop().await.unwrap();
    })
    .await;
}
