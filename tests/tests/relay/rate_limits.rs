//! Token-bucket rate limits (small values so a burst trips them).

use cairn_e2e::serde_json::json;
use cairn_e2e::*;
use cairn_node::Settings;
use cairn_relay::config::Rate;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    events_per_ip,
    events_per_pubkey,
    gift_wraps_per_recipient,
    reqs_per_ip,
    reqs_per_pubkey,
    max_violations_closes_connection,
);

const HIGH: Rate = Rate::new(100_000.0, 100_000.0);
/// Three in a burst, then one every 100 s: nothing refills during a test.
const TINY: Rate = Rate::new(0.01, 3.0);

fn all_high(s: &mut Settings) {
    let r = &mut s.relay.rate_limits;
    r.events_per_ip = HIGH;
    r.events_per_pubkey = HIGH;
    r.gift_wraps_per_recipient = HIGH;
    r.reqs_per_ip = HIGH;
    r.reqs_per_pubkey = HIGH;
    r.max_violations = 1_000;
}

async fn events_per_ip(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        all_high(s);
        s.relay.rate_limits.events_per_ip = TINY;
    })
    .await?;
    let mut c = node.connect().await?;
    for i in 0..3 {
        c.publish(&note(&Keys::generate(), &format!("burst {i}")))
            .await?
            .assert_accepted("within the burst");
    }
    let limited = note(&Keys::generate(), "over");
    c.publish(&limited)
        .await?
        .assert_rejected("4th event from one IP", &["rate-limited:"]);
    // A second connection from the same IP shares the bucket.
    let mut same_ip = node.connect().await?;
    same_ip
        .publish(&note(&Keys::generate(), "same ip"))
        .await?
        .assert_rejected("same IP, other connection", &["rate-limited:"]);
    // Gift wraps count against the IP too (their authors are one-time keys).
    same_ip
        .publish(&gift_wrap_to(&Keys::generate().public_key(), "wrap"))
        .await?
        .assert_rejected("gift wrap from a limited IP", &["rate-limited:"]);
    // Another IP has its own bucket.
    let mut other_ip = node.connect_from("127.0.0.2".parse()?).await?;
    other_ip
        .publish(&note(&Keys::generate(), "other ip"))
        .await?
        .assert_accepted("other IP");
    // Reading is not affected, and the limited event was not stored.
    let got = c.query_once(&[json!({"kinds": [1]})]).await?;
    assert_eq!(got.len(), 4, "3 + 1 from the other IP");
    assert!(!got.iter().any(|e| e.id == limited.id));
    node.finish().await
}

async fn events_per_pubkey(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        all_high(s);
        s.relay.rate_limits.events_per_pubkey = TINY;
    })
    .await?;
    let mut c = node.connect().await?;
    let alice = Keys::generate();
    for i in 0..3 {
        c.publish(&note(&alice, &format!("alice {i}")))
            .await?
            .assert_accepted("alice within the burst");
    }
    c.publish(&note(&alice, "alice over"))
        .await?
        .assert_rejected("4th event by alice", &["rate-limited:"]);
    c.publish(&note(&Keys::generate(), "someone else"))
        .await?
        .assert_accepted("another author on the same connection");
    // Gift wraps are not limited by author (one-time keys): one author, many wraps.
    let wrapper = Keys::generate();
    for i in 0..5 {
        let gw = event(
            &wrapper,
            1059,
            &format!("wrap {i}"),
            &[&["p", &Keys::generate().public_key().to_hex()]],
        );
        c.publish(&gw)
            .await?
            .assert_accepted("kind 1059 is not limited per author");
    }
    node.finish().await
}

