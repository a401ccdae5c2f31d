//! What the node checks itself before a page says "verified": the proof
//! bundle (or absence bundle) it serves, run through the very verifier
//! `cairn verify` uses ([`verify`], [`verify_absence`]), against this
//! node's own Bitcoin node (`[bitcoin] rpc_url`) as the chain view.
//!
//! The verifier's calls block, so they run on a blocking thread, at most
//! [`super::MAX_CONCURRENT_CHECKS`] at a time. Chain-view failures are
//! logged and shown as "could not reach its Bitcoin node", never with the
//! RPC error text (it may name the RPC endpoint).

use cairn_identity::bundle::{
    verify, verify_absence, AbsenceBundle, BundleError, ProofBundle, RpcChainView, VerifyPolicy,
};
use nostr::nips::nip19::ToBech32;

use super::Identity;

/// What the node's own check found.
pub(super) enum NodeCheck {
    /// Every link held; what it proves.
    Verified(Proven),
    /// A link did not hold: the step (§11.3) and why.
    Failed { step: String, reason: String },
    /// The node could not ask its Bitcoin node.
    Unreachable,
}

/// What a verified bundle shows, as the page prints it.
pub(super) struct Proven {
    /// `@handle → npub` (identity bundles), or "no record" (absence).
    pub handle: Option<String>,
    pub key: Option<String>,
    pub operations: usize,
    pub attestations: usize,
    pub epoch: u64,
    pub header_hash: String,
    pub anchor_txid: String,
    pub block_hash: String,
    pub block_height: u32,
    pub confirmations: u32,
    pub network: String,
}

/// The node's Bitcoin node as a chain view; `None` (logged) when the RPC
/// client cannot be set up.
fn chain_of(identity: &Identity) -> Option<RpcChainView> {
    let rpc = &identity.service.config().rpc;
    RpcChainView::new(&rpc.url, &rpc.user, &rpc.password, rpc.timeout)
        .map_err(|e| tracing::warn!(error = %e, "web: cannot set up the Bitcoin RPC chain view"))
        .ok()
}

/// The policy of the node's own check: its network, its own witness key,
/// and one confirmation (the page shows how many there are; "final" is the
/// node's standing, reported beside it).
fn policy(identity: &Identity) -> VerifyPolicy {
    VerifyPolicy {
        network: identity.service.config().network,
        min_confirmations: 1,
        trusted_witnesses: vec![identity.service.witness_public_key()],
    }
}

fn failed(e: BundleError) -> NodeCheck {
    match e.step() {
        Some(step) => NodeCheck::Failed {
            step: format!("{} ({})", step.number(), step.as_str()),
            reason: e.to_string(),
        },
        None => {
            tracing::warn!(error = %e, "web: the bundle check could not reach the Bitcoin node");
            NodeCheck::Unreachable
        }
    }
}

/// Runs `check` (a verifier call, which blocks) on a blocking thread
/// against the node's chain view and policy, under a check permit.
async fn run<F>(identity: &Identity, what: &'static str, check: F) -> NodeCheck
where
    F: FnOnce(&RpcChainView, &VerifyPolicy) -> Result<Proven, BundleError> + Send + 'static,
{
    let Ok(_permit) = identity.checks.acquire().await else {
        return NodeCheck::Unreachable;
    };
    let Some(chain) = chain_of(identity) else {
        return NodeCheck::Unreachable;
    };
    let policy = policy(identity);
    match tokio::task::spawn_blocking(move || check(&chain, &policy)).await {
        Ok(Ok(proven)) => NodeCheck::Verified(proven),
        Ok(Err(e)) => failed(e),
        Err(e) => {
            tracing::error!(error = %e, check = what, "web: a bundle check panicked");
            NodeCheck::Unreachable
        }
    }
}

/// Checks `bundle` against the node's Bitcoin node.
pub(super) async fn identity_bundle(identity: &Identity, bundle: ProofBundle) -> NodeCheck {
    run(identity, "identity", move |chain, policy| {
        let v = verify(&bundle, chain, policy)?;
        Ok(Proven {
            handle: Some(v.handle),
            key: v.key.and_then(|k| k.to_bech32().ok()),
            operations: bundle.ops.len(),
            attestations: bundle.attestations.len(),
            epoch: v.epoch.epoch,
            header_hash: hex::encode(v.header_hash),
            anchor_txid: v.anchor_txid.to_string(),
            block_hash: v.block_hash.to_string(),
            block_height: v.block_height,
            confirmations: v.confirmations,
            network: policy.network.to_string(),
        })
    })
    .await
}

/// Checks an absence bundle against the node's Bitcoin node.
pub(super) async fn absence_bundle(identity: &Identity, bundle: AbsenceBundle) -> NodeCheck {
    run(identity, "absence", move |chain, policy| {
        let v = verify_absence(&bundle, chain, policy)?;
        Ok(Proven {
            handle: None,
            key: None,
            operations: 0,
            attestations: 0,
            epoch: v.epoch.epoch,
            header_hash: hex::encode(v.header_hash),
            anchor_txid: v.anchor_txid.to_string(),
            block_hash: v.block_hash.to_string(),
            block_height: v.block_height,
            confirmations: v.confirmations,
            network: policy.network.to_string(),
        })
    })
    .await
}
