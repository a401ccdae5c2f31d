//! The node's relay as the payments services reach it: in-process, through
//! `Relay::publish` and `Relay::subscribe` (see `cairn_relay::local`), never
//! through a socket. [`OwnRelay::link_to`] picks that link for a URL naming
//! this relay and a WebSocket client for any other.
//!
//! Holds the relay weakly, as the identity publisher does: the relay's writer
//! stops only once the last strong handle is gone, and a service still
//! holding its link must not keep it from stopping.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use cairn_payments::relay_link::{RelayEvents, RelayLink, RelayLinkError, WebSocketLink};
use cairn_relay::auth::normalize_relay_url;
use cairn_relay::{Relay, Subscription, SubscriptionError};
use nostr::{Event, Filter, Keys, RelayUrl};

/// A [`RelayLink`] to this node's relay.
#[derive(Debug, Clone)]
pub struct OwnRelay {
    relay: Weak<Relay>,
    /// The relay's public URL, normalized.
    url: String,
}

impl OwnRelay {
    /// The link to `relay`.
    pub fn new(relay: &Arc<Relay>) -> Self {
        Self {
            relay: Arc::downgrade(relay),
            url: relay.public_url().to_owned(),
        }
    }

    /// The relay's public URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The link to the relay at `url`: this one in-process when `url` names
    /// it, else a WebSocket client that authenticates as `keys`.
    pub fn link_to(&self, url: &str, keys: Keys) -> anyhow::Result<Arc<dyn RelayLink>> {
        if normalize_relay_url(url).as_deref() == Some(self.url.as_str()) {
            return Ok(Arc::new(self.clone()));
        }
        let parsed =
            RelayUrl::parse(url).map_err(|e| anyhow::anyhow!("invalid relay URL {url:?}: {e}"))?;
        Ok(Arc::new(WebSocketLink::new(parsed, keys)))
    }

    fn relay(&self) -> Result<Arc<Relay>, RelayLinkError> {
        self.relay.upgrade().ok_or(RelayLinkError::Closed)
    }
}

#[async_trait]
impl RelayLink for OwnRelay {
    async fn publish(&self, event: Event) -> Result<(), RelayLinkError> {
        let relay = self.relay()?;
        match relay.publish(event).await {
            Ok(_) => Ok(()),
            Err(refused) => Err(RelayLinkError::Refused(refused.to_string())),
        }
    }

    async fn subscribe(&self, filter: Filter) -> Result<Box<dyn RelayEvents>, RelayLinkError> {
        let relay = self.relay()?;
        let subscription = relay
            .subscribe(vec![filter])
            .await
            .map_err(|e| RelayLinkError::Unavailable(e.to_string()))?;
        Ok(Box::new(OwnEvents(subscription)))
    }
}

struct OwnEvents(Subscription);

#[async_trait]
impl RelayEvents for OwnEvents {
    async fn next(&mut self) -> Result<Event, RelayLinkError> {
        self.0.next().await.map_err(|e| match e {
            SubscriptionError::Lagged(n) => RelayLinkError::Lagged(n),
            SubscriptionError::Closed => RelayLinkError::Closed,
        })
    }
}
