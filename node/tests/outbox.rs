//! The outbox end to end, with real `cairn serve` processes on loopback and
//! the real CLI: Alice messages Bob while Bob's node is down, and the
//! message arrives once it is up, without Alice doing anything; then Alice's
//! node is killed with SIGKILL in the middle of delivering a batch and,
//! once restarted, delivers the rest, none twice (at most the one event in
//! flight at the kill is sent again, and Bob's relay answers `duplicate:`).
//!
//! Short backoff and claims come from the config; every wait polls for its
//! condition with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nostr::nips::nip19::ToBech32;
use nostr::Keys;
use serde_json::Value;

mod common;
use common::{text, Serve, CAIRN};

const WAIT: Duration = Duration::from_secs(60);
/// Messages of the kill -9 round.
const BATCH: usize = 20;

struct User {
    name: &'static str,
    keys: Keys,
    port: u16,
    dir: PathBuf,
}

impl User {
    fn new(root: &Path, name: &'static str, extra: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Keys::generate();
        let key_file = dir.join("owner.nsec");
        std::fs::write(&key_file, keys.secret_key().to_secret_hex()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Free now and never handed out by bind(0), but not held: a node must
        // come back on it after a kill (see [`User::serve`]).
        let port = cairn_testchain::ports::reserved_port().expect("a free port");
        let config = format!(
            "bind = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[outbox]\nkey_file = \"{}\"\n\
             retry_initial_secs = 1\nretry_max_secs = 2\nclaim_secs = 2\ntimeout_secs = 5\n{extra}",
            dir.join("data").display(),
            key_file.display()
        );
        std::fs::write(dir.join("cairn.toml"), config).unwrap();
        Self {
            name,
            keys,
            port,
            dir,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("cairn.toml")
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn db(&self) -> PathBuf {
        self.dir.join("data").join("cairn.db")
    }

    /// `cairn <args> --config <this user's config>`.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(CAIRN)
            .args(args)
            .arg("--config")
            .arg(self.config())
            .env_remove("RUST_LOG")
            .env_remove("CAIRN_NSEC")
            .stdin(Stdio::null())
            .output()
            .expect("cairn runs")
    }

    /// Starts `cairn serve` on this user's port. The port was free when
    /// reserved but is not held (a node must come back on it after a
    /// kill): when something else has it for a moment, the start is tried
    /// again until [`WAIT`] runs out.
    fn serve(&self) -> Node {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_serve(deadline) {
                Ok(node) => return node,
                Err(lines)
                    if Instant::now() < deadline
                        && lines.iter().any(|l| {
                            l.contains("cannot listen on") || l.contains("Address already in use")
                        }) =>
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(lines) => panic!(
                    "{}'s cairn serve did not start:\n{}",
                    self.name,
                    lines.join("\n")
                ),
            }
        }
    }

    /// One start of `cairn serve`: the running node once it logs that its
    /// outbox is ready, else its stderr (it exited, or `deadline` passed).
    fn try_serve(&self, deadline: Instant) -> Result<Node, Vec<String>> {
        let mut cmd = Command::new(CAIRN);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Serve::spawn(cmd, common::OUTBOX_READY, deadline).map(Node)
    }

    /// `cairn msg outbox --json`.
    fn outbox(&self) -> Value {
        let out = self.cli(&["msg", "outbox", "--json", "--limit", "1000"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("outbox JSON")
    }

    fn send(&self, to: &User, message: &str, wait_secs: &str) -> String {
        let npub = to.keys.public_key().to_bech32().unwrap();
        let key_file = self.dir.join("owner.nsec");
        let out = self.cli(&[
            "msg",
            "send",
            &npub,
            message,
            "--key-file",
            key_file.to_str().unwrap(),
            "--wait",
            wait_secs,
        ]);
        assert!(out.status.success(), "msg send: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

/// A running `cairn serve`, killed (SIGKILL) when dropped.
struct Node(Serve);

impl Node {
    fn kill(self) {
        self.0.kill();
    }
}

/// Polls `f` until it returns `Some`, at most [`WAIT`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The deliveries to `relay` of the outbox items with `role`.
fn deliveries<'a>(outbox: &'a Value, role: &str, relay: &str) -> Vec<(&'a Value, &'a Value)> {
    outbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["role"] == role)
        .flat_map(|i| {
            i["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(move |d| d["relay"] == relay)
                .map(move |d| (i, d))
        })
        .collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `(event_id, state, ok_message)` of every delivery to `relay` in the
/// SQLite outbox at `db` (read directly: the node may be dead).
fn db_deliveries(db: &Path, relay: &str) -> Vec<(String, String, Option<String>)> {
    block_on(async {
        let url = format!("sqlite://{}", db.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let rows = sqlx::query_as(
            "SELECT i.event_id, d.state, d.ok_message FROM outbox_deliveries d \
             JOIN outbox_items i ON i.id = d.item_id WHERE d.relay = $1 AND i.role = 'message'",
        )
        .bind(relay)
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    })
}

/// How many of `ids` (hex) Bob's event store holds, as gift wraps.
fn stored_wraps(db: &Path, ids: &[String]) -> usize {
    block_on(async {
        let url = format!("sqlite://{}", db.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let mut n = 0;
        for id in ids {
            let (c,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM events WHERE id = $1 AND kind = 1059")
                    .bind(hex::decode(id).unwrap())
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n += usize::try_from(c).unwrap();
        }
        pool.close().await;
        n
    })
}

#[test]
fn a_message_to_a_stopped_node_arrives_when_it_starts_and_a_kill_loses_or_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = User::new(
        tmp.path(),
        "alice",
        "in_flight = 1\nsend_interval_ms = 500\n",
    );
    // Bob's node publishes his inbox list to Alice's relay too.
    let bob = User::new(
        tmp.path(),
        "bob",
        &format!("publish_relays = [\"{}\"]\n", alice.ws()),
    );

    let alice_node = alice.serve();
    let bob_node = bob.serve();
    // Bob's node publishes his kind 10050 (Bob's node as inbox) through its
    // own outbox, to its relay and to Alice's.
    wait_for("Bob's inbox list on Alice's relay and his own", || {
        let o = bob.outbox();
        let delivered = |relay: &str| {
            let d = deliveries(&o, "inbox-list", relay);
            d.len() == 1 && d[0].1["state"] == "delivered"
        };
        (delivered(&alice.ws()) && delivered(&bob.ws())).then_some(())
    });
    bob_node.kill();

    // 1. Bob's node is down: the message is queued and retried.
    let sent = alice.send(&bob, "hello while you were away", "3");
    assert!(sent.contains("queued message"), "{sent}");
    assert!(
        sent.contains(&bob.ws()),
        "the destination is Bob's node: {sent}"
    );
    let retrying = wait_for("a failed try to Bob's node", || {
        let o = alice.outbox();
        let d = deliveries(&o, "message", &bob.ws());
        (d.len() == 1 && d[0].1["state"] == "retrying").then(|| d[0].1.clone())
    });
    assert!(
        retrying["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{retrying:#}"
    );
    assert!(retrying["next_attempt_at"].as_u64().is_some());
    // The copy to self goes to Alice's own node, which is up.
    wait_for("the copy to self delivered", || {
        let o = alice.outbox();
        let d = deliveries(&o, "copy", &alice.ws());
        (d.len() == 1 && d[0].1["state"] == "delivered").then_some(())
    });
    let text_view = text(&alice.cli(&["msg", "outbox"]).stdout);
    assert!(text_view.contains("retrying: try"), "{text_view}");

    // 2. Bob's node comes back on the same port: delivered, nobody asked.
    let bob_node = bob.serve();
    let delivered = wait_for("delivery to Bob's node", || {
        let o = alice.outbox();
        let d = deliveries(&o, "message", &bob.ws());
        (d[0].1["state"] == "delivered").then(|| d[0].1.clone())
    });
    assert!(
        delivered["delivered_at"].as_u64().is_some(),
        "{delivered:#}"
    );
    let text_view = text(&alice.cli(&["msg", "outbox"]).stdout);
    assert!(text_view.contains("delivered 20"), "a date: {text_view}");
    let bob_key = bob.dir.join("owner.nsec");
    let inbox = bob.cli(&["msg", "inbox", "--key-file", bob_key.to_str().unwrap()]);
    assert!(
        text(&inbox.stdout).contains("hello while you were away"),
        "{}{}",
        text(&inbox.stdout),
        text(&inbox.stderr)
    );
    bob_node.kill();

    // 3. A batch queued while Bob is down; Alice's node is killed while it
    // delivers them (one at a time, 500 ms apart: the rest of the batch
    // takes over 8 s, far longer than the poll that sees the first few and
    // the kill, even on a busy machine) once Bob is back.
    for i in 0..BATCH {
        alice.send(&bob, &format!("batch message {i}"), "0");
    }
    let bob_node = bob.serve();
    wait_for("some of the batch delivered", || {
        let o = alice.outbox();
        let n = deliveries(&o, "message", &bob.ws())
            .iter()
            .filter(|(_, d)| d["state"] == "delivered")
            .count();
        // The first message plus at least three of the batch.
        (n >= 4).then_some(())
    });
    alice_node.kill();
    let at_kill = db_deliveries(&alice.db(), &bob.ws());
    assert_eq!(at_kill.len(), BATCH + 1, "every message has its row");
    let delivered_at_kill = at_kill.iter().filter(|r| r.1 == "delivered").count();
    assert!(
        delivered_at_kill > 1 && delivered_at_kill < BATCH + 1,
        "killed mid-delivery: {delivered_at_kill} of {} delivered",
        BATCH + 1
    );

    // 4. Restarted, Alice's node delivers the rest by itself.
    let alice_node = alice.serve();
    wait_for("the whole batch delivered", || {
        let o = alice.outbox();
        let d = deliveries(&o, "message", &bob.ws());
        d.iter()
            .all(|(_, d)| d["state"] == "delivered")
            .then_some(())
    });
    let rows = db_deliveries(&alice.db(), &bob.ws());
    assert_eq!(rows.len(), BATCH + 1);
    assert!(rows.iter().all(|r| r.1 == "delivered"), "{rows:?}");
    // Only the one event in flight at the kill may have been sent again
    // (its OK read but not yet committed): Bob's relay then said so.
    let resent = rows
        .iter()
        .filter(|r| r.2.as_deref().is_some_and(|m| m.starts_with("duplicate:")))
        .count();
    assert!(resent <= 1, "sent twice: {rows:?}");
    // Bob's relay holds each wrap once (ids are unique there).
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(stored_wraps(&bob.db(), &ids), BATCH + 1);
    // Nothing left to do (the copies to self included, whose claims the
    // kill may have left to run out), and nothing was lost on the way.
    let o = wait_for("nothing queued or retrying", || {
        let o = alice.outbox();
        (o["totals"]["queued"] == 0 && o["totals"]["retrying"] == 0).then_some(o)
    });
    assert_eq!(
        o["totals"]["failed"].as_u64().unwrap_or(0) + o["totals"]["expired"].as_u64().unwrap_or(0),
        0,
        "{o:#}"
    );
    drop(alice_node);
    drop(bob_node);
}

/// `[outbox] lookup_relays`: Bob's kind 10050 is only on Bob's relay (not
/// on Alice's), and Alice's node, told to look there, finds it and queues
/// her message to every relay it lists: Bob's node and his extra inbox.
/// Bob's relay sends a NIP-42 challenge on connect, which the anonymous
/// lookup must not answer with a failed AUTH that ends its REQ.
#[test]
fn a_recipients_inbox_list_is_found_on_the_lookup_relays() {
    let tmp = tempfile::tempdir().unwrap();
    // An extra inbox of Bob's that nobody serves: it only has to be listed.
    let extra = format!(
        "ws://127.0.0.1:{}",
        cairn_testchain::ports::reserved_port().unwrap()
    );
    let bob = User::new(
        tmp.path(),
        "bob",
        &format!("inbox_relays = [\"{extra}\"]\n"),
    );
    let alice = User::new(
        tmp.path(),
        "alice",
        &format!("lookup_relays = [\"{}\"]\n", bob.ws()),
    );
    let bob_node = bob.serve();
    wait_for("Bob's inbox list on his own relay", || {
        let o = bob.outbox();
        let d = deliveries(&o, "inbox-list", &bob.ws());
        (d.len() == 1 && d[0].1["state"] == "delivered").then_some(())
    });
    let alice_node = alice.serve();

    let sent = alice.send(&bob, "found you", "0");
    assert!(sent.contains("queued message"), "{sent}");
    let o = alice.outbox();
    let to_bob = |relay: &str| deliveries(&o, "message", relay).len();
    assert_eq!(to_bob(&bob.ws()), 1, "to Bob's node: {o:#}");
    assert_eq!(to_bob(&extra), 1, "to Bob's extra inbox: {o:#}");
    assert_eq!(
        to_bob(&alice.ws()),
        0,
        "not the fallback (Alice's own node): {o:#}"
    );
    drop(alice_node);
    drop(bob_node);
}
