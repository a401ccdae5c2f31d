//! Shared by the bundle tests: a small registry node (log, state tree, witness)
//! that accepts real signed operations and closes epochs.

#![allow(dead_code)]

use bitcoin::{
    absolute::LockTime,
    block::{Header, Version as BlockVersion},
    hashes::Hash as _,
    transaction::Version,
    Amount, BlockHash, CompactTarget, MerkleBlock, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use cairn_identity_core::{
    binding::{
        log_entry, proof_post_op, rotate_op, BindingOp, Identity, LogEntryKind, OpContext,
        Registry, RegistryConfig, WitnessAttestation,
    },
    bundle::{Checkpoint, HeaderChain, ProofBundle},
    epoch::{EpochHeader, HEADER_VERSION},
    hash::sha256,
    log::{MemoryLogStore, MerkleLog},
    state::{state_key, MemoryStateStore, SparseMerkleTree},
    Hash,
};
use nostr::{Event, Keys};

/// The operations and attestations of one identity, in order, with the head's log index.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Event>,
    pub attestations: Vec<Event>,
    pub attestation_indexes: Vec<u64>,
    pub head_index: u64,
}

pub struct RegistryNode {
    pub witness: Keys,
    pub registry: Registry,
    pub log: MerkleLog<MemoryLogStore>,
    pub state: SparseMerkleTree<MemoryStateStore>,
}

impl Default for RegistryNode {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistryNode {
    pub fn new() -> Self {
        Self {
            witness: Keys::generate(),
            registry: Registry::new(RegistryConfig::default()),
            log: MerkleLog::new(MemoryLogStore::new()),
            state: SparseMerkleTree::new(MemoryStateStore::new()),
        }
    }

    /// Binds `x_uid`/`handle` to `user` (seq 0) with a witness attestation.
    pub fn bind(&mut self, user: &Keys, x_uid: u64, handle: &str, ctx: OpContext) -> History {
        let challenge = format!("challenge{x_uid:016}");
        let event = proof_post_op(false, x_uid, 0, None, handle, 1_000_000 + x_uid, &challenge)
            .sign_with_keys(user)
            .unwrap();
        let op = BindingOp::from_event(&event).unwrap();
        let att = WitnessAttestation {
            x_uid,
            handle: handle.to_owned(),
            post_id: 1_000_000 + x_uid,
            subject: user.public_key(),
            challenge,
            post_text_sha256: [7; 32],
            posted_at: 1_700_000_000,
            fetched_at: 1_700_000_060,
        };
        att.matches(&op).unwrap();
        let att_event = att
            .to_event_builder()
            .sign_with_keys(&self.witness)
            .unwrap();
        let applied = self.registry.apply(&op, ctx).unwrap();
        let att_index = self
            .log
            .append(&log_entry(LogEntryKind::Attestation, &att_event.id))
            .unwrap();
        let head_index = self.log.append(&op.log_entry()).unwrap();
        self.state
            .insert(state_key(applied.x_uid), applied.record_hash)
            .unwrap();
        History {
            ops: vec![event],
            attestations: vec![att_event],
            attestation_indexes: vec![att_index],
            head_index,
        }
    }

    /// Rotates `x_uid` from `current` to `next`, extending `history`.
    pub fn rotate(
        &mut self,
        history: &mut History,
        current: &Keys,
        next: &Keys,
        x_uid: u64,
        ctx: OpContext,
    ) {
        let last = BindingOp::from_event(history.ops.last().unwrap()).unwrap();
        let event = rotate_op(&current.public_key(), next, x_uid, last.seq + 1, &last.id())
            .sign_with_keys(current)
            .unwrap();
        let op = BindingOp::from_event(&event).unwrap();
        let applied = self.registry.apply(&op, ctx).unwrap();
        history.head_index = self.log.append(&op.log_entry()).unwrap();
        self.state
            .insert(state_key(applied.x_uid), applied.record_hash)
            .unwrap();
        history.ops.push(event);
    }

    /// The witness's attestation for a `bind`/`recover`, as if it had fetched the post.
    pub fn attest(&self, op: &BindingOp) -> Event {
        let id = op.identity.as_ref().unwrap();
        let att = WitnessAttestation {
            x_uid: op.x_uid,
            handle: id.handle.clone(),
            post_id: id.post_id,
            subject: op.signer(),
            challenge: op.challenge.clone().unwrap(),
            post_text_sha256: [7; 32],
            posted_at: 1_700_000_000,
            fetched_at: 1_700_000_060,
        };
        att.matches(op).unwrap();
        att.to_event_builder()
            .sign_with_keys(&self.witness)
            .unwrap()
    }

