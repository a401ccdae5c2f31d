//! Every limit in `Limits`, set to small values.

use std::time::Duration;

use cairn_e2e::serde_json::{json, Value};
use cairn_e2e::*;
use cairn_node::Settings;
use cairn_relay::config::Rate;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    max_event_tags,
    max_content_length,
    max_event_length,
    max_message_length,
    max_subscriptions,
    max_filters,
    max_limit_clamps,
    max_subid_length,
    max_connections_per_ip,
    max_connections_total,
    created_at_upper_limit,
    created_at_lower_limit,
    auth_window,
    slow_reader_is_disconnected,
);

const REFUSED: &[&str] = &[
    "invalid:",
    "restricted:",
    "blocked:",
    "error:",
    "rate-limited:",
];

fn no_rate_limits(s: &mut Settings) {
    let r = &mut s.relay.rate_limits;
    r.events_per_ip = Rate::new(100_000.0, 100_000.0);
    r.events_per_pubkey = Rate::new(100_000.0, 100_000.0);
    r.gift_wraps_per_recipient = Rate::new(100_000.0, 100_000.0);
    r.reqs_per_ip = Rate::new(100_000.0, 100_000.0);
    r.reqs_per_pubkey = Rate::new(100_000.0, 100_000.0);
}

async fn max_event_tags(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| s.relay.limits.max_event_tags = 5).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let five: Vec<Vec<String>> = (0..5).map(|i| vec!["t".into(), format!("t{i}")]).collect();
    let six: Vec<Vec<String>> = (0..6).map(|i| vec!["t".into(), format!("t{i}")]).collect();
    let mk = |tags: &[Vec<String>]| {
        EventBuilder::new(Kind::TextNote, "tags")
            .tags(tags.iter().map(|t| Tag::parse(t.clone()).expect("tag")))
            .sign_with_keys(&keys)
            .expect("sign")
    };
    c.publish(&mk(&five))
        .await?
        .assert_accepted("5 tags (= limit)");
    let too_many = mk(&six);
    c.publish(&too_many)
        .await?
        .assert_rejected("6 tags (> limit)", REFUSED);
    assert!(c
        .query_once(&[json!({"ids": [too_many.id.to_hex()]})])
        .await?
        .is_empty());
    node.finish().await
}

async fn max_content_length(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| s.relay.limits.max_content_length = 100).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    c.publish(&note(&keys, &"a".repeat(100)))
        .await?
        .assert_accepted("content of 100 bytes (= limit)");
    // Bytes, not characters: 51 two-byte characters are 102 bytes.
    let over = note(&keys, &"é".repeat(51));
    c.publish(&over)
        .await?
        .assert_rejected("content of 102 bytes", REFUSED);
    c.publish(&note(&keys, &"a".repeat(101)))
        .await?
        .assert_rejected("content of 101 bytes", REFUSED);
    node.finish().await
}

async fn max_event_length(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_event_length = 1_000;
        s.relay.limits.max_content_length = 10_000;
    })
    .await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    // An event's JSON is ~ 330 bytes plus content and tags.
    c.publish(&note(&keys, &"a".repeat(400)))
        .await?
        .assert_accepted("event of ~730 bytes");
    let big = note(&keys, &"a".repeat(900));
    assert!(to_value(&big).to_string().len() > 1_000);
    c.publish(&big)
        .await?
        .assert_rejected("event over max_event_length", REFUSED);
    node.finish().await
}

