//! Bad input: each gets a clear NOTICE/OK/CLOSED (or a closed socket for
//! abuse), and never affects other connections or stored data.

use std::time::Duration;

use cairn_e2e::serde_json::{json, Value};
use cairn_e2e::*;
use cairn_relay::config::Rate;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    malformed_messages_get_notices,
    bad_events_rejected,
    binary_frames_get_notice,
    invalid_utf8_text_frame,
    flood_does_not_affect_others,
    disconnect_mid_req_and_mid_publish,
);

/// Send `raw` then a COUNT as a barrier; return everything that came back
/// before the barrier's answer.
async fn send_and_sync(c: &mut WsClient, raw: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    c.send_text(raw).await?;
    let barrier = format!("sync{n}");
    c.send_json(&json!(["COUNT", barrier, {"kinds": [65_000]}]))
        .await?;
    let b = barrier.clone();
    c.recv_until(&format!("barrier COUNT after {raw:.60}"), |v| {
        v[1].as_str() == Some(b.as_str())
    })
    .await?;
    Ok(c.take_pending())
}

/// A complaint: NOTICE, OK false or CLOSED.
fn is_complaint(v: &Value) -> bool {
    v[0] == "NOTICE" || (v[0] == "OK" && v[2] == json!(false)) || v[0] == "CLOSED"
}

/// Publish a marker and read it back from a second connection, checking that
/// the relay is healthy and `stored` is what it should be.
async fn assert_healthy(node: &TestNode, stored: usize) -> anyhow::Result<()> {
    let mut fresh = node.connect().await?;
    let got = fresh.query_once(&[json!({"kinds": [1]})]).await?;
    assert_eq!(got.len(), stored, "stored events changed: {got:?}");
    Ok(())
}

async fn malformed_messages_get_notices(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let keys = Keys::generate();
    let mut observer = node.connect().await?;
    let baseline = note(&keys, "baseline");
    observer.publish_all(&[&baseline]).await?;
    observer.query("live", &[json!({"kinds": [1]})]).await?;

    let mut c = node.connect().await?;
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let long_type = json!([format!("X{}", "y".repeat(1000))]).to_string();
    let cases: Vec<&str> = vec![
        "not json",
        "",
        "   ",
        "{\"a\":1}",
        "[]",
        "[1,2,3]",
        "\"EVENT\"",
        "null",
        "[\"FOO\",\"x\"]",
        "[\"event\",{}]",
        &long_type,
        "[\"EVENT\"]",
        "[\"EVENT\",42]",
        "[\"EVENT\",{\"id\":\"abc\"}]",
        "[\"EVENT\",{}]",
        "[\"REQ\"]",
        "[\"REQ\",5,{}]",
        "[\"REQ\",\"s\",\"not a filter\"]",
        "[\"REQ\",\"s\",{\"kinds\":\"x\"}]",
        "[\"REQ\",\"s\",{\"kinds\":[-1]}]",
        "[\"REQ\",\"s\",{\"limit\":\"ten\"}]",
        "[\"REQ\",\"s\",{\"since\":\"yesterday\"}]",
        "[\"REQ\",\"s\",{\"#p\":\"not an array\"}]",
        "[\"CLOSE\"]",
        "[\"CLOSE\",5]",
        "[\"COUNT\"]",
        "[\"COUNT\",\"c\",7]",
        "[\"AUTH\"]",
        "[\"AUTH\",\"just a string\"]",
        "[\"AUTH\",{}]",
        "[\"EVENT\",{\"id\":1}] trailing",
        &deep,
    ];
    for (i, raw) in cases.iter().enumerate() {
        let replies = send_and_sync(&mut c, raw, i).await?;
        assert!(
            replies.iter().any(is_complaint),
            "no NOTICE/OK false/CLOSED for {:.80?}; got {replies:?}",
            raw
        );
        assert!(
            !replies.iter().any(|v| v[0] == "EOSE" || v[0] == "EVENT"),
            "malformed {raw:.80?} was served as a REQ: {replies:?}"
        );
    }

    // The same connection still works, and so does the observer's subscription.
    let after = note(&keys, "after garbage");
    c.publish(&after).await?.assert_accepted("after garbage");
    assert_eq!(observer.next_event("live").await?.id, after.id);
    assert_healthy(&node, 2).await?;
    node.finish().await
}

fn tamper(event: &Event, field: &str, value: Value) -> Value {
    let mut v = to_value(event);
    v[field] = value;
    v
}

fn flip_first_hex(s: &str) -> String {
    let first = if s.starts_with('0') { '1' } else { '0' };
    format!("{first}{}", &s[1..])
}

