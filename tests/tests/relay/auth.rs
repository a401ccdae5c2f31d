//! NIP-42 AUTH and NIP-70 protected events.

use cairn_e2e::serde_json::json;
use cairn_e2e::*;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    challenge_sent_on_connect,
    valid_auth_accepted,
    invalid_auth_events_rejected,
    auth_with_configured_public_url,
    two_pubkeys_on_one_connection,
    resend_req_after_auth_required,
    protected_events_nip70,
);

const REJECT: &[&str] = &["auth-required:", "invalid:", "restricted:", "error:"];

async fn challenge_sent_on_connect(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut raw = WsClient::connect_raw(&node.ws_url()).await?;
    // Without sending anything, the first message is the challenge.
    let first = raw.recv_json().await?;
    assert_eq!(first[0], "AUTH", "first message: {first}");
    let challenge = first[1].as_str().unwrap_or_default();
    assert!(
        challenge.len() >= 16,
        "challenge too short to be unguessable: {first}"
    );
    assert_eq!(first.as_array().map(Vec::len), Some(2), "{first}");
    let other = node.connect().await?;
    assert_ne!(
        challenge, other.challenge,
        "two connections got the same challenge"
    );
    node.finish().await
}

async fn valid_auth_accepted(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let keys = Keys::generate();

    let mut c = node.connect().await?;
    c.auth(&keys).await?.assert_accepted("AUTH with ws://addr");

    // A trailing slash on the relay URL does not matter.
    let mut c = node.connect().await?;
    let url = format!("{}/", node.ws_url());
    c.auth_as(&keys, &url)
        .await?
        .assert_accepted("AUTH with trailing slash");

    // Within the window on both sides.
    let mut c = node.connect().await?;
    let e = auth_event(
        &keys,
        &c.challenge.clone(),
        &node.ws_url(),
        Timestamp::from_secs(now() - 300),
    );
    c.send_auth(&e).await?.assert_accepted("AUTH 5 minutes old");
    let mut c = node.connect().await?;
    let e = auth_event(
        &keys,
        &c.challenge.clone(),
        &node.ws_url(),
        Timestamp::from_secs(now() + 300),
    );
    c.send_auth(&e)
        .await?
        .assert_accepted("AUTH 5 minutes ahead");
    node.finish().await
}

async fn invalid_auth_events_rejected(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let keys = Keys::generate();
    let url = node.ws_url();

    // Wrong relay URL (other port, other host, wss).
    for wrong in [
        format!("ws://127.0.0.1:{}", node.addr.port().wrapping_add(1)),
        format!("ws://example.com:{}", node.addr.port()),
        "wss://relay.example.com".to_owned(),
    ] {
        let mut c = node.connect().await?;
        c.auth_as(&keys, &wrong)
            .await?
            .assert_rejected(&format!("AUTH with relay {wrong}"), REJECT);
    }

    // Wrong challenge, and another connection's challenge.
    let mut c = node.connect().await?;
    let e = auth_event(&keys, "not-the-challenge", &url, Timestamp::now());
    c.send_auth(&e)
        .await?
        .assert_rejected("wrong challenge", REJECT);
    let other = node.connect().await?;
    let e = auth_event(&keys, &other.challenge, &url, Timestamp::now());
    c.send_auth(&e)
        .await?
        .assert_rejected("another connection's challenge", REJECT);

    // Stale and far-future created_at (window is ±10 min).
    let mut c = node.connect().await?;
    let ch = c.challenge.clone();
    let e = auth_event(&keys, &ch, &url, Timestamp::from_secs(now() - 20 * 60));
    c.send_auth(&e)
        .await?
        .assert_rejected("AUTH 20 minutes old", REJECT);
    let e = auth_event(&keys, &ch, &url, Timestamp::from_secs(now() + 20 * 60));
    c.send_auth(&e)
        .await?
        .assert_rejected("AUTH 20 minutes in the future", REJECT);

    // Wrong kind.
    let e = EventBuilder::new(Kind::TextNote, "")
        .tags([tag(&["relay", &url]), tag(&["challenge", &ch])])
        .sign_with_keys(&keys)?;
    c.send_auth(&e)
        .await?
        .assert_rejected("AUTH with kind 1", REJECT);

    // Missing tags.
    let e = EventBuilder::new(Kind::Authentication, "")
        .tags([tag(&["relay", &url])])
        .sign_with_keys(&keys)?;
    c.send_auth(&e)
        .await?
        .assert_rejected("AUTH without challenge", REJECT);

    // Bad signature.
    let good = auth_event(&keys, &ch, &url, Timestamp::now());
    let mut v = to_value(&good);
    let sig = v["sig"].as_str().unwrap_or_default().to_owned();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    v["sig"] = json!(format!("{flipped}{}", &sig[1..]));
    c.send_json(&json!(["AUTH", v])).await?;
    let reply = c
        .recv_until("OK or NOTICE for a badly signed AUTH", |m| {
            (m[0] == "OK" && m[1] == v["id"]) || m[0] == "NOTICE"
        })
        .await?;
    if reply[0] == "OK" {
        parse_ok(&reply)?.assert_rejected("AUTH with bad signature", REJECT);
    }

    // None of the failures authenticated the connection: private kinds
    // still need AUTH.
    let closed = c
        .req(
            "dm",
            &[json!({"kinds": [1059], "#p": [keys.public_key().to_hex()]})],
        )
        .await?
        .closed("REQ for 1059 after failed AUTHs");
    assert_prefix("REQ after failed AUTHs", &closed, &["auth-required:"]);

    // And the good one still works afterwards on the same connection.
    c.send_auth(&good)
        .await?
        .assert_accepted("valid AUTH after failures");
    node.finish().await
}

