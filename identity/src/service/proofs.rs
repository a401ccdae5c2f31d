//! Proof and absence bundles: assembling them from the in-memory log and
//! state tree, the epoch header and the anchor's `gettxoutproof` Merkle block.
//!
//! Invariants: a bundle is built only for an epoch that changed the identity
//! (its snapshot) and whose anchor is confirmed; Merkle blocks are cached by
//! (txid, block hash), since a block's proof never changes; an absence proof
//! is checked against the state root before it is handed out.

use bitcoin::consensus::deserialize;
use bitcoin::{BlockHash, MerkleBlock, Txid};
use cairn_bitcoin::RpcClient;
use nostr::Event;

use crate::anchor::{AnchorError, AnchorState};
use crate::binding::OpKind;
use crate::bundle::{AbsenceBundle, ProofBundle};
use crate::state::state_key;

use super::memory::AcceptedOp;
use super::{IdentityService, ServiceError};

impl IdentityService {
    /// The proof bundle of `x_uid` as of `epoch` (which must have changed it),
    /// once that epoch's anchor is in a block.
    pub(super) async fn bundle(
        &self,
        x_uid: u64,
        epoch: u64,
    ) -> Result<Option<ProofBundle>, ServiceError> {
        let Some(record) = self.cached_record(epoch) else {
            return Ok(None);
        };
        let (
            AnchorState::Confirmed {
                height, block_hash, ..
            },
            Some(tx),
        ) = (record.state, record.tx.clone())
        else {
            return Ok(None);
        };
        let merkle_block = self.merkle_block(tx.compute_txid(), block_hash).await?;
        let core = self.core().await;
        let Some(closed) = core.epochs.get(epoch as usize) else {
            return Ok(None);
        };
        let Some(identity) = core.snapshots.get(&x_uid).and_then(|s| s.get(&epoch)) else {
            return Ok(None);
        };
        let ops: Vec<&AcceptedOp> = core
            .history
            .get(&x_uid)
            .map(|h| h.iter().filter(|o| o.epoch <= epoch).collect())
            .unwrap_or_default();
        let Some(head) = ops.last() else {
            return Ok(None);
        };
        let attestations: Vec<(Event, u64)> = ops
            .iter()
            .filter(|o| matches!(o.op, OpKind::Bind | OpKind::Recover))
            .filter_map(|o| Some((o.attestation.clone()?, o.attestation_index?)))
            .collect();
        let bundle = ProofBundle::assemble(
            identity,
            ops.iter().map(|o| o.event.clone()).collect(),
            attestations.iter().map(|(e, _)| e.clone()).collect(),
            head.log_index,
            &attestations.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
            &core.log,
            &core.state,
            closed.header,
            tx,
            height,
            merkle_block,
        )
        .map_err(|e| ServiceError::Corrupt(format!("assembling a bundle: {e}")))?;
        Ok(Some(bundle))
    }

    /// Proof that `x_uid` has no record, against the latest epoch whose
    /// anchor is in a block (protocol §11.5).
    pub async fn absence(&self, x_uid: u64) -> Result<AbsenceBundle, ServiceError> {
        if x_uid == 0 {
            return Err(ServiceError::BadRequest("x_uid must be non-zero".into()));
        }
        if self.core().await.registry.get(x_uid).is_some() {
            return Err(ServiceError::Known(x_uid));
        }
        let confirmed = {
            let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            records
                .values()
                .filter_map(|r| match (r.state, &r.tx) {
                    (
                        AnchorState::Confirmed {
                            height, block_hash, ..
                        },
                        Some(tx),
                    ) => Some((r.epoch, height, block_hash, tx.clone())),
                    _ => None,
                })
                .max_by_key(|(epoch, ..)| *epoch)
        };
        let (epoch, height, block_hash, tx) =
            confirmed.ok_or(ServiceError::NotFound("anchored epoch"))?;
        let merkle_block = self.merkle_block(tx.compute_txid(), block_hash).await?;
        let core = self.core().await;
        let header = core
            .epochs
            .get(epoch as usize)
            .ok_or(ServiceError::NotFound("anchored epoch"))?
            .header;
        let state_proof = core.state.prove_at(&header.state_root, &state_key(x_uid))?;
        // A record is never removed, so absent now means absent then too.
        if state_proof
            .verify(&header.state_root, &state_key(x_uid))
            .map_err(|e| ServiceError::Corrupt(format!("state proof: {e}")))?
            .is_some()
        {
            return Err(ServiceError::Known(x_uid));
        }
        Ok(AbsenceBundle {
            x_uid,
            state_proof,
            epoch_header: header,
            anchor_tx: tx,
            block_height: height,
            merkle_block,
        })
    }

    async fn merkle_block(
        &self,
        txid: Txid,
        block_hash: BlockHash,
    ) -> Result<MerkleBlock, ServiceError> {
        let cached = self
            .proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(txid, block_hash))
            .cloned();
        if let Some(mb) = cached {
            return Ok(mb);
        }
        let mb = self.fetch_merkle_block(txid, block_hash).await?;
        self.proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((txid, block_hash), mb.clone());
        Ok(mb)
    }

    async fn fetch_merkle_block(
        &self,
        txid: Txid,
        block_hash: BlockHash,
    ) -> Result<MerkleBlock, ServiceError> {
        let unreachable =
            |reason: String| ServiceError::Anchor(AnchorError::ChainUnreachable { reason });
        let client = RpcClient::new(&self.config.rpc).map_err(|e| unreachable(e.to_string()))?;
        let bytes = client
            .run(move |c| c.tx_out_proof(&txid, &block_hash))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        deserialize(&bytes).map_err(|e| ServiceError::Corrupt(format!("gettxoutproof: {e}")))
    }
}
