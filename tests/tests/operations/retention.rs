//! Retention in a running node: the background job purges what is older
//! than its rule, keeps the rest, and NIP-11 lists the rules.

use anyhow::Result;
use cairn_e2e::{backend_tests, event_at, now, within, Backend, TestNode};
use cairn_relay::retention::Keep;
use nostr::Keys;
use serde_json::{json, Value};

async fn old_events_are_purged_in_the_background_and_listed_in_nip11(
    backend: Backend,
) -> Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        let r = &mut s.relay.retention;
        r.regular = Keep::Seconds(86_400);
        r.kinds.insert(1, Keep::Forever);
        r.interval_secs = 1;
    })
    .await?;
    let keys = Keys::generate();
    // Past its rule already: refused at publish, as the purge would delete it.
    let too_old = event_at(&keys, 7, "+", &[], now() - 2 * 86_400);
    // Within its rule for a few more seconds: stored, then purged.
    let old_reaction = event_at(&keys, 7, "+", &[], now() - 86_400 + 3);
    let new_reaction = event_at(&keys, 7, "+", &[], now());
    let old_note = event_at(&keys, 1, "kept", &[], now() - 2 * 86_400);
    let mut client = node.connect().await?;
    client
        .publish(&too_old)
        .await?
        .assert_rejected("past its rule", &["invalid"]);
    assert_eq!(node.stored_rows(&too_old.id.to_hex()).await?, 0);
    client
        .publish_all(&[&old_reaction, &new_reaction, &old_note])
        .await?;

    // The job runs every second: the old reaction goes once past its rule,
    // the rest stays.
    let gone = within("the retention purge", async {
        loop {
            if node.stored_rows(&old_reaction.id.to_hex()).await? == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    gone??;
    assert_eq!(node.stored_rows(&new_reaction.id.to_hex()).await?, 1);
    assert_eq!(node.stored_rows(&old_note.id.to_hex()).await?, 1);

    let doc: Value = within(
        "NIP-11",
        reqwest::Client::new()
            .get(node.http_url())
            .header("Accept", "application/nostr+json")
            .send(),
    )
    .await??
    .json()
    .await?;
    assert_eq!(
        doc["retention"],
        json!([
            {"kinds": [1], "time": null},
            {"kinds": [[1, 2], [4, 9999], [40000, 65535]], "time": 86_400},
        ]),
        "{doc}"
    );
    client.close().await;
    node.finish().await
}

async fn nip11_has_no_retention_when_everything_is_kept(backend: Backend) -> Result<()> {
    let node = TestNode::start(&backend).await?;
    let doc: Value = within(
        "NIP-11",
        reqwest::Client::new()
            .get(node.http_url())
            .header("Accept", "application/nostr+json")
            .send(),
    )
    .await??
    .json()
    .await?;
    assert!(doc.get("retention").is_none(), "{doc}");
    node.finish().await
}

backend_tests!(
    old_events_are_purged_in_the_background_and_listed_in_nip11,
    nip11_has_no_retention_when_everything_is_kept,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_cap_on_postgres_is_refused_at_start() -> Result<()> {
    let Some(backend) = Backend::postgres_from_env() else {
        cairn_e2e::skip_postgres("a_size_cap_on_postgres_is_refused_at_start");
        return Ok(());
    };
    let err = TestNode::start_with(&backend, |s| {
        s.relay.retention.max_db_bytes = Some(1 << 30);
    })
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("max_db_bytes"), "{err:#}");
    Ok(())
}
