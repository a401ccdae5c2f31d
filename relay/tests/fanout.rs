//! The live fan-out's delivery path: every subscriber gets each matching
//! live event once, under its own subscription id, in publishing order; and
//! what an idle connection holds stays small (issue 15: ≤ 10 KiB each).
//! Driven through [`serve_connection`] (the engine behind the WebSocket,
//! without a socket) on a real relay over SQLite in a tempdir.
//!
//! Run: `cargo test -p cairn-relay --test fanout`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cairn_relay::config::{Rate, RelayConfig};
use cairn_relay::store::{self, Store};
use cairn_relay::{serve_connection, Incoming, Outgoing, Relay};
use futures::channel::mpsc;
use futures::{Sink, Stream, StreamExt};
use nostr::{EventBuilder, Keys, Tag};
use serde_json::{json, Value};

/// Upper bound for one test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/relay.db", dir.path().display());
    let store = store::open(&url).await.expect("open sqlite");
    (dir, store)
}

fn config() -> RelayConfig {
    let mut c = RelayConfig::default();
    let fast = Rate::new(100_000.0, 100_000.0);
    c.rate_limits.events_per_ip = fast;
    c.rate_limits.events_per_pubkey = fast;
    c.rate_limits.reqs_per_ip = fast;
    c.rate_limits.reqs_per_pubkey = fast;
    c.limits.max_connections_per_ip = 10_000;
    c
}

/// One client connection, without a socket.
struct Client {
    tx: mpsc::UnboundedSender<Incoming>,
    rx: mpsc::Receiver<Outgoing>,
}

impl Client {
    async fn connect(relay: &Arc<Relay>) -> Self {
        let permit = relay.admit("127.0.0.1".parse().unwrap()).expect("admitted");
        let (tx, incoming) = mpsc::unbounded();
        let (outgoing, rx) = mpsc::channel(64);
        tokio::spawn(serve_connection(
            Arc::clone(relay),
            permit,
            incoming,
            outgoing,
        ));
        let mut client = Self { tx, rx };
        assert_eq!(client.recv().await[0], "AUTH");
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

    /// REQ for live events only; returns at EOSE.
    async fn subscribe(&mut self, sub: &str, filter: Value) {
        self.send(json!(["REQ", sub, filter]));
        let v = self.recv().await;
        assert_eq!(v, json!(["EOSE", sub]));
    }
}

/// 40 connections, each with a subscription that matches (its own id, with
/// characters JSON must escape) and one that does not: each gets every
/// published event once, in order, under the matching id only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_each_live_event_once_under_its_own_id() {
    let body = async {
        let (_dir, store) = sqlite().await;
        let relay = Relay::new(config(), "ws://127.0.0.1:1", store).0;
        let mut clients = Vec::new();
        for i in 0..40 {
            let mut client = Client::connect(&relay).await;
            client
                .subscribe(&format!("miss \"{i}\""), json!({"kinds": [7], "limit": 0}))
                .await;
            client
                .subscribe(
                    &format!("hit \"{i}\"\\"),
                    json!({"kinds": [1], "#t": ["fan"], "limit": 0}),
                )
                .await;
            clients.push(client);
        }
        let keys = Keys::generate();
        let mut ids = Vec::new();
        for n in 0..25 {
            let event = EventBuilder::text_note(format!("live {n}"))
                .tag(Tag::hashtag("fan"))
                .sign_with_keys(&keys)
                .unwrap();
            ids.push(event.id.to_hex());
            relay.publish(event).await.expect("published");
        }
        for (i, client) in clients.iter_mut().enumerate() {
            for id in &ids {
                let v = client.recv().await;
                assert_eq!(v[0], "EVENT", "{v}");
                assert_eq!(v[1], format!("hit \"{i}\"\\"), "{v}");
                assert_eq!(v[2]["id"], id.as_str(), "out of order or duplicated: {v}");
            }
            // Nothing more: a round trip comes back with nothing before it.
            client.send(json!(["CLOSE", "unknown"]));
            client.send(json!(["REQ", "probe", {"ids": ["00".repeat(32)]}]));
            assert_eq!(client.recv().await, json!(["EOSE", "probe"]));
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test timed out");
}

type BoxIncoming = Pin<Box<dyn Stream<Item = Incoming> + Send>>;
type BoxOutgoing = Pin<Box<dyn Sink<Outgoing, Error = mpsc::SendError> + Send>>;

/// What a connection's task holds while it waits is its future (plus the
/// socket's buffers): the session's state machine must not carry the
/// state of every message handler inline, which an idle connection would
/// pay for all the time. Same stream and sink types as the WebSocket glue
/// (boxed). The bound leaves room for debug builds; release futures are
/// smaller still.
#[tokio::test]
async fn an_idle_connection_future_is_small() {
    let (_dir, store) = sqlite().await;
    let relay = Relay::new(config(), "ws://127.0.0.1:1", store).0;
    let permit = relay.admit("127.0.0.1".parse().unwrap()).expect("admitted");
    let (_tx, incoming) = mpsc::unbounded::<Incoming>();
    let (outgoing, _rx) = mpsc::channel::<Outgoing>(1);
    let incoming: BoxIncoming = Box::pin(incoming);
    let outgoing: BoxOutgoing = Box::pin(outgoing);
    let connection = serve_connection(Arc::clone(&relay), permit, incoming, outgoing);
    let size = std::mem::size_of_val(&connection);
    eprintln!("serve_connection future: {size} bytes");
    assert!(
        size <= 3 * 1024,
        "serve_connection's future is {size} bytes"
    );
}
