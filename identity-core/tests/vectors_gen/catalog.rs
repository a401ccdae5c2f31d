//! The list of vectors: valid histories and chains, then one invalid bundle per rule.

use bitcoin::{hashes::Hash as _, Amount, Network, ScriptBuf, TxOut};
use cairn_identity_core::{
    binding::{Identity, PendingRecovery, Status},
    bundle::ProofBundle,
    hash::sha256,
    kinds,
    nip01::MAX_SAFE_INTEGER,
};
use nostr::{Event, EventId, Keys};
use serde_json::{json, Value};

use super::*;

pub enum Form {
    Binary,
    Json,
}

pub struct Policy {
    pub network: Network,
    pub min_confirmations: u32,
    pub trusted: Vec<String>,
}

impl Policy {
    fn of(network: Network) -> Self {
        Self {
            network,
            min_confirmations: 6,
            trusted: vec![],
        }
    }
}

#[derive(Default)]
pub struct Catalog {
    pub files: Files,
    pub vectors: Vec<Value>,
    pub headers: Vec<Value>,
}

fn net(n: Network) -> &'static str {
    match n {
        Network::Bitcoin => "bitcoin",
        Network::Testnet => "testnet",
        Network::Testnet4 => "testnet4",
        Network::Signet => "signet",
        Network::Regtest => "regtest",
    }
}

impl Catalog {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        name: &str,
        description: &str,
        kind: &str,
        form: Form,
        bundle: Vec<u8>,
        headers: (Vec<u8>, Network, Option<(u32, bitcoin::BlockHash)>),
        policy: Policy,
        expect: Result<Value, (&str, &str)>,
    ) {
        let ext = match form {
            Form::Binary => "bin",
            Form::Json => "json",
        };
        let bundle_path = format!("bundles/{name}.{ext}");
        let headers_path = format!("headers/{name}.headers");
        self.files.insert(bundle_path.clone(), bundle);
        self.files.insert(headers_path.clone(), headers.0);
        let mut v = json!({
            "name": name,
            "description": description,
            "type": kind,
            "form": match form { Form::Binary => "binary", Form::Json => "json" },
            "bundle": bundle_path,
            "headers": {
                "file": headers_path,
                "network": net(headers.1),
                "checkpoint": headers.2.map(|(h, hash)| json!({"height": h, "hash": hash.to_string()})),
            },
            "policy": {
                "network": net(policy.network),
                "min_confirmations": policy.min_confirmations,
                "trusted_witnesses": policy.trusted,
            },
        });
        match expect {
            Ok(result) => {
                v["expect"] = json!("valid");
                v["result"] = result;
            }
            Err((step, rule)) => {
                v["expect"] = json!("invalid");
                v["step"] = json!(step);
                v["rule"] = json!(rule);
            }
        }
        self.vectors.push(v);
    }

    fn proof(
        &mut self,
        name: &str,
        description: &str,
        b: &Built,
        form: Form,
        policy: Policy,
        expect: Result<Value, (&str, &str)>,
    ) {
        let bytes = match form {
            Form::Binary => b.bundle.to_bytes().unwrap(),
            Form::Json => serde_json::to_vec_pretty(&b.bundle).unwrap(),
        };
        self.add(
            name,
            description,
            "proof",
            form,
            bytes,
            (b.headers.clone(), b.network, Some(b.checkpoint)),
            policy,
            expect,
        );
    }

    fn valid(&mut self, name: &str, description: &str, b: &Built, identity: &Identity) {
        self.proof(
            name,
            description,
            b,
            Form::Binary,
            Policy::of(b.network),
            Ok(expected(identity, 6)),
        );
    }

    fn invalid(&mut self, name: &str, description: &str, b: &Built, step: &str, rule: &str) {
        self.proof(
            name,
            description,
            b,
            Form::Binary,
            Policy::of(b.network),
            Err((step, rule)),
        );
    }

    fn headers_file(
        &mut self,
        name: &str,
        description: &str,
        bytes: Vec<u8>,
        network: Network,
        checkpoint: Option<(u32, bitcoin::BlockHash)>,
        expect: Result<u32, &str>,
    ) {
        let path = format!("headers/{name}.headers");
        self.files.insert(path.clone(), bytes);
        let mut v = json!({
            "name": name,
            "description": description,
            "file": path,
            "network": net(network),
            "checkpoint": checkpoint.map(|(h, hash)| json!({"height": h, "hash": hash.to_string()})),
        });
        match expect {
            Ok(tip) => {
                v["expect"] = json!("valid");
                v["tip_height"] = json!(tip);
            }
            Err(rule) => {
                v["expect"] = json!("invalid");
                v["rule"] = json!(rule);
            }
        }
        self.headers.push(v);
    }
}

fn alice() -> Keys {
    key("alice")
}
fn alice2() -> Keys {
    key("alice-2")
}
fn thief() -> Keys {
    key("recoverer")
}

const HANDLE: &str = "alice_01";

fn bind_history() -> History {
    let mut h = History::default();
    h.push(proof_op(&alice(), false, 0, None, HANDLE, 1_800_000_000_000_000_001).sign());
    h
}

fn built(h: &History, identity: &Identity) -> Built {
    build(Parts::new(h.clone(), identity.clone()))
}

/// A bundle with `ops` replaced: the defect ops are signed but not accepted by the registry,
/// so the record is given.
fn with(h: History, identity: Identity, f: impl FnOnce(&mut Parts)) -> Built {
    let mut p = Parts::new(h, identity);
    f(&mut p);
    build(p)
}

fn last_id(h: &History) -> EventId {
    h.ops.last().unwrap().id
}

fn rebuilt_bytes(b: &Built, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = b.bundle.to_bytes().unwrap();
    f(&mut bytes);
    bytes
}

pub fn all() -> Catalog {
    let mut c = Catalog::default();
    valid_vectors(&mut c);
    decode_vectors(&mut c);
    event_vectors(&mut c);
    history_vectors(&mut c);
    anchor_vectors(&mut c);
    chain_vectors(&mut c);
    headers_files(&mut c);
    c
}