async fn max_message_length(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_message_length = 4_096;
    })
    .await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    let mut other = node.connect().await?;
    c.publish(&note(&keys, &"a".repeat(3_000)))
        .await?
        .assert_accepted("message under the limit");

    // Exactly at the limit is fine (the limit is inclusive).
    let frame_len = |content_len: usize| {
        json!(["EVENT", note(&keys, &"x".repeat(content_len))])
            .to_string()
            .len()
    };
    let overhead = frame_len(0);
    let exact = note(&keys, &"x".repeat(4_096 - overhead));
    let exact_frame = json!(["EVENT", exact]).to_string();
    assert_eq!(exact_frame.len(), 4_096);
    c.send_text(exact_frame).await?;
    c.wait_ok(&exact.id.to_hex())
        .await?
        .assert_accepted("message of exactly max_message_length bytes");

    // A fragmented message under the limit is reassembled and accepted.
    let fragmented = note(&keys, &"f".repeat(2_000));
    c.send_fragmented(&json!(["EVENT", fragmented]).to_string(), 4)
        .await?;
    c.wait_ok(&fragmented.id.to_hex())
        .await?
        .assert_accepted("message in 4 fragments");

    // Fragments that together exceed the limit are refused like one big frame.
    let mut f = node.connect().await?;
    let big_fragmented = note(&keys, &"g".repeat(8_000));
    let _ = f
        .send_fragmented(&json!(["EVENT", big_fragmented]).to_string(), 4)
        .await;
    let reply = f.drain_for(Duration::from_secs(2)).await;
    assert!(
        !reply.iter().any(|v| v[0] == "OK" && v[2] == json!(true)),
        "oversize fragmented message accepted: {reply:?}"
    );
    assert!(
        f.is_closed() || reply.iter().any(|v| v[0] == "NOTICE" || v[0] == "OK"),
        "oversize fragmented message got neither a NOTICE/OK nor a closed socket"
    );

    // An oversize frame: NOTICE, or the socket is closed.
    let big = note(&keys, &"b".repeat(8_000));
    c.send_json(&json!(["EVENT", big])).await?;
    let reply = c.drain_for(Duration::from_secs(2)).await;
    let ok_true = reply.iter().any(|v| v[0] == "OK" && v[2] == json!(true));
    assert!(!ok_true, "oversize message accepted: {reply:?}");
    assert!(
        c.is_closed() || reply.iter().any(|v| v[0] == "NOTICE" || v[0] == "OK"),
        "oversize message got neither a NOTICE/OK nor a closed socket: {reply:?}"
    );
    assert!(other
        .query_once(&[json!({"ids": [big.id.to_hex()]})])
        .await?
        .is_empty());

    // Other connections are unaffected.
    other
        .publish(&note(&keys, "still fine"))
        .await?
        .assert_accepted("other connection after an oversize frame");
    node.finish().await
}

async fn max_subscriptions(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_subscriptions = 3;
        no_rate_limits(s);
    })
    .await?;
    let mut c = node.connect().await?;
    for i in 0..3 {
        c.query(&format!("s{i}"), &[json!({"kinds": [1]})]).await?;
    }
    let closed = c
        .req("s3", &[json!({"kinds": [1]})])
        .await?
        .closed("4th subscription");
    assert_prefix("4th subscription", &closed, REFUSED);
    // Replacing an open subscription does not count as a new one.
    c.query("s0", &[json!({"kinds": [7]})]).await?;
    // Closing one makes room.
    c.send_json(&json!(["CLOSE", "s1"])).await?;
    c.query("s3", &[json!({"kinds": [1]})]).await?;
    // Still at the limit.
    let closed = c
        .req("s4", &[json!({"kinds": [1]})])
        .await?
        .closed("subscription over the limit after CLOSE/REQ");
    assert_prefix("5th subscription", &closed, REFUSED);
    // The limit is per connection.
    let mut other = node.connect().await?;
    other.query("s0", &[json!({})]).await?;
    node.finish().await
}

async fn max_filters(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| s.relay.limits.max_filters = 2).await?;
    let mut c = node.connect().await?;
    c.query("two", &[json!({"kinds": [1]}), json!({"kinds": [2]})])
        .await?;
    let closed = c
        .req(
            "three",
            &[
                json!({"kinds": [1]}),
                json!({"kinds": [2]}),
                json!({"kinds": [3]}),
            ],
        )
        .await?
        .closed("REQ with 3 filters");
    assert_prefix("REQ with 3 filters", &closed, REFUSED);
    match c
        .count(
            "cnt",
            &[
                json!({"kinds": [1]}),
                json!({"kinds": [2]}),
                json!({"kinds": [3]}),
            ],
        )
        .await?
    {
        CountResult::Closed(m) => assert_prefix("COUNT with 3 filters", &m, REFUSED),
        CountResult::Count(n) => panic!("COUNT with 3 filters answered {n}"),
    }
    node.finish().await
}

