//! Pure decisions of the anchor chain: fee rates, coin selection, sizes and
//! what to do next with each anchor record. No I/O here, so every rule is unit-tested.

use bitcoin::{Amount, FeeRate, OutPoint, Weight};

/// Smallest change output an anchor may leave: the next anchor spends it, so it
/// must stay well above the P2TR dust limit (330 sat) even after a fee bump.
pub const MIN_CHAIN_VALUE: Amount = Amount::from_sat(1_000);

/// Weight of a P2TR key-path input: 41 bytes outpoint/script/sequence (×4) and a
/// witness of one 64-byte Schnorr signature (1 item count + 1 length + 64).
const P2TR_KEYSPEND_INPUT_WEIGHT: u64 = 41 * 4 + 66;
/// Weight of a P2TR output: 8 value + 1 length + 34 script.
const P2TR_OUTPUT_WEIGHT: u64 = 43 * 4;
/// Version, locktime, input and output counts (×4), plus the segwit marker and flag.
const TX_OVERHEAD_WEIGHT: u64 = 10 * 4 + 2;
/// Minimum relay feerate increment Bitcoin Core asks of a replacement (1 sat/vB).
pub const INCREMENTAL_RELAY_FEE: FeeRate = FeeRate::from_sat_per_vb_u32(1);

/// Weight of an anchor transaction with `inputs` P2TR key-path inputs, one
/// OP_RETURN output carrying `payload_len` bytes and one P2TR change output.
pub fn anchor_tx_weight(inputs: usize, payload_len: usize) -> Weight {
    let push = if payload_len <= 75 { 1 } else { 2 };
    let script_len = 1 + push + payload_len as u64;
    let op_return_weight = (8 + 1 + script_len) * 4;
    Weight::from_wu(
        TX_OVERHEAD_WEIGHT
            + inputs as u64 * P2TR_KEYSPEND_INPUT_WEIGHT
            + op_return_weight
            + P2TR_OUTPUT_WEIGHT,
    )
}

/// The feerate to use: the node's estimate (none when it has no data, as on a
/// fresh regtest chain) clamped to `[floor, cap]`.
pub fn clamp_fee_rate(estimate: Option<FeeRate>, floor: FeeRate, cap: FeeRate) -> FeeRate {
    let rate = estimate.unwrap_or(floor).max(floor);
    rate.min(cap.max(floor))
}

/// The feerate of a replacement for a transaction paying `old`: the current
/// target, but at least 25 % and 1 sat/vB above `old`, clamped to `cap`.
/// `None` when the cap leaves no room above `old`.
pub fn bump_fee_rate(old: FeeRate, target: FeeRate, cap: FeeRate) -> Option<FeeRate> {
    let old_kwu = old.to_sat_per_kwu();
    let quarter = FeeRate::from_sat_per_kwu(old_kwu + old_kwu.div_ceil(4));
    let plus_one = FeeRate::from_sat_per_kwu(old_kwu + INCREMENTAL_RELAY_FEE.to_sat_per_kwu());
    let rate = target.max(quarter).max(plus_one).min(cap);
    (rate > old).then_some(rate)
}

/// Absolute fee of a replacement of `weight` at `rate` that evicts transactions
/// paying `evicted_fees` in total: Bitcoin Core's rules 3 and 4 ask for at least
/// the evicted fees plus the incremental relay fee for the replacement's own size.
pub fn replacement_fee(rate: FeeRate, weight: Weight, evicted_fees: Amount) -> Amount {
    let at_rate = fee_for(rate, weight);
    let minimum = evicted_fees + fee_for(INCREMENTAL_RELAY_FEE, weight);
    at_rate.max(minimum)
}

/// `rate × weight`, rounded up to the satoshi.
pub fn fee_for(rate: FeeRate, weight: Weight) -> Amount {
    Amount::from_sat((rate.to_sat_per_kwu() * weight.to_wu()).div_ceil(1000))
}

/// A spendable coin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coin {
    /// Where it is.
    pub outpoint: OutPoint,
    /// How much it holds.
    pub value: Amount,
}

/// The wallet cannot pay for an anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// What the anchor needs: fee plus [`MIN_CHAIN_VALUE`] of change.
    pub needed: Amount,
    /// What the usable coins hold.
    pub available: Amount,
}

