//! NIP-77 against the relay engine, with the `negentropy` crate as the
//! client: sets converge, private events are reconciled only for their
//! recipient, and every limit answers NEG-ERR. Each case drives a real
//! [`Relay`] on a real store through [`serve_connection`] (the engine behind
//! the WebSocket), on SQLite and on Postgres (a fresh database on
//! `CAIRN_TEST_POSTGRES_URL`; skipped when unset).
//!
//! Run: `cargo test -p cairn-relay --test negentropy`. The 100,000-event
//! case (with its time and bytes, see docs/benchmarks.md) is `#[ignore]`d:
//! `cargo test --release -p cairn-relay --test negentropy -- --ignored --nocapture`
//! (also the 1M-event stores, `converge_1m_two_stores_sqlite`).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_relay::config::{Rate, RelayConfig};
use cairn_relay::store::{self, SaveOutcome, Store};
use cairn_relay::{serve_connection, Incoming, Outgoing, Relay};
use futures::channel::mpsc;
use futures::StreamExt;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, RelayUrl, Tag, Timestamp};
use serde_json::{json, Value};
use sqlx::Connection;

/// Upper bound for one test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The relay's public URL (checked in AUTH).
const RELAY_URL: &str = "ws://127.0.0.1:1";
/// The client's frame size limit (what rust-nostr uses).
const CLIENT_FRAME: u64 = 60_000;
const T0: u64 = 1_700_000_000;

// ---------------------------------------------------------------- harness

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

async fn run_body<Fut>(body: Fut, timeout: Duration)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    match tokio::time::timeout(timeout, tokio::spawn(body)).await {
        Err(_) => panic!("test timed out"),
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Ok(Ok(())) => {}
    }
}

async fn with_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/relay.db", dir.path().display());
    let store = store::open(&url).await.expect("open sqlite");
    run_body(body(store.clone()), TEST_TIMEOUT).await;
    store.close().await;
}

async fn with_postgres<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
        eprintln!("skipping Postgres: CAIRN_TEST_POSTGRES_URL not set");
        return;
    };
    let name = format!("cairn_negentropy_{}", unique_suffix());
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
    let store = store::open(url.as_str()).await.expect("open postgres");
    let result = tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(body(store.clone()))).await;
    store.close().await;
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

/// Each case runs as `sqlite::<case>` and `postgres::<case>`.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::with_sqlite(super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::with_postgres(super::$case).await;
                }
            )*
        }
    };
}

both!(
    sets_converge_in_both_directions,
    a_non_recipient_learns_no_private_ids,
);

/// A config with rate limits out of the way.
fn config() -> RelayConfig {
    let mut c = RelayConfig::default();
    let fast = Rate::new(100_000.0, 100_000.0);
    c.rate_limits.reqs_per_ip = fast;
    c.rate_limits.reqs_per_pubkey = fast;
    c
}

fn relay(config: RelayConfig, store: Arc<dyn Store>) -> Arc<Relay> {
    Relay::new(config, RELAY_URL, store).0
}

/// One client connection, without a socket.
struct Client {
    tx: mpsc::UnboundedSender<Incoming>,
    rx: mpsc::Receiver<Outgoing>,
    challenge: String,
    /// Bytes of text sent and received (the NIP-77 messages' cost).
    bytes: usize,
}

impl Client {
    async fn connect(relay: &Arc<Relay>) -> Self {
        let permit = relay.admit("127.0.0.1".parse().unwrap()).expect("admitted");
        let (tx, incoming) = mpsc::unbounded();
        let (outgoing, rx) = mpsc::channel(1024);
        tokio::spawn(serve_connection(
            Arc::clone(relay),
            permit,
            incoming,
            outgoing,
        ));
        let mut client = Self {
            tx,
            rx,
            challenge: String::new(),
            bytes: 0,
        };
        let auth = client.recv().await;
        assert_eq!(auth[0], "AUTH", "{auth}");
        client.challenge = auth[1].as_str().unwrap().to_owned();
        client
    }

    fn send(&mut self, message: Value) {
        let text = message.to_string();
        self.bytes += text.len();
        self.tx
            .unbounded_send(Incoming::Text(text))
            .expect("connection open");
    }

