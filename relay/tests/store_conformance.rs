//! One conformance suite for every storage backend.
//!
//! Each `conformance!` case becomes `sqlite::<case>` (a fresh file in a
//! tempdir) and `postgres::<case>` (a fresh database on the server named by
//! `CAIRN_TEST_POSTGRES_URL`, dropped afterwards; skipped with a message when
//! the variable is unset).
//!
//! Run: `cargo test -p cairn-relay --test store_conformance`
//! (add `CAIRN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres`).
//! The 1M-event latency probe is `#[ignore]`d: see `latency_1m_sqlite`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_relay::store::{
    self, sqlite::SqliteStore, QueryContext, SaveOutcome, Store, StoredEvent, Writer,
};
use nostr::{
    Alphabet, Event, EventBuilder, EventId, Filter, Keys, Kind, PublicKey, SingleLetterTag, Tag,
    Timestamp,
};
use sqlx::Connection;

/// Upper bound for one test body, so a wedged database fails the test instead of hanging CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_LIMIT: usize = 500;

// ---------------------------------------------------------------- harness

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

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

/// Run `body` against a fresh SQLite store.
async fn with_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/nested/cairn.db", dir.path().display());
    let store = store::open(&url).await.expect("open sqlite");
    let result = tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(body(store.clone()))).await;
    store.close().await;
    match result {
        Err(_) => panic!("test timed out"),
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Ok(Ok(())) => {}
    }
}

/// Run `body` against a fresh Postgres database, or skip with a message.
async fn with_postgres<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_postgres_db(|store, _name| body(store)).await;
}

/// [`with_postgres`], also telling the body its database's name.
async fn with_postgres_db<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn Store>, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
        eprintln!("skipping Postgres: CAIRN_TEST_POSTGRES_URL not set");
        return;
    };
    let name = format!("cairn_test_{}", unique_suffix());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to CAIRN_TEST_POSTGRES_URL");
    // The name is generated above from digits and underscores only.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("CAIRN_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    let store = store::open(url.as_str()).await.expect("open postgres");
    let result = tokio::time::timeout(
        TEST_TIMEOUT,
        tokio::spawn(body(store.clone(), name.clone())),
    )
    .await;
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

macro_rules! conformance {
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

conformance!(
    duplicate_is_reported,
    every_filter_field,
    ordering_limit_and_ties,
    replaceable_keeps_newest,
    replaceable_tie_lowest_id_wins,
    addressable_keyed_by_d,
    delete_by_e_author_only,
    delete_by_e_before_event_arrives,
    deleting_a_deletion_has_no_effect,
    delete_by_a_author_only,
    deletion_with_many_tags,
    deletion_tombstones_are_its_own_tags,
    expiration_hidden_and_purged,
    private_kinds_need_a_viewer,
    count_or_of_filters,
    batch_outcomes_in_order,
    large_batch,
    writer_answers_every_caller,
    odd_tag_values,
    sync_items_are_what_query_sees,
);

// ---------------------------------------------------------------- helpers

fn ctx(viewers: &[&Keys]) -> QueryContext {
    QueryContext {
        viewers: viewers.iter().map(|k| k.public_key()).collect(),
        now: now(),
        max_limit: MAX_LIMIT,
    }
}

fn tag(parts: &[&str]) -> Tag {
    Tag::parse(parts.iter().copied()).expect("valid tag")
}

fn event(keys: &Keys, kind: u16, created_at: u64, tags: Vec<Tag>) -> Event {
    EventBuilder::new(Kind::from(kind), format!("kind {kind} at {created_at}"))
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .expect("sign")
}

async fn save(store: &Arc<dyn Store>, ev: &Event) -> SaveOutcome {
    let mut out = store
        .save_batch(std::slice::from_ref(ev))
        .await
        .expect("save_batch");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

async fn save_all(store: &Arc<dyn Store>, evs: &[Event]) {
    let out = store.save_batch(evs).await.expect("save_batch");
    assert!(out.iter().all(|o| *o == SaveOutcome::Stored), "{out:?}");
}

async fn query(store: &Arc<dyn Store>, filter: Filter, ctx: &QueryContext) -> Vec<StoredEvent> {
    store.query(&filter, ctx).await.expect("query")
}

/// Ids of the query result, in order.
async fn ids(store: &Arc<dyn Store>, filter: Filter, ctx: &QueryContext) -> Vec<EventId> {
    query(store, filter, ctx)
        .await
        .into_iter()
        .map(|e| EventId::from_byte_array(e.id))
        .collect()
}

fn id_list(evs: &[&Event]) -> Vec<EventId> {
    evs.iter().map(|e| e.id).collect()
}

fn p(letter: Alphabet) -> SingleLetterTag {
    SingleLetterTag::lowercase(letter)
}

const T0: u64 = 1_700_000_000;

// ---------------------------------------------------------------- cases

async fn duplicate_is_reported(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let ev = event(&keys, 1, T0, vec![]);
    assert_eq!(save(&store, &ev).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &ev).await, SaveOutcome::Duplicate);
    let got = query(&store, Filter::new().id(ev.id), &ctx(&[])).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json, nostr::JsonUtil::as_json(&ev));
    assert_eq!(got[0].created_at, T0);
    assert_eq!(got[0].kind, 1);
    // The stored JSON parses back to the same, verifiable event.
    let back: Event = nostr::JsonUtil::from_json(&got[0].json).expect("stored json parses");
    assert!(back.verify().is_ok());
    assert_eq!(back, ev);
}

async fn every_filter_field(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let bob = Keys::generate();
    let carol = Keys::generate();
    let a1 = event(&alice, 1, T0 + 1, vec![tag(&["t", "nostr"])]);
    let a2 = event(
        &alice,
        7,
        T0 + 2,
        vec![
            tag(&["e", &EventId::all_zeros().to_hex()]),
            tag(&["t", "rust"]),
        ],
    );
    let b1 = event(
        &bob,
        1,
        T0 + 3,
        vec![
            tag(&["p", &carol.public_key().to_hex()]),
            tag(&["t", "nostr"]),
        ],
    );
    let b2 = event(
        &bob,
        30_023,
        T0 + 4,
        vec![tag(&["d", "post"]), tag(&["T", "Upper"])],
    );
    let c1 = event(
        &carol,
        1,
        T0 + 5,
        vec![tag(&["t", "rust"]), tag(&["t", "nostr"])],
    );
    save_all(
        &store,
        &[a1.clone(), a2.clone(), b1.clone(), b2.clone(), c1.clone()],
    )
    .await;
    let cx = ctx(&[]);

    // No constraint: everything, newest first.
    assert_eq!(
        ids(&store, Filter::new(), &cx).await,
        id_list(&[&c1, &b2, &b1, &a2, &a1])
    );
    // ids
    assert_eq!(
        ids(&store, Filter::new().ids([a1.id, b2.id]), &cx).await,
        id_list(&[&b2, &a1])
    );
    // authors
    assert_eq!(
        ids(&store, Filter::new().author(alice.public_key()), &cx).await,
        id_list(&[&a2, &a1])
    );
    assert_eq!(
        ids(
            &store,
            Filter::new().authors([alice.public_key(), carol.public_key()]),
            &cx
        )
        .await,
        id_list(&[&c1, &a2, &a1])
    );
    // kinds
    assert_eq!(
        ids(&store, Filter::new().kind(Kind::from(1)), &cx).await,
        id_list(&[&c1, &b1, &a1])
    );
    assert_eq!(
        ids(
            &store,
            Filter::new().kinds([Kind::from(7), Kind::from(30_023)]),
            &cx
        )
        .await,
        id_list(&[&b2, &a2])
    );
    // authors AND kinds
    assert_eq!(
        ids(
            &store,
            Filter::new().author(bob.public_key()).kind(Kind::from(1)),
            &cx
        )
        .await,
        id_list(&[&b1])
    );
    // since / until are inclusive
    assert_eq!(
        ids(
            &store,
            Filter::new()
                .since(Timestamp::from(T0 + 2))
                .until(Timestamp::from(T0 + 4)),
            &cx
        )
        .await,
        id_list(&[&b2, &b1, &a2])
    );
    assert!(ids(
        &store,
        Filter::new()
            .since(Timestamp::from(T0 + 4))
            .until(Timestamp::from(T0 + 2)),
        &cx
    )
    .await
    .is_empty());
    // #t: OR within values
    assert_eq!(
        ids(&store, Filter::new().hashtag("nostr"), &cx).await,
        id_list(&[&c1, &b1, &a1])
    );
    assert_eq!(
        ids(&store, Filter::new().hashtags(["rust", "nostr"]), &cx).await,
        id_list(&[&c1, &b1, &a2, &a1])
    );
    // #t AND #p across letters; #t AND author; #t AND kind
    assert_eq!(
        ids(
            &store,
            Filter::new().hashtag("nostr").pubkey(carol.public_key()),
            &cx
        )
        .await,
        id_list(&[&b1])
    );
    assert_eq!(
        ids(
            &store,
            Filter::new()
                .hashtags(["rust", "nostr"])
                .author(alice.public_key()),
            &cx
        )
        .await,
        id_list(&[&a2, &a1])
    );
    assert_eq!(
        ids(
            &store,
            Filter::new().hashtag("rust").kind(Kind::from(7)),
            &cx
        )
        .await,
        id_list(&[&a2])
    );
    // Two multi-valued letters.
    assert_eq!(
        ids(
            &store,
            Filter::new()
                .hashtags(["rust", "nostr"])
                .custom_tags(p(Alphabet::P), [carol.public_key().to_hex(), "x".into()]),
            &cx
        )
        .await,
        id_list(&[&b1])
    );
    // #e, #d and an uppercase letter
    assert_eq!(
        ids(&store, Filter::new().event(EventId::all_zeros()), &cx).await,
        id_list(&[&a2])
    );
    assert_eq!(
        ids(&store, Filter::new().identifier("post"), &cx).await,
        id_list(&[&b2])
    );
    assert_eq!(
        ids(
            &store,
            Filter::new().custom_tag(SingleLetterTag::uppercase(Alphabet::T), "Upper"),
            &cx
        )
        .await,
        id_list(&[&b2])
    );
    assert!(ids(&store, Filter::new().hashtag("Upper"), &cx)
        .await
        .is_empty());
    // Values are matched exactly.
    assert!(ids(&store, Filter::new().hashtag("NOSTR"), &cx)
        .await
        .is_empty());
    // Multi-letter tags and non-first values are not indexed.
    // NIP-50 search is unsupported: matches nothing.
    assert!(ids(&store, Filter::new().search("kind"), &cx)
        .await
        .is_empty());
    // ids that do not exist
    assert!(ids(&store, Filter::new().id(EventId::all_zeros()), &cx)
        .await
        .is_empty());
}

