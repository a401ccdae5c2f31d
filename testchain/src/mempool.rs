//! Unconfirmed transactions and the outpoints they spend. Storage only; the
//! acceptance rules live in [`crate::validation`].

use std::collections::{BTreeSet, HashMap};

use bitcoin::{Amount, OutPoint, Transaction, Txid, Wtxid};

/// One transaction in the mempool.
#[derive(Debug, Clone)]
pub struct MempoolEntry {
    /// The transaction.
    pub tx: Transaction,
    /// Its txid.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Fee paid (inputs minus outputs).
    pub fee: Amount,
    /// Virtual size in vbytes.
    pub vsize: u64,
    /// Weight in weight units.
    pub weight: u64,
    /// Unix time it entered the mempool.
    pub time: u64,
    /// Chain height when it entered the mempool.
    pub height: u32,
    /// Whether every input signals BIP125 replaceability (or inherits it).
    pub bip125_replaceable: bool,
    /// Insertion order; also a topological order, since parents enter first.
    pub seq: u64,
}

/// The set of unconfirmed transactions.
#[derive(Debug, Default)]
pub struct Mempool {
    entries: HashMap<Txid, MempoolEntry>,
    spent_by: HashMap<OutPoint, Txid>,
    next_seq: u64,
}

impl Mempool {
    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the mempool is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A transaction's entry.
    pub fn get(&self, txid: &Txid) -> Option<&MempoolEntry> {
        self.entries.get(txid)
    }

    /// Whether `txid` is in the mempool.
    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    /// The mempool transaction spending `outpoint`, if any.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spent_by.get(outpoint).copied()
    }

    /// Entries in insertion (topological) order.
    pub fn entries(&self) -> Vec<&MempoolEntry> {
        let mut v: Vec<_> = self.entries.values().collect();
        v.sort_by_key(|e| e.seq);
        v
    }

    /// Adds an entry (the caller has validated it).
    pub fn insert(&mut self, mut entry: MempoolEntry) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        for i in &entry.tx.input {
            self.spent_by.insert(i.previous_output, entry.txid);
        }
        self.entries.insert(entry.txid, entry);
    }

    /// Removes one transaction (not its descendants) and returns it.
    pub fn remove(&mut self, txid: &Txid) -> Option<MempoolEntry> {
        let e = self.entries.remove(txid)?;
        for i in &e.tx.input {
            if self.spent_by.get(&i.previous_output) == Some(txid) {
                self.spent_by.remove(&i.previous_output);
            }
        }
        Some(e)
    }

    /// In-mempool parents of a transaction.
    pub fn parents(&self, tx: &Transaction) -> BTreeSet<Txid> {
        tx.input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| self.entries.contains_key(t))
            .collect()
    }

    /// In-mempool children of a transaction.
    pub fn children(&self, txid: &Txid) -> BTreeSet<Txid> {
        let Some(e) = self.entries.get(txid) else {
            return BTreeSet::new();
        };
        (0..e.tx.output.len() as u32)
            .filter_map(|vout| self.spent_by.get(&OutPoint::new(*txid, vout)).copied())
            .collect()
    }

    /// A transaction and all its in-mempool descendants.
    pub fn descendants_inclusive(&self, txid: &Txid) -> BTreeSet<Txid> {
        self.reachable(txid, |t, _| self.children(t).into_iter().collect())
    }

    /// A transaction and all its in-mempool ancestors.
    pub fn ancestors_inclusive(&self, txid: &Txid) -> BTreeSet<Txid> {
        self.reachable(txid, |_, e| self.parents(&e.tx).into_iter().collect())
    }

    /// The transactions connected to `txid` by spending, either way (its
    /// cluster, in Core 31's cluster mempool).
    pub fn cluster(&self, txid: &Txid) -> BTreeSet<Txid> {
        self.reachable(txid, |t, e| {
            let mut next: Vec<Txid> = self.parents(&e.tx).into_iter().collect();
            next.extend(self.children(t));
            next
        })
    }

    /// The in-mempool transactions reachable from `txid` (itself included)
    /// by following `next` from each one.
    fn reachable(
        &self,
        txid: &Txid,
        next: impl Fn(&Txid, &MempoolEntry) -> Vec<Txid>,
    ) -> BTreeSet<Txid> {
        let mut out = BTreeSet::new();
        let mut stack = vec![*txid];
        while let Some(t) = stack.pop() {
            if let Some(e) = self.entries.get(&t) {
                if out.insert(t) {
                    stack.extend(next(&t, e));
                }
            }
        }
        out
    }

    /// The chunk `txid` is mined in (Core 31's `chunkweight` and `fees.chunk`):
    /// its weight and fee. The cluster is linearized by ancestor sets, best
    /// feerate first (a child paying for its parent joins the parent's
    /// chunk), which is what Core's linearization gives for the small
    /// clusters tests build.
    pub fn chunk(&self, txid: &Txid) -> (u64, Amount) {
        let mut remaining = self.cluster(txid);
        let sum = |set: &BTreeSet<Txid>| {
            set.iter()
                .filter_map(|t| self.entries.get(t))
                .fold((0u64, Amount::ZERO), |(w, f), e| (w + e.weight, f + e.fee))
        };
        while !remaining.is_empty() {
            let best = remaining
                .iter()
                .map(|t| {
                    let set: BTreeSet<Txid> = self
                        .ancestors_inclusive(t)
                        .intersection(&remaining)
                        .copied()
                        .collect();
                    let (w, f) = sum(&set);
                    (set, w, f)
                })
                // fee/weight compared without division; ties go to the smaller set.
                .max_by(|(_, wa, fa), (_, wb, fb)| {
                    (u128::from(fa.to_sat()) * u128::from(*wb))
                        .cmp(&(u128::from(fb.to_sat()) * u128::from(*wa)))
                        .then(wb.cmp(wa))
                })
                .expect("not empty");
            let (set, w, f) = best;
            if set.contains(txid) {
                return (w, f);
            }
            remaining.retain(|t| !set.contains(t));
        }
        self.entries
            .get(txid)
            .map_or((0, Amount::ZERO), |e| (e.weight, e.fee))
    }

    /// Removes a transaction and its descendants.
    pub fn remove_with_descendants(&mut self, txid: &Txid) -> Vec<MempoolEntry> {
        self.descendants_inclusive(txid)
            .iter()
            .filter_map(|t| self.remove(t))
            .collect()
    }

    /// Empties the mempool, returning the entries in insertion order.
    pub fn drain(&mut self) -> Vec<MempoolEntry> {
        let mut v: Vec<_> = self.entries.drain().map(|(_, e)| e).collect();
        self.spent_by.clear();
        v.sort_by_key(|e| e.seq);
        v
    }
}
