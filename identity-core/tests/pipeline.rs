//! The pure pieces wired together the way a node uses them: accepted operations
//! go into the log and the state tree, an epoch header commits to both, and its
//! anchor script commits to the header. Everything a verifier would check is
//! then checked from the outputs alone.

use bitcoin::{absolute::LockTime, transaction::Version, Amount, Transaction, TxOut};
use cairn_identity_core::{
    binding::{
        log_entry, proof_post_op, rotate_op, BindingOp, LogEntryKind, OpContext, Registry,
        RegistryConfig, WitnessAttestation,
    },
    epoch::{find_anchor, EpochHeader, HEADER_VERSION},
    log::{leaf_hash, verify_consistency, MemoryLogStore, MerkleLog},
    state::{state_key, MemoryStateStore, SparseMerkleTree},
};
use nostr::Keys;

struct Node {
    witness: Keys,
    registry: Registry,
    log: MerkleLog<MemoryLogStore>,
    state: SparseMerkleTree<MemoryStateStore>,
}

impl Node {
    fn new() -> Self {
        Self {
            witness: Keys::generate(),
            registry: Registry::new(RegistryConfig::default()),
            log: MerkleLog::new(MemoryLogStore::new()),
            state: SparseMerkleTree::new(MemoryStateStore::new()),
        }
    }

    /// Accepts a bind/recover with its attestation; returns the op's log index.
    fn accept_attested(&mut self, op: &BindingOp, ctx: OpContext, user: &Keys) -> u64 {
        let att = WitnessAttestation {
            x_uid: op.x_uid,
            handle: op.identity.as_ref().unwrap().handle.clone(),
            post_id: op.identity.as_ref().unwrap().post_id,
            subject: user.public_key(),
            challenge: op.challenge.clone().unwrap(),
            post_text_sha256: [0; 32],
            posted_at: 1,
            fetched_at: 2,
        };
        att.matches(op).unwrap();
        let att_event = att
            .to_event_builder()
            .sign_with_keys(&self.witness)
            .unwrap();
        let applied = self.registry.apply(op, ctx).unwrap();
        self.log
            .append(&log_entry(LogEntryKind::Attestation, &att_event.id))
            .unwrap();
        let index = self.log.append(&op.log_entry()).unwrap();
        self.state
            .insert(state_key(applied.x_uid), applied.record_hash)
            .unwrap();
        index
    }

    fn accept(&mut self, op: &BindingOp, ctx: OpContext) -> u64 {
        let applied = self.registry.apply(op, ctx).unwrap();
        let index = self.log.append(&op.log_entry()).unwrap();
        self.state
            .insert(state_key(applied.x_uid), applied.record_hash)
            .unwrap();
        index
    }

    fn close_epoch(&self, epoch: u64, prev: Option<&EpochHeader>) -> (EpochHeader, Transaction) {
        let header = EpochHeader {
            version: HEADER_VERSION,
            epoch,
            prev_header_hash: prev.map_or([0; 32], EpochHeader::hash),
            log_size: self.log.size().unwrap(),
            log_root: self.log.root().unwrap(),
            state_root: self.state.root(),
        };
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![],
            output: vec![TxOut {
                value: Amount::ZERO,
                script_pubkey: header.anchor_script(),
            }],
        };
        (header, tx)
    }
}

#[test]
fn operations_to_anchor_and_back() {
    let mut node = Node::new();
    let alice = Keys::generate();
    let alice2 = Keys::generate();
    let bob = Keys::generate();

    // Epoch 0: two binds.
    let ctx0 = OpContext {
        epoch: 0,
        height: 100,
    };
    let a_bind = BindingOp::from_event(
        &proof_post_op(false, 11, 0, None, "alice", 500, "challengeAAAAAAAAAAAA")
            .sign_with_keys(&alice)
            .unwrap(),
    )
    .unwrap();
    let a_index = node.accept_attested(&a_bind, ctx0, &alice);
    let b_bind = BindingOp::from_event(
        &proof_post_op(false, 22, 0, None, "bob", 501, "challengeBBBBBBBBBBBB")
            .sign_with_keys(&bob)
            .unwrap(),
    )
    .unwrap();
    node.accept_attested(&b_bind, ctx0, &bob);
    let (h0, _tx0) = node.close_epoch(0, None);

    // Epoch 1: alice rotates.
    let ctx1 = OpContext {
        epoch: 1,
        height: 106,
    };
    let rot = BindingOp::from_event(
        &rotate_op(&alice.public_key(), &alice2, 11, 1, &a_bind.id())
            .sign_with_keys(&alice)
            .unwrap(),
    )
    .unwrap();
    let rot_index = node.accept(&rot, ctx1);
    let (h1, tx1) = node.close_epoch(1, Some(&h0));
    h1.verify_successor_of(&h0).unwrap();

    // A verifier holding only h1 and tx1: the anchor commits to h1 ...
    assert_eq!(find_anchor(&tx1).unwrap().1, h1.hash());
    h1.verify_anchor(&tx1).unwrap();
    assert!(h0.verify_anchor(&tx1).is_err());

    // ... the rotation is in the log at h1's size ...
    let path = node.log.inclusion_proof(rot_index, h1.log_size).unwrap();
    path.verify(&leaf_hash(&rot.log_entry()), &h1.log_root)
        .unwrap();
    // ... and so is alice's original bind, also under the older header.
    let old = node.log.inclusion_proof(a_index, h0.log_size).unwrap();
    old.verify(&leaf_hash(&a_bind.log_entry()), &h0.log_root)
        .unwrap();
    // The log only grew between the two epochs.
    let consistency = node
        .log
        .consistency_proof(h0.log_size, h1.log_size)
        .unwrap();
    verify_consistency(
        h0.log_size,
        h1.log_size,
        &h0.log_root,
        &h1.log_root,
        &consistency,
    )
    .unwrap();

    // State: alice's current record (after rotation) under h1, the old one under h0.
    let record = node.registry.get(11).unwrap().record_hash();
    node.state
        .prove_at(&h1.state_root, &state_key(11))
        .unwrap()
        .verify_inclusion(&h1.state_root, &state_key(11), &record)
        .unwrap();
    let stale = node.state.prove_at(&h0.state_root, &state_key(11)).unwrap();
    assert!(stale
        .verify_inclusion(&h0.state_root, &state_key(11), &record)
        .is_err());
    // Nobody bound x_uid 33.
    node.state
        .prove_at(&h1.state_root, &state_key(33))
        .unwrap()
        .verify_non_inclusion(&h1.state_root, &state_key(33))
        .unwrap();
    assert_eq!(
        node.registry.get(11).unwrap().key,
        Some(alice2.public_key())
    );
}