async fn ordering_limit_and_ties(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let mut same_time: Vec<Event> = (0..5)
        .map(|i| event(&keys, 1, T0 + 10, vec![tag(&["t", &format!("n{i}")])]))
        .collect();
    let older = event(&keys, 1, T0, vec![]);
    let newer = event(&keys, 1, T0 + 20, vec![]);
    let mut all = same_time.clone();
    all.push(older.clone());
    all.push(newer.clone());
    save_all(&store, &all).await;
    same_time.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));

    let mut expected = vec![newer.id];
    expected.extend(same_time.iter().map(|e| e.id));
    expected.push(older.id);
    let cx = ctx(&[]);
    assert_eq!(ids(&store, Filter::new(), &cx).await, expected);
    // Same through the author and kind indexes.
    assert_eq!(
        ids(&store, Filter::new().author(keys.public_key()), &cx).await,
        expected
    );
    assert_eq!(
        ids(&store, Filter::new().kind(Kind::from(1)), &cx).await,
        expected
    );
    // Limit keeps the newest, ties by lowest id.
    assert_eq!(
        ids(&store, Filter::new().limit(3), &cx).await,
        expected[..3].to_vec()
    );
    assert!(ids(&store, Filter::new().limit(0), &cx).await.is_empty());
    // max_limit caps both a missing and a larger limit.
    let capped = QueryContext {
        max_limit: 2,
        ..ctx(&[])
    };
    assert_eq!(
        ids(&store, Filter::new(), &capped).await,
        expected[..2].to_vec()
    );
    assert_eq!(
        ids(&store, Filter::new().limit(100), &capped).await,
        expected[..2].to_vec()
    );
    // Tag-driven queries use the same order.
    let tagged: Vec<EventId> = same_time.iter().map(|e| e.id).collect();
    let filter = Filter::new().hashtags((0..5).map(|i| format!("n{i}")));
    assert_eq!(ids(&store, filter, &cx).await, tagged);
}

async fn replaceable_keeps_newest(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let v1 = event(&keys, 0, T0, vec![]);
    let v2 = event(&keys, 0, T0 + 10, vec![]);
    let v0 = event(&keys, 0, T0 - 10, vec![]);
    let other_kind = event(&keys, 10_002, T0, vec![]);
    assert_eq!(save(&store, &v1).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &other_kind).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &v2).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &v0).await, SaveOutcome::Superseded);
    // The replaced version is gone, not merely hidden; re-sending it is Superseded.
    assert_eq!(save(&store, &v1).await, SaveOutcome::Superseded);
    let cx = ctx(&[]);
    assert_eq!(
        ids(
            &store,
            Filter::new().author(keys.public_key()).kind(Kind::from(0)),
            &cx
        )
        .await,
        vec![v2.id]
    );
    assert_eq!(
        ids(&store, Filter::new().author(keys.public_key()), &cx).await,
        vec![v2.id, other_kind.id]
    );
    assert_eq!(store.count(&[Filter::new()], &cx).await.expect("count"), 2);
    // Another author's metadata is independent.
    let other = Keys::generate();
    assert_eq!(
        save(&store, &event(&other, 0, T0, vec![])).await,
        SaveOutcome::Stored
    );
    assert_eq!(
        store
            .count(&[Filter::new().kind(Kind::from(0))], &cx)
            .await
            .expect("count"),
        2
    );
}

async fn replaceable_tie_lowest_id_wins(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let a = event(
        &keys,
        3,
        T0,
        vec![tag(&["p", &Keys::generate().public_key().to_hex()])],
    );
    let b = event(
        &keys,
        3,
        T0,
        vec![tag(&["p", &Keys::generate().public_key().to_hex()])],
    );
    let (low, high) = if a.id.as_bytes() < b.id.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(save(&store, &high).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &low).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &high).await, SaveOutcome::Superseded);
    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().kind(Kind::from(3)), &cx).await,
        vec![low.id]
    );
    // The loser's tags went with it.
    let high_p = high.tags.public_keys().next().copied().expect("p tag");
    assert!(ids(&store, Filter::new().pubkey(high_p), &cx)
        .await
        .is_empty());
}

async fn addressable_keyed_by_d(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let a1 = event(&keys, 30_023, T0, vec![tag(&["d", "a"])]);
    let b1 = event(&keys, 30_023, T0, vec![tag(&["d", "b"])]);
    let a2 = event(&keys, 30_023, T0 + 5, vec![tag(&["d", "a"])]);
    let no_d = event(&keys, 30_023, T0, vec![]);
    let empty_d = event(&keys, 30_023, T0 + 1, vec![tag(&["d", ""])]);
    let other_author = event(&Keys::generate(), 30_023, T0, vec![tag(&["d", "a"])]);
    assert_eq!(save(&store, &a1).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &b1).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &a2).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &a1).await, SaveOutcome::Superseded);
    assert_eq!(save(&store, &other_author).await, SaveOutcome::Stored);
    // A missing `d` is the same address as an empty one.
    assert_eq!(save(&store, &no_d).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &empty_d).await, SaveOutcome::Stored);
    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().author(keys.public_key()), &cx).await,
        vec![a2.id, empty_d.id, b1.id]
    );
    assert_eq!(
        ids(&store, Filter::new().identifier("a"), &cx).await,
        vec![a2.id, other_author.id]
    );
}

async fn delete_by_e_author_only(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let mallory = Keys::generate();
    let note = event(&alice, 1, T0, vec![tag(&["t", "x"])]);
    let keep = event(&alice, 1, T0 + 1, vec![]);
    save_all(&store, &[note.clone(), keep.clone()]).await;

    // Someone else's deletion request is stored but deletes nothing.
    let forged = event(&mallory, 5, T0 + 2, vec![tag(&["e", &note.id.to_hex()])]);
    assert_eq!(save(&store, &forged).await, SaveOutcome::Stored);
    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().id(note.id), &cx).await,
        vec![note.id]
    );

    let deletion = event(&alice, 5, T0 + 3, vec![tag(&["e", &note.id.to_hex()])]);
    assert_eq!(save(&store, &deletion).await, SaveOutcome::Stored);
    assert!(ids(&store, Filter::new().id(note.id), &cx).await.is_empty());
    assert!(ids(&store, Filter::new().hashtag("x"), &cx)
        .await
        .is_empty());
    assert_eq!(
        ids(&store, Filter::new().id(keep.id), &cx).await,
        vec![keep.id]
    );
    // The deletion request itself is served.
    assert_eq!(
        ids(&store, Filter::new().kind(Kind::from(5)), &cx).await,
        vec![deletion.id, forged.id]
    );
    // It cannot come back.
    assert_eq!(save(&store, &note).await, SaveOutcome::Deleted);
}

