//! NIP-09 deletion and NIP-40 expiration.

use std::time::Duration;

use cairn_e2e::serde_json::json;
use cairn_e2e::*;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    deletion_by_event_id,
    deletion_only_by_author,
    deletion_by_address,
    expired_event_rejected,
    expiring_event_stops_being_served,
);

async fn deletion_by_event_id(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let mut watcher = node.connect().await?;
    let alice = Keys::generate();
    let n1 = event_at(&alice, 1, "to be deleted", &[], now() - 30);
    let n2 = event_at(&alice, 1, "kept", &[], now() - 20);
    c.publish_all(&[&n1, &n2]).await?;

    let del = event(&alice, 5, "oops", &[&["e", &n1.id.to_hex()], &["k", "1"]]);
    c.publish(&del).await?.assert_accepted("deletion request");

    for client in [&mut c, &mut watcher] {
        let got = client
            .query_once(&[json!({"ids": [n1.id.to_hex(), n2.id.to_hex()]})])
            .await?;
        assert_ids("after deletion", &got, &[&n2]);
        let got = client
            .query_once(&[json!({"authors": [alice.public_key().to_hex()], "kinds": [1]})])
            .await?;
        assert_ids("after deletion, by author", &got, &[&n2]);
        assert_eq!(
            client
                .count("c", &[json!({"ids": [n1.id.to_hex()]})])
                .await?,
            CountResult::Count(0),
            "COUNT still counts a deleted event"
        );
    }
    // The deletion request itself is served.
    let got = c
        .query_once(&[json!({"kinds": [5], "authors": [alice.public_key().to_hex()]})])
        .await?;
    assert_ids("deletion request is stored", &got, &[&del]);

    // NIP-09: deleting a deletion request has no effect.
    let undelete = event(&alice, 5, "", &[&["e", &del.id.to_hex()]]);
    let _ = c.publish(&undelete).await?;
    let got = c.query_once(&[json!({"ids": [del.id.to_hex()]})]).await?;
    assert_ids(
        "deletion of a deletion request has no effect",
        &got,
        &[&del],
    );

    // Re-publishing the deleted event is refused and it stays deleted.
    let ok = watcher.publish(&n1).await?;
    assert!(
        !ok.accepted,
        "re-publishing a deleted event must be refused, got OK true {:?}",
        ok.message
    );
    let got = c.query_once(&[json!({"ids": [n1.id.to_hex()]})]).await?;
    assert!(got.is_empty(), "deleted event served after re-publish");
    node.finish().await
}

async fn deletion_only_by_author(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let alice = Keys::generate();
    let mallory = Keys::generate();
    let n = note(&alice, "alice's note");
    let addr = event(&alice, 30_023, "alice's article", &[&["d", "x"]]);
    c.publish_all(&[&n, &addr]).await?;

    let coordinate = format!("30023:{}:x", alice.public_key().to_hex());
    let forged = event(
        &mallory,
        5,
        "",
        &[&["e", &n.id.to_hex()], &["a", &coordinate]],
    );
    // Either refused or stored without effect.
    let _ = c.publish(&forged).await?;
    let got = c
        .query_once(&[json!({"authors": [alice.public_key().to_hex()]})])
        .await?;
    assert_id_set(
        "someone else's deletion request has no effect",
        &got,
        &[&n, &addr],
    );
    node.finish().await
}

async fn deletion_by_address(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let alice = Keys::generate();
    let pk = alice.public_key().to_hex();
    let t = now();
    let v1 = event_at(&alice, 30_023, "v1", &[&["d", "x"]], t - 100);
    let other_d = event_at(&alice, 30_023, "other", &[&["d", "y"]], t - 100);
    c.publish_all(&[&v1, &other_d]).await?;

    let del = event_at(&alice, 5, "", &[&["a", &format!("30023:{pk}:x")]], t - 10);
    c.publish(&del)
        .await?
        .assert_accepted("deletion by address");
    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [30_023]})])
        .await?;
    assert_ids("address x deleted, y kept", &got, &[&other_d]);

    // Versions up to the deletion's created_at are gone for good.
    let _ = c.publish(&v1).await?;
    let older = event_at(
        &alice,
        30_023,
        "older than deletion",
        &[&["d", "x"]],
        t - 50,
    );
    let _ = c.publish(&older).await?;
    let got = c
        .query_once(&[json!({"authors": [pk], "#d": ["x"]})])
        .await?;
    assert!(
        got.is_empty(),
        "a version older than the deletion request is served: {:?}",
        got.iter().map(|e| &e.content).collect::<Vec<_>>()
    );

    // Replaceable kinds are addressed with an empty d: `<kind>:<pubkey>:`.
    let relays = event_at(&alice, 10_002, "", &[&["r", "wss://a.example"]], t - 100);
    c.publish_all(&[&relays]).await?;
    let del_replaceable = event_at(&alice, 5, "", &[&["a", &format!("10002:{pk}:")]], t - 10);
    c.publish(&del_replaceable)
        .await?
        .assert_accepted("deletion of a replaceable event by address");
    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [10_002]})])
        .await?;
    assert!(
        got.is_empty(),
        "replaceable event deleted by `10002:<pk>:` is still served"
    );

    // NIP-09: a version newer than the deletion request is a new event.
    let newer = event_at(&alice, 30_023, "newer than deletion", &[&["d", "x"]], t);
    c.publish(&newer).await?.assert_accepted("newer version");
    let got = c
        .query_once(&[json!({"authors": [pk], "#d": ["x"]})])
        .await?;
    assert_ids("newer version after deletion", &got, &[&newer]);
    node.finish().await
}

async fn expired_event_rejected(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let expired = event(
        &keys,
        1,
        "expired",
        &[&["expiration", &(now() - 10).to_string()]],
    );
    let ok = c.publish(&expired).await?;
    assert_prefix(
        "already expired event",
        &ok.message,
        &["invalid:", "blocked:", "restricted:"],
    );
    assert!(!ok.accepted, "already-expired event accepted");
    let got = c
        .query_once(&[json!({"ids": [expired.id.to_hex()]})])
        .await?;
    assert!(got.is_empty(), "already-expired event stored");
    node.finish().await
}

async fn expiring_event_stops_being_served(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let expires_at = now() + 2;
    let soon = event(
        &keys,
        1,
        "soon gone",
        &[&["expiration", &expires_at.to_string()]],
    );
    let later = event(
        &keys,
        1,
        "stays",
        &[&["expiration", &(now() + 3600).to_string()]],
    );
    c.publish_all(&[&soon, &later]).await?;
    let filter = json!({"authors": [keys.public_key().to_hex()]});
    let got = c.query_once(std::slice::from_ref(&filter)).await?;
    assert_id_set("before expiry", &got, &[&soon, &later]);

    // Wait until the expiration second has fully passed.
    while now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = c.query_once(std::slice::from_ref(&filter)).await?;
    assert_ids("after expiry", &got, &[&later]);
    assert_eq!(
        c.count("c", std::slice::from_ref(&filter)).await?,
        CountResult::Count(1),
        "COUNT still counts an expired event"
    );
    let mut fresh = node.connect().await?;
    let got = fresh
        .query_once(&[json!({"ids": [soon.id.to_hex()]})])
        .await?;
    assert!(got.is_empty(), "expired event served by id");

    // The background purge (every second in tests) removes it from storage.
    let soon_id = soon.id.to_hex();
    assert_eq!(
        node.stored_rows(&later.id.to_hex()).await?,
        1,
        "row lookup works"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while node.stored_rows(&soon_id).await? > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "expired event still in the database 8 s after expiry (purge interval 1 s)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    node.finish().await
}