    async fn recv(&mut self) -> Value {
        match tokio::time::timeout(REPLY_TIMEOUT, self.rx.next()).await {
            Ok(Some(Outgoing::Text(text))) => {
                self.bytes += text.len();
                serde_json::from_str(&text).expect("JSON")
            }
            Ok(Some(Outgoing::Close { code, reason })) => panic!("closed {code} {reason}"),
            Ok(None) => panic!("connection ended"),
            Err(_) => panic!("no reply within {REPLY_TIMEOUT:?}"),
        }
    }

    async fn auth(&mut self, keys: &Keys) {
        let auth = EventBuilder::auth(&self.challenge, RelayUrl::parse(RELAY_URL).unwrap())
            .sign_with_keys(keys)
            .unwrap();
        self.send(json!(["AUTH", auth]));
        let ok = self.recv().await;
        assert_eq!(ok[2], true, "{ok}");
    }

    /// Run a whole reconciliation of `items` against the relay for `filter`:
    /// `Ok((have, need))` as the client learns them, or the NEG-ERR.
    async fn reconcile(
        &mut self,
        sub: &str,
        filter: Value,
        items: &[(u64, [u8; 32])],
    ) -> Result<(BTreeSet<[u8; 32]>, BTreeSet<[u8; 32]>), Value> {
        let mut storage = NegentropyStorageVector::with_capacity(items.len());
        for (t, id) in items {
            storage.insert(*t, Id::from_byte_array(*id)).unwrap();
        }
        storage.seal().unwrap();
        let mut client = Negentropy::owned(storage, CLIENT_FRAME).unwrap();
        let initial = client.initiate().unwrap();
        self.send(json!(["NEG-OPEN", sub, filter, hex::encode(initial)]));
        let (mut have, mut need) = (Vec::new(), Vec::new());
        loop {
            let reply = self.recv().await;
            match reply[0].as_str() {
                Some("NEG-MSG") => assert_eq!(reply[1], sub, "{reply}"),
                Some("NEG-ERR") => return Err(reply),
                _ => panic!("unexpected {reply}"),
            }
            let bytes = hex::decode(reply[2].as_str().unwrap()).unwrap();
            match client
                .reconcile_with_ids(&bytes, &mut have, &mut need)
                .unwrap()
            {
                Some(next) => self.send(json!(["NEG-MSG", sub, hex::encode(next)])),
                None => break,
            }
        }
        self.send(json!(["NEG-CLOSE", sub]));
        let set = |ids: Vec<Id>| ids.into_iter().map(|id| id.to_bytes()).collect();
        Ok((set(have), set(need)))
    }
}

fn note(keys: &Keys, created_at: u64, i: usize) -> Event {
    EventBuilder::new(Kind::TextNote, format!("note {i}"))
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap()
}

fn item(event: &Event) -> (u64, [u8; 32]) {
    (event.created_at.as_secs(), event.id.to_bytes())
}

fn ids(events: &[Event]) -> BTreeSet<[u8; 32]> {
    events.iter().map(|e| e.id.to_bytes()).collect()
}

async fn save(store: &Arc<dyn Store>, events: &[Event]) {
    for chunk in events.chunks(500) {
        let out = store.save_batch(chunk).await.expect("save");
        assert!(out.iter().all(|o| *o == SaveOutcome::Stored), "{out:?}");
    }
}

// ---------------------------------------------------------------- cases

/// 2,000 events: 1,500 shared, 250 only on the relay, 250 only at the
/// client (several per second, so ties on `created_at` are ordered by id).
/// The client learns exactly the two differences; once each side has the
/// other's, a second run finds none.
async fn sets_converge_in_both_directions(store: Arc<dyn Store>) {
    let relay = relay(config(), store.clone());
    let keys = Keys::generate();
    let events: Vec<Event> = (0..2_000)
        .map(|i| note(&keys, T0 + (i as u64) / 3, i))
        .collect();
    let (shared, rest) = events.split_at(1_500);
    let (relay_only, client_only) = rest.split_at(250);
    save(&store, shared).await;
    save(&store, relay_only).await;

    let mut client = Client::connect(&relay).await;
    let mine: Vec<_> = shared.iter().chain(client_only).map(item).collect();
    let (have, need) = client
        .reconcile("sync", json!({"kinds": [1]}), &mine)
        .await
        .expect("reconciled");
    assert_eq!(have, ids(client_only));
    assert_eq!(need, ids(relay_only));

    // Transfer the difference both ways; then the sets are equal.
    save(&store, client_only).await;
    let all: Vec<_> = events.iter().map(item).collect();
    let (have, need) = client
        .reconcile("sync", json!({"kinds": [1]}), &all)
        .await
        .expect("reconciled");
    assert!(have.is_empty() && need.is_empty(), "{have:?} {need:?}");

    // A filter narrows the relay's side too: only the first 300 are in it.
    let until = T0 + 99;
    let (have, need) = client
        .reconcile("sync", json!({"kinds": [1], "until": until}), &[])
        .await
        .expect("reconciled");
    assert!(have.is_empty());
    assert_eq!(need.len(), 300);
}