async fn bad_events_rejected(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    let good = note(&keys, "good");
    c.publish_all(&[&good]).await?;

    let e = note(&keys, "victim of tampering");
    let id = e.id.to_hex();
    let sig = e.sig.to_string();
    let cases: Vec<(&str, Value)> = vec![
        ("wrong id", tamper(&e, "id", json!(flip_first_hex(&id)))),
        (
            "content changed after signing",
            tamper(&e, "content", json!("changed")),
        ),
        (
            "created_at changed",
            tamper(&e, "created_at", json!(e.created_at.as_secs() + 1)),
        ),
        (
            "bad signature",
            tamper(&e, "sig", json!(flip_first_hex(&sig))),
        ),
        (
            "signature of another event",
            tamper(&e, "sig", json!(good.sig.to_string())),
        ),
        (
            "pubkey of someone else",
            tamper(&e, "pubkey", json!(Keys::generate().public_key().to_hex())),
        ),
        ("short signature", tamper(&e, "sig", json!(&sig[..64]))),
        ("id not hex", tamper(&e, "id", json!("zz".repeat(32)))),
        ("id too short", tamper(&e, "id", json!(&id[..10]))),
        (
            "pubkey not hex",
            tamper(&e, "pubkey", json!("g".repeat(64))),
        ),
        (
            "created_at as string",
            tamper(&e, "created_at", json!("now")),
        ),
        ("negative created_at", tamper(&e, "created_at", json!(-1))),
        ("kind too large", tamper(&e, "kind", json!(70_000))),
        ("tags not arrays", tamper(&e, "tags", json!(["t"]))),
        (
            "tag values not strings",
            tamper(&e, "tags", json!([["t", 5]])),
        ),
        ("content not a string", tamper(&e, "content", json!(5))),
        ("missing sig", {
            let mut v = to_value(&e);
            v.as_object_mut().expect("object").remove("sig");
            v
        }),
    ];
    for (what, value) in cases {
        c.send_json(&json!(["EVENT", value])).await?;
        let reply = c
            .recv_until(&format!("OK or NOTICE for {what}"), |v| {
                v[0] == "OK" || v[0] == "NOTICE"
            })
            .await?;
        if reply[0] == "OK" {
            let ok = parse_ok(&reply)?;
            ok.assert_rejected(what, &["invalid:"]);
        }
    }
    // Far in the future, with a valid signature (default limit: 15 minutes).
    let future = event_at(&keys, 1, "from the future", &[], now() + 3_600);
    c.publish(&future)
        .await?
        .assert_rejected("an hour in the future", &["invalid:"]);

    // Nothing but the good event was stored; the genuine event still publishes.
    assert_healthy(&node, 1).await?;
    c.publish(&e).await?.assert_accepted("untampered original");
    assert_healthy(&node, 2).await?;
    node.finish().await
}

async fn binary_frames_get_notice(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let mut other = node.connect().await?;
    let event = note(&Keys::generate(), "as binary");
    // Even a valid message is not accepted in a binary frame.
    c.send_binary(json!(["EVENT", event]).to_string().into_bytes())
        .await?;
    let reply = c
        .recv_until("NOTICE for a binary frame", |v| {
            v[0] == "NOTICE" || v[0] == "OK"
        })
        .await?;
    assert_eq!(reply[0], "NOTICE", "binary frame: {reply}");
    c.send_binary(vec![0xff, 0x00, 0xfe]).await?;
    c.next_notice().await?;
    // The connection still works for text.
    c.query_once(&[json!({})]).await?;
    other
        .publish(&note(&Keys::generate(), "other"))
        .await?
        .assert_accepted("other connection");
    assert_healthy(&node, 1).await?;
    node.finish().await
}