fn valid_vectors(c: &mut Catalog) {
    // bind, state depth 0, 2-transaction block.
    let h = bind_history();
    let id = h.registry_record(None);
    c.valid(
        "valid-bind",
        "one bind; the state tree holds only this record (proof depth 0); 2-transaction block",
        &built(&h, &id),
        &id,
    );
    c.proof(
        "valid-bind-json",
        "valid-bind in the JSON form",
        &built(&h, &id),
        Form::Json,
        Policy::of(Network::Regtest),
        Ok(expected(&id, 6)),
    );

    // bind in a populated tree and log, many transactions.
    let b = with(h.clone(), id.clone(), |p| {
        p.filler = 1500;
        p.chain = ChainSpec::regtest(2500);
    });
    assert!(b.bundle.state_proof.siblings.len() >= 8);
    c.valid("valid-bind-deep-state-2500-tx", "one bind among 1,500 other records (state proof depth > 0, log of 3,002 leaves); anchor in a 2,500-transaction block", &b, &id);

    // Odd widths: 3 transactions with the anchor last (Core duplicates it), 5 and 1.
    for (txs, pos, name) in [
        (3, 2, "valid-block-3-tx-anchor-last"),
        (3, 1, "valid-block-3-tx-anchor-middle"),
        (5, 4, "valid-block-5-tx-anchor-last"),
        (1, 0, "valid-block-1-tx"),
    ] {
        let b = with(h.clone(), id.clone(), |p| {
            p.chain = ChainSpec {
                position: pos,
                ..ChainSpec::regtest(txs)
            };
        });
        c.valid(name, "odd-width Merkle levels: the last node of an odd level is paired with itself (Bitcoin Core's rule), which is not an identical-sibling defect", &b, &id);
    }

    // rotate
    let mut hr = bind_history();
    let p = last_id(&hr);
    hr.push(rotate(&alice(), &alice2(), 1, &p).sign());
    let idr = hr.registry_record(None);
    c.valid(
        "valid-bind-rotate",
        "bind then rotate to a new key",
        &built(&hr, &idr),
        &idr,
    );
    c.proof(
        "valid-bind-rotate-json",
        "valid-bind-rotate in the JSON form",
        &built(&hr, &idr),
        Form::Json,
        Policy::of(Network::Regtest),
        Ok(expected(&idr, 6)),
    );

    // rotate, revoke
    let mut hv = hr.clone();
    let p = last_id(&hv);
    hv.push(simple(&alice2(), "revoke", 2, &p).sign());
    let idv = hv.registry_record(None);
    c.valid(
        "valid-bind-rotate-revoke",
        "bind, rotate, revoke: a revoked record with no key",
        &built(&hv, &idv),
        &idv,
    );

    // revoke then bind again, full chain and suffix from the later bind.
    let mut hb = hv.clone();
    let p = last_id(&hb);
    hb.push(
        proof_op(
            &alice(),
            false,
            3,
            Some(&p),
            "alice_new",
            1_800_000_000_000_000_003,
        )
        .sign(),
    );
    let idb = hb.registry_record(None);
    c.valid(
        "valid-revoke-rebind",
        "bind, rotate, revoke, bind again (new handle): the whole chain from seq 0",
        &built(&hb, &idb),
        &idb,
    );
    let suffix = History {
        ops: hb.ops[3..].to_vec(),
        atts: hb.atts[1..].to_vec(),
    };
    c.valid(
        "valid-rebind-suffix",
        "the same record proved by the chain from the later bind only (§11.1)",
        &built(&suffix, &idb),
        &idb,
    );

    // recover pending, completed, vetoed, completed then rotated by the recovered key.
    let mut hp = bind_history();
    let p = last_id(&hp);
    hp.push(
        proof_op(
            &thief(),
            true,
            1,
            Some(&p),
            HANDLE,
            1_800_000_000_000_000_002,
        )
        .sign(),
    );
    let idp = hp.registry_record(None);
    assert!(matches!(idp.status, Status::RecoveryPending(_)));
    c.valid(
        "valid-recover-pending",
        "bind then recover by another key: recovery pending",
        &built(&hp, &idp),
        &idp,
    );
    let idc = hp.registry_record(Some(HEIGHT + 10_000));
    assert_eq!(idc.status, Status::Bound);
    c.valid("valid-recover-completed", "the recovery's delay passed: the record is bound to the recovering key with no further operation", &built(&hp, &idc), &idc);
    let mut hveto = hp.clone();
    let rec = last_id(&hveto);
    hveto.push(veto(&alice(), 2, &rec, &rec).sign());
    let idveto = hveto.registry_record(None);
    c.valid(
        "valid-recover-veto",
        "bind, recover, veto by the current key: bound to the original key",
        &built(&hveto, &idveto),
        &idveto,
    );
    let mut hcr = hp.clone();
    let p = last_id(&hcr);
    let mut reg_ops = hcr.clone();
    reg_ops.push(rotate(&thief(), &alice2(), 2, &p).sign());
    hcr = reg_ops;
    let idcr = {
        // Registry: complete the recovery before the rotation.
        let mut reg = cairn_identity_core::binding::Registry::new(Default::default());
        for (i, e) in hcr.ops.iter().enumerate() {
            if i == 2 {
                reg.advance(HEIGHT + 10_000);
            }
            let op = cairn_identity_core::binding::BindingOp::from_event(e).unwrap();
            reg.apply(
                &op,
                cairn_identity_core::binding::OpContext {
                    epoch: i as u64,
                    height: if i == 2 {
                        HEIGHT + 10_000
                    } else {
                        HEIGHT - 1000 + i as u32
                    },
                },
            )
            .unwrap();
        }
        reg.get(UID).unwrap().clone()
    };
    c.valid("valid-recover-completed-then-rotate", "recover, delay passed, then a rotate signed by the recovered key (the replay completes the recovery first)", &built(&hcr, &idcr), &idcr);

    // Unicode and the control characters NIP-01 escapes, in content and an extra tag.
    let mut s = proof_op(&alice(), false, 0, None, HANDLE, 1_800_000_000_000_000_001);
    let text = "héllo wörld — 中文 🙂 \"quoted\" back\\slash tab\there\nnewline\rcr \u{8}bs \u{c}ff del\u{7f} nel\u{85} ls\u{2028} bom\u{feff} /slash";
    s.content = text.to_owned();
    s.tags.push(vec!["alt".into(), text.to_owned()]);
    s.tags.push(vec!["alt".into()]);
    let mut hu = History::default();
    hu.push(s.sign());
    let idu = hu.registry_record(None);
    c.valid("valid-unicode-content-and-tags", "non-ASCII text and every control character NIP-01 escapes (\\b \\t \\n \\f \\r) plus DEL, U+0085, U+2028, U+FEFF in the content and an extra `alt` tag; extra tags (also a one-element one) are ignored", &built(&hu, &idu), &idu);
    c.proof(
        "valid-unicode-json",
        "valid-unicode-content-and-tags in the JSON form",
        &built(&hu, &idu),
        Form::Json,
        Policy::of(Network::Regtest),
        Ok(expected(&idu, 6)),
    );

    // created_at at the limit, large numbers.
    let mut s = proof_op(&alice(), false, 0, None, HANDLE, u64::MAX);
    s.created_at = MAX_SAFE_INTEGER;
    let mut hl = History::default();
    hl.push(s.sign());
    let idl = hl.registry_record(None);
    c.valid(
        "valid-created-at-2^53-1",
        "created_at = 2^53 - 1 (the largest allowed) and post id = 2^64 - 1",
        &built(&hl, &idl),
        &idl,
    );

    // A later epoch links to its predecessor.
    let b = with(h.clone(), id.clone(), |p| {
        p.epoch = 7;
        p.prev_header_hash = sha256(b"epoch 6");
    });
    c.valid(
        "valid-epoch-7",
        "a header of epoch 7 (non-zero previous header hash)",
        &b,
        &id,
    );

    // Trusted witness named in the policy.
    let b = built(&h, &id);
    c.proof(
        "valid-trusted-witness",
        "the policy names the witness key",
        &b,
        Form::Binary,
        Policy {
            trusted: vec![witness().public_key().to_hex()],
            ..Policy::of(Network::Regtest)
        },
        Ok(expected(&id, 6)),
    );

    // Signet: a block mined at the signet limit, two confirmations.
    let b = with(h.clone(), id.clone(), |p| {
        p.chain = ChainSpec {
            network: Network::Signet,
            bits: 0x1e03_77ae,
            block_txs: 3,
            position: 1,
            confirmations_after: 1,
        };
    });
    c.proof("valid-signet", "anchor in a block mined at signet's proof-of-work limit (bits 0x1e0377ae), 2 confirmations required", &b, Form::Binary, Policy { min_confirmations: 2, ..Policy::of(Network::Signet) }, Ok(expected(&id, 2)));

    // Absence: empty terminal and another key's leaf.
    for (name, filler, desc) in [
        (
            "valid-absence-empty-tree",
            0,
            "absence in an empty state tree (empty terminal, depth 0)",
        ),
        (
            "valid-absence-other-leaf",
            1,
            "absence shown by another key's leaf",
        ),
        (
            "valid-absence-deep",
            300,
            "absence in a tree of 300 records (depth > 0)",
        ),
    ] {
        let (a, headers, cp) = build_absence(UID, filler);
        c.add(
            name,
            desc,
            "absence",
            Form::Json,
            serde_json::to_vec_pretty(&a).unwrap(),
            (headers, Network::Regtest, Some(cp)),
            Policy::of(Network::Regtest),
            Ok(json!({"x_uid": UID.to_string(), "confirmations": 6})),
        );
    }
}