/// Gift wraps (1059) and kind 4 to Alice are reconciled only for Alice:
/// without AUTH, or authenticated as Eve, a client learns none of their
/// ids, whatever filter it uses (even one without `kinds`), and a client
/// that already holds their ids is told the relay lacks them, exactly as
/// for ids the relay never saw.
async fn a_non_recipient_learns_no_private_ids(store: Arc<dyn Store>) {
    let relay = relay(config(), store.clone());
    let (alice, eve, sender) = (Keys::generate(), Keys::generate(), Keys::generate());
    let to_alice = Tag::public_key(alice.public_key());
    let mut private = Vec::new();
    for i in 0..20u64 {
        private.push(
            EventBuilder::new(Kind::GiftWrap, format!("wrap {i}"))
                .tag(to_alice.clone())
                .custom_created_at(Timestamp::from(T0 + i))
                .sign_with_keys(&Keys::generate())
                .unwrap(),
        );
        private.push(
            EventBuilder::new(Kind::EncryptedDirectMessage, format!("dm {i}"))
                .tag(to_alice.clone())
                .custom_created_at(Timestamp::from(T0 + i))
                .sign_with_keys(&sender)
                .unwrap(),
        );
    }
    let public: Vec<Event> = (0..10)
        .map(|i| {
            EventBuilder::new(Kind::TextNote, "public")
                .tag(to_alice.clone())
                .custom_created_at(Timestamp::from(T0 + i))
                .sign_with_keys(&sender)
                .unwrap()
        })
        .collect();
    save(&store, &private).await;
    save(&store, &public).await;
    let private_ids = ids(&private);
    let private_items: Vec<_> = private.iter().map(item).collect();
    let alice_p = alice.public_key().to_hex();
    let filters = [json!({}), json!({"#p": [alice_p]}), json!({"since": T0})];

    // Without AUTH: filters without `kinds` reconcile the public events only.
    let mut anon = Client::connect(&relay).await;
    for filter in &filters {
        let (have, need) = anon.reconcile("a", filter.clone(), &[]).await.unwrap();
        assert!(have.is_empty());
        assert_eq!(need, ids(&public), "{filter}");
        // Holding the ids reveals nothing either: all reported as the client's own.
        let (have, need) = anon
            .reconcile("a", filter.clone(), &private_items)
            .await
            .unwrap();
        assert_eq!(have, private_ids, "{filter}");
        assert!(need.is_disjoint(&private_ids), "{filter}");
    }
    // Asking for the private kinds by name needs AUTH, as for REQ.
    let err = anon
        .reconcile("a", json!({"kinds": [1059]}), &[])
        .await
        .unwrap_err();
    assert_eq!(err[1], "a");
    assert!(
        err[2].as_str().unwrap().starts_with("auth-required:"),
        "{err}"
    );

    // Authenticated as someone else: still nothing private.
    let mut other = Client::connect(&relay).await;
    other.auth(&eve).await;
    let kinds = json!({"kinds": [4, 1059]});
    let (have, need) = other.reconcile("e", kinds.clone(), &[]).await.unwrap();
    assert!(have.is_empty() && need.is_empty(), "{need:?}");
    let (have, need) = other
        .reconcile("e", kinds.clone(), &private_items)
        .await
        .unwrap();
    assert_eq!(have, private_ids);
    assert!(need.is_empty());
    for filter in &filters {
        let (_, need) = other.reconcile("e", filter.clone(), &[]).await.unwrap();
        assert_eq!(need, ids(&public), "{filter}");
    }

    // The recipient gets all of hers.
    let mut recipient = Client::connect(&relay).await;
    recipient.auth(&alice).await;
    let (have, need) = recipient.reconcile("r", kinds, &[]).await.unwrap();
    assert!(have.is_empty());
    assert_eq!(need, private_ids);
}

/// A session with the empty set and an open initial message (`limit: 1`).
fn open_message(sub: &str) -> Value {
    let mut storage = NegentropyStorageVector::new();
    storage.seal().unwrap();
    let mut engine = Negentropy::owned(storage, 0).unwrap();
    json!(["NEG-OPEN", sub, {"limit": 1}, hex::encode(engine.initiate().unwrap())])
}

