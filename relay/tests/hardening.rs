//! What one hostile client may cost the relay (issue 11, the relay's own
//! half): each case drives a real [`Relay`] on a real store through
//! [`serve_connection`] (the engine behind the WebSocket, without a socket),
//! or the store directly, on SQLite (a file in a tempdir) and Postgres (a
//! fresh database on `CAIRN_TEST_POSTGRES_URL`; skipped when unset).
//!
//! Run: `cargo test -p cairn-relay --test hardening`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_relay::config::{Rate, RelayConfig};
use cairn_relay::store::{self, QueryBudget, QueryContext, SaveOutcome, Store, StoreError};
use cairn_relay::{serve_connection, Incoming, Outgoing, Relay};
use futures::channel::mpsc;
use futures::StreamExt;
use nostr::{
    Alphabet, Event, EventBuilder, EventId, Filter, JsonUtil, Keys, Kind, SingleLetterTag, Tag,
    Timestamp,
};
use serde_json::{json, Value};
use sqlx::Connection;

/// Upper bound for one test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

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

async fn run_body<Fut>(body: Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    match tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(body)).await {
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
    run_body(body(store.clone())).await;
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
    let name = format!("cairn_hardening_{}", unique_suffix());
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
    slow_reader_is_dropped_after_the_grace,
    prompt_reader_gets_every_result_once_in_order_through_a_small_budget,
    filter_values_are_limited_per_list_req_and_connection,
    more_than_sqlites_variable_limit_is_invalid_not_a_database_error,
    count_and_req_stop_at_their_time_budget,
    a_query_stops_when_its_client_goes_away,
    gift_wrap_limit_counts_every_recipient,
    gift_wrap_recipients_must_be_hex_keys,
    deletion_requests_name_at_most_max_deletion_targets,
    deletions_with_thousands_of_tags_commit_quickly,
);

/// The query slots sit above the store (in the connection), so one backend
/// is enough; SQLite is the one with only 4 read connections to protect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_address_runs_only_its_share_of_queries_at_once() {
    with_sqlite(one_address_runs_only_its_share_of_queries_at_once).await;
}

/// A config with rate limits out of the way.
fn config() -> RelayConfig {
    let mut c = RelayConfig::default();
    let fast = Rate::new(100_000.0, 100_000.0);
    c.rate_limits.events_per_ip = fast;
    c.rate_limits.events_per_pubkey = fast;
    c.rate_limits.gift_wraps_per_recipient = fast;
    c.rate_limits.reqs_per_ip = fast;
    c.rate_limits.reqs_per_pubkey = fast;
    c
}

fn relay(config: RelayConfig, store: Arc<dyn Store>) -> Arc<Relay> {
    Relay::new(config, "ws://127.0.0.1:1", store).0
}

/// One client connection, without a socket.
struct Client {
    tx: mpsc::UnboundedSender<Incoming>,
    rx: mpsc::Receiver<Outgoing>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connect; the relay's `AUTH` challenge is read already. The socket
    /// takes at most `socket_room` messages that the client has not read.
    async fn connect(relay: &Arc<Relay>, socket_room: usize) -> Self {
        Self::connect_from(relay, socket_room, "127.0.0.1").await
    }

