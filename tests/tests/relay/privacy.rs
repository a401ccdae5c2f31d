//! Private messages (kind 1059 gift wraps, legacy kind 4): who may read them,
//! on stored results, COUNT and live fan-out; the inbox policy; store-and-forward.

use cairn_e2e::serde_json::{json, Value};
use cairn_e2e::*;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    private_messages_hidden_without_auth,
    private_messages_hidden_from_other_pubkeys,
    private_messages_visible_to_recipient,
    private_messages_live_delivery,
    inbox_policy_allowed_recipients,
    store_and_forward_with_since,
);

struct World {
    alice: Keys,
    bob: Keys,
    eve: Keys,
    /// Gift wrap for bob (one-time author).
    gw: Event,
    /// Legacy DM alice → bob.
    dm: Event,
    /// Public note by alice mentioning bob.
    public: Event,
}

async fn world(node: &TestNode) -> anyhow::Result<World> {
    let alice = Keys::generate();
    let bob = Keys::generate();
    let eve = Keys::generate();
    let gw = gift_wrap_to(&bob.public_key(), "sealed for bob");
    let dm = dm(&alice, &bob.public_key(), "legacy dm");
    let public = event(&alice, 1, "hi @bob", &[&["p", &bob.public_key().to_hex()]]);
    let mut c = node.connect().await?;
    c.publish_all(&[&gw, &dm, &public]).await?;
    c.close().await;
    Ok(World {
        alice,
        bob,
        eve,
        gw,
        dm,
        public,
    })
}

fn private_ids(w: &World) -> [String; 2] {
    [w.gw.id.to_hex(), w.dm.id.to_hex()]
}

/// Filters that do not name kind 4/1059 but would match the private events.
fn sneaky_filters(w: &World) -> Vec<(&'static str, Value)> {
    let bob = w.bob.public_key().to_hex();
    let alice = w.alice.public_key().to_hex();
    vec![
        ("#p without kinds", json!({"#p": [bob]})),
        ("empty filter", json!({})),
        ("by id", json!({"ids": private_ids(w)})),
        (
            "by author",
            json!({"authors": [alice, w.gw.pubkey.to_hex()]}),
        ),
        ("since", json!({"since": now() - 3600})),
        ("limit only", json!({"limit": 100})),
    ]
}

/// Run every sneaky filter and assert that no private event comes out;
/// return what came out for the `#p` filter.
async fn assert_no_private(c: &mut WsClient, w: &World, who: &str) -> anyhow::Result<()> {
    let private = private_ids(w);
    for (i, (what, filter)) in sneaky_filters(w).into_iter().enumerate() {
        let result = c
            .req(&format!("{who}{i}"), std::slice::from_ref(&filter))
            .await?;
        let leaked: Vec<_> = result
            .events
            .iter()
            .filter(|e| private.contains(&e.id.to_hex()))
            .map(|e| e.kind.as_u16())
            .collect();
        assert!(
            leaked.is_empty(),
            "{who}: REQ {what} {filter} leaked private events of kinds {leaked:?}"
        );
        if let ReqEnd::Closed(m) = &result.end {
            panic!("{who}: REQ {what} without private kinds must not be CLOSED, got {m:?}");
        }
        c.send_json(&json!(["CLOSE", format!("{who}{i}")])).await?;
    }
    // Several filters in one REQ: a public one first must not open the door.
    let result = c
        .req(
            &format!("{who}-multi"),
            &[
                json!({"kinds": [1]}),
                json!({"#p": [w.bob.public_key().to_hex()]}),
            ],
        )
        .await?;
    assert!(
        !result
            .events
            .iter()
            .any(|e| private.contains(&e.id.to_hex())),
        "{who}: multi-filter REQ leaked a private event"
    );
    // COUNT never counts what the reader may not see.
    let count = c
        .count(
            &format!("{who}-count"),
            &[json!({"#p": [w.bob.public_key().to_hex()]})],
        )
        .await?;
    assert_eq!(
        count,
        CountResult::Count(1),
        "{who}: COUNT #p bob must count only the public note"
    );
    let count = c.count(&format!("{who}-count-all"), &[json!({})]).await?;
    assert_eq!(count, CountResult::Count(1), "{who}: COUNT {{}}");
    Ok(())
}