fn decode_vectors(c: &mut Catalog) {
    let h = bind_history();
    let id = h.registry_record(None);
    let b = built(&h, &id);
    let hdr = (b.headers.clone(), b.network, Some(b.checkpoint));
    let bad = |c: &mut Catalog, name: &str, desc: &str, bytes: Vec<u8>, rule: &str| {
        c.add(
            name,
            desc,
            "proof",
            Form::Binary,
            bytes,
            hdr.clone(),
            Policy::of(Network::Regtest),
            Err(("decode", rule)),
        );
    };
    bad(
        c,
        "decode-bad-magic",
        "magic CRNQ",
        rebuilt_bytes(&b, |x| x[3] = b'Q'),
        "magic is CRNP",
    );
    bad(
        c,
        "decode-version-2",
        "bundle version 2",
        rebuilt_bytes(&b, |x| x[4] = 2),
        "bundle version is 1",
    );
    bad(
        c,
        "decode-trailing-byte",
        "one byte after the Merkle block",
        rebuilt_bytes(&b, |x| x.push(0)),
        "no trailing bytes",
    );
    bad(
        c,
        "decode-truncated",
        "last byte missing",
        rebuilt_bytes(&b, |x| {
            x.pop();
        }),
        "no truncation",
    );
    // Header version 1 (withdrawn): patch the header's version byte.
    let hv1 = rebuilt_bytes(&b, |x| {
        let pos = x
            .windows(113)
            .position(|w| w == b.bundle.epoch_header.to_bytes())
            .unwrap();
        x[pos] = 1;
    });
    bad(
        c,
        "decode-header-version-1",
        "epoch header version 1",
        hv1,
        "epoch header version is 2",
    );
    // Hex stored as text: the `seq` tag value "0" is text; the `prev` empty; find a hex value
    // ("challenge" digits are text) — use an extra tag "ab" stored as text instead of packed.
    let mut s = proof_op(&alice(), false, 0, None, HANDLE, 1_800_000_000_000_000_001);
    s.tags.push(vec!["alt".into(), "ab".into()]);
    let mut hx = History::default();
    hx.push(s.sign());
    let bx = built(&hx, &hx.registry_record(None));
    let text_hex = rebuilt_bytes(&bx, |x| {
        // packed form of "ab": 0x80 0x01 0xab -> text form 0x00 0x02 'a' 'b'
        let pos = x
            .windows(6)
            .position(|w| w == [0x03, b'a', b'l', b't', 0x80, 0x01])
            .unwrap();
        x.splice(pos + 4..pos + 7, [0x00, 0x02, b'a', b'b']);
    });
    c.add(
        "decode-hex-as-text",
        "a lowercase-hex tag value stored as text instead of hex-packed (non-canonical)",
        "proof",
        Form::Binary,
        text_hex,
        (bx.headers.clone(), bx.network, Some(bx.checkpoint)),
        Policy::of(Network::Regtest),
        Err(("decode", "canonical encoding: re-encoding gives the input")),
    );
    // Empty tag: n_values = 0.
    let empty_tag = rebuilt_bytes(&bx, |x| {
        let pos = x
            .windows(6)
            .position(|w| w == [0x03, b'a', b'l', b't', 0x80, 0x01])
            .unwrap();
        // The tag starts two bytes earlier with n_values = 2; make it a tag with zero values.
        x[pos - 2] = 0;
        x.drain(pos - 1..pos + 7);
    });
    c.add(
        "decode-empty-tag",
        "a tag with no values (`[]`)",
        "proof",
        Form::Binary,
        empty_tag,
        (bx.headers.clone(), bx.network, Some(bx.checkpoint)),
        Policy::of(Network::Regtest),
        Err(("decode", "a tag has at least one value (its name)")),
    );

    // JSON form.
    let json = |b: &ProofBundle| serde_json::to_value(b).unwrap();
    let jbad = |c: &mut Catalog, name: &str, desc: &str, v: Value, step: &str, rule: &str| {
        c.add(
            name,
            desc,
            "proof",
            Form::Json,
            serde_json::to_vec_pretty(&v).unwrap(),
            hdr.clone(),
            Policy::of(Network::Regtest),
            Err((step, rule)),
        );
    };
    let mut v = json(&b.bundle);
    v["extra"] = json!(1);
    jbad(
        c,
        "decode-json-unknown-field",
        "an unknown top-level field",
        v,
        "decode",
        "unknown fields are rejected",
    );
    let mut v = json(&b.bundle);
    v["ops"][0]["extra"] = json!(1);
    jbad(
        c,
        "decode-json-event-unknown-field",
        "an unknown field in an event object",
        v,
        "decode",
        "event objects have exactly id, pubkey, created_at, kind, tags, content, sig",
    );
    let mut v = json(&b.bundle);
    v["ops"][0].as_object_mut().unwrap().remove("id");
    jbad(
        c,
        "decode-json-event-missing-id",
        "an event without `id`",
        v,
        "decode",
        "the event id is required",
    );
    let mut v = json(&b.bundle);
    v["record"] = json!(v["record"].as_str().unwrap().to_uppercase());
    jbad(
        c,
        "decode-json-uppercase-hex",
        "record hex in uppercase",
        v,
        "decode",
        "hex is lowercase",
    );
    let mut v = json(&b.bundle);
    v["ops"][0]["tags"].as_array_mut().unwrap().push(json!([]));
    jbad(
        c,
        "decode-json-empty-tag",
        "an empty tag `[]` in an operation",
        v,
        "decode",
        "a tag has at least one value (its name)",
    );
    let mut v = json(&b.bundle);
    v["ops"][0]["id"] = json!(hex::encode([0x11u8; 32]));
    jbad(
        c,
        "operations-json-id-mismatch",
        "the event `id` is not the hash of the other fields",
        v,
        "operations",
        "the id is the NIP-01 hash",
    );
    let mut v = json(&b.bundle);
    v["ops"][0]["created_at"] = json!(1u64 << 60);
    jbad(
        c,
        "operations-json-created-at-2^60",
        "created_at above 2^53 - 1 (a JavaScript reader would round it)",
        v,
        "operations",
        "created_at <= 2^53 - 1",
    );
    let mut v = json(&b.bundle);
    v["op_path"]["leaf_index"] = json!(1u64 << 60);
    jbad(
        c,
        "log-json-leaf-index-2^60",
        "leaf_index above 2^53 - 1",
        v,
        "log",
        "leaf_index <= 2^53 - 1",
    );
}