/// Chooses the inputs of an anchor: always the chain coin (the previous anchor's
/// change) when there is one, and other coins, largest first, only while the
/// inputs cannot pay `fee` (or `rate`) plus [`MIN_CHAIN_VALUE`] of change.
///
/// `fee` is an absolute minimum (for replacements); the feerate applies to the
/// transaction's estimated weight with the chosen number of inputs.
pub fn select_inputs(
    chain: Option<Coin>,
    others: &[Coin],
    rate: FeeRate,
    min_fee: Amount,
    payload_len: usize,
) -> Result<Vec<Coin>, Shortfall> {
    let needed =
        |n: usize| fee_for(rate, anchor_tx_weight(n, payload_len)).max(min_fee) + MIN_CHAIN_VALUE;
    let mut others: Vec<Coin> = others
        .iter()
        .filter(|c| Some(c.outpoint) != chain.map(|c| c.outpoint))
        .copied()
        .collect();
    // Largest first keeps the input count, and so the fee, small.
    others.sort_by(|a, b| b.value.cmp(&a.value).then(a.outpoint.cmp(&b.outpoint)));
    let mut chosen: Vec<Coin> = chain.into_iter().collect();
    let mut total: Amount = chosen.iter().map(|c| c.value).sum();
    let mut rest = others.into_iter();
    while chosen.is_empty() || total < needed(chosen.len()) {
        match rest.next() {
            Some(coin) => {
                total += coin.value;
                chosen.push(coin);
            }
            None => {
                return Err(Shortfall {
                    needed: needed(chosen.len().max(1)),
                    available: total,
                })
            }
        }
    }
    Ok(chosen)
}

/// What the anchor store says about one epoch's anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No transaction yet.
    Queued,
    /// A transaction was built and saved but the node has not accepted it yet.
    Signed,
    /// The node accepted it at height `since` (or it came back from a reorg then).
    Unconfirmed {
        /// Tip height when it entered the mempool: the fee-bump clock starts there.
        since: u32,
    },
    /// Confirmed at `height` on the chain last seen.
    Confirmed {
        /// Block height.
        height: u32,
    },
}

/// What the chain says about the anchor's transaction (any of its versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seen {
    /// In a block of the best chain.
    Confirmed,
    /// In the node's mempool.
    InMempool,
    /// Neither: never broadcast, evicted, conflicted, or dropped by a reorg.
    #[default]
    NotSeen,
}

/// What to do with one anchor record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Record the confirmation.
    Confirm,
    /// It was confirmed, a reorg put it back in the mempool: unconfirmed again,
    /// with the fee-bump clock restarted.
    Reopen,
    /// Nothing to do yet.
    Wait,
    /// Send the saved transaction again; if the node refuses it, build a new one.
    Rebroadcast,
    /// Unconfirmed for too long: replace it with a higher fee (same chain input).
    Bump,
    /// Build and send its first transaction.
    Build,
}