async fn max_limit_clamps(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_limit = 5;
        no_rate_limits(s);
    })
    .await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let base = now() - 1_000;
    let mut events: Vec<Event> = (0..8)
        .map(|i| event_at(&keys, 1, &format!("n{i}"), &[], base + i))
        .collect();
    for e in &events {
        c.publish_all(&[e]).await?;
    }
    events.reverse();
    let newest: Vec<&Event> = events.iter().take(5).collect();
    let got = c.query_once(&[json!({"limit": 100})]).await?;
    assert_ids("limit 100 clamped to 5", &got, &newest);
    let got = c.query_once(&[json!({})]).await?;
    assert_ids("no limit: max_limit applies", &got, &newest);
    let got = c.query_once(&[json!({"limit": 3})]).await?;
    assert_ids("limit 3", &got, &newest[..3]);
    // COUNT is not clamped by max_limit.
    assert_eq!(c.count("c", &[json!({})]).await?, CountResult::Count(8));
    node.finish().await
}

async fn max_subid_length(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| s.relay.limits.max_subid_length = 10).await?;
    let mut c = node.connect().await?;
    c.query(&"a".repeat(10), &[json!({})]).await?;
    for (what, sub) in [("11 chars", "b".repeat(11)), ("empty", String::new())] {
        c.send_json(&json!(["REQ", sub, {}])).await?;
        let reply = c
            .recv_until(
                &format!("CLOSED or NOTICE for a subscription id of {what}"),
                |v| v[0] == "NOTICE" || v[0] == "CLOSED" || v[0] == "EOSE",
            )
            .await?;
        assert_ne!(reply[0], "EOSE", "subscription id of {what} accepted");
        if reply[0] == "CLOSED" {
            assert_prefix(what, reply[2].as_str().unwrap_or_default(), REFUSED);
        }
    }
    node.finish().await
}

/// Connect, returning `None` if the relay refuses or closes the connection
/// right away.
async fn try_connect(node: &TestNode, source: &str) -> Option<WsClient> {
    let mut c = node.connect_from(source.parse().expect("ip")).await.ok()?;
    // Refusal after the upgrade: a NOTICE and/or a close.
    let seen = c.drain_for(Duration::from_millis(300)).await;
    if c.is_closed() || seen.iter().any(|v| v[0] == "NOTICE") {
        return None;
    }
    // Still usable?
    c.query_once(&[json!({"limit": 1})]).await.ok()?;
    Some(c)
}

async fn connect_eventually(node: &TestNode, source: &str) -> anyhow::Result<WsClient> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(c) = try_connect(node, source).await {
            return Ok(c);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("could not connect from {source} after a slot was freed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn max_connections_per_ip(backend: Backend) -> anyhow::Result<()> {
    let node =
        TestNode::start_with(&backend, |s| s.relay.limits.max_connections_per_ip = 3).await?;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(
            try_connect(&node, "127.0.0.1")
                .await
                .unwrap_or_else(|| panic!("connection {i} (under the limit) refused")),
        );
    }
    assert!(
        try_connect(&node, "127.0.0.1").await.is_none(),
        "4th connection from one IP was accepted (limit 3)"
    );
    // Another IP is not affected.
    let _other_ip = try_connect(&node, "127.0.0.2")
        .await
        .expect("connection from another IP refused");
    // Closing one frees a slot.
    open.pop().expect("three open").close().await;
    let _again = connect_eventually(&node, "127.0.0.1").await?;
    // The open ones still work.
    open[0]
        .publish(&note(&Keys::generate(), "alive"))
        .await?
        .assert_accepted("open connection");
    node.finish().await
}

async fn max_connections_total(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| s.relay.limits.max_connections = 3).await?;
    let mut open = Vec::new();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        open.push(
            try_connect(&node, ip)
                .await
                .unwrap_or_else(|| panic!("connection from {ip} (under the limit) refused")),
        );
    }
    assert!(
        try_connect(&node, "127.0.0.4").await.is_none(),
        "4th connection accepted (max_connections 3)"
    );
    open.pop().expect("three open").close().await;
    let _again = connect_eventually(&node, "127.0.0.4").await?;
    node.finish().await
}

async fn created_at_upper_limit(backend: Backend) -> anyhow::Result<()> {
    let node =
        TestNode::start_with(&backend, |s| s.relay.limits.created_at_upper_limit = 60).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    c.publish(&event_at(&keys, 1, "30 s ahead", &[], now() + 30))
        .await?
        .assert_accepted("30 s in the future (limit 60)");
    c.publish(&event_at(&keys, 1, "2 min ahead", &[], now() + 120))
        .await?
        .assert_rejected(
            "2 minutes in the future (limit 60)",
            &["invalid:", "restricted:"],
        );
    c.publish(&event_at(
        &keys,
        1,
        "far future",
        &[],
        now() + 10 * 365 * 86_400,
    ))
    .await?
    .assert_rejected("10 years in the future", &["invalid:", "restricted:"]);
    node.finish().await
}