fn event_vectors(c: &mut Catalog) {
    let base = || proof_op(&alice(), false, 0, None, HANDLE, 1_800_000_000_000_000_001);
    // Each builds a consistent bundle around one bad operation.
    let one = |c: &mut Catalog, name: &str, desc: &str, spec: OpSpec, rule: &str| {
        let e = spec.sign();
        let mut h = History::default();
        h.ops.push(e.clone());
        let mut att_src = e.clone();
        // The attestation matches what the op claims where it can (built from its tags).
        att_src.tags = e.tags.clone();
        if e.tags.iter().any(|t| t.as_slice()[0] == "i")
            && e.tags.iter().any(|t| t.as_slice()[0] == "challenge")
        {
            h.atts.push(sign_raw(
                &witness(),
                kinds::WITNESS_ATTESTATION,
                1_750_000_100,
                &attestation_tags(&att_src),
                "",
            ));
        }
        let id = Identity {
            x_uid: UID,
            handle: HANDLE.into(),
            key: Some(e.pubkey),
            status: Status::Bound,
            seq: 0,
            head: e.id,
            last_epoch: 0,
        };
        let b = build(Parts::new(h, id));
        c.invalid(name, desc, &b, "operations", rule);
    };
    let mut s = base();
    s.content = "bell\u{7}".into();
    one(c, "operations-control-character-content", "content holds U+0007 (NIP-01 has no escape for it; JSON libraries write \\u0007): the id is computed verbatim and the event is refused", s, "no C0 control characters other than \\b \\t \\n \\f \\r");
    let mut s = base();
    s.tags.push(vec!["alt".into(), "nul\u{0}".into()]);
    one(
        c,
        "operations-control-character-tag",
        "an extra tag holds U+0000",
        s,
        "no C0 control characters other than \\b \\t \\n \\f \\r",
    );
    let mut s = base();
    s.created_at = MAX_SAFE_INTEGER + 1;
    one(
        c,
        "operations-created-at-2^53",
        "created_at = 2^53",
        s,
        "created_at <= 2^53 - 1",
    );
    let mut s = base();
    s.set("i", &["twitter:Alice_01", "1800000000000000001"]);
    one(
        c,
        "operations-handle-uppercase",
        "`twitter:Alice_01`: handles are lowercase; they are refused, not lowercased",
        s,
        "handle is 1-15 of [a-z0-9_]",
    );
    let mut s = base();
    s.set("i", &["Twitter:alice_01", "1800000000000000001"]);
    one(
        c,
        "operations-platform-uppercase",
        "`Twitter:alice_01`",
        s,
        "platform is `twitter`",
    );
    let mut s = base();
    s.set("i", &["twitter:alice_01", "0"]);
    one(
        c,
        "operations-post-id-zero",
        "post id 0",
        s,
        "post id is a non-zero canonical u64",
    );
    let mut s = base();
    s.set("i", &["twitter:alice_01", "01800000000000000001"]);
    one(
        c,
        "operations-post-id-leading-zero",
        "post id with a leading zero",
        s,
        "post id is a non-zero canonical u64",
    );
    let mut s = base();
    s.set("i", &["twitter:alice_01", "18446744073709551616"]);
    one(
        c,
        "operations-post-id-overflow",
        "post id 2^64",
        s,
        "post id is a non-zero canonical u64",
    );
    let mut s = base();
    s.set("x_uid", &[&UID.to_string(), "x"]);
    one(
        c,
        "operations-tag-extra-value",
        "`[\"x_uid\", \"1234567890\", \"x\"]`",
        s,
        "protocol tags have exactly their values",
    );
    let mut s = base();
    s.set("x_uid", &[]);
    one(
        c,
        "operations-tag-missing-value",
        "`[\"x_uid\"]`",
        s,
        "protocol tags have exactly their values",
    );
    let mut s = base();
    s.tags.push(vec!["seq".into(), "0".into()]);
    one(
        c,
        "operations-duplicate-tag",
        "`seq` twice (same value)",
        s,
        "each protocol tag at most once",
    );
    let mut s = base();
    s.tags
        .push(vec!["new_key".into(), alice2().public_key().to_hex()]);
    one(
        c,
        "operations-forbidden-tag",
        "a bind with a `new_key` tag",
        s,
        "forbidden protocol tags",
    );
    let mut s = base();
    s.tags.retain(|t| t[0] != "challenge");
    one(
        c,
        "operations-missing-tag",
        "a bind without `challenge`",
        s,
        "required protocol tags",
    );
    let mut s = base();
    s.set("x_uid", &["0"]);
    one(
        c,
        "operations-x-uid-zero",
        "x_uid 0",
        s,
        "x_uid is non-zero",
    );
    let mut s = base();
    s.set("seq", &["+0"]);
    one(
        c,
        "operations-seq-not-canonical",
        "seq `+0`",
        s,
        "canonical decimal",
    );
    let mut s = base();
    s.set("challenge", &["short"]);
    one(
        c,
        "operations-challenge-short",
        "a 5-character challenge",
        s,
        "challenge is 16-64 ASCII letters or digits",
    );
    let mut s = base();
    s.set("op", &["Bind"]);
    one(
        c,
        "operations-op-unknown",
        "op `Bind`",
        s,
        "op is one of bind rotate revoke recover veto",
    );
    let mut s = base();
    s.set("prev", &[&hex::encode([1u8; 32])]);
    one(
        c,
        "operations-prev-with-seq-0",
        "seq 0 with a non-empty prev",
        s,
        "prev is empty exactly when seq is 0",
    );
    // A rotate at seq 0: prev is empty, so it is refused before any rotation message.
    let mut s = rotate(&alice(), &alice2(), 0, &EventId::from_byte_array([0; 32]));
    s.set("prev", &[""]);
    one(
        c,
        "operations-rotate-seq-0",
        "a rotate at seq 0 (empty prev): only a bind may have seq 0",
        s,
        "only bind has seq 0",
    );

    // Defects in a second operation (the rotate) of a valid bind.
    let h0 = bind_history();
    let p = last_id(&h0);
    let second = |c: &mut Catalog, name: &str, desc: &str, spec: OpSpec, step: &str, rule: &str| {
        let mut h = h0.clone();
        let e = spec.sign();
        h.ops.push(e.clone());
        let id = Identity {
            x_uid: UID,
            handle: HANDLE.into(),
            key: Some(alice2().public_key()),
            status: Status::Bound,
            seq: 1,
            head: e.id,
            last_epoch: 0,
        };
        c.invalid(name, desc, &build(Parts::new(h, id)), step, rule);
    };
    let mut s = rotate(&alice(), &alice2(), 1, &p);
    let sig = s.tags.iter().find(|t| t[0] == "new_key_sig").unwrap()[1].clone();
    let mut flipped = hex::decode(&sig).unwrap();
    flipped[10] ^= 1;
    s.set("new_key_sig", &[&hex::encode(flipped)]);
    second(
        c,
        "operations-rotate-bad-new-key-sig",
        "the new key's signature does not verify",
        s,
        "operations",
        "new_key_sig verifies over m",
    );
    let mut s = rotate(&alice(), &alice2(), 1, &p);
    s.set("new_key_sig", &[&sig.to_uppercase()]);
    second(
        c,
        "operations-rotate-sig-uppercase",
        "new_key_sig in uppercase hex",
        s,
        "operations",
        "hex is lowercase",
    );
    let mut s = rotate(&alice(), &alice(), 1, &p);
    s.signer = alice();
    second(
        c,
        "operations-rotate-same-key",
        "rotate to the signing key",
        s,
        "operations",
        "new_key differs from pubkey",
    );
    second(
        c,
        "operations-seq-gap",
        "seq 2 after seq 0",
        rotate(&alice(), &alice2(), 2, &p),
        "operations",
        "seq is the previous seq + 1",
    );
    second(
        c,
        "operations-prev-wrong",
        "prev names another event",
        rotate(&alice(), &alice2(), 1, &EventId::from_byte_array([7; 32])),
        "operations",
        "prev is the previous operation's id",
    );
    let mut s = rotate(&alice(), &alice2(), 1, &p);
    s.set("x_uid", &["42"]);
    // the rotation message binds x_uid; re-sign it for x_uid 42
    let msg = cairn_identity_core::binding::rotation_message(
        42,
        1,
        &p,
        &alice().public_key(),
        &alice2().public_key(),
    );
    let kp = nostr::secp256k1::Keypair::from_secret_key(nostr::SECP256K1, alice2().secret_key());
    let nsig = nostr::SECP256K1
        .sign_schnorr_no_aux_rand(&nostr::secp256k1::Message::from_digest(msg), &kp);
    s.set("new_key_sig", &[&hex::encode(nsig.as_ref())]);
    second(
        c,
        "operations-x-uid-differs",
        "the second operation names another x_uid",
        s,
        "operations",
        "every operation's x_uid is the record's",
    );

    // Signature of the bind flipped (id intact).
    let h = bind_history();
    let id = h.registry_record(None);
    let mut b = built(&h, &id);
    let mut sig = *b.bundle.ops[0].sig.as_ref();
    sig[5] ^= 1;
    b.bundle.ops[0].sig = nostr::secp256k1::schnorr::Signature::from_slice(&sig).unwrap();
    c.invalid(
        "operations-bad-signature",
        "the bind's signature does not verify",
        &b,
        "operations",
        "signature verifies over the id",
    );
    // Starts with a rotate.
    let mut hs = bind_history();
    let p = last_id(&hs);
    hs.push(rotate(&alice(), &alice2(), 1, &p).sign());
    let ids = hs.registry_record(None);
    let suffix = History {
        ops: hs.ops[1..].to_vec(),
        atts: vec![],
    };
    c.invalid(
        "operations-start-not-bind",
        "the operations start with a rotate",
        &built(&suffix, &ids),
        "operations",
        "ops[0] is a bind",
    );
    // No operations at all.
    let mut b = built(&h, &id);
    b.bundle.ops.clear();
    b.bundle.attestations.clear();
    b.bundle.attestation_paths.clear();
    c.invalid(
        "operations-none",
        "no operations",
        &b,
        "operations",
        "at least one operation",
    );
}

