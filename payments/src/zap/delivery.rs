//! Getting a signed zap receipt onto its relays, relay by relay.
//!
//! Each relay's outcome is recorded in the store: a relay that was down or
//! refused is retried with exponential backoff for a bounded time
//! ([`RetryPolicy::window`]), always with the *stored* receipt — never
//! re-signed, so every relay gets the same event id. Relays the
//! [`RelayPolicy`] forbids are dropped and never contacted.
//!
//! The node's own relay is reached in-process, through its [`RelayLink`];
//! the relays a request names, over WebSockets (a fresh nostr-sdk client
//! per publication).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nostr::{Event, RelayUrl};
use nostr_sdk::Client;
use tracing::debug;

use super::relay_filter::RelayPolicy;
use super::store::{DeliveryOutcome, PendingZap, ZapStore};
use super::ZapError;
use crate::relay_link::RelayLink;

/// How long publishing waits for relay connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one publication (connect + send to every relay).
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// When failed relays are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubled after each further one.
    pub first_delay: Duration,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
    /// How long after the first attempt a relay is still tried.
    pub window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(600),
            window: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts (1 = the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Sends receipts to the node's relay and the relays their requests name.
#[derive(Clone)]
pub struct ReceiptPublisher {
    own_relay: RelayUrl,
    own_link: Arc<dyn RelayLink>,
    policy: RelayPolicy,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ReceiptPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptPublisher")
            .field("own_relay", &self.own_relay)
            .field("policy", &self.policy)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl ReceiptPublisher {
    /// A publisher that always includes `own_relay`, reached through `own_link`.
    pub fn new(
        own_relay: RelayUrl,
        own_link: Arc<dyn RelayLink>,
        policy: RelayPolicy,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            own_relay,
            own_link,
            policy,
            retry,
        }
    }

    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Sends `receipt` (the one stored for `zap`) to each of its relays that
    /// has not taken it, is due at `now` (Unix seconds) and is inside the
    /// retry window; records each outcome. Returns how many accepted it now.
    pub async fn deliver(
        &self,
        store: &ZapStore,
        zap: &PendingZap,
        receipt: &Event,
        now: u64,
    ) -> Result<usize, ZapError> {
        let mut targets = vec![self.own_relay.to_string()];
        for relay in &zap.relays {
            if !targets.contains(relay) {
                targets.push(relay.clone());
            }
        }
        store.add_deliveries(&zap.payment_hash, &targets, now)?;
        let window = self.retry.window.as_secs();
        let due = store.due_deliveries(&zap.payment_hash, now, window)?;
        if due.is_empty() {
            return Ok(0);
        }
        // (URL, the relay as stored) of the due relays this node may contact.
        let mut allowed: Vec<(RelayUrl, &str)> = Vec::new();
        for relay in &due {
            let verdict = match RelayUrl::parse(relay) {
                Ok(url) if url == self.own_relay => Ok(Some(url)),
                Ok(url) => match self.policy.allows_resolved(&url).await {
                    Ok(true) => Ok(Some(url)),
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                },
                Err(_) => Ok(None),
            };
            match verdict {
                Ok(Some(url)) => allowed.push((url, relay.as_str())),
                Ok(None) => {
                    debug!(relay = %relay, "zap receipt relay dropped by the relay policy");
                    store.record_delivery(
                        &zap.payment_hash,
                        relay,
                        DeliveryOutcome::Dropped { at: now },
                    )?;
                }
                Err(e) => {
                    debug!(relay = %relay, error = %e, "cannot resolve a zap receipt relay");
                    self.record_failure(store, zap, relay, now)?;
                }
            }
        }
        let remote: Vec<RelayUrl> = allowed
            .iter()
            .map(|(url, _)| url.clone())
            .filter(|url| *url != self.own_relay)
            .collect();
        let mut accepted = send(receipt, &remote).await;
        if allowed.iter().any(|(url, _)| *url == self.own_relay) {
            let own = tokio::time::timeout(PUBLISH_TIMEOUT, self.own_link.publish(receipt.clone()));
            match own.await {
                Ok(Ok(())) => {
                    accepted.insert(self.own_relay.clone());
                }
                Ok(Err(e)) => debug!(error = %e, "the own relay refused a zap receipt"),
                Err(_) => debug!("the own relay did not take a zap receipt in time"),
            }
        }
        let mut count = 0;
        for (url, relay) in &allowed {
            if accepted.contains(url) {
                count += 1;
                store.record_delivery(
                    &zap.payment_hash,
                    relay,
                    DeliveryOutcome::Delivered { at: now },
                )?;
            } else {
                self.record_failure(store, zap, relay, now)?;
            }
        }
        Ok(count)
    }

    fn record_failure(
        &self,
        store: &ZapStore,
        zap: &PendingZap,
        relay: &str,
        now: u64,
    ) -> Result<(), ZapError> {
        let failures = store
            .deliveries(&zap.payment_hash)?
            .iter()
            .find(|d| d.relay == relay)
            .map_or(0, |d| d.attempts)
            + 1;
        let retry_at = now + self.retry.delay(failures).as_secs();
        store.record_delivery(
            &zap.payment_hash,
            relay,
            DeliveryOutcome::Failed { retry_at },
        )
    }
}

/// Sends `event` to `relays`; the ones that accepted it. A fresh client each
/// time: request relays are strangers' choices and must not pile up in a
/// long-lived pool.
async fn send(event: &Event, relays: &[RelayUrl]) -> HashSet<RelayUrl> {
    if relays.is_empty() {
        return HashSet::new();
    }
    let client = Client::default();
    for url in relays {
        let _ = client.add_relay(url.clone()).await;
    }
    let attempt = async {
        let connected = client.try_connect(CONNECT_TIMEOUT).await;
        for (url, why) in &connected.failed {
            debug!(relay = %url, reason = %why, "cannot connect to a zap receipt relay");
        }
        if connected.success.is_empty() {
            return HashSet::new();
        }
        match client
            .send_event_to(connected.success.iter().cloned(), event)
            .await
        {
            Ok(out) => {
                for (url, why) in &out.failed {
                    debug!(relay = %url, reason = %why, "relay refused a zap receipt");
                }
                out.success
            }
            Err(e) => {
                debug!(error = %e, "cannot send a zap receipt");
                HashSet::new()
            }
        }
    };
    let accepted = tokio::time::timeout(PUBLISH_TIMEOUT, attempt)
        .await
        .unwrap_or_default();
    client.shutdown().await;
    accepted
}
