//! Every call of [`RpcClient`] against `testchain` answering in each Bitcoin
//! Core release's RPC shape (25, 28, current, current with deprecated fields),
//! or once against a real bitcoind when `BITCOIND_EXE` is set. A call that
//! parses a field some release drops fails here, not on a user's node.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::{absolute, transaction, Amount, BlockHash, Sequence, Transaction, TxIn, TxOut};
use cairn_bitcoin::{RpcClient, RpcConfig};
use cairn_testchain::wallet::InternalWallet;
use cairn_testchain::{Dialect, TestChain};
use serde_json::json;

async fn blocking<T: Send + 'static>(
    client: &RpcClient,
    f: impl FnOnce(&RpcClient) -> Result<T, cairn_bitcoin::ChainError> + Send + 'static,
) -> Result<T> {
    Ok(client.run(f).await?)
}

async fn exercise(chain: &TestChain) -> Result<()> {
    let cfg = RpcConfig::new(chain.rpc_url(), chain.rpc_user(), chain.rpc_password())
        .with_timeout(Duration::from_secs(10));
    let client = RpcClient::new(&cfg)?;
    let wallet = InternalWallet::new();
    let amount = Amount::from_sat(1_000_000);
    let coin = chain.fund(&wallet.address(), amount).await?;
    let tip = chain.tip().await?;

    let height = blocking(&client, |c| c.tip_height()).await?;
    ensure!(height == tip.height, "tip {height} != {}", tip.height);
    // A fresh regtest node has no estimate; the call must still parse.
    blocking(&client, |c| c.estimate_fee_rate(6)).await?;
    let h = tip.height;
    ensure!(blocking(&client, move |c| c.block_hash(h)).await? == Some(tip.hash));
    ensure!(blocking(&client, move |c| c.block_hash(h + 1))
        .await?
        .is_none());
    let header = blocking(&client, move |c| c.header(&tip.hash)).await?;
    ensure!(header.block_hash() == tip.hash);
    ensure!(blocking(&client, move |c| c.active_height(&tip.hash)).await? == Some(h));
    let unknown = BlockHash::from_byte_array([7; 32]);
    ensure!(blocking(&client, move |c| c.active_height(&unknown))
        .await?
        .is_none());
    let funding = blocking(&client, move |c| c.transaction(&coin.txid, Some(&tip.hash))).await?;
    ensure!(funding.compute_txid() == coin.txid);
    let proof = blocking(&client, move |c| c.tx_out_proof(&coin.txid, &tip.hash)).await?;
    ensure!(proof.len() > 80, "proof of {} bytes", proof.len());

    // An unconfirmed, RBF-signalling spend: the mempool calls.
    let spend = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin,
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: amount - Amount::from_sat(1_000),
            script_pubkey: wallet.script_pubkey(),
        }],
    };
    let spend = wallet.sign(
        spend,
        &[TxOut {
            value: amount,
            script_pubkey: wallet.script_pubkey(),
        }],
    )?;
    let sent = spend.clone();
    let txid = blocking(&client, move |c| c.broadcast(&sent)).await?;
    ensure!(txid == spend.compute_txid());
    let raw = chain
        .rpc("getmempoolentry", vec![json!(txid.to_string())])
        .await?;
    println!(
        "getmempoolentry has bip125-replaceable: {}",
        raw.get("bip125-replaceable").is_some()
    );
    ensure!(
        blocking(&client, move |c| c.in_mempool(&txid)).await?,
        "broadcast tx not seen in the mempool"
    );
    ensure!(!blocking(&client, move |c| c.in_mempool(&coin.txid)).await?);
    ensure!(
        blocking(&client, move |c| c.transaction(&txid, None))
            .await?
            .compute_txid()
            == txid
    );

    // The funding block reorganised away: no longer on the active chain.
    chain.reorg(1).await?;
    ensure!(blocking(&client, move |c| c.active_height(&tip.hash))
        .await?
        .is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_parses_in_every_core_release_shape() -> Result<()> {
    for dialect in Dialect::all() {
        let chain = TestChain::start_with(dialect.clone()).await?;
        let real = chain.is_real_bitcoind();
        tokio::time::timeout(Duration::from_secs(60), exercise(&chain))
            .await
            .context("timed out")?
            .with_context(|| {
                if real {
                    "against BITCOIND_EXE".to_owned()
                } else {
                    format!("against testchain as {dialect:?}")
                }
            })?;
        chain.stop().await?;
        // A real node answers in its own shape: once is enough.
        if real {
            break;
        }
    }
    Ok(())
}
