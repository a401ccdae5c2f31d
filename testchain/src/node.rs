//! The in-process node: chain plus mempool, with the operations behind the RPC
//! calls. No I/O; the clock is the only outside input.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::bip158::{BlockFilter, FilterHeader};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, Block, BlockHash, OutPoint, ScriptBuf, Transaction, TxOut, Txid};

use crate::chain::{Chain, ChainError, ChainUpdate, COINBASE_MATURITY};
use crate::dialect::Dialect;
use crate::error::{Error, TxReject};
use crate::mempool::{Mempool, MempoolEntry};
use crate::miner;
use crate::validation::{self, AcceptOptions, Accepted};

/// Core's default `maxfeerate` for `sendrawtransaction`/`testmempoolaccept`: 0.10 BTC/kvB.
pub const DEFAULT_MAX_FEE_RATE_SAT_PER_KVB: u64 = 10_000_000;

/// Largest total weight of the transactions put in one block (room left for the coinbase).
const MAX_BLOCK_TX_WEIGHT: u64 = 3_990_000;

/// Chain and mempool.
#[derive(Debug, Default)]
pub struct Node {
    /// The block tree and UTXO set.
    pub chain: Chain,
    /// Unconfirmed transactions.
    pub mempool: Mempool,
    /// Which Core release the RPC answers imitate.
    pub dialect: Dialect,
    /// BIP158 basic filters and filter headers by block. A block hash fixes its
    /// branch and so its prevouts, so entries never go stale.
    filters: HashMap<BlockHash, (Vec<u8>, FilterHeader)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// A node at the regtest genesis block with an empty mempool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Like [`Node::new`], answering RPC calls in `dialect`.
    pub fn with_dialect(dialect: Dialect) -> Self {
        Self {
            dialect,
            ..Self::default()
        }
    }

    /// Validates `tx` without adding it; applies `max_fee_rate` (sat/kvB, 0 = no limit).
    pub fn test_accept(&self, tx: &Transaction, max_fee_rate: u64) -> Result<Accepted, Error> {
        let acc = validation::check_mempool_accept(
            &self.chain,
            &self.mempool,
            tx,
            AcceptOptions {
                bypass_limits: false,
                version: self.dialect.version,
            },
        )?;
        if max_fee_rate > 0 && acc.fee.to_sat() > max_fee_rate * acc.vsize / 1000 {
            return Err(Error::MaxFeeExceeded);
        }
        Ok(acc)
    }

    /// `sendrawtransaction`: accepts `tx` (replacing conflicts) or explains why not.
    pub fn send_raw_transaction(
        &mut self,
        tx: Transaction,
        max_fee_rate: u64,
    ) -> Result<Txid, Error> {
        let txid = tx.compute_txid();
        if self.mempool.contains(&txid) {
            // Core answers a re-broadcast of a mempool transaction with its txid.
            return Ok(txid);
        }
        if (0..tx.output.len() as u32).any(|v| self.chain.coin(&OutPoint::new(txid, v)).is_some()) {
            return Err(Error::AlreadyInUtxoSet);
        }
        let acc = self.test_accept(&tx, max_fee_rate)?;
        self.insert(tx, acc, now_secs());
        Ok(txid)
    }

    fn insert(&mut self, tx: Transaction, acc: Accepted, time: u64) {
        for t in &acc.replaced {
            self.mempool.remove(t);
        }
        let txid = tx.compute_txid();
        self.mempool.insert(MempoolEntry {
            txid,
            wtxid: tx.compute_wtxid(),
            weight: tx.weight().to_wu(),
            tx,
            fee: acc.fee,
            vsize: acc.vsize,
            time,
            height: self.chain.tip_height(),
            bip125_replaceable: acc.bip125_replaceable,
            seq: 0,
        });
    }

    fn next_block_time(&self) -> u32 {
        let mtp = self.chain.tip().median_time;
        (mtp + 1).max(now_secs() as u32)
    }

