//! Edge cases where relays tend to break: exact round-trips of unusual
//! content, extreme filter values, big filters, concurrency, AUTH events sent
//! as EVENT, large stored results with a small outbound queue.

use cairn_e2e::serde_json::json;
use cairn_e2e::*;
use cairn_relay::config::Rate;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    unusual_content_round_trips,
    nul_characters,
    extreme_filter_values,
    big_filters,
    unusual_subscription_ids,
    auth_event_sent_as_event_is_not_served,
    gift_wrap_with_several_recipients,
    stored_results_larger_than_outbound_queue,
    concurrent_publishers_all_stored,
    concurrent_replaceable_versions,
    deletion_before_the_event,
    forged_predeletion_does_not_block_author,
    gift_wrap_author_cannot_read_it,
    limit_applies_to_visible_events,
    connection_slots_are_released,
    subscription_slots_are_released,
    rate_limit_refills,
    json_formatting_variants,
    rejected_events_never_fanned_out,
    prompt_reader_not_dropped_after_big_req,
    long_and_duplicate_tag_values,
);

fn high_rates(s: &mut cairn_node::Settings) {
    let r = &mut s.relay.rate_limits;
    r.events_per_ip = Rate::new(100_000.0, 100_000.0);
    r.events_per_pubkey = Rate::new(100_000.0, 100_000.0);
    r.reqs_per_ip = Rate::new(100_000.0, 100_000.0);
}

async fn unusual_content_round_trips(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let tricky = "quote\" backslash\\ slash/ newline\n tab\t cr\r unicode é ß 漢字 🚀 \
                  line-sep\u{2028} para-sep\u{2029} control\u{1}\u{1f} del\u{7f} bom\u{feff} \
                  html <script>&amp;</script> emoji-zwj 👩‍👩‍👧";
    let e = event(
        &keys,
        1,
        tricky,
        &[
            &["t", "ünïcödé"],
            &["t", "🚀"],
            &["r", "https://example.com/?a=1&b=\"2\""],
            &["x", ""],
        ],
    );
    c.publish(&e).await?.assert_accepted("tricky content");
    // parse_event re-verifies id and signature: any change in bytes fails.
    let got = c.query_once(&[json!({"ids": [e.id.to_hex()]})]).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content, tricky);
    assert_eq!(got[0].tags, e.tags);
    for t in ["ünïcödé", "🚀"] {
        let got = c.query_once(&[json!({"#t": [t]})]).await?;
        assert_ids(&format!("#t {t}"), &got, &[&e]);
    }
    let got = c.query_once(&[json!({"#x": [""]})]).await?;
    assert_ids("#x with an empty value", &got, &[&e]);
    // Long tag values and many values in a tag.
    let long = "v".repeat(5_000);
    let e2 = event(
        &keys,
        1,
        "long tag",
        &[&["t", &long, "extra", "more"], &["z"]],
    );
    c.publish(&e2).await?.assert_accepted("long tag value");
    let got = c.query_once(&[json!({"#t": [long]})]).await?;
    assert_ids("#t long value", &got, &[&e2]);
    assert_eq!(got[0].tags, e2.tags);
    node.finish().await
}

async fn nul_characters(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    // A NUL in content and in a tag value is valid JSON and a valid event.
    // Postgres TEXT cannot hold NUL, so this is where backends differ; the
    // relay must store it exactly or refuse it cleanly (not `error:`).
    for (what, e) in [
        ("NUL in content", event(&keys, 1, "before\u{0}after", &[])),
        ("NUL in a tag", event(&keys, 1, "tag", &[&["t", "a\u{0}b"]])),
    ] {
        let ok = c.publish(&e).await?;
        if ok.accepted {
            let got = c.query_once(&[json!({"ids": [e.id.to_hex()]})]).await?;
            assert_eq!(got.len(), 1, "{what}: accepted but not served");
            assert_eq!(got[0].content, e.content, "{what}: content changed");
            assert_eq!(got[0].tags, e.tags, "{what}: tags changed");
        } else {
            assert_prefix(what, &ok.message, &["invalid:", "blocked:", "restricted:"]);
        }
    }
    // The connection is fine afterwards.
    c.publish(&note(&keys, "after NUL"))
        .await?
        .assert_accepted("after NUL");
    node.finish().await
}

