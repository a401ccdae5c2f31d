//! The payments on-chain wallet on testchain: receives, sends at a chosen
//! feerate, reports history, persists across reopen, and never sees the
//! anchor chain's account; coin control (chosen outpoints, send max, fee by
//! confirmation target) next to a real identity anchor chain from the same seed.

use std::future::Future;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bdk_wallet::{KeychainKind, Wallet};
use bitcoin::{Amount, FeeRate, Network, OutPoint, Transaction, Txid};
use cairn_bitcoin::{RpcConfig, Seed, ANCHOR_ACCOUNT};
use cairn_identity::anchor::{AnchorPolicy, Anchorer};
use cairn_payments::wallet::{
    FeeChoice, OnchainWallet, SendAmount, SendOptions, WalletConfig, WalletError,
    WALLET_DB_FILE_NAME,
};
use cairn_testchain::TestChain;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

fn config(dir: &std::path::Path, chain: &TestChain) -> WalletConfig {
    WalletConfig {
        network: Network::Regtest,
        data_dir: dir.to_path_buf(),
        rpc: RpcConfig::new(chain.rpc_url(), chain.rpc_user(), chain.rpc_password()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_send_history_and_account_separation() -> Result<()> {
    bounded(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let cfg = config(dir.path(), &chain);
        let wallet = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || OnchainWallet::open(&cfg)
        })
        .await??;

        // Receive.
        let addr = wallet.receive_address()?;
        ensure!(
            addr != wallet.receive_address()?,
            "addresses are not reused"
        );
        let funding = chain.fund(&addr, Amount::from_sat(200_000)).await?;
        wallet.sync().await?;
        let bal = wallet.balance();
        assert_eq!(bal.confirmed, Amount::from_sat(200_000));
        assert_eq!(bal.pending, Amount::ZERO);
        let history = wallet.transactions();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].txid, funding.txid);
        assert_eq!(history[0].received, Amount::from_sat(200_000));
        assert!(history[0].confirmation_height.is_some());

        // Coins sent to the anchor chain's account (same seed, account 1) are
        // not this wallet's: it can never spend them.
        let seed = Seed::load(&dir.path().join("seed"))?;
        let (ext, int) = seed.bip86_descriptors(Network::Regtest, ANCHOR_ACCOUNT)?;
        let mut anchor = Wallet::create(ext, int)
            .network(Network::Regtest)
            .create_wallet_no_persist()?;
        let anchor_addr = anchor.reveal_next_address(KeychainKind::External).address;
        chain.fund(&anchor_addr, Amount::from_sat(77_000)).await?;
        wallet.sync().await?;
        assert_eq!(wallet.balance().confirmed, Amount::from_sat(200_000));

        // Send at 3 sat/vB.
        let dest = chain.internal_address().await?;
        let fee_rate = FeeRate::from_sat_per_vb(3).context("feerate")?;
        let txid = wallet
            .send(dest.clone(), Amount::from_sat(50_000), fee_rate)
            .await?;
        let history = wallet.transactions();
        assert_eq!(history.len(), 2);
        let out = &history[0];
        assert_eq!(out.txid, txid, "the unconfirmed send is listed first");
        assert!(out.confirmation_height.is_none());
        let fee = out.fee.context("fee known")?;
        // A 1-in 2-out taproot spend is ~154 vB: 3 sat/vB gives ~462 sat.
        ensure!(
            (400..=700).contains(&fee.to_sat()),
            "fee {fee} does not match 3 sat/vB"
        );
        assert_eq!(out.net_sats(), -(50_000 + fee.to_sat() as i64));
        let bal = wallet.balance();
        assert_eq!(bal.confirmed, Amount::ZERO, "the only coin is spent");
        assert_eq!(bal.pending, Amount::from_sat(150_000) - fee);

        // The mempool really has it; a block confirms it.
        let mempool = chain.rpc("getrawmempool", vec![]).await?;
        ensure!(
            mempool.to_string().contains(&txid.to_string()),
            "not broadcast: {mempool}"
        );
        chain.mine(1, &dest).await?;
        wallet.sync().await?;
        let bal = wallet.balance();
        assert_eq!(bal.confirmed, Amount::from_sat(150_000) - fee);
        assert_eq!(bal.pending, Amount::ZERO);
        assert!(wallet.transactions()[0].confirmation_height.is_some());

        // Insufficient funds is an error, not a panic or a broadcast.
        let err = wallet
            .send(dest.clone(), Amount::from_sat(10_000_000), fee_rate)
            .await
            .unwrap_err();
        ensure!(
            matches!(err, cairn_payments::wallet::WalletError::Build(_)),
            "{err}"
        );

        // Reopened: same history and balance before any sync.
        drop(wallet);
        let wallet = tokio::task::spawn_blocking(move || OnchainWallet::open(&cfg)).await??;
        assert_eq!(wallet.balance().confirmed, Amount::from_sat(150_000) - fee);
        assert_eq!(wallet.transactions().len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(WALLET_DB_FILE_NAME))?
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
        chain.stop().await?;
        Ok(())
    })
    .await
}

