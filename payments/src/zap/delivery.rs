//! Getting a signed zap receipt onto its relays, relay by relay.
//!
//! Each relay's outcome is recorded in the store: a relay that was down or
//! refused is retried with exponential backoff for a bounded time
//! ([`RetryPolicy::window`]), always with the *stored* receipt — never
//! re-signed, so every relay gets the same event id. Relays the
//! [`RelayPolicy`] forbids are dropped and never contacted.
//!
//! The node's own relay is reached in-process, through its [`RelayLink`];
//! the relays a request names, over a WebSocket of their own per attempt.
//! That WebSocket runs over a TCP connection made to the very address the
//! [`RelayPolicy`] checked (the URL's host only names the TLS server and
//! the `Host` header): a second resolution by a client library could answer
//! with another address (DNS rebinding to loopback).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nostr::{Event, JsonUtil, RelayUrl};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::relay_filter::{system_resolver, RelayPolicy, Resolver};
use super::store::{DeliveryOutcome, PendingZap, ZapStore};
use super::ZapError;
use crate::relay_link::RelayLink;

/// How long publishing waits for a relay connection (TCP, TLS, WebSocket).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message taken from a relay: an OK is small, and the relay is a
/// stranger's choice.
const MAX_RELAY_MESSAGE: usize = 64 * 1024;
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
    resolver: Arc<dyn Resolver>,
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
            resolver: system_resolver(),
        }
    }

    /// The same publisher resolving relay names with `resolver` instead of
    /// the system's (tests).
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
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
        // (URL, the relay as stored) of the due relays this node may contact;
        // and the checked address of each remote one.
        let mut allowed: Vec<(RelayUrl, &str)> = Vec::new();
        let mut remote: Vec<(RelayUrl, SocketAddr)> = Vec::new();
        for relay in &due {
            let verdict = match RelayUrl::parse(relay) {
                Ok(url) if url == self.own_relay => Ok(Some(url)),
                Ok(url) => match self.policy.resolve(&url, self.resolver.as_ref()).await {
                    Ok(Some(addr)) => {
                        remote.push((url.clone(), addr));
                        Ok(Some(url))
                    }
                    Ok(None) => Ok(None),
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

/// Sends `event` to each relay at its checked address, all at once; the
/// ones that accepted it. Bounded by [`PUBLISH_TIMEOUT`] in total.
async fn send(event: &Event, relays: &[(RelayUrl, SocketAddr)]) -> HashSet<RelayUrl> {
    let attempts = relays.iter().map(|(url, addr)| async move {
        match publish_to(url, *addr, event).await {
            Ok(()) => Some(url.clone()),
            Err(why) => {
                debug!(relay = %url, %addr, reason = %why, "zap receipt not delivered");
                None
            }
        }
    });
    let all = futures::future::join_all(attempts);
    tokio::time::timeout(PUBLISH_TIMEOUT, all)
        .await
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// Publishes `event` to the relay `url` over a TCP connection to `addr`
/// (TLS for `wss://`, with the URL's host as server name); `Ok` once the
/// relay answered `OK true`. A short-lived connection: request relays are
/// strangers' choices and must not pile up in a long-lived pool.
async fn publish_to(url: &RelayUrl, addr: SocketAddr, event: &Event) -> Result<(), String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_RELAY_MESSAGE))
        .max_frame_size(Some(MAX_RELAY_MESSAGE));
    let (mut ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_tls_with_config(url.as_str(), tcp, Some(config), None),
    )
    .await
    .map_err(|_| "WebSocket handshake timed out".to_owned())?
    .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let id = event.id.to_hex();
    let message = format!(r#"["EVENT",{}]"#, event.as_json());
    ws.send(Message::text(message))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let answer = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Some(answer) = ok_answer(&text, &id) {
                    break answer;
                }
            }
            Some(Ok(Message::Close(_))) | None => break Err("closed before OK".to_owned()),
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(format!("receive: {e}")),
        }
    };
    let _ = ws.close(None).await;
    answer
}

/// The relay's verdict on event `id`, if `text` is its `["OK", id, …]`.
fn ok_answer(text: &str, id: &str) -> Option<Result<(), String>> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    match value.as_array()?.as_slice() {
        [kind, ok_id, accepted, rest @ ..] if kind == "OK" && ok_id == id => {
            let reason = rest.first().and_then(|r| r.as_str()).unwrap_or_default();
            Some(if accepted.as_bool() == Some(true) {
                Ok(())
            } else {
                Err(format!("refused: {reason}"))
            })
        }
        _ => None,
    }
}