/// Every limit answers NEG-ERR with a NIP-77 prefix, and a refused or
/// closed session is gone. The idle timeout is long here (the default), so
/// no session can expire while a slow machine runs the steps; expiry has
/// its own test, [`an_idle_session_expires`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_neg_err() {
    with_sqlite(|store: Arc<dyn Store>| async move {
        let mut config = config();
        config.negentropy.max_records = 10;
        config.negentropy.max_sessions = 1;
        assert!(config.negentropy.idle_timeout_secs >= 60);
        let relay = relay(config, store.clone());
        let keys = Keys::generate();
        let events: Vec<Event> = (0..11).map(|i| note(&keys, T0 + i as u64, i)).collect();
        save(&store, &events).await;
        let mut client = Client::connect(&relay).await;

        // More records than max_records: blocked, with the limit as 4th element.
        let err = client.reconcile("big", json!({}), &[]).await.unwrap_err();
        assert!(err[2].as_str().unwrap().starts_with("blocked:"), "{err}");
        assert_eq!(err[3], 10, "{err}");
        // Within it (a filter's limit counts): fine.
        let (_, need) = client
            .reconcile("small", json!({"limit": 10}), &[])
            .await
            .unwrap();
        assert_eq!(need.len(), 10);

        // One session per connection: a second one is refused while the first is open.
        client.send(open_message("one"));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-MSG", "{reply}");
        client.send(open_message("two"));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-ERR", "{reply}");
        assert_eq!(reply[1], "two");
        assert!(
            reply[2].as_str().unwrap().starts_with("blocked:"),
            "{reply}"
        );
        // Closing the first makes room again.
        client.send(json!(["NEG-CLOSE", "one"]));
        client.send(open_message("two"));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-MSG", "{reply}");
        assert_eq!(reply[1], "two");
        client.send(json!(["NEG-CLOSE", "two"]));
        // A closed session is gone.
        client.send(json!(["NEG-MSG", "one", "61"]));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-ERR", "{reply}");
        assert!(reply[2].as_str().unwrap().starts_with("closed:"), "{reply}");

        // Malformed messages.
        client.send(json!(["NEG-OPEN", "x", {}, "not hex"]));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-ERR", "{reply}");
        assert!(
            reply[2].as_str().unwrap().starts_with("invalid:"),
            "{reply}"
        );
        client.send(json!(["NEG-OPEN", "x", {"limit": 1}, "10"]));
        let reply = client.recv().await;
        assert!(
            reply[2].as_str().unwrap().starts_with("invalid:"),
            "{reply}"
        );
        // An unknown protocol version gets the version the relay speaks (V1).
        client.send(json!(["NEG-OPEN", "x", {"limit": 1}, "62"]));
        let reply = client.recv().await;
        assert_eq!(reply, json!(["NEG-MSG", "x", "61"]));
    })
    .await;
}

/// An idle session is closed after `idle_timeout_secs` (1 s here) and the
/// client told; then it is gone. Nothing else runs on this relay, so no
/// other assertion depends on finishing within the second; the NEG-ERR is
/// waited for with `recv`'s deadline, not a fixed sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires() {
    with_sqlite(|store: Arc<dyn Store>| async move {
        let mut config = config();
        config.negentropy.idle_timeout_secs = 1;
        let relay = relay(config, store);
        let mut client = Client::connect(&relay).await;
        client.send(open_message("one"));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-MSG", "{reply}");
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-ERR", "{reply}");
        assert_eq!(reply[1], "one");
        assert!(reply[2].as_str().unwrap().starts_with("closed:"), "{reply}");
        client.send(json!(["NEG-MSG", "one", "61"]));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-ERR", "{reply}");
        assert_eq!(reply[1], "one");
        assert!(reply[2].as_str().unwrap().starts_with("closed:"), "{reply}");
    })
    .await;
}