fn history_vectors(c: &mut Catalog) {
    let h = bind_history();
    let id = h.registry_record(None);

    // Attestations.
    let att_case =
        |c: &mut Catalog, name: &str, desc: &str, f: &dyn Fn(&Event) -> Event, rule: &str| {
            let mut hh = h.clone();
            hh.atts[0] = f(&hh.ops[0]);
            c.invalid(name, desc, &built(&hh, &id), "attestations", rule);
        };
    let with_tags = |op: &Event, g: &dyn Fn(&mut Vec<Vec<String>>)| {
        let mut tags = attestation_tags(op);
        g(&mut tags);
        sign_raw(
            &witness(),
            kinds::WITNESS_ATTESTATION,
            1_750_000_100,
            &tags,
            "",
        )
    };
    att_case(
        c,
        "attestations-extra-tag",
        "an attestation with an extra `alt` tag",
        &|op| with_tags(op, &|t| t.push(vec!["alt".into(), "x".into()])),
        "exactly the seven attestation tags",
    );
    att_case(
        c,
        "attestations-missing-tag",
        "an attestation without `fetched_at`",
        &|op| with_tags(op, &|t| t.retain(|x| x[0] != "fetched_at")),
        "exactly the seven attestation tags",
    );
    att_case(
        c,
        "attestations-duplicate-tag",
        "`posted_at` twice",
        &|op| {
            with_tags(op, &|t| {
                t.push(vec!["posted_at".into(), "1749999000".into()])
            })
        },
        "each attestation tag exactly once",
    );
    att_case(
        c,
        "attestations-content",
        "non-empty content",
        &|op| {
            sign_raw(
                &witness(),
                kinds::WITNESS_ATTESTATION,
                1_750_000_100,
                &attestation_tags(op),
                "hi",
            )
        },
        "content is empty",
    );
    att_case(
        c,
        "attestations-handle-uppercase",
        "`twitter:ALICE_01` in the attestation",
        &|op| with_tags(op, &|t| t[0][1] = "twitter:ALICE_01".into()),
        "handle is 1-15 of [a-z0-9_]",
    );
    att_case(
        c,
        "attestations-x-uid-zero",
        "x_uid 0",
        &|op| with_tags(op, &|t| t[1][1] = "0".into()),
        "x_uid is non-zero",
    );
    att_case(
        c,
        "attestations-post-sha256-short",
        "post_sha256 of 31 bytes",
        &|op| with_tags(op, &|t| t[4][1] = hex::encode([1u8; 31])),
        "post_sha256 is 64 lowercase hex",
    );
    att_case(
        c,
        "attestations-posted-at-not-canonical",
        "posted_at `01749999000`",
        &|op| with_tags(op, &|t| t[5][1] = "01749999000".into()),
        "canonical decimal",
    );
    att_case(
        c,
        "attestations-challenge-mismatch",
        "the attestation quotes another challenge",
        &|op| with_tags(op, &|t| t[3][1] = challenge(99)),
        "matches its operation",
    );
    att_case(
        c,
        "attestations-post-id-mismatch",
        "the attestation names another post",
        &|op| with_tags(op, &|t| t[0][2] = "1800000000000000009".into()),
        "matches its operation",
    );
    att_case(
        c,
        "attestations-subject-mismatch",
        "`p` is not the operation's signer",
        &|op| with_tags(op, &|t| t[2][1] = alice2().public_key().to_hex()),
        "matches its operation",
    );
    att_case(
        c,
        "attestations-wrong-kind",
        "kind 3470 instead of 3471",
        &|op| {
            sign_raw(
                &witness(),
                kinds::BINDING,
                1_750_000_100,
                &attestation_tags(op),
                "",
            )
        },
        "kind 3471",
    );
    let mut hh = h.clone();
    hh.atts.clear();
    c.invalid(
        "attestations-missing",
        "a bind without its attestation",
        &built(&hh, &id),
        "attestations",
        "one attestation per bind/recover",
    );
    c.proof(
        "attestations-untrusted-witness",
        "the policy trusts another witness key",
        &built(&h, &id),
        Form::Binary,
        Policy {
            trusted: vec![alice2().public_key().to_hex()],
            ..Policy::of(Network::Regtest)
        },
        Err(("attestations", "signed by a trusted witness")),
    );
    let mut b = built(&h, &id);
    let mut sig = *b.bundle.attestations[0].sig.as_ref();
    sig[0] ^= 1;
    b.bundle.attestations[0].sig = nostr::secp256k1::schnorr::Signature::from_slice(&sig).unwrap();
    c.invalid(
        "attestations-bad-signature",
        "the attestation's signature does not verify",
        &b,
        "attestations",
        "signature verifies over the id",
    );

    // Replay.
    let p = last_id(&h);
    let replay = |c: &mut Catalog,
                  name: &str,
                  desc: &str,
                  extra: Vec<Event>,
                  record: Identity,
                  rule: &str| {
        let mut hh = h.clone();
        for e in extra {
            hh.push(e);
        }
        c.invalid(name, desc, &built(&hh, &record), "replay", rule);
    };
    let rec = |key: Option<&Keys>, status: Status, seq: u64, head: EventId| Identity {
        x_uid: UID,
        handle: HANDLE.into(),
        key: key.map(|k| k.public_key()),
        status,
        seq,
        head,
        last_epoch: 0,
    };
    let e = rotate(&thief(), &alice2(), 1, &p).sign();
    replay(
        c,
        "replay-rotate-wrong-signer",
        "a rotate signed by a key that is not the current one",
        vec![e.clone()],
        rec(Some(&alice2()), Status::Bound, 1, e.id),
        "rotate is signed by the current key",
    );
    let e = simple(&thief(), "revoke", 1, &p).sign();
    replay(
        c,
        "replay-revoke-wrong-signer",
        "a revoke signed by another key",
        vec![e.clone()],
        rec(None, Status::Revoked, 1, e.id),
        "revoke is signed by the current key",
    );
    let e = proof_op(
        &alice2(),
        false,
        1,
        Some(&p),
        HANDLE,
        1_800_000_000_000_000_005,
    )
    .sign();
    replay(
        c,
        "replay-bind-while-bound",
        "a second bind while bound",
        vec![e.clone()],
        rec(Some(&alice2()), Status::Bound, 1, e.id),
        "bind only when revoked",
    );
    let e = proof_op(
        &alice(),
        true,
        1,
        Some(&p),
        HANDLE,
        1_800_000_000_000_000_005,
    )
    .sign();
    replay(
        c,
        "replay-recover-by-current-key",
        "a recover signed by the current key",
        vec![e.clone()],
        rec(
            Some(&alice()),
            Status::RecoveryPending(PendingRecovery {
                recover_id: e.id,
                new_key: alice().public_key(),
                effective_height: 1,
            }),
            1,
            e.id,
        ),
        "recover is signed by another key",
    );
    let e = veto(&alice(), 1, &p, &p).sign();
    replay(
        c,
        "replay-veto-without-recovery",
        "a veto while nothing is pending",
        vec![e.clone()],
        rec(Some(&alice()), Status::Bound, 1, e.id),
        "veto needs a pending recovery",
    );
    let r = proof_op(
        &thief(),
        true,
        1,
        Some(&p),
        HANDLE,
        1_800_000_000_000_000_002,
    )
    .sign();
    let v = veto(&alice(), 2, &r.id, &EventId::from_byte_array([3; 32])).sign();
    replay(
        c,
        "replay-veto-wrong-target",
        "a veto naming another recovery",
        vec![r.clone(), v.clone()],
        rec(Some(&alice()), Status::Bound, 2, v.id),
        "veto names the pending recovery",
    );
    let r1 = simple(&alice(), "revoke", 1, &p).sign();
    let r2 = simple(&alice(), "revoke", 2, &r1.id).sign();
    replay(
        c,
        "replay-revoke-twice",
        "revoke after revoke",
        vec![r1, r2.clone()],
        rec(None, Status::Revoked, 2, r2.id),
        "revoke needs a live identity",
    );

    // Record match.
    let mut other = id.clone();
    other.handle = "alice_02".into();
    c.invalid(
        "record-match-handle",
        "the record's handle is not the bind's",
        &built(&h, &other),
        "record-match",
        "record handle is the replayed handle",
    );
    let mut other = id.clone();
    other.key = Some(alice2().public_key());
    c.invalid(
        "record-match-key",
        "the record's key is not the bind's signer",
        &built(&h, &other),
        "record-match",
        "record key and status are the replayed ones",
    );
    let mut other = id.clone();
    other.status = Status::Revoked;
    other.key = None;
    c.invalid(
        "record-match-status",
        "the record is revoked, the replay bound",
        &built(&h, &other),
        "record-match",
        "record key and status are the replayed ones",
    );
    let mut other = id.clone();
    other.seq = 1;
    c.invalid(
        "record-match-seq",
        "the record's seq is not the head's",
        &built(&h, &other),
        "record-match",
        "record seq and head are the head operation's",
    );

    // Record bytes.
    let mut b = built(&h, &id);
    b.bundle.record[0] = 2;
    c.invalid(
        "record-version-2",
        "record version 2",
        &b,
        "record",
        "record version 1",
    );
    let mut b = built(&h, &id);
    b.bundle.record[1] = 4;
    c.invalid(
        "record-status-4",
        "record status 4",
        &b,
        "record",
        "status 1, 2 or 3",
    );
    let mut b = built(&h, &id);
    b.bundle.record[83] = b'A';
    c.invalid(
        "record-handle-uppercase",
        "uppercase handle in the record",
        &b,
        "record",
        "valid handle",
    );
    let mut b = built(&h, &id);
    b.bundle.record.push(0);
    c.invalid(
        "record-trailing-byte",
        "one byte too many",
        &b,
        "record",
        "exact length",
    );

    // Log.
    let mut b = built(&h, &id);
    b.bundle.op_path.path[0][0] ^= 1;
    c.invalid(
        "log-op-path-wrong",
        "the head operation's audit path is altered",
        &b,
        "log",
        "the head's leaf verifies to log_root",
    );
    let mut b = built(&h, &id);
    b.bundle.attestation_paths[0].path[0][0] ^= 1;
    c.invalid(
        "log-attestation-path-wrong",
        "the attestation's audit path is altered",
        &b,
        "log",
        "each attestation's leaf verifies to log_root",
    );
    let b = with(h.clone(), id.clone(), |p| p.gap_before_head = true);
    c.invalid(
        "log-attestation-not-immediately-before",
        "another leaf is logged between the bind's attestation and the bind",
        &b,
        "log",
        "a bind/recover head's attestation is the leaf right before it",
    );
    let mut b = built(&h, &id);
    b.bundle.op_path.leaf_index = 1 << 60;
    c.invalid(
        "log-leaf-index-2^60",
        "leaf_index 2^60 (binary form)",
        &b,
        "log",
        "leaf_index <= 2^53 - 1",
    );

    // State.
    let b = with(h.clone(), id.clone(), |p| p.state_value = Some([9; 32]));
    c.invalid(
        "state-value-differs",
        "the state tree holds another value for the x_uid",
        &b,
        "state",
        "the state proof shows TH(cairn/record, record)",
    );
    let mut b = with(h.clone(), id.clone(), |p| p.filler = 50);
    b.bundle.state_proof.siblings[0][0] ^= 1;
    c.invalid(
        "state-sibling-altered",
        "a sibling of the state proof is altered",
        &b,
        "state",
        "the state proof leads to state_root",
    );
    let (mut a, headers, cp) = build_absence(UID, 50);
    a.x_uid = 10_000; // a filler key that is present
    a.state_proof = {
        let w = World::with_filler(50);
        w.state
            .prove_at(
                &a.epoch_header.state_root,
                &cairn_identity_core::state::state_key(10_000),
            )
            .unwrap()
    };
    c.add(
        "state-absence-but-present",
        "an absence bundle for an x_uid that has a record",
        "absence",
        Form::Json,
        serde_json::to_vec_pretty(&a).unwrap(),
        (headers, Network::Regtest, Some(cp)),
        Policy::of(Network::Regtest),
        Err(("state", "the proof shows no value for key(x_uid)")),
    );
    let (mut a, headers, cp) = build_absence(UID, 5);
    a.x_uid = 0;
    c.add(
        "record-absence-x-uid-zero",
        "an absence bundle for x_uid 0",
        "absence",
        Form::Json,
        serde_json::to_vec_pretty(&a).unwrap(),
        (headers, Network::Regtest, Some(cp)),
        Policy::of(Network::Regtest),
        Err(("record", "x_uid is non-zero")),
    );
    let (a, headers, cp) = build_absence(UID, 5);
    let mut v = serde_json::to_value(&a).unwrap();
    v["x_uid"] = json!(format!("0{UID}"));
    c.add(
        "decode-absence-x-uid-leading-zero",
        "absence x_uid with a leading zero",
        "absence",
        Form::Json,
        serde_json::to_vec_pretty(&v).unwrap(),
        (headers, Network::Regtest, Some(cp)),
        Policy::of(Network::Regtest),
        Err(("decode", "x_uid is a canonical decimal string")),
    );
}

