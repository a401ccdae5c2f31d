//! A bdk_wallet 2.x wallet synced through bdk_bitcoind_rpc's Emitter (and the
//! bitcoincore-rpc client it uses) sees its funds, spends them, and follows
//! confirmations and a reorg.

mod common;

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use bdk_bitcoind_rpc::bitcoincore_rpc::{Auth, Client, RpcApi};
use bdk_bitcoind_rpc::Emitter;
use bdk_wallet::{KeychainKind, SignOptions, Wallet};
use bitcoin::bip32::Xpriv;
use bitcoin::{Amount, FeeRate, Network, NetworkKind, Transaction, Txid};
use cairn_testchain::TestChain;
use common::*;
use tokio::runtime::Handle;

fn sync(wallet: &mut Wallet, client: &Client) -> Result<()> {
    let expected: Vec<Arc<Transaction>> = wallet
        .transactions()
        .filter(|t| !t.chain_position.is_confirmed())
        .map(|t| t.tx_node.tx.clone())
        .collect();
    let mut emitter = Emitter::new(client, wallet.latest_checkpoint(), 0, expected);
    while let Some(ev) = emitter.next_block()? {
        wallet.apply_block_connected_to(&ev.block, ev.block_height(), ev.connected_to())?;
    }
    let mempool = emitter.mempool()?;
    wallet.apply_evicted_txs(mempool.evicted);
    wallet.apply_unconfirmed_txs(mempool.update);
    Ok(())
}

fn confirmed(wallet: &Wallet, txid: Txid) -> Option<bool> {
    wallet.get_tx(txid).map(|t| t.chain_position.is_confirmed())
}

fn scenario(chain: &TestChain, rt: &Handle) -> Result<()> {
    let xprv = Xpriv::new_master(NetworkKind::Test, &[7u8; 32])?;
    let mut wallet = Wallet::create(
        format!("tr({xprv}/86'/1'/0'/0/*)"),
        format!("tr({xprv}/86'/1'/0'/1/*)"),
    )
    .network(Network::Regtest)
    .create_wallet_no_persist()?;
    let client = Client::new(
        chain.rpc_url(),
        Auth::UserPass(
            chain.rpc_user().to_string(),
            chain.rpc_password().to_string(),
        ),
    )?;

    // Funded.
    let address = wallet.reveal_next_address(KeychainKind::External).address;
    let funding = rt.block_on(chain.fund(&address, Amount::from_sat(100_000_000)))?;
    sync(&mut wallet, &client)?;
    assert_eq!(wallet.balance().confirmed, Amount::from_sat(100_000_000));
    assert_eq!(confirmed(&wallet, funding.txid), Some(true));
    let tip = rt.block_on(chain.tip())?;
    assert_eq!(wallet.latest_checkpoint().height(), tip.height);
    assert_eq!(wallet.latest_checkpoint().hash(), tip.hash);

    // Spend: BDK builds and signs a taproot transaction, the chain checks it.
    let dest = rt.block_on(chain.internal_address())?;
    let mut builder = wallet.build_tx();
    builder.add_recipient(dest.script_pubkey(), Amount::from_sat(30_000_000));
    builder.fee_rate(FeeRate::from_sat_per_vb(2).context("fee rate")?);
    let mut psbt = builder.finish()?;
    ensure!(
        wallet.sign(&mut psbt, SignOptions::default())?,
        "not finalized"
    );
    let tx = psbt.extract_tx()?;
    let txid = client.send_raw_transaction(&tx)?;
    assert_eq!(txid, tx.compute_txid());
    sync(&mut wallet, &client)?;
    assert_eq!(confirmed(&wallet, txid), Some(false));
    let fee = wallet.calculate_fee(&tx)?;
    assert_eq!(wallet.balance().total(), Amount::from_sat(70_000_000) - fee);

    // Confirmed.
    rt.block_on(mine(chain, 1))?;
    sync(&mut wallet, &client)?;
    assert_eq!(confirmed(&wallet, txid), Some(true));
    assert_eq!(
        wallet.balance().confirmed,
        Amount::from_sat(70_000_000) - fee
    );

    // Reorged out: back to unconfirmed, and the wallet follows the new tip.
    let new_tip = rt.block_on(chain.reorg(1))?;
    sync(&mut wallet, &client)?;
    assert_eq!(wallet.latest_checkpoint().hash(), new_tip.hash);
    assert_eq!(confirmed(&wallet, txid), Some(false));
    assert_eq!(wallet.balance().confirmed, Amount::ZERO);

    // Mined again.
    let block = rt.block_on(mine(chain, 1))?[0];
    sync(&mut wallet, &client)?;
    assert_eq!(confirmed(&wallet, txid), Some(true));
    let info = client.get_block_info(&block)?;
    assert!(info.tx.contains(&txid));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdk_wallet_funds_spends_and_follows_reorg() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let rt = Handle::current();
        // bitcoincore-rpc is blocking: run the wallet side off the async workers.
        let chain =
            tokio::task::spawn_blocking(move || scenario(&chain, &rt).map(|_| chain)).await??;
        chain.stop().await?;
        Ok(())
    })
    .await
}