    /// [`Self::connect`] from client address `ip`.
    async fn connect_from(relay: &Arc<Relay>, socket_room: usize, ip: &str) -> Self {
        let permit = relay.admit(ip.parse().unwrap()).expect("admitted");
        let (tx, incoming) = mpsc::unbounded();
        let (outgoing, rx) = mpsc::channel(socket_room);
        let task = tokio::spawn(serve_connection(
            Arc::clone(relay),
            permit,
            incoming,
            outgoing,
        ));
        let mut client = Self { tx, rx, task };
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
            Err(_) => panic!("no reply within {REPLY_TIMEOUT:?}"),
        }
    }

    /// REQ and read to EOSE: the events' ids, or the CLOSED reason.
    async fn req(&mut self, sub: &str, filters: &[Value]) -> Result<Vec<String>, String> {
        let mut message = vec![json!("REQ"), json!(sub)];
        message.extend(filters.iter().cloned());
        self.send(Value::Array(message));
        let mut ids = Vec::new();
        loop {
            let v = self.recv().await;
            match v[0].as_str() {
                Some("EVENT") if v[1] == sub => ids.push(v[2]["id"].as_str().unwrap().to_owned()),
                Some("EOSE") if v[1] == sub => return Ok(ids),
                Some("CLOSED") if v[1] == sub => return Err(v[2].as_str().unwrap().to_owned()),
                _ => panic!("unexpected {v}"),
            }
        }
    }

    /// COUNT: the number, or the CLOSED reason.
    async fn count(&mut self, sub: &str, filters: &[Value]) -> Result<u64, String> {
        let mut message = vec![json!("COUNT"), json!(sub)];
        message.extend(filters.iter().cloned());
        self.send(Value::Array(message));
        let v = self.recv().await;
        match v[0].as_str() {
            Some("COUNT") => Ok(v[2]["count"].as_u64().unwrap()),
            Some("CLOSED") => Err(v[2].as_str().unwrap().to_owned()),
            _ => panic!("unexpected {v}"),
        }
    }

    /// EVENT: `(accepted, message)` of the OK.
    async fn publish(&mut self, event: &Event) -> (bool, String) {
        self.send(json!([
            "EVENT",
            serde_json::from_str::<Value>(&event.as_json()).unwrap()
        ]));
        let v = self.recv().await;
        assert_eq!(v[0], "OK", "{v}");
        assert_eq!(v[1], event.id.to_hex());
        (v[2].as_bool().unwrap(), v[3].as_str().unwrap().to_owned())
    }
}

fn now() -> u64 {
    Timestamp::now().as_secs()
}

fn note(keys: &Keys, content: &str, created_at: u64) -> Event {
    EventBuilder::text_note(content)
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap()
}

async fn save_all(store: &Arc<dyn Store>, events: &[Event]) {
    for chunk in events.chunks(500) {
        let outcomes = store.save_batch(chunk).await.expect("save_batch");
        assert!(outcomes.iter().all(|o| *o == SaveOutcome::Stored));
    }
}

fn ctx() -> QueryContext {
    QueryContext {
        viewers: Vec::new(),
        now: now(),
        max_limit: 500,
    }
}

// ---------------------------------------------------------------- cases

/// Item 1: a client that sends a REQ with 16 identical filters over large
/// events and reads nothing is dropped after `slow_reader_grace_ms`, having
/// had at most the outbound byte budget queued for it, and told why.
/// (Before: the queue was bounded at 1,024 messages, so all 60 results were
/// queued, and the stuck client kept.)
async fn slow_reader_is_dropped_after_the_grace(store: Arc<dyn Store>) {
    let mut config = config();
    config.limits.max_outbound_bytes = 64 * 1024;
    config.limits.slow_reader_grace_ms = 300;
    let keys = Keys::generate();
    let big = "b".repeat(20_000);
    let base = now() - 1_000;
    let events: Vec<Event> = (0..60)
        .map(|i| note(&keys, &format!("{big} {i}"), base + i))
        .collect();
    save_all(&store, &events).await;
    let relay = relay(config, store);

    // A socket that takes one message and is not read for a while.
    let mut stuck = Client::connect(&relay, 0).await;
    let filter = json!({"kinds": [1]});
    let mut req = vec![json!("REQ"), json!("all")];
    req.extend(std::iter::repeat_n(filter, 16));
    stuck.send(Value::Array(req));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // When it reads at last: a few events, the NOTICE saying why, a 1008
    // close, and the end of the connection; no EOSE, not all 60 events.
    let mut got = 0;
    let mut notice = None;
    let mut close = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stuck.rx.next()).await {
            Ok(Some(Outgoing::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                match v[0].as_str() {
                    Some("EVENT") => got += 1,
                    Some("NOTICE") => notice = Some(v[1].as_str().unwrap().to_owned()),
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some(Outgoing::Close { code, .. })) => close = Some(code),
            Ok(None) => break,
            Err(_) => panic!("a slow reader is still connected; got {got} events"),
        }
    }
    assert!(got < 5, "a stuck socket was handed {got} events");
    let notice = notice.expect("a NOTICE before the close");
    assert!(notice.contains("reading too slowly"), "{notice}");
    assert_eq!(close, Some(1008));
    tokio::time::timeout(Duration::from_secs(5), &mut stuck.task)
        .await
        .expect("the connection ends")
        .unwrap();

    // Everyone else is fine.
    let mut other = Client::connect(&relay, 16).await;
    assert_eq!(
        other.req("one", &[json!({"kinds": [1], "limit": 1})]).await,
        Ok(vec![events[59].id.to_hex()])
    );
}

