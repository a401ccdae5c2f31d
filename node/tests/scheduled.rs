//! What `cairn serve` does on a timer, with nobody running a command:
//!
//! - `[[sync]]`: two real `cairn serve` processes on loopback, A configured
//!   to sync with B both ways; events published to either (and events each
//!   had stored before) end up in the other's store. A second entry points
//!   at a port where nothing listens: its failures show in `/ready`. On
//!   Postgres, two processes on one database configured with the same
//!   entry: exactly one runs it (its lease), and B's events still arrive.
//! - The owner's kind 10050: a node whose list was replaced or deleted on
//!   its own relay republishes the configured one (there and to its
//!   publish relay).
//!
//! Every wait polls for its condition with a deadline.
//!
//! Run: `cargo test -p cairn-node --test scheduled`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_relay::store::QueryContext;
use nostr::{Event, EventBuilder, EventId, Filter, JsonUtil as _, Keys, Kind, Tag, Timestamp};
use serde_json::Value;

mod common;
use common::Serve;

/// How long any one condition may take to come true.
const WAIT: Duration = Duration::from_secs(90);

/// Rate limits out of the way: syncs arrive as EVENTs and REQs from one
/// address.
const LIMITS: &str = r#"
[relay.rate_limits]
events_per_ip = { per_second = 100000.0, burst = 100000.0 }
events_per_pubkey = { per_second = 100000.0, burst = 100000.0 }
gift_wraps_per_recipient = { per_second = 100000.0, burst = 100000.0 }
reqs_per_ip = { per_second = 100000.0, burst = 100000.0 }
"#;

/// `cairn serve` on a free loopback port (`RUST_LOG=info`: the tests read
/// its sync log lines), killed when dropped.
fn serve(config: &Path, data_dir: &Path) -> Serve {
    let mut cmd = common::serve_command(Some(config), data_dir);
    cmd.env("RUST_LOG", "info");
    Serve::start(cmd)
}

/// `/ready`'s body; `None` when it did not answer in time.
async fn ready_body(node: &Serve) -> Option<Value> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/ready", node.http());
    client.get(&url).send().await.ok()?.json().await.ok()
}

/// Polls `f` until it gives `Some`, for at most [`WAIT`].
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn note(i: u64, t0: u64) -> Event {
    EventBuilder::text_note(format!("note {i}"))
        .custom_created_at(Timestamp::from(t0 + i))
        .sign_with_keys(&Keys::generate())
        .unwrap()
}

/// Store `events` in a node's SQLite database before it serves.
async fn seed(data_dir: &Path, events: &[Event]) {
    let url = format!("sqlite://{}", data_dir.join("cairn.db").display());
    let store = cairn_relay::store::open(&url).await.unwrap();
    store.save_batch(events).await.unwrap();
    store.close().await;
}

/// Publish `event` to `relay`; true once it said OK.
async fn publish(relay: &str, event: &Event) -> bool {
    let client = nostr_sdk::Client::default();
    client.add_relay(relay).await.unwrap();
    client.try_connect(Duration::from_secs(10)).await;
    let ok = tokio::time::timeout(Duration::from_secs(10), client.send_event(event))
        .await
        .map(|r| r.map(|out| !out.success.is_empty()).unwrap_or(false))
        .unwrap_or(false);
    client.shutdown().await;
    ok
}

/// Which of `ids` `relay` serves (a REQ by ids; `None` when it did not
/// answer in time).
async fn present(relay: &str, ids: &[EventId]) -> Option<BTreeSet<EventId>> {
    let client = nostr_sdk::Client::default();
    client.add_relay(relay).await.ok()?;
    client.try_connect(Duration::from_secs(10)).await;
    let mut found = BTreeSet::new();
    for chunk in ids.chunks(400) {
        let events = client
            .fetch_events(
                Filter::new().ids(chunk.iter().copied()),
                Duration::from_secs(10),
            )
            .await;
        match events {
            Ok(events) => found.extend(events.into_iter().map(|e| e.id)),
            Err(_) => {
                client.shutdown().await;
                return None;
            }
        }
    }
    client.shutdown().await;
    Some(found)
}

