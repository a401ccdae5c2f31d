//! The `[identity]` settings section: the X witness, epochs and anchoring.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bitcoin::FeeRate;
use cairn_bitcoin::RpcConfig;
use cairn_identity::anchor::AnchorPolicy;
use cairn_identity::service::{ServiceConfig, DEFAULT_MAX_OUTSTANDING_CHALLENGES};
use cairn_identity::x::client::{DEFAULT_OEMBED_BASE, DEFAULT_SYNDICATION_BASE};
use cairn_identity::x::{CheckPolicy, XClientConfig};
use cairn_identity_core::binding::{RegistryConfig, DEFAULT_RECOVERY_DELAY_BLOCKS};
use cairn_relay::config::Rate;
use serde::{Deserialize, Serialize};

use super::BitcoinSettings;

/// The identity witness and registry (off by default: a plain relay needs
/// neither X nor Bitcoin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// Serve `/identity/v1/…` and NIP-05, witness X proofs, anchor epochs.
    pub enabled: bool,
    /// Base URL of X's oEmbed endpoint (`/oembed` is appended).
    pub x_oembed_base: String,
    /// Base URL of X's syndication endpoint (`/tweet-result` is appended).
    pub x_syndication_base: String,
    /// Timeout of one request to X, seconds.
    pub x_request_timeout_secs: u64,
    /// Seconds between epoch closes (an epoch without operations is skipped).
    pub epoch_interval_secs: u64,
    /// Seconds between anchor syncs with the Bitcoin node.
    pub anchor_sync_interval_secs: u64,
    /// Seconds an issued challenge stays valid.
    pub challenge_ttl_secs: u64,
    /// Challenges one client IP may ask for (`POST /identity/v1/challenges`):
    /// `per_second` refill, up to `burst`. Over it: 429 with `Retry-After`.
    pub challenges_per_ip: Rate,
    /// Binding submissions one client IP may make (`POST
    /// /identity/v1/bindings`; each may make the node ask X). Over it: 429.
    pub bindings_per_ip: Rate,
    /// Submissions naming one challenge (its `challenge` tag). Over it: 429.
    pub bindings_per_challenge: Rate,
    /// Seconds a submission whose proof check failed (X said no, or could
    /// not be asked) is answered from memory when sent again unchanged,
    /// without asking X again.
    pub failed_binding_cache_secs: u64,
    /// Most challenges outstanding (issued, unused, unexpired) at once,
    /// across all clients. Over it: 429 with `Retry-After`.
    pub max_outstanding_challenges: u64,
    /// Blocks between an accepted `recover` and its effect (the veto window).
    pub recovery_delay_blocks: u32,
    /// Lowest anchor feerate, sat/vB (also used when the node has no estimate).
    pub fee_floor_sat_per_vb: u64,
    /// Highest anchor feerate, sat/vB, fee bumps included.
    pub fee_cap_sat_per_vb: u64,
    /// Blocks an anchor may stay unconfirmed before it is fee-bumped (RBF).
    pub bump_after_blocks: u32,
    /// Confirmations after which an anchor (and its bindings) is final.
    pub confirmations: u32,
    /// Whether NIP-05 (`/.well-known/nostr.json`) serves bindings accepted
    /// but not yet anchored in a block. Off (default): only keys the
    /// anchored record binds are served. Revocations take effect at once
    /// either way.
    pub nip05_serves_pending: bool,
    /// Other witnesses to mirror (`[[identity.mirror]]`): their published
    /// logs are followed on a relay, checked against anchors on this node's
    /// `[bitcoin]` node and served under their witness key (see
    /// `docs/identity-api.md`, "Mirrors"). Runs whether or not `enabled`.
    pub mirror: Vec<MirrorSettings>,
    /// Seconds between re-checks of mirrored epochs whose anchor was not in
    /// a block yet (new events trigger a check at once).
    pub mirror_recheck_secs: u64,
}

/// One mirrored witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSettings {
    /// Relay the witness publishes on (`ws://` or `wss://`), e.g. its node.
    pub relay: String,
    /// The witness key: `npub1…` or 64 hex digits.
    pub witness: String,
    /// The witness's `recovery_delay_blocks` (its registry rule; a
    /// different value makes recoveries replay differently).
    #[serde(default = "default_recovery_delay")]
    pub recovery_delay_blocks: u32,
}

fn default_recovery_delay() -> u32 {
    DEFAULT_RECOVERY_DELAY_BLOCKS
}

impl MirrorSettings {
    /// The witness key.
    pub fn witness_key(&self) -> anyhow::Result<nostr::PublicKey> {
        use nostr::nips::nip19::FromBech32;
        nostr::PublicKey::from_bech32(self.witness.trim())
            .or_else(|_| nostr::PublicKey::from_hex(self.witness.trim()))
            .map_err(|_| {
                anyhow::anyhow!(
                    "identity.mirror: witness {:?} is not an npub or 64 hex digits",
                    self.witness
                )
            })
    }
}