    /// `generatetoaddress`: mines `n` blocks paying `payout`, each with the mempool's transactions.
    pub fn generate(&mut self, n: u32, payout: &ScriptBuf) -> Vec<BlockHash> {
        let mut hashes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut weight = 0;
            let mut fees = Amount::ZERO;
            let mut txs = Vec::new();
            for e in self.mempool.entries() {
                if weight + e.weight > MAX_BLOCK_TX_WEIGHT {
                    break;
                }
                weight += e.weight;
                fees += e.fee;
                txs.push(e.tx.clone());
            }
            let hash = self
                .mine_and_connect(payout.clone(), txs, fees)
                .expect("own block is valid");
            hashes.push(hash);
        }
        hashes
    }

    /// `generateblock`: mines one block with exactly `txs` (validated in order
    /// against the chain) and, if `submit`, connects it.
    pub fn generate_block(
        &mut self,
        payout: &ScriptBuf,
        txs: Vec<Transaction>,
        submit: bool,
    ) -> Result<Block, Error> {
        let mut scratch = Mempool::default();
        let mut fees = Amount::ZERO;
        for tx in &txs {
            let acc = validation::check_mempool_accept(
                &self.chain,
                &scratch,
                tx,
                AcceptOptions {
                    bypass_limits: true,
                    version: self.dialect.version,
                },
            )
            .map_err(|r: TxReject| Error::BlockInvalid(r.to_string()))?;
            if !acc.replaced.is_empty() {
                return Err(Error::BlockInvalid("bad-txns-inputs-missingorspent".into()));
            }
            fees += acc.fee;
            scratch.insert(MempoolEntry {
                txid: tx.compute_txid(),
                wtxid: tx.compute_wtxid(),
                weight: 0,
                tx: tx.clone(),
                fee: acc.fee,
                vsize: acc.vsize,
                time: 0,
                height: 0,
                bip125_replaceable: false,
                seq: 0,
            });
        }
        let block = self.assemble(payout.clone(), txs, fees);
        if submit {
            self.submit_block(block.clone())
                .map_err(|e| Error::BlockInvalid(e.to_string()))?;
        }
        Ok(block)
    }

    fn assemble(&self, payout: ScriptBuf, txs: Vec<Transaction>, fees: Amount) -> Block {
        miner::mine_block(
            self.chain.tip_hash(),
            self.chain.tip_height() + 1,
            self.next_block_time(),
            payout,
            txs,
            fees,
        )
    }

    fn mine_and_connect(
        &mut self,
        payout: ScriptBuf,
        txs: Vec<Transaction>,
        fees: Amount,
    ) -> Result<BlockHash, ChainError> {
        let block = self.assemble(payout, txs, fees);
        self.submit_block(block)
    }

    /// Adds a solved block and updates the mempool for whatever chain change followed.
    pub fn submit_block(&mut self, block: Block) -> Result<BlockHash, ChainError> {
        let hash = block.block_hash();
        let update = self.chain.add_block(block)?;
        self.update_mempool(update);
        Ok(hash)
    }

    /// `invalidateblock`.
    pub fn invalidate_block(&mut self, hash: &BlockHash) -> Result<(), Error> {
        let update = self.chain.invalidate(hash).ok_or(Error::BlockNotFound)?;
        self.update_mempool(update);
        Ok(())
    }

    /// `reconsiderblock`.
    pub fn reconsider_block(&mut self, hash: &BlockHash) -> Result<(), Error> {
        let update = self.chain.reconsider(hash).ok_or(Error::BlockNotFound)?;
        self.update_mempool(update);
        Ok(())
    }

    fn update_mempool(&mut self, update: ChainUpdate) {
        if update.disconnected.is_empty() {
            for block in &update.connected {
                for tx in block.txdata.iter().skip(1) {
                    let txid = tx.compute_txid();
                    self.mempool.remove(&txid);
                    for i in &tx.input {
                        if let Some(c) = self.mempool.spender(&i.previous_output) {
                            self.mempool.remove_with_descendants(&c);
                        }
                    }
                }
            }
            return;
        }
        // A reorg: like Core, put the disconnected blocks' transactions back first
        // (oldest block first), then the old mempool, re-validating everything;
        // whatever became invalid (e.g. immature coinbase spends) is dropped.
        let old = self.mempool.drain();
        let now = now_secs();
        let mut candidates: Vec<(Transaction, u64)> = Vec::new();
        for block in update.disconnected.iter().rev() {
            candidates.extend(block.txdata.iter().skip(1).map(|tx| (tx.clone(), now)));
        }
        candidates.extend(old.into_iter().map(|e| (e.tx, e.time)));
        for (tx, time) in candidates {
            let txid = tx.compute_txid();
            if self.chain.find_tx(&txid).is_some() || self.mempool.contains(&txid) {
                continue;
            }
            if let Ok(acc) = validation::check_mempool_accept(
                &self.chain,
                &self.mempool,
                &tx,
                AcceptOptions {
                    bypass_limits: true,
                    version: self.dialect.version,
                },
            ) {
                if acc.replaced.is_empty() {
                    self.insert(tx, acc, time);
                }
            }
        }
    }

    /// Mature confirmed outputs paying `script` that no mempool transaction spends.
    pub fn spendable_coins(&self, script: &ScriptBuf) -> Vec<(OutPoint, TxOut)> {
        let next = self.chain.tip_height() + 1;
        let mut v: Vec<(OutPoint, TxOut, u32)> = self
            .chain
            .utxos()
            .filter(|(op, c)| {
                c.output.script_pubkey == *script
                    && (!c.is_coinbase || next - c.height >= COINBASE_MATURITY)
                    && self.mempool.spender(op).is_none()
            })
            .map(|(op, c)| (*op, c.output.clone(), c.height))
            .collect();
        // Oldest first, so funding is deterministic.
        v.sort_by_key(|(op, _, h)| (*h, *op));
        v.into_iter().map(|(op, o, _)| (op, o)).collect()
    }

    /// `getblockfilter`: the BIP158 basic filter of an active block and its filter header.
    pub fn block_filter(&mut self, hash: &BlockHash) -> Result<(Vec<u8>, FilterHeader), Error> {
        if let Some(f) = self.filters.get(hash) {
            return Ok(f.clone());
        }
        let entry = self.chain.entry(hash).ok_or(Error::BlockNotFound)?;
        if !self.chain.is_active(hash) {
            // Prevouts of stale blocks are not kept; Core's index would have them.
            return Err(Error::Misc("Filter not found.".into()));
        }
        let height = entry.height;
        // Fill the cache upwards from the highest cached ancestor.
        let mut start = height;
        while start > 0
            && !self
                .filters
                .contains_key(&self.chain.hash_at(start - 1).expect("active"))
        {
            start -= 1;
        }
        for h in start..=height {
            let bh = self.chain.hash_at(h).expect("active");
            let e = self.chain.entry(&bh).expect("known");
            let prevouts: HashMap<OutPoint, ScriptBuf> = e
                .undo()
                .iter()
                .map(|(op, c)| (*op, c.output.script_pubkey.clone()))
                .collect();
            let filter = BlockFilter::new_script_filter(&e.block, |op| {
                prevouts
                    .get(op)
                    .cloned()
                    .ok_or(bitcoin::bip158::Error::UtxoMissing(*op))
            })
            .map_err(|e| Error::Misc(format!("cannot build filter: {e}")))?;
            let prev_header = if h == 0 {
                FilterHeader::all_zeros()
            } else {
                self.filters[&self.chain.hash_at(h - 1).expect("active")].1
            };
            let header = filter.filter_header(&prev_header);
            self.filters.insert(bh, (filter.content, header));
        }
        Ok(self.filters[hash].clone())
    }
}
