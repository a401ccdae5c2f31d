//! Proof bundle size and verification time at 1k / 100k / 1M bindings.
//! Ignored by default (it builds million-entry trees); run it optimized:
//!
//! ```text
//! CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo test -p cairn-identity-core --test bundle_scale -- --ignored --nocapture
//! ```
//!
//! The log and state tree are filled with synthetic entries around one real,
//! signed identity. The anchor sits in a synthetic block of 2,500 transactions
//! (a typical mainnet block) mined at regtest difficulty; the verifier's chain
//! view is an in-memory header chain, so the timing excludes header fetching.

mod bundle_support;

use std::time::{Duration, Instant};

use bitcoin::{MerkleBlock, Network, Transaction};
use bundle_support::{anchor_chain, anchor_tx, History, RegistryNode, ANCHOR_HEIGHT};
use cairn_identity_core::{
    binding::OpContext,
    bundle::{verify, ProofBundle, VerifyPolicy},
    epoch::EpochHeader,
    hash::sha256,
    state::state_key,
};
use nostr::Keys;

const SIZES: [u64; 3] = [1_000, 100_000, 1_000_000];
const BLOCK_TXS: usize = 2_500;
const RUNS: usize = 300;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "measurement; run with --ignored in an optimized build"]
fn bundle_size_and_verification_time() {
    for n in SIZES {
        let mut node = RegistryNode::new();
        let (alice, alice2, bob) = (Keys::generate(), Keys::generate(), Keys::generate());
        let filler = |node: &mut RegistryNode, range: std::ops::Range<u64>| {
            for i in range.clone() {
                node.log.append(&i.to_be_bytes()).unwrap();
            }
            node.state
                .apply(range.map(|i| (state_key(1 << 40 | i), Some(sha256(&i.to_le_bytes())))))
                .unwrap();
        };
        // The real identities sit inside the log (not on its short right edge)
        // and among n entries in the state tree.
        filler(&mut node, 0..n / 2);
        let ctx0 = OpContext {
            epoch: 0,
            height: 100,
        };
        let mut alice_h = node.bind(&alice, 11, "alice", ctx0);
        filler(&mut node, n / 2..3 * n / 4);
        let ctx1 = OpContext {
            epoch: 1,
            height: 110,
        };
        node.rotate(&mut alice_h, &alice, &alice2, 11, ctx1);
        let bob_h = node.bind(&bob, 22, "bob", ctx1);
        filler(&mut node, 3 * n / 4..n);
        let header = node.header(1, [0x42; 32]);
        let tx = anchor_tx(&header);
        let (merkle_block, view) = anchor_chain(&tx, BLOCK_TXS);

        let policy = VerifyPolicy {
            trusted_witnesses: vec![node.witness.public_key()],
            ..VerifyPolicy::new(Network::Regtest)
        };
        for (name, history, x_uid) in [("bind", &bob_h, 22), ("bind+rotate", &alice_h, 11)] {
            let bundle = assemble(&node, history, x_uid, header, &tx, &merkle_block);
            let bytes = bundle.to_bytes().unwrap();
            let verified = verify(&bundle, &view, &policy).unwrap();
            assert_eq!(verified.x_uid, x_uid);

            let mut times = Vec::with_capacity(RUNS);
            let mut with_decode = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                let t = Instant::now();
                verify(&bundle, &view, &policy).unwrap();
                times.push(t.elapsed());
                let t = Instant::now();
                let decoded = ProofBundle::from_bytes(&bytes).unwrap();
                verify(&decoded, &view, &policy).unwrap();
                with_decode.push(t.elapsed());
            }
            let (v, d) = (median(times), median(with_decode));
            println!(
                "n={n} {name}: bundle {} bytes (log paths {:?} hashes, state proof {} bytes, merkle block {} bytes); \
                 verify median {:.1} µs, decode+verify median {:.1} µs",
                bytes.len(),
                std::iter::once(&bundle.op_path)
                    .chain(&bundle.attestation_paths)
                    .map(|p| p.path.len())
                    .collect::<Vec<_>>(),
                bundle.state_proof.to_bytes().len(),
                bitcoin::consensus::serialize(&bundle.merkle_block).len(),
                v.as_secs_f64() * 1e6,
                d.as_secs_f64() * 1e6,
            );
            assert!(
                bytes.len() <= 4096,
                "bundle of {} bytes at n={n}",
                bytes.len()
            );
            assert!(v < Duration::from_millis(1), "verification {v:?} at n={n}");
        }
    }
}

fn assemble(
    node: &RegistryNode,
    history: &History,
    x_uid: u64,
    header: EpochHeader,
    tx: &Transaction,
    merkle_block: &MerkleBlock,
) -> ProofBundle {
    ProofBundle::assemble(
        &node.identity(x_uid),
        history.ops.clone(),
        history.attestations.clone(),
        history.head_index,
        &history.attestation_indexes,
        &node.log,
        &node.state,
        header,
        tx.clone(),
        ANCHOR_HEIGHT,
        merkle_block.clone(),
    )
    .unwrap()
}
