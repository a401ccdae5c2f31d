//! The deterministic generator of `docs/vectors/` (run with `CAIRN_WRITE_VECTORS=1 cargo test
//! -p cairn-identity-core --test vectors`). Fixed keys, fixed timestamps, BIP-340 signatures
//! without auxiliary randomness and proof of work mined from nonce 0: the same code always
//! writes the same bytes.
//!
//! Every bundle is built the way a node builds it (log, state tree, header, anchor, block,
//! chain) around exactly one defect, so an invalid vector breaks one rule and every other
//! check on it would pass.

pub mod catalog;

use std::collections::BTreeMap;

use bitcoin::{
    absolute::LockTime,
    block::{Header, Version as BlockVersion},
    consensus::serialize,
    hashes::Hash as _,
    transaction::Version,
    Amount, BlockHash, CompactTarget, MerkleBlock, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use cairn_identity_core::{
    binding::{
        log_entry, rotation_message, BindingOp, Identity, LogEntryKind, OpContext, PendingRecovery,
        Registry, RegistryConfig, Status,
    },
    bundle::{AbsenceBundle, LogPath, ProofBundle},
    epoch::{EpochHeader, HEADER_VERSION},
    hash::sha256,
    kinds,
    log::{MemoryLogStore, MerkleLog},
    nip01::event_id,
    state::{state_key, MemoryStateStore, SparseMerkleTree},
    Hash,
};
use nostr::{
    secp256k1::{Keypair, Message},
    Event, EventId, Keys, Kind, PublicKey, SecretKey, Tag, Tags, Timestamp, SECP256K1,
};
use serde_json::{json, Value};

/// A key derived from a name, so vectors never change.
pub fn key(name: &str) -> Keys {
    Keys::new(SecretKey::from_slice(&sha256(format!("cairn-vectors/{name}").as_bytes())).unwrap())
}

/// Signs an event deterministically, computing its id the NIP-01 way (§3.1).
pub fn sign_raw(
    keys: &Keys,
    kind: u16,
    created_at: u64,
    tags: &[Vec<String>],
    content: &str,
) -> Event {
    let tags = Tags::from_list(
        tags.iter()
            .map(|t| Tag::parse(t.clone()).unwrap())
            .collect(),
    );
    let pubkey = keys.public_key();
    let id = event_id(&pubkey, created_at, kind, &tags, content);
    let kp = Keypair::from_secret_key(SECP256K1, keys.secret_key());
    let sig = SECP256K1.sign_schnorr_no_aux_rand(&Message::from_digest(id.to_bytes()), &kp);
    Event::new(
        id,
        pubkey,
        Timestamp::from(created_at),
        Kind::from(kind),
        tags,
        content,
        sig,
    )
}

fn t(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The tags and content of one operation; edit them to make a defect.
#[derive(Clone)]
pub struct OpSpec {
    pub signer: Keys,
    pub tags: Vec<Vec<String>>,
    pub content: String,
    pub created_at: u64,
}

impl OpSpec {
    pub fn sign(&self) -> Event {
        sign_raw(
            &self.signer,
            kinds::BINDING,
            self.created_at,
            &self.tags,
            &self.content,
        )
    }

    pub fn set(&mut self, name: &str, values: &[&str]) {
        let tag = std::iter::once(name)
            .chain(values.iter().copied())
            .collect::<Vec<_>>();
        match self.tags.iter_mut().find(|t| t[0] == name) {
            Some(old) => *old = t(&tag),
            None => self.tags.push(t(&tag)),
        }
    }
}

pub const UID: u64 = 1_234_567_890;
pub const HEIGHT: u32 = 900_000;
const CREATED: u64 = 1_750_000_000;

fn common(op: &str, uid: u64, seq: u64, prev: Option<&EventId>) -> Vec<Vec<String>> {
    vec![
        t(&["op", op]),
        t(&["x_uid", &uid.to_string()]),
        t(&["seq", &seq.to_string()]),
        t(&["prev", &prev.map(EventId::to_hex).unwrap_or_default()]),
    ]
}

pub fn challenge(n: u64) -> String {
    format!("vectorchallenge{n:08}")
}

pub fn proof_op(
    signer: &Keys,
    recover: bool,
    seq: u64,
    prev: Option<&EventId>,
    handle: &str,
    post: u64,
) -> OpSpec {
    let mut tags = common(if recover { "recover" } else { "bind" }, UID, seq, prev);
    tags.push(t(&["i", &format!("twitter:{handle}"), &post.to_string()]));
    tags.push(t(&["challenge", &challenge(post)]));
    OpSpec {
        signer: signer.clone(),
        tags,
        content: String::new(),
        created_at: CREATED + seq,
    }
}

pub fn rotate(current: &Keys, next: &Keys, seq: u64, prev: &EventId) -> OpSpec {
    let msg = rotation_message(UID, seq, prev, &current.public_key(), &next.public_key());
    let kp = Keypair::from_secret_key(SECP256K1, next.secret_key());
    let sig = SECP256K1.sign_schnorr_no_aux_rand(&Message::from_digest(msg), &kp);
    let mut tags = common("rotate", UID, seq, Some(prev));
    tags.push(t(&["new_key", &next.public_key().to_hex()]));
    tags.push(t(&["new_key_sig", &hex::encode(sig.as_ref())]));
    OpSpec {
        signer: current.clone(),
        tags,
        content: String::new(),
        created_at: CREATED + seq,
    }
}

pub fn simple(signer: &Keys, op: &str, seq: u64, prev: &EventId) -> OpSpec {
    OpSpec {
        signer: signer.clone(),
        tags: common(op, UID, seq, Some(prev)),
        content: String::new(),
        created_at: CREATED + seq,
    }
}

pub fn veto(signer: &Keys, seq: u64, prev: &EventId, target: &EventId) -> OpSpec {
    let mut s = simple(signer, "veto", seq, prev);
    s.tags.push(t(&["e", &target.to_hex()]));
    s
}

/// The attestation tags for a proof-post operation, as the witness writes them.
pub fn attestation_tags(op: &Event) -> Vec<Vec<String>> {
    let get = |n: &str| {
        op.tags
            .iter()
            .map(|t| t.as_slice())
            .find(|t| t[0] == n)
            .unwrap()
            .to_vec()
    };
    let i = get("i");
    vec![
        i.clone(),
        get("x_uid"),
        t(&["p", &op.pubkey.to_hex()]),
        get("challenge"),
        t(&["post_sha256", &hex::encode(sha256(i[2].as_bytes()))]),
        t(&["posted_at", "1749999000"]),
        t(&["fetched_at", "1749999060"]),
    ]
}

pub fn witness() -> Keys {
    key("witness")
}

pub fn attest(op: &Event) -> Event {
    sign_raw(
        &witness(),
        kinds::WITNESS_ATTESTATION,
        CREATED + 100,
        &attestation_tags(op),
        "",
    )
}

/// One identity's history: the signed operations with their attestations.
#[derive(Clone, Default)]
pub struct History {
    pub ops: Vec<Event>,
    pub atts: Vec<Event>,
}

impl History {
    pub fn push(&mut self, op: Event) -> EventId {
        let is_proof = op.tags.iter().any(|t| t.as_slice()[0] == "i");
        if is_proof {
            self.atts.push(attest(&op));
        }
        let id = op.id;
        self.ops.push(op);
        id
    }

    /// The record the registry computes, replaying with one epoch per operation;
    /// `advance_to` completes a pending recovery at that height.
    pub fn registry_record(&self, advance_to: Option<u32>) -> Identity {
        let mut reg = Registry::new(RegistryConfig::default());
        for (i, e) in self.ops.iter().enumerate() {
            let op = BindingOp::from_event(e).expect("valid op");
            reg.apply(
                &op,
                OpContext {
                    epoch: i as u64,
                    height: HEIGHT - 1000 + i as u32,
                },
            )
            .expect("accepted");
        }
        if let Some(h) = advance_to {
            reg.advance(h);
        }
        reg.get(UID).unwrap().clone()
    }
}

/// What the anchor chain looks like.
#[derive(Clone)]
pub struct ChainSpec {
    pub network: Network,
    pub bits: u32,
    pub block_txs: usize,
    /// Where the anchor sits in the block.
    pub position: usize,
    /// Headers after the anchor block.
    pub confirmations_after: usize,
}

impl ChainSpec {
    pub fn regtest(block_txs: usize) -> Self {
        Self {
            network: Network::Regtest,
            bits: 0x207f_ffff,
            block_txs,
            position: block_txs / 2,
            confirmations_after: 5,
        }
    }
}

/// Changes the anchor transaction (a defect).
pub type TxHook = Box<dyn Fn(&mut Transaction)>;

/// Changes the block's txids, given the anchor's (a defect).
pub type TxidsHook = dyn Fn(&mut Vec<Txid>, Txid);

/// Every part of one bundle before assembly, for the defect hooks.
pub struct Parts {
    pub identity: Identity,
    pub history: History,
    pub filler: usize,
    pub epoch: u64,
    pub prev_header_hash: Hash,
    pub chain: ChainSpec,
    /// Extra leaves logged between an attestation and its operation (a defect).
    pub gap_before_head: bool,
    /// Value put in the state tree instead of the record's hash (a defect).
    pub state_value: Option<Hash>,
    pub tx_hook: Option<TxHook>,
    pub txids_hook: Option<Box<TxidsHook>>,
    pub mine: bool,
}

impl Parts {
    pub fn new(history: History, identity: Identity) -> Self {
        Self {
            identity,
            history,
            filler: 0,
            epoch: 0,
            prev_header_hash: [0; 32],
            chain: ChainSpec::regtest(2),
            gap_before_head: false,
            state_value: None,
            tx_hook: None,
            txids_hook: None,
            mine: true,
        }
    }
}

#[derive(Clone)]
pub struct Built {
    pub bundle: ProofBundle,
    pub headers: Vec<u8>,
    pub network: Network,
    pub checkpoint: (u32, BlockHash),
}

pub struct World {
    pub log: MerkleLog<MemoryLogStore>,
    pub state: SparseMerkleTree<MemoryStateStore>,
}

impl World {
    pub fn with_filler(n: usize) -> Self {
        let mut w = Self {
            log: MerkleLog::new(MemoryLogStore::new()),
            state: SparseMerkleTree::new(MemoryStateStore::new()),
        };
        for i in 0..n as u64 {
            let h = sha256(&i.to_be_bytes());
            w.log
                .append(&log_entry(
                    LogEntryKind::Attestation,
                    &EventId::from_byte_array(h),
                ))
                .unwrap();
            w.log
                .append(&log_entry(
                    LogEntryKind::Binding,
                    &EventId::from_byte_array(sha256(&h)),
                ))
                .unwrap();
            w.state.insert(state_key(10_000 + i), h).unwrap();
        }
        w
    }

    pub fn header(&self, epoch: u64, prev: Hash) -> EpochHeader {
        EpochHeader {
            version: HEADER_VERSION,
            epoch,
            prev_header_hash: prev,
            log_size: self.log.size().unwrap(),
            log_root: self.log.root().unwrap(),
            state_root: self.state.root(),
        }
    }
}

pub fn anchor_tx(header: &EpochHeader) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([5; 32]), 1),
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
                value: Amount::from_sat(50_000),
                script_pubkey: ScriptBuf::from_bytes([&[0x51, 0x20][..], &[9; 32]].concat()),
            },
        ],
    }
}

