//! Replaceable, addressable and ephemeral kinds; duplicates.

use cairn_e2e::serde_json::json;
use cairn_e2e::*;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    replaceable_keeps_newest,
    replaceable_tie_keeps_lowest_id,
    addressable_keeps_newest_per_d_tag,
    ephemeral_is_fanned_out_not_stored,
    duplicate_is_reported,
);

async fn replaceable_keeps_newest(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let t = now() - 100;

    for kind in [0u16, 3, 10_002] {
        let v1 = event_at(&keys, kind, "v1", &[], t);
        let v2 = event_at(&keys, kind, "v2", &[], t + 10);
        let older = event_at(&keys, kind, "older", &[], t - 10);
        c.publish_all(&[&v1, &v2]).await?;
        let got = c
            .query_once(&[json!({"authors": [pk], "kinds": [kind]})])
            .await?;
        assert_ids(&format!("kind {kind} after v2"), &got, &[&v2]);

        // An older version is not stored (accepted as a no-op or refused).
        let ok = c.publish(&older).await?;
        if !ok.accepted {
            assert_prefix(
                "older replaceable",
                &ok.message,
                &["duplicate:", "invalid:", "blocked:", "restricted:"],
            );
        }
        let got = c
            .query_once(&[json!({"authors": [pk], "kinds": [kind]})])
            .await?;
        assert_ids(&format!("kind {kind} after older"), &got, &[&v2]);
        // The replaced version is gone by id, too.
        let got = c.query_once(&[json!({"ids": [v1.id.to_hex()]})]).await?;
        assert!(
            got.is_empty(),
            "replaced kind {kind} event still served by id"
        );
    }
    assert_eq!(
        c.count("n", &[json!({"authors": [pk]})]).await?,
        CountResult::Count(3)
    );
    node.finish().await
}

async fn replaceable_tie_keeps_lowest_id(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let t = now() - 50;
    let mut versions: Vec<Event> = (0..4)
        .map(|i| event_at(&keys, 0, &format!("{{\"name\":\"v{i}\"}}"), &[], t))
        .collect();
    for v in &versions {
        // Accepted or refused as superseded: both are fine, the result matters.
        c.publish(v).await?;
    }
    versions.sort_by_key(|e| e.id.to_hex());
    let got = c
        .query_once(&[json!({"authors": [keys.public_key().to_hex()], "kinds": [0]})])
        .await?;
    assert_ids("same created_at: the lowest id wins", &got, &[&versions[0]]);
    node.finish().await
}

async fn addressable_keeps_newest_per_d_tag(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let keys = Keys::generate();
    let other = Keys::generate();
    let pk = keys.public_key().to_hex();
    let t = now() - 100;

    let a1 = event_at(&keys, 30_023, "a v1", &[&["d", "a"]], t);
    let b1 = event_at(&keys, 30_023, "b v1", &[&["d", "b"]], t);
    let a2 = event_at(&keys, 30_023, "a v2", &[&["d", "a"]], t + 5);
    let no_d = event_at(&keys, 30_023, "no d", &[], t);
    let empty_d = event_at(&keys, 30_023, "empty d", &[&["d", ""]], t + 1);
    let other_kind = event_at(&keys, 30_000, "other kind", &[&["d", "a"]], t);
    let other_author = event_at(&other, 30_023, "other author", &[&["d", "a"]], t);
    c.publish_all(&[&a1, &b1, &a2, &no_d, &other_kind, &other_author])
        .await?;
    // A missing d tag and an empty one are the same address: the newer wins.
    c.publish_all(&[&empty_d]).await?;

    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [30_023]})])
        .await?;
    assert_id_set("addressable per d", &got, &[&a2, &b1, &empty_d]);
    let got = c
        .query_once(&[json!({"kinds": [30_023], "#d": ["a"]})])
        .await?;
    assert_id_set("#d=a", &got, &[&a2, &other_author]);
    let got = c
        .query_once(&[json!({"kinds": [30_000], "authors": [pk]})])
        .await?;
    assert_ids("other kind untouched", &got, &[&other_kind]);

    let stale = event_at(&keys, 30_023, "a stale", &[&["d", "a"]], t + 1);
    let _ = c.publish(&stale).await?;
    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [30_023], "#d": ["a"]})])
        .await?;
    assert_ids("stale addressable not stored", &got, &[&a2]);
    node.finish().await
}

async fn ephemeral_is_fanned_out_not_stored(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut sub = node.connect().await?;
    let mut publisher = node.connect().await?;
    let keys = Keys::generate();
    sub.query("eph", &[json!({"kinds": [20_001]})]).await?;
    let e = event(&keys, 20_001, "ephemeral", &[]);
    publisher.publish(&e).await?.assert_accepted("ephemeral");
    assert_eq!(sub.next_event("eph").await?.id, e.id);

    let mut late = node.connect().await?;
    let got = late.query_once(&[json!({"kinds": [20_001]})]).await?;
    assert!(got.is_empty(), "ephemeral event was stored: {got:?}");
    assert_eq!(
        late.count("c", &[json!({"ids": [e.id.to_hex()]})]).await?,
        CountResult::Count(0)
    );
    node.finish().await
}

async fn duplicate_is_reported(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let mut c = node.connect().await?;
    let e = note(&Keys::generate(), "twice");
    c.publish(&e).await?.assert_accepted("first");
    let ok = c.publish(&e).await?;
    // NIP-01: a duplicate is answered `true` with the `duplicate:` prefix
    // (some relays say false); the prefix is what matters.
    assert_prefix("second publish", &ok.message, &["duplicate:"]);
    let got = c.query_once(&[json!({"ids": [e.id.to_hex()]})]).await?;
    assert_eq!(got.len(), 1, "duplicate stored twice");
    node.finish().await
}