async fn extreme_filter_values(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let e = note(&keys, "the only event");
    c.publish_all(&[&e]).await?;
    let big = u64::MAX;
    let cases = [
        ("since u64::MAX", json!({"since": big}), false),
        ("until u64::MAX", json!({"until": big}), true),
        ("since 0", json!({"since": 0}), true),
        ("until 0", json!({"until": 0}), false),
        ("since 2^63", json!({"since": 1u64 << 63}), false),
        ("until 2^63", json!({"until": 1u64 << 63}), true),
        (
            "since > until",
            json!({"since": now() + 10, "until": now() - 10}),
            false,
        ),
        ("limit u64::MAX", json!({"limit": big}), true),
        ("limit 2^63", json!({"limit": 1u64 << 63}), true),
        ("kind 65535", json!({"kinds": [65_535]}), false),
    ];
    for (i, (what, filter, found)) in cases.into_iter().enumerate() {
        let r = c
            .req(&format!("x{i}"), std::slice::from_ref(&filter))
            .await?;
        match r.end {
            ReqEnd::Eose => {
                let expected: Vec<&Event> = if found { vec![&e] } else { vec![] };
                assert_ids(&format!("{what} {filter}"), &r.events, &expected);
            }
            ReqEnd::Closed(m) => {
                // Refusing an odd filter is acceptable; failing on it is not.
                assert_prefix(
                    &format!("{what} {filter}"),
                    &m,
                    &["invalid:", "unsupported:"],
                );
            }
        }
        c.send_json(&json!(["CLOSE", format!("x{i}")])).await?;
        match c
            .count(&format!("n{i}"), std::slice::from_ref(&filter))
            .await?
        {
            CountResult::Count(n) => {
                assert_eq!(n, u64::from(found), "COUNT {what} {filter}")
            }
            CountResult::Closed(m) => {
                assert_prefix(&format!("COUNT {what}"), &m, &["invalid:", "unsupported:"])
            }
        }
    }
    node.finish().await
}

async fn big_filters(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, high_rates).await?;
    let mut c = node.connect().await?;
    let authors: Vec<Keys> = (0..3).map(|_| Keys::generate()).collect();
    let events: Vec<Event> = authors
        .iter()
        .enumerate()
        .map(|(i, k)| {
            event_at(
                k,
                1,
                &format!("needle {i}"),
                &[&["t", &format!("tag{i}")]],
                now() - 10 + i as u64,
            )
        })
        .collect();
    for e in &events {
        c.publish_all(&[e]).await?;
    }
    // 3,000 ids and 3,000 authors (~400 KB), three of each real.
    let mut ids: Vec<String> = (0..2_997)
        .map(|_| Keys::generate().public_key().to_hex())
        .collect();
    ids.extend(events.iter().map(|e| e.id.to_hex()));
    let mut pks: Vec<String> = (0..2_997)
        .map(|_| Keys::generate().public_key().to_hex())
        .collect();
    pks.extend(authors.iter().map(|k| k.public_key().to_hex()));
    let expected: Vec<&Event> = events.iter().rev().collect();

    let got = c.query_once(&[json!({"ids": ids})]).await?;
    assert_ids("3,000 ids", &got, &expected);
    let got = c.query_once(&[json!({"authors": pks})]).await?;
    assert_ids("3,000 authors", &got, &expected);
    let tags: Vec<String> = (0..2_000).map(|i| format!("tag{i}")).collect();
    let got = c.query_once(&[json!({"#t": tags})]).await?;
    assert_ids("2,000 tag values", &got, &expected);
    // The maximum number of filters, each with many values.
    let filters: Vec<_> = (0..16)
        .map(|i| json!({"ids": ids[i * 150..(i + 1) * 150].to_vec(), "kinds": [1, 2, 3], "authors": pks[..100].to_vec()}))
        .collect();
    let r = c.req("many", &filters).await?;
    match r.end {
        ReqEnd::Eose => assert!(r.events.is_empty(), "nothing matches all three fields"),
        ReqEnd::Closed(m) => panic!("16 big filters refused: {m}"),
    }
    assert_eq!(
        c.count("cnt", &[json!({"ids": ids})]).await?,
        CountResult::Count(3)
    );
    node.finish().await
}

