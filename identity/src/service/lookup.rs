//! Lookups: where an identity stands, by handle, by key, or for NIP-05,
//! and the history of its operations.
//!
//! The standing combines the registry's record with its epoch's cached
//! anchor record; the bundle is attached once that epoch's anchor is in a
//! block. A key that ever signed for an identity stays findable (it answers
//! `rotated` or `revoked`), so an old key never silently resolves to nothing.

use nostr::nips::nip19::ToBech32;
use nostr::{Event, PublicKey};
use tracing::warn;

use crate::anchor::AnchorState;
use crate::binding::{BindingOp, IdentityStatus, Status};

use super::{
    BindingState, HistoryEntry, IdentityService, IdentityView, Nip05Answer, ServiceError, Standing,
};

impl IdentityService {
    /// Where the identity holding `handle` stands.
    pub async fn lookup_handle(&self, handle: &str) -> Result<IdentityView, ServiceError> {
        let x_uid = {
            let core = self.core().await;
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
            let core = self.core().await;
            *core.keys.get(key).ok_or(ServiceError::NotFound("key"))?
        };
        self.view(x_uid, Some(*key)).await
    }

    /// Every operation accepted for `x_uid`, oldest first, each with how
    /// far its epoch's anchor is. Empty for an unknown id. Pending
    /// operations are included (their `anchoring` says `pending`): this is
    /// the node's record, not what a bundle proves.
    pub async fn history(&self, x_uid: u64) -> Vec<HistoryEntry> {
        let ops: Vec<(Event, u64, bool)> = {
            let core = self.core().await;
            core.history
                .get(&x_uid)
                .map(|h| {
                    h.iter()
                        .map(|o| (o.event.clone(), o.epoch, o.attestation.is_some()))
                        .collect()
                })
                .unwrap_or_default()
        };
        ops.into_iter()
            .filter_map(|(event, epoch, attested)| {
                // Accepted operations were parsed before; one that no longer
                // parses would be a bug, and is left out rather than shown wrong.
                let op = BindingOp::from_event(&event).ok()?;
                let record = self.cached_record(epoch);
                let block_height = record.as_ref().and_then(|r| match r.state {
                    AnchorState::Confirmed { height, .. } => Some(height),
                    _ => None,
                });
                Some(HistoryEntry {
                    op: op.op.as_str(),
                    seq: op.seq,
                    event_id: event.id.to_hex(),
                    signer: event.pubkey.to_bech32().unwrap_or_default(),
                    created_at: event.created_at.as_secs(),
                    handle: op.identity.as_ref().map(|i| i.handle.clone()),
                    post_id: op.identity.as_ref().map(|i| i.post_id.to_string()),
                    new_key: op.new_key.and_then(|k| k.to_bech32().ok()),
                    vetoes: op.target.map(|t| t.to_hex()),
                    attested,
                    epoch,
                    anchoring: self.anchoring_state(epoch),
                    anchor_txid: record.and_then(|r| r.txid).map(|t| t.to_string()),
                    block_height,
                })
            })
            .collect()
    }

    /// What NIP-05 answers for `name`, and which state of the record it
    /// reflects (`pending`, `anchored` or `final`).
    ///
    /// With `serve_pending`, the bound key of the identity now holding the
    /// handle, anchored or not. Without, only a key the anchored record also
    /// binds to that handle: the latest epoch anchored in a block must name
    /// the same key under that handle, so a pending bind, rotation or move
    /// answers nothing until it is anchored. A revocation (or a rotation
    /// away from the anchored key) withdraws the name at once either way:
    /// a key its owner gave up must not be served a moment longer.
    pub async fn nip05_answer(&self, name: &str, serve_pending: bool) -> Option<Nip05Answer> {
        let (key, last_epoch, snapshots) = {
            let core = self.core().await;
            let identity = core.registry.resolve_handle(name)?;
            if identity.status == Status::Revoked {
                return None;
            }
            let key = identity.key?;
            let snapshots: Vec<(u64, Option<PublicKey>, bool, String)> = core
                .snapshots
                .get(&identity.x_uid)
                .map(|s| {
                    s.iter()
                        .rev()
                        .map(|(e, i)| (*e, i.key, i.status == Status::Revoked, i.handle.clone()))
                        .collect()
                })
                .unwrap_or_default();
            (key, identity.last_epoch, snapshots)
        };
        let state = self.anchoring_state(last_epoch);
        if serve_pending || state != Standing::Pending {
            return Some(Nip05Answer { key, state });
        }
        // The latest snapshot in an epoch anchored in a block.
        let (epoch, anchored_key, revoked, handle) = snapshots
            .into_iter()
            .find(|(e, ..)| self.anchoring_state(*e) != Standing::Pending)?;
        (anchored_key == Some(key) && !revoked && handle.eq_ignore_ascii_case(name)).then(|| {
            Nip05Answer {
                key,
                state: self.anchoring_state(epoch),
            }
        })
    }

    /// `pending`, `anchored` or `final`: how far `epoch`'s anchor is, from
    /// the cached anchor records.
    pub(super) fn anchoring_state(&self, epoch: u64) -> Standing {
        match self.cached_record(epoch) {
            Some(r) if r.is_final => Standing::Final,
            Some(r) if matches!(r.state, AnchorState::Confirmed { confirmations, .. } if confirmations > 0) => {
                Standing::Anchored
            }
            _ => Standing::Pending,
        }
    }

    /// The key NIP-05 should serve for `name`: the bound key of the identity
    /// currently holding that handle, anchored or not (see
    /// [`Self::nip05_answer`] for the anchored-only answer).
    pub async fn nip05(&self, name: &str) -> Option<PublicKey> {
        let core = self.core().await;
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
            let core = self.core().await;
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
        // A revoked identity has no key: an old key asked about is revoked
        // with it, not "rotated away".
        let rotated = asked_key.is_some_and(|k| identity.key.is_some_and(|bound| bound != k));
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
        let reflects = if is_final {
            Standing::Final
        } else if confirmations > 0 {
            Standing::Anchored
        } else {
            Standing::Pending
        };
        Ok(IdentityView {
            reflects,
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