async fn delete_by_e_before_event_arrives(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let note = event(&alice, 1, T0, vec![]);
    let deletion = event(&alice, 5, T0 + 1, vec![tag(&["e", &note.id.to_hex()])]);
    assert_eq!(save(&store, &deletion).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &note).await, SaveOutcome::Deleted);
    // A tombstone is per author: another author's event is unaffected by it,
    // and a deletion by a non-author records nothing that blocks the author.
    let bob = Keys::generate();
    let bob_note = event(&bob, 1, T0, vec![]);
    let mallory = Keys::generate();
    let forged = event(
        &mallory,
        5,
        T0 + 1,
        vec![tag(&["e", &bob_note.id.to_hex()])],
    );
    assert_eq!(save(&store, &forged).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &bob_note).await, SaveOutcome::Stored);
    assert!(ids(&store, Filter::new().id(note.id), &ctx(&[]))
        .await
        .is_empty());
}

async fn deleting_a_deletion_has_no_effect(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let note = event(&alice, 1, T0, vec![]);
    let deletion = event(&alice, 5, T0 + 1, vec![tag(&["e", &note.id.to_hex()])]);
    let undelete = event(&alice, 5, T0 + 2, vec![tag(&["e", &deletion.id.to_hex()])]);
    save_all(&store, &[note.clone(), deletion.clone()]).await;
    assert_eq!(save(&store, &undelete).await, SaveOutcome::Stored);
    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().kind(Kind::from(5)), &cx).await,
        vec![undelete.id, deletion.id]
    );
    assert_eq!(save(&store, &note).await, SaveOutcome::Deleted);

    // Even when the kind 5 arrives after a request to delete it.
    let late = event(&alice, 5, T0 + 3, vec![]);
    let pre = event(&alice, 5, T0 + 4, vec![tag(&["e", &late.id.to_hex()])]);
    assert_eq!(save(&store, &pre).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &late).await, SaveOutcome::Stored);
}

async fn delete_by_a_author_only(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let mallory = Keys::generate();
    let pk = alice.public_key().to_hex();
    let article = event(&alice, 30_023, T0, vec![tag(&["d", "post"])]);
    let other_d = event(&alice, 30_023, T0, vec![tag(&["d", "other"])]);
    let profile = event(&alice, 0, T0, vec![]);
    save_all(&store, &[article.clone(), other_d.clone(), profile.clone()]).await;
    let cx = ctx(&[]);

    // Mallory names Alice's coordinate: no effect.
    let forged = event(
        &mallory,
        5,
        T0 + 10,
        vec![
            tag(&["a", &format!("30023:{pk}:post")]),
            tag(&["a", &format!("0:{pk}:")]),
        ],
    );
    assert_eq!(save(&store, &forged).await, SaveOutcome::Stored);
    assert_eq!(
        ids(&store, Filter::new().author(alice.public_key()), &cx)
            .await
            .len(),
        3
    );

    let deletion = event(
        &alice,
        5,
        T0 + 10,
        vec![
            tag(&["a", &format!("30023:{pk}:post")]),
            tag(&["a", &format!("0:{pk}:")]),
        ],
    );
    assert_eq!(save(&store, &deletion).await, SaveOutcome::Stored);
    assert_eq!(
        ids(
            &store,
            Filter::new()
                .author(alice.public_key())
                .kind(Kind::from(30_023)),
            &cx
        )
        .await,
        vec![other_d.id]
    );
    assert!(ids(
        &store,
        Filter::new().author(alice.public_key()).kind(Kind::from(0)),
        &cx
    )
    .await
    .is_empty());

    // Versions up to the deletion's created_at are refused; newer ones are welcome.
    assert_eq!(save(&store, &article).await, SaveOutcome::Deleted);
    let same_second = event(&alice, 30_023, T0 + 10, vec![tag(&["d", "post"])]);
    assert_eq!(save(&store, &same_second).await, SaveOutcome::Deleted);
    let newer = event(&alice, 30_023, T0 + 11, vec![tag(&["d", "post"])]);
    assert_eq!(save(&store, &newer).await, SaveOutcome::Stored);
    let newer_profile = event(&alice, 0, T0 + 11, vec![]);
    assert_eq!(save(&store, &newer_profile).await, SaveOutcome::Stored);
    // An older deletion request does not lower the bar.
    let older_deletion = event(
        &alice,
        5,
        T0 + 5,
        vec![tag(&["a", &format!("30023:{pk}:post")])],
    );
    assert_eq!(save(&store, &older_deletion).await, SaveOutcome::Stored);
    assert_eq!(save(&store, &same_second).await, SaveOutcome::Deleted);
    assert_eq!(
        ids(&store, Filter::new().identifier("post"), &cx).await,
        vec![newer.id]
    );
}

/// NIP-09 at the size of `max_event_tags`: one kind 5 with 2,500 tags
/// (more targets than one statement's chunk) deletes exactly the author's
/// own events it names by `e` and `a`, tombstones the rest (so they cannot
/// arrive later), leaves other authors' events alone, and is itself found by
/// `#e` on any of its targets.
async fn deletion_with_many_tags(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let bob = Keys::generate();
    let pk = alice.public_key().to_hex();
    let bob_pk = bob.public_key().to_hex();
    let mine: Vec<Event> = (0..700)
        .map(|i| event(&alice, 1, T0 + i, vec![tag(&["t", "mine"])]))
        .collect();
    let theirs: Vec<Event> = (0..300)
        .map(|i| event(&bob, 1, T0 + i, vec![tag(&["t", "theirs"])]))
        .collect();
    let articles: Vec<Event> = (0..20)
        .map(|i| event(&alice, 30_023, T0, vec![tag(&["d", &format!("a{i}")])]))
        .collect();
    let bob_article = event(&bob, 30_023, T0, vec![tag(&["d", "a0"])]);
    // Alice's notes not stored yet: named now, refused when they arrive.
    let later: Vec<Event> = (0..100)
        .map(|i| event(&alice, 1, T0 + 10_000 + i, vec![]))
        .collect();
    let kept = event(&alice, 1, T0 + 20_000, vec![tag(&["t", "mine"])]);
    save_all(&store, &mine).await;
    save_all(&store, &theirs).await;
    save_all(&store, &articles).await;
    save_all(&store, &[bob_article.clone(), kept.clone()]).await;

    let mut tags: Vec<Tag> = Vec::new();
    tags.extend(mine.iter().map(|e| Tag::event(e.id)));
    tags.extend(theirs.iter().map(|e| Tag::event(e.id)));
    tags.extend(later.iter().map(|e| Tag::event(e.id)));
    // Some twice.
    tags.extend(mine.iter().take(50).map(|e| Tag::event(e.id)));
    tags.extend((0..20).map(|i| tag(&["a", &format!("30023:{pk}:a{i}")])));
    tags.push(tag(&["a", &format!("30023:{bob_pk}:a0")]));
    let mut n = 0u64;
    while tags.len() < 2_500 {
        let mut id = [0xeeu8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        tags.push(Tag::event(EventId::from_byte_array(id)));
        n += 1;
    }
    let deletion = event(&alice, 5, T0 + 15_000, tags);
    // In one batch with events before and after it.
    let note_before = event(&alice, 1, T0 + 14_000, vec![]);
    let out = store
        .save_batch(&[
            note_before.clone(),
            deletion.clone(),
            mine[3].clone(),
            later[0].clone(),
            theirs[0].clone(),
        ])
        .await
        .expect("save_batch");
    assert_eq!(
        out,
        vec![
            SaveOutcome::Stored,
            SaveOutcome::Stored,
            SaveOutcome::Deleted,
            SaveOutcome::Deleted,
            SaveOutcome::Duplicate,
        ]
    );

    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().hashtag("mine"), &cx).await,
        vec![kept.id],
        "every named note of Alice's is gone, the unnamed one stays"
    );
    assert_eq!(
        store
            .count(&[Filter::new().hashtag("theirs")], &cx)
            .await
            .expect("count"),
        300,
        "Bob's notes are not Alice's to delete"
    );
    assert_eq!(
        ids(
            &store,
            Filter::new()
                .author(alice.public_key())
                .kind(Kind::from(30_023)),
            &cx
        )
        .await,
        Vec::<EventId>::new()
    );
    assert_eq!(
        ids(&store, Filter::new().kind(Kind::from(30_023)), &cx).await,
        vec![bob_article.id]
    );
    // Tombstones for every target, stored or not.
    for ev in [&mine[0], &mine[699], &later[1], &later[99], &articles[5]] {
        assert_eq!(save(&store, ev).await, SaveOutcome::Deleted, "{}", ev.id);
    }
    assert_eq!(save(&store, &theirs[1]).await, SaveOutcome::Duplicate);
    let bob_new = event(&bob, 1, T0 + 30_000, vec![]);
    assert_eq!(save(&store, &bob_new).await, SaveOutcome::Stored);
    // The request is served, found by any of its targets.
    for target in [mine[10].id, theirs[10].id, later[50].id] {
        assert_eq!(
            ids(&store, Filter::new().kind(Kind::from(5)).event(target), &cx).await,
            vec![deletion.id]
        );
    }
    assert_eq!(
        ids(&store, Filter::new().id(note_before.id), &cx).await,
        vec![note_before.id]
    );
}