async fn gift_wraps_per_recipient(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        all_high(s);
        s.relay.rate_limits.gift_wraps_per_recipient = TINY;
    })
    .await?;
    let mut c = node.connect().await?;
    let bob = Keys::generate().public_key();
    let carol = Keys::generate().public_key();
    for i in 0..3 {
        c.publish(&gift_wrap_to(&bob, &format!("bob {i}")))
            .await?
            .assert_accepted("gift wrap within the burst");
    }
    c.publish(&gift_wrap_to(&bob, "bob over"))
        .await?
        .assert_rejected("4th gift wrap to bob from fresh keys", &["rate-limited:"]);
    c.publish(&gift_wrap_to(&carol, "carol"))
        .await?
        .assert_accepted("gift wrap to another recipient");
    // Naming bob second does not dodge his bucket.
    let second = event(
        &Keys::generate(),
        1059,
        "bob second",
        &[
            &["p", &Keys::generate().public_key().to_hex()],
            &["p", &bob.to_hex()],
        ],
    );
    c.publish(&second).await?.assert_rejected(
        "gift wrap naming bob as second recipient",
        &["rate-limited:"],
    );
    // Other kinds mentioning bob are not gift wraps.
    c.publish(&event(&Keys::generate(), 1, "hi", &[&["p", &bob.to_hex()]]))
        .await?
        .assert_accepted("kind 1 to bob");
    node.finish().await
}

async fn reqs_per_ip(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        all_high(s);
        s.relay.rate_limits.reqs_per_ip = TINY;
    })
    .await?;
    let mut c = node.connect().await?;
    c.query("r0", &[json!({})]).await?;
    c.query("r1", &[json!({})]).await?;
    assert_eq!(c.count("r2", &[json!({})]).await?, CountResult::Count(0));
    let closed = c.req("r3", &[json!({})]).await?.closed("4th REQ");
    assert_prefix("4th REQ from one IP", &closed, &["rate-limited:"]);
    match c.count("r4", &[json!({})]).await? {
        CountResult::Closed(m) => assert_prefix("COUNT over the limit", &m, &["rate-limited:"]),
        CountResult::Count(n) => panic!("COUNT over the REQ rate limit answered {n}"),
    }
    // Publishing is a different bucket.
    c.publish(&note(&Keys::generate(), "still can publish"))
        .await?
        .assert_accepted("EVENT while REQs are limited");
    let mut other_ip = node.connect_from("127.0.0.2".parse()?).await?;
    other_ip.query("r", &[json!({})]).await?;
    node.finish().await
}

async fn reqs_per_pubkey(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        all_high(s);
        s.relay.rate_limits.reqs_per_pubkey = TINY;
    })
    .await?;
    let alice = Keys::generate();
    let mut c = node.connect().await?;
    c.auth(&alice).await?.assert_accepted("alice");
    for i in 0..3 {
        c.query(&format!("r{i}"), &[json!({})]).await?;
    }
    let closed = c.req("r3", &[json!({})]).await?.closed("4th REQ by alice");
    assert_prefix(
        "4th REQ by an authenticated pubkey",
        &closed,
        &["rate-limited:"],
    );
    // Same IP, another pubkey.
    let mut b = node.connect().await?;
    b.auth(&Keys::generate()).await?.assert_accepted("bob");
    b.query("r", &[json!({})]).await?;
    node.finish().await
}

async fn max_violations_closes_connection(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        all_high(s);
        s.relay.rate_limits.events_per_ip = Rate::new(0.01, 1.0);
        s.relay.rate_limits.max_violations = 3;
    })
    .await?;
    let mut c = node.connect().await?;
    c.publish(&note(&Keys::generate(), "first"))
        .await?
        .assert_accepted("first");
    let mut limited = 0;
    for i in 0..20 {
        let e = note(&Keys::generate(), &format!("flood {i}"));
        if c.send_json(&json!(["EVENT", e])).await.is_err() {
            break;
        }
        match c.wait_ok(&e.id.to_hex()).await {
            Ok(ok) => {
                ok.assert_rejected("flood", &["rate-limited:"]);
                limited += 1;
            }
            Err(_) => break,
        }
    }
    assert!(
        c.is_closed(),
        "connection still open after {limited} rate-limited messages (max_violations 3)"
    );
    assert!(
        (3..=4).contains(&limited),
        "closed after {limited} rate-limited messages, expected about 3"
    );
    node.finish().await
}