/// Every NEG-MSG counts against the REQ rate limit (each step is O(n) in
/// the set): with a burst of 2 and no refill to speak of, the NEG-OPEN and
/// the first NEG-MSG pass, the next NEG-MSG is refused with `rate-limited:`
/// and its session closed. (Before, NEG-MSGs were never limited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neg_msg_counts_against_the_req_rate_limit() {
    with_sqlite(|store: Arc<dyn Store>| async move {
        let mut config = config();
        config.rate_limits.reqs_per_ip = Rate::new(0.001, 2.0);
        let relay = relay(config, store);
        let mut client = Client::connect(&relay).await;
        client.send(open_message("s"));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-MSG", "{reply}");
        client.send(json!(["NEG-MSG", "s", "61"]));
        let reply = client.recv().await;
        assert_eq!(reply[1], "s", "{reply}");
        assert!(
            reply[0] == "NEG-MSG" || !reply[2].as_str().unwrap().starts_with("rate-limited:"),
            "{reply}"
        );
        client.send(json!(["NEG-MSG", "s", "61"]));
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-ERR", "{reply}");
        assert_eq!(reply[1], "s", "{reply}");
        assert!(
            reply[2].as_str().unwrap().starts_with("rate-limited:"),
            "{reply}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_negentropy_is_refused() {
    with_sqlite(|store: Arc<dyn Store>| async move {
        let mut config = config();
        config.negentropy.enabled = false;
        let relay = relay(config, store);
        let mut client = Client::connect(&relay).await;
        let err = client.reconcile("x", json!({}), &[]).await.unwrap_err();
        assert!(err[2].as_str().unwrap().starts_with("blocked:"), "{err}");
        assert!(!relay.information_document()["supported_nips"]
            .as_array()
            .unwrap()
            .contains(&json!(77)));
    })
    .await;
}

/// The issue's size: two sets of 100,000 events differing by 1 % each way
/// (1,000 only on the relay, 1,000 only at the client). Prints the time and
/// the bytes of the NIP-77 exchange next to the bytes of the events
/// themselves (what a full REQ transfer would send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100,000 events: run with --release --ignored --nocapture"]
async fn converge_100k_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/relay.db", dir.path().display());
    let store = store::open(&url).await.expect("open sqlite");
    let body = {
        let store = store.clone();
        async move {
            let mut config = config();
            config.negentropy.max_query_ms = 60_000;
            let relay = relay(config, store.clone());
            let keys = Keys::generate();
            let total = 101_000;
            let events: Vec<Event> = (0..total)
                .map(|i| note(&keys, T0 + (i as u64) / 10, i))
                .collect();
            let json_bytes: usize = events.iter().map(|e| e.as_json().len()).sum();
            // Every 101st event only on the relay, every 101st + 1 only at the client.
            let relay_set: Vec<Event> = events
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 101 != 1)
                .map(|(_, e)| e.clone())
                .collect();
            let client_items: Vec<_> = events
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 101 != 0)
                .map(|(_, e)| item(e))
                .collect();
            save(&store, &relay_set).await;
            let mut client = Client::connect(&relay).await;
            let started = Instant::now();
            let (have, need) = client
                .reconcile("big", json!({}), &client_items)
                .await
                .expect("reconciled");
            let took = started.elapsed();
            assert_eq!(have.len(), 1_000);
            assert_eq!(need.len(), 1_000);
            println!(
                "negentropy 100k (1% each way): {took:?}, {} bytes exchanged; the {} relay events are {} bytes of JSON",
                client.bytes,
                relay_set.len(),
                json_bytes * relay_set.len() / total
            );
        }
    };
    run_body(body, Duration::from_secs(1_200)).await;
    store.close().await;
}

/// `note`s `from..to` (created ten per second from `T0`), signed on two
/// threads.
async fn signed_notes(keys: &Keys, from: usize, to: usize) -> Vec<Event> {
    let keys = keys.clone();
    tokio::task::spawn_blocking(move || {
        let make = |range: std::ops::Range<usize>| -> Vec<Event> {
            range
                .map(|i| note(&keys, T0 + (i as u64) / 10, i))
                .collect()
        };
        let mid = from + (to - from) / 2;
        std::thread::scope(|s| {
            let first = s.spawn(|| make(from..mid));
            let second = make(mid..to);
            let mut all = first.join().expect("signing thread");
            all.extend(second);
            all
        })
    })
    .await
    .expect("signing task")
}

