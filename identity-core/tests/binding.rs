//! Binding operations: parsing rules, the registry state machine and witness attestations.

use cairn_identity_core::{
    binding::{
        proof_post_op, revoke_op, rotate_op, veto_op, BindingError, BindingOp, IdentityStatus,
        OpContext, OpKind, Registry, RegistryConfig, RegistryError, Status, WitnessAttestation,
    },
    kinds,
    nip01::EventCheckError,
};
use nostr::{Event, EventBuilder, EventId, Keys, Kind, Tag};

const UID: u64 = 1_234_567_890_123;
const CHALLENGE: &str = "c0ffee00c0ffee00c0ffee00";

fn ctx(epoch: u64, height: u32) -> OpContext {
    OpContext { epoch, height }
}

fn sign(builder: EventBuilder, keys: &Keys) -> Event {
    builder.sign_with_keys(keys).expect("signing")
}

fn parse(event: &Event) -> BindingOp {
    BindingOp::from_event(event).expect("valid op")
}

fn bind(keys: &Keys, uid: u64, handle: &str, challenge: &str) -> BindingOp {
    parse(&sign(
        proof_post_op(false, uid, 0, None, handle, 42, challenge),
        keys,
    ))
}

/// An op event built from raw tags, to exercise malformed input.
fn raw<T: AsRef<[S]>, S: AsRef<str>>(keys: &Keys, tags: &[T]) -> Event {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|t| Tag::parse(t.as_ref().iter().map(|s| s.as_ref())).unwrap())
        .collect();
    sign(
        EventBuilder::new(Kind::Custom(kinds::BINDING), "").tags(tags),
        keys,
    )
}

#[test]
fn bind_rotate_revoke_rebind() {
    let alice = Keys::generate();
    let alice2 = Keys::generate();
    let mut reg = Registry::new(RegistryConfig::default());

    let b = bind(&alice, UID, "alice", CHALLENGE);
    assert_eq!(b.op, OpKind::Bind);
    let a0 = reg.apply(&b, ctx(1, 100)).unwrap();
    assert_eq!(reg.get(UID).unwrap().key, Some(alice.public_key()));

    let r = parse(&sign(
        rotate_op(&alice.public_key(), &alice2, UID, 1, &b.id()),
        &alice,
    ));
    assert_eq!(r.new_key, Some(alice2.public_key()));
    let a1 = reg.apply(&r, ctx(2, 106)).unwrap();
    assert_ne!(a0.record_hash, a1.record_hash);
    assert_eq!(reg.get(UID).unwrap().key, Some(alice2.public_key()));

    // The old key lost control.
    let stale = parse(&sign(revoke_op(UID, 2, &r.id()), &alice));
    assert_eq!(
        reg.apply(&stale, ctx(3, 112)),
        Err(RegistryError::WrongSigner(OpKind::Revoke))
    );
    let rev = parse(&sign(revoke_op(UID, 2, &r.id()), &alice2));
    reg.apply(&rev, ctx(3, 112)).unwrap();
    assert!(matches!(reg.status(UID), Some(IdentityStatus::Revoked(_))));
    assert_eq!(reg.get(UID).unwrap().key, None);

    // A new proof post can bind again, continuing the chain.
    let again = parse(&sign(
        proof_post_op(
            false,
            UID,
            3,
            Some(&rev.id()),
            "alice",
            43,
            "fresh0000000000000000",
        ),
        &alice,
    ));
    reg.apply(&again, ctx(4, 118)).unwrap();
    assert_eq!(reg.get(UID).unwrap().status, Status::Bound);
    assert_eq!(reg.get(UID).unwrap().seq, 3);
}

