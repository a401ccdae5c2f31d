//! Esplora as the chain source, on testchain's Esplora facade
//! (`TestChain::esplora_url`): the on-chain wallet receives (confirmed and in
//! the mempool), syncs, sends and sees the confirmation, and a fresh wallet
//! on the same seed finds everything by a full scan; a Lightning node on
//! Esplora opens a channel to a node on Bitcoin Core RPC and pays it.
//!
//! The facade serves testchain's in-process chain only, so these tests use
//! it even when `BITCOIND_EXE` is set (never skipped): what they check is the
//! Esplora chain source, not Core.

mod support;

use std::future::Future;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bitcoin::{Amount, FeeRate, Network};
use cairn_bitcoin::ChainSource;
use cairn_bitcoin::Seed;
use cairn_payments::lightning::{InvoiceDescription, LightningNode, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_payments::wallet::{FeeChoice, OnchainWallet, SendAmount, SendOptions, WalletError};
use cairn_testchain::TestChain;
use ldk_node::Event;
use support::{free_port, ln_node, next_event, open_channel};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

/// An in-process chain (the Esplora facade needs one) and its Esplora URL.
async fn chain_and_esplora() -> Result<(TestChain, String)> {
    let chain = TestChain::start_in_process().await?;
    let url = chain.esplora_url().await?;
    Ok((chain, url))
}

async fn open_wallet(dir: &std::path::Path, url: &str) -> Result<OnchainWallet> {
    let dir = dir.to_path_buf();
    let source = ChainSource::esplora(url);
    Ok(
        tokio::task::spawn_blocking(move || {
            OnchainWallet::open_on(Network::Regtest, &dir, &source)
        })
        .await??,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onchain_wallet_on_esplora_receives_syncs_and_sends() -> Result<()> {
    bounded(async {
        let (chain, url) = chain_and_esplora().await?;
        let dir = tempfile::tempdir()?;
        let wallet = open_wallet(dir.path(), &url).await?;

        // A confirmed receive.
        let addr = wallet.receive_address()?;
        let funding = chain.fund(&addr, Amount::from_sat(200_000)).await?;
        wallet.sync().await?;
        let bal = wallet.balance();
        assert_eq!(bal.confirmed, Amount::from_sat(200_000));
        assert_eq!(bal.pending, Amount::ZERO);
        let history = wallet.transactions();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].txid, funding.txid);
        let tip = chain.tip().await?;
        assert_eq!(history[0].confirmation_height, Some(tip.height));

        // An unconfirmed receive to a second address (a revealed-address sync).
        let addr2 = wallet.receive_address()?;
        let incoming = chain.send(&addr2, Amount::from_sat(30_000)).await?;
        wallet.sync().await?;
        assert_eq!(wallet.balance().pending, Amount::from_sat(30_000));
        assert_eq!(wallet.transactions()[0].txid, incoming);
        assert_eq!(wallet.transactions()[0].confirmation_height, None);

        // No fee data on the facade: the target falls back to 1 sat/vB.
        assert_eq!(wallet.estimate_fee_rate(6).await?, None);

        // Send at 3 sat/vB from the confirmed coin; it reaches the mempool through POST /tx.
        let dest = chain.internal_address().await?;
        let fee_rate = FeeRate::from_sat_per_vb(3).context("feerate")?;
        let txid = wallet
            .send_with(
                dest.clone(),
                SendAmount::Exact(Amount::from_sat(50_000)),
                SendOptions {
                    utxos: vec![funding],
                    ..SendOptions::new(FeeChoice::Rate(fee_rate))
                },
            )
            .await?;
        let mempool = chain.rpc("getrawmempool", vec![]).await?;
        ensure!(
            mempool.to_string().contains(&txid.to_string()),
            "not broadcast: {mempool}"
        );
        let sent = wallet
            .transactions()
            .into_iter()
            .find(|t| t.txid == txid)
            .context("the send is listed")?;
        assert_eq!(sent.confirmation_height, None);
        let fee = sent.fee.context("fee known")?;
        ensure!(
            (400..=700).contains(&fee.to_sat()),
            "fee {fee} does not match 3 sat/vB"
        );

        // A block confirms both; the next sync sees it.
        chain.mine(1, &dest).await?;
        wallet.sync().await?;
        let bal = wallet.balance();
        assert_eq!(
            bal.confirmed,
            Amount::from_sat(200_000 + 30_000 - 50_000) - fee
        );
        assert_eq!(bal.pending, Amount::ZERO);
        ensure!(
            wallet
                .transactions()
                .iter()
                .all(|t| t.confirmation_height.is_some()),
            "all confirmed"
        );

        // Spending a coin that is already spent is refused by the wallet before
        // any broadcast; a double spend broadcast would be refused by the server.
        let err = wallet
            .send_with(
                dest.clone(),
                SendAmount::Exact(Amount::from_sat(10_000)),
                SendOptions {
                    utxos: vec![funding],
                    ..SendOptions::new(FeeChoice::Rate(fee_rate))
                },
            )
            .await
            .expect_err("spent coin");
        ensure!(matches!(err, WalletError::UnknownUtxo(_)), "{err}");

        // A fresh wallet database on the same seed finds every coin, change
        // included, by a full scan.
        let dir2 = tempfile::tempdir()?;
        std::fs::copy(dir.path().join("seed"), dir2.path().join("seed"))?;
        let again = open_wallet(dir2.path(), &url).await?;
        again.sync().await?;
        assert_eq!(again.balance(), wallet.balance());
        assert_eq!(again.transactions().len(), 3);
        ensure!(
            again.utxos().iter().any(|u| u.is_change),
            "the change output was found on the internal keychain"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lightning_node_on_esplora_pays_a_node_on_rpc() -> Result<()> {
    bounded(async {
        let (chain, url) = chain_and_esplora().await?;
        let dir_a = tempfile::tempdir()?;
        let dir_b = tempfile::tempdir()?;
        let (seed_a, _) = Seed::load_or_create(dir_a.path())?;
        let a = LightningNode::build_on(
            Network::Regtest,
            dir_a.path(),
            free_port()?,
            &ChainSource::esplora(&url),
            &seed_a,
        )?;
        let b = ln_node(dir_b.path(), &chain)?;
        a.start()?;
        b.start()?;

        // A (Esplora) funds and opens the channel; B (RPC) accepts it. Both
        // see the funding confirm, each through its own chain source.
        open_channel(&chain, &a, &b, 1_000_000, 400_000).await?;
        let channel = a.list_channels();
        ensure!(
            channel.len() == 1 && channel[0].funding_txo.is_some(),
            "{channel:?}"
        );

        let mut ev_a = a.subscribe();
        let mut ev_b = b.subscribe();
        let invoice = b.receive_bolt11(
            Some(25_000_000),
            &InvoiceDescription::Text("over esplora".into()),
            DEFAULT_INVOICE_EXPIRY_SECS,
        )?;
        let id = a.pay_bolt11(&invoice)?;
        next_event(
            "PaymentSuccessful on A",
            &mut ev_a,
            &[],
            |e| matches!(e, Event::PaymentSuccessful { payment_id: Some(p), .. } if *p == id),
        )
        .await?;
        next_event("PaymentReceived on B", &mut ev_b, &[], |e| {
            matches!(
                e,
                Event::PaymentReceived {
                    amount_msat: 25_000_000,
                    ..
                }
            )
        })
        .await?;
        let bal = b.balances();
        ensure!(
            bal.total_lightning_balance_sats >= 25_000,
            "B holds the payment: {bal:?}"
        );

        a.stop().await?;
        b.stop().await?;
        Ok(())
    })
    .await
}
