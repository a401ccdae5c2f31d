//! Block assembly and proof-of-work: a BIP34 coinbase with the segwit witness
//! commitment, the merkle root, and a real nonce search against `bits`.

use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence,
    Target, Transaction, TxIn, TxMerkleNode, TxOut, Witness,
};

/// Regtest's `nSubsidyHalvingInterval`.
pub const SUBSIDY_HALVING_INTERVAL: u32 = 150;
/// Regtest's proof-of-work limit in compact form.
pub const REGTEST_BITS: u32 = 0x207f_ffff;

/// The block reward at `height` (before fees).
pub fn block_subsidy(height: u32) -> Amount {
    let halvings = height / SUBSIDY_HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000) >> halvings)
}

/// The coinbase transaction: height push (BIP34) then `OP_0` like Core's miner,
/// the reward to `payout`, and the witness commitment output added later.
fn coinbase(height: u32, payout: ScriptBuf, value: Amount) -> Transaction {
    let script_sig = Builder::new()
        .push_int(i64::from(height))
        .push_opcode(bitcoin::opcodes::OP_0)
        .into_script();
    let mut witness = Witness::new();
    witness.push([0u8; 32]);
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig,
            sequence: Sequence::MAX,
            witness,
        }],
        output: vec![TxOut {
            value,
            script_pubkey: payout,
        }],
    }
}

/// Assembles and mines a block on `prev` at `height` with timestamp `time`.
///
/// `fees` is the sum of the transactions' fees, which the coinbase claims.
pub fn mine_block(
    prev: BlockHash,
    height: u32,
    time: u32,
    payout: ScriptBuf,
    txs: Vec<Transaction>,
    fees: Amount,
) -> Block {
    let mut txdata = Vec::with_capacity(txs.len() + 1);
    txdata.push(coinbase(height, payout, block_subsidy(height) + fees));
    txdata.extend(txs);
    let mut block = Block {
        header: Header {
            version: Version::from_consensus(0x2000_0000),
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: CompactTarget::from_consensus(REGTEST_BITS),
            nonce: 0,
        },
        txdata,
    };
    // Core always adds the commitment once segwit is active, even with no witness txs.
    let witness_root = block.witness_root().expect("has coinbase");
    let commitment = Block::compute_witness_commitment(&witness_root, &[0u8; 32]);
    let mut data = PushBytesBuf::from([0xaa, 0x21, 0xa9, 0xed]);
    data.extend_from_slice(commitment.as_byte_array())
        .expect("36 bytes fit");
    let commit_script = Builder::new()
        .push_opcode(bitcoin::opcodes::all::OP_RETURN)
        .push_slice(data)
        .into_script();
    block.txdata[0].output.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: commit_script,
    });
    block.header.merkle_root = block.compute_merkle_root().expect("has coinbase");
    solve(&mut block.header);
    block
}

/// Searches nonces (bumping the time if they run out) until the header meets its target.
pub fn solve(header: &mut Header) {
    let target = Target::from_compact(header.bits);
    loop {
        if header.validate_pow(target).is_ok() {
            return;
        }
        if header.nonce == u32::MAX {
            header.nonce = 0;
            header.time += 1;
        } else {
            header.nonce += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mined_block_is_valid() {
        // rust-bitcoin's BIP34 parser wants a data push, which Core uses from height 17.
        let b = mine_block(
            BlockHash::all_zeros(),
            100,
            1_700_000_000,
            ScriptBuf::new(),
            vec![],
            Amount::ZERO,
        );
        assert!(b.check_merkle_root());
        assert!(b.check_witness_commitment());
        assert!(b
            .header
            .validate_pow(Target::from_compact(b.header.bits))
            .is_ok());
        assert_eq!(b.bip34_block_height(), Ok(100));
        assert_eq!(b.txdata[0].output[0].value, Amount::from_int_btc(50));
        assert_eq!(block_subsidy(150), Amount::from_int_btc(25));
    }
}
