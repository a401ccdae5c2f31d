//! The outbox's worker against what Cairn's own relay never answers: a
//! relay that requires NIP-42 AUTH before it takes an event, refuses one
//! for good (`blocked:`) and rate-limits another once. Cairn's relay takes
//! gift wraps without AUTH, so this is a stand-in relay (a few lines of
//! tokio-tungstenite speaking NIP-01/NIP-42) — hence the file's name. The
//! node is real (`cairn_node::start`), and so are its admin API and worker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, PublicKey, TagKind, UnsignedEvent};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);
const CHALLENGE: &str = "stand-in-challenge";

#[derive(Default)]
struct Seen {
    /// Keys that AUTHed.
    authed: Vec<PublicKey>,
    /// Events taken (`OK true`), in order.
    taken: Vec<nostr::EventId>,
    /// `EVENT`s received, accepted or not.
    received: Vec<nostr::EventId>,
}

/// Requires AUTH (challenge sent on connect); refuses wraps for `blocked`
/// with `blocked:`; answers `rate-limited:` to the first wrap for `slow`.
async fn stand_in_relay(blocked: PublicKey, slow: PublicKey) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        let slowed = Arc::new(Mutex::new(false));
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let seen = Arc::clone(&shared);
            let slowed = Arc::clone(&slowed);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _ = ws
                    .send(Message::text(json!(["AUTH", CHALLENGE]).to_string()))
                    .await;
                let mut authed = false;
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    let Ok(event) = Event::from_json(v[1].to_string()) else {
                        continue;
                    };
                    let answer = match v[0].as_str().unwrap() {
                        "AUTH" => {
                            let ok = event.kind == Kind::Authentication
                                && event.verify().is_ok()
                                && event
                                    .tags
                                    .iter()
                                    .any(|t| t.as_slice() == ["challenge", CHALLENGE]);
                            if ok {
                                authed = true;
                                seen.lock().unwrap().authed.push(event.pubkey);
                            }
                            (ok, if ok { "" } else { "invalid: bad auth" })
                        }
                        "EVENT" => {
                            seen.lock().unwrap().received.push(event.id);
                            let p = event
                                .tags
                                .iter()
                                .find(|t| t.kind() == TagKind::p())
                                .and_then(|t| t.content())
                                .unwrap()
                                .to_owned();
                            if !authed {
                                (false, "auth-required: who are you")
                            } else if p == blocked.to_hex() {
                                (false, "blocked: not here")
                            } else if p == slow.to_hex()
                                && !std::mem::replace(&mut *slowed.lock().unwrap(), true)
                            {
                                (false, "rate-limited: later")
                            } else {
                                seen.lock().unwrap().taken.push(event.id);
                                (true, "")
                            }
                        }
                        _ => continue,
                    };
                    let ok = json!(["OK", event.id.to_hex(), answer.0, answer.1]);
                    if ws.send(Message::text(ok.to_string())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

async fn wrap_for(recipient: &PublicKey) -> Event {
    let sender = Keys::generate();
    let mut rumor: UnsignedEvent =
        EventBuilder::private_msg_rumor(*recipient, "hi").build(sender.public_key());
    rumor.ensure_id();
    EventBuilder::gift_wrap(&sender, recipient, rumor, [])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_when_asked_permanent_refusals_and_retries_against_a_stand_in_relay() {
    tokio::time::timeout(Duration::from_secs(120), run())
        .await
        .expect("test timed out");
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = Keys::generate();
    let key_file = tmp.path().join("owner.nsec");
    std::fs::write(&key_file, owner.secret_key().to_secret_hex()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let settings = cairn_node::Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: tmp.path().join("data"),
        outbox: cairn_node::settings::OutboxSettings {
            key_file: Some(key_file),
            retry_initial_secs: 1,
            retry_max_secs: 2,
            timeout_secs: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let (ok_to, blocked, slow) = (
        Keys::generate().public_key(),
        Keys::generate().public_key(),
        Keys::generate().public_key(),
    );
    let (relay_url, seen) = stand_in_relay(blocked, slow).await;
    let node = cairn_node::start(settings.clone()).await.unwrap();
    let token = std::fs::read_to_string(settings.data_dir.join("admin.token")).unwrap();
    let http = reqwest::Client::new();
    let base = node.http_url();

    let wraps = [
        wrap_for(&ok_to).await,
        wrap_for(&blocked).await,
        wrap_for(&slow).await,
    ];
    let events: Vec<Value> = wraps
        .iter()
        .map(|w| json!({"event": w, "role": "message", "fallback": relay_url}))
        .collect();
    let resp = http
        .post(format!("{base}/admin/v1/outbox"))
        .bearer_auth(token.trim())
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    // Without the token: refused.
    let anon = http
        .get(format!("{base}/admin/v1/outbox"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    let state_of = |v: &Value, id: &nostr::EventId| -> Value {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["event_id"] == id.to_hex())
            .map(|i| i["deliveries"][0].clone())
            .unwrap()
    };
    let deadline = Instant::now() + WAIT;
    let outbox = loop {
        let v: Value = http
            .get(format!("{base}/admin/v1/outbox"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = wraps.iter().all(|w| {
            !matches!(
                state_of(&v, &w.id)["state"].as_str(),
                Some("queued" | "retrying")
            )
        });
        if done {
            break v;
        }
        assert!(Instant::now() < deadline, "not settled: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let ok = state_of(&outbox, &wraps[0].id);
    assert_eq!(ok["state"], "delivered", "{outbox:#}");
    let refused = state_of(&outbox, &wraps[1].id);
    assert_eq!(refused["state"], "failed", "{outbox:#}");
    assert!(refused["last_error"]
        .as_str()
        .unwrap()
        .starts_with("blocked:"));
    let retried = state_of(&outbox, &wraps[2].id);
    assert_eq!(retried["state"], "delivered", "{outbox:#}");
    assert_eq!(
        retried["attempts"], 2,
        "one rate-limited try, then taken: {retried:#}"
    );
    assert_eq!(
        retried["last_error"].as_str(),
        Some("rate-limited: later"),
        "the failed try is remembered"
    );

    {
        let seen = seen.lock().unwrap();
        // AUTH was signed with the owner's key.
        assert!(!seen.authed.is_empty());
        assert!(seen.authed.iter().all(|k| *k == owner.public_key()));
        // Each accepted wrap was taken once.
        for w in [&wraps[0], &wraps[2]] {
            assert_eq!(seen.taken.iter().filter(|id| **id == w.id).count(), 1);
        }
        // The blocked one was not sent again after its refusal: once refused
        // with auth-required, once (after AUTH) with blocked.
        let times = |id: &nostr::EventId| seen.received.iter().filter(|r| *r == id).count();
        assert_eq!(times(&wraps[1].id), 2);
        // The rate-limited one: auth-required, rate-limited, then once more
        // (taken): on the same connection when its retry fell due before
        // that connection was done, else on a new one after a new AUTH.
        let n = times(&wraps[2].id);
        assert!((3..=4).contains(&n), "{n}");
    }
    node.shutdown().await.unwrap();
}
