//! Bundles for every kind of history (revoke, re-bind, recovery pending,
//! vetoed and completed) verify to the right status, and a node that commits
//! to a record its operations do not justify is caught. The chain part is an
//! in-memory regtest chain, so these run in milliseconds.

mod bundle_support;

use bitcoin::Network;
use bundle_support::{History, RegistryNode};
use cairn_identity_core::{
    binding::{
        proof_post_op, revoke_op, rotate_op, veto_op, BindingOp, OpContext, PendingRecovery, Status,
    },
    bundle::{
        verify, verify_absence, AbsenceBundle, BundleError, ProofBundle, VerifiedIdentity,
        VerifyPolicy,
    },
    state::state_key,
};
use nostr::Keys;

const UID: u64 = 4242;

fn ctx(epoch: u64, height: u32) -> OpContext {
    OpContext { epoch, height }
}

fn check(
    node: &RegistryNode,
    history: &History,
    epoch: u64,
) -> Result<VerifiedIdentity, BundleError> {
    let (bundle, view) = node.bundle_offline(history, UID, epoch);
    // Round-trip through the wire format on the way, as a verifier would receive it.
    let decoded = ProofBundle::from_bytes(&bundle.to_bytes().unwrap()).unwrap();
    let policy = VerifyPolicy {
        trusted_witnesses: vec![node.witness.public_key()],
        ..VerifyPolicy::new(Network::Regtest)
    };
    verify(&decoded, &view, &policy)
}

fn last(history: &History) -> BindingOp {
    BindingOp::from_event(history.ops.last().unwrap()).unwrap()
}

fn post(recover: bool, keys: &Keys, history: &History, handle: &str, n: u64) -> nostr::Event {
    let (seq, prev) = match history.ops.last() {
        None => (0, None),
        Some(_) => {
            let l = last(history);
            (l.seq + 1, Some(l.id()))
        }
    };
    proof_post_op(
        recover,
        UID,
        seq,
        prev.as_ref(),
        handle,
        7_000 + n,
        &format!("nonce{n:016}"),
    )
    .sign_with_keys(keys)
    .unwrap()
}

