//! Lookups: where an identity stands, by handle, by key, or for NIP-05.
//!
//! The standing combines the registry's record with its epoch's cached
//! anchor record; the bundle is attached once that epoch's anchor is in a
//! block. A key that ever signed for an identity stays findable (it answers
//! `rotated` or `revoked`), so an old key never silently resolves to nothing.

use nostr::nips::nip19::ToBech32;
use nostr::PublicKey;
use tracing::warn;

use crate::anchor::AnchorState;
use crate::binding::{IdentityStatus, Status};

use super::{BindingState, IdentityService, IdentityView, ServiceError, Standing};

impl IdentityService {
    /// Where the identity holding `handle` stands.
    pub async fn lookup_handle(&self, handle: &str) -> Result<IdentityView, ServiceError> {
        let x_uid = {
            let core = self.core.lock().await;
            core.registry
                .resolve_handle(handle)
                .map(|i| i.x_uid)
                .ok_or(ServiceError::NotFound("handle"))?
        };
        self.view(x_uid, None).await
    }

    /// Where the identity `key` is (or was) bound to stands.
    pub async fn lookup_key(&self, key: &PublicKey) -> Result<IdentityView, ServiceError> {
        let x_uid = {
            let core = self.core.lock().await;
            *core.keys.get(key).ok_or(ServiceError::NotFound("key"))?
        };
        self.view(x_uid, Some(*key)).await
    }

    /// The key NIP-05 should serve for `name`: the bound key of the identity
    /// currently holding that handle.
    pub async fn nip05(&self, name: &str) -> Option<PublicKey> {
        let core = self.core.lock().await;
        let identity = core.registry.resolve_handle(name)?;
        match identity.status {
            Status::Revoked => None,
            _ => identity.key,
        }
    }

    async fn view(
        &self,
        x_uid: u64,
        asked_key: Option<PublicKey>,
    ) -> Result<IdentityView, ServiceError> {
        let (identity, moved_to, last_epoch, snapshot_epoch) = {
            let core = self.core.lock().await;
            let status = core
                .registry
                .status(x_uid)
                .ok_or(ServiceError::NotFound("identity"))?;
            let (identity, moved_to) = match status {
                IdentityStatus::Bound(i) | IdentityStatus::Revoked(i) => (i.clone(), None),
                IdentityStatus::Moved { identity, now } => (identity.clone(), Some(now)),
            };
            let snapshot_epoch = core
                .snapshots
                .get(&x_uid)
                .and_then(|s| s.keys().next_back().copied());
            (
                identity.clone(),
                moved_to,
                identity.last_epoch,
                snapshot_epoch,
            )
        };
        let record = self.cached_record(last_epoch);
        let (confirmations, is_final, anchor_txid) = match &record {
            Some(r) => match r.state {
                AnchorState::Confirmed { confirmations, .. } => (confirmations, r.is_final, r.txid),
                _ => (0, false, r.txid),
            },
            None => (0, false, None),
        };
        let rotated = asked_key.is_some_and(|k| identity.key != Some(k));
        let binding = if rotated {
            BindingState::Rotated
        } else {
            match identity.status {
                Status::Bound => BindingState::Bound,
                Status::RecoveryPending(_) => BindingState::RecoveryPending,
                Status::Revoked => BindingState::Revoked,
            }
        };
        let status = if moved_to.is_some() {
            Standing::Moved
        } else if identity.status == Status::Revoked || rotated {
            Standing::Revoked
        } else if is_final {
            Standing::Final
        } else if confirmations > 0 {
            Standing::Anchored
        } else {
            Standing::Pending
        };
        let bundle = match snapshot_epoch {
            Some(epoch) => match self.bundle(x_uid, epoch).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(x_uid, epoch, error = %e, "cannot assemble a proof bundle");
                    None
                }
            },
            None => None,
        };
        Ok(IdentityView {
            x_uid: x_uid.to_string(),
            handle: identity.handle.clone(),
            pubkey: identity.key.map(|k| k.to_hex()),
            npub: identity.key.and_then(|k| k.to_bech32().ok()),
            status,
            binding,
            moved_to: moved_to.map(|m| m.to_string()),
            seq: identity.seq,
            head: identity.head.to_hex(),
            epoch: last_epoch,
            confirmations,
            anchor_txid: anchor_txid.map(|t| t.to_string()),
            recovery_effective_height: match identity.status {
                Status::RecoveryPending(p) => Some(p.effective_height),
                _ => None,
            },
            bundle,
        })
    }
}