async fn unusual_subscription_ids(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    for sub in [
        "sub with spaces",
        "🚀ünï",
        "\"quoted\"",
        "back\\slash",
        "0",
        "a:b/c?d#e",
    ] {
        c.query(sub, &[json!({"kinds": [1]})]).await?;
        let e = note(&keys, &format!("for {sub}"));
        c.publish_all(&[&e]).await?;
        assert_eq!(c.next_event(sub).await?.id, e.id, "subscription id {sub:?}");
        c.send_json(&json!(["CLOSE", sub])).await?;
    }
    node.finish().await
}

async fn auth_event_sent_as_event_is_not_served(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let keys = Keys::generate();
    let mut watcher = node.connect().await?;
    watcher.query("all", &[json!({})]).await?;
    let mut c = node.connect().await?;
    let auth = auth_event(
        &keys,
        &c.challenge.clone(),
        &node.ws_url(),
        Timestamp::now(),
    );
    // NIP-42: AUTH events are not broadcast nor stored, even if sent as EVENT.
    let _ = c.publish(&auth).await?;
    let marker = note(&keys, "marker");
    c.publish_all(&[&marker]).await?;
    assert_eq!(
        watcher.next_event("all").await?.id,
        marker.id,
        "a kind 22242 event was broadcast"
    );
    let got = watcher.query_once(&[json!({"kinds": [22_242]})]).await?;
    assert!(got.is_empty(), "a kind 22242 event was stored");
    // And sending it as EVENT did not authenticate the connection.
    let closed = c
        .req(
            "dm",
            &[json!({"kinds": [1059], "#p": [keys.public_key().to_hex()]})],
        )
        .await?
        .closed("REQ 1059 after sending AUTH as EVENT");
    assert_prefix("REQ 1059", &closed, &["auth-required:"]);
    node.finish().await
}

async fn gift_wrap_with_several_recipients(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let bob = Keys::generate();
    let carol = Keys::generate();
    let dave = Keys::generate();
    let wrap = event(
        &Keys::generate(),
        1059,
        "to carol and bob",
        &[
            &["p", &carol.public_key().to_hex()],
            &["p", &bob.public_key().to_hex()],
        ],
    );
    let mut c = node.connect().await?;
    c.publish_all(&[&wrap]).await?;
    for (who, keys, visible) in [
        ("carol", &carol, true),
        ("bob (second p)", &bob, true),
        ("dave", &dave, false),
    ] {
        let mut r = node.connect().await?;
        r.auth(keys).await?.assert_accepted(who);
        let got = r.query_once(&[json!({"kinds": [1059]})]).await?;
        let expected: Vec<&Event> = if visible { vec![&wrap] } else { vec![] };
        assert_ids(who, &got, &expected);
        // Filtering on the other recipient does not let dave in either.
        let got = r
            .query_once(&[json!({"#p": [carol.public_key().to_hex(), bob.public_key().to_hex()]})])
            .await?;
        assert_ids(&format!("{who} via #p"), &got, &expected);
    }
    node.finish().await
}

async fn stored_results_larger_than_outbound_queue(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_outbound_queue = 16;
        high_rates(s);
    })
    .await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let base = now() - 1_000;
    for i in 0..200 {
        c.publish_all(&[&event_at(&keys, 1, &format!("{i}"), &[], base + i)])
            .await?;
    }
    // A client that reads promptly gets a full result set even though it is
    // much larger than the live queue.
    let mut r = node.connect().await?;
    let got = r.query("big", &[json!({"limit": 200})]).await?;
    assert_eq!(
        got.len(),
        200,
        "stored results cut short by a small outbound queue"
    );
    let got = r
        .query("big2", &[json!({"limit": 150}), json!({"limit": 150})])
        .await?;
    assert!(got.len() >= 150, "two filters: {} events", got.len());
    node.finish().await
}