#[test]
fn revoke_then_rebind() {
    let mut node = RegistryNode::new();
    let (k1, k2) = (Keys::generate(), Keys::generate());
    let mut h = History::default();
    let e = post(false, &k1, &h, "carol", 1);
    node.accept(&mut h, e, ctx(0, 100));
    let v = check(&node, &h, 0).unwrap();
    assert_eq!(
        (v.status, v.key, v.seq),
        (Status::Bound, Some(k1.public_key()), 0)
    );

    let l = last(&h);
    node.accept(
        &mut h,
        revoke_op(UID, 1, &l.id()).sign_with_keys(&k1).unwrap(),
        ctx(1, 110),
    );
    let v = check(&node, &h, 1).unwrap();
    assert_eq!((v.status, v.key), (Status::Revoked, None));

    // A fresh bind by another key, under a new handle.
    let e = post(false, &k2, &h, "carol2", 2);
    node.accept(&mut h, e, ctx(2, 120));
    let v = check(&node, &h, 2).unwrap();
    assert_eq!(
        (v.status, v.key, v.seq),
        (Status::Bound, Some(k2.public_key()), 2)
    );
    assert_eq!(v.handle, "carol2");
    assert_eq!(v.witnesses.len(), 2);

    // The chain may start at the latest bind: a short bundle for a long history.
    let suffix = History {
        ops: h.ops[2..].to_vec(),
        attestations: h.attestations[1..].to_vec(),
        attestation_indexes: h.attestation_indexes[1..].to_vec(),
        head_index: h.head_index,
    };
    let v = check(&node, &suffix, 2).unwrap();
    assert_eq!(v.key, Some(k2.public_key()));
    // ...but not at an operation that needs the past to be understood.
    let from_revoke = History {
        ops: h.ops[1..].to_vec(),
        attestations: h.attestations[1..].to_vec(),
        attestation_indexes: h.attestation_indexes[1..].to_vec(),
        head_index: h.head_index,
    };
    // (Step 2, *operations*: `ops[0]` must be a bind, §11.3.)
    let err = check(&node, &from_revoke, 2).unwrap_err();
    assert!(
        matches!(err, BundleError::BrokenChain { index: 0, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.step(),
        Some(cairn_identity_core::bundle::Step::Operations)
    );
}

#[test]
fn recovery_pending_vetoed_and_completed() {
    let mut node = RegistryNode::new();
    let (owner, claimant) = (Keys::generate(), Keys::generate());
    let mut h = History::default();
    let e = post(false, &owner, &h, "dave", 1);
    node.accept(&mut h, e, ctx(0, 100));

    // Pending: the old key still rules, the record shows who would take over and when.
    let e = post(true, &claimant, &h, "dave", 2);
    node.accept(&mut h, e, ctx(1, 110));
    let recover_id = last(&h).id();
    let v = check(&node, &h, 1).unwrap();
    assert_eq!(v.key, Some(owner.public_key()));
    assert_eq!(
        v.status,
        Status::RecoveryPending(PendingRecovery {
            recover_id,
            new_key: claimant.public_key(),
            effective_height: 110 + 144,
        })
    );

    // Vetoed by the current key.
    let mut vetoed = h.clone();
    let mut vetoed_node = RegistryNode {
        witness: node.witness.clone(),
        registry: node.registry.clone(),
        log: node.log.clone(),
        state: node.state.clone(),
    };
    let l = last(&vetoed);
    vetoed_node.accept(
        &mut vetoed,
        veto_op(UID, l.seq + 1, &l.id(), &recover_id)
            .sign_with_keys(&owner)
            .unwrap(),
        ctx(2, 120),
    );
    let v = check(&vetoed_node, &vetoed, 2).unwrap();
    assert_eq!((v.status, v.key), (Status::Bound, Some(owner.public_key())));

    // Not vetoed: after the delay the claimant's key takes over without a log entry...
    node.advance(110 + 144);
    let v = check(&node, &h, 2).unwrap();
    assert_eq!(
        (v.status, v.key),
        (Status::Bound, Some(claimant.public_key()))
    );
    // ...and can then rotate; the replay infers the completion from the signer.
    let next = Keys::generate();
    let l = last(&h);
    node.accept(
        &mut h,
        rotate_op(&claimant.public_key(), &next, UID, l.seq + 1, &l.id())
            .sign_with_keys(&claimant)
            .unwrap(),
        ctx(3, 300),
    );
    let v = check(&node, &h, 3).unwrap();
    assert_eq!(
        (v.status, v.key, v.seq),
        (Status::Bound, Some(next.public_key()), 2)
    );
}

#[test]
fn node_cannot_commit_to_an_unjustified_key() {
    let mut node = RegistryNode::new();
    let (alice, mallory) = (Keys::generate(), Keys::generate());
    let mut h = History::default();
    let e = post(false, &alice, &h, "erin", 1);
    node.accept(&mut h, e, ctx(0, 100));

    // A dishonest node puts Mallory's key in the record and commits to it.
    let mut forged = node.identity(UID);
    forged.key = Some(mallory.public_key());
    node.state
        .insert(state_key(UID), forged.record_hash())
        .unwrap();
    let (mut bundle, view) = node.bundle_offline(&h, UID, 0);
    bundle.record = forged.record_bytes();
    let policy = VerifyPolicy::new(Network::Regtest);
    assert!(matches!(
        verify(&bundle, &view, &policy),
        Err(BundleError::RecordMismatch(_))
    ));

    // Or invents a rotation "signed" by Mallory (a valid event, but not by the current key).
    let l = last(&h);
    let rotation = rotate_op(&mallory.public_key(), &Keys::generate(), UID, 1, &l.id())
        .sign_with_keys(&mallory)
        .unwrap();
    let mut fake = h.clone();
    fake.ops.push(rotation);
    let (bundle, view) = node.bundle_offline(&fake, UID, 0);
    assert!(matches!(
        verify(&bundle, &view, &policy),
        Err(BundleError::Transition { index: 1, .. })
    ));
}

/// An absence bundle (§11.5) for an id nobody bound verifies, survives its
/// JSON form, and cannot be turned into one for a bound id or id 0.
#[test]
fn absence_of_an_unbound_id_verifies_and_cannot_be_relabelled() {
    let mut node = RegistryNode::new();
    let mut h = History::default();
    let e = post(false, &Keys::generate(), &h, "carol", 1);
    node.accept(&mut h, e, ctx(0, 100));
    let (bound, view) = node.bundle_offline(&h, UID, 0);
    let unbound = UID + 1;
    let absence = AbsenceBundle {
        x_uid: unbound,
        state_proof: node
            .state
            .prove_at(&bound.epoch_header.state_root, &state_key(unbound))
            .unwrap(),
        epoch_header: bound.epoch_header,
        anchor_tx: bound.anchor_tx.clone(),
        block_height: bound.block_height,
        merkle_block: bound.merkle_block.clone(),
    };
    let policy = VerifyPolicy::new(Network::Regtest);
    let json = serde_json::to_value(&absence).unwrap();
    assert_eq!(json["x_uid"], unbound.to_string());
    let back: AbsenceBundle = serde_json::from_value(json.clone()).unwrap();
    // (Compared in JSON: a decoded partial Merkle tree pads its flag bits to
    // whole bytes, one built in memory does not.)
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    let v = verify_absence(&back, &view, &policy).unwrap();
    assert_eq!(
        (v.x_uid, v.epoch, v.block_height),
        (unbound, bound.epoch_header, bound.block_height)
    );

    let mut relabelled = absence.clone();
    relabelled.x_uid = UID;
    assert!(matches!(
        verify_absence(&relabelled, &view, &policy),
        Err(BundleError::StateProof(_))
    ));
    let mut zero = absence.clone();
    zero.x_uid = 0;
    assert!(matches!(
        verify_absence(&zero, &view, &policy),
        Err(BundleError::Record(_))
    ));
    // The anchor part is checked as for any bundle: another header is not anchored.
    let mut other_header = absence;
    other_header.epoch_header.log_size += 1;
    assert!(matches!(
        verify_absence(&other_header, &view, &policy),
        Err(BundleError::Anchor(_))
    ));
}