/// Mines from nonce 0 (deterministic); `mine = false` finds a nonce that fails instead.
pub fn mine(mut header: Header, meet: bool) -> Header {
    let target = cairn_identity_core::bundle::decode_compact(header.bits.to_consensus());
    let ok = |h: &Header| {
        target.is_some_and(|t| cairn_identity_core::bundle::hash_as_number(&h.block_hash()) <= t)
    };
    while ok(&header) != meet {
        header.nonce += 1;
    }
    header
}

/// A chain of `n` headers after `first`, same bits, mined.
pub fn extend(first: Header, n: usize) -> Vec<Header> {
    let mut headers = vec![first];
    for i in 0..n {
        let prev = *headers.last().unwrap();
        headers.push(mine(
            Header {
                prev_blockhash: prev.block_hash(),
                time: prev.time + 600,
                merkle_root: TxMerkleNode::from_byte_array([i as u8; 32]),
                ..prev
            },
            true,
        ));
    }
    headers
}

pub fn file(headers: &[Header]) -> Vec<u8> {
    headers.iter().flat_map(serialize).collect()
}

/// The block around `tx`: its Merkle block and the headers file starting at it.
pub fn block_for(
    tx: &Transaction,
    c: &ChainSpec,
    mined: bool,
    txids_hook: Option<&TxidsHook>,
) -> (MerkleBlock, Vec<Header>) {
    let anchor = tx.compute_txid();
    let mut txids: Vec<Txid> = (0..c.block_txs)
        .map(|i| {
            if i == c.position {
                anchor
            } else {
                Txid::from_byte_array(sha256(&(i as u64).to_be_bytes()))
            }
        })
        .collect();
    if let Some(h) = txids_hook {
        h(&mut txids, anchor);
    }
    let root = bitcoin::merkle_tree::calculate_root(txids.iter().map(|t| t.to_raw_hash()))
        .map(TxMerkleNode::from_raw_hash)
        .unwrap();
    let header = mine(
        Header {
            version: BlockVersion::from_consensus(0x2000_0000),
            prev_blockhash: BlockHash::from_byte_array(sha256(&serialize(tx))),
            merkle_root: root,
            time: 1_750_000_000,
            bits: CompactTarget::from_consensus(c.bits),
            nonce: 0,
        },
        mined,
    );
    let mb = MerkleBlock::from_header_txids_with_predicate(&header, &txids, |t| *t == anchor);
    (
        mb,
        if mined {
            extend(header, c.confirmations_after)
        } else {
            vec![header]
        },
    )
}