/// Item 1: results larger than the read-ahead budget are streamed (keys
/// first, JSON fetched as the client reads), across several overlapping
/// and identical filters: every event once, newest first.
async fn prompt_reader_gets_every_result_once_in_order_through_a_small_budget(
    store: Arc<dyn Store>,
) {
    let mut config = config();
    // A few events' worth: most JSON is fetched after the first query.
    config.limits.max_outbound_bytes = 8 * 1024;
    let (alice, bob) = (Keys::generate(), Keys::generate());
    let base = now() - 1_000;
    let body = "p".repeat(2_000);
    let mut events = Vec::new();
    for i in 0..40 {
        let keys = if i % 2 == 0 { &alice } else { &bob };
        events.push(note(keys, &format!("{body} {i}"), base + i / 3));
    }
    save_all(&store, &events).await;
    let relay = relay(config, store);
    let mut client = Client::connect(&relay, 16).await;
    let got = client
        .req(
            "s",
            &[
                json!({"authors": [alice.public_key().to_hex()]}),
                json!({"kinds": [1]}),
                json!({"authors": [bob.public_key().to_hex()]}),
                json!({"kinds": [1]}),
            ],
        )
        .await
        .expect("EOSE");
    let mut expected: Vec<&Event> = events.iter().collect();
    expected.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let expected: Vec<String> = expected.iter().map(|e| e.id.to_hex()).collect();
    assert_eq!(got, expected);
}

/// Item 2: too many values in one list, in one REQ or across a
/// connection's subscriptions are refused with CLOSED and a standard
/// prefix; closing a subscription gives its values back. NIP-11 lists the
/// limits. (Before: only the number of filters was limited.)
async fn filter_values_are_limited_per_list_req_and_connection(store: Arc<dyn Store>) {
    let mut config = config();
    config.limits.max_values_per_filter = 10;
    config.limits.max_values_per_req = 15;
    config.limits.max_values_per_connection = 25;
    let relay = relay(config, store);
    let doc = relay.information_document();
    assert_eq!(doc["limitation"]["max_values_per_filter"], 10);
    assert_eq!(doc["limitation"]["max_values_per_req"], 15);
    assert_eq!(doc["limitation"]["max_values_per_connection"], 25);

    let mut c = Client::connect(&relay, 64).await;
    let authors = |n: usize| -> Value {
        let keys: Vec<String> = (0..n)
            .map(|_| Keys::generate().public_key().to_hex())
            .collect();
        json!({ "authors": keys })
    };
    let tags = |n: usize| -> Value {
        let values: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        json!({ "#t": values })
    };
    let err = c.req("a", &[authors(11)]).await.unwrap_err();
    assert!(err.starts_with("invalid:"), "{err}");
    let err = c.req("a", &[tags(11)]).await.unwrap_err();
    assert!(err.starts_with("invalid:"), "{err}");
    let err = c.req("a", &[tags(8), authors(8)]).await.unwrap_err();
    assert!(err.starts_with("invalid:"), "{err}");
    let err = c.count("n", &[tags(11)]).await.unwrap_err();
    assert!(err.starts_with("invalid:"), "{err}");
    // 10 + 10 held; 10 more would be 30.
    assert_eq!(c.req("a", &[tags(10)]).await, Ok(vec![]));
    assert_eq!(c.req("b", &[authors(10)]).await, Ok(vec![]));
    let err = c.req("c", &[tags(10)]).await.unwrap_err();
    assert!(err.starts_with("restricted:"), "{err}");
    // Replacing a subscription counts its new filters, not both.
    assert_eq!(c.req("b", &[authors(5)]).await, Ok(vec![]));
    assert_eq!(c.req("c", &[tags(10)]).await, Ok(vec![]));
    c.send(json!(["CLOSE", "a"]));
    assert_eq!(c.req("d", &[tags(10)]).await, Ok(vec![]));
}