#[test]
fn replays_are_rejected() {
    let alice = Keys::generate();
    let mallory = Keys::generate();
    let mut reg = Registry::new(RegistryConfig::default());
    let b = bind(&alice, UID, "alice", CHALLENGE);
    reg.apply(&b, ctx(1, 100)).unwrap();

    // Same challenge for another account.
    let reuse = bind(&mallory, UID + 1, "mallory", CHALLENGE);
    assert_eq!(
        reg.apply(&reuse, ctx(2, 100)),
        Err(RegistryError::ChallengeReused)
    );
    // Replaying the bind itself.
    assert!(reg.apply(&b, ctx(2, 100)).is_err());

    // A second op in the same epoch.
    let rev = parse(&sign(revoke_op(UID, 1, &b.id()), &alice));
    assert_eq!(
        reg.apply(&rev, ctx(1, 101)),
        Err(RegistryError::OnePerEpoch {
            x_uid: UID,
            epoch: 1
        })
    );
    // Old seq and stale prev.
    let wrong_seq = parse(&sign(revoke_op(UID, 5, &b.id()), &alice));
    assert_eq!(
        reg.apply(&wrong_seq, ctx(2, 101)),
        Err(RegistryError::WrongSeq {
            expected: 1,
            got: 5
        })
    );
    let stale_prev = parse(&sign(
        revoke_op(UID, 1, &EventId::from_byte_array([7; 32])),
        &alice,
    ));
    assert_eq!(
        reg.apply(&stale_prev, ctx(2, 101)),
        Err(RegistryError::StalePrev)
    );
    // Nothing above changed the record.
    assert_eq!(reg.get(UID).unwrap().head, b.id());
    reg.apply(&rev, ctx(2, 101)).unwrap();
}

#[test]
fn first_op_must_be_a_bind_at_seq_zero() {
    let alice = Keys::generate();
    let reg = Registry::new(RegistryConfig::default());
    let rev = parse(&sign(
        revoke_op(UID, 1, &EventId::from_byte_array([1; 32])),
        &alice,
    ));
    assert_eq!(
        reg.check(&rev, ctx(1, 1)),
        Err(RegistryError::UnknownIdentity(UID))
    );
    let late_bind = parse(&sign(
        proof_post_op(
            false,
            UID,
            3,
            Some(&EventId::from_byte_array([1; 32])),
            "alice",
            1,
            CHALLENGE,
        ),
        &alice,
    ));
    assert_eq!(
        reg.check(&late_bind, ctx(1, 1)),
        Err(RegistryError::WrongSeq {
            expected: 0,
            got: 3
        })
    );
    // Binding an already bound id needs rotate or recover instead.
    let mut reg = reg;
    let b = bind(&alice, UID, "alice", CHALLENGE);
    reg.apply(&b, ctx(1, 1)).unwrap();
    let rebind = parse(&sign(
        proof_post_op(
            false,
            UID,
            1,
            Some(&b.id()),
            "alice",
            2,
            "another0000000000000",
        ),
        &Keys::generate(),
    ));
    assert!(matches!(
        reg.check(&rebind, ctx(2, 2)),
        Err(RegistryError::WrongStatus { .. })
    ));
}

