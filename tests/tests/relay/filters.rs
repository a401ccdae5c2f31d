//! NIP-01 filters (every field), OR-ed filters, ordering and limit, live
//! delivery after EOSE, CLOSE, and NIP-45 COUNT.

use cairn_e2e::serde_json::json;
use cairn_e2e::*;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    every_filter_field,
    ored_filters_and_limits,
    ties_ordered_by_lowest_id,
    live_events_after_eose_and_close,
    resubscribing_with_same_id_replaces_filters,
    count_matches_req,
);

/// A small data set with distinct timestamps.
struct Data {
    t0: u64,
    alice: Keys,
    bob: Keys,
    e1: Event,
    e2: Event,
    e3: Event,
    e4: Event,
    e5: Event,
    e6: Event,
}

fn data() -> Data {
    let t0 = now() - 10_000;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let carol = Keys::generate();
    let e1 = event_at(&alice, 1, "one", &[&["t", "rust"]], t0 + 1);
    let e2 = event_at(
        &alice,
        1,
        "two",
        &[&["t", "nostr"], &["p", &bob.public_key().to_hex()]],
        t0 + 2,
    );
    let e3 = event_at(
        &bob,
        1,
        "three",
        &[&["e", &e1.id.to_hex()], &["t", "rust"]],
        t0 + 3,
    );
    let e4 = event_at(
        &bob,
        7,
        "+",
        &[
            &["e", &e2.id.to_hex()],
            &["p", &alice.public_key().to_hex()],
        ],
        t0 + 4,
    );
    let e5 = event_at(
        &alice,
        30023,
        "article",
        &[&["d", "article"], &["x", "custom"], &["K", "Upper"]],
        t0 + 5,
    );
    let e6 = event_at(&carol, 1, "six", &[&["t", "rust"], &["t", "nostr"]], t0 + 6);
    Data {
        t0,
        alice,
        bob,
        e1,
        e2,
        e3,
        e4,
        e5,
        e6,
    }
}

async fn node_with_data(backend: &Backend) -> anyhow::Result<(TestNode, WsClient, Data)> {
    let node = TestNode::start(backend).await?;
    let mut c = node.connect().await?;
    let d = data();
    c.publish_all(&[&d.e1, &d.e2, &d.e3, &d.e4, &d.e5, &d.e6])
        .await?;
    Ok((node, c, d))
}

async fn every_filter_field(backend: Backend) -> anyhow::Result<()> {
    let (node, mut c, d) = node_with_data(&backend).await?;
    let (a, b) = (d.alice.public_key().to_hex(), d.bob.public_key().to_hex());
    let id = |e: &Event| e.id.to_hex();

    let cases: Vec<(&str, serde_json::Value, Vec<&Event>)> = vec![
        (
            "ids",
            json!({"ids": [id(&d.e1), id(&d.e3)]}),
            vec![&d.e3, &d.e1],
        ),
        (
            "authors",
            json!({"authors": [a]}),
            vec![&d.e5, &d.e2, &d.e1],
        ),
        (
            "two authors",
            json!({"authors": [a, b]}),
            vec![&d.e5, &d.e4, &d.e3, &d.e2, &d.e1],
        ),
        ("kinds", json!({"kinds": [7, 30023]}), vec![&d.e5, &d.e4]),
        ("#e", json!({"#e": [id(&d.e1)]}), vec![&d.e3]),
        ("#p", json!({"#p": [b]}), vec![&d.e2]),
        (
            "#t one value",
            json!({"#t": ["rust"]}),
            vec![&d.e6, &d.e3, &d.e1],
        ),
        (
            "#t two values",
            json!({"#t": ["rust", "nostr"]}),
            vec![&d.e6, &d.e3, &d.e2, &d.e1],
        ),
        ("#d", json!({"#d": ["article"]}), vec![&d.e5]),
        (
            "#x (any single letter)",
            json!({"#x": ["custom"]}),
            vec![&d.e5],
        ),
        (
            "#K (upper-case letter)",
            json!({"#K": ["Upper"]}),
            vec![&d.e5],
        ),
        ("#t no match", json!({"#t": ["absent"]}), vec![]),
        (
            "since inclusive",
            json!({"since": d.t0 + 4}),
            vec![&d.e6, &d.e5, &d.e4],
        ),
        (
            "until inclusive",
            json!({"until": d.t0 + 2}),
            vec![&d.e2, &d.e1],
        ),
        (
            "since and until",
            json!({"since": d.t0 + 2, "until": d.t0 + 4}),
            vec![&d.e4, &d.e3, &d.e2],
        ),
        (
            "limit keeps the newest",
            json!({"limit": 2}),
            vec![&d.e6, &d.e5],
        ),
        ("limit 0", json!({"limit": 0}), vec![]),
        (
            "fields are AND-ed",
            json!({"authors": [a], "kinds": [1], "#t": ["nostr"]}),
            vec![&d.e2],
        ),
        (
            "tag filter AND kind",
            json!({"kinds": [1], "#t": ["rust"], "until": d.t0 + 3}),
            vec![&d.e3, &d.e1],
        ),
        (
            "unknown author",
            json!({"authors": [Keys::generate().public_key().to_hex()]}),
            vec![],
        ),
        (
            "empty filter: everything",
            json!({}),
            vec![&d.e6, &d.e5, &d.e4, &d.e3, &d.e2, &d.e1],
        ),
    ];
    for (i, (what, filter, expected)) in cases.into_iter().enumerate() {
        let got = c
            .query(&format!("s{i}"), std::slice::from_ref(&filter))
            .await?;
        assert_ids(&format!("{what} {filter}"), &got, &expected);
        c.send_json(&json!(["CLOSE", format!("s{i}")])).await?;
    }
    node.finish().await
}