async fn private_messages_hidden_without_auth(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let w = world(&node).await?;
    let mut c = node.connect().await?;
    let bob = w.bob.public_key().to_hex();

    for (what, filter) in [
        ("1059 #p", json!({"kinds": [1059], "#p": [bob]})),
        ("4 #p", json!({"kinds": [4], "#p": [bob]})),
        ("1059 alone", json!({"kinds": [1059]})),
        ("1 and 4", json!({"kinds": [1, 4]})),
    ] {
        let closed = c.req("priv", &[filter]).await?.closed(what);
        assert_prefix(what, &closed, &["auth-required:"]);
    }
    // One private filter among public ones closes the REQ as well (nothing is
    // silently dropped the client asked for by kind).
    let result = c
        .req("mixed", &[json!({"kinds": [1]}), json!({"kinds": [1059]})])
        .await?;
    assert!(
        !result.events.iter().any(|e| e.kind.as_u16() == 1059),
        "mixed REQ leaked a gift wrap"
    );

    // COUNT naming a private kind: CLOSED auth-required or a count of 0.
    match c.count("cnt", &[json!({"kinds": [1059]})]).await? {
        CountResult::Closed(m) => assert_prefix("COUNT 1059 without AUTH", &m, &["auth-required:"]),
        CountResult::Count(n) => assert_eq!(n, 0, "COUNT 1059 without AUTH"),
    }
    assert_no_private(&mut c, &w, "anon").await?;

    // The public note is visible.
    let got = c.query_once(&[json!({"#p": [bob]})]).await?;
    assert_ids("public note", &got, &[&w.public]);
    node.finish().await
}

async fn private_messages_hidden_from_other_pubkeys(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let w = world(&node).await?;
    let bob = w.bob.public_key().to_hex();
    let mut c = node.connect().await?;
    c.auth(&w.eve).await?.assert_accepted("eve");

    for (what, filter) in [
        ("1059 #p bob", json!({"kinds": [1059], "#p": [bob]})),
        ("4 #p bob", json!({"kinds": [4], "#p": [bob]})),
        ("1059", json!({"kinds": [1059]})),
        (
            "4 by alice",
            json!({"kinds": [4], "authors": [w.alice.public_key().to_hex()]}),
        ),
    ] {
        let result = c.req(what, &[filter]).await?;
        assert!(
            result.events.is_empty(),
            "eve: REQ {what} returned {} events",
            result.events.len()
        );
        if let ReqEnd::Closed(m) = result.end {
            assert_prefix(what, &m, &["restricted:", "auth-required:"]);
        }
    }
    match c.count("cnt", &[json!({"kinds": [1059, 4]})]).await? {
        CountResult::Closed(m) => {
            assert_prefix("eve COUNT", &m, &["restricted:", "auth-required:"])
        }
        CountResult::Count(n) => assert_eq!(n, 0, "eve: COUNT of private kinds"),
    }
    assert_no_private(&mut c, &w, "eve").await?;

    // The gift wrap's author is a one-time key: authenticating as the sender
    // of kind 4 (alice) shows her DM but not bob's gift wrap.
    let mut a = node.connect().await?;
    a.auth(&w.alice).await?.assert_accepted("alice");
    let got = a.query_once(&[json!({"kinds": [4, 1059]})]).await?;
    assert_ids("alice sees her own kind 4 only", &got, &[&w.dm]);
    node.finish().await
}

