//! Runs every test vector in `docs/vectors/` through the verifier and checks its verdict and,
//! for an invalid vector, the step that rejects it (`docs/identity-protocol.md` §12).
//!
//! `CAIRN_WRITE_VECTORS=1 cargo test -p cairn-identity-core --test vectors` regenerates the
//! files first from the deterministic generator in `vectors_gen/` (fixed keys, no clock, no
//! randomness; signet proof of work is mined, which takes a minute).

mod vectors_gen;

use std::{collections::BTreeSet, path::PathBuf};

use bitcoin::{BlockHash, Network};
use cairn_identity_core::bundle::{
    verify, verify_absence, AbsenceBundle, BundleError, Checkpoint, HeaderChain, ProofBundle, Step,
    VerifyPolicy,
};
use nostr::PublicKey;
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/vectors")
}

fn network(name: &str) -> Network {
    match name {
        "bitcoin" => Network::Bitcoin,
        "testnet" => Network::Testnet,
        "testnet4" => Network::Testnet4,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => panic!("unknown network {other}"),
    }
}

fn checkpoint(v: &Value) -> Option<Checkpoint> {
    (!v.is_null()).then(|| Checkpoint {
        height: v["height"].as_u64().unwrap() as u32,
        hash: v["hash"].as_str().unwrap().parse::<BlockHash>().unwrap(),
    })
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn write_all() {
    let c = vectors_gen::catalog::all();
    let root = dir();
    let _ = std::fs::remove_dir_all(root.join("bundles"));
    let _ = std::fs::remove_dir_all(root.join("headers"));
    for (path, bytes) in &c.files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let index = serde_json::json!({
        "version": 1,
        "generator": "identity-core/tests/vectors_gen (CAIRN_WRITE_VECTORS=1 cargo test -p cairn-identity-core --test vectors)",
        "vectors": c.vectors,
        "headers_files": c.headers,
    });
    let mut text = serde_json::to_string_pretty(&index).unwrap();
    text.push('\n');
    std::fs::write(root.join("index.json"), text).unwrap();
}

/// The verdict of one vector: the verified summary, or the failing step.
/// The message of a rejection is returned with the step for `CAIRN_VECTORS_VERBOSE=1`.
fn run(v: &Value) -> Result<Value, (Step, String)> {
    let h = &v["headers"];
    let chain = HeaderChain::from_file_bytes(
        &read(h["file"].as_str().unwrap()),
        network(h["network"].as_str().unwrap()),
        checkpoint(&h["checkpoint"]),
    )
    .unwrap_or_else(|e| panic!("{}: headers file does not load: {e}", v["name"]));
    let p = &v["policy"];
    let policy = VerifyPolicy {
        network: network(p["network"].as_str().unwrap()),
        min_confirmations: p["min_confirmations"].as_u64().unwrap() as u32,
        trusted_witnesses: p["trusted_witnesses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| PublicKey::from_hex(k.as_str().unwrap()).unwrap())
            .collect(),
    };
    let bytes = read(v["bundle"].as_str().unwrap());
    let step = |e: BundleError| {
        let s = e
            .step()
            .unwrap_or_else(|| panic!("{}: no verdict: {e}", v["name"]));
        (s, e.to_string())
    };
    let decode = |e: String| (Step::Decode, e);
    if v["type"] == "absence" {
        let bundle: AbsenceBundle =
            serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))?;
        let ok = verify_absence(&bundle, &chain, &policy).map_err(step)?;
        return Ok(
            serde_json::json!({"x_uid": ok.x_uid.to_string(), "confirmations": ok.confirmations}),
        );
    }
    let bundle = if v["form"] == "json" {
        serde_json::from_slice::<ProofBundle>(&bytes).map_err(|e| decode(e.to_string()))?
    } else {
        ProofBundle::from_bytes(&bytes).map_err(|e| decode(e.to_string()))?
    };
    let ok = verify(&bundle, &chain, &policy).map_err(step)?;
    let identity = cairn_identity_core::binding::Identity {
        x_uid: ok.x_uid,
        handle: ok.handle,
        key: ok.key,
        status: ok.status,
        seq: ok.seq,
        head: ok.head,
        last_epoch: 0,
    };
    Ok(vectors_gen::expected(&identity, ok.confirmations))
}

#[test]
fn every_vector_has_its_verdict_and_step() {
    if std::env::var("CAIRN_WRITE_VECTORS").as_deref() == Ok("1") {
        write_all();
    }
    let index: Value = serde_json::from_slice(&read("index.json")).unwrap();
    let vectors = index["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 100, "only {} vectors", vectors.len());
    let mut names = BTreeSet::new();
    let mut steps = BTreeSet::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        assert!(names.insert(name), "duplicate vector {name}");
        match (v["expect"].as_str().unwrap(), run(v)) {
            ("valid", Ok(result)) => assert_eq!(result, v["result"], "{name}: result"),
            ("valid", Err((step, e))) => {
                panic!("{name}: valid vector rejected at {}: {e}", step.as_str())
            }
            ("invalid", Ok(_)) => panic!("{name}: invalid vector accepted"),
            ("invalid", Err((step, e))) => {
                if std::env::var("CAIRN_VECTORS_VERBOSE").as_deref() == Ok("1") {
                    eprintln!("{name}: {}: {e}", step.as_str());
                }
                assert_eq!(step.as_str(), v["step"].as_str().unwrap(), "{name}: step");
                // Names say which step rejects them.
                assert!(
                    name.starts_with(step.as_str()),
                    "{name} is not named for {}",
                    step.as_str()
                );
                steps.insert(step);
            }
            (other, _) => panic!("{name}: unknown expectation {other}"),
        }
    }
    // Every step of §11.3 has at least one invalid vector.
    assert_eq!(steps.len(), 13, "steps covered: {steps:?}");
}

#[test]
fn every_headers_file_loads_or_fails_as_recorded() {
    let index: Value = serde_json::from_slice(&read("index.json")).unwrap();
    let files = index["headers_files"].as_array().unwrap();
    assert!(files.len() >= 15);
    for f in files {
        let name = f["name"].as_str().unwrap();
        let loaded = HeaderChain::from_file_bytes(
            &read(f["file"].as_str().unwrap()),
            network(f["network"].as_str().unwrap()),
            checkpoint(&f["checkpoint"]),
        );
        match (f["expect"].as_str().unwrap(), loaded) {
            ("valid", Ok(chain)) => {
                use cairn_identity_core::bundle::ChainView;
                assert_eq!(
                    u64::from(chain.tip_height().unwrap()),
                    f["tip_height"].as_u64().unwrap(),
                    "{name}"
                );
            }
            ("invalid", Err(_)) => {}
            (e, r) => panic!("{name}: expected {e}, got {:?}", r.map(|_| "a chain")),
        }
    }
}

/// The binary and JSON forms of each valid binary vector convert into each other.
#[test]
fn valid_binary_vectors_round_trip_through_json() {
    let index: Value = serde_json::from_slice(&read("index.json")).unwrap();
    for v in index["vectors"].as_array().unwrap() {
        if v["expect"] != "valid" || v["form"] != "binary" {
            continue;
        }
        let bytes = read(v["bundle"].as_str().unwrap());
        let b = ProofBundle::from_bytes(&bytes).unwrap();
        let back: ProofBundle = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back.to_bytes().unwrap(), bytes, "{}", v["name"]);
    }
}