    /// Accepts any operation the way a node does: attestation (if a proof post)
    /// then operation into the log, record into the state tree.
    pub fn accept(&mut self, history: &mut History, event: Event, ctx: OpContext) {
        let op = BindingOp::from_event(&event).unwrap();
        let att = op.identity.as_ref().map(|_| self.attest(&op));
        let applied = self.registry.apply(&op, ctx).unwrap();
        if let Some(att) = att {
            let i = self
                .log
                .append(&log_entry(LogEntryKind::Attestation, &att.id))
                .unwrap();
            history.attestations.push(att);
            history.attestation_indexes.push(i);
        }
        history.head_index = self.log.append(&op.log_entry()).unwrap();
        self.state
            .insert(state_key(applied.x_uid), applied.record_hash)
            .unwrap();
        history.ops.push(event);
    }

    /// Completes the recoveries due at `height` and updates the state tree.
    pub fn advance(&mut self, height: u32) {
        for applied in self.registry.advance(height) {
            self.state
                .insert(state_key(applied.x_uid), applied.record_hash)
                .unwrap();
        }
    }

    /// Closes epoch `epoch`, anchors it in an in-memory chain (anchor block
    /// plus 5 blocks, regtest difficulty, really mined) and returns a bundle for
    /// `history`, with the verifier's view of that chain.
    pub fn bundle_offline(
        &self,
        history: &History,
        x_uid: u64,
        epoch: u64,
    ) -> (ProofBundle, HeaderChain) {
        // Epoch 0 links to nothing (§9.1); later epochs name a predecessor.
        let prev = if epoch == 0 { [0; 32] } else { [0x42; 32] };
        let header = self.header(epoch, prev);
        let tx = anchor_tx(&header);
        let (merkle_block, view) = anchor_chain(&tx, 2_500);
        let bundle = ProofBundle::assemble(
            &self.identity(x_uid),
            history.ops.clone(),
            history.attestations.clone(),
            history.head_index,
            &history.attestation_indexes,
            &self.log,
            &self.state,
            header,
            tx,
            ANCHOR_HEIGHT,
            merkle_block,
        )
        .unwrap();
        (bundle, view)
    }

    pub fn identity(&self, x_uid: u64) -> Identity {
        self.registry.get(x_uid).unwrap().clone()
    }

    pub fn header(&self, epoch: u64, prev_header_hash: Hash) -> EpochHeader {
        EpochHeader {
            version: HEADER_VERSION,
            epoch,
            prev_header_hash,
            log_size: self.log.size().unwrap(),
            log_root: self.log.root().unwrap(),
            state_root: self.state.root(),
        }
    }
}

/// Height of the in-memory anchor block.
pub const ANCHOR_HEIGHT: u32 = 900_000;

fn mine(mut header: Header) -> Header {
    while header.validate_pow(header.target()).is_err() {
        header.nonce += 1;
    }
    header
}

/// An anchor transaction as the node makes them: one input, the OP_RETURN and a taproot change output.
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

/// A block of `block_txs` transactions holding `anchor` (mined at regtest
/// difficulty), its Merkle block, and a view with 5 more blocks on top.
pub fn anchor_chain(anchor: &Transaction, block_txs: usize) -> (MerkleBlock, HeaderChain) {
    let anchor_txid = anchor.compute_txid();
    let position = block_txs / 2;
    let txids: Vec<Txid> = (0..block_txs)
        .map(|i| {
            if i == position {
                anchor_txid
            } else {
                Txid::from_byte_array(sha256(&(i as u64).to_be_bytes()))
            }
        })
        .collect();
    let root = bitcoin::merkle_tree::calculate_root(txids.iter().map(|t| t.to_raw_hash()))
        .map(TxMerkleNode::from_raw_hash)
        .expect("non-empty");
    let header = mine(Header {
        version: BlockVersion::from_consensus(0x2000_0000),
        prev_blockhash: BlockHash::from_byte_array([0x11; 32]),
        merkle_root: root,
        time: 1_750_000_000,
        bits: CompactTarget::from_consensus(0x207f_ffff),
        nonce: 0,
    });
    let merkle_block =
        MerkleBlock::from_header_txids_with_predicate(&header, &txids, |t| *t == anchor_txid);
    let mut headers = vec![header];
    for i in 0..5 {
        let prev = headers.last().unwrap();
        headers.push(mine(Header {
            prev_blockhash: prev.block_hash(),
            time: prev.time + 600,
            merkle_root: TxMerkleNode::from_byte_array([i; 32]),
            ..*prev
        }));
    }
    let view = HeaderChain::from_checkpoint(
        Network::Regtest,
        Checkpoint {
            height: ANCHOR_HEIGHT,
            hash: header.block_hash(),
        },
        headers,
    )
    .unwrap();
    (merkle_block, view)
}
