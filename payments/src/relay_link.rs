//! How the NWC service and the zap service reach a relay: [`RelayLink`].
//!
//! - The node's **own relay** is reached in-process: the node implements
//!   [`RelayLink`] over its relay engine (`cairn_relay::Relay::publish` and
//!   `subscribe`), so nothing goes through a socket, a TLS proxy or the
//!   public internet, and a request's signature is checked once, by the
//!   relay, when the app's event arrives. This crate does not depend on the
//!   relay or the node: it only names what it needs.
//! - A **remote relay** (an NWC relay elsewhere, `[payments] nwc_relay_url`)
//!   is reached over a WebSocket: [`WebSocketLink`], a nostr-sdk client.
//!   Zap receipts to the relays a zap request names go out through their
//!   own short-lived clients (see `zap::delivery`), not through a link.
//!
//! What every implementation promises: `publish` returns `Ok` only once the
//! relay accepted the event (as an `OK true` says: stored, or fanned out for
//! an ephemeral kind); a subscription yields events whose id and signature
//! were verified (by the relay, or by the client on receipt) and reports
//! [`RelayLinkError::Lagged`] when it fell behind and lost events, then goes
//! on; it ends with [`RelayLinkError::Closed`].

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use nostr::{Event, Filter, Keys, RelayUrl};
use nostr_sdk::{Client, RelayPoolNotification, SubscriptionId};
use tokio::sync::{broadcast, OnceCell};

/// How long a [`WebSocketLink`] waits for its relay connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong between a service and its relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayLinkError {
    /// The relay did not take the event; its reason (with the NIP-01 prefix).
    #[error("relay refused the event: {0}")]
    Refused(String),
    /// The relay could not serve a subscription (e.g. its store failed).
    #[error("relay unavailable: {0}")]
    Unavailable(String),
    /// The subscriber fell behind and this many events were lost for it;
    /// the subscription goes on.
    #[error("fell behind the relay: {0} events lost")]
    Lagged(u64),
    /// The relay shut down or the link was closed.
    #[error("the relay is gone")]
    Closed,
    /// The WebSocket client failed (remote relays only).
    #[error("relay: {0}")]
    Client(#[from] nostr_sdk::client::Error),
}

/// A relay the services publish to and subscribe on.
#[async_trait]
pub trait RelayLink: Send + Sync {
    /// Publishes `event`; `Ok` once the relay accepted it.
    async fn publish(&self, event: Event) -> Result<(), RelayLinkError>;

    /// Follows the events matching `filter`: stored ones first, then live ones.
    async fn subscribe(&self, filter: Filter) -> Result<Box<dyn RelayEvents>, RelayLinkError>;

    /// Lets go of the relay (closes a connection, if the link has one).
    async fn close(&self) {}
}

/// The events of one [`RelayLink::subscribe`].
#[async_trait]
pub trait RelayEvents: Send {
    /// The next event, [`RelayLinkError::Lagged`] after lost ones, or
    /// [`RelayLinkError::Closed`] at the end.
    async fn next(&mut self) -> Result<Event, RelayLinkError>;
}

/// A [`RelayLink`] to a remote relay over a WebSocket (nostr-sdk), connected
/// on first use. It authenticates (NIP-42) as `keys` when the relay asks.
pub struct WebSocketLink {
    url: RelayUrl,
    client: Client,
    connected: OnceCell<()>,
}

impl fmt::Debug for WebSocketLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketLink")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebSocketLink {
    /// A link to `url`, signing AUTH events with `keys`.
    pub fn new(url: RelayUrl, keys: Keys) -> Self {
        Self {
            url,
            client: Client::new(keys),
            connected: OnceCell::new(),
        }
    }

    async fn connect(&self) -> Result<(), RelayLinkError> {
        self.connected
            .get_or_try_init(|| async {
                self.client.add_relay(self.url.clone()).await?;
                self.client
                    .try_connect_relay(self.url.clone(), CONNECT_TIMEOUT)
                    .await?;
                Ok::<_, RelayLinkError>(())
            })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl RelayLink for WebSocketLink {
    async fn publish(&self, event: Event) -> Result<(), RelayLinkError> {
        self.connect().await?;
        let out = self.client.send_event(&event).await?;
        match out.failed.into_values().next() {
            Some(reason) if out.success.is_empty() => Err(RelayLinkError::Refused(reason)),
            _ => Ok(()),
        }
    }

    async fn subscribe(&self, filter: Filter) -> Result<Box<dyn RelayEvents>, RelayLinkError> {
        self.connect().await?;
        // Listen before subscribing so that no event is missed.
        let notifications = self.client.notifications();
        let id = self.client.subscribe(filter, None).await?.val;
        Ok(Box::new(WebSocketEvents { id, notifications }))
    }

    async fn close(&self) {
        self.client.shutdown().await;
    }
}

struct WebSocketEvents {
    id: SubscriptionId,
    notifications: broadcast::Receiver<RelayPoolNotification>,
}

#[async_trait]
impl RelayEvents for WebSocketEvents {
    async fn next(&mut self) -> Result<Event, RelayLinkError> {
        loop {
            match self.notifications.recv().await {
                Ok(RelayPoolNotification::Event {
                    subscription_id,
                    event,
                    ..
                }) if subscription_id == self.id => return Ok(*event),
                Ok(RelayPoolNotification::Shutdown) => return Err(RelayLinkError::Closed),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Err(RelayLinkError::Lagged(n))
                }
                Err(broadcast::error::RecvError::Closed) => return Err(RelayLinkError::Closed),
            }
        }
    }
}
