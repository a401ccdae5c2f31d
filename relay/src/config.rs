//! Relay settings: identity (NIP-11), enforced limits and policy.

use std::time::Duration;

use nostr::PublicKey;
use serde::{Deserialize, Serialize};

/// Everything the relay engine needs to know; loaded by the node from
/// `cairn.toml` / `CAIRN_*` and passed in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// The relay's public WebSocket URL, checked against the `relay` tag of
    /// NIP-42 AUTH events (trailing slash ignored). The node fills it with
    /// `ws://<bind address>` when unset.
    pub public_url: Option<String>,
    /// NIP-11 name.
    pub name: String,
    /// NIP-11 description.
    pub description: String,
    /// NIP-11 contact (e.g. `mailto:` URI).
    pub contact: Option<String>,
    /// NIP-11 operator pubkey (hex).
    pub pubkey: Option<String>,
    /// Enforced limits, all advertised in NIP-11.
    pub limits: Limits,
    /// Rate limits (token buckets).
    pub rate_limits: RateLimits,
    /// How long stored events are kept, per kind class and kind (default:
    /// forever), and an optional size cap; listed in NIP-11 `retention`.
    pub retention: crate::retention::RetentionConfig,
    /// Which recipients kind 1059 gift wraps are accepted for.
    pub inbox: InboxPolicy,
    /// The HTTP/WebSocket edge: timeouts, per-IP keying, trusted proxies.
    pub network: crate::net::NetworkConfig,
    /// NIP-77 negentropy syncing and its limits (`[relay.negentropy]`).
    pub negentropy: crate::negentropy::NegentropyConfig,
    /// Several processes on one Postgres database (see `docs/scale-out.md`).
    pub cluster: ClusterConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            name: "cairn".into(),
            description: "A Cairn relay: private messages that stay private.".into(),
            contact: None,
            pubkey: None,
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            retention: crate::retention::RetentionConfig::default(),
            inbox: InboxPolicy::default(),
            network: crate::net::NetworkConfig::default(),
            negentropy: crate::negentropy::NegentropyConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Live fan-out across processes sharing one Postgres database (unused on
/// SQLite, which one process owns).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Wait before reconnecting a lost listener connection (doubling on each
    /// failure in a row, up to 30 s). Events stored meanwhile are caught up
    /// after the reconnection.
    pub listener_retry_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            listener_retry_ms: 1_000,
        }
    }
}

/// Which recipients the relay accepts kind 1059 gift wraps for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxPolicy {
    /// `None` (default): gift wraps for anyone. `Some(list)`: only gift wraps
    /// with at least one `p` tag in the list (an "inbox" relay).
    pub allowed_recipients: Option<Vec<PublicKey>>,
}

impl InboxPolicy {
    /// Whether a gift wrap addressed to `recipients` is accepted.
    pub fn accepts<'a>(&self, mut recipients: impl Iterator<Item = &'a str>) -> bool {
        match &self.allowed_recipients {
            None => true,
            Some(allowed) => recipients.any(|r| allowed.iter().any(|a| a.to_hex() == r)),
        }
    }
}

