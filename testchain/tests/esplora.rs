//! The Esplora facade answered through esplora-client 0.12 (the client
//! bdk_esplora and ldk-node use): tip, blocks, headers, block status (also
//! after a reorg), transactions with prevouts and fees, merkle-block proofs
//! that verify, output spends, script-hash history with electrs' paging,
//! broadcast and its rejection, and 404s for what does not exist.
//!
//! The facade is testchain's own server over its in-process node, so these
//! tests run in-process even when `BITCOIND_EXE` is set (never skipped).

mod common;

use std::collections::HashSet;

use anyhow::{ensure, Context, Result};
use bdk_esplora::esplora_client::{self, AsyncClient};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, Txid};
use cairn_testchain::wallet::InternalWallet;
use cairn_testchain::TestChain;
use common::*;

/// An in-process chain and an esplora-client on its facade.
async fn chain_and_client() -> Result<(TestChain, AsyncClient)> {
    let chain = TestChain::start_in_process().await?;
    let url = chain.esplora_url().await?;
    let client = esplora_client::Builder::new(&url).build_async()?;
    Ok((chain, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_transactions_proofs_and_spends() -> Result<()> {
    timed(async {
        let (chain, client) = chain_and_client().await?;
        let wallet = InternalWallet::new();
        let coin = funded_coin(&chain, &wallet, Amount::from_sat(100_000)).await?;
        let tip = chain.tip().await?;

        // Tip, heights, headers, block status, recent blocks.
        assert_eq!(client.get_height().await?, tip.height);
        assert_eq!(client.get_tip_hash().await?, tip.hash);
        assert_eq!(client.get_block_hash(tip.height).await?, tip.hash);
        let header = client.get_header_by_hash(&tip.hash).await?;
        assert_eq!(header.block_hash(), tip.hash);
        let status = client.get_block_status(&tip.hash).await?;
        assert!(status.in_best_chain);
        assert_eq!(status.height, Some(tip.height));
        assert_eq!(status.next_best, None);
        let blocks = client.get_block_infos(None).await?;
        assert_eq!(blocks.len(), 10);
        assert_eq!(blocks[0].id, tip.hash);
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].previousblockhash, Some(pair[1].id));
            assert_eq!(pair[0].height, pair[1].height + 1);
        }

        // The funding transaction: raw, decoded (prevouts, fee, status) and its proof.
        let txid = coin.outpoint.txid;
        let tx = client.get_tx(&txid).await?.context("funding tx")?;
        assert_eq!(tx.compute_txid(), txid);
        let info = client
            .get_tx_info(&txid)
            .await?
            .context("funding tx info")?;
        assert_eq!(info.to_tx(), tx);
        assert!(info.status.confirmed);
        assert_eq!(info.status.block_height, Some(tip.height));
        assert_eq!(info.status.block_hash, Some(tip.hash));
        let value_in: u64 = info
            .vin
            .iter()
            .map(|v| v.prevout.as_ref().map_or(0, |p| p.value))
            .sum();
        let value_out: u64 = info.vout.iter().map(|v| v.value).sum();
        ensure!(
            info.fee > 0 && info.fee == value_in - value_out,
            "fee {} != {value_in} - {value_out}",
            info.fee
        );
        let mb = client.get_merkle_block(&txid).await?.context("proof")?;
        let (mut matches, mut indexes) = (Vec::new(), Vec::new());
        let root = mb.txn.extract_matches(&mut matches, &mut indexes)?;
        assert_eq!(root, header.merkle_root);
        assert_eq!(mb.header.block_hash(), tip.hash);
        assert_eq!(matches, vec![txid]);

        // Unspent, then spent in the mempool (broadcast through POST /tx), then confirmed.
        let out = client
            .get_output_status(&txid, u64::from(coin.outpoint.vout))
            .await?
            .context("outspend")?;
        assert!(!out.spent);
        let spend_tx = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![common::out(&wallet.script_pubkey(), 90_000)],
        );
        let spend_id = spend_tx.compute_txid();
        client.broadcast(&spend_tx).await?;
        ensure!(
            mempool(&chain).await?.contains(&spend_id),
            "broadcast reached the mempool"
        );
        let out = client
            .get_output_status(&txid, u64::from(coin.outpoint.vout))
            .await?
            .context("outspend")?;
        assert!(out.spent);
        assert_eq!(out.txid, Some(spend_id));
        assert_eq!(out.vin, Some(0));
        assert!(!out.status.context("status")?.confirmed);
        assert!(
            client.get_merkle_block(&spend_id).await?.is_none(),
            "no proof while unconfirmed"
        );
        assert!(!client.get_tx_status(&spend_id).await?.confirmed);

        // History of the script, newest first: the mempool spend, then the funding.
        let history = client.scripthash_txs(&wallet.script_pubkey(), None).await?;
        let ids: Vec<Txid> = history.iter().map(|t| t.txid).collect();
        assert_eq!(&ids[..2], &[spend_id, txid]);

        mine(&chain, 1).await?;
        let out = client
            .get_output_status(&txid, u64::from(coin.outpoint.vout))
            .await?
            .context("outspend")?;
        let st = out.status.context("status")?;
        assert!(st.confirmed);
        assert_eq!(st.block_height, Some(tip.height + 1));

        // Rebroadcasting a confirmed transaction is refused with Core's reason.
        match client.broadcast(&tx).await {
            Err(esplora_client::Error::HttpResponse {
                status: 400,
                message,
            }) => {
                ensure!(message.contains("already in utxo set"), "{message}")
            }
            other => anyhow::bail!("expected a 400 rejection, got {other:?}"),
        }

        // Unknown objects are 404s (None), as esplora-client expects.
        let nothing = Txid::from_byte_array([7; 32]);
        assert!(client.get_tx(&nothing).await?.is_none());
        assert!(client.get_tx_info(&nothing).await?.is_none());
        assert!(client.get_merkle_block(&nothing).await?.is_none());

        // After a reorg the old tip is off the best chain.
        let old_tip = chain.tip().await?;
        chain.reorg(1).await?;
        let status = client.get_block_status(&old_tip.hash).await?;
        assert!(!status.in_best_chain);
        assert_eq!(status.height, None);
        assert_eq!(client.get_height().await?, old_tip.height + 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_history_pages_like_electrs() -> Result<()> {
    timed(async {
        let (chain, client) = chain_and_client().await?;
        let receiver = InternalWallet::new();
        let mut funded = HashSet::new();
        for i in 0..30u64 {
            let op = chain
                .fund(&receiver.address(), Amount::from_sat(10_000 + i))
                .await?;
            funded.insert(op.txid);
        }
        let spk = receiver.script_pubkey();
        // First page: 25 confirmed; then 5 after the last one seen; then nothing.
        let page1 = client.scripthash_txs(&spk, None).await?;
        assert_eq!(page1.len(), 25);
        let last = page1.last().context("page 1")?.txid;
        let page2 = client.scripthash_txs(&spk, Some(last)).await?;
        assert_eq!(page2.len(), 5);
        let page3 = client
            .scripthash_txs(&spk, Some(page2.last().context("page 2")?.txid))
            .await?;
        assert!(page3.is_empty());
        let seen: HashSet<Txid> = page1.iter().chain(&page2).map(|t| t.txid).collect();
        assert_eq!(seen, funded);
        // Newest first.
        let heights: Vec<u32> = page1
            .iter()
            .chain(&page2)
            .filter_map(|t| t.status.block_height)
            .collect();
        ensure!(heights.windows(2).all(|w| w[0] > w[1]), "{heights:?}");
        Ok(())
    })
    .await
}