async fn ored_filters_and_limits(backend: Backend) -> anyhow::Result<()> {
    let (node, mut c, d) = node_with_data(&backend).await?;
    let (a, b) = (d.alice.public_key().to_hex(), d.bob.public_key().to_hex());

    // Union without duplicates (e1 matches both filters).
    let got = c
        .query("or", &[json!({"authors": [a]}), json!({"#t": ["rust"]})])
        .await?;
    assert_id_set(
        "two OR-ed filters",
        &got,
        &[&d.e1, &d.e2, &d.e5, &d.e3, &d.e6],
    );

    // Each filter's limit applies to that filter.
    let got = c
        .query(
            "or-limits",
            &[
                json!({"authors": [a], "limit": 1}),
                json!({"authors": [b], "limit": 1}),
            ],
        )
        .await?;
    assert_id_set("per-filter limits", &got, &[&d.e5, &d.e4]);

    // A filter that matches nothing does not disturb the others.
    let got = c
        .query(
            "or-empty",
            &[json!({"ids": [d.e2.id.to_hex()]}), json!({"kinds": [9999]})],
        )
        .await?;
    assert_ids("OR with an empty filter", &got, &[&d.e2]);
    node.finish().await
}

async fn ties_ordered_by_lowest_id(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let at = now() - 100;
    let tags: &[&[&str]] = &[&["t", "tie"], &["t", "other"]];
    let mut events: Vec<Event> = (0..6)
        .map(|i| event_at(&keys, 1, &format!("tie {i}"), tags, at))
        .collect();
    events.push(event_at(&keys, 1, "newer", tags, at + 1));
    events.push(event_at(&keys, 1, "older", tags, at - 1));
    for e in &events {
        c.publish_all(&[e]).await?;
    }
    newest_first(&mut events);
    let expected: Vec<&Event> = events.iter().collect();
    let got = c
        .query("ties", &[json!({"authors": [keys.public_key().to_hex()]})])
        .await?;
    assert_ids("newest first, ties by lowest id", &got, &expected);

    let got = c
        .query(
            "ties-limit",
            &[json!({"authors": [keys.public_key().to_hex()], "limit": 3})],
        )
        .await?;
    assert_ids("limit 3 over ties", &got, &expected[..3]);

    // The same order whichever index drives the query.
    for (what, filter) in [
        ("one tag value", json!({"#t": ["tie"]})),
        ("two tag values", json!({"#t": ["tie", "other"]})),
        ("kind", json!({"kinds": [1]})),
        (
            "tag and author",
            json!({"#t": ["tie"], "authors": [keys.public_key().to_hex()]}),
        ),
        ("ids", json!({"ids": hex_ids(&events)})),
        ("since", json!({"since": at - 1})),
    ] {
        let got = c.query_once(std::slice::from_ref(&filter)).await?;
        assert_ids(&format!("ties via {what}"), &got, &expected);
        let mut limited = filter.clone();
        limited["limit"] = json!(4);
        let got = c.query_once(&[limited]).await?;
        assert_ids(&format!("ties via {what}, limit 4"), &got, &expected[..4]);
    }
    node.finish().await
}

