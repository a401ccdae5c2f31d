//! Mining: genesis, block structure (BIP34, witness commitment, merkle root,
//! proof of work, chainwork, median time past) and coinbase maturity.

mod common;

use anyhow::{ensure, Result};
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::{Amount, Block, BlockHash, Target};
use cairn_testchain::wallet::InternalWallet;
use common::*;
use serde_json::json;

const REGTEST_GENESIS: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_at_core_regtest_genesis() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let tip = chain.tip().await?;
        assert_eq!(tip.height, 0);
        assert_eq!(tip.hash.to_string(), REGTEST_GENESIS);
        let info = chain.rpc("getblockchaininfo", vec![]).await?;
        assert_eq!(info["chain"], "regtest");
        assert_eq!(
            info["chainwork"],
            "0000000000000000000000000000000000000000000000000000000000000002"
        );
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mined_blocks_are_real_regtest_blocks() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let wallet = InternalWallet::new();
        let hashes = chain.mine(20, &wallet.address()).await?;
        assert_eq!(hashes.len(), 20);
        assert_eq!(chain.tip().await?.height, 20);
        let mut prev: BlockHash = REGTEST_GENESIS.parse()?;
        for (i, hash) in hashes.iter().enumerate() {
            let height = i as u64 + 1;
            let hex = chain
                .rpc("getblock", vec![json!(hash.to_string()), json!(0)])
                .await?;
            let block: Block = deserialize_hex(hex.as_str().unwrap())?;
            assert_eq!(block.block_hash(), *hash);
            assert_eq!(block.header.prev_blockhash, prev);
            assert_eq!(block.header.bits.to_consensus(), 0x207f_ffff);
            assert!(block
                .header
                .validate_pow(Target::from_compact(block.header.bits))
                .is_ok());
            assert!(block.check_merkle_root());
            assert!(block.check_witness_commitment());
            // BIP34: the coinbase scriptSig starts with the height.
            let script_sig = &block.txdata[0].input[0].script_sig;
            let first = script_sig.instructions_minimal().next().unwrap()?;
            let pushed = match first {
                bitcoin::script::Instruction::Op(op) => u64::from(op.to_u8() - 0x50),
                bitcoin::script::Instruction::PushBytes(b) => b
                    .as_bytes()
                    .iter()
                    .rev()
                    .fold(0u64, |a, x| (a << 8) | u64::from(*x)),
            };
            assert_eq!(pushed, height);
            let cb = &block.txdata[0].output[0];
            assert_eq!(cb.value, Amount::from_int_btc(50));
            assert_eq!(cb.script_pubkey, wallet.script_pubkey());

            let header = chain
                .rpc("getblockheader", vec![json!(hash.to_string())])
                .await?;
            assert_eq!(header["height"], json!(height));
            assert_eq!(header["bits"], "207fffff");
            // Each regtest block adds 2 units of work.
            let work = u128::from_str_radix(&header["chainwork"].as_str().unwrap()[32..], 16)?;
            assert_eq!(work, 2 * (u128::from(height) + 1));
            ensure!(
                header["mediantime"].as_u64() <= header["time"].as_u64(),
                "mtp after time"
            );
            prev = *hash;
        }
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_matures_after_100_blocks() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let wallet = InternalWallet::new();
        let hashes = chain.mine(1, &wallet.address()).await?;
        mine(&chain, 98).await?;
        let block = chain
            .rpc("getblock", vec![json!(hashes[0].to_string()), json!(1)])
            .await?;
        let coinbase_txid: bitcoin::Txid = block["tx"][0].as_str().unwrap().parse()?;
        let coin = Coin {
            outpoint: bitcoin::OutPoint::new(coinbase_txid, 0),
            output: out(&wallet.script_pubkey(), 50 * 100_000_000),
        };
        let tx = spend(
            &wallet,
            &[coin],
            vec![out(&wallet.script_pubkey(), 50 * 100_000_000 - 1_000)],
        );
        // Tip is 99: the next block is 100, depth 99.
        let (code, msg) = rpc_error(send(&chain, &tx).await)?;
        assert_eq!(code, -26);
        assert_eq!(
            msg,
            "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 99"
        );
        mine(&chain, 1).await?;
        let txid = send(&chain, &tx).await?;
        assert_eq!(txid, tx.compute_txid());
        assert_eq!(mempool(&chain).await?, vec![txid]);
        chain.stop().await?;
        Ok(())
    })
    .await
}
