//! Mempool acceptance: the checks Bitcoin Core's `AcceptToMemoryPool` makes for
//! ordinary wallet transactions, with Core's reject reasons. Scripts are run by
//! `libbitcoinconsensus` (Core's own interpreter) with the spent outputs, so
//! segwit v0 and taproot signatures are really checked.

use std::collections::BTreeSet;

use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::{hash160, Hash};
use bitcoin::{Amount, OutPoint, Transaction, TxOut, Txid};

use crate::chain::{Chain, COINBASE_MATURITY};
use crate::dialect::CoreVersion;
use crate::error::{RejectKind, TxReject};
use crate::format::{format_feerate, format_money, script_type};
use crate::mempool::Mempool;

/// Minimum relay fee and incremental relay fee, in sat/kvB (Core 28's
/// defaults; see [`CoreVersion::min_relay_fee_sat_per_kvb`] for current Core's).
pub const MIN_RELAY_FEE_SAT_PER_KVB: u64 = 1_000;
/// Largest standard OP_RETURN scriptPubKey before Core 30: 80 data bytes plus
/// opcode and push.
pub const MAX_OP_RETURN_SCRIPT: usize = 83;
/// Core 30's default `-datacarriersize`: the OP_RETURN scriptPubKey bytes of
/// all outputs together.
pub const MAX_DATACARRIER_BYTES: usize = 100_000;
/// Largest standard transaction weight.
pub const MAX_STANDARD_TX_WEIGHT: u64 = 400_000;
/// Most transactions one replacement may evict (BIP125 rule 5).
pub const MAX_REPLACEMENT_CANDIDATES: usize = 100;

const SEQUENCE_FINAL: u32 = 0xffff_ffff;
const SEQUENCE_LOCKTIME_DISABLE_FLAG: u32 = 1 << 31;
const SEQUENCE_LOCKTIME_TYPE_FLAG: u32 = 1 << 22;
const SEQUENCE_LOCKTIME_MASK: u32 = 0x0000_ffff;
const LOCKTIME_THRESHOLD: u32 = 500_000_000;

/// How strict acceptance is.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptOptions {
    /// Skip fee-rate minimums, as Core does when re-adding reorged transactions.
    pub bypass_limits: bool,
    /// The Core release whose policy and messages apply.
    pub version: CoreVersion,
}

/// What an acceptable transaction costs and replaces.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Fee paid.
    pub fee: Amount,
    /// Virtual size.
    pub vsize: u64,
    /// Mempool transactions it replaces (conflicts and their descendants).
    pub replaced: BTreeSet<Txid>,
    /// BIP125 replaceability (explicit signal or inherited from a parent).
    pub bip125_replaceable: bool,
}

fn reject(kind: RejectKind, reason: &str) -> TxReject {
    TxReject::new(kind, reason)
}

fn policy(reason: &str) -> TxReject {
    reject(RejectKind::Policy, reason)
}

