//! The relay in-process: [`Relay::publish`] and [`Relay::subscribe`], for
//! services in the relay's own process (the node's NWC service and zap
//! receipts, say) that would otherwise reach it through a WebSocket — behind
//! a TLS proxy, a round trip through the public internet. The relay knows
//! nothing of who uses this.
//!
//! Invariants:
//!
//! - **Publishing is a client's EVENT without AUTH**, minus the rate limits
//!   (they protect the relay from clients, not from its own process): the
//!   same checks ([`crate::accept`]), the same id and signature check, the
//!   same [`Relay::submit`]. `Ok` means what a client's `OK true` means:
//!   durably stored (now or before) or, for an ephemeral kind, fanned out.
//! - **A subscription is a client's REQ without AUTH**: the stored matches
//!   first (newest first, each once, at most `max_limit` per filter), then
//!   the live events published after the call, through the same fan-out
//!   that feeds the WebSocket connections. Private kinds never reach it. An
//!   event both stored and live is yielded once. Every event yielded passed
//!   the relay's id and signature check on its way in, or was submitted by
//!   the relay's own process: a subscriber need not verify again.
//! - **Bounded, and the relay never waits for it.** Live events wait in the
//!   fan-out's ring ([`crate::relay::DEFAULT_LIVE_BUFFER`] events, shared
//!   with the connections). A subscriber that falls further behind loses the
//!   oldest ones: its next call returns [`SubscriptionError::Lagged`] with how
//!   many, and the one after continues with the oldest event still in the
//!   ring. (A WebSocket client that slow is disconnected instead; an
//!   in-process subscriber decides itself whether to carry on or resubscribe.)
//! - **It does not keep the relay alive**: a [`Subscription`] holds no handle
//!   on the relay, and ends with [`SubscriptionError::Closed`] once the relay
//!   begins shutting down or is dropped.

use std::collections::HashSet;
use std::sync::Arc;

use nostr::{Event, EventId, Filter, JsonUtil, Timestamp};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::accept::{check_event, Accepted, Refused};
use crate::matching::matches;
use crate::privacy::{live_event_visible, may_receive};
use crate::relay::{LiveEvent, Relay};
use crate::store::{QueryContext, StoreError};

/// Why a [`Subscription`] yields no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The subscriber fell behind the fan-out and this many live events were
    /// dropped for it; the subscription goes on after them.
    #[error("subscriber fell behind: {0} live events dropped")]
    Lagged(u64),
    /// The relay is shutting down or gone; the subscription has ended.
    #[error("the relay is shutting down")]
    Closed,
}

/// Stored-then-live events matching a set of filters (see the module docs).
#[derive(Debug)]
pub struct Subscription {
    filters: Vec<Filter>,
    stored: std::vec::IntoIter<Event>,
    /// Ids yielded from the store: the fan-out may carry them too.
    stored_ids: HashSet<EventId>,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    shutdown: CancellationToken,
}

impl Subscription {
    /// The next matching event.
    pub async fn next(&mut self) -> Result<Event, SubscriptionError> {
        if let Some(event) = self.stored.next() {
            return Ok(event);
        }
        loop {
            let live = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(SubscriptionError::Closed),
                live = self.live.recv() => live,
            };
            let live = match live {
                Ok(live) => live,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Err(SubscriptionError::Lagged(n))
                }
                Err(broadcast::error::RecvError::Closed) => return Err(SubscriptionError::Closed),
            };
            let event = &live.event;
            if self.stored_ids.remove(&event.id) || !live_event_visible(event, &[]) {
                continue;
            }
            if self.filters.iter().any(|f| matches(f, event)) {
                return Ok(event.clone());
            }
        }
    }
}

impl Relay {
    /// Publishes `event` from inside the process (see the module docs).
    pub async fn publish(&self, event: Event) -> Result<Accepted, Refused> {
        let now = Timestamp::now().as_secs();
        check_event(&self.config, &event, event.as_json().len(), &[], now)?;
        let (event, verified) = self.verifier.verify(Box::new(event)).await;
        verified?;
        self.submit(*event).await
    }