async fn raw_tx(chain: &TestChain, txid: Txid) -> Result<Transaction> {
    let hex = chain
        .rpc(
            "getrawtransaction",
            vec![serde_json::json!(txid.to_string())],
        )
        .await?;
    let bytes = hex::decode(hex.as_str().context("raw tx hex")?)?;
    Ok(bitcoin::consensus::deserialize(&bytes)?)
}

/// Whether Bitcoin Core still has `op` unspent (mempool spends count).
async fn unspent(chain: &TestChain, op: OutPoint) -> Result<bool> {
    let out = chain
        .rpc(
            "gettxout",
            vec![
                serde_json::json!(op.txid.to_string()),
                serde_json::json!(op.vout),
                serde_json::json!(true),
            ],
        )
        .await?;
    Ok(!out.is_null())
}

fn inputs(tx: &Transaction) -> Vec<OutPoint> {
    tx.input.iter().map(|i| i.previous_output).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coin_control_and_send_max_leave_the_anchor_chain_alone() -> Result<()> {
    bounded(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let cfg = config(dir.path(), &chain);
        let wallet = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || OnchainWallet::open(&cfg)
        })
        .await??;

        // The identity anchor chain, from the same seed file (account 1),
        // with one confirmed anchor: its change output is the chain output
        // the next anchor must spend.
        let anchorer = Anchorer::open(
            dir.path(),
            Network::Regtest,
            cfg.rpc.clone(),
            AnchorPolicy::default(),
        )
        .await?;
        let anchor_funding = chain
            .fund(&anchorer.receive_address().await?, Amount::from_sat(50_000))
            .await?;
        let anchor1 = anchorer.anchor(1, b"CAIRN\x01epoch one").await?;
        chain.mine(1, &chain.internal_address().await?).await?;
        anchorer.sync().await?;
        let chain_output = anchorer
            .status()
            .await?
            .chain_output
            .context("chain output")?;
        ensure!(chain_output.txid == anchor1);
        let anchor_balance = anchorer.status().await?.balance;
        ensure!(
            anchor_balance > Amount::from_sat(49_000) && anchor_balance < Amount::from_sat(50_000)
        );

        // Two coins in the payments wallet (account 0).
        let big = chain
            .fund(&wallet.receive_address()?, Amount::from_sat(100_000))
            .await?;
        let small = chain
            .fund(&wallet.receive_address()?, Amount::from_sat(60_000))
            .await?;
        wallet.sync().await?;
        assert_eq!(wallet.balance().confirmed, Amount::from_sat(160_000));
        let utxos = wallet.utxos();
        assert_eq!(
            utxos
                .iter()
                .map(|u| (u.outpoint, u.value.to_sat()))
                .collect::<Vec<_>>(),
            vec![(big, 100_000), (small, 60_000)],
            "largest first; the anchor wallet's coins are not listed"
        );
        assert!(utxos
            .iter()
            .all(|u| !u.is_change && u.confirmation_height.is_some()));
        // Independent balances: the anchorer's did not change either.
        anchorer.sync().await?;
        assert_eq!(anchorer.status().await?.balance, anchor_balance);

        // The anchor chain's outputs are not this wallet's to spend.
        let dest = chain.internal_address().await?;
        for foreign in [chain_output, anchor_funding] {
            let err = wallet
                .send_with(
                    dest.clone(),
                    SendAmount::Exact(Amount::from_sat(10_000)),
                    SendOptions {
                        utxos: vec![foreign],
                        ..SendOptions::new(FeeChoice::Rate(FeeRate::from_sat_per_vb_u32(2)))
                    },
                )
                .await
                .unwrap_err();
            ensure!(
                matches!(err, WalletError::UnknownUtxo(op) if op == foreign),
                "{err}"
            );
        }

        // Coin control: pay 20_000 from the small coin although the big one
        // alone would be the wallet's own choice.
        let txid = wallet
            .send_with(
                dest.clone(),
                SendAmount::Exact(Amount::from_sat(20_000)),
                SendOptions {
                    utxos: vec![small],
                    ..SendOptions::new(FeeChoice::Rate(FeeRate::from_sat_per_vb_u32(2)))
                },
            )
            .await?;
        let tx = raw_tx(&chain, txid).await?;
        assert_eq!(inputs(&tx), vec![small]);
        assert!(tx.output.iter().any(
            |o| o.value == Amount::from_sat(20_000) && o.script_pubkey == dest.script_pubkey()
        ));
        // `avoid`: the big coin is off limits, and the rest cannot pay 90_000.
        wallet.sync().await?;
        let change = wallet
            .utxos()
            .into_iter()
            .find(|u| u.is_change)
            .context("change of the coin-controlled send")?;
        let err = wallet
            .send_with(
                dest.clone(),
                SendAmount::Exact(Amount::from_sat(90_000)),
                SendOptions {
                    avoid: vec![big],
                    ..SendOptions::new(FeeChoice::Rate(FeeRate::from_sat_per_vb_u32(2)))
                },
            )
            .await
            .unwrap_err();
        ensure!(matches!(err, WalletError::Build(_)), "{err}");
        chain.mine(1, &dest).await?;
        wallet.sync().await?;

        // Fee by confirmation target: testchain (like a fresh regtest
        // bitcoind) has no estimate, so the fallback is used.
        assert_eq!(wallet.estimate_fee_rate(6).await?, None);
        let fallback = FeeRate::from_sat_per_vb_u32(3);

        // Send max: everything the payments wallet has, nothing of the anchor chain.
        let before = wallet.balance().confirmed;
        assert_eq!(before, Amount::from_sat(100_000) + change.value);
        let txid = wallet
            .send_with(
                dest.clone(),
                SendAmount::All,
                SendOptions::new(FeeChoice::Target {
                    blocks: 6,
                    fallback,
                }),
            )
            .await?;
        let tx = raw_tx(&chain, txid).await?;
        let mut spent = inputs(&tx);
        spent.sort();
        let mut expected = vec![big, change.outpoint];
        expected.sort();
        assert_eq!(spent, expected, "exactly the payments wallet's coins");
        assert_eq!(tx.output.len(), 1, "no change when sending everything");
        let fee = before - tx.output[0].value;
        let rate = fee.to_sat() as f64 / tx.vsize() as f64;
        ensure!(
            (3.0..3.1).contains(&rate),
            "fee {fee} for {} vB is not 3 sat/vB",
            tx.vsize()
        );
        ensure!(
            unspent(&chain, chain_output).await?,
            "the anchor chain output is untouched"
        );
        chain.mine(1, &dest).await?;
        wallet.sync().await?;
        assert_eq!(wallet.balance().total(), Amount::ZERO);
        assert!(wallet.utxos().is_empty());
        // Nothing left: sending max again is an error, not an empty transaction.
        let err = wallet
            .send_with(
                dest.clone(),
                SendAmount::All,
                SendOptions::new(FeeChoice::target(6)),
            )
            .await
            .unwrap_err();
        ensure!(matches!(err, WalletError::Build(_)), "{err}");

        // The anchor chain goes on: epoch 2 spends epoch 1's change output.
        anchorer.sync().await?;
        assert_eq!(anchorer.status().await?.balance, anchor_balance);
        let anchor2 = anchorer.anchor(2, b"CAIRN\x01epoch two").await?;
        assert_eq!(inputs(&raw_tx(&chain, anchor2).await?)[0], chain_output);
        chain.stop().await?;
        Ok(())
    })
    .await
}