/// Decides the next step for one record, given the chain tip height and the
/// number of blocks an anchor may stay unconfirmed before it is fee-bumped.
pub fn decide(stored: Stored, seen: Seen, tip: u32, bump_after_blocks: u32) -> Step {
    match (stored, seen) {
        (Stored::Queued, _) => Step::Build,
        (_, Seen::Confirmed) => Step::Confirm,
        (Stored::Confirmed { .. } | Stored::Signed, Seen::InMempool) => Step::Reopen,
        (Stored::Unconfirmed { since }, Seen::InMempool) => {
            if tip >= since.saturating_add(bump_after_blocks.max(1)) {
                Step::Bump
            } else {
                Step::Wait
            }
        }
        (_, Seen::NotSeen) => Step::Rebroadcast,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn sat_vb(n: u64) -> FeeRate {
        FeeRate::from_sat_per_vb(n).unwrap()
    }

    fn coin(n: u8, sat: u64) -> Coin {
        let txid = bitcoin::Txid::from_str(&format!("{n:02x}").repeat(32)).unwrap();
        Coin {
            outpoint: OutPoint::new(txid, 0),
            value: Amount::from_sat(sat),
        }
    }

    #[test]
    fn anchor_size_matches_a_real_one_input_anchor() {
        // 143 non-witness bytes and 68 witness bytes: 640 WU, 160 vB.
        let w = anchor_tx_weight(1, 38);
        assert_eq!(w.to_wu(), 640);
        assert_eq!(w.to_vbytes_ceil(), 160);
        assert_eq!(fee_for(sat_vb(1), w), Amount::from_sat(160));
        // Each extra input adds 57.5 vB; pushes above 75 bytes need OP_PUSHDATA1.
        assert_eq!(anchor_tx_weight(2, 38).to_wu(), 870);
        assert_eq!(
            anchor_tx_weight(1, 80).to_wu() - anchor_tx_weight(1, 75).to_wu(),
            24
        );
    }

    #[test]
    fn fee_rate_clamped_to_floor_and_cap() {
        let (floor, cap) = (sat_vb(2), sat_vb(20));
        assert_eq!(clamp_fee_rate(None, floor, cap), floor);
        assert_eq!(clamp_fee_rate(Some(sat_vb(1)), floor, cap), floor);
        assert_eq!(clamp_fee_rate(Some(sat_vb(7)), floor, cap), sat_vb(7));
        assert_eq!(clamp_fee_rate(Some(sat_vb(500)), floor, cap), cap);
        // A cap below the floor is a misconfiguration; the floor wins.
        assert_eq!(clamp_fee_rate(Some(sat_vb(5)), floor, sat_vb(1)), floor);
    }

    #[test]
    fn bump_raises_at_least_a_quarter_and_one_sat() {
        let cap = sat_vb(50);
        assert_eq!(bump_fee_rate(sat_vb(1), sat_vb(1), cap), Some(sat_vb(2)));
        assert_eq!(bump_fee_rate(sat_vb(8), sat_vb(1), cap), Some(sat_vb(10)));
        assert_eq!(bump_fee_rate(sat_vb(8), sat_vb(30), cap), Some(sat_vb(30)));
        assert_eq!(bump_fee_rate(sat_vb(45), sat_vb(1), cap), Some(cap));
        assert_eq!(bump_fee_rate(cap, sat_vb(1), cap), None);
    }

    #[test]
    fn replacement_pays_for_everything_it_evicts() {
        let w = anchor_tx_weight(1, 38);
        // Alone: the rate decides.
        assert_eq!(
            replacement_fee(sat_vb(2), w, Amount::from_sat(160)),
            Amount::from_sat(320)
        );
        // Evicting a child too: old fees plus 1 sat/vB of its own size.
        assert_eq!(
            replacement_fee(sat_vb(2), w, Amount::from_sat(500)),
            Amount::from_sat(660)
        );
    }

    #[test]
    fn chain_coin_alone_when_it_suffices() {
        let chain = coin(1, 50_000);
        let got = select_inputs(
            Some(chain),
            &[coin(2, 90_000), chain],
            sat_vb(1),
            Amount::ZERO,
            38,
        )
        .unwrap();
        assert_eq!(got, vec![chain]);
    }

    #[test]
    fn small_chain_coin_is_topped_up_but_kept() {
        let chain = coin(1, 500);
        let got = select_inputs(
            Some(chain),
            &[coin(2, 700), coin(3, 90_000)],
            sat_vb(1),
            Amount::ZERO,
            38,
        )
        .unwrap();
        assert_eq!(got, vec![chain, coin(3, 90_000)]);
    }

    #[test]
    fn no_chain_coin_takes_the_largest() {
        let got = select_inputs(
            None,
            &[coin(2, 5_000), coin(3, 90_000)],
            sat_vb(1),
            Amount::ZERO,
            38,
        )
        .unwrap();
        assert_eq!(got, vec![coin(3, 90_000)]);
    }

    #[test]
    fn shortfall_reports_needed_and_available() {
        let err = select_inputs(None, &[], sat_vb(1), Amount::ZERO, 38).unwrap_err();
        assert_eq!(
            err,
            Shortfall {
                needed: Amount::from_sat(1_160),
                available: Amount::ZERO
            }
        );
        let err = select_inputs(
            Some(coin(1, 600)),
            &[coin(2, 300)],
            sat_vb(1),
            Amount::ZERO,
            38,
        )
        .unwrap_err();
        assert_eq!(err.available, Amount::from_sat(900));
        assert_eq!(
            err.needed,
            fee_for(sat_vb(1), anchor_tx_weight(2, 38)) + MIN_CHAIN_VALUE
        );
        // An absolute minimum (replacement) raises what is needed.
        let err = select_inputs(
            Some(coin(1, 2_000)),
            &[],
            sat_vb(1),
            Amount::from_sat(5_000),
            38,
        )
        .unwrap_err();
        assert_eq!(err.needed, Amount::from_sat(6_000));
    }

    #[test]
    fn decisions() {
        use Seen::*;
        let bump = 3;
        assert_eq!(decide(Stored::Queued, NotSeen, 10, bump), Step::Build);
        assert_eq!(decide(Stored::Signed, NotSeen, 10, bump), Step::Rebroadcast);
        assert_eq!(decide(Stored::Signed, InMempool, 10, bump), Step::Reopen);
        assert_eq!(decide(Stored::Signed, Confirmed, 10, bump), Step::Confirm);
        let unconf = Stored::Unconfirmed { since: 10 };
        assert_eq!(decide(unconf, InMempool, 12, bump), Step::Wait);
        assert_eq!(decide(unconf, InMempool, 13, bump), Step::Bump);
        assert_eq!(decide(unconf, Confirmed, 13, bump), Step::Confirm);
        assert_eq!(decide(unconf, NotSeen, 11, bump), Step::Rebroadcast);
        let conf = Stored::Confirmed { height: 11 };
        assert_eq!(decide(conf, Confirmed, 20, bump), Step::Confirm);
        assert_eq!(decide(conf, InMempool, 20, bump), Step::Reopen);
        assert_eq!(decide(conf, NotSeen, 20, bump), Step::Rebroadcast);
        // Zero means "bump after one block", never "bump at once".
        assert_eq!(decide(unconf, InMempool, 10, 0), Step::Wait);
    }
}
