//! The block tree, the active chain, the UTXO set and a transaction index.
//!
//! Pure state, no I/O. Blocks are stored forever (stale ones too, so that
//! `getblock` on a reorged-out block answers with `confirmations: -1`, as Core does).

use std::collections::HashMap;

use bitcoin::blockdata::constants::genesis_block;
use bitcoin::pow::Work;
use bitcoin::{Block, BlockHash, Network, OutPoint, Target, Transaction, TxOut, Txid};

/// Blocks a coinbase output must wait before it can be spent.
pub const COINBASE_MATURITY: u32 = 100;

/// An unspent output with the metadata validation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coin {
    /// The output itself.
    pub output: TxOut,
    /// Height of the block that created it.
    pub height: u32,
    /// Whether it was created by a coinbase transaction.
    pub is_coinbase: bool,
}

/// A block known to the node, active or not.
#[derive(Debug, Clone)]
pub struct BlockEntry {
    /// The full block.
    pub block: Block,
    /// Height in its own branch.
    pub height: u32,
    /// Cumulative work up to and including this block.
    pub chainwork: Work,
    /// Median time past of this block (last 11 blocks including itself).
    pub median_time: u32,
    /// Marked invalid by `invalidateblock` (or a descendant of such a block).
    pub invalid: bool,
    /// Coins spent by this block while connected, for disconnecting it again.
    undo: Vec<(OutPoint, Coin)>,
    /// Arrival order: among equal-work tips the first seen wins, like Core.
    seq: u64,
}

impl BlockEntry {
    /// Coins this block spent, in spending order; empty while the block is not connected.
    pub fn undo(&self) -> &[(OutPoint, Coin)] {
        &self.undo
    }
}

/// Result of switching the active chain: what was disconnected and connected.
#[derive(Debug, Default)]
pub struct ChainUpdate {
    /// Disconnected blocks, tip first.
    pub disconnected: Vec<Block>,
    /// Connected blocks, lowest first.
    pub connected: Vec<Block>,
}

/// Failure to add a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The previous block is unknown.
    #[error("prev-blk-not-found")]
    PrevNotFound,
    /// Proof of work below the target in `bits`, or wrong `bits`.
    #[error("high-hash")]
    HighHash,
    /// The header's merkle root does not commit to the transactions.
    #[error("bad-txnmrklroot")]
    BadMerkleRoot,
    /// The block is already known.
    #[error("duplicate")]
    Duplicate,
    /// A transaction spends an output that is missing from the UTXO set.
    #[error("bad-txns-inputs-missingorspent")]
    MissingInputs,
}

/// The node's chain state.
#[derive(Debug)]
pub struct Chain {
    blocks: HashMap<BlockHash, BlockEntry>,
    active: Vec<BlockHash>,
    utxos: HashMap<OutPoint, Coin>,
    tx_index: HashMap<Txid, (BlockHash, usize)>,
    next_seq: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// A chain holding only Bitcoin Core's regtest genesis block.
    pub fn new() -> Self {
        let genesis = genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        let entry = BlockEntry {
            height: 0,
            chainwork: genesis.header.work(),
            median_time: genesis.header.time,
            invalid: false,
            undo: Vec::new(),
            seq: 0,
            block: genesis,
        };
        // Like Core, the genesis coinbase is neither in the UTXO set nor indexed.
        Chain {
            blocks: HashMap::from([(hash, entry)]),
            active: vec![hash],
            utxos: HashMap::new(),
            tx_index: HashMap::new(),
            next_seq: 1,
        }
    }

    /// Height of the active tip.
    pub fn tip_height(&self) -> u32 {
        (self.active.len() - 1) as u32
    }

    /// Hash of the active tip.
    pub fn tip_hash(&self) -> BlockHash {
        *self.active.last().expect("chain always has genesis")
    }

    /// The active tip's entry.
    pub fn tip(&self) -> &BlockEntry {
        &self.blocks[&self.tip_hash()]
    }

    /// Hash of the active block at `height`.
    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    /// Any known block.
    pub fn entry(&self, hash: &BlockHash) -> Option<&BlockEntry> {
        self.blocks.get(hash)
    }

