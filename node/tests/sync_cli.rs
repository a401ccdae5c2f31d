//! `cairn sync` as a user runs it, between two real `cairn serve`
//! processes on loopback whose event sets overlap: one run converges both
//! ways (pull into this node, push to the other), with NIP-42 AUTH as the
//! user's key, which brings the user's gift wraps but nobody else's; a
//! second run finds nothing left to do. Progress on stderr, summary on stdout.
//!
//! Run: `cargo test -p cairn-node --test sync_cli`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use nostr::{Event, EventBuilder, EventId, Filter, Keys, Kind, Tag, Timestamp};

mod common;
use common::{text, Serve, CAIRN};

/// One `cairn sync` run may take this long before the test fails.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// Rate limits out of the way: the push arrives at the other node's relay
/// as EVENTs from one address.
const CONFIG: &str = r#"
[relay.rate_limits]
events_per_ip = { per_second = 100000.0, burst = 100000.0 }
events_per_pubkey = { per_second = 100000.0, burst = 100000.0 }
gift_wraps_per_recipient = { per_second = 100000.0, burst = 100000.0 }
reqs_per_ip = { per_second = 100000.0, burst = 100000.0 }
"#;

/// `cairn serve` on a free loopback port, killed when dropped.
fn serve(config: &Path, data_dir: &Path) -> Serve {
    Serve::start(common::serve_command(Some(config), data_dir))
}

/// `cairn sync` with a deadline.
fn sync(config: &Path, data_dir: &Path, remote: &str, me: &Keys) -> Output {
    let mut cmd = Command::new(CAIRN);
    cmd.args(["sync", "--relay", remote, "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("CAIRN_NSEC", me.secret_key().to_secret_hex())
        .env_remove("RUST_LOG");
    common::run_with_timeout(cmd, SYNC_TIMEOUT)
}

fn note(i: u64, t0: u64) -> Event {
    EventBuilder::text_note(format!("note {i}"))
        .custom_created_at(Timestamp::from(t0 + i / 3))
        .sign_with_keys(&Keys::generate())
        .unwrap()
}

fn wrap(to: &Keys, t: u64) -> Event {
    EventBuilder::new(Kind::GiftWrap, "sealed")
        .tag(Tag::public_key(to.public_key()))
        .custom_created_at(Timestamp::from(t))
        .sign_with_keys(&Keys::generate())
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn db_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("cairn.db").display())
}

/// Store `events` in the node's database before it serves.
fn seed(data_dir: &Path, events: &[Event]) {
    runtime().block_on(async {
        let store = cairn_relay::store::open(&db_url(data_dir)).await.unwrap();
        for chunk in events.chunks(500) {
            store.save_batch(chunk).await.unwrap();
        }
        store.close().await;
    });
}

/// Every event id in the node's database, as the node's owner sees it (all
/// private events included).
fn stored_ids(data_dir: &Path, viewers: &[&Keys]) -> BTreeSet<EventId> {
    runtime().block_on(async {
        let store = cairn_relay::store::open(&db_url(data_dir)).await.unwrap();
        let ctx = cairn_relay::store::QueryContext {
            viewers: viewers.iter().map(|k| k.public_key()).collect(),
            now: Timestamp::now().as_secs(),
            max_limit: 0,
        };
        let items = store
            .sync_items(&Filter::new(), &ctx, Default::default(), 1_000_000)
            .await
            .unwrap();
        store.close().await;
        items
            .iter()
            .map(|i| EventId::from_byte_array(i.id))
            .collect()
    })
}

#[test]
fn sync_between_two_serving_nodes_converges_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("cairn.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let (me, stranger) = (Keys::generate(), Keys::generate());

    // 2,000 notes: 1,500 on both, 250 only on A, 245 only on B (plus 5
    // gift wraps to me and 5 to a stranger, only on B).
    let t0 = Timestamp::now().as_secs() - 100_000;
    let notes: Vec<Event> = (0..1_995).map(|i| note(i, t0)).collect();
    let (shared, rest) = notes.split_at(1_500);
    let (a_only, b_only) = rest.split_at(250);
    let mine: Vec<Event> = (0..5).map(|i| wrap(&me, t0 + i)).collect();
    let theirs: Vec<Event> = (0..5).map(|i| wrap(&stranger, t0 + i)).collect();
    seed(&a_dir, &[shared, a_only].concat());
    seed(&b_dir, &[shared, b_only, &mine, &theirs].concat());

    let a = serve(&config, &a_dir);
    let b = serve(&config, &b_dir);
    assert_ne!(a.ws(), b.ws());

    // From A's side: reconcile with B, both ways, authenticated as me.
    let out = sync(&config, &a_dir, &b.ws(), &me);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("remote only  250 (pulled 250, failed 0)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("local only   250 (pushed 250, failed 0)"),
        "{stdout}"
    );
    assert!(stderr.contains("sync: reconciled in"), "{stderr}");
    assert!(
        !stdout.contains("sync:"),
        "progress belongs on stderr: {stdout}"
    );

    // Converged: nothing left either way.
    let out = sync(&config, &a_dir, &b.ws(), &me);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("remote only  0 (pulled 0"), "{stdout}");
    assert!(stdout.contains("local only   0 (pushed 0"), "{stdout}");

    drop(a);
    drop(b);
    let all_notes: BTreeSet<EventId> = notes.iter().map(|e| e.id).collect();
    let ids = |evs: &[Event]| evs.iter().map(|e| e.id).collect::<BTreeSet<_>>();
    let everyone = [&me, &stranger];
    let a_has = stored_ids(&a_dir, &everyone);
    let b_has = stored_ids(&b_dir, &everyone);
    assert!(all_notes.is_subset(&a_has), "A lacks some notes");
    assert!(all_notes.is_subset(&b_has), "B lacks some notes");
    assert!(ids(&mine).is_subset(&a_has), "my gift wraps reached A");
    assert!(
        ids(&theirs).is_disjoint(&a_has),
        "a stranger's gift wraps must not be synced to me"
    );
    assert_eq!(a_has.len(), all_notes.len() + mine.len());
    assert_eq!(b_has.len(), all_notes.len() + mine.len() + theirs.len());
}
