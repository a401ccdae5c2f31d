//! Outbox benchmarks (`#[ignore]`d; numbers in docs/benchmarks.md), with
//! real `cairn serve` processes on loopback:
//!
//! - `outbox_throughput_1000_recipients_10_relays`: a sender node with the
//!   outbox delivers `CAIRN_BENCH_WRAPS` gift wraps (default 10,000: ten
//!   per recipient) to 1,000 recipients whose kind 10050 lists one of 10
//!   Cairn relays (100 recipients each). Prints the enqueue time, the time
//!   from the first `POST` to the last `OK`, wraps delivered per second and
//!   the sender's peak RSS.
//! - `outbox_memory_10000_pending_against_a_down_relay`: 10,000 wraps to
//!   recipients whose only inbox is a port where nothing listens; prints the
//!   sender's RSS before, with all of them pending, and after the worker
//!   has gone through its retry rounds for a while.
//!
//! Run (release build; the recipient relays' rate limits are raised, since
//! every wrap arrives from the sender's one address):
//!
//! ```sh
//! cargo test --release -p cairn-node --test outbox_bench -- --ignored --nocapture --test-threads 1
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nostr::{Event, EventBuilder, Keys, Kind, Tag};
use serde_json::{json, Value};

mod common;
use common::Serve;

const RECIPIENTS: usize = 1_000;
const RELAYS: usize = 10;

const LIMITS: &str = r#"
[relay.rate_limits]
events_per_ip = { per_second = 1000000.0, burst = 1000000.0 }
events_per_pubkey = { per_second = 1000000.0, burst = 1000000.0 }
gift_wraps_per_recipient = { per_second = 1000000.0, burst = 1000000.0 }
reqs_per_ip = { per_second = 1000000.0, burst = 1000000.0 }
"#;

/// A `cairn serve` with its data directory (where its admin token is).
struct Node {
    serve: Serve,
    dir: PathBuf,
}

impl Node {
    fn start(dir: &Path, config: &str) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("cairn.toml");
        std::fs::write(&file, config).unwrap();
        let mut cmd = common::serve_command(Some(&file), dir);
        cmd.env("RUST_LOG", "warn,cairn=info");
        Node {
            serve: Serve::start(cmd),
            dir: dir.to_owned(),
        }
    }

    fn ws(&self) -> String {
        self.serve.ws()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn rss_kib(&self, field: &str) -> u64 {
        self.serve.status_kib(field)
    }
}