    /// Whether `hash` is in the active chain.
    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.blocks
            .get(hash)
            .is_some_and(|e| self.active.get(e.height as usize) == Some(hash))
    }

    /// Core's `confirmations` for a block: depth in the active chain, or -1.
    pub fn confirmations(&self, hash: &BlockHash) -> i64 {
        match self.blocks.get(hash) {
            Some(e) if self.is_active(hash) => i64::from(self.tip_height() - e.height) + 1,
            _ => -1,
        }
    }

    /// The active successor of an active block.
    pub fn next_hash(&self, hash: &BlockHash) -> Option<BlockHash> {
        let e = self.blocks.get(hash)?;
        if !self.is_active(hash) {
            return None;
        }
        self.hash_at(e.height + 1)
    }

    /// An unspent confirmed output.
    pub fn coin(&self, outpoint: &OutPoint) -> Option<&Coin> {
        self.utxos.get(outpoint)
    }

    /// All unspent confirmed outputs.
    pub fn utxos(&self) -> impl Iterator<Item = (&OutPoint, &Coin)> {
        self.utxos.iter()
    }

    /// Where a confirmed transaction is: block hash and index in the block.
    pub fn find_tx(&self, txid: &Txid) -> Option<(BlockHash, usize)> {
        self.tx_index.get(txid).copied()
    }

    /// A confirmed transaction with its block.
    pub fn tx(&self, txid: &Txid) -> Option<(&Transaction, &BlockEntry)> {
        let (hash, idx) = self.find_tx(txid)?;
        let e = self.blocks.get(&hash)?;
        Some((&e.block.txdata[idx], e))
    }

    /// Median time past of the active block at `height`.
    pub fn median_time_at(&self, height: u32) -> u32 {
        self.hash_at(height)
            .map(|h| self.blocks[&h].median_time)
            .unwrap_or(0)
    }

    fn compute_median_time(&self, prev: BlockHash, time: u32) -> u32 {
        let mut times = vec![time];
        let mut cur = Some(prev);
        while let Some(h) = cur {
            if times.len() == 11 {
                break;
            }
            let e = &self.blocks[&h];
            times.push(e.block.header.time);
            cur = if e.height == 0 {
                None
            } else {
                Some(e.block.header.prev_blockhash)
            };
        }
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Stores a block and switches to the most-work valid chain.
    pub fn add_block(&mut self, block: Block) -> Result<ChainUpdate, ChainError> {
        let hash = block.block_hash();
        if self.blocks.contains_key(&hash) {
            return Err(ChainError::Duplicate);
        }
        let prev = self
            .blocks
            .get(&block.header.prev_blockhash)
            .ok_or(ChainError::PrevNotFound)?;
        if block.header.bits != prev.block.header.bits
            || block
                .header
                .validate_pow(Target::from_compact(block.header.bits))
                .is_err()
        {
            return Err(ChainError::HighHash);
        }
        if !block.check_merkle_root() {
            return Err(ChainError::BadMerkleRoot);
        }
        let entry = BlockEntry {
            height: prev.height + 1,
            chainwork: prev.chainwork + block.header.work(),
            median_time: self.compute_median_time(block.header.prev_blockhash, block.header.time),
            invalid: prev.invalid,
            undo: Vec::new(),
            seq: self.next_seq,
            block,
        };
        self.next_seq += 1;
        let extends_tip = !entry.invalid && entry.block.header.prev_blockhash == self.tip_hash();
        self.blocks.insert(hash, entry);
        if extends_tip {
            // The common case (mining on the tip) needs no search over all known blocks.
            return match self.connect(hash) {
                Ok(()) => Ok(ChainUpdate {
                    disconnected: Vec::new(),
                    connected: vec![self.blocks[&hash].block.clone()],
                }),
                Err(e) => {
                    self.blocks.get_mut(&hash).expect("just inserted").invalid = true;
                    Err(e)
                }
            };
        }
        Ok(self.activate_best_chain())
    }

    /// Marks a block and its descendants invalid and reorganises away from them.
    pub fn invalidate(&mut self, hash: &BlockHash) -> Option<ChainUpdate> {
        let height = self.blocks.get(hash)?.height;
        if height == 0 {
            return Some(ChainUpdate::default());
        }
        for h in self.descendants_inclusive(hash) {
            if let Some(e) = self.blocks.get_mut(&h) {
                e.invalid = true;
            }
        }
        let mut update = ChainUpdate::default();
        while self.is_active(hash) {
            update.disconnected.push(self.disconnect_tip());
        }
        let more = self.activate_best_chain();
        update.disconnected.extend(more.disconnected);
        update.connected = more.connected;
        Some(update)
    }

    /// Clears the invalid mark from a block, its descendants and its ancestors.
    pub fn reconsider(&mut self, hash: &BlockHash) -> Option<ChainUpdate> {
        self.blocks.get(hash)?;
        for h in self.descendants_inclusive(hash) {
            if let Some(e) = self.blocks.get_mut(&h) {
                e.invalid = false;
            }
        }
        let mut cur = *hash;
        while let Some(e) = self.blocks.get_mut(&cur) {
            e.invalid = false;
            if e.height == 0 {
                break;
            }
            cur = e.block.header.prev_blockhash;
        }
        Some(self.activate_best_chain())
    }

    fn descendants_inclusive(&self, hash: &BlockHash) -> Vec<BlockHash> {
        let mut out = vec![*hash];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i];
            out.extend(
                self.blocks
                    .iter()
                    .filter(|(_, e)| e.height > 0 && e.block.header.prev_blockhash == parent)
                    .map(|(h, _)| *h),
            );
            i += 1;
        }
        out
    }

    fn best_candidate(&self) -> BlockHash {
        let tip = self.tip_hash();
        let tip_entry = &self.blocks[&tip];
        let mut best = (tip, tip_entry.chainwork, 0u64);
        let tip_valid = !tip_entry.invalid;
        let mut have = tip_valid;
        for (h, e) in &self.blocks {
            if e.invalid {
                continue;
            }
            let better = !have
                || e.chainwork > best.1
                || (e.chainwork == best.1 && best.0 != tip && e.seq < best.2);
            if better {
                best = (*h, e.chainwork, e.seq);
                have = true;
            }
        }
        best.0
    }

    fn activate_best_chain(&mut self) -> ChainUpdate {
        let mut update = ChainUpdate::default();
        loop {
            let target = self.best_candidate();
            if target == self.tip_hash() {
                return update;
            }
            // Path from target back to the active chain.
            let mut path = Vec::new();
            let mut cur = target;
            while !self.is_active(&cur) {
                path.push(cur);
                cur = self.blocks[&cur].block.header.prev_blockhash;
            }
            let fork_height = self.blocks[&cur].height;
            while self.tip_height() > fork_height {
                update.disconnected.push(self.disconnect_tip());
            }
            let mut failed = false;
            for h in path.into_iter().rev() {
                match self.connect(h) {
                    Ok(()) => update.connected.push(self.blocks[&h].block.clone()),
                    Err(_) => {
                        for d in self.descendants_inclusive(&h) {
                            if let Some(e) = self.blocks.get_mut(&d) {
                                e.invalid = true;
                            }
                        }
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                return update;
            }
        }
    }

    fn connect(&mut self, hash: BlockHash) -> Result<(), ChainError> {
        let entry = &self.blocks[&hash];
        let height = entry.height;
        let block = entry.block.clone();
        // Check first so a failed block leaves the UTXO set untouched.
        let mut created: HashMap<OutPoint, ()> = HashMap::new();
        let mut spent: HashMap<OutPoint, ()> = HashMap::new();
        for tx in &block.txdata {
            if !tx.is_coinbase() {
                for i in &tx.input {
                    let known = self.utxos.contains_key(&i.previous_output)
                        || created.contains_key(&i.previous_output);
                    if !known || spent.insert(i.previous_output, ()).is_some() {
                        return Err(ChainError::MissingInputs);
                    }
                }
            }
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                created.insert(OutPoint::new(txid, vout as u32), ());
            }
        }
        let mut undo = Vec::new();
        for (idx, tx) in block.txdata.iter().enumerate() {
            let txid = tx.compute_txid();
            if !tx.is_coinbase() {
                for i in &tx.input {
                    let coin = self
                        .utxos
                        .remove(&i.previous_output)
                        .expect("checked above");
                    undo.push((i.previous_output, coin));
                }
            }
            for (vout, out) in tx.output.iter().enumerate() {
                if out.script_pubkey.is_op_return() {
                    continue;
                }
                self.utxos.insert(
                    OutPoint::new(txid, vout as u32),
                    Coin {
                        output: out.clone(),
                        height,
                        is_coinbase: tx.is_coinbase(),
                    },
                );
            }
            self.tx_index.insert(txid, (hash, idx));
        }
        self.blocks.get_mut(&hash).expect("exists").undo = undo;
        self.active.push(hash);
        Ok(())
    }

    fn disconnect_tip(&mut self) -> Block {
        let hash = self.active.pop().expect("never disconnects genesis");
        let entry = self.blocks.get_mut(&hash).expect("exists");
        let undo = std::mem::take(&mut entry.undo);
        let block = entry.block.clone();
        for tx in block.txdata.iter().rev() {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                self.utxos.remove(&OutPoint::new(txid, vout as u32));
            }
            if self.tx_index.get(&txid).is_some_and(|(h, _)| *h == hash) {
                self.tx_index.remove(&txid);
            }
        }
        for (op, coin) in undo {
            self.utxos.insert(op, coin);
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::hashes::Hash;
    use bitcoin::{Amount, ScriptBuf};

    use super::*;
    use crate::miner::mine_block;

    fn child(chain: &Chain, prev: BlockHash, tag: u8) -> Block {
        let e = chain.entry(&prev).expect("known");
        // Different payout scripts make sibling blocks distinct.
        mine_block(
            prev,
            e.height + 1,
            e.block.header.time + 1,
            ScriptBuf::from_bytes(vec![0x51 + tag]),
            vec![],
            Amount::ZERO,
        )
    }

    #[test]
    fn most_work_wins_and_ties_keep_the_first_seen() {
        let mut chain = Chain::new();
        let genesis = chain.tip_hash();
        let a1 = child(&chain, genesis, 0);
        let a1h = a1.block_hash();
        chain.add_block(a1).unwrap();
        let b1 = child(&chain, genesis, 1);
        let b1h = b1.block_hash();
        let update = chain.add_block(b1).unwrap();
        assert!(update.connected.is_empty() && update.disconnected.is_empty());
        assert_eq!(chain.tip_hash(), a1h);
        assert_eq!(chain.confirmations(&b1h), -1);

        let b2 = child(&chain, b1h, 1);
        let b2h = b2.block_hash();
        let update = chain.add_block(b2).unwrap();
        assert_eq!(update.disconnected.len(), 1);
        assert_eq!(update.connected.len(), 2);
        assert_eq!(chain.tip_hash(), b2h);
        assert_eq!(chain.confirmations(&b1h), 2);
        assert_eq!(chain.next_hash(&b1h), Some(b2h));
        assert!(!chain.is_active(&a1h));
        // Coinbase outputs of the stale branch are gone from the UTXO set.
        let a1_cb = chain.entry(&a1h).unwrap().block.txdata[0].compute_txid();
        assert!(chain.coin(&OutPoint::new(a1_cb, 0)).is_none());
        assert_eq!(chain.utxos().count(), 2);
    }

    #[test]
    fn rejects_bad_blocks() {
        let mut chain = Chain::new();
        let genesis = chain.tip_hash();
        let mut b = child(&chain, genesis, 0);
        b.header.merkle_root = bitcoin::TxMerkleNode::from_byte_array([1; 32]);
        crate::miner::solve(&mut b.header);
        assert!(matches!(chain.add_block(b), Err(ChainError::BadMerkleRoot)));
        let mut b = child(&chain, genesis, 0);
        b.header.prev_blockhash = BlockHash::from_byte_array([2; 32]);
        assert!(matches!(chain.add_block(b), Err(ChainError::PrevNotFound)));
        let b = child(&chain, genesis, 0);
        chain.add_block(b.clone()).unwrap();
        assert!(matches!(chain.add_block(b), Err(ChainError::Duplicate)));
    }

    #[test]
    fn invalidate_and_reconsider_switch_branches() {
        let mut chain = Chain::new();
        let genesis = chain.tip_hash();
        let a1 = child(&chain, genesis, 0);
        let a1h = a1.block_hash();
        chain.add_block(a1).unwrap();
        let a2 = child(&chain, a1h, 0);
        let a2h = a2.block_hash();
        chain.add_block(a2).unwrap();
        let update = chain.invalidate(&a1h).unwrap();
        assert_eq!(update.disconnected.len(), 2);
        assert_eq!(chain.tip_hash(), genesis);
        assert!(chain.entry(&a2h).unwrap().invalid);
        chain.reconsider(&a1h).unwrap();
        assert_eq!(chain.tip_hash(), a2h);
        assert_eq!(chain.tip_height(), 2);
    }
}