async fn invalid_utf8_text_frame(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let mut other = node.connect().await?;
    let mut bytes = br#"["EVENT",{"content":""#.to_vec();
    bytes.extend_from_slice(&[0xc3, 0x28, 0xa0, 0xa1]);
    bytes.extend_from_slice(br#""}]"#);
    c.send_raw_text_frame(bytes).await?;
    // A NOTICE, or the socket is closed (RFC 6455 says fail the connection).
    let seen = c.drain_for(Duration::from_secs(2)).await;
    assert!(
        c.is_closed() || seen.iter().any(|v| v[0] == "NOTICE"),
        "invalid UTF-8 got neither a NOTICE nor a close: {seen:?}"
    );
    other
        .publish(&note(&Keys::generate(), "unaffected"))
        .await?
        .assert_accepted("other connection after invalid UTF-8");
    assert_healthy(&node, 1).await?;
    node.finish().await
}

async fn flood_does_not_affect_others(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        // The flood comes from 127.0.0.2; its rate limits must not touch 127.0.0.1.
        s.relay.rate_limits.events_per_ip = Rate::new(10.0, 20.0);
        s.relay.rate_limits.reqs_per_ip = Rate::new(10.0, 20.0);
        s.relay.rate_limits.max_violations = 50;
    })
    .await?;
    let keys = Keys::generate();
    let mut good = node.connect().await?;
    let before = note(&keys, "before flood");
    good.publish_all(&[&before]).await?;
    good.query("live", &[json!({"authors": [keys.public_key().to_hex()]})])
        .await?;

    let flooder = node.connect_from("127.0.0.2".parse()?).await?;
    let flood = tokio::spawn(async move {
        let mut f = flooder;
        let spam = Keys::generate();
        for i in 0..3_000u32 {
            let msg = match i % 4 {
                0 => json!(["EVENT", note(&spam, &format!("spam {i}"))]).to_string(),
                1 => json!(["REQ", format!("s{i}"), {"limit": 500}]).to_string(),
                2 => json!(["CLOSE", format!("s{}", i - 1)]).to_string(),
                _ => "garbage".to_owned(),
            };
            // A relay that stops reading an abuser is fine: stop flooding.
            match tokio::time::timeout(Duration::from_secs(2), f.send_text(msg)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        f
    });

    // Meanwhile the good client publishes and reads normally.
    let mut mine = vec![before];
    for i in 0..10 {
        let e = note(&keys, &format!("during flood {i}"));
        good.publish(&e)
            .await?
            .assert_accepted("publish during flood");
        assert_eq!(good.next_event("live").await?.id, e.id);
        mine.push(e);
    }
    let mut flooder = within("flooder task", flood).await??;
    // The flooder is either rate limited, or disconnected for abuse.
    let replies = flooder.drain_for(Duration::from_millis(500)).await;
    let limited = replies
        .iter()
        .any(|v| v.to_string().contains("rate-limited:") || v[0] == "NOTICE");
    assert!(
        limited || flooder.is_closed(),
        "flood neither rate limited nor disconnected"
    );
    // Stored data: all of the good client's events, in order.
    let got = good
        .query_once(&[json!({"authors": [keys.public_key().to_hex()]})])
        .await?;
    mine.reverse();
    let expected: Vec<&Event> = mine.iter().collect();
    assert_id_set("good client's events after the flood", &got, &expected);
    node.finish().await
}

async fn disconnect_mid_req_and_mid_publish(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.rate_limits.events_per_ip = Rate::new(10_000.0, 10_000.0);
        s.relay.rate_limits.events_per_pubkey = Rate::new(10_000.0, 10_000.0);
        s.relay.rate_limits.reqs_per_ip = Rate::new(10_000.0, 10_000.0);
    })
    .await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    let base = now() - 5_000;
    for i in 0..300 {
        let e = event_at(
            &keys,
            1,
            &format!("stored {i} {}", "x".repeat(500)),
            &[],
            base + i,
        );
        c.publish_all(&[&e]).await?;
    }
    let mut observer = node.connect().await?;
    observer.query("live", &[json!({"kinds": [1]})]).await?;

    for i in 0..20 {
        let mut d = node.connect().await?;
        d.send_json(&json!(["REQ", "big", {"limit": 500}])).await?;
        if i % 2 == 0 {
            // Vanish without a close frame.
            drop(d);
        } else {
            d.close().await;
        }
    }
    // Disconnect right after sending an event: it is stored or not, never half.
    let mut sent = Vec::new();
    for i in 0..5 {
        let mut d = node.connect().await?;
        let e = note(&keys, &format!("sent then gone {i}"));
        d.send_json(&json!(["EVENT", e])).await?;
        drop(d);
        sent.push(e);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let after = note(&keys, "after the disconnects");
    c.publish(&after)
        .await?
        .assert_accepted("after disconnects");
    let mut live_ids = Vec::new();
    loop {
        let ev = observer.next_event("live").await?;
        live_ids.push(ev.id);
        if ev.id == after.id {
            break;
        }
    }
    let got = c
        .query_once(&[json!({"authors": [keys.public_key().to_hex()], "limit": 500})])
        .await?;
    let n_sent_stored = got
        .iter()
        .filter(|e| sent.iter().any(|s| s.id == e.id))
        .count();
    assert_eq!(
        got.len(),
        301 + n_sent_stored,
        "stored events after disconnects"
    );
    for e in &got {
        e.verify()?;
    }
    node.finish().await
}
