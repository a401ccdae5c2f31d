//! Reorganisations: invalidateblock/reconsiderblock and the harness's reorg
//! move transactions between blocks and the mempool like Bitcoin Core.

mod common;

use anyhow::Result;
use bitcoin::{Amount, OutPoint};
use cairn_testchain::wallet::InternalWallet;
use common::*;
use serde_json::json;

const COIN: u64 = 100_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_and_reconsider_move_transactions() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let wallet = InternalWallet::new();
        let coin = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        let tx = spend(
            &wallet,
            &[coin],
            vec![out(&wallet.script_pubkey(), COIN - 1_000)],
        );
        let txid = send(&chain, &tx).await?;
        let before = chain.tip().await?;
        let block = mine(&chain, 1).await?[0];
        assert!(mempool(&chain).await?.is_empty());

        chain
            .rpc("invalidateblock", vec![json!(block.to_string())])
            .await?;
        assert_eq!(chain.tip().await?, before);
        assert_eq!(mempool(&chain).await?, vec![txid]);
        let header = chain
            .rpc("getblockheader", vec![json!(block.to_string())])
            .await?;
        assert_eq!(header["confirmations"], json!(-1));
        let v = raw_tx_verbose(&chain, &txid).await?;
        assert!(v.get("blockhash").is_none(), "{v}");

        chain
            .rpc("reconsiderblock", vec![json!(block.to_string())])
            .await?;
        assert_eq!(chain.tip().await?.hash, block);
        assert!(mempool(&chain).await?.is_empty());
        assert_eq!(
            raw_tx_verbose(&chain, &txid).await?["blockhash"],
            json!(block.to_string())
        );

        // The harness reorg replaces the block with two empty ones.
        let new_tip = chain.reorg(1).await?;
        assert_eq!(new_tip.height, before.height + 2);
        assert_eq!(mempool(&chain).await?, vec![txid]);
        let header = chain
            .rpc("getblockheader", vec![json!(block.to_string())])
            .await?;
        assert_eq!(header["confirmations"], json!(-1));
        assert!(header.get("nextblockhash").is_none());
        let new_block = mine(&chain, 1).await?[0];
        assert_eq!(
            raw_tx_verbose(&chain, &txid).await?["blockhash"],
            json!(new_block.to_string())
        );
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_drops_coinbase_spends_that_become_immature() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let wallet = InternalWallet::new();
        let first = chain.mine(1, &wallet.address()).await?[0];
        mine(&chain, 99).await?;
        let block = chain
            .rpc("getblock", vec![json!(first.to_string())])
            .await?;
        let coinbase = Coin {
            outpoint: OutPoint::new(block["tx"][0].as_str().unwrap().parse()?, 0),
            output: out(&wallet.script_pubkey(), 50 * COIN),
        };
        let tx = spend(
            &wallet,
            &[coinbase],
            vec![out(&wallet.script_pubkey(), 50 * COIN - 1_000)],
        );
        send(&chain, &tx).await?;
        let tip = mine(&chain, 1).await?[0];
        let tip_height = chain.tip().await?.height;
        assert_eq!(tip_height, 101);
        // Back to height 99: the spend would be at depth 99 again.
        let h100 = chain.rpc("getblockhash", vec![json!(100)]).await?;
        chain.rpc("invalidateblock", vec![h100]).await?;
        assert_eq!(chain.tip().await?.height, 99);
        assert!(mempool(&chain).await?.is_empty());
        let header = chain
            .rpc("getblockheader", vec![json!(tip.to_string())])
            .await?;
        assert_eq!(header["confirmations"], json!(-1));
        chain.stop().await?;
        Ok(())
    })
    .await
}