async fn concurrent_publishers_all_stored(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, high_rates).await?;
    let url = node.ws_url();
    let mut tasks = Vec::new();
    for p in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let keys = Keys::generate();
            let mut c = WsClient::connect(&url).await?;
            // Pipelined: send all, then read the OKs.
            let events: Vec<Event> = (0..50)
                .map(|i| note(&keys, &format!("p{p} e{i}")))
                .collect();
            for e in &events {
                c.send_json(&json!(["EVENT", e])).await?;
            }
            for e in &events {
                c.wait_ok(&e.id.to_hex())
                    .await?
                    .assert_accepted("concurrent publish");
            }
            anyhow::Ok(events)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(within("publisher task", t).await???);
    }
    let mut c = node.connect().await?;
    assert_eq!(
        c.count("n", &[json!({"kinds": [1]})]).await?,
        CountResult::Count(500),
        "COUNT after 10 x 50 concurrent events"
    );
    let ids: Vec<String> = hex_ids(&all);
    let got = c.query_once(&[json!({"ids": ids[..250].to_vec()})]).await?;
    assert_eq!(got.len(), 250);
    node.finish().await
}

async fn concurrent_replaceable_versions(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, high_rates).await?;
    let keys = Keys::generate();
    let base = now() - 1_000;
    let versions: Vec<Event> = (0..60)
        .map(|i| event_at(&keys, 10_002, &format!("v{i}"), &[], base + i))
        .collect();
    let addressable: Vec<Event> = (0..60)
        .map(|i| event_at(&keys, 30_001, &format!("a{i}"), &[&["d", "same"]], base + i))
        .collect();
    // Six connections publish interleaved slices at once.
    let mut tasks = Vec::new();
    for p in 0..6 {
        let url = node.ws_url();
        let mine: Vec<Event> = versions
            .iter()
            .chain(addressable.iter())
            .skip(p)
            .step_by(6)
            .cloned()
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut c = WsClient::connect(&url).await?;
            for e in &mine {
                c.send_json(&json!(["EVENT", e])).await?;
            }
            for e in &mine {
                c.wait_ok(&e.id.to_hex()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        within("publisher task", t).await???;
    }
    let mut c = node.connect().await?;
    let pk = keys.public_key().to_hex();
    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [10_002]})])
        .await?;
    assert_ids(
        "one replaceable version survives: the newest",
        &got,
        &[&versions[59]],
    );
    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [30_001]})])
        .await?;
    assert_ids(
        "one addressable version survives: the newest",
        &got,
        &[&addressable[59]],
    );
    node.finish().await
}

/// NIP-09: a deletion request that arrives before the event still keeps the
/// event from being served.
async fn deletion_before_the_event(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let alice = Keys::generate();
    let n = event_at(&alice, 1, "deleted in advance", &[], now() - 60);
    let del = event(&alice, 5, "", &[&["e", &n.id.to_hex()]]);
    c.publish_all(&[&del]).await?;
    let _ = c.publish(&n).await?;
    let got = c.query_once(&[json!({"ids": [n.id.to_hex()]})]).await?;
    assert!(
        got.is_empty(),
        "event deleted by its author in advance is served"
    );
    node.finish().await
}

/// Someone else's deletion request for an id must not block the real author.
async fn forged_predeletion_does_not_block_author(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let alice = Keys::generate();
    let mallory = Keys::generate();
    let n = note(&alice, "alice's future note");
    let addr = event(&alice, 30_023, "alice's future article", &[&["d", "x"]]);
    let forged = event(
        &mallory,
        5,
        "",
        &[
            &["e", &n.id.to_hex()],
            &["a", &format!("30023:{}:x", alice.public_key().to_hex())],
        ],
    );
    let _ = c.publish(&forged).await?;
    c.publish(&n)
        .await?
        .assert_accepted("alice's note after mallory's forged deletion");
    c.publish(&addr)
        .await?
        .assert_accepted("alice's article after mallory's forged deletion");
    let got = c
        .query_once(&[json!({"authors": [alice.public_key().to_hex()]})])
        .await?;
    assert_id_set("alice's events", &got, &[&n, &addr]);
    node.finish().await
}

