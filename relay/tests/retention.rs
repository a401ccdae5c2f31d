//! Retention against the real stores: age rules per kind class and per kind,
//! small batches, the size cap's oldest-first eviction of what the policy
//! allows (SQLite), and the NIP-11 `retention` list.
//!
//! Run: `cargo test -p cairn-relay --test retention` (Postgres cases too with
//! `CAIRN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_relay::retention::{purge_once, Keep, RetentionConfig, MAX_BATCHES_PER_PASS};
use cairn_relay::store::{self, QueryContext, Store};
use nostr::{Event, EventBuilder, EventId, Filter, Keys, Kind, PublicKey, Tag, Timestamp};
use sqlx::Connection;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const NOW: u64 = 1_900_000_000;
const DAY: u64 = 86_400;

async fn run<F, Fut>(store: Arc<dyn Store>, body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let result = tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(body(store.clone()))).await;
    store.close().await;
    match result {
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
    let url = format!("sqlite://{}/cairn.db", dir.path().display());
    run(store::open(&url).await.expect("open sqlite"), body).await;
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
    let name = format!(
        "cairn_retention_{}",
        &Keys::generate().public_key().to_hex()[..16]
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("admin");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let mut url = url::Url::parse(&admin_url).expect("a URL");
    url.set_path(&name);
    run(
        store::open(url.as_str()).await.expect("open postgres"),
        body,
    )
    .await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}

fn event(kind: u16, age: u64, tags: Vec<Tag>, content: &str) -> Event {
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from(NOW - age))
        .sign_with_keys(&Keys::generate())
        .expect("signs")
}

async fn save(store: &dyn Store, events: &[Event]) {
    for chunk in events.chunks(500) {
        store.save_batch(chunk).await.expect("saved");
    }
}

/// Which of `events` the store still has (as `viewer` may see them).
async fn present(
    store: &dyn Store,
    events: &[Event],
    viewer: Option<PublicKey>,
) -> HashSet<EventId> {
    let ctx = QueryContext {
        viewers: viewer.into_iter().collect(),
        now: NOW,
        max_limit: 500,
    };
    let mut found = HashSet::new();
    for chunk in events.chunks(400) {
        let filter = Filter::new().ids(chunk.iter().map(|e| e.id));
        for e in store.query(&filter, &ctx).await.expect("query") {
            found.insert(EventId::from_byte_array(e.id));
        }
    }
    found
}

async fn age_rules_per_class_and_kind(store: Arc<dyn Store>) {
    let recipient = Keys::generate().public_key();
    let p = || vec![Tag::public_key(recipient)];
    let note_old = event(1, 2 * DAY, vec![], "kept forever by its own rule");
    let reaction_old = event(7, 2 * DAY, vec![], "regular, older than 1d");
    let reaction_new = event(7, 3_600, vec![], "regular, newer");
    let wrap_old = event(1059, 31 * DAY, p(), "gift wrap past 30d");
    let wrap_new = event(1059, 29 * DAY, p(), "gift wrap within 30d");
    let profile_old = event(0, 100 * DAY, vec![], "replaceable: forever");
    let article_old = event(
        30_023,
        100 * DAY,
        vec![Tag::identifier("a")],
        "addressable: 90d",
    );
    let all = vec![
        note_old.clone(),
        reaction_old.clone(),
        reaction_new.clone(),
        wrap_old.clone(),
        wrap_new.clone(),
        profile_old.clone(),
        article_old.clone(),
    ];
    save(&*store, &all).await;
    let mut config = RetentionConfig {
        gift_wraps: Keep::Seconds(30 * DAY),
        regular: Keep::Seconds(DAY),
        addressable: Keep::Seconds(90 * DAY),
        ..RetentionConfig::default()
    };
    config.kinds.insert(1, Keep::Forever);
    let report = purge_once(&*store, &config, NOW).await.expect("purge");
    assert_eq!(report.aged, 3, "{report:?}");
    let left = present(&*store, &all, Some(recipient)).await;
    let want: HashSet<EventId> = [&note_old, &reaction_new, &wrap_new, &profile_old]
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, want);
    // The purged gift wrap's tags went with it: a #p query finds only the new one.
    let ctx = QueryContext {
        viewers: vec![recipient],
        now: NOW,
        max_limit: 500,
    };
    let by_p = store
        .query(&Filter::new().pubkey(recipient), &ctx)
        .await
        .expect("query");
    assert_eq!(by_p.len(), 1);
    // A second pass finds nothing more.
    assert_eq!(
        purge_once(&*store, &config, NOW).await.expect("purge").aged,
        0
    );
}

async fn a_pass_deletes_in_bounded_batches(store: Arc<dyn Store>) {
    let batch = 50;
    let total = batch * MAX_BATCHES_PER_PASS + 30;
    let old: Vec<Event> = (0..total)
        .map(|i| event(7, 10 * DAY + i as u64, vec![], "old"))
        .collect();
    save(&*store, &old).await;
    let config = RetentionConfig {
        regular: Keep::Seconds(DAY),
        batch,
        ..RetentionConfig::default()
    };
    let first = purge_once(&*store, &config, NOW).await.expect("purge");
    assert_eq!(
        first.aged,
        (batch * MAX_BATCHES_PER_PASS) as u64,
        "one pass is bounded"
    );
    let left = present(&*store, &old, None).await;
    assert_eq!(left.len(), 30);
    // Oldest first: what is left is the newest of them.
    let newest: HashSet<EventId> = old[..30].iter().map(|e| e.id).collect();
    assert_eq!(left, newest);
    assert_eq!(
        purge_once(&*store, &config, NOW).await.expect("purge").aged,
        30
    );
}