pub fn build(p: Parts) -> Built {
    let mut w = World::with_filler(p.filler);
    let mut att_idx = Vec::new();
    let mut atts = p.history.atts.iter();
    let mut head = 0;
    let n = p.history.ops.len();
    for (k, op) in p.history.ops.iter().enumerate() {
        if op.tags.iter().any(|t| t.as_slice()[0] == "i") {
            if let Some(a) = atts.next() {
                att_idx.push(
                    w.log
                        .append(&log_entry(LogEntryKind::Attestation, &a.id))
                        .unwrap(),
                );
            }
        }
        if p.gap_before_head && k + 1 == n {
            w.log
                .append(&log_entry(
                    LogEntryKind::Binding,
                    &EventId::from_byte_array([0xee; 32]),
                ))
                .unwrap();
        }
        head = w
            .log
            .append(&log_entry(LogEntryKind::Binding, &op.id))
            .unwrap();
    }
    w.state
        .insert(
            state_key(p.identity.x_uid),
            p.state_value.unwrap_or_else(|| p.identity.record_hash()),
        )
        .unwrap();
    let header = w.header(p.epoch, p.prev_header_hash);
    let mut tx = anchor_tx(&header);
    if let Some(h) = &p.tx_hook {
        h(&mut tx);
    }
    let (mb, headers) = block_for(&tx, &p.chain, p.mine, p.txids_hook.as_deref());
    // Assemble needs the record in the tree; build paths directly instead so defects survive.
    let path = |i: u64| LogPath {
        leaf_index: i,
        path: w.log.inclusion_proof(i, header.log_size).unwrap().path,
    };
    let bundle = ProofBundle {
        record: p.identity.record_bytes(),
        ops: p.history.ops.clone(),
        attestations: p.history.atts.clone(),
        op_path: path(head),
        attestation_paths: att_idx.iter().map(|&i| path(i)).collect(),
        state_proof: w
            .state
            .prove_at(&header.state_root, &state_key(p.identity.x_uid))
            .unwrap(),
        epoch_header: header,
        anchor_tx: tx,
        block_height: HEIGHT,
        merkle_block: mb,
    };
    Built {
        bundle,
        headers: file(&headers),
        network: p.chain.network,
        checkpoint: (HEIGHT, headers[0].block_hash()),
    }
}