async fn created_at_lower_limit(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.created_at_lower_limit = Some(3_600)
    })
    .await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    c.publish(&event_at(&keys, 1, "30 min old", &[], now() - 1_800))
        .await?
        .assert_accepted("30 minutes old (limit 1 h)");
    c.publish(&event_at(&keys, 1, "2 h old", &[], now() - 7_200))
        .await?
        .assert_rejected("2 hours old (limit 1 h)", &["invalid:", "restricted:"]);
    // Gift wraps are back-dated by design (NIP-59, up to 2 days); a relay with
    // a lower limit still rejects them consistently rather than storing them.
    node.finish().await
}

async fn auth_window(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| s.relay.limits.auth_window = 60).await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    let ch = c.challenge.clone();
    c.send_auth(&auth_event(
        &keys,
        &ch,
        &node.ws_url(),
        Timestamp::from_secs(now() - 120),
    ))
    .await?
    .assert_rejected(
        "AUTH 2 min old (window 60 s)",
        &["auth-required:", "invalid:", "restricted:"],
    );
    c.send_auth(&auth_event(
        &keys,
        &ch,
        &node.ws_url(),
        Timestamp::from_secs(now() - 30),
    ))
    .await?
    .assert_accepted("AUTH 30 s old (window 60 s)");
    node.finish().await
}

async fn slow_reader_is_disconnected(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_outbound_queue = 16;
        no_rate_limits(s);
    })
    .await?;
    let mut slow = node.connect().await?;
    slow.query("eph", &[json!({"kinds": [20_000]})]).await?;
    let mut healthy = node.connect().await?;
    healthy.query("eph", &[json!({"kinds": [20_000]})]).await?;

    // ~40 MB of ephemeral events: far more than socket buffers plus the queue.
    let mut publisher = node.connect().await?;
    let keys = Keys::generate();
    let content = "x".repeat(100_000);
    let total = 400;
    let mut healthy_got = 0;
    for i in 0..total {
        let e = event(&keys, 20_000, &content, &[&["n", &i.to_string()]]);
        publisher
            .publish(&e)
            .await?
            .assert_accepted("ephemeral event");
        // The healthy reader keeps up.
        while let Ok(Ok(Incoming::Json(v))) =
            tokio::time::timeout(Duration::from_millis(1), healthy.recv_incoming()).await
        {
            if v[0] == "EVENT" {
                healthy_got += 1;
            }
        }
    }
    while healthy_got < total {
        healthy.next_event("eph").await?;
        healthy_got += 1;
    }

    // The slow reader has not read for longer than the relay's grace period;
    // when it finally reads, it was cut off before getting everything.
    tokio::time::sleep(cairn_relay::connection::LIVE_SEND_TIMEOUT + Duration::from_secs(1)).await;
    let mut received = 0;
    let mut notices = Vec::new();
    loop {
        match slow.recv_incoming().await {
            Ok(Incoming::Json(v)) if v[0] == "EVENT" => received += 1,
            Ok(Incoming::Json(v)) if v[0] == "NOTICE" => notices.push(v),
            Ok(Incoming::Json(_)) | Ok(Incoming::Text(_)) | Ok(Incoming::Binary(_)) => {}
            Ok(Incoming::Closed(_)) => break,
            Err(e) => {
                return Err(e.context(format!(
                    "slow reader still connected after {received} of {total} events"
                )))
            }
        }
    }
    assert!(
        received < total,
        "slow reader got all {total} events: no bounded queue?"
    );
    assert!(
        writeln_notice(&notices),
        "slow reader was disconnected without a NOTICE"
    );
    // The publisher and the healthy reader are unaffected.
    publisher
        .publish(&note(&keys, "after"))
        .await?
        .assert_accepted("publisher after slow reader was dropped");
    node.finish().await
}

/// Whether the slow reader saw a NOTICE (printed for the log).
fn writeln_notice(notices: &[Value]) -> bool {
    if notices.is_empty() {
        eprintln!("slow reader: disconnected without a NOTICE reaching the client");
        false
    } else {
        eprintln!("slow reader: NOTICE {notices:?}");
        true
    }
}
