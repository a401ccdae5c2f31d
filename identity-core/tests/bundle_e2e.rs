//! Proof bundles end to end on a real (in-process) regtest chain: bindings go
//! into the log and state tree, an epoch header is anchored by a transaction
//! signed by testchain's wallet and mined, `gettxoutproof` proves it, and the
//! bundle verifies against headers from RPC and from a headers file. Then every
//! field and every byte of the bundle is changed, and each change must fail.

mod bundle_support;

use std::time::Duration;

use anyhow::Context as _;
use bitcoin::{
    absolute::LockTime,
    block::Header,
    consensus::{deserialize, serialize},
    hashes::Hash as _,
    merkle_tree::PartialMerkleTree,
    transaction::Version,
    Amount, BlockHash, MerkleBlock, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid, Witness,
};
use bundle_support::{History, RegistryNode};
use cairn_identity_core::{
    binding::{OpContext, Status, WitnessAttestation},
    bundle::{
        verify, BundleError, ChainView, HeaderChain, ProofBundle, RpcChainView, VerifyPolicy,
    },
    state::Terminal,
};
use cairn_testchain::{wallet::InternalWallet, TestChain};
use nostr::{EventBuilder, Keys, Kind, Timestamp};
use serde_json::json;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const ALICE: u64 = 11;
const BOB: u64 = 22;

struct Fixture {
    chain: TestChain,
    node: RegistryNode,
    alice: Keys,
    alice2: Keys,
    /// Head is a rotation: bind → rotate, no attestation path.
    alice_bundle: ProofBundle,
    /// Head is a bind: with the attestation's log path.
    bob_bundle: ProofBundle,
    anchor_height: u32,
}

fn policy() -> VerifyPolicy {
    VerifyPolicy::new(Network::Regtest)
}

async fn headers_from_rpc(chain: &TestChain) -> anyhow::Result<Vec<Header>> {
    let tip = chain.tip().await?.height;
    let mut headers = Vec::new();
    for h in 0..=tip {
        let hash = chain.rpc("getblockhash", vec![json!(h)]).await?;
        let hex = chain
            .rpc("getblockheader", vec![hash, json!(false)])
            .await?;
        let bytes = hex::decode(hex.as_str().context("header hex")?)?;
        headers.push(deserialize(&bytes)?);
    }
    Ok(headers)
}

fn rpc_view(chain: &TestChain) -> anyhow::Result<RpcChainView> {
    Ok(RpcChainView::new(
        chain.rpc_url(),
        chain.rpc_user(),
        chain.rpc_password(),
        Duration::from_secs(30),
    )?)
}

/// Verifies on a blocking thread: the RPC view blocks, and the chain's RPC
/// server runs on this runtime.
async fn verify_rpc(
    chain: &TestChain,
    bundle: &ProofBundle,
    policy: VerifyPolicy,
) -> anyhow::Result<Result<cairn_identity_core::bundle::VerifiedIdentity, BundleError>> {
    let view = rpc_view(chain)?;
    let bundle = bundle.clone();
    Ok(tokio::task::spawn_blocking(move || verify(&bundle, &view, &policy)).await?)
}