/// Rows in `deleted_ids` (white-box: the table of tombstones that have no
/// kind 5 `e` tag row to stand for them).
async fn tombstone_rows(store: &Arc<dyn Store>) -> i64 {
    let sql = "SELECT COUNT(*) FROM deleted_ids";
    match store.database().expect("a database") {
        store::Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(&pool).await,
        store::Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(&pool).await,
    }
    .expect("count deleted_ids")
}

/// Record a tombstone the way stores before the tags-held tombstones did.
async fn legacy_tombstone(store: &Arc<dyn Store>, id: EventId, author: &Keys) {
    let (id, pubkey) = (
        id.as_bytes().to_vec(),
        author.public_key().to_bytes().to_vec(),
    );
    match store.database().expect("a database") {
        store::Database::Sqlite(pool) => {
            sqlx::query("INSERT INTO deleted_ids (id, pubkey) VALUES (?, ?)")
                .bind(id)
                .bind(pubkey)
                .execute(&pool)
                .await
                .map(|_| ())
        }
        store::Database::Postgres(pool) => {
            sqlx::query("INSERT INTO deleted_ids (id, pubkey) VALUES ($1, $2)")
                .bind(id)
                .bind(pubkey)
                .execute(&pool)
                .await
                .map(|_| ())
        }
    }
    .expect("insert legacy tombstone");
}

/// A kind 5's `e` tags in lowercase hex are its tombstones: no second row
/// per target (half the index rows a large deletion writes), yet every
/// target stays refused, through the batch path (notes) and the one-by-one
/// path (replaceable kinds) alike. An id spelled only in uppercase still
/// gets a row; rows written by earlier versions are still honoured; and a
/// deletion request that expires leaves its tombstones behind.
async fn deletion_tombstones_are_its_own_tags(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let t = now();
    let stored = event(&alice, 1, t - 100, vec![]);
    let profile = event(&alice, 0, t - 100, vec![]);
    let unseen = event(&alice, 1, t - 99, vec![]);
    let upper = event(&alice, 1, t - 98, vec![]);
    let both = event(&alice, 1, t - 97, vec![]);
    save_all(&store, &[stored.clone(), profile.clone()]).await;
    let mut tags: Vec<Tag> = [&stored, &profile, &unseen, &both]
        .iter()
        .map(|e| Tag::event(e.id))
        .collect();
    tags.push(tag(&["e", &upper.id.to_hex().to_uppercase()]));
    tags.push(tag(&["e", &both.id.to_hex().to_uppercase()]));
    let deletion = event(&alice, 5, t - 90, tags);
    assert_eq!(save(&store, &deletion).await, SaveOutcome::Stored);
    assert_eq!(
        tombstone_rows(&store).await,
        1,
        "only the id never named in lowercase hex needs a row"
    );
    for ev in [&stored, &profile, &unseen, &upper, &both] {
        assert_eq!(save(&store, ev).await, SaveOutcome::Deleted, "{}", ev.id);
    }
    // A row from before this layout still blocks.
    let old = event(&alice, 1, t - 70, vec![]);
    legacy_tombstone(&store, old.id, &alice).await;
    assert_eq!(save(&store, &old).await, SaveOutcome::Deleted);

    // An expiring deletion request: once purged, its targets stay refused.
    let article = event(&alice, 30_023, t - 60, vec![tag(&["d", "x"])]);
    let note = event(&alice, 1, t - 60, vec![]);
    let expiring = event(
        &alice,
        5,
        t - 50,
        vec![
            Tag::event(article.id),
            Tag::event(note.id),
            tag(&["expiration", &(t + 100).to_string()]),
        ],
    );
    assert_eq!(save(&store, &expiring).await, SaveOutcome::Stored);
    let before = tombstone_rows(&store).await;
    assert_eq!(store.purge_expired(t + 100).await.expect("purge"), 1);
    assert!(ids(&store, Filter::new().id(expiring.id), &ctx(&[]))
        .await
        .is_empty());
    assert_eq!(tombstone_rows(&store).await, before + 2);
    assert_eq!(save(&store, &article).await, SaveOutcome::Deleted);
    assert_eq!(save(&store, &note).await, SaveOutcome::Deleted);
}

async fn expiration_hidden_and_purged(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let t = now();
    let soon = event(
        &keys,
        1,
        t - 10,
        vec![tag(&["expiration", &(t + 100).to_string()])],
    );
    let later = event(
        &keys,
        1,
        t - 9,
        vec![tag(&["expiration", &(t + 1000).to_string()])],
    );
    let never = event(&keys, 1, t - 8, vec![]);
    let malformed = event(&keys, 1, t - 7, vec![tag(&["expiration", "soon"])]);
    save_all(
        &store,
        &[
            soon.clone(),
            later.clone(),
            never.clone(),
            malformed.clone(),
        ],
    )
    .await;

    let at = |now: u64| QueryContext { now, ..ctx(&[]) };
    assert_eq!(
        ids(&store, Filter::new(), &at(t)).await,
        vec![malformed.id, never.id, later.id, soon.id]
    );
    // Hidden from the second of expiry on, for queries and counts alike.
    assert_eq!(
        ids(&store, Filter::new(), &at(t + 100)).await,
        vec![malformed.id, never.id, later.id]
    );
    assert_eq!(
        store
            .count(&[Filter::new()], &at(t + 100))
            .await
            .expect("count"),
        3
    );
    assert_eq!(store.purge_expired(t + 99).await.expect("purge"), 0);
    assert_eq!(store.purge_expired(t + 100).await.expect("purge"), 1);
    assert_eq!(
        store.count(&[Filter::new()], &at(t)).await.expect("count"),
        3
    );
    assert_eq!(store.purge_expired(t + 5000).await.expect("purge"), 1);
    assert_eq!(
        ids(&store, Filter::new(), &at(t)).await,
        vec![malformed.id, never.id]
    );
}

