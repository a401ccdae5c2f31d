//! The log against the Certificate Transparency reference implementation's SHA-256 vectors.

use cairn_identity_core::{
    log::{empty_root, leaf_hash, verify_consistency, InclusionProof, MemoryLogStore, MerkleLog},
    Hash,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    inputs: Vec<String>,
    empty_root: String,
    roots: Vec<String>,
    inclusion: Vec<InclusionProof>,
    consistency: Vec<Consistency>,
}

#[derive(Deserialize)]
struct Consistency {
    first: u64,
    second: u64,
    proof: Vec<String>,
}

fn h(s: &str) -> Hash {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).expect("fixture hash");
    out
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("fixtures/rfc6962_ct_vectors.json")).expect("fixture")
}

fn log_of(v: &Vectors) -> MerkleLog<MemoryLogStore> {
    let mut log = MerkleLog::new(MemoryLogStore::new());
    for input in &v.inputs {
        log.append(&hex::decode(input).unwrap()).unwrap();
    }
    log
}

#[test]
fn roots_match_after_each_append_and_historically() {
    let v = vectors();
    assert_eq!(empty_root(), h(&v.empty_root));
    let mut log = MerkleLog::new(MemoryLogStore::new());
    assert_eq!(log.root().unwrap(), h(&v.empty_root));
    for (i, input) in v.inputs.iter().enumerate() {
        log.append(&hex::decode(input).unwrap()).unwrap();
        assert_eq!(
            log.root().unwrap(),
            h(&v.roots[i]),
            "root after {} leaves",
            i + 1
        );
    }
    for (i, root) in v.roots.iter().enumerate() {
        assert_eq!(log.root_at(i as u64 + 1).unwrap(), h(root));
    }
}

#[test]
fn audit_paths_match_and_verify() {
    let v = vectors();
    let log = log_of(&v);
    for expected in &v.inclusion {
        let proof = log
            .inclusion_proof(expected.leaf_index, expected.tree_size)
            .unwrap();
        assert_eq!(&proof, expected);
        let leaf = leaf_hash(&hex::decode(&v.inputs[expected.leaf_index as usize]).unwrap());
        let root = h(&v.roots[expected.tree_size as usize - 1]);
        proof.verify(&leaf, &root).unwrap();
        // The same path does not prove a neighbouring leaf.
        let other = (expected.leaf_index as usize + 1) % v.inputs.len();
        let other_leaf = leaf_hash(&hex::decode(&v.inputs[other]).unwrap());
        assert!(proof.verify(&other_leaf, &root).is_err());
    }
}

#[test]
fn consistency_proofs_match_and_verify() {
    let v = vectors();
    let log = log_of(&v);
    for expected in &v.consistency {
        let proof = log
            .consistency_proof(expected.first, expected.second)
            .unwrap();
        let want: Vec<Hash> = expected.proof.iter().map(|s| h(s)).collect();
        assert_eq!(proof, want, "{} -> {}", expected.first, expected.second);
        let r1 = h(&v.roots[expected.first as usize - 1]);
        let r2 = h(&v.roots[expected.second as usize - 1]);
        verify_consistency(expected.first, expected.second, &r1, &r2, &proof).unwrap();
        if expected.first != expected.second {
            assert!(verify_consistency(expected.first, expected.second, &r2, &r1, &proof).is_err());
        }
    }
}