async fn fixture() -> anyhow::Result<Fixture> {
    let chain = TestChain::start().await?;
    let mut node = RegistryNode::new();
    let (alice, alice2, bob) = (Keys::generate(), Keys::generate(), Keys::generate());

    // Epoch 0: alice and a crowd bind. Epoch 1: alice rotates, bob binds.
    let ctx0 = OpContext {
        epoch: 0,
        height: 100,
    };
    let mut alice_history = node.bind(&alice, ALICE, "alice", ctx0);
    for i in 0..40 {
        node.bind(&Keys::generate(), 1000 + i, &format!("user{i}"), ctx0);
    }
    let ctx1 = OpContext {
        epoch: 1,
        height: 110,
    };
    node.rotate(&mut alice_history, &alice, &alice2, ALICE, ctx1);
    let bob_history = node.bind(&bob, BOB, "bob", ctx1);
    let header = node.header(1, [0x42; 32]);

    // The anchor: spends a coin of testchain's one-key wallet, really signed.
    let wallet = InternalWallet::new();
    let coin = chain
        .fund(&wallet.address(), Amount::from_sat(100_000))
        .await?;
    let prevout = TxOut {
        value: Amount::from_sat(100_000),
        script_pubkey: wallet.script_pubkey(),
    };
    let unsigned = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut {
                value: Amount::ZERO,
                script_pubkey: header.anchor_script(),
            },
            TxOut {
                value: Amount::from_sat(99_000),
                script_pubkey: wallet.script_pubkey(),
            },
        ],
    };
    let anchor = wallet.sign(unsigned, &[prevout])?;
    let sent = chain
        .rpc(
            "sendrawtransaction",
            vec![json!(hex::encode(serialize(&anchor)))],
        )
        .await?;
    assert_eq!(
        sent.as_str(),
        Some(anchor.compute_txid().to_string().as_str())
    );
    let blocks = chain.mine(6, &wallet.address()).await?;
    let block = blocks[0];
    let info = chain
        .rpc("getblockheader", vec![json!(block.to_string())])
        .await?;
    let anchor_height = info["height"].as_u64().context("height")? as u32;
    let proof = chain
        .rpc(
            "gettxoutproof",
            vec![
                json!([anchor.compute_txid().to_string()]),
                json!(block.to_string()),
            ],
        )
        .await?;
    let merkle_block: MerkleBlock = deserialize(&hex::decode(proof.as_str().context("proof")?)?)?;

    let assemble = |history: &History, x_uid| {
        ProofBundle::assemble(
            &node.identity(x_uid),
            history.ops.clone(),
            history.attestations.clone(),
            history.head_index,
            &history.attestation_indexes,
            &node.log,
            &node.state,
            header,
            anchor.clone(),
            anchor_height,
            merkle_block.clone(),
        )
    };
    let alice_bundle = assemble(&alice_history, ALICE)?;
    let bob_bundle = assemble(&bob_history, BOB)?;
    Ok(Fixture {
        chain,
        node,
        alice,
        alice2,
        alice_bundle,
        bob_bundle,
        anchor_height,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_verifies_and_every_change_fails() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run_main())
        .await
        .context("test timed out")?
}

async fn run_main() -> anyhow::Result<()> {
    let f = fixture().await?;

    // Headers from RPC, and the same headers through a headers file.
    let headers = headers_from_rpc(&f.chain).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("regtest.headers");
    let file_chain = HeaderChain::from_genesis(Network::Regtest, headers.clone())?;
    std::fs::write(&path, file_chain.to_file_bytes())?;
    let view = HeaderChain::load(&path, Network::Regtest, None)?;
    assert_eq!(view.tip_height()?, f.anchor_height + 5);

    for (bundle, x_uid) in [(&f.alice_bundle, ALICE), (&f.bob_bundle, BOB)] {
        let from_file = verify(bundle, &view, &policy())?;
        let from_rpc = verify_rpc(&f.chain, bundle, policy()).await??;
        assert_eq!(from_file, from_rpc);
        assert_eq!(from_file.x_uid, x_uid);
        assert_eq!(from_file.status, Status::Bound);
        assert_eq!(from_file.confirmations, 6);
        assert_eq!(from_file.block_height, f.anchor_height);
        assert_eq!(from_file.witnesses, vec![f.node.witness.public_key()]);
        assert_eq!(from_file.anchor_txid, bundle.anchor_tx.compute_txid());
        assert_eq!(from_file.header_hash, bundle.epoch_header.hash());
        // The binary form round-trips and stays small.
        let bytes = bundle.to_bytes()?;
        assert!(bytes.len() < 4096, "bundle is {} bytes", bytes.len());
        assert_eq!(ProofBundle::from_bytes(&bytes)?, *bundle);
    }
    let alice = verify(&f.alice_bundle, &view, &policy())?;
    assert_eq!(alice.key, Some(f.alice2.public_key()));
    assert_eq!(alice.handle, "alice");
    assert_eq!(alice.seq, 1);

    // Confirmations: exactly 6 here; asking for 7 fails, in both views.
    let strict = VerifyPolicy {
        min_confirmations: 7,
        ..policy()
    };
    assert!(matches!(
        verify(&f.bob_bundle, &view, &strict),
        Err(BundleError::InsufficientConfirmations {
            confirmations: 6,
            required: 7
        })
    ));
    assert!(matches!(
        verify_rpc(&f.chain, &f.bob_bundle, strict).await?,
        Err(BundleError::InsufficientConfirmations { .. })
    ));
    // A view that stops at the anchor block sees one confirmation.
    let short = HeaderChain::from_genesis(
        Network::Regtest,
        headers[..=f.anchor_height as usize].to_vec(),
    )?;
    assert!(matches!(
        verify(&f.bob_bundle, &short, &policy()),
        Err(BundleError::InsufficientConfirmations {
            confirmations: 1,
            ..
        })
    ));
    // A headers file that does not reach the anchor block.
    let behind = HeaderChain::from_genesis(
        Network::Regtest,
        headers[..f.anchor_height as usize].to_vec(),
    )?;
    assert!(matches!(
        verify(&f.bob_bundle, &behind, &policy()),
        Err(BundleError::NotOnChain(_))
    ));
    // Wrong network rules: regtest difficulty is far above mainnet's limit.
    assert!(matches!(
        verify(&f.bob_bundle, &view, &VerifyPolicy::new(Network::Bitcoin)),
        Err(BundleError::BadBits)
    ));

    // Pinned witnesses: the right key passes, any other is refused.
    let pinned = VerifyPolicy {
        trusted_witnesses: vec![f.node.witness.public_key()],
        ..policy()
    };
    verify(&f.bob_bundle, &view, &pinned)?;
    let other = VerifyPolicy {
        trusted_witnesses: vec![Keys::generate().public_key()],
        ..policy()
    };
    for bundle in [&f.alice_bundle, &f.bob_bundle] {
        assert!(matches!(
            verify(bundle, &view, &other),
            Err(BundleError::UntrustedWitness { .. })
        ));
    }

    decoder_is_strict(&f.bob_bundle)?;
    json_round_trips(&f.alice_bundle, &view)?;
    field_mutations(&f, &view)?;
    byte_flips(&f.alice_bundle, &view)?;
    byte_flips(&f.bob_bundle, &view)?;
    f.chain.stop().await?;
    Ok(())
}

