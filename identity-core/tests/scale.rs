//! Measurements at 1k / 100k / 1M entries. Ignored by default because they take
//! seconds and hundreds of MB; run them optimized:
//!
//! ```text
//! CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo test -p cairn-identity-core --test scale -- --ignored --nocapture
//! ```
//!
//! They still assert the size and latency budgets, so a regression fails loudly.
//! The numbers for `docs/benchmarks.md` should come from proper benchmarks; these
//! are a quick check that the data structures are in the right league.

use std::time::{Duration, Instant};

use cairn_identity_core::{
    log::{leaf_hash, MemoryLogStore, MerkleLog},
    state::{state_key, MemoryStateStore, SparseMerkleTree, StateProof},
};

const SIZES: [u64; 3] = [1_000, 100_000, 1_000_000];
const SAMPLES: u64 = 1_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Spreads sample indices over the whole range without a random number generator.
fn sample(i: u64, n: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n
}

#[test]
#[ignore = "measurement; run with --ignored in an optimized build"]
fn log_at_scale() {
    for n in SIZES {
        let mut log = MerkleLog::new(MemoryLogStore::new());
        let start = Instant::now();
        for i in 0..n {
            log.append(&i.to_be_bytes()).unwrap();
        }
        let append = start.elapsed();
        let root = log.root().unwrap();

        let (mut gen, mut ver, mut max_len) = (Vec::new(), Vec::new(), 0);
        for s in 0..SAMPLES {
            let i = sample(s, n);
            let t = Instant::now();
            let proof = log.inclusion_proof(i, n).unwrap();
            gen.push(t.elapsed());
            let leaf = leaf_hash(&i.to_be_bytes());
            let t = Instant::now();
            proof.verify(&leaf, &root).unwrap();
            ver.push(t.elapsed());
            max_len = max_len.max(proof.path.len());
        }
        let t = Instant::now();
        let consistency = log.consistency_proof(n / 3, n).unwrap();
        let cons = t.elapsed();
        let (gen, ver) = (median(gen), median(ver));
        println!(
            "log n={n}: append {:.0} leaves/s; inclusion proof {} hashes = {} bytes (+16 for index/size); \
             generate median {gen:?}; verify median {ver:?}; consistency {}→{n}: {} hashes in {cons:?}",
            n as f64 / append.as_secs_f64(),
            max_len,
            max_len * 32,
            n / 3,
            consistency.len(),
        );
        assert!(max_len <= 20, "audit path too long at {n}");
        assert!(
            gen < Duration::from_millis(1),
            "proof generation {gen:?} at {n}"
        );
    }
}

#[test]
#[ignore = "measurement; run with --ignored in an optimized build"]
fn state_tree_at_scale() {
    for n in SIZES {
        let mut tree = SparseMerkleTree::new(MemoryStateStore::new());
        let start = Instant::now();
        tree.apply((0..n).map(|i| (state_key(i), Some(state_key(i ^ u64::MAX)))))
            .unwrap();
        let bulk = start.elapsed();

        // Epoch-sized batches on top of the full tree.
        let start = Instant::now();
        for b in 0..10u64 {
            tree.apply((0..1_000).map(|j| {
                let id = sample(b * 1_000 + j, n);
                (state_key(id), Some(state_key(id ^ b)))
            }))
            .unwrap();
        }
        let batched = start.elapsed() / 10_000;
        let root = tree.root();

        let (mut gen, mut ver, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..SAMPLES {
            // Alternate members and non-members.
            let id = if s % 2 == 0 { sample(s, n) } else { n + s };
            let key = state_key(id);
            let t = Instant::now();
            let proof = tree.prove(&key).unwrap();
            gen.push(t.elapsed());
            let bytes = proof.to_bytes();
            sizes.push(bytes.len());
            let t = Instant::now();
            let decoded = StateProof::from_bytes(&bytes).unwrap();
            let value = decoded.verify(&root, &key).unwrap();
            ver.push(t.elapsed());
            assert_eq!(value.is_some(), s % 2 == 0);
        }
        sizes.sort();
        let (gen, ver) = (median(gen), median(ver));
        let (med, max) = (sizes[sizes.len() / 2], sizes[sizes.len() - 1]);
        println!(
            "state n={n}: bulk insert {:.0} keys/s; updates in 1k batches {batched:?}/key; \
             proof bytes median {med} max {max}; generate median {gen:?}; decode+verify median {ver:?}; \
             nodes stored {}",
            n as f64 / bulk.as_secs_f64(),
            tree.store().len(),
        );
        assert!(max <= 1_200, "state proof too large at {n}: {max}");
        assert!(gen < Duration::from_millis(1));
        assert!(ver < Duration::from_millis(1));
    }
}