async fn private_messages_visible_to_recipient(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let w = world(&node).await?;
    let bob = w.bob.public_key().to_hex();
    let mut c = node.connect().await?;
    c.auth(&w.bob).await?.assert_accepted("bob");

    let got = c
        .query_once(&[json!({"kinds": [1059], "#p": [bob]})])
        .await?;
    assert_ids("gift wrap for bob", &got, &[&w.gw]);
    let got = c.query_once(&[json!({"kinds": [4], "#p": [bob]})]).await?;
    assert_ids("kind 4 for bob", &got, &[&w.dm]);
    let got = c.query_once(&[json!({"#p": [bob]})]).await?;
    assert_id_set("#p bob without kinds", &got, &[&w.gw, &w.dm, &w.public]);
    let got = c.query_once(&[json!({})]).await?;
    assert_id_set("empty filter", &got, &[&w.gw, &w.dm, &w.public]);
    assert_eq!(
        c.count("c1", &[json!({"#p": [bob]})]).await?,
        CountResult::Count(3)
    );
    assert_eq!(
        c.count("c2", &[json!({"kinds": [1059]})]).await?,
        CountResult::Count(1)
    );

    // A gift wrap to eve is still invisible to bob.
    let to_eve = gift_wrap_to(&w.eve.public_key(), "for eve");
    c.publish_all(&[&to_eve]).await?;
    let got = c.query_once(&[json!({"kinds": [1059]})]).await?;
    assert_ids("bob sees only his gift wrap", &got, &[&w.gw]);
    node.finish().await
}

async fn private_messages_live_delivery(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let bob = Keys::generate();
    let eve = Keys::generate();
    let bob_hex = bob.public_key().to_hex();

    let gw = gift_wrap_to(&bob.public_key(), "live for bob");
    let dm = dm(&Keys::generate(), &bob.public_key(), "live legacy dm");
    let marker = event(&Keys::generate(), 1, "marker", &[&["p", &bob_hex]]);
    let by_id = json!({"ids": [gw.id.to_hex(), dm.id.to_hex(), marker.id.to_hex()]});

    let mut anon = node.connect().await?;
    anon.query("all", &[json!({})]).await?;
    anon.query("p", &[json!({"#p": [bob_hex]})]).await?;
    anon.query("ids", std::slice::from_ref(&by_id)).await?;

    let mut as_eve = node.connect().await?;
    as_eve.auth(&eve).await?.assert_accepted("eve");
    as_eve.query("all", &[json!({})]).await?;
    as_eve.query("p", &[json!({"#p": [bob_hex]})]).await?;
    as_eve.query("gw", &[json!({"kinds": [1059]})]).await?;
    as_eve.query("dm", &[json!({"kinds": [4]})]).await?;
    as_eve.query("ids", std::slice::from_ref(&by_id)).await?;

    let mut as_bob = node.connect().await?;
    as_bob.auth(&bob).await?.assert_accepted("bob");
    as_bob.query("all", &[json!({})]).await?;
    as_bob
        .query("gw", &[json!({"kinds": [1059], "#p": [bob_hex]})])
        .await?;

    let mut publisher = node.connect().await?;
    publisher.publish_all(&[&gw, &dm]).await?;

    // Bob gets both, on both subscriptions where they match.
    let mut got = vec![
        as_bob.next_event("all").await?,
        as_bob.next_event("all").await?,
    ];
    assert_id_set("bob live on {}", &got, &[&gw, &dm]);
    got = vec![as_bob.next_event("gw").await?];
    assert_ids("bob live on kinds 1059", &got, &[&gw]);

    // Markers: a public note tagging bob, and a gift wrap for eve. Everything
    // published before them would have arrived first.
    let for_eve = gift_wrap_to(&eve.public_key(), "for eve");
    publisher.publish_all(&[&marker, &for_eve]).await?;

    assert_eq!(anon.next_event("all").await?.id, marker.id);
    assert_eq!(anon.next_event("p").await?.id, marker.id);
    assert_eq!(as_eve.next_event("p").await?.id, marker.id);
    assert_eq!(anon.next_event("ids").await?.id, marker.id, "anon by id");
    assert_eq!(as_eve.next_event("ids").await?.id, marker.id, "eve by id");
    assert_eq!(as_eve.next_event("gw").await?.id, for_eve.id);
    let mut eve_all = vec![
        as_eve.next_event("all").await?,
        as_eve.next_event("all").await?,
    ];
    eve_all.sort_by_key(|e| e.kind.as_u16());
    assert_ids("eve on {}", &eve_all, &[&marker, &for_eve]);

    let private = [gw.id.to_hex(), dm.id.to_hex()];
    for (who, c) in [("anon", &mut anon), ("eve", &mut as_eve)] {
        let leaked: Vec<Value> = c
            .drain_for(std::time::Duration::from_millis(300))
            .await
            .into_iter()
            .filter(|v| {
                v[0] == "EVENT"
                    && v[2]["id"]
                        .as_str()
                        .is_some_and(|id| private.iter().any(|p| p == id))
            })
            .collect();
        assert!(leaked.is_empty(), "{who}: live fan-out leaked {leaked:?}");
    }
    // Bob does not get eve's gift wrap.
    let bob_extra: Vec<Value> = as_bob
        .drain_for(std::time::Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|v| v[0] == "EVENT" && v[2]["id"] == json!(for_eve.id.to_hex()))
        .collect();
    assert!(bob_extra.is_empty(), "bob received eve's gift wrap live");
    node.finish().await
}