/// Checks that `tx` may enter the mempool on top of `chain`, replacing conflicts.
pub fn check_mempool_accept(
    chain: &Chain,
    mempool: &Mempool,
    tx: &Transaction,
    opts: AcceptOptions,
) -> Result<Accepted, TxReject> {
    let txid = tx.compute_txid();
    check_transaction(tx)?;
    if tx.is_coinbase() {
        return Err(reject(RejectKind::Consensus, "coinbase"));
    }
    let version = opts.version;
    check_standard(tx, version)?;
    if tx.base_size() < 65 {
        return Err(policy("tx-size-small"));
    }
    let next_height = chain.tip_height() + 1;
    let tip_mtp = chain.tip().median_time;
    if !is_final(tx, next_height, tip_mtp) {
        return Err(reject(RejectKind::Policy, "non-final"));
    }
    if mempool.contains(&txid) {
        return Err(reject(RejectKind::Conflict, "txn-already-in-mempool"));
    }

    // Direct conflicts: mempool transactions spending the same outpoints (full RBF).
    let conflicts: BTreeSet<Txid> = tx
        .input
        .iter()
        .filter_map(|i| mempool.spender(&i.previous_output))
        .collect();

    // Spent coins, from the chain or from mempool parents.
    let mut spent: Vec<(TxOut, u32, bool)> = Vec::with_capacity(tx.input.len());
    for i in &tx.input {
        let op = i.previous_output;
        let coin = if let Some(parent) = mempool.get(&op.txid) {
            parent
                .tx
                .output
                .get(op.vout as usize)
                .map(|o| (o.clone(), next_height, false))
        } else {
            chain
                .coin(&op)
                .map(|c| (c.output.clone(), c.height, c.is_coinbase))
        };
        match coin {
            Some(c) => spent.push(c),
            None => {
                let known = (0..tx.output.len() as u32)
                    .any(|v| chain.coin(&OutPoint::new(txid, v)).is_some());
                if known {
                    return Err(reject(RejectKind::Conflict, "txn-already-known"));
                }
                return Err(reject(
                    RejectKind::MissingInputs,
                    "bad-txns-inputs-missingorspent",
                ));
            }
        }
    }

    if !sequence_locks_ok(chain, tx, &spent) {
        return Err(reject(RejectKind::Policy, "non-BIP68-final"));
    }

    // CheckTxInputs.
    let mut value_in = Amount::ZERO;
    for (out, height, is_coinbase) in &spent {
        if *is_coinbase && next_height - height < COINBASE_MATURITY {
            return Err(TxReject::with_details(
                RejectKind::PrematureSpend,
                "bad-txns-premature-spend-of-coinbase",
                format!("tried to spend coinbase at depth {}", next_height - height),
            ));
        }
        value_in += out.value;
    }
    let value_out: Amount = tx.output.iter().map(|o| o.value).sum();
    if value_in < value_out {
        return Err(TxReject::with_details(
            RejectKind::Consensus,
            "bad-txns-in-belowout",
            format!(
                "value in ({}) < value out ({})",
                format_money(value_in.to_sat() as i64),
                format_money(value_out.to_sat() as i64)
            ),
        ));
    }
    let fee = value_in - value_out;
    let vsize = tx.vsize() as u64;
    let required = fee_for(version.min_relay_fee_sat_per_kvb(), vsize);
    if !opts.bypass_limits && fee.to_sat() < required {
        return Err(TxReject::with_details(
            RejectKind::Policy,
            "min relay fee not met",
            format!("{} < {}", fee.to_sat(), required),
        ));
    }

    // A transaction cannot spend an output of a transaction it replaces.
    let mut replaced = BTreeSet::new();
    for c in &conflicts {
        replaced.extend(mempool.descendants_inclusive(c));
    }
    let parents = mempool.parents(tx);
    if let Some(p) = parents.iter().find(|p| replaced.contains(*p)) {
        return Err(TxReject::with_details(
            RejectKind::Consensus,
            "bad-txns-spends-conflicting-tx",
            format!("{txid} spends conflicting transaction {p}"),
        ));
    }

    if !conflicts.is_empty() {
        let proposed = Proposed {
            tx,
            txid,
            fee,
            vsize,
        };
        check_replacement(mempool, &proposed, &conflicts, &replaced, version)?;
    }

    verify_scripts(tx, &spent, version)?;

    let signals = tx.input.iter().any(|i| i.sequence.0 < SEQUENCE_FINAL - 1);
    // Parents' flags already include their own ancestors'.
    let inherits = parents
        .iter()
        .any(|p| mempool.get(p).is_some_and(|e| e.bip125_replaceable));
    Ok(Accepted {
        fee,
        vsize,
        replaced,
        bip125_replaceable: signals || inherits,
    })
}

/// `CFeeRate::GetFee`: fee for `vsize` at `rate` sat/kvB, never zero for a non-zero rate.
fn fee_for(rate: u64, vsize: u64) -> u64 {
    let fee = rate * vsize / 1000;
    if fee == 0 && rate > 0 {
        1
    } else {
        fee
    }
}

/// A replacement being checked.
struct Proposed<'a> {
    tx: &'a Transaction,
    txid: Txid,
    fee: Amount,
    vsize: u64,
}

