//! The off-the-shelf client path: nostr-sdk 0.44 publishing, querying and
//! exchanging NIP-17 gift-wrapped private messages (with automatic NIP-42 AUTH).

use std::time::Duration;

use cairn_e2e::Backend;
use cairn_e2e::*;
use nostr_sdk::prelude::*;

cairn_e2e::backend_tests!(
    sdk_publish_and_query,
    sdk_private_message_stored,
    sdk_private_message_live,
);

async fn sdk_client(keys: &Keys, url: &str, auto_auth: bool) -> anyhow::Result<Client> {
    let client = Client::builder()
        .signer(keys.clone())
        .opts(ClientOptions::new().automatic_authentication(auto_auth))
        .build();
    client.add_relay(url).await?;
    let out = client.try_connect(WAIT).await;
    anyhow::ensure!(
        out.failed.is_empty(),
        "nostr-sdk could not connect: {:?}",
        out.failed
    );
    Ok(client)
}

/// Fetch until `done` holds or the deadline passes (AUTH happens in the
/// background right after connecting).
async fn fetch_until(
    client: &Client,
    filter: Filter,
    done: impl Fn(&Events) -> bool,
    deadline: Duration,
) -> anyhow::Result<Events> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let events = client
            .fetch_events(filter.clone(), Duration::from_secs(3))
            .await?;
        if done(&events) || tokio::time::Instant::now() > until {
            return Ok(events);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sdk_publish_and_query(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let a = sdk_client(&alice, &node.ws_url(), true).await?;
    let b = sdk_client(&bob, &node.ws_url(), true).await?;

    let out = a
        .send_event_builder(
            EventBuilder::text_note("hello from nostr-sdk").tag(Tag::hashtag("cairn")),
        )
        .await?;
    assert!(out.failed.is_empty(), "publish failed: {:?}", out.failed);
    assert_eq!(out.success.len(), 1, "publish not confirmed by the relay");
    let id = out.val;

    let filter = Filter::new()
        .author(alice.public_key())
        .kind(Kind::TextNote);
    let events = fetch_until(&b, filter, |e| !e.is_empty(), WAIT).await?;
    let got: Vec<&Event> = events.iter().collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].content, "hello from nostr-sdk");

    let by_tag = b
        .fetch_events(Filter::new().hashtag("cairn"), Duration::from_secs(5))
        .await?;
    assert_eq!(by_tag.len(), 1);

    // A duplicate is reported as such, not as a failure of the relay.
    let event = got[0].clone();
    let out = a.send_event(&event).await?;
    assert!(
        out.failed.is_empty() || out.failed.values().all(|m| m.starts_with("duplicate:")),
        "{:?}",
        out.failed
    );
    a.shutdown().await;
    b.shutdown().await;
    node.finish().await
}

async fn sdk_private_message_stored(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let eve = Keys::generate();
    let a = sdk_client(&alice, &node.ws_url(), true).await?;
    let out = a
        .send_private_msg(bob.public_key(), "meet at the cairn at noon", [])
        .await?;
    assert!(out.failed.is_empty(), "gift wrap refused: {:?}", out.failed);
    assert_eq!(out.success.len(), 1);
    let wrap_id = out.val;
    a.shutdown().await;

    // Bob comes online later and asks for his gift wraps (nostr-sdk answers
    // the relay's AUTH challenge by itself).
    let inbox = Filter::new()
        .kind(Kind::GiftWrap)
        .pubkey(bob.public_key())
        .since(Timestamp::from_secs(now() - 3 * 86_400));
    let b = sdk_client(&bob, &node.ws_url(), true).await?;
    let events = fetch_until(&b, inbox.clone(), |e| !e.is_empty(), WAIT).await?;
    let wraps: Vec<&Event> = events.iter().collect();
    assert_eq!(wraps.len(), 1, "bob's inbox: {wraps:?}");
    assert_eq!(wraps[0].id, wrap_id);
    let unwrapped = b.unwrap_gift_wrap(wraps[0]).await?;
    assert_eq!(unwrapped.sender, alice.public_key());
    assert_eq!(unwrapped.rumor.kind, Kind::PrivateDirectMessage);
    assert_eq!(unwrapped.rumor.content, "meet at the cairn at noon");
    b.shutdown().await;

    // Eve, authenticated as herself, sees nothing of it.
    let e = sdk_client(&eve, &node.ws_url(), true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = e.fetch_events(inbox.clone(), Duration::from_secs(3)).await;
    let leaked = events.map(|ev| ev.len()).unwrap_or(0);
    assert_eq!(leaked, 0, "eve received bob's gift wrap");
    let events = e
        .fetch_events(
            Filter::new().pubkey(bob.public_key()),
            Duration::from_secs(3),
        )
        .await;
    assert_eq!(
        events.map(|ev| ev.len()).unwrap_or(0),
        0,
        "eve got it via #p"
    );
    e.shutdown().await;

    // A client that does not authenticate sees nothing either.
    let anon = sdk_client(&Keys::generate(), &node.ws_url(), false).await?;
    let events = anon.fetch_events(inbox, Duration::from_secs(3)).await;
    assert_eq!(
        events.map(|ev| ev.len()).unwrap_or(0),
        0,
        "unauthenticated client got it"
    );
    anon.shutdown().await;
    node.finish().await
}

async fn sdk_private_message_live(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let b = sdk_client(&bob, &node.ws_url(), true).await?;
    let mut notifications = b.notifications();
    // Let the automatic AUTH complete (the sdk re-subscribes after AUTH anyway).
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.subscribe(
        Filter::new()
            .kind(Kind::GiftWrap)
            .pubkey(bob.public_key())
            .limit(0),
        None,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let a = sdk_client(&alice, &node.ws_url(), true).await?;
    let out = a
        .send_private_msg(bob.public_key(), "live hello", [])
        .await?;
    assert!(out.failed.is_empty(), "{:?}", out.failed);

    let received = within("live gift wrap via nostr-sdk", async {
        loop {
            match notifications.recv().await {
                Ok(RelayPoolNotification::Event { event, .. }) if event.kind == Kind::GiftWrap => {
                    return anyhow::Ok(*event);
                }
                Ok(_) => {}
                Err(e) => anyhow::bail!("notification channel: {e}"),
            }
        }
    })
    .await??;
    assert_eq!(received.id, out.val);
    let unwrapped = b.unwrap_gift_wrap(&received).await?;
    assert_eq!(unwrapped.rumor.content, "live hello");
    assert_eq!(unwrapped.sender, alice.public_key());
    a.shutdown().await;
    b.shutdown().await;
    node.finish().await
}