fn anchor_vectors(c: &mut Catalog) {
    let h = bind_history();
    let id = h.registry_record(None);
    let anchor = |c: &mut Catalog,
                  name: &str,
                  desc: &str,
                  f: Box<dyn Fn(&mut Parts)>,
                  step: &str,
                  rule: &str| {
        let b = with(h.clone(), id.clone(), |p| f(p));
        c.invalid(name, desc, &b, step, rule);
    };
    anchor(
        c,
        "anchor-epoch-0-nonzero-prev",
        "epoch 0 with a non-zero previous header hash",
        Box::new(|p| p.prev_header_hash = [1; 32]),
        "anchor",
        "epoch 0 has an all-zero prev_header_hash",
    );
    anchor(
        c,
        "anchor-epoch-5-zero-prev",
        "epoch 5 with an all-zero previous header hash",
        Box::new(|p| p.epoch = 5),
        "anchor",
        "only epoch 0 has an all-zero prev_header_hash",
    );
    let out = |script: Vec<u8>| TxOut {
        value: Amount::ZERO,
        script_pubkey: ScriptBuf::from_bytes(script),
    };
    anchor(
        c,
        "anchor-no-cairn-output",
        "the OP_RETURN carries another magic",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(move |tx| {
                let mut s = tx.output[0].script_pubkey.to_bytes();
                s[2] = b'X';
                tx.output[0] = out(s);
            }))
        }),
        "anchor",
        "exactly one Cairn output",
    );
    anchor(
        c,
        "anchor-two-cairn-outputs",
        "the canonical Cairn output twice",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(|tx| {
                let o = tx.output[0].clone();
                tx.output.push(o);
            }))
        }),
        "anchor",
        "exactly one Cairn output",
    );
    anchor(
        c,
        "anchor-cairn-output-pushdata1",
        "the payload pushed with OP_PUSHDATA1",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(move |tx| {
                let s = tx.output[0].script_pubkey.to_bytes();
                tx.output[0] = out([&[0x6a, 0x4c, 38][..], &s[2..]].concat());
            }))
        }),
        "anchor",
        "the Cairn output is the canonical 40-byte script",
    );
    anchor(
        c,
        "anchor-cairn-output-trailing-push",
        "a push after the payload",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(move |tx| {
                let s = tx.output[0].script_pubkey.to_bytes();
                tx.output[0] = out([&s[..], &[0x01, 0x00]].concat());
            }))
        }),
        "anchor",
        "the Cairn output is the canonical 40-byte script",
    );
    anchor(
        c,
        "anchor-cairn-output-version-2",
        "payload version 2",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(move |tx| {
                let mut s = tx.output[0].script_pubkey.to_bytes();
                s[7] = 2;
                tx.output[0] = out(s);
            }))
        }),
        "anchor",
        "payload version 1",
    );
    anchor(
        c,
        "anchor-odd-cairn-output-beside-valid",
        "a valid Cairn output and a version-2 one",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(move |tx| {
                let mut s = tx.output[0].script_pubkey.to_bytes();
                s[7] = 2;
                tx.output.push(out(s));
            }))
        }),
        "anchor",
        "exactly one Cairn output (every OP_RETURN whose first push starts with CAIRN counts)",
    );
    anchor(
        c,
        "anchor-other-header",
        "the OP_RETURN commits to another header hash",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(move |tx| {
                let mut s = tx.output[0].script_pubkey.to_bytes();
                s[39] ^= 1;
                tx.output[0] = out(s);
            }))
        }),
        "anchor",
        "the Cairn output carries header_hash",
    );
    anchor(
        c,
        "anchor-64-byte-transaction",
        "a 64-byte anchor transaction (it could pose as an inner Merkle node)",
        Box::new(move |p| {
            p.tx_hook = Some(Box::new(move |tx| {
                // 4 version + 1 + 41 input + 1 + (8 + 1 + 4) output + 4 locktime = 64
                tx.output = vec![out(vec![0x6a, 0x02, 0xab, 0xcd])];
            }))
        }),
        "anchor",
        "anchor_tx is not 64 bytes",
    );

    // Block inclusion.
    let block =
        |c: &mut Catalog, name: &str, desc: &str, txs: usize, hook: Box<TxidsHook>, rule: &str| {
            let b = with(h.clone(), id.clone(), |p| {
                p.chain = ChainSpec::regtest(txs);
                p.txids_hook = Some(hook);
            });
            c.invalid(name, desc, &b, "block-inclusion", rule);
        };
    block(c, "block-inclusion-identical-siblings", "4 transactions [a, b, anchor, anchor]: an existing right sibling equal to its left (CVE-2012-2459)", 4, Box::new(|t, a| { t[2] = a; t[3] = a; }), "no identical existing sibling pair");
    block(
        c,
        "block-inclusion-two-matches",
        "the anchor's txid at positions 1 and 2 (not siblings): the partial tree matches it twice",
        4,
        Box::new(|t, a| t[1] = a),
        "the matched txids are exactly [txid]",
    );
    let mut b = with(h.clone(), id.clone(), |p| p.chain = ChainSpec::regtest(7));
    b.bundle.merkle_block.header.merkle_root = bitcoin::TxMerkleNode::from_byte_array([1; 32]);
    // the header changed: re-mine it and rebuild its chain so only the root is wrong
    let hdr = mine(b.bundle.merkle_block.header, true);
    b.bundle.merkle_block.header = hdr;
    let hs = extend(hdr, 5);
    b.headers = file(&hs);
    b.checkpoint = (HEIGHT, hdr.block_hash());
    c.invalid(
        "block-inclusion-root-mismatch",
        "the block header's merkle root is not the partial tree's",
        &b,
        "block-inclusion",
        "the computed root is the header's merkle_root",
    );
    let b = built(&h, &id);
    let mut bytes = b.bundle.to_bytes().unwrap();
    // last byte is the flag byte; set a padding bit (3 used of 8)
    *bytes.last_mut().unwrap() |= 0x80;
    c.add(
        "block-inclusion-padding-bit",
        "a padding bit after the last used flag bit is set",
        "proof",
        Form::Binary,
        bytes,
        (b.headers.clone(), b.network, Some(b.checkpoint)),
        Policy::of(Network::Regtest),
        Err(("block-inclusion", "padding flag bits are zero")),
    );
    let mut b = built(&h, &id);
    let mb = &mut b.bundle.merkle_block;
    let raw = bitcoin::consensus::serialize(&mb.txn);
    let mut raw2 = raw.clone();
    raw2[..4].copy_from_slice(&16_667u32.to_le_bytes());
    mb.txn = bitcoin::consensus::deserialize(&raw2).unwrap();
    c.invalid(
        "block-inclusion-too-many-transactions",
        "transaction count 16,667 (> 4,000,000 / 240)",
        &b,
        "block-inclusion",
        "transaction count at most 16,666",
    );
}