fn filters_scenario(chain: &TestChain, rt: &Handle) -> Result<()> {
    use bdk_bitcoind_rpc::bip158::FilterIter;
    use bdk_wallet::chain::{BlockId, CheckPoint};
    use bitcoin::bip158::{BlockFilter, FilterHeader};
    use bitcoin::hashes::Hash;
    use cairn_testchain::wallet::InternalWallet;

    let watched = InternalWallet::new();
    let other = InternalWallet::new();
    let funded = rt.block_on(chain.fund(&watched.address(), Amount::from_sat(50_000_000)))?;
    let funded_block = rt.block_on(chain.tip())?.hash;
    rt.block_on(chain.fund(&other.address(), Amount::from_sat(50_000_000)))?;
    // Spending the watched coin matches through the prevout script.
    let coin = Coin {
        outpoint: funded,
        output: out(&watched.script_pubkey(), 50_000_000),
    };
    let tx = spend(
        &watched,
        &[coin],
        vec![out(&other.script_pubkey(), 49_999_000)],
    );
    rt.block_on(send(chain, &tx))?;
    let spent_block = rt.block_on(mine(chain, 1))?[0];

    let client = Client::new(
        chain.rpc_url(),
        Auth::UserPass(
            chain.rpc_user().to_string(),
            chain.rpc_password().to_string(),
        ),
    )?;
    let genesis = client.get_block_hash(0)?;
    let cp = CheckPoint::new(BlockId {
        height: 0,
        hash: genesis,
    });
    let mut matched = Vec::new();
    let mut last = 0;
    for event in FilterIter::new(&client, cp, [watched.script_pubkey()]) {
        let event = event.map_err(|e| anyhow::anyhow!("{e}"))?;
        last = event.height();
        if let Some(block) = event.block {
            matched.push(block.block_hash());
        }
    }
    assert_eq!(last, rt.block_on(chain.tip())?.height);
    // Filters may have false positives, never false negatives.
    assert!(matched.contains(&funded_block), "{matched:?}");
    assert!(matched.contains(&spent_block), "{matched:?}");

    // Filter headers chain from genesis as BIP157 defines.
    let mut prev = FilterHeader::all_zeros();
    for h in 0..=last {
        let hash = client.get_block_hash(u64::from(h))?;
        let f = client.get_block_filter(&hash)?;
        let header = BlockFilter::new(&f.filter).filter_header(&prev);
        assert_eq!(header.to_string(), f.header.to_string(), "height {h}");
        prev = header;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_block_filters_match_wallet_blocks() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let rt = Handle::current();
        let chain =
            tokio::task::spawn_blocking(move || filters_scenario(&chain, &rt).map(|_| chain))
                .await??;
        chain.stop().await?;
        Ok(())
    })
    .await
}