/// Every truncation, appended byte, wrong magic and wrong version is refused.
fn decoder_is_strict(bundle: &ProofBundle) -> anyhow::Result<()> {
    use cairn_identity_core::bundle::{DecodeError, BUNDLE_MAGIC};
    let bytes = bundle.to_bytes()?;
    assert_eq!(&bytes[..4], BUNDLE_MAGIC);
    for len in 0..bytes.len() {
        assert!(
            ProofBundle::from_bytes(&bytes[..len]).is_err(),
            "prefix {len} decodes"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        ProofBundle::from_bytes(&longer),
        Err(DecodeError::TrailingBytes)
    );
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(ProofBundle::from_bytes(&magic), Err(DecodeError::BadMagic));
    let mut version = bytes.clone();
    version[4] = 2;
    assert_eq!(
        ProofBundle::from_bytes(&version),
        Err(DecodeError::UnsupportedVersion(2))
    );
    Ok(())
}

/// The JSON form carries the same bundle.
fn json_round_trips(bundle: &ProofBundle, view: &HeaderChain) -> anyhow::Result<()> {
    let json = serde_json::to_value(bundle)?;
    assert_eq!(json["version"], 1);
    assert_eq!(json["ops"][0]["kind"], 3470);
    let back: ProofBundle = serde_json::from_value(json.clone())?;
    assert_eq!(&back, bundle);
    verify(&back, view, &policy())?;
    let mut unknown = json;
    unknown["extra"] = json!(1);
    assert!(serde_json::from_value::<ProofBundle>(unknown).is_err());
    Ok(())
}

/// Every byte of the canonical encoding, flipped (low bit, then high bit):
/// each must fail to decode or fail to verify.
fn byte_flips(bundle: &ProofBundle, view: &HeaderChain) -> anyhow::Result<()> {
    let bytes = bundle.to_bytes()?;
    let (mut undecodable, mut rejected) = (0, 0);
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            match ProofBundle::from_bytes(&b) {
                Err(_) => undecodable += 1,
                Ok(decoded) => {
                    let result = verify(&decoded, view, &policy());
                    assert!(
                        result.is_err(),
                        "flipping byte {i} with {mask:#04x} still verifies"
                    );
                    rejected += 1;
                }
            }
        }
    }
    assert_eq!(undecodable + rejected, bytes.len() * 2);
    // Most flips land in hashes and signatures, which decode fine: the
    // verifier, not the parser, must be what catches them.
    assert!(rejected > bytes.len(), "{rejected} of {}", bytes.len() * 2);
    println!(
        "{} bytes: {undecodable} flips undecodable, {rejected} decoded and rejected",
        bytes.len()
    );
    Ok(())
}

