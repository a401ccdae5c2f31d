//! Processes sharing one Postgres database (issue 14): what a live
//! subscriber on one process sees of events another stores, when the
//! listener has been away for long. Two stores opened on one fresh database
//! (on `CAIRN_TEST_POSTGRES_URL`; skipped when unset) stand for two
//! processes: "A" only writes (no relay, so no listener), "B" serves a
//! relay whose listener is the only one on the database.
//!
//! Run: `cargo test -p cairn-relay --test cluster`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_relay::config::{Rate, RelayConfig};
use cairn_relay::store::{self, SaveOutcome, Store};
use cairn_relay::{serve_connection, Incoming, Outgoing, Relay};
use futures::channel::mpsc;
use futures::StreamExt;
use nostr::{Event, EventBuilder, Keys, Timestamp};
use serde_json::{json, Value};
use sqlx::Connection;

/// Upper bound for the whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// How long one message may take (the listener's reconnection included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(45);
/// Events stored while B's listener is away: several times the live ring
/// (`DEFAULT_LIVE_BUFFER`, 2,048), so that a catch-up poured into it at
/// once would leave the subscriber far behind.
const GAP: usize = 8_000;

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One client connection on B, without a socket: the client "reads" by
/// taking from `rx`, which holds at most a few messages.
struct Client {
    tx: mpsc::UnboundedSender<Incoming>,
    rx: mpsc::Receiver<Outgoing>,
}

impl Client {
    async fn connect(relay: &Arc<Relay>) -> Self {
        let permit = relay.admit("127.0.0.1".parse().unwrap()).expect("admitted");
        let (tx, incoming) = mpsc::unbounded();
        let (outgoing, rx) = mpsc::channel(16);
        tokio::spawn(serve_connection(
            Arc::clone(relay),
            permit,
            incoming,
            outgoing,
        ));
        let mut client = Self { tx, rx };
        let auth = client.recv().await;
        assert_eq!(auth[0], "AUTH", "{auth}");
        client
    }

    fn send(&self, message: Value) {
        self.tx
            .unbounded_send(Incoming::Text(message.to_string()))
            .expect("connection open");
    }

    async fn recv(&mut self) -> Value {
        match tokio::time::timeout(REPLY_TIMEOUT, self.rx.next()).await {
            Ok(Some(Outgoing::Text(text))) => serde_json::from_str(&text).expect("JSON"),
            Ok(Some(Outgoing::Close { code, reason })) => panic!("closed {code} {reason}"),
            Ok(None) => panic!("connection ended"),
            Err(_) => panic!("no message within {REPLY_TIMEOUT:?}"),
        }
    }

    /// The id of the next live event of subscription `sub`; anything else
    /// (a NOTICE saying the client reads too slowly, say) fails the test.
    async fn next_event_id(&mut self, sub: &str) -> String {
        let v = self.recv().await;
        assert!(v[0] == "EVENT" && v[1] == sub, "expected a live event: {v}");
        v[2]["id"].as_str().expect("an id").to_owned()
    }
}

fn note(keys: &Keys, i: usize) -> Event {
    EventBuilder::text_note(format!("gap event {i}"))
        .custom_created_at(Timestamp::from(Timestamp::now().as_secs() - 60))
        .sign_with_keys(keys)
        .expect("sign")
}

async fn save_all(store: &Arc<dyn Store>, events: &[Event]) {
    for chunk in events.chunks(500) {
        let outcomes = store.save_batch(chunk).await.expect("save");
        assert!(outcomes.iter().all(|o| *o == SaveOutcome::Stored));
    }
}

/// Listener connections on the database right now.
async fn listeners(admin: &mut sqlx::PgConnection, db: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name LIKE 'cairn listener%'",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .expect("pg_stat_activity")
}