/// The one-time author of a gift wrap is not its recipient; the author of a
/// kind 4 is, also live.
async fn gift_wrap_author_cannot_read_it(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let wrapper = Keys::generate();
    let alice = Keys::generate();
    let bob = Keys::generate();
    let wrap = event(
        &wrapper,
        1059,
        "wrapped",
        &[&["p", &bob.public_key().to_hex()]],
    );
    let mut c = node.connect().await?;
    c.publish_all(&[&wrap]).await?;
    let mut w = node.connect().await?;
    w.auth(&wrapper)
        .await?
        .assert_accepted("gift wrap's one-time key");
    let got = w
        .query_once(&[json!({"kinds": [1059], "authors": [wrapper.public_key().to_hex()]})])
        .await?;
    assert!(
        got.is_empty(),
        "the gift wrap's author (not p-tagged) received it"
    );

    let mut a = node.connect().await?;
    a.auth(&alice).await?.assert_accepted("alice");
    a.query(
        "mine",
        &[json!({"kinds": [4], "authors": [alice.public_key().to_hex()]})],
    )
    .await?;
    let dm = dm(&alice, &bob.public_key(), "from alice");
    c.publish_all(&[&dm]).await?;
    assert_eq!(
        a.next_event("mine").await?.id,
        dm.id,
        "kind 4 live to its author"
    );
    node.finish().await
}

/// Hidden private events must not eat into a filter's `limit`: an
/// unauthenticated reader asking for the newest 2 events that tag bob gets
/// the 2 newest it may see.
async fn limit_applies_to_visible_events(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let bob = Keys::generate();
    let alice = Keys::generate();
    let bob_hex = bob.public_key().to_hex();
    let t = now() - 100;
    let public1 = event_at(&alice, 1, "public 1", &[&["p", &bob_hex]], t);
    let public2 = event_at(&alice, 1, "public 2", &[&["p", &bob_hex]], t + 1);
    let mut c = node.connect().await?;
    c.publish_all(&[&public1, &public2]).await?;
    for i in 0..5 {
        let gw = event_at(
            &Keys::generate(),
            1059,
            "newer private",
            &[&["p", &bob_hex]],
            t + 10 + i,
        );
        c.publish_all(&[&gw]).await?;
    }
    let mut anon = node.connect().await?;
    let got = anon
        .query_once(&[json!({"#p": [bob_hex], "limit": 2})])
        .await?;
    assert_ids(
        "limit 2 over 5 hidden + 2 visible events",
        &got,
        &[&public2, &public1],
    );
    node.finish().await
}

/// Per-IP connection slots come back after clean and abrupt disconnects.
async fn connection_slots_are_released(backend: Backend) -> anyhow::Result<()> {
    let node =
        TestNode::start_with(&backend, |s| s.relay.limits.max_connections_per_ip = 3).await?;
    for i in 0..15 {
        let c = node.connect().await?;
        if i % 2 == 0 {
            c.close().await;
        } else {
            drop(c);
        }
    }
    // Give the server a moment to notice the abrupt ones.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut open = Vec::new();
        for _ in 0..3 {
            if let Ok(mut c) = node.connect().await {
                let seen = c.drain_for(std::time::Duration::from_millis(200)).await;
                if !c.is_closed() && !seen.iter().any(|v| v[0] == "NOTICE") {
                    open.push(c);
                }
            }
        }
        if open.len() == 3 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of 3 connections accepted after 15 closed ones: slots leaked",
            open.len()
        );
        drop(open);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    node.finish().await
}

/// Refused, closed and replaced subscriptions do not use up slots.
async fn subscription_slots_are_released(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_subscriptions = 2;
        high_rates(s);
    })
    .await?;
    let mut c = node.connect().await?;
    for i in 0..6 {
        let m = c
            .req(&format!("dm{i}"), &[json!({"kinds": [1059]})])
            .await?
            .closed("REQ 1059 without AUTH");
        assert_prefix("REQ 1059 without AUTH", &m, &["auth-required:"]);
    }
    for i in 0..6 {
        c.query(&format!("tmp{i}"), &[json!({})]).await?;
        c.send_json(&json!(["CLOSE", format!("tmp{i}")])).await?;
    }
    for _ in 0..6 {
        c.query("same", &[json!({})]).await?;
    }
    // COUNT does not hold a subscription.
    for i in 0..6 {
        c.count(&format!("cnt{i}"), &[json!({})]).await?;
    }
    c.query("second", &[json!({})]).await?;
    let m = c
        .req("third", &[json!({})])
        .await?
        .closed("third subscription");
    assert_prefix(
        "third subscription",
        &m,
        &[
            "restricted:",
            "blocked:",
            "error:",
            "rate-limited:",
            "invalid:",
        ],
    );
    node.finish().await
}