type Mutation = (&'static str, Box<dyn Fn(&mut ProofBundle)>);

fn flip(bytes: &mut [u8], i: usize) {
    bytes[i] ^= 0x01;
}

/// Changes each field of the bundle (and each part of the composite ones) and
/// checks that verification fails.
fn field_mutations(f: &Fixture, view: &HeaderChain) -> anyhow::Result<()> {
    let alice = f.alice.clone();
    let witness = f.node.witness.clone();
    let stranger = Keys::generate();
    let mut mutations: Vec<Mutation> = Vec::new();

    // record: every part of §6.1.
    for (name, at) in [
        ("record version", 0),
        ("record status", 1),
        ("record x_uid", 9),
        ("record seq", 17),
        ("record head", 18),
        ("record key", 50),
        ("record handle length", 82),
        ("record handle", 83),
    ] {
        mutations.push((name, Box::new(move |b| flip(&mut b.record, at))));
    }
    mutations.push((
        "record truncated",
        Box::new(|b| {
            b.record.pop();
        }),
    ));
    mutations.push(("record extended", Box::new(|b| b.record.push(0))));

    // ops
    mutations.push(("ops removed", Box::new(|b| b.ops.clear())));
    mutations.push((
        "first op dropped",
        Box::new(|b| {
            b.ops.remove(0);
        }),
    ));
    mutations.push((
        "last op dropped",
        Box::new(|b| {
            b.ops.pop();
        }),
    ));
    mutations.push(("op duplicated", Box::new(|b| b.ops.push(b.ops[0].clone()))));
    mutations.push(("op content", Box::new(|b| b.ops[0].content.push('x'))));
    mutations.push((
        "op created_at",
        Box::new(|b| b.ops[0].created_at = Timestamp::from(b.ops[0].created_at.as_secs() + 1)),
    ));
    mutations.push((
        "op signature",
        Box::new(|b| {
            let last = b.ops.len() - 1;
            let mut sig = *b.ops[last].sig.as_ref();
            sig[5] ^= 1;
            b.ops[last].sig = nostr::secp256k1::schnorr::Signature::from_slice(&sig).unwrap();
        }),
    ));
    mutations.push((
        "op re-signed with other content",
        Box::new(move |b| {
            // A valid event by the same key, but not the one the record's head names.
            let e = &b.ops[b.ops.len() - 1];
            let forged = EventBuilder::new(e.kind, "changed")
                .tags(e.tags.clone())
                .sign_with_keys(&alice)
                .unwrap();
            let last = b.ops.len() - 1;
            b.ops[last] = forged;
        }),
    ));
    mutations.push((
        "op signed by a stranger",
        Box::new(move |b| {
            let e = &b.ops[0];
            b.ops[0] = EventBuilder::new(e.kind, "")
                .tags(e.tags.clone())
                .sign_with_keys(&stranger)
                .unwrap();
        }),
    ));

    // attestations
    mutations.push(("attestations removed", Box::new(|b| b.attestations.clear())));
    mutations.push((
        "attestation duplicated",
        Box::new(|b| b.attestations.push(b.attestations[0].clone())),
    ));
    mutations.push((
        "attestation content",
        Box::new(|b| b.attestations[0].content.push('x')),
    ));
    mutations.push((
        "attestation kind",
        Box::new(|b| b.attestations[0].kind = Kind::Custom(3470)),
    ));
    let w = witness.clone();
    mutations.push((
        "attestation re-signed with another post",
        Box::new(move |b| {
            let (mut att, _) = WitnessAttestation::from_event(&b.attestations[0]).unwrap();
            att.post_id += 1;
            b.attestations[0] = att.to_event_builder().sign_with_keys(&w).unwrap();
        }),
    ));
    let other_witness = Keys::generate();
    mutations.push((
        "attestation by another witness",
        Box::new(move |b| {
            let (att, _) = WitnessAttestation::from_event(&b.attestations[0]).unwrap();
            b.attestations[0] = att
                .to_event_builder()
                .sign_with_keys(&other_witness)
                .unwrap();
        }),
    ));

    // log paths
    mutations.push(("op leaf index +1", Box::new(|b| b.op_path.leaf_index += 1)));
    mutations.push(("op leaf index -1", Box::new(|b| b.op_path.leaf_index -= 1)));
    mutations.push(("op path hash", Box::new(|b| b.op_path.path[0][0] ^= 1)));
    mutations.push((
        "op path last hash",
        Box::new(|b| {
            let n = b.op_path.path.len() - 1;
            b.op_path.path[n][31] ^= 1
        }),
    ));
    mutations.push((
        "op path extended",
        Box::new(|b| b.op_path.path.push([0; 32])),
    ));
    mutations.push((
        "op path shortened",
        Box::new(|b| {
            b.op_path.path.pop();
        }),
    ));
    mutations.push((
        "attestation paths removed",
        Box::new(|b| b.attestation_paths.clear()),
    ));
    mutations.push((
        "attestation path duplicated",
        Box::new(|b| b.attestation_paths.push(b.attestation_paths[0].clone())),
    ));
    mutations.push((
        "attestation leaf index +1",
        Box::new(|b| b.attestation_paths[0].leaf_index += 1),
    ));
    mutations.push((
        "attestation path is the op's",
        Box::new(|b| b.attestation_paths[0] = b.op_path.clone()),
    ));
    mutations.push((
        "attestation path hash",
        Box::new(|b| b.attestation_paths[0].path[1][7] ^= 1),
    ));
    mutations.push((
        "attestation path shortened",
        Box::new(|b| {
            b.attestation_paths[0].path.pop();
        }),
    ));

    // state proof
    mutations.push((
        "state sibling",
        Box::new(|b| b.state_proof.siblings[0][0] ^= 1),
    ));
    mutations.push((
        "state sibling dropped",
        Box::new(|b| {
            b.state_proof.siblings.pop();
        }),
    ));
    mutations.push((
        "state terminal value",
        Box::new(|b| {
            if let Terminal::Leaf { value, .. } = &mut b.state_proof.terminal {
                value[0] ^= 1
            }
        }),
    ));
    mutations.push((
        "state terminal emptied",
        Box::new(|b| b.state_proof.terminal = Terminal::Empty),
    ));

    // epoch header: every field.
    mutations.push(("header version", Box::new(|b| b.epoch_header.version = 1)));
    mutations.push(("header epoch", Box::new(|b| b.epoch_header.epoch += 1)));
    mutations.push((
        "header prev header hash",
        Box::new(|b| b.epoch_header.prev_header_hash = [0; 32]),
    ));
    mutations.push((
        "header log size",
        Box::new(|b| b.epoch_header.log_size += 1),
    ));
    mutations.push((
        "header log root",
        Box::new(|b| b.epoch_header.log_root[3] ^= 1),
    ));
    mutations.push((
        "header state root",
        Box::new(|b| b.epoch_header.state_root[3] ^= 1),
    ));

    // anchor transaction
    mutations.push((
        "tx version",
        Box::new(|b| b.anchor_tx.version = Version::ONE),
    ));
    mutations.push((
        "tx locktime",
        Box::new(|b| b.anchor_tx.lock_time = LockTime::from_consensus(1)),
    ));
    mutations.push((
        "tx input outpoint",
        Box::new(|b| b.anchor_tx.input[0].previous_output.vout += 1),
    ));
    mutations.push((
        "tx input sequence",
        Box::new(|b| b.anchor_tx.input[0].sequence = Sequence::MAX),
    ));
    mutations.push(("tx inputs removed", Box::new(|b| b.anchor_tx.input.clear())));
    mutations.push((
        "tx change value",
        Box::new(|b| b.anchor_tx.output[1].value = Amount::from_sat(1)),
    ));
    mutations.push((
        "tx op_return",
        Box::new(|b| {
            let mut s = b.anchor_tx.output[0].script_pubkey.to_bytes();
            s[39] ^= 1;
            b.anchor_tx.output[0].script_pubkey = ScriptBuf::from_bytes(s);
        }),
    ));
    mutations.push((
        "tx second anchor output",
        Box::new(|b| {
            let again = b.anchor_tx.output[0].clone();
            b.anchor_tx.output.push(again);
        }),
    ));
    mutations.push((
        "tx anchor output removed",
        Box::new(|b| {
            b.anchor_tx.output.remove(0);
        }),
    ));

    // block height
    mutations.push(("block height +1", Box::new(|b| b.block_height += 1)));
    mutations.push(("block height -1", Box::new(|b| b.block_height -= 1)));

    // merkle block: header fields and the partial tree.
    mutations.push((
        "block version",
        Box::new(|b| b.merkle_block.header.version = bitcoin::block::Version::from_consensus(1)),
    ));
    mutations.push((
        "block prev hash",
        Box::new(|b| b.merkle_block.header.prev_blockhash = BlockHash::all_zeros()),
    ));
    mutations.push((
        "block merkle root",
        Box::new(|b| b.merkle_block.header.merkle_root = bitcoin::TxMerkleNode::all_zeros()),
    ));
    mutations.push(("block time", Box::new(|b| b.merkle_block.header.time += 1)));
    mutations.push((
        "block bits",
        Box::new(|b| {
            b.merkle_block.header.bits = bitcoin::CompactTarget::from_consensus(0x1d00ffff)
        }),
    ));
    mutations.push((
        "block nonce",
        Box::new(|b| b.merkle_block.header.nonce ^= 1),
    ));
    mutations.push((
        "partial tree of another tx",
        Box::new(|b| {
            let mut txids = Vec::new();
            let mut idx = Vec::new();
            b.merkle_block
                .extract_matches(&mut txids, &mut idx)
                .unwrap();
            let other = Txid::from_byte_array([9; 32]);
            b.merkle_block.txn = PartialMerkleTree::from_txids(&[txids[0], other], &[false, true]);
        }),
    ));
    mutations.push((
        "partial tree matching everything",
        Box::new(|b| {
            let n = b.merkle_block.txn.num_transactions();
            let hashes = b.merkle_block.txn.hashes().clone();
            // Rebuild the tree over the block's real txids (a 2-tx regtest block) with both matched.
            assert_eq!(n, 2);
            let txids: Vec<Txid> = hashes
                .iter()
                .map(|h| Txid::from_byte_array(h.to_byte_array()))
                .collect();
            b.merkle_block.txn = PartialMerkleTree::from_txids(&txids, &[true, true]);
        }),
    ));

    let mut count = 0;
    for (bundle, name_of) in [(&f.alice_bundle, "alice"), (&f.bob_bundle, "bob")] {
        verify(bundle, view, &policy())?;
        for (name, mutate) in &mutations {
            let mut b = bundle.clone();
            mutate(&mut b);
            assert_ne!(&b, bundle, "{name_of}: mutation {name} changed nothing");
            let result = verify(&b, view, &policy());
            assert!(result.is_err(), "{name_of}: mutation {name} still verifies");
            if std::env::var_os("BUNDLE_SHOW_ERRORS").is_some() {
                println!("{name_of}: {name}: {}", result.unwrap_err());
            }
            count += 1;
        }
    }
    println!("{count} field mutations rejected");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_byte_transaction_is_rejected() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let f = fixture().await?;
        let view = HeaderChain::from_genesis(Network::Regtest, headers_from_rpc(&f.chain).await?)?;

        // A 64-byte transaction: 1 input, 1 output with a 4-byte script.
        let t = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array([3; 32]), 0),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1),
                script_pubkey: ScriptBuf::from_bytes(vec![0x51, 0x51, 0x51, 0x51]),
            }],
        };
        let raw = serialize(&t);
        assert_eq!(raw.len(), 64);
        // Its txid is also the inner node over two "txids" made of its halves:
        // a proof for a two-transaction block could show it as a leaf.
        let halves = [Txid::from_slice(&raw[..32])?, Txid::from_slice(&raw[32..])?];
        let two = PartialMerkleTree::from_txids(&halves, &[true, false]);
        let (mut m, mut i) = (Vec::new(), Vec::new());
        let inner = two.extract_matches(&mut m, &mut i)?;
        assert_eq!(inner.to_byte_array(), t.compute_txid().to_byte_array());

        // A block whose one "transaction" is that inner node, really mined.
        let mut header = f.bob_bundle.merkle_block.header;
        header.merkle_root = inner;
        while header.validate_pow(header.target()).is_err() {
            header.nonce += 1;
        }
        let block = MerkleBlock {
            header,
            txn: PartialMerkleTree::from_txids(&[t.compute_txid()], &[true]),
        };
        // The partial tree alone accepts it: the length rule is what stops it.
        block.extract_matches(&mut m, &mut i)?;
        assert_eq!(m, vec![t.compute_txid()]);

        let mut bundle = f.bob_bundle.clone();
        bundle.anchor_tx = t;
        bundle.merkle_block = block;
        assert!(matches!(
            verify(&bundle, &view, &policy()),
            Err(BundleError::SixtyFourByteTransaction)
        ));
        f.chain.stop().await?;
        anyhow::Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread")]
