//! The verification algorithm of `docs/identity-protocol.md` §11.3.

use bitcoin::{BlockHash, Network, Txid};
use nostr::{EventId, PublicKey};

use super::{
    chain::ChainView,
    codec::strip_witness,
    error::BundleError,
    pow::{decode_compact, hash_as_number, NetworkRules},
    record::parse_record,
    LogPath, ProofBundle,
};
use crate::{
    binding::{
        log_entry, BindingOp, LogEntryKind, OpKind, PendingRecovery, Status, WitnessAttestation,
    },
    epoch::EpochHeader,
    log::{leaf_hash, InclusionProof},
    nip01::MAX_SAFE_INTEGER,
    state::state_key,
    Hash,
};

/// Confirmations required unless the policy says otherwise.
pub const DEFAULT_MIN_CONFIRMATIONS: u32 = 6;

/// What a verifier accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// The network whose difficulty rules the anchor block must follow.
    pub network: Network,
    /// Blocks (the anchor's included) the anchor must have in the verifier's chain.
    pub min_confirmations: u32,
    /// Witness keys whose attestations are accepted; empty accepts any witness
    /// (the keys are then reported in [`VerifiedIdentity::witnesses`] for the caller to judge).
    pub trusted_witnesses: Vec<PublicKey>,
}

impl VerifyPolicy {
    /// The default policy for `network`: 6 confirmations, any witness.
    pub fn new(network: Network) -> Self {
        Self {
            network,
            min_confirmations: DEFAULT_MIN_CONFIRMATIONS,
            trusted_witnesses: Vec::new(),
        }
    }
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self::new(Network::Bitcoin)
    }
}

/// Where the verified identity stands (the record's status, §6).
pub type VerifiedStatus = Status;

/// What a bundle proves once every link checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The X numeric user id.
    pub x_uid: u64,
    /// The handle of the latest proof post. Whether another id holds it now
    /// ("moved") needs that other id's bundle.
    pub handle: String,
    /// The bound key; `None` when revoked.
    pub key: Option<PublicKey>,
    /// Binding status.
    pub status: VerifiedStatus,
    /// `seq` of the latest operation.
    pub seq: u64,
    /// Id of the latest operation.
    pub head: EventId,
    /// Keys of the witnesses whose attestations back the operations, in order.
    pub witnesses: Vec<PublicKey>,
    /// The epoch header the proofs lead to.
    pub epoch: EpochHeader,
    /// Its hash, as found in the anchor's OP_RETURN.
    pub header_hash: Hash,
    /// The anchor transaction.
    pub anchor_txid: Txid,
    /// The block holding it.
    pub block_hash: BlockHash,
    /// That block's height in the verifier's chain.
    pub block_height: u32,
    /// Confirmations in the verifier's chain: `tip - block_height + 1`.
    pub confirmations: u32,
}

/// Replayed state of the identity (§6 without heights and epochs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replayed {
    Bound,
    Pending {
        recover_id: EventId,
        new_key: PublicKey,
    },
    Revoked,
}