/// Limits enforced by the relay. Every one of them is published in NIP-11,
/// except the per-client query concurrency (`max_concurrent_queries_per_ip`,
/// `query_wait_ms`), for which NIP-11 has no field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes; larger frames close the socket.
    pub max_message_length: usize,
    /// Largest event (its JSON), in bytes.
    pub max_event_length: usize,
    /// Most tags on one event.
    pub max_event_tags: usize,
    /// Most events (`e` and `a` tags) one NIP-09 deletion request names.
    /// Each is a row to delete and a tombstone in one commit of the single
    /// writer, so this bounds how long a deletion holds it (and every
    /// other client's `OK`); a client deleting more sends several.
    pub max_deletion_targets: usize,
    /// Longest `content`, in bytes.
    pub max_content_length: usize,
    /// Open subscriptions per connection.
    pub max_subscriptions: usize,
    /// Filters in one REQ or COUNT.
    pub max_filters: usize,
    /// Cap on a filter's `limit`, also used when a filter names none.
    pub max_limit: usize,
    /// Longest subscription id.
    pub max_subid_length: usize,
    /// Open WebSocket connections in total.
    pub max_connections: usize,
    /// Open WebSocket connections per client IP.
    pub max_connections_per_ip: usize,
    /// Seconds into the future an event's `created_at` may be.
    pub created_at_upper_limit: u64,
    /// Seconds into the past an event's `created_at` may be (`None`: no bound).
    pub created_at_lower_limit: Option<u64>,
    /// Messages that may wait for one slow reader before it is disconnected.
    pub max_outbound_queue: usize,
    /// Bytes of messages that may wait for one connection's socket (a
    /// single larger message still goes, alone). Also how much of a REQ's
    /// stored results is read ahead of the socket; the rest is fetched as
    /// the client reads.
    pub max_outbound_bytes: usize,
    /// Milliseconds a send may wait for room in the outbound queue while the
    /// client reads nothing at all; then it is disconnected as a slow reader.
    pub slow_reader_grace_ms: u64,
    /// Most values in any one list of a filter (`ids`, `authors`, `kinds`,
    /// each `#x`).
    pub max_values_per_filter: usize,
    /// Most values in all the filters of one REQ or COUNT together.
    pub max_values_per_req: usize,
    /// Most filter values one connection's open subscriptions hold together.
    pub max_values_per_connection: usize,
    /// Milliseconds of database time one REQ or COUNT may take; a query that
    /// needs more is stopped and answered with CLOSED.
    pub max_query_ms: u64,
    /// REQ and COUNT queries of one client (key, see
    /// [`crate::net::NetworkConfig::client_key`]) that may run against the
    /// database at once, over all its connections (0: no limit). Further
    /// ones wait, in order, for up to `query_wait_ms`. Not in NIP-11, which
    /// has no field for it.
    pub max_concurrent_queries_per_ip: usize,
    /// Milliseconds a REQ or COUNT may wait for one of its client's query
    /// slots; then it is answered with CLOSED `rate-limited:`.
    pub query_wait_ms: u64,
    /// Seconds an AUTH event's `created_at` may differ from now.
    pub auth_window: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_length: 512 * 1024,
            max_event_length: 256 * 1024,
            max_event_tags: 2_500,
            max_deletion_targets: 500,
            max_content_length: 200 * 1024,
            max_subscriptions: 32,
            max_filters: 16,
            max_limit: 500,
            max_subid_length: 64,
            max_connections: 20_000,
            max_connections_per_ip: 256,
            created_at_upper_limit: 15 * 60,
            created_at_lower_limit: None,
            max_outbound_queue: 1_024,
            max_outbound_bytes: 1024 * 1024,
            slow_reader_grace_ms: 3_000,
            max_values_per_filter: 5_000,
            max_values_per_req: 10_000,
            max_values_per_connection: 50_000,
            max_query_ms: 1_000,
            max_concurrent_queries_per_ip: 2,
            query_wait_ms: 5_000,
            auth_window: 10 * 60,
        }
    }
}

/// A token bucket's shape: `per_second` tokens refill, up to `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained rate.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Rate {
    /// A rate of `per_second` with room for `burst`.
    pub const fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst }
    }

    /// Time for one token to refill.
    pub fn refill_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second.max(f64::MIN_POSITIVE))
    }
}

/// Rate limits. Gift-wrap authors are one-time keys, so kind 1059 is limited
/// by client IP and by recipient instead of by author.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// EVENT messages per client IP. Here and per pubkey, an event heavy
    /// for the database counts as several: one token plus one per 256 of
    /// its write cost (tags, deletion targets, KiB of content), so a
    /// 2,500-tag deletion request takes 20.
    pub events_per_ip: Rate,
    /// Events per author pubkey (not applied to kind 1059).
    pub events_per_pubkey: Rate,
    /// Kind 1059 gift wraps per `p`-tagged recipient.
    pub gift_wraps_per_recipient: Rate,
    /// REQ and COUNT messages per client IP.
    pub reqs_per_ip: Rate,
    /// REQ and COUNT messages per authenticated pubkey.
    pub reqs_per_pubkey: Rate,
    /// Rate-limited messages in a row after which the connection is closed.
    pub max_violations: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            events_per_ip: Rate::new(50.0, 200.0),
            events_per_pubkey: Rate::new(20.0, 100.0),
            gift_wraps_per_recipient: Rate::new(10.0, 100.0),
            reqs_per_ip: Rate::new(50.0, 200.0),
            reqs_per_pubkey: Rate::new(50.0, 200.0),
            max_violations: 100,
        }
    }
}