async fn rate_limit_refills(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        high_rates(s);
        s.relay.rate_limits.events_per_ip = Rate::new(2.0, 2.0);
    })
    .await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for i in 0..6 {
        results.push(
            c.publish(&note(&keys, &format!("burst {i}")))
                .await?
                .accepted,
        );
    }
    assert!(results[0] && results[1], "burst of 2 refused: {results:?}");
    // All six could only pass if publishing them took 2 s (2 tokens/s).
    if started.elapsed() < std::time::Duration::from_secs(2) {
        assert!(
            results.iter().any(|a| !a),
            "6 rapid events with burst 2 all accepted"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    c.publish(&note(&keys, "after refill"))
        .await?
        .assert_accepted("after 1.2 s at 2 tokens/s");
    node.finish().await
}

/// Real clients send JSON with whitespace, other key orders and `\u`
/// escapes; the id is over the canonical form, not the received bytes.
async fn json_formatting_variants(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();

    let pretty = note(&keys, "pretty printed");
    let text = cairn_e2e::serde_json::to_string_pretty(&json!(["EVENT", pretty]))?;
    c.send_text(text).await?;
    c.wait_ok(&pretty.id.to_hex())
        .await?
        .assert_accepted("pretty-printed EVENT");

    let reordered = note(&keys, "keys in another order");
    let text = format!(
        r#"[ "EVENT" , {{"sig":"{}","tags":[],"content":"keys in another order","kind":1,"created_at":{},"pubkey":"{}","id":"{}"}} ]"#,
        reordered.sig,
        reordered.created_at.as_secs(),
        reordered.pubkey.to_hex(),
        reordered.id.to_hex()
    );
    c.send_text(text).await?;
    c.wait_ok(&reordered.id.to_hex())
        .await?
        .assert_accepted("EVENT with reordered keys");

    let escaped = event(
        &keys,
        1,
        "caf\u{e9} \u{2603} \"q\"",
        &[&["t", "\u{e9}t\u{e9}"]],
    );
    let text = json!(["EVENT", escaped])
        .to_string()
        .replace('\u{e9}', "\\u00e9")
        .replace('\u{2603}', "\\u2603");
    assert!(text.contains("\\u00e9"));
    c.send_text(text).await?;
    c.wait_ok(&escaped.id.to_hex())
        .await?
        .assert_accepted("EVENT with \\u escapes");

    let req = "[\n  \"REQ\",\n  \"pretty\",\n  {\n    \"kinds\": [ 1 ],\n    \"#t\": [ \"\\u00e9t\\u00e9\" ]\n  }\n]";
    c.send_text(req).await?;
    let got = c
        .collect_stored("pretty")
        .await?
        .eose("pretty REQ with escapes");
    assert_ids("REQ with whitespace and escapes", &got, &[&escaped]);
    assert_eq!(got[0].content, escaped.content);

    // Numbers that are not integers are not valid event fields.
    for (what, field, value) in [
        (
            "fractional created_at",
            "created_at",
            json!(1_700_000_000.5),
        ),
        ("float kind", "kind", json!(1.5)),
    ] {
        let mut v = to_value(&note(&keys, what));
        v[field] = value;
        c.send_json(&json!(["EVENT", v])).await?;
        let reply = c
            .recv_until(what, |m| m[0] == "OK" || m[0] == "NOTICE")
            .await?;
        if reply[0] == "OK" {
            parse_ok(&reply)?.assert_rejected(what, &["invalid:"]);
        }
    }
    node.finish().await
}

/// Whatever is refused is never fanned out, and a duplicate is delivered once.
async fn rejected_events_never_fanned_out(backend: Backend) -> anyhow::Result<()> {
    let bob = Keys::generate();
    let bob_pk = bob.public_key();
    let node = TestNode::start_with(&backend, move |s| {
        s.relay.limits.max_event_tags = 3;
        s.relay.inbox.allowed_recipients = Some(vec![bob_pk]);
        s.relay.rate_limits.events_per_pubkey = Rate::new(0.01, 50.0);
    })
    .await?;
    let mut watcher = node.connect().await?;
    watcher.query("all", &[json!({})]).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let alice = Keys::generate();

    let deleted = note(&alice, "deleted");
    let del = event(&alice, 5, "", &[&["e", &deleted.id.to_hex()]]);
    let dup = note(&keys, "published twice");
    c.publish_all(&[&deleted, &del, &dup]).await?;
    for expected in [&deleted, &del, &dup] {
        assert_eq!(watcher.next_event("all").await?.id, expected.id);
    }

    let mut bad_sig = to_value(&note(&keys, "bad sig"));
    let sig = bad_sig["sig"].as_str().unwrap_or_default().to_owned();
    bad_sig["sig"] = json!(format!(
        "{}{}",
        if sig.starts_with('0') { '1' } else { '0' },
        &sig[1..]
    ));
    let refused: Vec<(&str, Event)> = vec![
        (
            "too many tags",
            event(
                &keys,
                1,
                "tags",
                &[&["t", "1"], &["t", "2"], &["t", "3"], &["t", "4"]],
            ),
        ),
        (
            "expired",
            event(
                &keys,
                1,
                "expired",
                &[&["expiration", &(now() - 5).to_string()]],
            ),
        ),
        (
            "far future",
            event_at(&keys, 1, "future", &[], now() + 7_200),
        ),
        (
            "protected without AUTH",
            event(&keys, 1, "protected", &[&["-"]]),
        ),
        ("re-published deleted event", deleted.clone()),
        (
            "gift wrap for a recipient not served",
            gift_wrap_to(&Keys::generate().public_key(), "x"),
        ),
    ];
    for (what, e) in &refused {
        let ok = c.publish(e).await?;
        assert!(!ok.accepted, "{what}: expected a refusal, got OK true");
    }
    let ok = c.publish_json(&bad_sig).await?;
    assert!(!ok.accepted, "bad signature accepted");
    let ok = c.publish(&dup).await?;
    assert_prefix("duplicate", &ok.message, &["duplicate:"]);
    // Rate-limited events are not fanned out either.
    let limited_author = Keys::generate();
    let mut limited = Vec::new();
    for i in 0..55 {
        let e = note(&limited_author, &format!("r{i}"));
        if !c.publish(&e).await?.accepted {
            limited.push(e);
        }
    }
    assert!(!limited.is_empty(), "per-pubkey burst of 50 never limited");

    let marker = note(&keys, "marker");
    c.publish_all(&[&marker]).await?;
    let mut seen = Vec::new();
    loop {
        let e = watcher.next_event("all").await?;
        if e.id == marker.id {
            break;
        }
        seen.push(e);
    }
    let refused_ids: Vec<EventId> = refused
        .iter()
        .map(|(_, e)| e.id)
        .chain(limited.iter().map(|e| e.id))
        .chain([dup.id])
        .collect();
    let leaked: Vec<&Event> = seen
        .iter()
        .filter(|e| refused_ids.contains(&e.id))
        .collect();
    assert!(
        leaked.is_empty(),
        "refused or duplicate events were fanned out: {:?}",
        leaked.iter().map(|e| &e.content).collect::<Vec<_>>()
    );
    node.finish().await
}

/// A client that keeps reading must not be dropped as a "slow reader" just
/// because a REQ's own stored results filled its queue when live events
/// arrived. The reader here takes ~2 ms per message (a client on a real
/// network), so sending 300 stored events of 40 kB takes a moment, during
/// which 30 live events are published.
async fn prompt_reader_not_dropped_after_big_req(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.limits.max_outbound_queue = 16;
        high_rates(s);
    })
    .await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    let base = now() - 1_000;
    // 12 MB in all: more than the kernel's socket buffers, so the relay's
    // own queue really fills while the client reads.
    let bulk = "b".repeat(40_000);
    for i in 0..300 {
        c.publish_all(&[&event_at(&keys, 1, &format!("{bulk} {i}"), &[], base + i)])
            .await?;
    }
    let mut reader = node.connect().await?;
    let url = node.ws_url();
    let live_keys = Keys::generate();
    let live: Vec<Event> = (0..30)
        .map(|i| note(&live_keys, &format!("live {i}")))
        .collect();
    let to_publish = live.clone();
    // Live events arrive while the stored results are being sent.
    reader
        .send_json(&json!(["REQ", "all", {"kinds": [1], "limit": 300}]))
        .await?;
    let publisher = tokio::spawn(async move {
        let mut p = WsClient::connect(&url).await?;
        for e in &to_publish {
            p.publish(e).await?.assert_accepted("live event");
        }
        anyhow::Ok(())
    });
    let mut stored = 0;
    let mut eose = false;
    let mut live_seen = 0;
    while !(eose && live_seen == live.len()) {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        match reader.recv_incoming().await? {
            Incoming::Json(v) if v[0] == "EVENT" => {
                if eose {
                    live_seen += 1;
                } else {
                    stored += 1;
                }
            }
            Incoming::Json(v) if v[0] == "EOSE" => eose = true,
            Incoming::Json(v) if v[0] == "NOTICE" => {
                anyhow::bail!(
                    "prompt reader got NOTICE {v} after {stored} stored events, EOSE {eose}, {live_seen} live"
                )
            }
            Incoming::Closed(why) => anyhow::bail!(
                "prompt reader disconnected ({why}) after {stored} stored events, EOSE {eose}, {live_seen} live"
            ),
            _ => {}
        }
    }
    within("publisher", publisher).await???;
    assert!(stored >= 300, "stored events before EOSE: {stored}");
    node.finish().await
}

