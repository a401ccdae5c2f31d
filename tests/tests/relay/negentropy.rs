//! NIP-77 interop: rust-nostr's own negentropy client (`Client::sync` of
//! nostr-sdk 0.44, which speaks protocol V1 through the `negentropy` crate)
//! reconciles with a Cairn node in both directions and the sets converge.

use std::time::Duration;

use cairn_e2e::Backend;
use cairn_e2e::*;
use cairn_relay::config::Rate;
use nostr_sdk::prelude::*;

cairn_e2e::backend_tests!(sdk_sync_converges_both_ways);

/// A bound on one whole sync (a few hundred events each way), generous for
/// a busy CI machine.
const SYNC_WAIT: Duration = Duration::from_secs(60);

async fn sdk_sync_converges_both_ways(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        let fast = Rate::new(10_000.0, 10_000.0);
        s.relay.rate_limits.events_per_ip = fast;
        s.relay.rate_limits.events_per_pubkey = fast;
        s.relay.rate_limits.reqs_per_ip = fast;
    })
    .await?;
    let keys = Keys::generate();
    let t0 = Timestamp::now().as_secs() - 10_000;
    let events: Vec<Event> = (0..600u64)
        .map(|i| {
            EventBuilder::text_note(format!("note {i}"))
                .custom_created_at(Timestamp::from(t0 + i / 4))
                .sign_with_keys(&keys)
                .expect("sign")
        })
        .collect();
    let (shared, rest) = events.split_at(400);
    let (relay_only, client_only) = rest.split_at(100);

    // The relay's side, published by a plain client.
    let seeder = Client::default();
    seeder.add_relay(node.ws_url()).await?;
    seeder.try_connect(WAIT).await;
    for event in shared.iter().chain(relay_only) {
        let out = seeder.send_event(event).await?;
        anyhow::ensure!(out.failed.is_empty(), "seed refused: {:?}", out.failed);
    }
    seeder.disconnect().await;

    // The client's side, in its own database.
    let database = MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: true,
        max_events: None,
    });
    for event in shared.iter().chain(client_only) {
        database.save_event(event).await?;
    }
    let client = Client::builder()
        .signer(keys.clone())
        .database(database)
        .build();
    client.add_relay(node.ws_url()).await?;
    client.try_connect(WAIT).await;

    let filter = Filter::new().kind(Kind::TextNote).author(keys.public_key());
    let opts = SyncOptions::default()
        .direction(SyncDirection::Both)
        .initial_timeout(Duration::from_secs(10));
    let out = tokio::time::timeout(SYNC_WAIT, client.sync(filter.clone(), &opts)).await??;
    anyhow::ensure!(out.failed.is_empty(), "sync failed: {:?}", out.failed);
    let rec = out.val;
    let ids = |evs: &[Event]| {
        evs.iter()
            .map(|e| e.id)
            .collect::<std::collections::HashSet<_>>()
    };
    assert_eq!(rec.local, ids(client_only), "what the relay lacked");
    assert_eq!(rec.remote, ids(relay_only), "what the client lacked");
    assert_eq!(
        rec.sent,
        ids(client_only),
        "uploaded: {:?}",
        rec.send_failures
    );
    assert_eq!(rec.received, ids(relay_only), "downloaded");

    // Converged: a second run finds nothing to do, both ways.
    let out = tokio::time::timeout(SYNC_WAIT, client.sync(filter, &opts)).await??;
    assert!(out.val.local.is_empty(), "{:?}", out.val.local);
    assert!(out.val.remote.is_empty(), "{:?}", out.val.remote);
    client.disconnect().await;
    node.finish().await
}