/// The issue's size: two SQLite stores of 1,000,000 events each that
/// differ by 1 % (10,000 events only in each; 1,010,000 in all), built in
/// bulk through `Store::save_batch`. The client's set is listed from its
/// store with `Store::sync_items` (what `cairn sync` does) and reconciled
/// with the relay over NIP-77 in one session: `max_records` is raised to
/// 1.1M for this (the default 500,000 would need the sync split by
/// `since`/`until`). Then the relay's 1M events are fetched the way a full
/// REQ transfer must, paged by `until` at the relay's `max_limit`. Prints
/// the time and bytes of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1M events per store: run with --release --ignored --nocapture"]
async fn converge_1m_two_stores_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| format!("sqlite://{}/{name}.db", dir.path().display());
    let relay_store = store::open(&open("relay")).await.expect("open sqlite");
    let client_store = store::open(&open("client")).await.expect("open sqlite");
    let body = {
        let (relay_store, client_store) = (relay_store.clone(), client_store.clone());
        async move {
            let mut config = config();
            config.negentropy.max_records = 1_100_000;
            config.negentropy.max_records_total = 2_200_000;
            config.negentropy.max_query_ms = 120_000;
            let page = config.limits.max_limit;
            let relay = relay(config, relay_store.clone());
            let keys = Keys::generate();
            const TOTAL: usize = 1_010_000;
            const CHUNK: usize = 10_100;
            let built = Instant::now();
            let (mut only_relay, mut only_client) = (BTreeSet::new(), BTreeSet::new());
            for from in (0..TOTAL).step_by(CHUNK) {
                let events = signed_notes(&keys, from, from + CHUNK).await;
                let (mut on_relay, mut on_client) = (Vec::new(), Vec::new());
                for (i, event) in (from..).zip(events) {
                    match i % 101 {
                        0 => {
                            only_client.insert(event.id.to_bytes());
                            on_client.push(event);
                        }
                        1 => {
                            only_relay.insert(event.id.to_bytes());
                            on_relay.push(event);
                        }
                        _ => {
                            on_relay.push(event.clone());
                            on_client.push(event);
                        }
                    }
                }
                save(&relay_store, &on_relay).await;
                save(&client_store, &on_client).await;
            }
            println!(
                "built two stores of 1,000,000 events each in {:?}",
                built.elapsed()
            );

            let started = Instant::now();
            let ctx = store::QueryContext {
                viewers: Vec::new(),
                now: Timestamp::now().as_secs(),
                max_limit: page,
            };
            let listed = client_store
                .sync_items(
                    &nostr::Filter::new(),
                    &ctx,
                    store::QueryBudget::default(),
                    1_100_000,
                )
                .await
                .expect("the client's set");
            let items: Vec<(u64, [u8; 32])> = listed.iter().map(|i| (i.created_at, i.id)).collect();
            drop(listed);
            let list_took = started.elapsed();
            let mut client = Client::connect(&relay).await;
            let (have, need) = client
                .reconcile("big", json!({}), &items)
                .await
                .expect("reconciled");
            let took = started.elapsed();
            assert_eq!(have, only_client);
            assert_eq!(need, only_relay);
            println!(
                "negentropy 1M vs 1M (1% each way): {took:?} in all ({list_took:?} listing the \
                 client's store), {} bytes exchanged",
                client.bytes
            );

            // A full REQ transfer of the relay's events, paged by `until`
            // (inclusive, so the boundary second comes again: ids dedupe).
            client.bytes = 0;
            let req_started = Instant::now();
            let mut seen: std::collections::HashSet<String> =
                std::collections::HashSet::with_capacity(1_000_000);
            let mut until: Option<u64> = None;
            let mut reqs = 0;
            loop {
                let filter = match until {
                    None => json!({"limit": page}),
                    Some(u) => json!({"until": u, "limit": page}),
                };
                client.send(json!(["REQ", "all", filter]));
                reqs += 1;
                let (mut new, mut oldest) = (0, u64::MAX);
                loop {
                    let message = client.recv().await;
                    match message[0].as_str() {
                        Some("EVENT") => {
                            let event = &message[2];
                            oldest = oldest.min(event["created_at"].as_u64().unwrap());
                            if seen.insert(event["id"].as_str().unwrap().to_owned()) {
                                new += 1;
                            }
                        }
                        Some("EOSE") => break,
                        _ => panic!("unexpected {message}"),
                    }
                }
                if new == 0 {
                    break;
                }
                until = Some(oldest);
            }
            assert_eq!(seen.len(), 1_000_000);
            println!(
                "full REQ transfer of the relay's 1,000,000 events: {:?}, {reqs} REQs of {page}, \
                 {} bytes exchanged",
                req_started.elapsed(),
                client.bytes
            );
        }
    };
    run_body(body, Duration::from_secs(1_800)).await;
    relay_store.close().await;
    client_store.close().await;
}