#[test]
fn recovery_with_veto_and_without() {
    let old = Keys::generate();
    let new = Keys::generate();
    let delay = 144;
    let mut reg = Registry::new(RegistryConfig {
        recovery_delay_blocks: delay,
    });
    let b = bind(&old, UID, "alice", CHALLENGE);
    reg.apply(&b, ctx(1, 1000)).unwrap();

    // The current key cannot "recover" to itself.
    let self_recover = parse(&sign(
        proof_post_op(
            true,
            UID,
            1,
            Some(&b.id()),
            "alice",
            50,
            "recover0000000000001",
        ),
        &old,
    ));
    assert_eq!(
        reg.check(&self_recover, ctx(2, 1006)),
        Err(RegistryError::RecoverToCurrentKey)
    );

    // Recovery, then veto inside the window: the old key stays.
    let rec = parse(&sign(
        proof_post_op(
            true,
            UID,
            1,
            Some(&b.id()),
            "alice",
            51,
            "recover0000000000002",
        ),
        &new,
    ));
    reg.apply(&rec, ctx(2, 1006)).unwrap();
    let Status::RecoveryPending(p) = reg.get(UID).unwrap().status else {
        panic!("recovery should be pending");
    };
    assert_eq!(p.effective_height, 1006 + delay);
    assert_eq!(reg.get(UID).unwrap().key, Some(old.public_key()));

    let wrong_target = parse(&sign(
        veto_op(UID, 2, &rec.id(), &EventId::from_byte_array([9; 32])),
        &old,
    ));
    assert_eq!(
        reg.check(&wrong_target, ctx(3, 1010)),
        Err(RegistryError::VetoTargetMismatch)
    );
    let by_attacker = parse(&sign(veto_op(UID, 2, &rec.id(), &rec.id()), &new));
    assert_eq!(
        reg.check(&by_attacker, ctx(3, 1010)),
        Err(RegistryError::WrongSigner(OpKind::Veto))
    );
    let late = parse(&sign(veto_op(UID, 2, &rec.id(), &rec.id()), &old));
    assert_eq!(
        reg.check(&late, ctx(3, 1006 + delay)),
        Err(RegistryError::VetoTooLate(1006 + delay))
    );
    reg.apply(&late, ctx(3, 1010)).unwrap();
    assert!(
        reg.advance(5000).is_empty(),
        "vetoed recovery must not complete"
    );
    assert_eq!(reg.get(UID).unwrap().key, Some(old.public_key()));
    assert_eq!(reg.get(UID).unwrap().status, Status::Bound);

    // Recovery without veto: takes effect exactly at the effective height.
    let rec2 = parse(&sign(
        proof_post_op(
            true,
            UID,
            3,
            Some(&late.id()),
            "alice",
            52,
            "recover0000000000003",
        ),
        &new,
    ));
    reg.apply(&rec2, ctx(4, 2000)).unwrap();
    assert!(reg.advance(2000 + delay - 1).is_empty());
    let done = reg.advance(2000 + delay);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].x_uid, UID);
    assert_eq!(done[0].record_hash, reg.get(UID).unwrap().record_hash());
    assert_eq!(reg.get(UID).unwrap().key, Some(new.public_key()));
}

#[test]
fn handle_moved_to_another_id() {
    let a = Keys::generate();
    let b = Keys::generate();
    let mut reg = Registry::new(RegistryConfig::default());
    reg.apply(&bind(&a, 1, "alice", "aaaaaaaaaaaaaaaaaaaa"), ctx(1, 1))
        .unwrap();
    assert!(matches!(reg.status(1), Some(IdentityStatus::Bound(_))));
    // Account 1 renamed itself; account 2 took "alice" and proved it.
    reg.apply(&bind(&b, 2, "alice", "bbbbbbbbbbbbbbbbbbbb"), ctx(1, 1))
        .unwrap();
    assert_eq!(
        reg.status(1),
        Some(IdentityStatus::Moved {
            identity: reg.get(1).unwrap(),
            now: 2
        })
    );
    assert_eq!(reg.resolve_handle("@Alice").unwrap().x_uid, 2);
    assert!(matches!(reg.status(2), Some(IdentityStatus::Bound(_))));
}