/// A sender node: the outbox with the owner's key, its relay's limits
/// raised (the recipients' lists are published to it from one address).
fn sender(root: &Path, name: &str, extra: &str) -> Node {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("owner.nsec");
    std::fs::write(&key_file, Keys::generate().secret_key().to_secret_hex()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    Node::start(
        &dir,
        &format!(
            "{LIMITS}\n[outbox]\nkey_file = \"{}\"\ninbox_list_check_secs = 0\n{extra}\n",
            key_file.display()
        ),
    )
}

/// Publish every recipient's kind 10050 (naming `inbox_of(i)`) to `relay`.
async fn publish_lists(relay: &str, recipients: &[Keys], inbox_of: impl Fn(usize) -> String) {
    let client = nostr_sdk::Client::default();
    client.add_relay(relay).await.unwrap();
    client.try_connect(Duration::from_secs(10)).await;
    for (i, keys) in recipients.iter().enumerate() {
        let list = EventBuilder::new(Kind::InboxRelays, "")
            .tag(Tag::custom(nostr::TagKind::Relay, [inbox_of(i)]))
            .sign_with_keys(keys)
            .unwrap();
        client.send_event(&list).await.expect("list stored");
    }
    client.shutdown().await;
}

/// A stand-in gift wrap (the relays check the signature, the kind and the
/// `p` tag, not what is sealed inside), from a one-time key as NIP-59 says.
fn wrap(to: &Keys, i: usize) -> Event {
    EventBuilder::new(Kind::GiftWrap, format!("sealed {i} {}", "x".repeat(600)))
        .tag(Tag::public_key(to.public_key()))
        .sign_with_keys(&Keys::generate())
        .unwrap()
}

/// POST all `wraps` to the sender's outbox, 16 per request, 4 requests at
/// once.
async fn enqueue(node: &Node, wraps: Vec<Event>) {
    use futures::StreamExt as _;
    let http = reqwest::Client::new();
    let url = format!("{}/admin/v1/outbox", node.serve.http());
    let token = node.token();
    let bodies: Vec<Value> = wraps
        .chunks(16)
        .map(|chunk| {
            json!({"events": chunk.iter().map(|e| json!({"event": e, "role": "message"})).collect::<Vec<_>>()})
        })
        .collect();
    futures::stream::iter(bodies)
        .map(|body| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                let res = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .expect("POST");
                assert!(res.status().is_success(), "{}", res.text().await.unwrap());
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

async fn totals(node: &Node) -> Value {
    let url = format!("{}/admin/v1/outbox?limit=1", node.serve.http());
    let res = reqwest::Client::new()
        .get(&url)
        .bearer_auth(node.token())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    res.json::<Value>().await.unwrap()["totals"].clone()
}

fn wraps_count() -> usize {
    std::env::var("CAIRN_BENCH_WRAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn outbox_throughput_1000_recipients_10_relays() {
    let tmp = tempfile::tempdir().unwrap();
    let relays: Vec<Node> = (0..RELAYS)
        .map(|i| Node::start(&tmp.path().join(format!("r{i}")), LIMITS))
        .collect();
    let node = sender(tmp.path(), "sender", "");
    let recipients: Vec<Keys> = (0..RECIPIENTS).map(|_| Keys::generate()).collect();
    publish_lists(&node.ws(), &recipients, |i| relays[i % RELAYS].ws()).await;
    let n = wraps_count();
    let wraps: Vec<Event> = (0..n)
        .map(|i| wrap(&recipients[i % RECIPIENTS], i))
        .collect();
    let rss_before = node.rss_kib("VmRSS");

    let started = Instant::now();
    enqueue(&node, wraps).await;
    let enqueued = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut peak_rss = 0;
    loop {
        peak_rss = peak_rss.max(node.rss_kib("VmRSS"));
        let t = totals(&node).await;
        // The owner's own inbox list is one more delivery (to the node).
        if t["delivered"].as_u64().unwrap_or(0) > n as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all delivered: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let t = totals(&node).await;
    assert_eq!(t["failed"], 0, "{t}");
    println!(
        "outbox: {n} wraps to {RECIPIENTS} recipients on {RELAYS} relays: enqueued in {enqueued:?}, \
         all delivered {took:?} after the first POST: {:.0} wraps/s; sender RSS {rss_before} KiB \
         before, peak {peak_rss} KiB (sampled), VmHWM {} KiB; totals {t}",
        n as f64 / took.as_secs_f64(),
        node.rss_kib("VmHWM"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn outbox_memory_10000_pending_against_a_down_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}", l.local_addr().unwrap())
    };
    // Retries every 1-2 s, so the worker goes through the pending rows
    // many times while this runs.
    let node = sender(
        tmp.path(),
        "sender",
        "retry_initial_secs = 1\nretry_max_secs = 2\n",
    );
    let recipients: Vec<Keys> = (0..RECIPIENTS).map(|_| Keys::generate()).collect();
    publish_lists(&node.ws(), &recipients, |_| dead.clone()).await;
    let wraps: Vec<Event> = (0..10_000)
        .map(|i| wrap(&recipients[i % RECIPIENTS], i))
        .collect();
    let rss_before = node.rss_kib("VmRSS");
    enqueue(&node, wraps).await;
    let rss_enqueued = node.rss_kib("VmRSS");
    // Every row tried at least twice (retrying, none delivered).
    let deadline = Instant::now() + Duration::from_secs(300);
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(node.rss_kib("VmRSS"));
        let t = totals(&node).await;
        let pending = t["retrying"].as_u64().unwrap_or(0) + t["queued"].as_u64().unwrap_or(0);
        assert!(pending >= 10_000, "{t}");
        if t["retrying"].as_u64().unwrap_or(0) >= 10_000
            && started.elapsed() > Duration::from_secs(30)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t = totals(&node).await;
    println!(
        "outbox: 10,000 deliveries pending against a down relay: sender RSS {rss_before} KiB \
         before, {rss_enqueued} KiB once enqueued, peak {peak} KiB over {:?} of retry rounds, \
         {} KiB at the end, VmHWM {} KiB; totals {t}",
        started.elapsed(),
        node.rss_kib("VmRSS"),
        node.rss_kib("VmHWM"),
    );
}
