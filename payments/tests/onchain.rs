//! The payments on-chain wallet on testchain: receives, sends at a chosen
//! feerate, reports history, persists across reopen, and never sees the
//! anchor chain's account.

use std::future::Future;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bdk_wallet::{KeychainKind, Wallet};
use bitcoin::{Amount, FeeRate, Network};
use cairn_identity::anchor::{RpcConfig, Seed, ANCHOR_ACCOUNT};
use cairn_payments::wallet::{OnchainWallet, WalletConfig, WALLET_DB_FILE_NAME};
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