/// After a long listener outage, the catch-up of thousands of events goes at
/// the pace of a subscriber that reads steadily (slower than the database
/// can be read): it is not closed as a slow reader, and it gets every event
/// of the gap once, in seq order, then live events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_is_paced_to_a_subscriber_that_reads() {
    let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
        eprintln!("skipping Postgres: CAIRN_TEST_POSTGRES_URL not set");
        return;
    };
    let name = format!("cairn_cluster_{}", unique_suffix());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to CAIRN_TEST_POSTGRES_URL");
    // The name is generated above from digits and underscores only.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("a URL");
    url.set_path(&name);
    let body = tokio::spawn(catch_up_body(
        admin_url.clone(),
        url.to_string(),
        name.clone(),
    ));
    let result = tokio::time::timeout(TEST_TIMEOUT, body).await;
    // Whatever happened, connections are allowed again and the database goes.
    let _ = sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    ))
    .execute(&mut admin)
    .await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    match result {
        Err(_) => panic!("test timed out"),
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Ok(Ok(())) => {}
    }
}

async fn catch_up_body(admin_url: String, url: String, db: String) {
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("admin");
    let a = store::open(&url).await.expect("open A");
    let b = store::open(&url).await.expect("open B");
    let mut config = RelayConfig::default();
    let fast = Rate::new(100_000.0, 100_000.0);
    config.rate_limits.reqs_per_ip = fast;
    config.cluster.listener_retry_ms = 100;
    let (relay, _writer) = Relay::new(config, "ws://127.0.0.1:1", Arc::clone(&b));

    let keys = Keys::generate();
    let mut client = Client::connect(&relay).await;
    client.send(
        json!(["REQ", "live", {"kinds": [1], "authors": [keys.public_key().to_hex()], "limit": 0}]),
    );
    let eose = client.recv().await;
    assert_eq!(eose[0], "EOSE", "{eose}");

    // B's listener is up: an event A stores reaches the subscriber.
    let probe = note(&keys, 0);
    save_all(&a, std::slice::from_ref(&probe)).await;
    assert_eq!(client.next_event_id("live").await, probe.id.to_hex());
    let gap: Vec<Event> = (1..=GAP).map(|i| note(&keys, i)).collect();

    // The outage: B's listener is cut off and cannot come back (no new
    // connection to the database is allowed; A's open one keeps writing).
    sqlx::query(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .expect("disallow connections");
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name LIKE 'cairn listener%'",
    )
    .bind(&db)
    .fetch_all(&mut admin)
    .await
    .expect("terminate the listener");
    assert_eq!(cut, vec![true], "B's listener was the one to cut");
    let deadline = Instant::now() + Duration::from_secs(30);
    while listeners(&mut admin, &db).await > 0 {
        assert!(Instant::now() < deadline, "the listener did not go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    save_all(&a, &gap).await;
    assert_eq!(
        listeners(&mut admin, &db).await,
        0,
        "the gap is real: no listener while it was written"
    );
    sqlx::query(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .expect("allow connections");

    // In seq order, as the database has them.
    let mut test_db = sqlx::PgConnection::connect(&url).await.expect("test db");
    let expected: Vec<String> = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT id FROM events WHERE seq > (SELECT seq FROM events WHERE id = $1) ORDER BY seq",
    )
    .bind(probe.id.as_bytes().as_slice())
    .fetch_all(&mut test_db)
    .await
    .expect("ids by seq")
    .into_iter()
    .map(hex::encode)
    .collect();
    assert_eq!(expected.len(), GAP);
    let gap_ids: HashSet<String> = gap.iter().map(|e| e.id.to_hex()).collect();
    assert!(expected.iter().all(|id| gap_ids.contains(id)));

    // A subscriber that reads steadily, at a few thousand events a second:
    // well below what a catch-up reads from the database.
    let started = Instant::now();
    let mut got = Vec::with_capacity(GAP);
    while got.len() < GAP {
        got.push(client.next_event_id("live").await);
        if got.len() % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    eprintln!("caught up {GAP} events in {:?}", started.elapsed());
    let first_wrong = got.iter().zip(&expected).position(|(g, e)| g != e);
    assert_eq!(first_wrong, None, "every gap event once, in seq order");

    // Live delivery goes on, and nothing else was queued before it (no
    // repeat of a gap event).
    let after = note(&keys, GAP + 1);
    save_all(&a, std::slice::from_ref(&after)).await;
    assert_eq!(client.next_event_id("live").await, after.id.to_hex());

    drop(client);
    drop(relay);
    a.close().await;
    b.close().await;
}