async fn inbox_policy_allowed_recipients(backend: Backend) -> anyhow::Result<()> {
    let bob = Keys::generate();
    let carol = Keys::generate();
    let bob_pk = bob.public_key();
    let node = TestNode::start_with(&backend, |s| {
        s.relay.inbox.allowed_recipients = Some(vec![bob_pk]);
    })
    .await?;
    let mut c = node.connect().await?;
    c.publish(&gift_wrap_to(&bob.public_key(), "served recipient"))
        .await?
        .assert_accepted("gift wrap for an allowed recipient");
    let refused = gift_wrap_to(&carol.public_key(), "not served here");
    c.publish(&refused).await?.assert_rejected(
        "gift wrap for another recipient",
        &["blocked:", "restricted:"],
    );
    let no_p = event(&Keys::generate(), 1059, "no recipient", &[]);
    c.publish(&no_p).await?.assert_rejected(
        "gift wrap without p tag",
        &["blocked:", "restricted:", "invalid:"],
    );
    let both = event(
        &Keys::generate(),
        1059,
        "cc",
        &[
            &["p", &carol.public_key().to_hex()],
            &["p", &bob.public_key().to_hex()],
        ],
    );
    c.publish(&both)
        .await?
        .assert_accepted("gift wrap naming an allowed recipient among others");
    // Other kinds are not affected by the inbox policy.
    c.publish(&event(
        &carol,
        1,
        "public",
        &[&["p", &carol.public_key().to_hex()]],
    ))
    .await?
    .assert_accepted("kind 1 under an inbox policy");

    let mut as_carol = node.connect().await?;
    as_carol.auth(&carol).await?.assert_accepted("carol");
    let got = as_carol.query_once(&[json!({"kinds": [1059]})]).await?;
    assert_ids("carol sees only the cc'd gift wrap", &got, &[&both]);
    node.finish().await
}

async fn store_and_forward_with_since(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let bob = Keys::generate();
    let bob_hex = bob.public_key().to_hex();

    // Bob was last online at `last_seen`, then went offline.
    let last_seen = now() - 600;
    let old = event_at(
        &Keys::generate(),
        1059,
        "before last seen",
        &[&["p", &bob_hex]],
        last_seen - 100,
    );
    let mut sender = node.connect().await?;
    sender.publish_all(&[&old]).await?;

    // While bob is offline, three messages arrive (from different one-time keys).
    let mut waiting = Vec::new();
    for i in 0..3 {
        let e = event_at(
            &Keys::generate(),
            1059,
            &format!("while offline {i}"),
            &[&["p", &bob_hex]],
            last_seen + 10 * (i + 1),
        );
        sender.publish_all(&[&e]).await?;
        waiting.push(e);
    }
    sender.close().await;

    // Bob reconnects, authenticates and asks for what he missed.
    let mut c = node.connect().await?;
    let filter = json!({"kinds": [1059], "#p": [bob_hex], "since": last_seen});
    let closed = c
        .req("inbox", std::slice::from_ref(&filter))
        .await?
        .closed("before AUTH");
    assert_prefix("inbox before AUTH", &closed, &["auth-required:"]);
    c.auth(&bob).await?.assert_accepted("bob");
    let got = c.query("inbox", &[filter]).await?;
    let expected: Vec<&Event> = waiting.iter().rev().collect();
    assert_ids("messages since last seen, newest first", &got, &expected);
    node.finish().await
}