/// Checks every link of `bundle` (§11.3) against the verifier's `chain` under `policy`.
///
/// Steps run in the order of §11.3 and the first failure is returned, so
/// [`BundleError::step`] names the first failing step. Pure apart from the
/// questions it asks `chain`: one `height_of` and one `tip_height`, so a fast
/// [`ChainView`] makes verification take microseconds.
pub fn verify<C: ChainView + ?Sized>(
    bundle: &ProofBundle,
    chain: &C,
    policy: &VerifyPolicy,
) -> Result<VerifiedIdentity, BundleError> {
    // 1. Record.
    let record = parse_record(&bundle.record)?;

    // 2. Operations: each a valid event, together one chain from a bind.
    if bundle.ops.is_empty() {
        return Err(BundleError::NoOperations);
    }
    let ops = bundle
        .ops
        .iter()
        .enumerate()
        .map(|(index, e)| {
            BindingOp::from_event(e).map_err(|source| BundleError::Operation { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (index, op) in ops.iter().enumerate() {
        let broken = |reason| BundleError::BrokenChain { index, reason };
        if op.x_uid != record.x_uid {
            return Err(broken("x_uid differs from the record"));
        }
        if index == 0 {
            // A `bind` fixes key, status and handle by itself, so the chain may start at any bind.
            if op.op != OpKind::Bind {
                return Err(broken("the operations must start with a bind"));
            }
        } else {
            let last = &ops[index - 1];
            if last.seq.checked_add(1) != Some(op.seq) {
                return Err(broken("seq is not the previous seq + 1"));
            }
            if op.prev != Some(last.id()) {
                return Err(broken("prev does not name the previous operation"));
            }
        }
    }

    // 3. Attestations: one per bind/recover, in order, valid, trusted, matching.
    let proof_posts: Vec<&BindingOp> = ops
        .iter()
        .filter(|o| matches!(o.op, OpKind::Bind | OpKind::Recover))
        .collect();
    if bundle.attestations.len() != proof_posts.len() {
        return Err(BundleError::AttestationCount {
            expected: proof_posts.len(),
            found: bundle.attestations.len(),
        });
    }
    let mut witnesses = Vec::with_capacity(proof_posts.len());
    for (index, (event, op)) in bundle.attestations.iter().zip(&proof_posts).enumerate() {
        let att_err = |source| BundleError::Attestation { index, source };
        let (att, witness) = WitnessAttestation::from_event(event).map_err(att_err)?;
        if !policy.trusted_witnesses.is_empty() && !policy.trusted_witnesses.contains(&witness) {
            return Err(BundleError::UntrustedWitness { index, witness });
        }
        att.matches(op).map_err(att_err)?;
        witnesses.push(witness);
    }

    // 4. Replay (§6 without epochs, challenges and heights).
    let mut key: Option<PublicKey> = None;
    let mut state = Replayed::Revoked;
    let mut handle = String::new();
    for (index, op) in ops.iter().enumerate() {
        let refused = |reason| BundleError::Transition { index, reason };
        let signer = op.signer();
        if let Replayed::Pending { new_key, .. } = state {
            // Only a completed recovery lets the recovering key sign (§6, recovery completion).
            if signer == new_key && key != Some(signer) {
                key = Some(new_key);
                state = Replayed::Bound;
            }
        }
        let by_current = key == Some(signer);
        match op.op {
            OpKind::Bind => {
                if index > 0 && state != Replayed::Revoked {
                    return Err(refused("bind while not revoked"));
                }
                key = Some(signer);
                state = Replayed::Bound;
            }
            OpKind::Rotate => {
                if state != Replayed::Bound || !by_current {
                    return Err(refused("rotate needs a bound identity and its current key"));
                }
                key = op.new_key;
            }
            OpKind::Revoke => {
                if state == Replayed::Revoked || !by_current {
                    return Err(refused("revoke needs a live identity and its current key"));
                }
                key = None;
                state = Replayed::Revoked;
            }
            OpKind::Recover => {
                if state != Replayed::Bound || by_current {
                    return Err(refused("recover needs a bound identity and another key"));
                }
                state = Replayed::Pending {
                    recover_id: op.id(),
                    new_key: signer,
                };
            }
            OpKind::Veto => {
                let Replayed::Pending { recover_id, .. } = state else {
                    return Err(refused("veto without a pending recovery"));
                };
                if !by_current || op.target != Some(recover_id) {
                    return Err(refused(
                        "veto needs the current key and the pending recovery's id",
                    ));
                }
                state = Replayed::Bound;
            }
        }
        if let Some(id) = &op.identity {
            handle.clone_from(&id.handle);
        }
    }

    // 5. The replay must give the committed record.
    let head = ops.last().expect("non-empty");
    if record.seq != head.seq || record.head != head.id() {
        return Err(BundleError::RecordMismatch("head operation"));
    }
    if record.handle != handle {
        return Err(BundleError::RecordMismatch("handle"));
    }
    let status_ok = match (state, record.status) {
        (Replayed::Bound, Status::Bound) | (Replayed::Revoked, Status::Revoked) => {
            record.key == key
        }
        (
            Replayed::Pending {
                recover_id,
                new_key,
            },
            Status::RecoveryPending(PendingRecovery {
                recover_id: r,
                new_key: n,
                ..
            }),
        ) => recover_id == r && new_key == n && record.key == key,
        // The delay passed and the recovery completed without a logged operation (§6).
        (Replayed::Pending { new_key, .. }, Status::Bound) => record.key == Some(new_key),
        _ => false,
    };
    if !status_ok {
        return Err(BundleError::RecordMismatch("key or status"));
    }

    // 6. Log: the head operation (which commits to the rest through `prev`) and every attestation.
    let header = &bundle.epoch_header;
    if bundle.attestation_paths.len() != bundle.attestations.len() {
        return Err(BundleError::AttestationPathCount {
            paths: bundle.attestation_paths.len(),
            attestations: bundle.attestations.len(),
        });
    }
    for p in std::iter::once(&bundle.op_path).chain(&bundle.attestation_paths) {
        if p.leaf_index > MAX_SAFE_INTEGER {
            return Err(BundleError::LeafIndexTooLarge(p.leaf_index));
        }
    }
    // The node logs each attestation right before its operation (§7), so
    // attestation leaves come in order, all before the head's leaf, and the
    // head's own attestation (if it is a bind/recover) immediately before it.
    let head_index = bundle.op_path.leaf_index;
    let mut last: Option<u64> = None;
    for (index, p) in bundle.attestation_paths.iter().enumerate() {
        let order = |reason| BundleError::AttestationOrder { index, reason };
        if last.is_some_and(|l| p.leaf_index <= l) {
            return Err(order("attestation leaves are not in increasing order"));
        }
        if p.leaf_index >= head_index {
            return Err(order(
                "attestation leaf is not before the head operation's leaf",
            ));
        }
        last = Some(p.leaf_index);
    }
    if matches!(head.op, OpKind::Bind | OpKind::Recover) && last.map(|l| l + 1) != Some(head_index)
    {
        return Err(BundleError::AttestationOrder {
            index: bundle.attestations.len().saturating_sub(1),
            reason: "the head operation's attestation is not the leaf right before it",
        });
    }
    let in_log = |path: &LogPath, kind, id: EventId| {
        InclusionProof {
            leaf_index: path.leaf_index,
            tree_size: header.log_size,
            path: path.path.clone(),
        }
        .verify(&leaf_hash(&log_entry(kind, &id)), &header.log_root)
    };
    in_log(&bundle.op_path, LogEntryKind::Binding, head.id())
        .map_err(BundleError::OpLogInclusion)?;
    for (index, (path, event)) in bundle
        .attestation_paths
        .iter()
        .zip(&bundle.attestations)
        .enumerate()
    {
        in_log(path, LogEntryKind::Attestation, event.id)
            .map_err(|source| BundleError::AttestationLogInclusion { index, source })?;
    }

    // 7. State: key(x_uid) → record hash under the header's state root.
    bundle
        .state_proof
        .verify_inclusion(
            &header.state_root,
            &state_key(record.x_uid),
            &record.record_hash(),
        )
        .map_err(BundleError::StateProof)?;

    // 8–12. The header is anchored in a block of the verifier's chain.
    let anchored = verify_anchored(
        header,
        &bundle.anchor_tx,
        bundle.block_height,
        &bundle.merkle_block,
        chain,
        policy,
    )?;

    Ok(VerifiedIdentity {
        x_uid: record.x_uid,
        handle: record.handle,
        key: record.key,
        status: record.status,
        seq: record.seq,
        head: record.head,
        witnesses,
        epoch: *header,
        header_hash: header.hash(),
        anchor_txid: anchored.txid,
        block_hash: anchored.block_hash,
        block_height: anchored.block_height,
        confirmations: anchored.confirmations,
    })
}

/// Where a header's anchor was found (steps 8–12 of §11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Anchored {
    pub txid: Txid,
    pub block_hash: BlockHash,
    pub block_height: u32,
    pub confirmations: u32,
}

/// Checks that `tx` anchors `header`, is in the block of `mb`, that block
/// has valid proof of work and sits at `block_height` on the verifier's
/// chain with enough confirmations. Shared by every bundle kind.
pub(super) fn verify_anchored<C: ChainView + ?Sized>(
    header: &EpochHeader,
    tx: &bitcoin::Transaction,
    block_height: u32,
    mb: &bitcoin::MerkleBlock,
    chain: &C,
    policy: &VerifyPolicy,
) -> Result<Anchored, BundleError> {
    // 8. The header's link field fits its epoch; the anchor transaction commits to the header.
    let rules = NetworkRules::for_network(policy.network);
    let zero_prev = header.prev_header_hash == [0; 32];
    if header.epoch == 0 && !zero_prev {
        return Err(BundleError::HeaderLink(
            "epoch 0 must have an all-zero previous header hash",
        ));
    }
    if header.epoch > 0 && zero_prev {
        return Err(BundleError::HeaderLink(
            "only epoch 0 has an all-zero previous header hash",
        ));
    }
    let stripped = strip_witness(tx);
    if stripped.base_size() == 64 || bitcoin::consensus::serialize(&stripped).len() == 64 {
        return Err(BundleError::SixtyFourByteTransaction);
    }
    if tx.input.is_empty() {
        return Err(BundleError::NoInputs);
    }
    header.verify_anchor(tx).map_err(BundleError::Anchor)?;
    let txid = tx.compute_txid();

    // 9. The transaction is in the block: well-formed partial tree, exactly this txid, root in header.
    let (mut matches, mut indexes) = (Vec::new(), Vec::new());
    mb.extract_matches(&mut matches, &mut indexes)
        .map_err(BundleError::MerkleBlock)?;
    if !padding_is_zero(mb.txn.num_transactions(), mb.txn.bits()) {
        return Err(BundleError::MerkleBlockPadding);
    }
    if matches != [txid] {
        return Err(BundleError::TxNotInBlock);
    }

    // 10. Proof of work: Core's compact decoding, the network's limit, hash ≤ target.
    let block = &mb.header;
    let target = decode_compact(block.bits.to_consensus()).ok_or(BundleError::BadBits)?;
    if target > rules.pow_limit {
        return Err(BundleError::BadBits);
    }
    let block_hash = block.block_hash();
    if hash_as_number(&block_hash) > target {
        return Err(BundleError::ProofOfWork);
    }

    // 11–12. The block is on the verifier's chain, at the claimed height, deep enough.
    let height = chain
        .height_of(&block_hash)?
        .ok_or(BundleError::NotOnChain(block_hash))?;
    if height != block_height {
        return Err(BundleError::HeightMismatch {
            claimed: block_height,
            actual: height,
        });
    }
    let tip = chain.tip_height()?;
    let confirmations = tip.checked_sub(height).map_or(0, |d| d + 1);
    if confirmations < policy.min_confirmations {
        return Err(BundleError::InsufficientConfirmations {
            confirmations,
            required: policy.min_confirmations,
        });
    }

    Ok(Anchored {
        txid,
        block_hash,
        block_height: height,
        confirmations,
    })
}

/// Whether the flag bits the partial tree's traversal did not use are all zero.
/// `extract_matches` tolerates anything in the last byte's padding, which would
/// let one bundle have several encodings.
fn padding_is_zero(num_transactions: u32, bits: &[bool]) -> bool {
    fn walk(
        height: u32,
        pos: u32,
        width: &dyn Fn(u32) -> u32,
        bits: &[bool],
        used: &mut usize,
    ) -> Option<()> {
        let parent = *bits.get(*used)?;
        *used += 1;
        if height > 0 && parent {
            walk(height - 1, pos * 2, width, bits, used)?;
            if pos * 2 + 1 < width(height - 1) {
                walk(height - 1, pos * 2 + 1, width, bits, used)?;
            }
        }
        Some(())
    }
    let n = u64::from(num_transactions);
    let width = move |h: u32| ((n + (1u64 << h) - 1) >> h) as u32;
    let mut height = 0;
    while width(height) > 1 {
        height += 1;
    }
    let mut used = 0;
    walk(height, 0, &width, bits, &mut used).is_some() && bits[used..].iter().all(|b| !b)
}

#[cfg(test)]
mod tests {
    use super::padding_is_zero;

    #[test]
    fn padding_bits_must_be_zero() {
        // Two transactions, the second matched: root(1), left leaf(0), right leaf(1) = 3 bits.
        let mut bits = vec![true, false, true, false, false, false, false, false];
        assert!(padding_is_zero(2, &bits));
        bits[5] = true;
        assert!(!padding_is_zero(2, &bits));
        // A single transaction uses one bit.
        assert!(padding_is_zero(
            1,
            &[true, false, false, false, false, false, false, false]
        ));
        assert!(!padding_is_zero(
            1,
            &[true, true, false, false, false, false, false, false]
        ));
    }
}