fn check_replacement(
    mempool: &Mempool,
    proposed: &Proposed<'_>,
    conflicts: &BTreeSet<Txid>,
    replaced: &BTreeSet<Txid>,
    version: CoreVersion,
) -> Result<(), TxReject> {
    let Proposed {
        tx,
        txid,
        fee,
        vsize,
    } = *proposed;
    if replaced.len() > MAX_REPLACEMENT_CANDIDATES {
        return Err(TxReject::with_details(
            RejectKind::Policy,
            "too many potential replacements",
            format!(
                "rejecting replacement {txid}; too many potential replacements ({} > {})",
                replaced.len(),
                MAX_REPLACEMENT_CANDIDATES
            ),
        ));
    }
    // Rule 2: no new unconfirmed inputs.
    let conflict_parents: BTreeSet<Txid> = conflicts
        .iter()
        .filter_map(|c| mempool.get(c))
        .flat_map(|e| e.tx.input.iter().map(|i| i.previous_output.txid))
        .collect();
    for (idx, i) in tx.input.iter().enumerate() {
        let t = i.previous_output.txid;
        if mempool.contains(&t) && !conflict_parents.contains(&t) {
            return Err(TxReject::with_details(
                RejectKind::Policy,
                "replacement-adds-unconfirmed",
                format!("replacement {txid} adds unconfirmed input, idx {idx}"),
            ));
        }
    }
    // Rule 6 (before Core 31): a higher feerate than every direct conflict.
    if !version.cluster_mempool_rbf() {
        let new_rate = fee.to_sat() * 1000 / vsize;
        for c in conflicts {
            let e = mempool.get(c).expect("conflict is in mempool");
            let old_rate = e.fee.to_sat() * 1000 / e.vsize;
            if new_rate <= old_rate {
                return Err(TxReject::with_details(
                    RejectKind::Policy,
                    "insufficient fee",
                    format!(
                        "rejecting replacement {txid}; new feerate {} <= old feerate {}",
                        format_feerate(new_rate),
                        format_feerate(old_rate)
                    ),
                ));
            }
        }
    }
    // Rules 3 and 4: pay for everything evicted, plus own bandwidth.
    let original: u64 = replaced
        .iter()
        .filter_map(|t| mempool.get(t))
        .map(|e| e.fee.to_sat())
        .sum();
    if fee.to_sat() < original {
        return Err(TxReject::with_details(
            RejectKind::Policy,
            "insufficient fee",
            format!(
                "rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                format_money(fee.to_sat() as i64),
                format_money(original as i64)
            ),
        ));
    }
    let additional = fee.to_sat() - original;
    let needed = fee_for(version.min_relay_fee_sat_per_kvb(), vsize);
    if additional < needed {
        return Err(TxReject::with_details(
            RejectKind::Policy,
            "insufficient fee",
            format!(
                "rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
                format_money(additional as i64),
                format_money(needed as i64)
            ),
        ));
    }
    // Core 31: the new feerate diagram must be better. With more fees than
    // everything evicted (checked above) that fails only when the
    // replacement's feerate is below a conflict's, compared exactly.
    if version.cluster_mempool_rbf() {
        for c in conflicts {
            let e = mempool.get(c).expect("conflict is in mempool");
            if u128::from(fee.to_sat()) * u128::from(e.vsize)
                < u128::from(e.fee.to_sat()) * u128::from(vsize)
            {
                return Err(TxReject::with_details(
                    RejectKind::Policy,
                    "replacement-failed",
                    "insufficient feerate: does not improve feerate diagram",
                ));
            }
        }
    }
    Ok(())
}

/// Context-free consensus checks (`CheckTransaction`).
pub fn check_transaction(tx: &Transaction) -> Result<(), TxReject> {
    let c = |r: &str| reject(RejectKind::Consensus, r);
    if tx.input.is_empty() {
        return Err(c("bad-txns-vin-empty"));
    }
    if tx.output.is_empty() {
        return Err(c("bad-txns-vout-empty"));
    }
    if tx.base_size() * 4 > 4_000_000 {
        return Err(c("bad-txns-oversize"));
    }
    let mut total = 0u64;
    for o in &tx.output {
        if o.value > Amount::MAX_MONEY {
            return Err(c("bad-txns-vout-toolarge"));
        }
        total += o.value.to_sat();
        if total > Amount::MAX_MONEY.to_sat() {
            return Err(c("bad-txns-txouttotal-toolarge"));
        }
    }
    let mut seen = BTreeSet::new();
    for i in &tx.input {
        if !seen.insert(i.previous_output) {
            return Err(c("bad-txns-inputs-duplicate"));
        }
    }
    if tx.is_coinbase() {
        let len = tx.input[0].script_sig.len();
        if !(2..=100).contains(&len) {
            return Err(c("bad-cb-length"));
        }
    } else if tx.input.iter().any(|i| i.previous_output.is_null()) {
        return Err(c("bad-txns-prevout-null"));
    }
    Ok(())
}