#[test]
fn malformed_events_are_rejected() {
    let k = Keys::generate();
    let ok: Vec<Vec<String>> = [
        vec!["op", "bind"],
        vec!["x_uid", "123"],
        vec!["seq", "0"],
        vec!["prev", ""],
        vec!["i", "twitter:alice", "42"],
        vec!["challenge", CHALLENGE],
    ]
    .into_iter()
    .map(|t| t.into_iter().map(String::from).collect())
    .collect();
    BindingOp::from_event(&raw(&k, &ok)).unwrap();

    let with = |f: &dyn Fn(&mut Vec<Vec<String>>)| {
        let mut t = ok.clone();
        f(&mut t);
        BindingOp::from_event(&raw(&k, &t))
    };
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        with(&|t| {
            t.remove(5);
        }),
        Err(BindingError::MissingTag("challenge"))
    );
    assert_eq!(
        with(&|t| t.push(v(&["x_uid", "124"]))),
        Err(BindingError::DuplicateTag("x_uid"))
    );
    assert_eq!(
        with(&|t| t.push(v(&["new_key", "00"]))),
        Err(BindingError::UnexpectedTag {
            tag: "new_key",
            op: OpKind::Bind
        })
    );
    for bad_uid in ["0123", "-1", "", "12a", "0", "99999999999999999999"] {
        assert!(
            with(&|t| t[1] = v(&["x_uid", bad_uid])).is_err(),
            "{bad_uid}"
        );
    }
    for bad_handle in [
        "twitter:Alice",
        "twitter:",
        "github:alice",
        "twitter:al ice",
        "twitter:abcdefghijklmnop",
    ] {
        assert!(
            with(&|t| t[4] = v(&["i", bad_handle, "42"])).is_err(),
            "{bad_handle}"
        );
    }
    assert!(with(&|t| t[4] = v(&["i", "twitter:alice"])).is_err());
    assert!(with(&|t| t[5] = v(&["challenge", "short"])).is_err());
    assert!(with(&|t| t[5] = v(&["challenge", "has spaces in it 123"])).is_err());
    assert!(
        with(&|t| t[2] = v(&["seq", "1"])).is_err(),
        "seq 1 needs prev"
    );
    assert!(with(&|t| t[0] = v(&["op", "steal"])).is_err());
    // Unrelated tags are tolerated.
    with(&|t| t.push(v(&["alt", "Cairn identity binding"]))).unwrap();

    // Wrong kind and a tampered event.
    let note = sign(EventBuilder::text_note("hi"), &k);
    assert_eq!(
        BindingOp::from_event(&note),
        Err(BindingError::WrongKind(1))
    );
    let mut tampered = raw(&k, &ok);
    tampered.content = "changed".into();
    assert_eq!(
        BindingOp::from_event(&tampered),
        Err(BindingError::Event(EventCheckError::Id))
    );
}

#[test]
fn rotation_needs_a_valid_signature_by_the_new_key() {
    let current = Keys::generate();
    let new = Keys::generate();
    let prev = EventId::from_byte_array([3; 32]);
    parse(&sign(
        rotate_op(&current.public_key(), &new, UID, 4, &prev),
        &current,
    ));

    // A new-key signature made for another seq does not transfer.
    let other = sign(
        rotate_op(&current.public_key(), &new, UID, 5, &prev),
        &current,
    );
    let sig = other
        .tags
        .iter()
        .find(|t| t.as_slice()[0] == "new_key_sig")
        .unwrap()
        .as_slice()[1]
        .clone();
    let seq4 = [
        ["op", "rotate"],
        ["x_uid", &UID.to_string()],
        ["seq", "4"],
        ["prev", &prev.to_hex()],
        ["new_key", &new.public_key().to_hex()],
        ["new_key_sig", &sig],
    ];
    assert_eq!(
        BindingOp::from_event(&raw(&current, &seq4)),
        Err(BindingError::BadNewKeySignature)
    );

    // Rotating to the signing key itself is meaningless.
    let same = sign(
        rotate_op(&current.public_key(), &current, UID, 4, &prev),
        &current,
    );
    assert_eq!(BindingOp::from_event(&same), Err(BindingError::SameKey));
}