async fn anchor_block_reorged_out_fails() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let f = fixture().await?;
        verify_rpc(&f.chain, &f.bob_bundle, policy()).await??;
        let before =
            HeaderChain::from_genesis(Network::Regtest, headers_from_rpc(&f.chain).await?)?;
        verify(&f.bob_bundle, &before, &policy())?;

        // Replace the anchor block and everything above it with a longer branch.
        let tip = f.chain.reorg(6).await?;
        assert!(tip.height > f.anchor_height + 5);
        let block = f.bob_bundle.merkle_block.header.block_hash();
        assert!(matches!(
            verify_rpc(&f.chain, &f.bob_bundle, policy()).await?,
            Err(BundleError::NotOnChain(h)) if h == block
        ));
        let after = HeaderChain::from_genesis(Network::Regtest, headers_from_rpc(&f.chain).await?)?;
        assert!(after.height_of(&block)?.is_none());
        assert!(matches!(
            verify(&f.bob_bundle, &after, &policy()),
            Err(BundleError::NotOnChain(_))
        ));
        f.chain.stop().await?;
        anyhow::Ok(())
    })
    .await
    .context("test timed out")?
}

#[test]
fn header_files_are_checked_when_loaded() -> anyhow::Result<()> {
    use cairn_identity_core::bundle::{Checkpoint, HeaderChainError};
    let genesis = bitcoin::constants::genesis_block(Network::Regtest).header;
    let mut headers = vec![genesis];
    for i in 0..5u32 {
        let mut h = Header {
            version: bitcoin::block::Version::TWO,
            prev_blockhash: headers.last().unwrap().block_hash(),
            merkle_root: bitcoin::TxMerkleNode::from_byte_array([i as u8; 32]),
            time: genesis.time + 600 * (i + 1),
            bits: genesis.bits,
            nonce: 0,
        };
        while h.validate_pow(h.target()).is_err() {
            h.nonce += 1;
        }
        headers.push(h);
    }
    let chain = HeaderChain::from_genesis(Network::Regtest, headers.clone())?;
    assert_eq!(chain.tip_height()?, 5);
    let bytes = chain.to_file_bytes();
    assert_eq!(bytes.len(), 6 * 80);
    HeaderChain::from_file_bytes(&bytes, Network::Regtest, None)?;

    // From a checkpoint: heights continue from it.
    let cp = Checkpoint {
        height: 1000,
        hash: headers[2].block_hash(),
    };
    let from_cp = HeaderChain::from_checkpoint(Network::Regtest, cp, headers[2..].to_vec())?;
    assert_eq!(from_cp.tip_height()?, 1003);
    assert_eq!(from_cp.height_of(&headers[4].block_hash())?, Some(1002));
    assert_eq!(from_cp.header_at(999)?, None);

    // Broken files.
    assert!(matches!(
        HeaderChain::from_file_bytes(&bytes[..100], Network::Regtest, None),
        Err(HeaderChainError::Length(100))
    ));
    assert!(matches!(
        HeaderChain::from_genesis(Network::Regtest, headers[1..].to_vec()),
        Err(HeaderChainError::WrongStart { .. })
    ));
    let mut unlinked = headers.clone();
    unlinked.swap(3, 4);
    assert!(matches!(
        HeaderChain::from_genesis(Network::Regtest, unlinked),
        Err(HeaderChainError::Linkage(3))
    ));
    let mut no_work = headers.clone();
    // Find a nonce that misses the target; half of them do at regtest difficulty.
    while no_work[5].validate_pow(no_work[5].target()).is_ok() {
        no_work[5].nonce += 1;
    }
    assert!(matches!(
        HeaderChain::from_genesis(Network::Regtest, no_work),
        Err(HeaderChainError::ProofOfWork(5))
    ));
    let mut easier = headers.clone();
    easier[5].bits = bitcoin::CompactTarget::from_consensus(0x2100ffff);
    assert!(matches!(
        HeaderChain::from_genesis(Network::Regtest, easier),
        Err(HeaderChainError::Difficulty(5))
    ));
    // Regtest never retargets: a harder header is also out of rule.
    let mut harder = headers.clone();
    harder[5].bits = bitcoin::CompactTarget::from_consensus(0x1f7fffff);
    assert!(matches!(
        HeaderChain::from_genesis(Network::Regtest, harder),
        Err(HeaderChainError::Difficulty(5))
    ));
    Ok(())
}