fn chain_vectors(c: &mut Catalog) {
    let h = bind_history();
    let id = h.registry_record(None);
    let b = built(&h, &id);
    let reg_chain = (b.headers.clone(), Network::Regtest, Some(b.checkpoint));
    // Regtest-difficulty block judged under each other network's limit.
    for (n, name) in [
        (Network::Bitcoin, "proof-of-work-regtest-block-on-mainnet"),
        (Network::Testnet, "proof-of-work-regtest-block-on-testnet3"),
        (Network::Testnet4, "proof-of-work-regtest-block-on-testnet4"),
        (Network::Signet, "proof-of-work-regtest-block-on-signet"),
    ] {
        c.proof(name, "a block with regtest bits 0x207fffff under a policy for a network whose limit is lower (the headers file is the verifier's regtest view)", &b, Form::Binary, Policy::of(n), Err(("proof-of-work", "target <= the network's pow limit")));
    }
    // Bits that decode to no target.
    for (bits, name, desc) in [
        (
            0x2301_0000u32,
            "proof-of-work-bits-overflow",
            "bits 0x23010000 overflow 256 bits (rust-bitcoin's from_compact would wrap)",
        ),
        (
            0x1d80_ffff,
            "proof-of-work-bits-negative",
            "bits 0x1d80ffff have the sign bit set",
        ),
        (
            0x0300_0000,
            "proof-of-work-bits-zero",
            "bits 0x03000000 decode to zero",
        ),
    ] {
        let bb = with(h.clone(), id.clone(), |p| {
            p.chain = ChainSpec {
                bits,
                ..ChainSpec::regtest(2)
            };
            p.mine = false;
        });
        c.proof(
            name,
            desc,
            &bb,
            Form::Binary,
            Policy::of(Network::Regtest),
            Err((
                "proof-of-work",
                "bits decode to a non-zero target (Core's SetCompact)",
            )),
        );
        // headers file is the block alone; it cannot load, so give the regtest view instead
        let last = c.vectors.last_mut().unwrap();
        let file = last["headers"]["file"].as_str().unwrap().to_owned();
        c.files.insert(file.clone(), reg_chain.0.clone());
        last["headers"]["checkpoint"] =
            json!({"height": HEIGHT, "hash": reg_chain.2.unwrap().1.to_string()});
    }
    // Hash above target.
    let bb = with(h.clone(), id.clone(), |p| p.mine = false);
    c.proof(
        "proof-of-work-hash-above-target",
        "the block hash is above its target",
        &bb,
        Form::Binary,
        Policy::of(Network::Regtest),
        Err(("proof-of-work", "block hash <= target")),
    );
    let last = c.vectors.last_mut().unwrap();
    let file = last["headers"]["file"].as_str().unwrap().to_owned();
    c.files.insert(file, reg_chain.0.clone());
    last["headers"]["checkpoint"] =
        json!({"height": HEIGHT, "hash": reg_chain.2.unwrap().1.to_string()});
    // Mainnet bits, not mined (real mainnet work cannot be produced here).
    let bb = with(h.clone(), id.clone(), |p| {
        p.chain = ChainSpec {
            network: Network::Bitcoin,
            bits: 0x1d00_ffff,
            ..ChainSpec::regtest(2)
        };
        p.mine = false;
    });
    c.proof(
        "proof-of-work-mainnet-unmined",
        "mainnet bits 0x1d00ffff (within the limit), hash above the target",
        &bb,
        Form::Binary,
        Policy::of(Network::Bitcoin),
        Err(("proof-of-work", "block hash <= target")),
    );
    let last = c.vectors.last_mut().unwrap();
    let file = last["headers"]["file"].as_str().unwrap().to_owned();
    c.files.insert(file, reg_chain.0.clone());
    last["headers"]["network"] = json!("regtest");
    last["headers"]["checkpoint"] =
        json!({"height": HEIGHT, "hash": reg_chain.2.unwrap().1.to_string()});

    // Linkage: the verifier's chain is another one; the height is off by one.
    let mut other = b.clone();
    let other_chain = with(h.clone(), id.clone(), |p| {
        p.epoch = 3;
        p.prev_header_hash = [3; 32];
    });
    other.headers = other_chain.headers.clone();
    other.checkpoint = other_chain.checkpoint;
    c.invalid(
        "linkage-not-on-chain",
        "the block is not on the verifier's chain",
        &other,
        "linkage",
        "the block hash is on the verifier's active chain",
    );
    let mut bh = b.clone();
    bh.bundle.block_height += 1;
    c.invalid(
        "linkage-height-mismatch",
        "block_height is one more than the block's height",
        &bh,
        "linkage",
        "the block is at block_height",
    );
    // Confirmations.
    let few = with(h.clone(), id.clone(), |p| {
        p.chain = ChainSpec {
            confirmations_after: 4,
            ..ChainSpec::regtest(2)
        }
    });
    c.invalid(
        "confirmations-five-of-six",
        "5 confirmations, 6 required",
        &few,
        "confirmations",
        "tip - height + 1 >= min_confirmations",
    );
}

