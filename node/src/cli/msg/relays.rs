//! NIP-17 inbox relays: where a key's gift wraps go (its kind 10050 list),
//! and publishing to them.

use std::time::Duration;

use nostr::{Event, Filter, Keys, Kind, PublicKey};
use nostr_sdk::{Client, ClientOptions, RelayUrl};

/// Bound on connecting to, publishing to and fetching from relays.
pub(super) const RELAY_TIMEOUT: Duration = Duration::from_secs(10);

/// `pubkey`'s NIP-17 inbox relays (its latest kind 10050 on `fallback`), or `[fallback]`.
pub(super) async fn inbox_relays(
    client: &Client,
    pubkey: &PublicKey,
    fallback: &str,
) -> Vec<String> {
    let filter = Filter::new()
        .author(*pubkey)
        .kind(Kind::InboxRelays)
        .limit(1);
    let listed: Vec<String> = async {
        client.add_relay(fallback).await.ok()?;
        client
            .try_connect_relay(fallback, RELAY_TIMEOUT)
            .await
            .ok()?;
        let events = client
            .fetch_events_from([fallback], filter, RELAY_TIMEOUT)
            .await
            .ok()?;
        let latest = events
            .into_iter()
            .filter(|e| e.pubkey == *pubkey && e.kind == Kind::InboxRelays)
            .max_by_key(|e| e.created_at)?;
        Some(
            nostr::nips::nip17::extract_relay_list(&latest)
                .map(|u| u.to_string())
                .collect(),
        )
    }
    .await
    .unwrap_or_default();
    if listed.is_empty() {
        vec![fallback.to_owned()]
    } else {
        listed
    }
}

/// `relay` and the NIP-17 inbox relays the user lists there (kind 10050):
/// where the user's gift wraps are.
pub async fn reading_relays(keys: &Keys, relay: &str) -> Vec<String> {
    let client = relay_client(keys);
    let mut relays = inbox_relays(&client, &keys.public_key(), relay).await;
    client.shutdown().await;
    if !relays.iter().any(|r| r.trim_end_matches('/') == relay) {
        relays.insert(0, relay.to_owned());
    }
    relays
}

pub(super) async fn publish(client: &Client, relays: &[String], event: &Event) -> Vec<String> {
    let mut ok = Vec::new();
    for url in relays {
        let Ok(parsed) = RelayUrl::parse(url) else {
            tracing::warn!("skipping invalid relay URL {url}");
            continue;
        };
        if client.add_relay(parsed.clone()).await.is_err()
            || client
                .try_connect_relay(parsed.clone(), RELAY_TIMEOUT)
                .await
                .is_err()
        {
            tracing::warn!("cannot connect to relay {url}");
            continue;
        }
        match tokio::time::timeout(RELAY_TIMEOUT, client.send_event_to([parsed], event)).await {
            Ok(Ok(out)) if !out.success.is_empty() => ok.push(url.clone()),
            Ok(Ok(out)) => tracing::warn!("relay {url} refused the event: {:?}", out.failed),
            Ok(Err(e)) => tracing::warn!("relay {url}: {e}"),
            Err(_) => tracing::warn!("relay {url}: no answer"),
        }
    }
    ok
}

pub(super) fn relay_client(keys: &Keys) -> Client {
    Client::builder()
        .signer(keys.clone())
        .opts(ClientOptions::new().automatic_authentication(true))
        .build()
}