/// `IsStandardTx`, for the rules wallets run into.
fn check_standard(tx: &Transaction, version: CoreVersion) -> Result<(), TxReject> {
    if !(1..=3).contains(&tx.version.0) {
        return Err(policy("version"));
    }
    if tx.weight().to_wu() > MAX_STANDARD_TX_WEIGHT {
        return Err(policy("tx-size"));
    }
    for i in &tx.input {
        if i.script_sig.len() > 1650 {
            return Err(policy("scriptsig-size"));
        }
        if !i.script_sig.is_push_only() {
            return Err(policy("scriptsig-not-pushonly"));
        }
    }
    let relaxed = version.relaxed_op_return();
    let (mut data_outputs, mut data_bytes) = (0, 0);
    for o in &tx.output {
        let t = script_type(&o.script_pubkey);
        if t == "nonstandard"
            || (!relaxed && t == "nulldata" && o.script_pubkey.len() > MAX_OP_RETURN_SCRIPT)
        {
            return Err(policy("scriptpubkey"));
        }
        if t == "nulldata" {
            data_outputs += 1;
            data_bytes += o.script_pubkey.len();
        } else if o.value < o.script_pubkey.minimal_non_dust() {
            // Core 29+ explains: only a zero-fee (ephemeral dust) parent may have dust.
            return Err(if version >= CoreVersion::V31 {
                TxReject::with_details(
                    RejectKind::Policy,
                    "dust",
                    "tx with dust output must be 0-fee",
                )
            } else {
                policy("dust")
            });
        }
    }
    if relaxed {
        if data_bytes > MAX_DATACARRIER_BYTES {
            return Err(policy("datacarrier"));
        }
    } else if data_outputs > 1 {
        return Err(policy("multi-op-return"));
    }
    Ok(())
}

/// `IsFinalTx` for inclusion in a block at `height` whose predecessor has `mtp`.
pub fn is_final(tx: &Transaction, height: u32, mtp: u32) -> bool {
    let lock = tx.lock_time.to_consensus_u32();
    if lock == 0 {
        return true;
    }
    let limit = if lock < LOCKTIME_THRESHOLD {
        height
    } else {
        mtp
    };
    if lock < limit {
        return true;
    }
    tx.input.iter().all(|i| i.sequence.0 == SEQUENCE_FINAL)
}

/// BIP68 relative lock-times, evaluated for the next block.
fn sequence_locks_ok(chain: &Chain, tx: &Transaction, spent: &[(TxOut, u32, bool)]) -> bool {
    if tx.version.0 < 2 {
        return true;
    }
    let next_height = chain.tip_height() + 1;
    let tip_mtp = chain.tip().median_time;
    let (mut min_height, mut min_time) = (-1i64, -1i64);
    for (i, (_, coin_height, _)) in tx.input.iter().zip(spent) {
        let seq = i.sequence.0;
        if seq & SEQUENCE_LOCKTIME_DISABLE_FLAG != 0 {
            continue;
        }
        let value = i64::from(seq & SEQUENCE_LOCKTIME_MASK);
        if seq & SEQUENCE_LOCKTIME_TYPE_FLAG != 0 {
            let coin_time = i64::from(chain.median_time_at(coin_height.saturating_sub(1)));
            min_time = min_time.max(coin_time + (value << 9) - 1);
        } else {
            min_height = min_height.max(i64::from(*coin_height) + value - 1);
        }
    }
    min_height < i64::from(next_height) && min_time < i64::from(tip_mtp)
}