async fn live_events_after_eose_and_close(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut sub = node.connect().await?;
    let mut publisher = node.connect().await?;
    let keys = Keys::generate();

    let stored = event(&keys, 1, "stored", &[&["t", "live"]]);
    publisher.publish_all(&[&stored]).await?;

    let got = sub
        .query("live", &[json!({"kinds": [1], "#t": ["live"]})])
        .await?;
    assert_ids("stored part", &got, &[&stored]);
    sub.query("marker", &[json!({"#t": ["marker"]})]).await?;

    let other = event(&keys, 1, "other tag", &[&["t", "nope"]]);
    let other_kind = event(&keys, 7, "+", &[&["t", "live"]]);
    let matching = event(&keys, 1, "matching", &[&["t", "live"]]);
    publisher
        .publish_all(&[&other, &other_kind, &matching])
        .await?;
    let live = sub.next_event("live").await?;
    assert_eq!(live.id, matching.id, "first live event on 'live'");

    // A marker event proves ordering: nothing else arrived for 'live' before it.
    let marker = event(&keys, 1, "marker 1", &[&["t", "marker"]]);
    publisher.publish_all(&[&marker]).await?;
    assert_eq!(sub.next_event("marker").await?.id, marker.id);
    let stray: Vec<_> = sub
        .take_pending()
        .into_iter()
        .filter(|v| v[0] == "EVENT")
        .collect();
    assert!(stray.is_empty(), "non-matching events delivered: {stray:?}");

    // After CLOSE, 'live' gets nothing.
    sub.send_json(&json!(["CLOSE", "live"])).await?;
    let after_close = event(&keys, 1, "after close", &[&["t", "live"], &["t", "marker"]]);
    publisher.publish_all(&[&after_close]).await?;
    assert_eq!(sub.next_event("marker").await?.id, after_close.id);
    let stray: Vec<_> = sub
        .take_pending()
        .into_iter()
        .filter(|v| v[0] == "EVENT")
        .collect();
    assert!(stray.is_empty(), "events delivered after CLOSE: {stray:?}");

    // Live matching honours limit (stored part only), since and until.
    let t = now();
    sub.query("lim1", &[json!({"#t": ["burst"], "limit": 1})])
        .await?;
    sub.query("old", &[json!({"#t": ["burst"], "until": t - 100})])
        .await?;
    sub.query("future", &[json!({"#t": ["burst"], "since": t + 100})])
        .await?;
    let burst: Vec<Event> = (0..3)
        .map(|i| {
            event(
                &keys,
                1,
                &format!("burst {i}"),
                &[&["t", "burst"], &["t", "marker"]],
            )
        })
        .collect();
    for e in &burst {
        publisher.publish_all(&[e]).await?;
    }
    for e in &burst {
        assert_eq!(
            sub.next_event("lim1").await?.id,
            e.id,
            "limit must not cap live events"
        );
        assert_eq!(sub.next_event("marker").await?.id, e.id);
    }
    let fence = event(&keys, 1, "fence", &[&["t", "marker"]]);
    publisher.publish_all(&[&fence]).await?;
    assert_eq!(sub.next_event("marker").await?.id, fence.id);
    let stray: Vec<_> = sub
        .take_pending()
        .into_iter()
        .filter(|v| v[0] == "EVENT")
        .collect();
    assert!(
        stray.is_empty(),
        "live events outside since/until delivered: {stray:?}"
    );

    // The publisher's own subscription sees its own events too.
    publisher.query("own", &[json!({"#t": ["own"]})]).await?;
    let own = event(&keys, 1, "own", &[&["t", "own"]]);
    publisher.publish_all(&[&own]).await?;
    assert_eq!(publisher.next_event("own").await?.id, own.id);
    node.finish().await
}

async fn resubscribing_with_same_id_replaces_filters(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut sub = node.connect().await?;
    let mut publisher = node.connect().await?;
    let keys = Keys::generate();
    sub.query("s", &[json!({"#t": ["first"]})]).await?;
    sub.query("s", &[json!({"#t": ["second"]})]).await?;
    let first = event(&keys, 1, "first", &[&["t", "first"]]);
    let second = event(&keys, 1, "second", &[&["t", "second"]]);
    publisher.publish_all(&[&first, &second]).await?;
    let got = sub.next_event("s").await?;
    assert_eq!(
        got.id, second.id,
        "REQ with an existing id must replace the old filters (got the event for the old filter)"
    );
    node.finish().await
}

async fn count_matches_req(backend: Backend) -> anyhow::Result<()> {
    let (node, mut c, d) = node_with_data(&backend).await?;
    let a = d.alice.public_key().to_hex();
    assert_eq!(
        c.count("c1", &[json!({"#t": ["rust"]})]).await?,
        CountResult::Count(3)
    );
    assert_eq!(
        c.count("c2", &[json!({"authors": [a]}), json!({"#t": ["rust"]})])
            .await?,
        CountResult::Count(5),
        "COUNT over OR-ed filters counts each event once"
    );
    assert_eq!(
        c.count("c3", &[json!({"kinds": [12345]})]).await?,
        CountResult::Count(0)
    );
    assert_eq!(
        c.count("c4", &[json!({"since": d.t0 + 5})]).await?,
        CountResult::Count(2)
    );

    // COUNT with the id of an open subscription leaves that subscription alone.
    c.query("open", &[json!({"#t": ["count-live"]})]).await?;
    assert_eq!(
        c.count("open", &[json!({"#t": ["rust"]})]).await?,
        CountResult::Count(3)
    );
    let live = event(&d.alice, 1, "live after COUNT", &[&["t", "count-live"]]);
    c.publish_all(&[&live]).await?;
    assert_eq!(c.next_event("open").await?.id, live.id);
    node.finish().await
}