impl Default for IdentitySettings {
    fn default() -> Self {
        let anchor = AnchorPolicy::default();
        Self {
            enabled: false,
            x_oembed_base: DEFAULT_OEMBED_BASE.to_owned(),
            x_syndication_base: DEFAULT_SYNDICATION_BASE.to_owned(),
            x_request_timeout_secs: 10,
            epoch_interval_secs: 3600,
            anchor_sync_interval_secs: 30,
            challenge_ttl_secs: 3600,
            // A person binding an account needs one or two; a client that
            // keeps asking gets ten at once, then one every 50 s.
            challenges_per_ip: Rate::new(0.02, 10.0),
            // Ten at once, then one every 10 s per address; per challenge
            // three tries, then one every 20 s (a fixed post, a retry).
            bindings_per_ip: Rate::new(0.1, 10.0),
            bindings_per_challenge: Rate::new(0.05, 3.0),
            failed_binding_cache_secs: 60,
            max_outstanding_challenges: DEFAULT_MAX_OUTSTANDING_CHALLENGES,
            recovery_delay_blocks: DEFAULT_RECOVERY_DELAY_BLOCKS,
            fee_floor_sat_per_vb: anchor.fee_floor.to_sat_per_vb_ceil(),
            fee_cap_sat_per_vb: anchor.fee_cap.to_sat_per_vb_ceil(),
            bump_after_blocks: anchor.bump_after_blocks,
            confirmations: anchor.confirmations,
            nip05_serves_pending: false,
            mirror: Vec::new(),
            mirror_recheck_secs: 30,
        }
    }
}

impl IdentitySettings {
    /// The service configuration, with files under `data_dir`, on the
    /// network and Bitcoin Core node of `[bitcoin]`.
    pub fn service_config(
        &self,
        bitcoin: &BitcoinSettings,
        data_dir: &Path,
    ) -> anyhow::Result<ServiceConfig> {
        let url = |name: &str, value: &str| {
            url::Url::parse(value).with_context(|| format!("identity.{name} is not a URL"))
        };
        anyhow::ensure!(
            self.challenges_per_ip.per_second > 0.0 && self.challenges_per_ip.burst >= 1.0,
            "identity.challenges_per_ip: need per_second > 0 and burst >= 1"
        );
        for (name, rate) in [
            ("bindings_per_ip", self.bindings_per_ip),
            ("bindings_per_challenge", self.bindings_per_challenge),
        ] {
            anyhow::ensure!(
                rate.per_second > 0.0 && rate.burst >= 1.0,
                "identity.{name}: need per_second > 0 and burst >= 1"
            );
        }
        anyhow::ensure!(
            self.fee_floor_sat_per_vb >= 1 && self.fee_floor_sat_per_vb <= self.fee_cap_sat_per_vb,
            "identity: need 1 <= fee_floor_sat_per_vb <= fee_cap_sat_per_vb"
        );
        let mut rpc = RpcConfig::new(&bitcoin.rpc_url, &bitcoin.rpc_user, &bitcoin.rpc_password);
        rpc.timeout = Duration::from_secs(10);
        Ok(ServiceConfig {
            data_dir: data_dir.to_path_buf(),
            network: bitcoin.network.into(),
            rpc,
            anchor_policy: AnchorPolicy {
                fee_floor: FeeRate::from_sat_per_vb(self.fee_floor_sat_per_vb)
                    .context("identity.fee_floor_sat_per_vb is too large")?,
                fee_cap: FeeRate::from_sat_per_vb(self.fee_cap_sat_per_vb)
                    .context("identity.fee_cap_sat_per_vb is too large")?,
                bump_after_blocks: self.bump_after_blocks.max(1),
                confirmations: self.confirmations.max(1),
                ..AnchorPolicy::default()
            },
            x: XClientConfig {
                oembed_base: url("x_oembed_base", &self.x_oembed_base)?,
                syndication_base: url("x_syndication_base", &self.x_syndication_base)?,
                request_timeout: Duration::from_secs(self.x_request_timeout_secs.max(1)),
                ..XClientConfig::default()
            },
            check: CheckPolicy::default(),
            registry: RegistryConfig {
                recovery_delay_blocks: self.recovery_delay_blocks,
            },
            epoch_interval: Duration::from_secs(self.epoch_interval_secs.max(1)),
            anchor_sync_interval: Duration::from_secs(self.anchor_sync_interval_secs.max(1)),
            challenge_ttl: Duration::from_secs(self.challenge_ttl_secs.max(1)),
            max_outstanding_challenges: self.max_outstanding_challenges,
        })
    }
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::settings::Settings;

    #[test]
    fn mirrors_are_read_from_the_file() {
        let witness = nostr::Keys::generate().public_key();
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "cairn.toml",
                &format!(
                    "[identity]\nmirror_recheck_secs = 5\n\
                     [[identity.mirror]]\nrelay = \"ws://127.0.0.1:7000\"\nwitness = \"{}\"\n\
                     [[identity.mirror]]\nrelay = \"wss://b.example\"\nwitness = \"{}\"\n\
                     recovery_delay_blocks = 6\n",
                    nostr::nips::nip19::ToBech32::to_bech32(&witness).unwrap(),
                    witness.to_hex()
                ),
            )?;
            let s = Settings::load(Some(Path::new("cairn.toml"))).expect("loads");
            let m = &s.identity.mirror;
            assert_eq!(m.len(), 2);
            assert_eq!(s.identity.mirror_recheck_secs, 5);
            assert_eq!(m[0].recovery_delay_blocks, DEFAULT_RECOVERY_DELAY_BLOCKS);
            assert_eq!(m[1].recovery_delay_blocks, 6);
            // npub and hex name the same key.
            assert_eq!(m[0].witness_key().unwrap(), witness);
            assert_eq!(m[1].witness_key().unwrap(), witness);
            jail.create_file(
                "bad.toml",
                "[[identity.mirror]]\nrelay = \"ws://x\"\nwitness = \"nope\"\n",
            )?;
            let s = Settings::load(Some(Path::new("bad.toml"))).expect("loads");
            assert!(s.identity.mirror[0].witness_key().is_err());
            jail.create_file(
                "unknown.toml",
                "[[identity.mirror]]\nrelay = \"ws://x\"\nwitness = \"a\"\nfoo = 1\n",
            )?;
            assert!(Settings::load(Some(Path::new("unknown.toml"))).is_err());
            Ok(())
        });
    }
}
