//! What the service is configured with: [`ServiceConfig`], its defaults, and
//! the [`Publisher`] it hands its records to.
//!
//! Everything here is plain data; the service reads it once at
//! [`super::IdentityService::open`] and never changes it.

use std::path::PathBuf;
use std::time::Duration;

use bitcoin::Network;
use cairn_bitcoin::RpcConfig;
use nostr::Event;

use crate::anchor::AnchorPolicy;
use crate::binding::RegistryConfig;
use crate::x::{CheckPolicy, XClientConfig};

/// Default time between epoch closes.
pub const DEFAULT_EPOCH_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Default time between anchor syncs (new blocks, fee bumps, reorgs).
pub const DEFAULT_ANCHOR_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Publishes the service's records (bindings, attestations, epoch headers)
/// on the node's own relay, so that other nodes can mirror them.
pub trait Publisher: Send + Sync {
    /// Hands `event` to the relay; failures are the publisher's to log.
    fn publish(&self, event: Event);
}

/// Everything the service needs besides its database.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Holds the witness key, the wallet seed and the wallet database.
    pub data_dir: PathBuf,
    /// Bitcoin network of the anchoring wallet.
    pub network: Network,
    /// Bitcoin Core JSON-RPC endpoint.
    pub rpc: RpcConfig,
    /// Fees and confirmations of anchors.
    pub anchor_policy: AnchorPolicy,
    /// X endpoints and retries.
    pub x: XClientConfig,
    /// Proof-post check tunables.
    pub check: CheckPolicy,
    /// Registry rules (recovery delay).
    pub registry: RegistryConfig,
    /// Time between epoch closes.
    pub epoch_interval: Duration,
    /// Time between anchor syncs.
    pub anchor_sync_interval: Duration,
    /// How long an issued challenge is accepted.
    pub challenge_ttl: Duration,
    /// Most challenges that may be outstanding (issued, unused, unexpired)
    /// at once, across all clients: bounds the challenge table whatever
    /// per-client limits the caller applies.
    pub max_outstanding_challenges: u64,
}

/// Default [`ServiceConfig::max_outstanding_challenges`].
pub const DEFAULT_MAX_OUTSTANDING_CHALLENGES: u64 = 10_000;