/// Item 7: more values than SQLite binds in one statement (32,766) are a
/// clear `invalid:` answer, from the relay's limits and, with those raised,
/// from the store itself, never "could not query the database".
async fn more_than_sqlites_variable_limit_is_invalid_not_a_database_error(store: Arc<dyn Store>) {
    let values: Vec<String> = (0..33_000).map(|i| format!("{i:x}")).collect();
    let filter = json!({ "#t": values });

    let relay_default = relay(config(), Arc::clone(&store));
    let mut c = Client::connect(&relay_default, 16).await;
    let err = c
        .req("big", std::slice::from_ref(&filter))
        .await
        .unwrap_err();
    assert!(err.starts_with("invalid:"), "{err}");

    let mut raised = config();
    raised.limits.max_values_per_filter = 1_000_000;
    raised.limits.max_values_per_req = 1_000_000;
    raised.limits.max_values_per_connection = 1_000_000;
    let relay_raised = relay(raised, Arc::clone(&store));
    let mut c = Client::connect(&relay_raised, 16).await;
    let err = c
        .req("big", std::slice::from_ref(&filter))
        .await
        .unwrap_err();
    assert!(err.starts_with("invalid:"), "{err}");
    let err = c
        .count("big", std::slice::from_ref(&filter))
        .await
        .unwrap_err();
    assert!(err.starts_with("invalid:"), "{err}");

    let filter = Filter::from_json(filter.to_string()).unwrap();
    match store.query(&filter, &ctx()).await {
        Err(StoreError::TooManyValues { values, max }) => assert!(values > max),
        other => panic!("expected TooManyValues, got {other:?}"),
    }
    match store.count(&[filter], &ctx()).await {
        Err(StoreError::TooManyValues { .. }) => {}
        other => panic!("expected TooManyValues, got {other:?}"),
    }
}