fn dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let d = root.join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect()
}

/// A loopback port where nothing listens, held for as long as the returned
/// socket lives: bound but never listening, so a connection is refused, and
/// (unlike a port bound then released) nothing else can take it meanwhile.
fn dead_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_sync_keeps_two_serving_nodes_complete_without_a_command() {
    let tmp = tempfile::tempdir().unwrap();
    let [a_dir, b_dir] = &dirs(tmp.path(), &["a", "b"])[..] else {
        unreachable!()
    };
    // Before serving: 150 notes on both, 120 only on A, 80 only on B.
    let t0 = Timestamp::now().as_secs() - 100_000;
    let notes: Vec<Event> = (0..350).map(|i| note(i, t0)).collect();
    let (shared, rest) = notes.split_at(150);
    let (a_only, b_only) = rest.split_at(120);
    seed(a_dir, &[shared, a_only].concat()).await;
    seed(b_dir, &[shared, b_only].concat()).await;

    let b_config = tmp.path().join("b.toml");
    std::fs::write(&b_config, LIMITS).unwrap();
    let b = serve(&b_config, b_dir);
    let (_held, dead_port) = dead_port();
    let dead = format!("ws://127.0.0.1:{dead_port}");
    let a_config = tmp.path().join("a.toml");
    std::fs::write(
        &a_config,
        format!(
            "{LIMITS}\n[[sync]]\nrelay = \"{}\"\ninterval_secs = 1\ndirection = \"both\"\n\
             filter = {{ kinds = [1] }}\n\n\
             [[sync]]\nrelay = \"{dead}\"\ninterval_secs = 1\ntimeout_secs = 20\n",
            b.ws()
        ),
    )
    .unwrap();
    let a = serve(&a_config, a_dir);

    // Events published while both serve, one to each.
    let (to_a, to_b) = (note(1_000, t0), note(1_001, t0));
    assert!(publish(&a.ws(), &to_a).await, "A takes its event");
    assert!(publish(&b.ws(), &to_b).await, "B takes its event");

    let want_on_a: Vec<EventId> = b_only.iter().map(|e| e.id).chain([to_b.id]).collect();
    let want_on_b: Vec<EventId> = a_only.iter().map(|e| e.id).chain([to_a.id]).collect();
    wait_for("B's events in A's store", || async {
        let found = present(&a.ws(), &want_on_a).await?;
        (found.len() == want_on_a.len()).then_some(())
    })
    .await;
    wait_for("A's events in B's store", || async {
        let found = present(&b.ws(), &want_on_b).await?;
        (found.len() == want_on_b.len()).then_some(())
    })
    .await;

    // `/ready` shows both entries: the working one with its last report,
    // the dead one with its failures and a next run.
    let ready = wait_for("/ready to show both syncs", || async {
        let ready = ready_body(&a).await?;
        let sync = ready["sync"].as_array()?.clone();
        let ok = sync.iter().find(|s| s["relay"] == b.ws())?;
        let bad = sync.iter().find(|s| s["relay"] == dead)?;
        let done = ok["runs"].as_u64()? >= 1 && ok["last_ok_at"].is_u64();
        let failing = bad["failures_in_a_row"].as_u64()? >= 2 && bad["last_ok_at"].is_null();
        (done && failing).then_some(ready)
    })
    .await;
    assert_eq!(
        ready["ready"],
        Value::Bool(true),
        "a failing sync does not make the node unready: {ready}"
    );
    let sync = ready["sync"].as_array().unwrap();
    let ok = sync.iter().find(|s| s["relay"] == b.ws()).unwrap();
    let bad = sync.iter().find(|s| s["relay"] == dead).unwrap();
    assert_eq!(ok["direction"], "both");
    assert_eq!(
        ok["held"],
        Value::Bool(true),
        "SQLite: this process runs it"
    );
    assert!(ok["last_error"].is_null(), "{ok}");
    assert_eq!(ok["last_report"]["push_failed"], 0, "{ok}");
    let error = bad["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot connect"), "{bad}");
    assert!(bad["next_run_at"].is_u64(), "{bad}");
    // Later runs have nothing left to do.
    wait_for("a run with nothing to transfer", || async {
        let ready = ready_body(&a).await?;
        let ok = ready["sync"]
            .as_array()?
            .iter()
            .find(|s| s["relay"] == b.ws())?
            .clone();
        let r = &ok["last_report"];
        (r["remote_only"] == 0 && r["local_only"] == 0 && r["local"].as_u64()? == 352).then_some(())
    })
    .await;
    assert!(a.log().contains("scheduled sync done"), "{}", a.log());
    assert!(a.log().contains("scheduled sync failed"), "{}", a.log());
}