/// Long tag values (stores may index them by digest) still match exactly,
/// long `d` tags are distinct addresses, and duplicate tags are kept as sent.
async fn long_and_duplicate_tag_values(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let prefix = "x".repeat(300);
    let (da, db) = (format!("{prefix}a"), format!("{prefix}b"));
    let art_a = event(&keys, 30_023, "a", &[&["d", &da]]);
    let art_b = event(&keys, 30_023, "b", &[&["d", &db]]);
    c.publish_all(&[&art_a, &art_b]).await?;
    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [30_023]})])
        .await?;
    assert_id_set(
        "long d tags sharing a 300-byte prefix",
        &got,
        &[&art_a, &art_b],
    );
    let got = c.query_once(&[json!({"#d": [da]})]).await?;
    assert_ids("#d long value a", &got, &[&art_a]);

    let long = "v".repeat(5_000);
    let e = event(&keys, 1, "long t", &[&["t", &long]]);
    c.publish_all(&[&e]).await?;
    let got = c.query_once(&[json!({"#t": ["v".repeat(4_999)]})]).await?;
    assert!(got.is_empty(), "a shorter value matched a long tag value");
    let got = c.query_once(&[json!({"#t": [format!("{long}v")]})]).await?;
    assert!(got.is_empty(), "a longer value matched a long tag value");
    let got = c.query_once(&[json!({"#t": [long]})]).await?;
    assert_ids("exact long value", &got, &[&e]);

    let dup = event(
        &keys,
        1,
        "dup tags",
        &[&["t", "same"], &["t", "same"], &["p", &pk], &["p", &pk]],
    );
    c.publish(&dup).await?.assert_accepted("duplicate tags");
    let got = c.query_once(&[json!({"#t": ["same"]})]).await?;
    assert_ids("duplicate tags: served once", &got, &[&dup]);
    assert_eq!(
        got[0].tags, dup.tags,
        "duplicate tags must be kept as signed"
    );
    assert_eq!(
        c.count("c", &[json!({"#t": ["same"]})]).await?,
        CountResult::Count(1),
        "an event with a duplicated tag is counted once"
    );
    node.finish().await
}