/// Event-level rules added for issue 16; each was accepted before.
#[test]
fn only_a_bind_has_seq_zero_and_post_ids_are_non_zero() {
    let k = Keys::generate();
    let mut tags: Vec<Vec<&str>> = vec![
        vec!["op", "revoke"],
        vec!["x_uid", "1234"],
        vec!["seq", "0"],
        vec!["prev", ""],
    ];
    assert_eq!(
        BindingOp::from_event(&raw(&k, &tags)),
        Err(BindingError::InvalidTag {
            tag: "seq",
            reason: "only a bind can have seq 0"
        })
    );
    tags[0] = vec!["op", "bind"];
    tags.push(vec!["i", "twitter:alice", "0"]);
    tags.push(vec!["challenge", CHALLENGE]);
    assert_eq!(
        BindingOp::from_event(&raw(&k, &tags)),
        Err(BindingError::InvalidTag {
            tag: "i",
            reason: "post id must be non-zero"
        })
    );
    tags[4] = vec!["i", "twitter:alice", "1"];
    BindingOp::from_event(&raw(&k, &tags)).unwrap();
    // A control character without a NIP-01 escape makes any protocol event invalid.
    let tag_list: Vec<Tag> = tags
        .iter()
        .map(|t| Tag::parse(t.clone()).unwrap())
        .collect();
    let bell = sign(
        EventBuilder::new(Kind::Custom(kinds::BINDING), "bell\u{7}").tags(tag_list),
        &k,
    );
    assert_eq!(
        BindingOp::from_event(&bell),
        Err(BindingError::Event(EventCheckError::ControlCharacter))
    );
}

#[test]
fn attestations_carry_exactly_their_tags_and_no_content() {
    let node = Keys::generate();
    let att = WitnessAttestation {
        x_uid: UID,
        handle: "alice".into(),
        post_id: 42,
        subject: Keys::generate().public_key(),
        challenge: CHALLENGE.into(),
        post_text_sha256: [5; 32],
        posted_at: 1_700_000_000,
        fetched_at: 1_700_000_060,
    };
    let good = sign(att.to_event_builder(), &node);
    WitnessAttestation::from_event(&good).unwrap();
    let with_alt = sign(
        att.to_event_builder()
            .tag(Tag::parse(["alt", "witness attestation"]).unwrap()),
        &node,
    );
    assert_eq!(
        WitnessAttestation::from_event(&with_alt),
        Err(BindingError::ExtraAttestationTag("alt".into()))
    );
    let with_content = sign(
        EventBuilder::new(Kind::Custom(kinds::WITNESS_ATTESTATION), "hello")
            .tags(good.tags.iter().cloned()),
        &node,
    );
    assert_eq!(
        WitnessAttestation::from_event(&with_content),
        Err(BindingError::AttestationContent)
    );
    let zero = WitnessAttestation { x_uid: 0, ..att };
    assert!(matches!(
        WitnessAttestation::from_event(&sign(zero.to_event_builder(), &node)),
        Err(BindingError::InvalidTag { tag: "x_uid", .. })
    ));
}

#[test]
fn attestation_round_trip_and_matching() {
    let node = Keys::generate();
    let alice = Keys::generate();
    let att = WitnessAttestation {
        x_uid: UID,
        handle: "alice".into(),
        post_id: 42,
        subject: alice.public_key(),
        challenge: CHALLENGE.into(),
        post_text_sha256: [5; 32],
        posted_at: 1_700_000_000,
        fetched_at: 1_700_000_060,
    };
    let event = sign(att.to_event_builder(), &node);
    assert_eq!(event.kind.as_u16(), kinds::WITNESS_ATTESTATION);
    let (parsed, witness) = WitnessAttestation::from_event(&event).unwrap();
    assert_eq!(parsed, att);
    assert_eq!(witness, node.public_key());

    let mut tampered = event.clone();
    tampered.created_at = nostr::Timestamp::from(1);
    assert_eq!(
        WitnessAttestation::from_event(&tampered),
        Err(BindingError::Event(EventCheckError::Id))
    );

    let op = bind(&alice, UID, "alice", CHALLENGE);
    att.matches(&op).unwrap();
    let by_other_key = bind(&Keys::generate(), UID, "alice", CHALLENGE);
    assert!(att.matches(&by_other_key).is_err());
    let other_post = parse(&sign(
        proof_post_op(false, UID, 0, None, "alice", 43, CHALLENGE),
        &alice,
    ));
    assert!(att.matches(&other_post).is_err());
    let other_challenge = bind(&alice, UID, "alice", "ffffffffffffffffffff");
    assert!(att.matches(&other_challenge).is_err());
    let other_uid = bind(&alice, UID + 1, "alice", CHALLENGE);
    assert!(att.matches(&other_uid).is_err());
}