/// Item 3: a COUNT (or REQ) that needs more database time than its budget
/// is stopped inside the database and answered with CLOSED; with time
/// enough, the same COUNT is exact. (Before: queries had no bound.)
async fn count_and_req_stop_at_their_time_budget(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let base = now() - 100_000;
    let events: Vec<Event> = (0..6_000)
        .map(|i| {
            EventBuilder::text_note(format!("n {i}"))
                .tag(Tag::hashtag(format!("t{}", i % 7)))
                .custom_created_at(Timestamp::from(base + i))
                .sign_with_keys(&keys)
                .unwrap()
        })
        .collect();
    save_all(&store, &events).await;
    // 16 different unselective filters: a UNION over every event, 16 times.
    let filters: Vec<Filter> = (0..16)
        .map(|i| {
            Filter::new()
                .kind(Kind::TextNote)
                .since(Timestamp::from(base + i))
        })
        .collect();

    let expired = QueryBudget {
        deadline: Some(Instant::now()),
    };
    match store.count_within(&filters, &ctx(), expired).await {
        Err(StoreError::Timeout) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    match store
        .query_rows(&filters[0], &ctx(), expired, usize::MAX)
        .await
    {
        Err(StoreError::Timeout) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(
        store
            .count_within(&filters, &ctx(), QueryBudget::millis(60_000))
            .await
            .unwrap(),
        6_000
    );

    let mut config = config();
    config.limits.max_query_ms = 1;
    let relay = relay(config, Arc::clone(&store));
    let mut c = Client::connect(&relay, 16).await;
    let json_filters: Vec<Value> = filters
        .iter()
        .map(|f| serde_json::from_str(&f.as_json()).unwrap())
        .collect();
    let err = c.count("n", &json_filters).await.unwrap_err();
    assert!(err.starts_with("error: query stopped"), "{err}");
    let err = c.req("r", &json_filters).await.unwrap_err();
    assert!(err.starts_with("error: query stopped"), "{err}");
    // The connection is still usable, and a budget of seconds is enough.
    let mut config = self::config();
    config.limits.max_query_ms = 30_000;
    let relay = self::relay(config, store);
    let mut c = Client::connect(&relay, 16).await;
    assert_eq!(c.count("n", &json_filters).await, Ok(6_000));
}

/// Item 3: a COUNT in progress is dropped (on SQLite its statement is
/// interrupted) as soon as the client goes away, instead of running to the
/// end first. Calibrated on this machine: the same COUNT run to completion
/// takes `full`; the connection must be gone in well under that.
async fn a_query_stops_when_its_client_goes_away(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let base = now() - 100_000;
    let events: Vec<Event> = (0..10_000u64)
        .map(|i| {
            let tags: Vec<Tag> = (0..10)
                .map(|k| Tag::hashtag(format!("v{}", (i + k) % 50)))
                .collect();
            EventBuilder::text_note(format!("n {i}"))
                .tags(tags)
                .custom_created_at(Timestamp::from(base + i))
                .sign_with_keys(&keys)
                .unwrap()
        })
        .collect();
    save_all(&store, &events).await;
    let json_filters: Vec<Value> = (0..16)
        .map(|i| {
            let values: Vec<String> = (0..40).map(|v| format!("v{}", (v + i) % 50)).collect();
            json!({"#t": values, "since": base + i as u64})
        })
        .collect();
    let filters: Vec<Filter> = json_filters
        .iter()
        .map(|f| Filter::from_json(f.to_string()).unwrap())
        .collect();
    let started = Instant::now();
    assert_eq!(store.count(&filters, &ctx()).await.unwrap(), 10_000);
    let full = started.elapsed();
    eprintln!("the COUNT takes {full:?} to completion");

    let mut config = config();
    config.limits.max_query_ms = 600_000;
    let relay = relay(config, store);
    let mut c = Client::connect(&relay, 16).await;
    let mut message = vec![json!("COUNT"), json!("n")];
    message.extend(json_filters);
    c.send(Value::Array(message));
    tokio::time::sleep(full / 10).await;
    let gone = Instant::now();
    drop(c.tx);
    tokio::time::timeout(Duration::from_secs(60), &mut c.task)
        .await
        .expect("connection ends")
        .unwrap();
    let after = gone.elapsed();
    assert!(
        after < full / 2,
        "the connection ended {after:?} after its client left; the COUNT takes {full:?}"
    );
}

fn gift_wrap(recipients: &[String]) -> Event {
    let tags: Vec<Tag> = recipients
        .iter()
        .map(|p| Tag::parse(["p", p.as_str()]).unwrap())
        .collect();
    EventBuilder::new(Kind::GiftWrap, "sealed")
        .tags(tags)
        .sign_with_keys(&Keys::generate())
        .unwrap()
}

/// Item 6: the per-recipient gift-wrap limit counts every `p` tag, so four
/// junk recipients in front do not shield the real one. (Before: only the
/// first 4 were counted.)
async fn gift_wrap_limit_counts_every_recipient(store: Arc<dyn Store>) {
    let mut config = config();
    config.rate_limits.gift_wraps_per_recipient = Rate::new(0.001, 2.0);
    let relay = relay(config, store);
    let mut c = Client::connect(&relay, 16).await;
    let victim = Keys::generate().public_key().to_hex();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut recipients: Vec<String> = (0..4)
            .map(|_| Keys::generate().public_key().to_hex())
            .collect();
        recipients.push(victim.clone());
        answers.push(c.publish(&gift_wrap(&recipients)).await);
    }
    assert!(answers[0].0 && answers[1].0, "{answers:?}");
    assert!(
        !answers[2].0,
        "third gift wrap to the same recipient accepted"
    );
    assert!(answers[2].1.starts_with("rate-limited:"), "{answers:?}");
}

/// Item 6: a gift wrap's `p` values must be keys (64 lowercase hex).
async fn gift_wrap_recipients_must_be_hex_keys(store: Arc<dyn Store>) {
    let relay = relay(config(), store);
    let mut c = Client::connect(&relay, 16).await;
    let good = Keys::generate().public_key().to_hex();
    for bad in [
        "not-a-key".to_owned(),
        good.to_uppercase(),
        good[..63].to_owned(),
    ] {
        let (accepted, message) = c.publish(&gift_wrap(&[good.clone(), bad.clone()])).await;
        assert!(!accepted, "gift wrap with p {bad:?} accepted");
        assert!(message.starts_with("invalid:"), "{message}");
    }
    // More recipients than a wrap has any use for: each would cost a
    // rate-limit bucket.
    let many: Vec<String> = (0..=cairn_relay::accept::MAX_GIFT_WRAP_RECIPIENTS)
        .map(|_| Keys::generate().public_key().to_hex())
        .collect();
    let (accepted, message) = c.publish(&gift_wrap(&many)).await;
    assert!(!accepted, "gift wrap with {} p tags accepted", many.len());
    assert!(message.starts_with("invalid:"), "{message}");
    let (accepted, message) = c.publish(&gift_wrap(&[good])).await;
    assert!(accepted, "{message}");
}

/// Item 5: one deletion request names at most `max_deletion_targets`
/// events (`e` and `a` tags together), so none holds the single writer for
/// long; one over is refused with the setting's name, and nothing of it
/// is applied. (Before: up to `max_event_tags`, 2,500.)
async fn deletion_requests_name_at_most_max_deletion_targets(store: Arc<dyn Store>) {
    let limit = RelayConfig::default().limits.max_deletion_targets;
    assert!(limit < RelayConfig::default().limits.max_event_tags);
    let relay = relay(config(), store);
    let mut c = Client::connect(&relay, 16).await;
    let alice = Keys::generate();
    let kept = note(&alice, "kept", now() - 10);
    assert!(c.publish(&kept).await.0);
    let deletion = |events: usize, coordinates: usize, extra: Vec<Tag>| {
        let mut tags: Vec<Tag> = (0..events)
            .map(|_| Tag::event(EventId::from_byte_array(rand_id())))
            .collect();
        tags.extend((0..coordinates).map(|i| {
            Tag::parse([
                "a".to_owned(),
                format!("30023:{}:d{i}", alice.public_key().to_hex()),
            ])
            .unwrap()
        }));
        tags.extend(extra);
        EventBuilder::new(Kind::EventDeletion, "")
            .tags(tags)
            .sign_with_keys(&alice)
            .unwrap()
    };
    // One over, counting `a` tags too, and naming the kept note: refused.
    let over = deletion(limit - 10, 10, vec![Tag::event(kept.id)]);
    let (accepted, message) = c.publish(&over).await;
    assert!(!accepted, "a deletion of {} targets accepted", limit + 1);
    assert!(
        message.starts_with("invalid:") && message.contains("max_deletion_targets"),
        "{message}"
    );
    let (accepted, _) = c.publish(&kept).await;
    assert!(accepted, "the note is still there (a duplicate is OK true)");
    let by_id = json!({ "ids": [kept.id.to_hex()] });
    let got = c.req("kept", std::slice::from_ref(&by_id)).await.unwrap();
    assert_eq!(got.len(), 1, "nothing of the refused deletion was applied");
    // Other tags do not count; exactly the limit is accepted and applied.
    let at_limit = deletion(
        limit - 1,
        0,
        vec![Tag::event(kept.id), Tag::hashtag("not a target")],
    );
    let (accepted, message) = c.publish(&at_limit).await;
    assert!(accepted, "{message}");
    assert!(c.req("gone", &[by_id]).await.unwrap().is_empty());
}

/// Item 5: kind 5 events with thousands of `e` tags are applied with a few
/// statements each (not two per tag), so the single writer is not held:
/// 20 deletions × 2,500 tags commit in one batch in a small multiple of
/// what 20 notes with as many tags take (one statement per tag took tens of
/// times that). Their effect is unchanged.
async fn deletions_with_thousands_of_tags_commit_quickly(store: Arc<dyn Store>) {
    let (alice, mallory) = (Keys::generate(), Keys::generate());
    let base = now() - 1_000;
    let mine: Vec<Event> = (0..20)
        .map(|i| note(&alice, &format!("m {i}"), base + i))
        .collect();
    let theirs = note(&mallory, "not alice's", base);
    let mut setup = mine.clone();
    setup.push(theirs.clone());
    save_all(&store, &setup).await;

    let deletions: Vec<Event> = (0..20)
        .map(|i| {
            let mut tags: Vec<Tag> = (0..2_498)
                .map(|_| Tag::event(EventId::from_byte_array(rand_id())))
                .collect();
            tags.push(Tag::event(mine[i].id));
            tags.push(Tag::event(theirs.id));
            EventBuilder::new(Kind::EventDeletion, "")
                .tags(tags)
                .custom_created_at(Timestamp::from(base + 100))
                .sign_with_keys(&alice)
                .unwrap()
        })
        .collect();
    // The same load of tag rows, without deletions: the yardstick, measured
    // on this machine now.
    let tagged: Vec<Event> = (0..20)
        .map(|i| {
            let tags: Vec<Tag> = (0..2_500)
                .map(|_| Tag::event(EventId::from_byte_array(rand_id())))
                .collect();
            EventBuilder::text_note(format!("tagged {i}"))
                .tags(tags)
                .sign_with_keys(&mallory)
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    save_all(&store, &tagged).await;
    let yardstick = started.elapsed();
    let started = Instant::now();
    let outcomes = store.save_batch(&deletions).await.expect("save_batch");
    let took = started.elapsed();
    assert!(outcomes.iter().all(|o| *o == SaveOutcome::Stored));
    eprintln!(
        "20 deletions × 2,500 e tags committed in {took:?} (20 notes with as many tags: {yardstick:?})"
    );
    assert!(
        took < yardstick * 4 + Duration::from_secs(1),
        "20 deletions of 2,500 tags took {took:?} to commit; 20 notes with as many tags {yardstick:?}"
    );

    let cx = ctx();
    for event in &mine {
        assert!(store
            .query(&Filter::new().id(event.id), &cx)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.save_batch(std::slice::from_ref(event)).await.unwrap(),
            vec![SaveOutcome::Deleted]
        );
    }
    // Only the author deletes.
    assert_eq!(
        store
            .query(&Filter::new().id(theirs.id), &cx)
            .await
            .unwrap()
            .len(),
        1
    );
    // The deletion itself is stored, with its tags indexed.
    let first_target = deletions[0].tags.iter().find_map(|t| t.content()).unwrap();
    let by_target = Filter::new().custom_tag(SingleLetterTag::lowercase(Alphabet::E), first_target);
    assert_eq!(store.count(&[by_target], &cx).await.unwrap(), 1);
}

fn rand_id() -> [u8; 32] {
    use rand::RngCore;
    let mut id = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

/// A COUNT's answer: the number, or the CLOSED reason.
async fn count_answer(c: &mut Client) -> Result<u64, String> {
    let v = c.recv().await;
    match v[0].as_str() {
        Some("COUNT") => Ok(v[2]["count"].as_u64().unwrap()),
        Some("CLOSED") => Err(v[2].as_str().unwrap().to_owned()),
        _ => panic!("unexpected {v}"),
    }
}

/// A REQ's answer to EOSE: the number of events, or the CLOSED reason.
async fn req_answer(c: &mut Client, sub: &str) -> Result<usize, String> {
    let mut events = 0;
    loop {
        let v = c.recv().await;
        match v[0].as_str() {
            Some("EVENT") if v[1] == sub => events += 1,
            Some("EOSE") if v[1] == sub => return Ok(events),
            Some("CLOSED") if v[1] == sub => return Err(v[2].as_str().unwrap().to_owned()),
            _ => panic!("unexpected {v}"),
        }
    }
}

/// Item 3, the part the time budget leaves: one address looping expensive
/// COUNTs and REQs over several connections could take every database
/// connection. With `max_concurrent_queries_per_ip = 1` and no wait allowed,
/// a second query of the same address while one runs is refused with
/// `rate-limited:`; another address is never refused; with a wait, the
/// second query queues and runs; 0 lifts the cap. (Before: no such cap, so
/// nothing was ever refused and one address's queries all ran at once.)
/// Overlap depends on scheduling, so the refusal is waited for over rounds
/// (with a deadline), while the properties that hold every round are
/// checked every round.
async fn one_address_runs_only_its_share_of_queries_at_once(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let base = now() - 100_000;
    let events: Vec<Event> = (0..4_000u64)
        .map(|i| {
            let tags: Vec<Tag> = (0..10)
                .map(|k| Tag::hashtag(format!("v{}", (i + k) % 50)))
                .collect();
            EventBuilder::text_note(format!("n {i}"))
                .tags(tags)
                .custom_created_at(Timestamp::from(base + i))
                .sign_with_keys(&keys)
                .unwrap()
        })
        .collect();
    save_all(&store, &events).await;
    let filters: Vec<Value> = (0..16)
        .map(|i| {
            let values: Vec<String> = (0..40).map(|v| format!("v{}", (v + i) % 50)).collect();
            json!({"#t": values, "since": base + i as u64, "limit": 3})
        })
        .collect();
    let parsed: Vec<Filter> = filters
        .iter()
        .map(|f| Filter::from_json(f.to_string()).unwrap())
        .collect();
    let expected = store.count(&parsed, &ctx()).await.unwrap();
    assert!(expected > 3_000, "{expected}");
    let message = |verb: &str, sub: &str| {
        let mut m = vec![json!(verb), json!(sub)];
        m.extend(filters.iter().cloned());
        Value::Array(m)
    };
    let setup = |max: usize, wait_ms: u64| {
        let mut config = config();
        config.limits.max_query_ms = 600_000;
        config.limits.max_concurrent_queries_per_ip = max;
        config.limits.query_wait_ms = wait_ms;
        relay(config, Arc::clone(&store))
    };
    // One round: `a` COUNTs and `b` REQs from one address, `c` COUNTs from
    // another, all at once; how many of the first address's were refused.
    async fn round(
        a: &mut Client,
        b: &mut Client,
        c: &mut Client,
        message: &(dyn Fn(&str, &str) -> Value + Sync),
        expected: u64,
    ) -> usize {
        a.send(message("COUNT", "a"));
        b.send(message("REQ", "b"));
        c.send(message("COUNT", "c"));
        let (ra, rb, rc) = futures::join!(count_answer(a), req_answer(b, "b"), count_answer(c));
        assert_eq!(rc, Ok(expected), "another address was held up");
        let mut refused = 0;
        if let Err(reason) = &ra {
            assert!(reason.starts_with("rate-limited: "), "{reason}");
            refused += 1;
        } else {
            assert_eq!(ra, Ok(expected));
        }
        if let Err(reason) = &rb {
            assert!(reason.starts_with("rate-limited: "), "{reason}");
            refused += 1;
        } else {
            assert!(rb.as_ref().is_ok_and(|n| *n >= 3), "{rb:?}");
        }
        assert!(refused < 2, "one of them holds the slot");
        refused
    }

    // No wait allowed: the address's second query at a time is refused.
    let capped = setup(1, 0);
    let (mut a, mut b) = (
        Client::connect_from(&capped, 64, "192.0.2.1").await,
        Client::connect_from(&capped, 64, "192.0.2.1").await,
    );
    let mut c = Client::connect_from(&capped, 64, "192.0.2.2").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while round(&mut a, &mut b, &mut c, &message, expected).await == 0 {
        rounds += 1;
        assert!(
            Instant::now() < deadline,
            "no query refused in {rounds} rounds"
        );
    }
    b.send(json!(["CLOSE", "b"]));

    // A wait long enough: the second query waits its turn and runs.
    let queued = setup(1, 60_000);
    let (mut a, mut b) = (
        Client::connect_from(&queued, 64, "192.0.2.1").await,
        Client::connect_from(&queued, 64, "192.0.2.1").await,
    );
    let mut c = Client::connect_from(&queued, 64, "192.0.2.2").await;
    for _ in 0..5 {
        assert_eq!(round(&mut a, &mut b, &mut c, &message, expected).await, 0);
        b.send(json!(["CLOSE", "b"]));
    }

    // 0: no cap, nothing refused even without a wait.
    let open = setup(0, 0);
    let (mut a, mut b) = (
        Client::connect_from(&open, 64, "192.0.2.1").await,
        Client::connect_from(&open, 64, "192.0.2.1").await,
    );
    let mut c = Client::connect_from(&open, 64, "192.0.2.2").await;
    for _ in 0..5 {
        assert_eq!(round(&mut a, &mut b, &mut c, &message, expected).await, 0);
        b.send(json!(["CLOSE", "b"]));
    }
}