/// An event already past its rule when it is published is refused with
/// `invalid:` and not stored, as the next pass would delete it; one within
/// its rule is stored and left alone by that pass.
async fn an_event_past_its_rule_is_refused_at_publish(store: Arc<dyn Store>) {
    use cairn_relay::{Accepted, Refused};
    let config = cairn_relay::config::RelayConfig {
        retention: RetentionConfig {
            gift_wraps: Keep::Seconds(30 * DAY),
            regular: Keep::Seconds(DAY),
            kinds: [(1, Keep::Forever)].into_iter().collect(),
            ..RetentionConfig::default()
        },
        ..cairn_relay::config::RelayConfig::default()
    };
    assert_eq!(config.retention.keep_for(7), Keep::Seconds(DAY));
    assert_eq!(config.retention.keep_for(1), Keep::Forever);
    assert_eq!(config.retention.keep_for(1059), Keep::Seconds(30 * DAY));
    assert_eq!(config.retention.keep_for(0), Keep::Forever);
    let retention = config.retention.clone();
    let (relay, _writer) = cairn_relay::Relay::new(config, "ws://127.0.0.1:1", Arc::clone(&store));
    let now = Timestamp::now().as_secs();
    let aged = |kind: u16, age: u64, tags: Vec<Tag>| {
        EventBuilder::new(Kind::from(kind), "publish-time retention")
            .tags(tags)
            .custom_created_at(Timestamp::from(now - age))
            .sign_with_keys(&Keys::generate())
            .expect("signs")
    };
    let p = || vec![Tag::public_key(Keys::generate().public_key())];
    let refused = [aged(7, 2 * DAY, vec![]), aged(1059, 31 * DAY, p())];
    let kept = [
        aged(7, 3_600, vec![]),
        aged(1, 400 * DAY, vec![]),
        aged(1059, 2 * DAY, p()),
    ];
    for event in &refused {
        match relay.publish(event.clone()).await {
            Err(Refused::Rule(reason)) => {
                assert!(reason.starts_with("invalid: "), "{reason}");
                assert!(reason.contains("retention"), "{reason}");
            }
            other => panic!("kind {} past its rule: {other:?}", event.kind),
        }
    }
    for event in &kept {
        let outcome = relay.publish(event.clone()).await;
        assert!(
            matches!(outcome, Ok(Accepted::Stored)),
            "kind {}: {outcome:?}",
            event.kind
        );
    }
    let all: Vec<Event> = refused.iter().chain(&kept).cloned().collect();
    let recipients: Vec<PublicKey> = all
        .iter()
        .flat_map(|e| e.tags.public_keys().copied().collect::<Vec<_>>())
        .collect();
    let mut found = HashSet::new();
    for viewer in recipients.into_iter().map(Some).chain([None]) {
        found.extend(present(&*store, &all, viewer).await);
    }
    let expected: HashSet<EventId> = kept.iter().map(|e| e.id).collect();
    assert_eq!(found, expected, "only what is within its rule was stored");
    // The background pass agrees: nothing accepted is past its rule.
    let report = purge_once(&*store, &retention, now).await.expect("purge");
    assert_eq!(report.aged, 0);
}

macro_rules! both {
    ($($case:ident),+ $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::with_sqlite(super::$case).await } )+ }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::with_postgres(super::$case).await } )+ }
    };
}

both!(
    age_rules_per_class_and_kind,
    a_pass_deletes_in_bounded_batches,
    an_event_past_its_rule_is_refused_at_publish
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_cap_evicts_oldest_of_what_may_go_and_keeps_forever_kinds() {
    with_sqlite(|store| async move {
        let filler = "x".repeat(2_000);
        let notes: Vec<Event> = (0..200)
            .map(|i| event(1, DAY + i, vec![], &filler))
            .collect();
        let reactions: Vec<Event> = (0..800)
            .map(|i| event(7, DAY + i, vec![], &filler))
            .collect();
        save(&*store, &notes).await;
        save(&*store, &reactions).await;
        let full = store
            .live_bytes()
            .await
            .expect("size")
            .expect("SQLite measures");
        let cap = full / 2;
        let mut config = RetentionConfig {
            // Finite but long: nothing is old enough, only the cap removes.
            regular: Keep::Seconds(365 * DAY),
            max_db_bytes: Some(cap),
            batch: 100,
            ..RetentionConfig::default()
        };
        config.kinds.insert(1, Keep::Forever);
        let report = purge_once(&*store, &config, NOW).await.expect("purge");
        assert_eq!(report.aged, 0);
        assert!(report.evicted > 0);
        let after = store.live_bytes().await.expect("size").expect("SQLite");
        assert!(after <= cap, "{after} > cap {cap}");
        assert_eq!(
            present(&*store, &notes, None).await.len(),
            notes.len(),
            "forever kinds stay"
        );
        let left = present(&*store, &reactions, None).await;
        assert!(!left.is_empty(), "only what was needed went");
        // Oldest first (reactions[0] is the newest): the newest survive.
        let expected: HashSet<EventId> = reactions[..left.len()].iter().map(|e| e.id).collect();
        assert_eq!(left, expected, "the newest reactions survive");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_size_cap() {
    with_postgres(|store| async move {
        let config = RetentionConfig {
            max_db_bytes: Some(1 << 30),
            ..RetentionConfig::default()
        };
        let err = cairn_relay::retention::check_supported(&*store, &config)
            .await
            .unwrap_err();
        assert!(err.contains("max_db_bytes"), "{err}");
    })
    .await;
}