mod state_machine {
    use cairn_identity_core::binding::Status;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Random (mostly plausible) operation sequences: a refused operation never
        /// changes anything, `check` agrees with `apply`, and the record stays coherent.
        #[test]
        fn refused_operations_change_nothing(
            steps in prop::collection::vec(
                (0u8..5, 0usize..3, -1i64..=1, any::<bool>(), any::<bool>(), 0u32..100),
                1..40,
            ),
        ) {
            let keys: Vec<Keys> = (0..3).map(|_| Keys::generate()).collect();
            let mut reg = Registry::new(RegistryConfig { recovery_delay_blocks: 50 });
            let (mut epoch, mut height) = (0u64, 1000u32);
            for (n, (op, signer, seq_delta, prev_ok, next_epoch, blocks)) in steps.into_iter().enumerate() {
                epoch += next_epoch as u64;
                height += blocks;
                reg.advance(height);
                let before = reg.get(UID).cloned();
                let (next_seq, head) = match &before {
                    Some(r) => (r.seq + 1, Some(r.head)),
                    None => (0, None),
                };
                let seq = (next_seq as i64 + seq_delta).max(0) as u64;
                let prev = if seq == 0 {
                    None
                } else if prev_ok && head.is_some() {
                    head
                } else {
                    Some(EventId::from_byte_array([n as u8; 32]))
                };
                if seq == 0 && op != 0 {
                    // Only a bind may have seq 0 (§4): anything else is not a well-formed event.
                    continue;
                }
                let k = &keys[signer];
                let challenge = format!("challenge{n:011}");
                let builder = match op {
                    0 | 3 => proof_post_op(op == 3, UID, seq, prev.as_ref(), "alice", n as u64 + 1, &challenge),
                    1 => match &prev {
                        Some(p) => rotate_op(&k.public_key(), &keys[(signer + 1) % 3], UID, seq, p),
                        None => continue,
                    },
                    2 => match &prev {
                        Some(p) => revoke_op(UID, seq, p),
                        None => continue,
                    },
                    _ => {
                        let target = match before.as_ref().map(|r| r.status) {
                            Some(Status::RecoveryPending(p)) => p.recover_id,
                            _ => EventId::from_byte_array([0xee; 32]),
                        };
                        match &prev {
                            Some(p) => veto_op(UID, seq, p, &target),
                            None => continue,
                        }
                    }
                };
                let parsed = BindingOp::from_event(&sign(builder, k)).expect("builders emit valid events");
                let ctx = ctx(epoch, height);
                let checked = reg.check(&parsed, ctx);
                let applied = reg.apply(&parsed, ctx);
                prop_assert_eq!(checked.is_ok(), applied.is_ok());
                let after = reg.get(UID).cloned();
                match applied {
                    Err(_) => prop_assert_eq!(&after, &before),
                    Ok(a) => {
                        let r = after.expect("accepted op leaves a record");
                        prop_assert_eq!(r.seq, parsed.seq);
                        prop_assert_eq!(r.head, parsed.id());
                        prop_assert_eq!(r.last_epoch, epoch);
                        prop_assert_eq!(a.record_hash, r.record_hash());
                    }
                }
                if let Some(r) = reg.get(UID) {
                    prop_assert_eq!(r.key.is_none(), r.status == Status::Revoked);
                }
            }
        }
    }
}