async fn private_kinds_need_a_viewer(store: Arc<dyn Store>) {
    let sender = Keys::generate();
    let recipient = Keys::generate();
    let stranger = Keys::generate();
    let rp = recipient.public_key().to_hex();
    let wrap_author = Keys::generate(); // gift wraps are signed by one-time keys
    let wrap = event(&wrap_author, 1059, T0, vec![tag(&["p", &rp])]);
    let dm = event(&sender, 4, T0 + 1, vec![tag(&["p", &rp])]);
    let public = event(&sender, 1, T0 + 2, vec![tag(&["p", &rp])]);
    save_all(&store, &[wrap.clone(), dm.clone(), public.clone()]).await;

    let by_p = || Filter::new().pubkey(recipient.public_key());
    let by_kinds = || Filter::new().kinds([Kind::from(4), Kind::from(1059)]);

    for filter in [by_p(), by_kinds(), Filter::new()] {
        // No viewer: none of the private kinds, even without `kinds` in the filter.
        let got = ids(&store, filter.clone(), &ctx(&[])).await;
        assert!(
            !got.contains(&wrap.id) && !got.contains(&dm.id),
            "{filter:?}"
        );
        // Wrong viewer.
        let got = ids(&store, filter.clone(), &ctx(&[&stranger])).await;
        assert!(
            !got.contains(&wrap.id) && !got.contains(&dm.id),
            "{filter:?}"
        );
        // The recipient sees both.
        let got = ids(&store, filter.clone(), &ctx(&[&stranger, &recipient])).await;
        assert!(got.contains(&wrap.id) && got.contains(&dm.id), "{filter:?}");
        // The author of a kind 4 sees it; the author of a gift wrap does not.
        let got = ids(&store, filter.clone(), &ctx(&[&sender, &wrap_author])).await;
        assert!(
            !got.contains(&wrap.id) && got.contains(&dm.id),
            "{filter:?}"
        );
    }
    assert_eq!(ids(&store, by_p(), &ctx(&[])).await, vec![public.id]);
    // Limit counts visible rows only.
    assert_eq!(
        ids(&store, by_p().limit(1), &ctx(&[])).await,
        vec![public.id]
    );
    assert_eq!(
        ids(&store, by_p(), &ctx(&[&recipient])).await,
        vec![public.id, dm.id, wrap.id]
    );

    // COUNT applies the same rule.
    let count = |viewers: Vec<&Keys>| {
        let store = store.clone();
        let cx = ctx(&viewers);
        async move {
            store
                .count(&[by_p(), by_kinds()], &cx)
                .await
                .expect("count")
        }
    };
    assert_eq!(count(vec![]).await, 1);
    assert_eq!(count(vec![&stranger]).await, 1);
    assert_eq!(count(vec![&recipient]).await, 3);
    assert_eq!(count(vec![&sender]).await, 2);
}

async fn count_or_of_filters(store: Arc<dyn Store>) {
    let alice = Keys::generate();
    let bob = Keys::generate();
    let evs: Vec<Event> = (0..4)
        .map(|i| event(&alice, 1, T0 + i, vec![tag(&["t", "x"])]))
        .chain((0..3).map(|i| event(&bob, 7, T0 + i, vec![])))
        .collect();
    save_all(&store, &evs).await;
    let cx = ctx(&[]);
    let count = |filters: Vec<Filter>| {
        let store = store.clone();
        let cx = cx.clone();
        async move { store.count(&filters, &cx).await.expect("count") }
    };
    assert_eq!(count(vec![Filter::new()]).await, 7);
    assert_eq!(
        count(vec![Filter::new().author(alice.public_key())]).await,
        4
    );
    // Overlapping filters count each event once.
    assert_eq!(
        count(vec![
            Filter::new().author(alice.public_key()),
            Filter::new().hashtag("x"),
            Filter::new().kind(Kind::from(7)),
        ])
        .await,
        7
    );
    // limit does not cap a count.
    assert_eq!(count(vec![Filter::new().limit(1)]).await, 7);
    assert_eq!(count(vec![Filter::new().search("x")]).await, 0);
    assert_eq!(count(vec![]).await, 0);
    assert_eq!(
        count(vec![Filter::new().since(Timestamp::from(T0 + 2))]).await,
        3
    );
}

async fn batch_outcomes_in_order(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let note = event(&keys, 1, T0, vec![]);
    let old_profile = event(&keys, 0, T0, vec![]);
    let new_profile = event(&keys, 0, T0 + 1, vec![]);
    let deletion = event(&keys, 5, T0 + 2, vec![tag(&["e", &note.id.to_hex()])]);
    let batch = vec![
        note.clone(),
        note.clone(),
        new_profile.clone(),
        old_profile.clone(),
        deletion.clone(),
        note.clone(),
    ];
    let out = store.save_batch(&batch).await.expect("save_batch");
    assert_eq!(
        out,
        vec![
            SaveOutcome::Stored,
            SaveOutcome::Duplicate,
            SaveOutcome::Stored,
            SaveOutcome::Superseded,
            SaveOutcome::Stored,
            // Stored earlier in the batch, then deleted: the duplicate check
            // finds nothing, the tombstone refuses it.
            SaveOutcome::Deleted,
        ]
    );
    assert!(store.save_batch(&[]).await.expect("empty batch").is_empty());

    // Against events stored by earlier batches: a duplicate, a deletion of
    // an already stored event and its re-send, a pre-emptive deletion.
    let stored_before = event(&keys, 1, T0 + 3, vec![tag(&["t", "before"])]);
    save_all(&store, std::slice::from_ref(&stored_before)).await;
    let future_note = event(&keys, 1, T0 + 4, vec![]);
    let second_deletion = event(
        &keys,
        5,
        T0 + 5,
        vec![
            tag(&["e", &stored_before.id.to_hex()]),
            tag(&["e", &future_note.id.to_hex()]),
        ],
    );
    let fresh = event(&keys, 1, T0 + 6, vec![]);
    let out = store
        .save_batch(&[
            stored_before.clone(),
            fresh.clone(),
            second_deletion.clone(),
            stored_before.clone(),
            future_note.clone(),
            fresh.clone(),
        ])
        .await
        .expect("save_batch");
    assert_eq!(
        out,
        vec![
            SaveOutcome::Duplicate,
            SaveOutcome::Stored,
            SaveOutcome::Stored,
            SaveOutcome::Deleted,
            SaveOutcome::Deleted,
            SaveOutcome::Duplicate,
        ]
    );
    assert!(ids(&store, Filter::new().hashtag("before"), &ctx(&[]))
        .await
        .is_empty());
    assert_eq!(
        ids(&store, Filter::new().id(fresh.id), &ctx(&[])).await,
        vec![fresh.id]
    );
    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().author(keys.public_key()), &cx).await,
        vec![fresh.id, second_deletion.id, deletion.id, new_profile.id]
    );
}

async fn large_batch(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let target = Keys::generate().public_key();
    let events: Vec<Event> = (0..1200)
        .map(|i| {
            let mut tags = vec![tag(&["p", &target.to_hex()])];
            // A contact-list-sized tag set on some events.
            if i % 400 == 0 {
                tags.extend((0..1500).map(|j| tag(&["t", &format!("t{j}")])));
            }
            event(&keys, 1, T0 + i, tags)
        })
        .collect();
    save_all(&store, &events).await;
    let cx = ctx(&[]);
    assert_eq!(
        store.count(&[Filter::new()], &cx).await.expect("count"),
        1200
    );
    assert_eq!(
        store
            .count(&[Filter::new().pubkey(target)], &cx)
            .await
            .expect("count"),
        1200
    );
    assert_eq!(
        ids(&store, Filter::new().hashtag("t1499"), &cx).await,
        vec![events[800].id, events[400].id, events[0].id]
    );
    let newest = ids(&store, Filter::new().pubkey(target).limit(2), &cx).await;
    assert_eq!(newest, vec![events[1199].id, events[1198].id]);
}

/// Delegates to a real store and records each batch's size and commit time.
#[derive(Debug)]
struct RecordingStore {
    inner: Arc<dyn Store>,
    batches: std::sync::Mutex<Vec<usize>>,
    commit_times: std::sync::Mutex<Vec<Duration>>,
}

#[async_trait::async_trait]
impl Store for RecordingStore {
    async fn save_batch(&self, events: &[Event]) -> Result<Vec<SaveOutcome>, store::StoreError> {
        self.batches.lock().expect("lock").push(events.len());
        let started = Instant::now();
        let result = self.inner.save_batch(events).await;
        self.commit_times
            .lock()
            .expect("lock")
            .push(started.elapsed());
        result
    }
    async fn query(
        &self,
        filter: &Filter,
        ctx: &QueryContext,
    ) -> Result<Vec<StoredEvent>, store::StoreError> {
        self.inner.query(filter, ctx).await
    }
    async fn count(
        &self,
        filters: &[Filter],
        ctx: &QueryContext,
    ) -> Result<u64, store::StoreError> {
        self.inner.count(filters, ctx).await
    }
    async fn purge_expired(&self, now: u64) -> Result<u64, store::StoreError> {
        self.inner.purge_expired(now).await
    }
    async fn ping(&self) -> Result<(), store::StoreError> {
        self.inner.ping().await
    }
    async fn close(&self) {}
}