/// A fresh Postgres database (dropped at the end), or `None` without
/// `CAIRN_TEST_POSTGRES_URL`.
async fn fresh_postgres() -> Option<(String, String, String)> {
    use sqlx::Connection as _;
    let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
        eprintln!("skipping: CAIRN_TEST_POSTGRES_URL not set");
        return None;
    };
    let name = format!(
        "cairn_sched_{}_{}",
        std::process::id(),
        &Keys::generate().public_key().to_hex()[..12]
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    // Digits, hex and underscores only.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    Some((admin_url, name, url.to_string()))
}

async fn drop_postgres(admin_url: &str, name: &str) {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_one_process_runs_each_sync() {
    let Some((admin_url, name, url)) = fresh_postgres().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let [b_dir, p_dir, q_dir] = &dirs(tmp.path(), &["b", "p", "q"])[..] else {
        unreachable!()
    };
    let t0 = Timestamp::now().as_secs() - 100_000;
    let b_notes: Vec<Event> = (0..60).map(|i| note(i, t0)).collect();
    seed(b_dir, &b_notes).await;
    let b_config = tmp.path().join("b.toml");
    std::fs::write(&b_config, LIMITS).unwrap();
    let b = serve(&b_config, b_dir);
    let config = tmp.path().join("pg.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{url}\"\n{LIMITS}\n[[sync]]\nrelay = \"{}\"\ninterval_secs = 1\n\
             direction = \"pull\"\n",
            b.ws()
        ),
    )
    .unwrap();
    let (p, q) = (serve(&config, p_dir), serve(&config, q_dir));

    let want: Vec<EventId> = b_notes.iter().map(|e| e.id).collect();
    for node in [&p, &q] {
        wait_for("B's events in the shared database", || async {
            let found = present(&node.ws(), &want).await?;
            (found.len() == want.len()).then_some(())
        })
        .await;
    }
    // Exactly one of the two holds the entry's lease, and only it has run it.
    let (held_p, held_q) = wait_for("both /ready to list the sync", || async {
        let hp = ready_body(&p).await?["sync"][0]["held"].as_bool()?;
        let hq = ready_body(&q).await?["sync"][0]["held"].as_bool()?;
        Some((hp, hq))
    })
    .await;
    assert!(held_p ^ held_q, "exactly one holder: {held_p} {held_q}");
    let (runner, standby) = if held_p { (&p, &q) } else { (&q, &p) };
    let runs = |v: Value| v["sync"][0]["runs"].as_u64();
    assert!(runs(ready_body(runner).await.unwrap()).unwrap() >= 1);
    assert_eq!(
        runs(ready_body(standby).await.unwrap()),
        Some(0),
        "{}",
        standby.log()
    );

    // An event published to B later arrives too.
    let later = note(500, t0);
    assert!(publish(&b.ws(), &later).await);
    wait_for("B's later event in the shared database", || async {
        let found = present(&standby.ws(), &[later.id]).await?;
        (found.len() == 1).then_some(())
    })
    .await;
    drop((p, q));
    drop_postgres(&admin_url, &name).await;
}