fn headers_files(c: &mut Catalog) {
    use bitcoin::{block::Header, constants::genesis_block, params::Params};
    // Real genesis headers of every network (the only real headers available offline).
    for (n, name) in [
        (Network::Bitcoin, "mainnet"),
        (Network::Testnet, "testnet3"),
        (Network::Testnet4, "testnet4"),
        (Network::Signet, "signet"),
        (Network::Regtest, "regtest"),
    ] {
        let g = genesis_block(Params::new(n)).header;
        c.headers_file(
            &format!("headers-{name}-genesis"),
            "the network's real genesis header, no checkpoint",
            file(&[g]),
            n,
            None,
            Ok(0),
        );
    }
    // Regtest from genesis, 20 mined headers.
    let g = genesis_block(Params::new(Network::Regtest)).header;
    let chain = extend(g, 20);
    c.headers_file(
        "headers-regtest-from-genesis",
        "regtest genesis and 20 mined children",
        file(&chain),
        Network::Regtest,
        None,
        Ok(20),
    );
    c.headers_file(
        "headers-regtest-wrong-genesis",
        "a regtest file loaded as mainnet (first header is not mainnet's genesis)",
        file(&chain),
        Network::Bitcoin,
        None,
        Err("the first header is the genesis block or the checkpoint"),
    );
    let mut bytes = file(&chain);
    bytes.pop();
    c.headers_file(
        "headers-length-not-multiple-of-80",
        "1,679 bytes",
        bytes,
        Network::Regtest,
        None,
        Err("the length is a positive multiple of 80"),
    );
    c.headers_file(
        "headers-empty",
        "0 bytes",
        vec![],
        Network::Regtest,
        None,
        Err("the length is a positive multiple of 80"),
    );
    let mut broken = chain.clone();
    broken[5].prev_blockhash = BlockHash::from_byte_array([1; 32]);
    broken[5] = mine(broken[5], true);
    c.headers_file(
        "headers-broken-link",
        "header 5 does not name header 4",
        file(&broken),
        Network::Regtest,
        None,
        Err("each header names its predecessor"),
    );
    let mut unmined = chain[..4].to_vec();
    let next = Header {
        prev_blockhash: unmined[3].block_hash(),
        time: unmined[3].time + 600,
        ..unmined[3]
    };
    unmined.push(mine(next, false));
    c.headers_file(
        "headers-hash-above-target",
        "the last header's hash is above its target",
        file(&unmined),
        Network::Regtest,
        None,
        Err("each header meets its own target"),
    );
    let mut changed = chain[..4].to_vec();
    let next = Header {
        prev_blockhash: changed[3].block_hash(),
        time: changed[3].time + 600,
        bits: bitcoin::CompactTarget::from_consensus(0x207f_fffe),
        ..changed[3]
    };
    changed.push(mine(next, true));
    c.headers_file(
        "headers-regtest-bits-change",
        "regtest bits change at height 4",
        file(&changed),
        Network::Regtest,
        None,
        Err("regtest bits never change"),
    );
    // Checkpoint start.
    let cp = (1000u32, chain[0].block_hash());
    c.headers_file(
        "headers-checkpoint-wrong-hash",
        "the checkpoint names another block",
        file(&chain[1..]),
        Network::Regtest,
        Some(cp),
        Err("the first header is the genesis block or the checkpoint"),
    );
    c.headers_file(
        "headers-checkpoint",
        "starts at a checkpoint (height 1000) that is the first header itself",
        file(&chain),
        Network::Regtest,
        Some(cp),
        Ok(1020),
    );
    // Signet: mined at the limit; a change of bits off a retarget height is refused.
    let start = mine(
        Header {
            version: bitcoin::block::Version::from_consensus(0x2000_0000),
            prev_blockhash: BlockHash::from_byte_array([2; 32]),
            merkle_root: bitcoin::TxMerkleNode::from_byte_array([3; 32]),
            time: 1_750_000_000,
            bits: bitcoin::CompactTarget::from_consensus(0x1e03_77ae),
            nonce: 0,
        },
        true,
    );
    let s = extend(start, 1);
    c.headers_file(
        "headers-signet-checkpoint",
        "two signet headers at the signet limit from a checkpoint at height 200,001",
        file(&s),
        Network::Signet,
        Some((200_001, start.block_hash())),
        Ok(200_002),
    );
    let next = Header {
        prev_blockhash: start.block_hash(),
        time: start.time + 600,
        bits: bitcoin::CompactTarget::from_consensus(0x1e03_77ad),
        ..start
    };
    let s2 = vec![start, mine(next, true)];
    c.headers_file("headers-signet-bits-change-off-retarget", "signet bits change at height 200,002 (not a multiple of 2016): signet follows mainnet's retarget rule", file(&s2), Network::Signet, Some((200_001, start.block_hash())), Err("bits change only at multiples of 2016"));
    c.headers_file(
        "headers-signet-retarget-height",
        "the same bits change at height 201,600 (a multiple of 2016), within a factor of four",
        file(&s2),
        Network::Signet,
        Some((201_599, start.block_hash())),
        Ok(201_600),
    );
    // Regtest bits under the signet limit.
    c.headers_file(
        "headers-regtest-bits-on-signet",
        "a regtest header as a signet checkpoint: bits above signet's limit",
        file(&chain[..1]),
        Network::Signet,
        Some((0, chain[0].block_hash())),
        Err("bits within the network's limit"),
    );
    c.headers_file(
        "headers-regtest-bits-on-mainnet",
        "a regtest header as a mainnet checkpoint: bits above mainnet's limit",
        file(&chain[..1]),
        Network::Bitcoin,
        Some((0, chain[0].block_hash())),
        Err("bits within the network's limit"),
    );
}