async fn writer_answers_every_caller(store: Arc<dyn Store>) {
    const MAX_BATCH: usize = 64;
    let recording = Arc::new(RecordingStore {
        inner: store.clone(),
        batches: Default::default(),
        commit_times: Default::default(),
    });
    let (writer, task) = Writer::spawn(recording.clone(), MAX_BATCH);
    let keys = Keys::generate();
    let events: Vec<Event> = (0..300).map(|i| event(&keys, 1, T0 + i, vec![])).collect();
    assert_eq!(
        writer.save(events[0].clone()).await.expect("save"),
        SaveOutcome::Stored
    );
    let mut joins = Vec::new();
    for ev in events
        .iter()
        .skip(1)
        .chain(std::iter::once(&events[0]))
        .cloned()
    {
        let writer = writer.clone();
        joins.push(tokio::spawn(async move { writer.save(ev).await }));
    }
    let outcomes: Vec<SaveOutcome> = futures::future::join_all(joins)
        .await
        .into_iter()
        .map(|r| r.expect("join").expect("save"))
        .collect();
    assert!(outcomes[..299].iter().all(|o| *o == SaveOutcome::Stored));
    assert_eq!(outcomes[299], SaveOutcome::Duplicate);

    // Callers queued while a batch commits are grouped into the next one.
    let batches = recording.batches.lock().expect("lock").clone();
    assert_eq!(batches.iter().sum::<usize>(), 301);
    assert!(
        batches.iter().all(|&n| (1..=MAX_BATCH).contains(&n)),
        "{batches:?}"
    );
    assert!(batches.len() < 301, "no batching happened: {batches:?}");

    drop(writer);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("writer task ends when all handles are dropped")
        .expect("writer task did not panic");
    assert_eq!(
        store
            .count(&[Filter::new()], &ctx(&[]))
            .await
            .expect("count"),
        300
    );
}

/// Saves already queued when the last handle is dropped are still committed.
#[tokio::test]
async fn writer_drains_queue_on_shutdown() {
    let store = SqliteStore::open("sqlite::memory:").await.expect("open");
    let store: Arc<dyn Store> = Arc::new(store);
    let (writer, task) = Writer::spawn(store.clone(), 8);
    let keys = Keys::generate();
    let mut joins = Vec::new();
    for i in 0..50 {
        let writer = writer.clone();
        let ev = event(&keys, 1, T0 + i, vec![]);
        joins.push(tokio::spawn(async move { writer.save(ev).await }));
    }
    drop(writer);
    for join in joins {
        assert_eq!(
            join.await.expect("join").expect("save"),
            SaveOutcome::Stored
        );
    }
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task ends")
        .expect("no panic");
    assert_eq!(
        store
            .count(&[Filter::new()], &ctx(&[]))
            .await
            .expect("count"),
        50
    );
}

/// A failed batch reaches every caller in it as an error, and the writer keeps going.
#[tokio::test]
async fn writer_reports_batch_errors_to_every_caller() {
    let store = SqliteStore::open("sqlite::memory:").await.expect("open");
    let store: Arc<dyn Store> = Arc::new(store);
    let (writer, task) = Writer::spawn(store.clone(), 8);
    store.close().await;
    let keys = Keys::generate();
    let results =
        futures::future::join_all((0..5).map(|i| writer.save(event(&keys, 1, T0 + i, vec![]))))
            .await;
    for result in results {
        let err = result.expect_err("store is closed");
        assert!(
            matches!(err.root(), store::StoreError::Database(_)),
            "{err:?}"
        );
    }
    drop(writer);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task ends")
        .expect("no panic");
}

async fn odd_tag_values(store: Arc<dyn Store>) {
    let keys = Keys::generate();
    let long = "L".repeat(5000);
    let long2 = format!("{}M", "L".repeat(4999));
    let nul = "a\0b".to_string();
    let ev = event(
        &keys,
        1,
        T0,
        vec![
            tag(&["t", &long]),
            tag(&["t", &nul]),
            tag(&["t", "dup"]),
            tag(&["t", "dup"]),
            tag(&["r", "ünïcødé ✓"]),
        ],
    );
    let addr = event(&keys, 30_000, T0, vec![tag(&["d", &long])]);
    let addr2 = event(&keys, 30_000, T0 + 1, vec![tag(&["d", &long2])]);
    save_all(&store, &[ev.clone(), addr.clone(), addr2.clone()]).await;
    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().hashtag(&long), &cx).await,
        vec![ev.id]
    );
    assert!(ids(&store, Filter::new().hashtag(&long2), &cx)
        .await
        .is_empty());
    assert_eq!(
        ids(&store, Filter::new().hashtag(&nul), &cx).await,
        vec![ev.id]
    );
    // A repeated tag does not repeat the event.
    assert_eq!(
        ids(&store, Filter::new().hashtag("dup"), &cx).await,
        vec![ev.id]
    );
    assert_eq!(
        ids(
            &store,
            Filter::new().custom_tag(p(Alphabet::R), "ünïcødé ✓"),
            &cx
        )
        .await,
        vec![ev.id]
    );
    // Long `d` tags stay distinct addresses.
    assert_eq!(
        ids(&store, Filter::new().kind(Kind::from(30_000)), &cx).await,
        vec![addr2.id, addr.id]
    );
    assert_eq!(
        ids(&store, Filter::new().identifier(&long), &cx).await,
        vec![addr.id]
    );
}

// ---------------------------------------------------------------- SQLite only

#[tokio::test]
async fn sqlite_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/data/cairn.db", dir.path().display());
    let keys = Keys::generate();
    let note = event(&keys, 1, T0, vec![tag(&["t", "kept"])]);
    let deleted = event(&keys, 1, T0 + 1, vec![]);
    let deletion = event(&keys, 5, T0 + 2, vec![tag(&["e", &deleted.id.to_hex()])]);
    {
        let store = store::open(&url).await.expect("open");
        save_all(&store, &[note.clone(), deleted.clone(), deletion.clone()]).await;
        store.close().await;
    }
    assert!(dir.path().join("data/cairn.db").exists());
    let store = store::open(&url).await.expect("reopen");
    let cx = ctx(&[]);
    assert_eq!(
        ids(&store, Filter::new().hashtag("kept"), &cx).await,
        vec![note.id]
    );
    assert_eq!(save(&store, &deleted).await, SaveOutcome::Deleted);
    assert_eq!(save(&store, &note).await, SaveOutcome::Duplicate);
    store.close().await;
}