/// The owner's newest kind 10050 in `relay`'s store.
async fn newest_list(relay: &cairn_relay::Relay, owner: &Keys) -> Option<Event> {
    let ctx = QueryContext {
        viewers: Vec::new(),
        now: Timestamp::now().as_secs(),
        max_limit: 10,
    };
    let filter = Filter::new()
        .author(owner.public_key())
        .kind(Kind::InboxRelays)
        .limit(1);
    let stored = relay.store().query(&filter, &ctx).await.ok()?;
    stored
        .into_iter()
        .filter_map(|s| Event::from_json(&s.json).ok())
        .max_by_key(|e| e.created_at)
}

fn relays_of(list: &Event) -> Vec<String> {
    nostr::nips::nip17::extract_relay_list(list)
        .map(|u| u.as_str_without_trailing_slash().to_owned())
        .collect()
}

fn list_naming(owner: &Keys, relay: &str, created_at: Timestamp) -> Event {
    EventBuilder::new(Kind::InboxRelays, "")
        .tag(Tag::custom(nostr::TagKind::Relay, [relay]))
        .custom_created_at(created_at)
        .sign_with_keys(owner)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_or_deleted_inbox_list_is_republished() {
    let tmp = tempfile::tempdir().unwrap();
    let [a_dir, b_dir] = &dirs(tmp.path(), &["a", "b"])[..] else {
        unreachable!()
    };
    let owner = Keys::generate();
    let key_file = a_dir.join("owner.nsec");
    std::fs::write(&key_file, owner.secret_key().to_secret_hex()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let settings = |dir: &Path| cairn_node::Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        ..Default::default()
    };
    let b = cairn_node::start(settings(b_dir)).await.unwrap();
    let mut a_settings = settings(a_dir);
    a_settings.outbox.key_file = Some(key_file);
    a_settings.outbox.publish_relays = vec![b.ws_url()];
    a_settings.outbox.inbox_list_check_secs = 1;
    a_settings.outbox.retry_initial_secs = 1;
    let a = cairn_node::start(a_settings).await.unwrap();
    let want = vec![a.ws_url()];

    // At start: on A's relay and on B.
    let first = wait_for("the list on B", || async {
        newest_list(b.relay(), &owner)
            .await
            .filter(|l| relays_of(l) == want)
    })
    .await;
    wait_for("the list on A", || async {
        newest_list(a.relay(), &owner)
            .await
            .filter(|l| relays_of(l) == want)
    })
    .await;

    // Another client of the owner's replaces it on A's relay: the
    // configured list comes back, newer, here and on B.
    let other = list_naming(&owner, "wss://elsewhere.example", first.created_at + 1);
    a.relay().publish(other.clone()).await.unwrap();
    assert_eq!(newest_list(a.relay(), &owner).await.unwrap().id, other.id);
    let again = wait_for("the configured list back on A", || async {
        newest_list(a.relay(), &owner)
            .await
            .filter(|l| l.created_at > other.created_at && relays_of(l) == want)
    })
    .await;
    wait_for("the republished list on B", || async {
        newest_list(b.relay(), &owner)
            .await
            .filter(|l| l.id == again.id)
    })
    .await;

    // Deleted on A's relay (NIP-09, by id): published again.
    let deletion = EventBuilder::new(Kind::EventDeletion, "")
        .tag(Tag::event(again.id))
        .sign_with_keys(&owner)
        .unwrap();
    a.relay().publish(deletion).await.unwrap();
    let back = wait_for("a list on A after the deletion", || async {
        newest_list(a.relay(), &owner)
            .await
            .filter(|l| l.id != again.id && relays_of(l) == want)
    })
    .await;
    assert!(back.created_at > again.created_at);
    wait_for("B to have the newest list", || async {
        newest_list(b.relay(), &owner)
            .await
            .filter(|l| l.id == back.id)
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