    /// Follows the events matching any of `filters`: stored ones first, then
    /// live ones (see the module docs). Fails only when the store cannot be
    /// queried.
    pub async fn subscribe(&self, filters: Vec<Filter>) -> Result<Subscription, StoreError> {
        // Subscribe to live events before querying, so that nothing committed
        // in between is missed.
        let live = self.live.subscribe();
        let ctx = QueryContext {
            viewers: Vec::new(),
            now: Timestamp::now().as_secs(),
            max_limit: self.config.limits.max_limit,
        };
        let stored: Vec<Event> = self
            .query_stored(&filters, &ctx)
            .await?
            .into_iter()
            .filter_map(|stored| Event::from_json(&stored.json).ok())
            // Defence in depth, as for a connection: the SQL applied it already.
            .filter(|event| may_receive(event, &[]))
            .collect();
        Ok(Subscription {
            filters,
            stored_ids: stored.iter().map(|e| e.id).collect(),
            stored: stored.into_iter(),
            live,
            shutdown: self.shutdown_token().clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nostr::{EventBuilder, Keys, Kind, Tag};

    use super::*;
    use crate::config::RelayConfig;
    use crate::store::sqlite::SqliteStore;

    async fn relay() -> Arc<Relay> {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        Relay::new(RelayConfig::default(), "ws://127.0.0.1:1", Arc::new(store)).0
    }

    async fn next(sub: &mut Subscription) -> Result<Event, SubscriptionError> {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("an event within 5 s")
    }

    fn note(keys: &Keys, text: &str) -> Event {
        EventBuilder::text_note(text).sign_with_keys(keys).unwrap()
    }

    #[tokio::test]
    async fn stored_then_live_each_once_and_only_matches() {
        let relay = relay().await;
        let (alice, bob) = (Keys::generate(), Keys::generate());
        let old = note(&alice, "stored");
        assert_eq!(relay.publish(old.clone()).await.unwrap(), Accepted::Stored);
        assert_eq!(
            relay.publish(old.clone()).await.unwrap(),
            Accepted::Duplicate
        );
        let mut sub = relay
            .subscribe(vec![Filter::new().author(alice.public_key())])
            .await
            .unwrap();
        relay.publish(note(&bob, "not a match")).await.unwrap();
        let live = note(&alice, "live");
        relay.publish(live.clone()).await.unwrap();
        assert_eq!(next(&mut sub).await.unwrap().id, old.id);
        assert_eq!(next(&mut sub).await.unwrap().id, live.id);
        relay.begin_shutdown();
        assert_eq!(next(&mut sub).await, Err(SubscriptionError::Closed));
    }

    #[tokio::test]
    async fn ephemeral_events_are_relayed_and_private_kinds_withheld() {
        let relay = relay().await;
        let (app, service) = (Keys::generate(), Keys::generate());
        let mut sub = relay
            .subscribe(vec![Filter::new().pubkey(service.public_key())])
            .await
            .unwrap();
        let dm = EventBuilder::new(Kind::EncryptedDirectMessage, "x")
            .tag(Tag::public_key(service.public_key()))
            .sign_with_keys(&app)
            .unwrap();
        assert_eq!(relay.publish(dm).await.unwrap(), Accepted::Stored);
        let request = EventBuilder::new(Kind::WalletConnectRequest, "x")
            .tag(Tag::public_key(service.public_key()))
            .sign_with_keys(&app)
            .unwrap();
        assert_eq!(
            relay.publish(request.clone()).await.unwrap(),
            Accepted::Relayed
        );
        assert_eq!(next(&mut sub).await.unwrap().id, request.id);
    }

    #[tokio::test]
    async fn publishing_applies_the_clients_rules() {
        let relay = relay().await;
        let keys = Keys::generate();
        let mut forged = note(&keys, "x");
        forged.content = "changed".into();
        assert!(matches!(
            relay.publish(forged).await,
            Err(Refused::Verify(crate::verify::VerifyError::BadId))
        ));
        let auth = EventBuilder::new(Kind::Authentication, "")
            .sign_with_keys(&keys)
            .unwrap();
        let refused = relay.publish(auth).await.unwrap_err();
        assert!(refused.to_string().starts_with("invalid: kind 22242"));
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed() {
        let relay = relay().await;
        let keys = Keys::generate();
        let mut sub = relay.subscribe(vec![Filter::new()]).await.unwrap();
        let n = crate::relay::DEFAULT_LIVE_BUFFER + 3;
        for i in 0..n {
            let event = EventBuilder::new(Kind::Custom(20_001), i.to_string())
                .sign_with_keys(&keys)
                .unwrap();
            relay.publish(event).await.unwrap();
        }
        assert_eq!(next(&mut sub).await, Err(SubscriptionError::Lagged(3)));
        assert_eq!(next(&mut sub).await.unwrap().content, "3");
    }
}