/// The writer does not checkpoint; the background task must, or the WAL
/// would grow without bound and the database file would never be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_in_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cairn.db");
    let store = store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("open");
    let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let keys = Keys::generate();
    let events: Vec<Event> = (0..500)
        .map(|i| event(&keys, 1, T0 + i, vec![tag(&["t", "wal"])]))
        .collect();
    save_all(&store, &events).await;
    let wal = std::fs::metadata(dir.path().join("cairn.db-wal"))
        .expect("WAL file exists")
        .len();
    assert!(wal > 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while size() <= before {
        assert!(Instant::now() < deadline, "no checkpoint within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await;
}

/// A generous bound on what one writer batch (at most `DEFAULT_MAX_BATCH` =
/// 512 events of this test's size, with their tag and index rows) adds to
/// the WAL: 256 pages of 4 KiB. Seen under load: 243 KB past the limit.
const ONE_BATCH_OF_PAGES: u64 = 256 * 4096;

/// Under sustained writes with readers on the log all the while, PASSIVE
/// checkpoints alone never let the WAL start over (it grew to 29 GB at 1M
/// events); the writer must restart it between batches, keep the file within
/// `journal_size_limit`, and leave it empty once writes stop. Small limits
/// stand in for the defaults so that a few seconds of writes cross them many
/// times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_bounded_under_sustained_writes_and_empties_when_idle() {
    const WRITERS: usize = 8;
    const EVENTS_PER_WRITER: usize = 2_000;
    let config = store::sqlite::WalConfig {
        size_limit: 4 << 20,
        restart_at: 512 << 10,
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cairn.db");
    let wal_file = dir.path().join("cairn.db-wal");
    let sqlite = SqliteStore::open_with(&format!("sqlite://{}", db.display()), config)
        .await
        .expect("open");
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let (writer, writer_task) = Writer::spawn(Arc::clone(&store), store::DEFAULT_MAX_BATCH);

    let batches: Vec<Vec<Event>> = (0..WRITERS)
        .map(|w| {
            let keys = Keys::generate();
            (0..EVENTS_PER_WRITER)
                .map(|i| {
                    let at = T0 + (w * EVENTS_PER_WRITER + i) as u64;
                    let topic = format!("topic{}", i % 97);
                    event(&keys, 1, at, vec![tag(&["t", &topic])])
                })
                .collect()
        })
        .collect();

    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let wal_size = {
        let wal_file = wal_file.clone();
        move || std::fs::metadata(&wal_file).map(|m| m.len()).unwrap_or(0)
    };
    let sampler = tokio::spawn({
        let writing = Arc::clone(&writing);
        let wal_size = wal_size.clone();
        async move {
            let mut largest = 0;
            while writing.load(Ordering::Relaxed) {
                largest = largest.max(wal_size());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            largest
        }
    });
    // Readers keep snapshots on the log the whole time, as REQs do.
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let store = Arc::clone(&store);
            let writing = Arc::clone(&writing);
            tokio::spawn(async move {
                let cx = ctx(&[]);
                let mut queries = 0u64;
                while writing.load(Ordering::Relaxed) {
                    let filter = Filter::new().hashtag(format!("topic{}", (queries + r) % 97));
                    store.query(&filter.limit(50), &cx).await.expect("query");
                    queries += 1;
                }
                queries
            })
        })
        .collect();

    let work = async {
        let writers: Vec<_> = batches
            .into_iter()
            .map(|events| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for ev in events {
                        assert_eq!(writer.save(ev).await.expect("save"), SaveOutcome::Stored);
                    }
                })
            })
            .collect();
        for task in writers {
            task.await.expect("writer task");
        }
    };
    tokio::time::timeout(Duration::from_secs(300), work)
        .await
        .expect("writes finish within 5 min");
    writing.store(false, Ordering::Relaxed);
    let largest = sampler.await.expect("sampler");
    for reader in readers {
        assert!(
            reader.await.expect("reader") > 0,
            "readers ran during the writes"
        );
    }

    let database = std::fs::metadata(&db).expect("database file").len();
    // PASSIVE checkpoints alone leave about four times the database's size in
    // the WAL here; bounding it means something only once the data outgrows it.
    assert!(
        database > 2 * config.size_limit,
        "the writes ({database} bytes in the database) outgrew the WAL limit"
    );
    // The writer checks the WAL between batches, so the file may pass the
    // limit by what one batch writes before the writer restarts the log:
    // that is the bound the design gives (on a loaded machine the
    // checkpointer falls behind and the writer's check is what holds).
    let bound = config.size_limit + ONE_BATCH_OF_PAGES;
    assert!(
        largest <= bound,
        "WAL reached {largest} bytes, over the {} byte limit plus one batch",
        config.size_limit
    );
    assert!(wal_size() <= bound);

    // Idle: the writer truncates the log to nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while wal_size() > 0 {
        assert!(
            Instant::now() < deadline,
            "WAL still {} bytes 20 s after the last write",
            wal_size()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cx = ctx(&[]);
    let stored = store
        .count(&[Filter::new().kind(Kind::TextNote)], &cx)
        .await
        .expect("count");
    assert_eq!(stored, (WRITERS * EVENTS_PER_WRITER) as u64);

    drop(writer);
    writer_task.await.expect("writer drains");
    store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = SqliteStore::open("sqlite::memory:").await.expect("open");
    let store: Arc<dyn Store> = Arc::new(store);
    let keys = Keys::generate();
    let note = event(&keys, 1, T0, vec![]);
    assert_eq!(save(&store, &note).await, SaveOutcome::Stored);
    assert_eq!(ids(&store, Filter::new(), &ctx(&[])).await, vec![note.id]);
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn unsupported_url_names_only_the_scheme() {
    let err = store::open("mysql://user:secret@host/db")
        .await
        .expect_err("mysql is not supported");
    let message = err.to_string();
    assert!(message.contains("mysql"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

// ---------------------------------------------------------------- Postgres only

/// Connections killed under the pool (as when the server restarts) surface as
/// errors at worst, and the pool serves again right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_recovers_from_dropped_connections() {
    with_postgres_db(|store, db_name| async move {
        let keys = Keys::generate();
        save_all(&store, &[event(&keys, 1, T0, vec![])]).await;
        let admin_url = std::env::var("CAIRN_TEST_POSTGRES_URL").expect("set when running");
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("admin");
        let ours: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&db_name)
        .fetch_all(&mut admin)
        .await
        .expect("terminate");
        admin.close().await.expect("close admin");
        assert!(
            !ours.is_empty(),
            "the store had open connections to terminate"
        );
        // Some calls may fail while the pool notices; none may hang or panic,
        // and within a few tries everything works again.
        let mut recovered = false;
        for _ in 0..20 {
            if store.ping().await.is_ok()
                && store.count(&[Filter::new()], &ctx(&[])).await.ok() == Some(1)
            {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(recovered, "store did not recover");
        let second = event(&keys, 1, T0 + 1, vec![]);
        assert_eq!(save(&store, &second).await, SaveOutcome::Stored);
    })
    .await;
}

// ---------------------------------------------------------------- latency probe

/// Seeds 1,000,000 events into a SQLite file and prints p50/p99 for author,
/// kind and `#p` queries (limit 500, like a typical client REQ). Not a test:
/// `cargo test --release -p cairn-relay --test store_conformance -- --ignored --nocapture latency_1m`.
/// Set `CAIRN_LATENCY_DB=/path/file.db` to keep and reuse the seeded file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "seeds 1M events; a benchmark, not a test"]
async fn latency_1m_sqlite() {
    const EVENTS: u64 = 1_000_000;
    const AUTHORS: usize = 1000;
    const QUERIES: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = std::env::var("CAIRN_LATENCY_DB")
        .unwrap_or_else(|_| dir.path().join("latency.db").display().to_string());
    let sqlite = SqliteStore::open(&format!("sqlite://{path}"))
        .await
        .expect("open");
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    let authors: Vec<Keys> = (0..AUTHORS)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            Keys::new(nostr::SecretKey::from_slice(&secret).expect("secret"))
        })
        .collect();
    let pubkeys: Vec<PublicKey> = authors.iter().map(|k| k.public_key()).collect();
    let kinds = [1u16, 7, 6, 1, 1, 30_023, 1, 7, 1984, 9735];

    let have = store
        .count(&[Filter::new()], &ctx(&[]))
        .await
        .expect("count");
    if have < EVENTS {
        eprintln!("seeding {} events into {path}", EVENTS - have);
        let started = Instant::now();
        let mut batch = Vec::with_capacity(1000);
        for i in have..EVENTS {
            let n = i as usize;
            let keys = &authors[n % AUTHORS];
            let kind = kinds[(n / AUTHORS) % kinds.len()];
            let mut tags = vec![
                tag(&["p", &pubkeys[(n * 7 + 3) % AUTHORS].to_hex()]),
                tag(&["t", &format!("topic{}", n % 50)]),
            ];
            if kind == 30_023 {
                tags.push(tag(&["d", &format!("article{n}")]));
            }
            batch.push(event(keys, kind, T0 + i, tags));
            if batch.len() == 1000 {
                store.save_batch(&batch).await.expect("seed");
                batch.clear();
            }
        }
        if !batch.is_empty() {
            store.save_batch(&batch).await.expect("seed");
        }
        eprintln!("seeded in {:?}", started.elapsed());
    }
    sqlite.optimize().await.expect("optimize");

    let cx = ctx(&[]);
    type MakeFilter<'a> = Box<dyn Fn(usize) -> Filter + 'a>;
    let cases: [(&str, MakeFilter<'_>); 3] = [
        (
            "author",
            Box::new(|i| Filter::new().author(pubkeys[(i * 13) % AUTHORS]).limit(500)),
        ),
        (
            "kind",
            Box::new(|i| {
                Filter::new()
                    .kind(Kind::from(kinds[i % kinds.len()]))
                    .limit(500)
            }),
        ),
        (
            "#p",
            Box::new(|i| Filter::new().pubkey(pubkeys[(i * 17) % AUTHORS]).limit(500)),
        ),
    ];
    // One untimed round first: a long-running relay has its file mapped and
    // its statements prepared; a fresh process faults pages in on first touch.
    for (_, make) in cases.iter() {
        for i in 0..QUERIES {
            store.query(&make(i), &cx).await.expect("warm-up query");
        }
    }
    for (name, make) in cases.iter() {
        let mut times = Vec::with_capacity(QUERIES);
        let mut rows = 0;
        for i in 0..QUERIES {
            let filter = make(i);
            let started = Instant::now();
            rows += store.query(&filter, &cx).await.expect("query").len();
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "{name:>6}: p50 {:?}  p99 {:?}  max {:?}  ({} rows/query)",
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            times[times.len() - 1],
            rows / QUERIES
        );
    }
    store.close().await;
}

/// Measures store-side ingest: 20,000 pre-signed events through the
/// group-commit [`Writer`] from 50 concurrent tasks (`CAIRN_INGEST_TASKS`), into a fresh SQLite file
/// (durable: `synchronous=FULL`). Not a test:
/// `cargo test --release -p cairn-relay --test store_conformance -- --ignored --nocapture ingest_sqlite`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, not a test"]
async fn ingest_sqlite() {
    const EVENTS: u64 = 20_000;
    let tasks: u64 = std::env::var("CAIRN_INGEST_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/ingest.db", dir.path().display());
    let store = store::open(&url).await.expect("open");
    let authors: Vec<Keys> = (0..100).map(|_| Keys::generate()).collect();
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            let keys = &authors[i as usize % authors.len()];
            let p = authors[(i as usize * 7) % authors.len()]
                .public_key()
                .to_hex();
            event(keys, 1, T0 + i, vec![tag(&["p", &p]), tag(&["t", "bench"])])
        })
        .collect();
    let recording = Arc::new(RecordingStore {
        inner: store.clone(),
        batches: Default::default(),
        commit_times: Default::default(),
    });
    let (writer, task) = Writer::spawn(recording.clone(), store::DEFAULT_MAX_BATCH);
    let events = Arc::new(events);
    let started = Instant::now();
    let joins: Vec<_> = (0..tasks)
        .map(|t| {
            let writer = writer.clone();
            let events = events.clone();
            tokio::spawn(async move {
                for i in (t..EVENTS).step_by(tasks as usize) {
                    let outcome = writer.save(events[i as usize].clone()).await.expect("save");
                    assert_eq!(outcome, SaveOutcome::Stored);
                }
            })
        })
        .collect();
    for join in joins {
        join.await.expect("join");
    }
    let elapsed = started.elapsed();
    drop(writer);
    task.await.expect("writer");
    println!(
        "ingest: {EVENTS} events from {tasks} tasks in {elapsed:?} = {:.0} events/s",
        EVENTS as f64 / elapsed.as_secs_f64()
    );
    let batches = recording.batches.lock().expect("lock").clone();
    let times = recording.commit_times.lock().expect("lock").clone();
    let total: Duration = times.iter().sum();
    println!(
        "        {} batches, mean {:.1} events/batch, mean save_batch {:?}, store busy {:?}",
        batches.len(),
        EVENTS as f64 / batches.len() as f64,
        total / times.len() as u32,
        total
    );
    store.close().await;
}

/// `sync_items` (NIP-77's sets) lists exactly what `query` returns for the
/// same filter and viewers, however many (`max_limit` does not apply, a
/// filter's `limit` does), private kinds only for their recipient, and
/// refuses more than `max_items` after reading at most one more.
async fn sync_items_are_what_query_sees(store: Arc<dyn Store>) {
    use cairn_relay::store::{QueryBudget, StoreError};
    let author = Keys::generate();
    let recipient = Keys::generate();
    let rp = recipient.public_key().to_hex();
    let notes: Vec<Event> = (0..(MAX_LIMIT as u64 + 100))
        .map(|i| {
            let n = i.to_string();
            event(
                &author,
                1,
                T0 + i / 2,
                vec![tag(&["t", "x"]), tag(&["n", &n])],
            )
        })
        .collect();
    let wrap = event(&Keys::generate(), 1059, T0, vec![tag(&["p", &rp])]);
    let dm = event(&author, 4, T0, vec![tag(&["p", &rp])]);
    let expired = event(&author, 1, T0, vec![tag(&["expiration", "1"])]);
    save_all(&store, &notes).await;
    save_all(&store, &[wrap.clone(), dm.clone(), expired.clone()]).await;

    let items = |filter: Filter, viewers: Vec<&Keys>, max: usize| {
        let store = store.clone();
        let cx = ctx(&viewers);
        async move {
            store
                .sync_items(&filter, &cx, QueryBudget::default(), max)
                .await
                .map(|items| {
                    let mut pairs: Vec<(u64, EventId)> = items
                        .iter()
                        .map(|i| (i.created_at, EventId::from_byte_array(i.id)))
                        .collect();
                    pairs.sort();
                    pairs
                })
        }
    };
    let expect = |evs: Vec<&Event>| {
        let mut pairs: Vec<(u64, EventId)> =
            evs.iter().map(|e| (e.created_at.as_secs(), e.id)).collect();
        pairs.sort();
        pairs
    };

    // More than max_limit: all of them, with their created_at.
    let got = items(Filter::new().kind(Kind::TextNote), vec![], 10_000)
        .await
        .expect("items");
    assert_eq!(got, expect(notes.iter().collect()));
    // Tag-driven filters too.
    let got = items(Filter::new().hashtag("x"), vec![], 10_000)
        .await
        .expect("items");
    assert_eq!(got.len(), notes.len());
    // A filter's limit keeps the newest, as query does.
    let got = items(Filter::new().kind(Kind::TextNote).limit(3), vec![], 10_000)
        .await
        .expect("items");
    let newest: Vec<EventId> = query(
        &store,
        Filter::new().kind(Kind::TextNote).limit(3),
        &ctx(&[]),
    )
    .await
    .into_iter()
    .map(|e| EventId::from_byte_array(e.id))
    .collect();
    let mut got_ids: Vec<EventId> = got.iter().map(|(_, id)| *id).collect();
    let mut newest_sorted = newest.clone();
    got_ids.sort();
    newest_sorted.sort();
    assert_eq!(got_ids, newest_sorted);

    // Privacy: without the recipient, no private event, with or without kinds.
    for filter in [
        Filter::new(),
        Filter::new().kinds([Kind::from(4), Kind::from(1059)]),
    ] {
        let got = items(filter.clone(), vec![], 10_000).await.expect("items");
        assert!(got.iter().all(|(_, id)| *id != wrap.id && *id != dm.id));
        let got = items(filter.clone(), vec![&author], 10_000)
            .await
            .expect("items");
        assert!(
            got.iter().any(|(_, id)| *id == dm.id),
            "kind 4 to its author"
        );
        assert!(got.iter().all(|(_, id)| *id != wrap.id));
        let got = items(filter, vec![&recipient], 10_000)
            .await
            .expect("items");
        assert!(got.iter().any(|(_, id)| *id == wrap.id));
        assert!(got.iter().any(|(_, id)| *id == dm.id));
    }
    // Expired events are not listed.
    let got = items(Filter::new(), vec![], 10_000).await.expect("items");
    assert!(got.iter().all(|(_, id)| *id != expired.id));

    // Over max_items: refused; exactly max_items: fine.
    let n = notes.len();
    let err = items(Filter::new().kind(Kind::TextNote), vec![], n - 1)
        .await
        .expect_err("too many");
    assert!(
        matches!(err, StoreError::TooManyItems { max } if max == n - 1),
        "{err}"
    );
    let got = items(Filter::new().kind(Kind::TextNote), vec![], n)
        .await
        .expect("exactly max");
    assert_eq!(got.len(), n);
}

/// What one 2,500-tag deletion request costs the SQLite writer (the
/// `cairn-bench abuse` deletions attack), one per batch, on a store of
/// 20,000 tagged notes: not a test, a probe.
/// `cargo test -p cairn-relay --test store_conformance deletion_cost_sqlite -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "probe; prints timings"]
async fn deletion_cost_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/cairn.db", dir.path().display());
    let store = store::open(&url).await.expect("open");
    let authors: Vec<Keys> = (0..100).map(|_| Keys::generate()).collect();
    let notes: Vec<Event> = (0..20_000u64)
        .map(|i| {
            let t: Vec<Tag> = (0..3)
                .map(|h| tag(&["t", &format!("h{}", (i + h * 7) % 50)]))
                .collect();
            event(&authors[i as usize % 100], 1, T0 + i, t)
        })
        .collect();
    for chunk in notes.chunks(500) {
        save_all(&store, chunk).await;
    }
    let attacker = Keys::generate();
    let mut times = Vec::new();
    for round in 0..40u64 {
        let tags: Vec<Tag> = (0..2_500u64)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(round * 10_000 + i).to_le_bytes());
                id[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
                Tag::event(EventId::from_byte_array(id))
            })
            .collect();
        let deletion = event(&attacker, 5, T0 + 50_000 + round, tags);
        let started = Instant::now();
        assert_eq!(save(&store, &deletion).await, SaveOutcome::Stored);
        times.push(started.elapsed());
        store
            .maintain(store::WriterPause::BetweenBatches)
            .await
            .expect("maintain");
    }
    let mut sorted = times.clone();
    sorted.sort();
    println!(
        "2,500-tag deletion, one per batch: first {:?}, median {:?}, max {:?}, last {:?}",
        times[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        times[times.len() - 1]
    );
    store.close().await;
}