/// Runs every input's script through libbitcoinconsensus with all the
/// consensus flags Core's mempool treats as mandatory (P2SH, DERSIG, NULLDUMMY,
/// CLTV, CSV, WITNESS, TAPROOT).
pub fn verify_scripts(
    tx: &Transaction,
    spent: &[(TxOut, u32, bool)],
    version: CoreVersion,
) -> Result<(), TxReject> {
    let raw = serialize(tx);
    let scripts: Vec<Vec<u8>> = spent
        .iter()
        .map(|(o, _, _)| o.script_pubkey.to_bytes())
        .collect();
    let utxos: Vec<bitcoinconsensus::Utxo> = spent
        .iter()
        .zip(&scripts)
        .map(|((o, _, _), s)| bitcoinconsensus::Utxo {
            script_pubkey: s.as_ptr(),
            script_pubkey_len: s.len() as u32,
            value: o.value.to_sat() as i64,
        })
        .collect();
    for (idx, ((out, _, _), script)) in spent.iter().zip(&scripts).enumerate() {
        let res = bitcoinconsensus::verify_with_flags(
            script,
            out.value.to_sat(),
            &raw,
            Some(&utxos),
            idx,
            bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
        );
        if res.is_err() {
            let hint = script_error_hint(tx, idx, &out.script_pubkey);
            if !version.names_failed_input() {
                return Err(TxReject::new(
                    RejectKind::Consensus,
                    format!("mandatory-script-verify-flag-failed ({hint})"),
                ));
            }
            let prev = tx.input[idx].previous_output;
            return Err(TxReject::with_details(
                RejectKind::Consensus,
                format!("mempool-script-verify-flag-failed ({hint})"),
                format!(
                    "input {idx} of {} (wtxid {}), spending {}:{}",
                    tx.compute_txid(),
                    tx.compute_wtxid(),
                    prev.txid,
                    prev.vout
                ),
            ));
        }
    }
    Ok(())
}

/// libbitcoinconsensus says only *that* a script failed; Core's message names
/// the `ScriptError`. Recover it for the common single-key templates.
fn script_error_hint(tx: &Transaction, idx: usize, spk: &bitcoin::Script) -> &'static str {
    const EVAL_FALSE: &str =
        "Script evaluated without error but finished with a false/empty top stack element";
    let input = &tx.input[idx];
    let w = &input.witness;
    if spk.is_witness_program() {
        if !input.script_sig.is_empty() {
            return "Witness requires empty scriptSig";
        }
        // Core checks a P2WPKH witness for exactly two items, so an empty
        // one is a mismatch there; P2WSH and taproot report it as empty.
        if w.is_empty() && !spk.is_p2wpkh() {
            return "Witness program was passed an empty witness";
        }
    }
    if spk.is_p2tr() {
        let has_annex = w.len() >= 2 && w.last().is_some_and(|a| a.first() == Some(&0x50));
        let stack = w.len() - usize::from(has_annex);
        if stack == 1 {
            let sig_len = w.nth(0).map_or(0, |s| s.len());
            return if sig_len == 64 || sig_len == 65 {
                "Invalid Schnorr signature"
            } else {
                "Invalid Schnorr signature size"
            };
        }
        return EVAL_FALSE;
    }
    if spk.is_p2wpkh() {
        if w.len() != 2 {
            return "Witness program hash mismatch";
        }
        let pk = w.nth(1).unwrap_or_default();
        if hash160::Hash::hash(pk).as_byte_array()[..] != spk.as_bytes()[2..] {
            return "Script failed an OP_EQUALVERIFY operation";
        }
        // Core reports the error of its first (standard-flags) run, where
        // NULLFAIL turns a wrong non-empty signature into this message.
        return if w.nth(0).is_some_and(|s| !s.is_empty()) {
            "Signature must be zero for failed CHECK(MULTI)SIG operation"
        } else {
            EVAL_FALSE
        };
    }
    if spk.is_p2wsh() {
        let ws = w.last().unwrap_or_default();
        if bitcoin::hashes::sha256::Hash::hash(ws).as_byte_array()[..] != spk.as_bytes()[2..] {
            return "Witness program hash mismatch";
        }
    }
    EVAL_FALSE
}
