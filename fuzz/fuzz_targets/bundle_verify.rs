//! Arbitrary bytes as a proof bundle, in the binary form
//! (`ProofBundle::from_bytes`) and the JSON forms (`ProofBundle`,
//! `AbsenceBundle`), and every bundle that decodes through `verify` /
//! `verify_absence`. Must never panic.
//!
//! The chain view is the one the test vectors were generated against:
//! every headers file of `docs/vectors/index.json` is loaded once, and a
//! bundle is verified against the chain (and policy) of the vector whose
//! chain holds its block, so mutated vectors get past the chain checks and
//! reach every later step. A bundle whose block is on no chain is checked
//! against the first one.
//!
//! The binary form is canonical (`docs/identity-protocol.md` §11.2): what
//! decodes re-encodes to the same bytes.

#![no_main]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use bitcoin::block::Header;
use bitcoin::consensus::deserialize;
use bitcoin::{BlockHash, Network};
use cairn_identity_core::bundle::{
    verify, verify_absence, AbsenceBundle, Checkpoint, HeaderChain, ProofBundle, VerifyPolicy,
};
use libfuzzer_sys::fuzz_target;
use nostr::PublicKey;
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors");

struct Chains {
    views: Vec<(HeaderChain, VerifyPolicy)>,
    by_block: HashMap<BlockHash, usize>,
}

fn network(name: &str) -> Network {
    match name {
        "bitcoin" => Network::Bitcoin,
        "testnet" => Network::Testnet,
        "testnet4" => Network::Testnet4,
        "signet" => Network::Signet,
        _ => Network::Regtest,
    }
}

fn chains() -> &'static Chains {
    static CHAINS: OnceLock<Chains> = OnceLock::new();
    CHAINS.get_or_init(|| {
        let dir = Path::new(VECTORS);
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
                .expect("index.json is JSON");
        let mut chains = Chains {
            views: Vec::new(),
            by_block: HashMap::new(),
        };
        for v in index["vectors"].as_array().expect("vectors") {
            let h = &v["headers"];
            let bytes = std::fs::read(dir.join(h["file"].as_str().unwrap())).unwrap();
            let checkpoint = (!h["checkpoint"].is_null()).then(|| Checkpoint {
                height: h["checkpoint"]["height"].as_u64().unwrap() as u32,
                hash: h["checkpoint"]["hash"].as_str().unwrap().parse().unwrap(),
            });
            let Ok(chain) = HeaderChain::from_file_bytes(
                &bytes,
                network(h["network"].as_str().unwrap()),
                checkpoint,
            ) else {
                continue;
            };
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
            let at = chains.views.len();
            for c in bytes.chunks_exact(80) {
                let header: Header = deserialize(c).unwrap();
                chains.by_block.entry(header.block_hash()).or_insert(at);
            }
            chains.views.push((chain, policy));
        }
        assert!(!chains.views.is_empty(), "no headers file loaded");
        chains
    })
}

fn view(block: BlockHash) -> &'static (HeaderChain, VerifyPolicy) {
    let c = chains();
    &c.views[c.by_block.get(&block).copied().unwrap_or(0)]
}

fn check(bundle: &ProofBundle) {
    let (chain, policy) = view(bundle.merkle_block.header.block_hash());
    let _ = verify(bundle, chain, policy);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = ProofBundle::from_bytes(data) {
        let again = bundle.to_bytes().expect("a decoded bundle encodes");
        assert_eq!(again, data, "the binary form is canonical");
        check(&bundle);
    }
    if let Ok(bundle) = serde_json::from_slice::<ProofBundle>(data) {
        // The JSON form carries a bundle the binary form can hold: its
        // encoding (which drops witness data) decodes and re-encodes as is.
        if let Ok(bytes) = bundle.to_bytes() {
            let decoded = ProofBundle::from_bytes(&bytes).expect("an encoded bundle decodes");
            assert_eq!(decoded.to_bytes().as_ref(), Ok(&bytes));
        }
        check(&bundle);
    }
    if let Ok(bundle) = serde_json::from_slice::<AbsenceBundle>(data) {
        let (chain, policy) = view(bundle.merkle_block.header.block_hash());
        let _ = verify_absence(&bundle, chain, policy);
    }
});