/// An absence bundle for `x_uid` in a tree of `filler` others.
pub fn build_absence(x_uid: u64, filler: usize) -> (AbsenceBundle, Vec<u8>, (u32, BlockHash)) {
    let w = World::with_filler(filler);
    let header = w.header(0, [0; 32]);
    let tx = anchor_tx(&header);
    let (mb, headers) = block_for(&tx, &ChainSpec::regtest(7), true, None);
    let bundle = AbsenceBundle {
        x_uid,
        state_proof: w
            .state
            .prove_at(&header.state_root, &state_key(x_uid))
            .unwrap(),
        epoch_header: header,
        anchor_tx: tx,
        block_height: HEIGHT,
        merkle_block: mb,
    };
    (bundle, file(&headers), (HEIGHT, headers[0].block_hash()))
}

/// Summary of what a valid bundle proves, as the vectors record it.
pub fn expected(identity: &Identity, confirmations: u32) -> Value {
    let (status, pending) = match identity.status {
        Status::Bound => ("bound", Value::Null),
        Status::Revoked => ("revoked", Value::Null),
        Status::RecoveryPending(PendingRecovery {
            recover_id,
            new_key,
            effective_height,
        }) => (
            "recovery-pending",
            json!({"recover_id": recover_id.to_hex(), "new_key": new_key.to_hex(), "effective_height": effective_height}),
        ),
    };
    json!({
        "x_uid": identity.x_uid.to_string(),
        "handle": identity.handle,
        "key": identity.key.map(|k: PublicKey| k.to_hex()),
        "status": status,
        "pending": pending,
        "seq": identity.seq,
        "head": identity.head.to_hex(),
        "confirmations": confirmations,
    })
}

/// Files to write, by path under `docs/vectors/`.
pub type Files = BTreeMap<String, Vec<u8>>;