async fn auth_with_configured_public_url(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.relay.public_url = Some("wss://relay.example.com/".into());
    })
    .await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    c.auth_as(&keys, &node.ws_url())
        .await?
        .assert_rejected("bind address when a public URL is configured", REJECT);
    let mut c = node.connect().await?;
    c.auth_as(&keys, "wss://relay.example.com")
        .await?
        .assert_accepted("configured public URL without slash");
    node.finish().await
}

async fn two_pubkeys_on_one_connection(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let mut publisher = node.connect().await?;
    let to_alice = gift_wrap_to(&alice.public_key(), "for alice");
    let to_bob = gift_wrap_to(&bob.public_key(), "for bob");
    publisher.publish_all(&[&to_alice, &to_bob]).await?;

    let mut c = node.connect().await?;
    c.auth(&alice).await?.assert_accepted("alice");
    let got = c.query_once(&[json!({"kinds": [1059]})]).await?;
    assert_ids("only alice authenticated", &got, &[&to_alice]);
    c.auth(&bob)
        .await?
        .assert_accepted("bob on the same connection");
    let got = c.query_once(&[json!({"kinds": [1059]})]).await?;
    assert_id_set("alice and bob authenticated", &got, &[&to_alice, &to_bob]);
    let got = c
        .query_once(&[json!({"kinds": [1059], "#p": [bob.public_key().to_hex()]})])
        .await?;
    assert_ids("#p bob", &got, &[&to_bob]);
    node.finish().await
}

async fn resend_req_after_auth_required(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let bob = Keys::generate();
    let mut publisher = node.connect().await?;
    let gw = gift_wrap_to(&bob.public_key(), "hello bob");
    publisher.publish_all(&[&gw]).await?;

    let mut c = node.connect().await?;
    let filter = json!({"kinds": [1059], "#p": [bob.public_key().to_hex()]});
    let closed = c
        .req("inbox", std::slice::from_ref(&filter))
        .await?
        .closed("REQ for 1059 before AUTH");
    assert_prefix("REQ before AUTH", &closed, &["auth-required:"]);
    let closed = c
        .req(
            "legacy",
            &[json!({"kinds": [4], "#p": [bob.public_key().to_hex()]})],
        )
        .await?
        .closed("REQ for kind 4 before AUTH");
    assert_prefix("kind 4 REQ before AUTH", &closed, &["auth-required:"]);

    c.auth(&bob).await?.assert_accepted("bob");
    let got = c.query("inbox", &[filter]).await?;
    assert_ids("re-sent REQ after AUTH", &got, &[&gw]);
    // The re-sent subscription is live.
    let gw2 = gift_wrap_to(&bob.public_key(), "second");
    publisher.publish_all(&[&gw2]).await?;
    assert_eq!(c.next_event("inbox").await?.id, gw2.id);
    node.finish().await
}

async fn protected_events_nip70(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let alice = Keys::generate();
    let eve = Keys::generate();
    let protected = event(&alice, 1, "only from alice herself", &[&["-"]]);

    let mut anon = node.connect().await?;
    anon.publish(&protected)
        .await?
        .assert_rejected("protected event without AUTH", &["auth-required:"]);

    let mut as_eve = node.connect().await?;
    as_eve.auth(&eve).await?.assert_accepted("eve");
    as_eve.publish(&protected).await?.assert_rejected(
        "protected event from someone else",
        &["restricted:", "auth-required:", "blocked:"],
    );

    let got = anon
        .query_once(&[json!({"ids": [protected.id.to_hex()]})])
        .await?;
    assert!(got.is_empty(), "rejected protected event was stored");

    let mut as_alice = node.connect().await?;
    as_alice.auth(&alice).await?.assert_accepted("alice");
    as_alice
        .publish(&protected)
        .await?
        .assert_accepted("protected event from its authenticated author");
    // Protected events are readable by anyone.
    let got = anon
        .query_once(&[json!({"ids": [protected.id.to_hex()]})])
        .await?;
    assert_ids("protected event served", &got, &[&protected]);
    node.finish().await
}
