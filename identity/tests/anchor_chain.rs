//! The anchoring wallet and the anchor chain against `testchain` (or a real
//! bitcoind when `BITCOIND_EXE` is set): funding, anchoring, the chain of
//! change outputs, RBF bumps, reorgs, restarts, queued epochs.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::{Address, Amount, Network, OutPoint, Transaction, Txid};
use cairn_bitcoin::{RpcConfig, Seed, ANCHOR_ACCOUNT, SEED_FILE_NAME};
use cairn_identity::anchor::{
    AnchorError, AnchorPolicy, AnchorRecord, AnchorState, Anchorer, Health,
};
use cairn_identity::epoch::{find_anchor, EpochHeader, HEADER_VERSION};
use cairn_testchain::{CoreVersion, Dialect, TestChain};
use serde_json::json;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn timed<F: Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

fn rpc(chain: &TestChain) -> RpcConfig {
    let mut cfg = RpcConfig::new(chain.rpc_url(), chain.rpc_user(), chain.rpc_password());
    cfg.timeout = Duration::from_secs(10);
    cfg
}

fn policy() -> AnchorPolicy {
    AnchorPolicy {
        bump_after_blocks: 2,
        confirmations: 2,
        ..AnchorPolicy::default()
    }
}

/// A real epoch payload: magic, version, header hash.
fn payload(epoch: u64) -> Vec<u8> {
    EpochHeader {
        version: HEADER_VERSION,
        epoch,
        prev_header_hash: [0; 32],
        log_size: epoch * 10,
        log_root: [epoch as u8; 32],
        state_root: [0xab; 32],
    }
    .op_return_payload()
    .to_vec()
}

async fn open(chain: &TestChain, dir: &std::path::Path) -> Result<Anchorer> {
    Ok(Anchorer::open(dir, Network::Regtest, rpc(chain), policy()).await?)
}

async fn fund(chain: &TestChain, anchorer: &Anchorer, sat: u64) -> Result<OutPoint> {
    let addr = anchorer.receive_address().await?;
    Ok(chain.fund(&addr, Amount::from_sat(sat)).await?)
}

async fn mine(chain: &TestChain, n: u32) -> Result<()> {
    let addr = chain.internal_address().await?;
    chain.mine(n, &addr).await?;
    Ok(())
}

/// Mines `n` blocks without the mempool's transactions.
async fn mine_empty(chain: &TestChain, n: u32) -> Result<()> {
    let addr = chain.internal_address().await?;
    for _ in 0..n {
        chain
            .rpc("generateblock", vec![json!(addr.to_string()), json!([])])
            .await?;
    }
    Ok(())
}

async fn mempool(chain: &TestChain) -> Result<Vec<Txid>> {
    let v = chain.rpc("getrawmempool", vec![]).await?;
    v.as_array()
        .ok_or_else(|| anyhow!("mempool: {v}"))?
        .iter()
        .map(|t| Ok(Txid::from_str(t.as_str().unwrap_or_default())?))
        .collect()
}

async fn raw_tx(chain: &TestChain, txid: Txid) -> Result<Transaction> {
    let v = chain
        .rpc(
            "getrawtransaction",
            vec![json!(txid.to_string()), json!(false)],
        )
        .await?;
    Ok(deserialize_hex(v.as_str().unwrap_or_default())?)
}

/// Confirmations of `txid` as the node reports them (0 when in the mempool).
async fn node_confirmations(chain: &TestChain, txid: Txid) -> Result<i64> {
    let v = chain
        .rpc(
            "getrawtransaction",
            vec![json!(txid.to_string()), json!(true)],
        )
        .await?;
    Ok(v["confirmations"].as_i64().unwrap_or(0))
}

async fn record(anchorer: &Anchorer, epoch: u64) -> Result<AnchorRecord> {
    anchorer
        .record(epoch)
        .await?
        .ok_or_else(|| anyhow!("no record for epoch {epoch}"))
}

/// Exactly one OP_RETURN output, carrying `payload`; a change output back to us.
fn check_anchor_tx(tx: &Transaction, payload: &[u8]) -> Result<()> {
    let op_returns: Vec<_> = tx
        .output
        .iter()
        .filter(|o| o.script_pubkey.is_op_return())
        .collect();
    ensure!(
        op_returns.len() == 1,
        "{} OP_RETURN outputs",
        op_returns.len()
    );
    let script = op_returns[0].script_pubkey.as_bytes();
    // OP_RETURN, one direct push of the payload.
    ensure!(script[1] as usize == payload.len() && &script[2..] == payload);
    ensure!(op_returns[0].value == Amount::ZERO);
    ensure!(tx.output.len() == 2, "{} outputs", tx.output.len());
    Ok(())
}

fn confirmed_height(r: &AnchorRecord) -> Option<u32> {
    match r.state {
        AnchorState::Confirmed { height, .. } => Some(height),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_form_a_chain_of_change_outputs() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let anchorer = open(&chain, dir.path()).await?;
        let funding = fund(&chain, &anchorer, 100_000).await?;

        // Epoch 1 spends the only wallet coin.
        let txid1 = anchorer.anchor(1, &payload(1)).await?;
        ensure!(mempool(&chain).await?.contains(&txid1));
        let tx1 = raw_tx(&chain, txid1).await?;
        check_anchor_tx(&tx1, &payload(1))?;
        ensure!(tx1.input.len() == 1 && tx1.input[0].previous_output == funding);
        let (_, hash) = find_anchor(&tx1)?;
        ensure!(payload(1)[6..] == hash[..]);
        let r1 = record(&anchorer, 1).await?;
        ensure!(r1.state == AnchorState::Unconfirmed && r1.txid == Some(txid1));

        // Cost at the 1 sat/vB floor (testchain has no fee estimates).
        let vsize = tx1.vsize() as u64;
        let fee = r1.fee.context("fee")?;
        println!(
            "anchor tx: {vsize} vB, fee {} sat at 1 sat/vB",
            fee.to_sat()
        );
        ensure!(vsize == 160, "vsize {vsize}");
        // bdk budgets a 65-byte signature (sighash byte) where key-path
        // spends use 64: one satoshi of slack at most.
        ensure!((160..=161).contains(&fee.to_sat()), "fee {fee}");
        ensure!(
            tx1.output.iter().map(|o| o.value).sum::<Amount>() + fee == Amount::from_sat(100_000)
        );

        mine(&chain, 1).await?;
        anchorer.sync().await?;
        let tip = chain.tip().await?;
        let r1 = record(&anchorer, 1).await?;
        ensure!(
            confirmed_height(&r1) == Some(tip.height),
            "epoch 1: {:?}",
            r1.state
        );
        ensure!(!r1.is_final);
        ensure!(node_confirmations(&chain, txid1).await? == 1);

        // Epoch 2 spends epoch 1's change output, and nothing else.
        let change1 = r1.change.context("change")?;
        ensure!(change1.txid == txid1 && tx1.output[change1.vout as usize].value > Amount::ZERO);
        ensure!(anchorer.status().await?.chain_output == Some(change1));
        let txid2 = anchorer.anchor(2, &payload(2)).await?;
        let tx2 = raw_tx(&chain, txid2).await?;
        check_anchor_tx(&tx2, &payload(2))?;
        ensure!(tx2.input.len() == 1, "inputs {:?}", tx2.input);
        ensure!(tx2.input[0].previous_output == change1);
        ensure!(record(&anchorer, 2).await?.chain_input == Some(change1));

        // Epoch 3 right away: chained on the unconfirmed epoch 2.
        let txid3 = anchorer.anchor(3, &payload(3)).await?;
        let tx3 = raw_tx(&chain, txid3).await?;
        let change2 = record(&anchorer, 2).await?.change.context("change 2")?;
        ensure!(tx3.input.len() == 1 && tx3.input[0].previous_output == change2);
        ensure!(
            anchorer.reserved_outputs().await?
                == vec![record(&anchorer, 3).await?.change.context("c3")?]
        );

        // Asking again for a queued epoch is harmless; out of order or changed is refused.
        ensure!(anchorer.anchor(3, &payload(3)).await? == txid3);
        ensure!(anchorer.anchor(2, &payload(2)).await? == txid2);
        ensure!(matches!(
            anchorer.anchor(3, &payload(9)).await,
            Err(AnchorError::EpochConflict { epoch: 3 })
        ));

        mine(&chain, 2).await?;
        anchorer.sync().await?;
        let status = anchorer.status().await?;
        ensure!(status.health == Health::Ok, "{:?}", status.health);
        ensure!(status.queued.is_empty() && status.unconfirmed.is_empty());
        for e in 1..=3 {
            let r = record(&anchorer, e).await?;
            ensure!(r.is_final, "epoch {e}: {:?}", r.state);
        }
        chain.stop().await?;
        Ok(())
    })
    .await
}

// The fee bump reads the mempool while an anchor is unconfirmed, where Core
// releases answer differently (current Core has no `bip125-replaceable`): run
// it in each release's shape. With BITCOIND_EXE each runs on the real node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_anchor_is_fee_bumped_on_core_25() -> Result<()> {
    fee_bump_on(Dialect::new(CoreVersion::V25)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_anchor_is_fee_bumped_on_core_28() -> Result<()> {
    fee_bump_on(Dialect::new(CoreVersion::V28)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_anchor_is_fee_bumped_on_current_core() -> Result<()> {
    fee_bump_on(Dialect::new(CoreVersion::V31)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_anchor_is_fee_bumped_on_current_core_with_deprecated_fields() -> Result<()> {
    fee_bump_on(
        Dialect::new(CoreVersion::V31)
            .with_deprecated_rpc("bip125")
            .with_deprecated_rpc("warnings"),
    )
    .await
}

/// An unconfirmed anchor is fee-bumped on the same chain input.
async fn fee_bump_on(dialect: Dialect) -> Result<()> {
    timed(async {
        let chain = TestChain::start_with(dialect).await?;
        let dir = tempfile::tempdir()?;
        let anchorer = open(&chain, dir.path()).await?;
        fund(&chain, &anchorer, 100_000).await?;
        let txid1 = anchorer.anchor(1, &payload(1)).await?;
        let txid2 = anchorer.anchor(2, &payload(2)).await?;
        let old1 = record(&anchorer, 1).await?;
        let old2 = record(&anchorer, 2).await?;
        ensure!(old2.chain_input == old1.change);

        // One block without it: not yet (bump_after_blocks = 2).
        mine_empty(&chain, 1).await?;
        anchorer.sync().await?;
        ensure!(record(&anchorer, 1).await?.txid == Some(txid1));
        let health = anchorer.status().await?.health;
        ensure!(health == Health::Ok, "{health:?}");

        // Two blocks: replaced with a higher fee, same chain input; epoch 2
        // is rebuilt on the replacement's change.
        mine_empty(&chain, 1).await?;
        anchorer.sync().await?;
        let new1 = record(&anchorer, 1).await?;
        let new2 = record(&anchorer, 2).await?;
        let bumped1 = new1.txid.context("txid")?;
        let rebuilt2 = new2.txid.context("txid")?;
        ensure!(bumped1 != txid1 && rebuilt2 != txid2);
        ensure!(new1.replaced == vec![txid1], "{:?}", new1.replaced);
        ensure!(new2.replaced == vec![txid2], "{:?}", new2.replaced);
        ensure!(new1.chain_input == old1.chain_input);
        ensure!(new2.chain_input == new1.change);
        let (f_old, f_new) = (old1.fee.context("fee")?, new1.fee.context("fee")?);
        // It pays for both evicted anchors plus 1 sat/vB of its own size.
        ensure!(
            f_new >= f_old + old2.fee.context("fee")? + Amount::from_sat(160),
            "old {f_old} new {f_new}"
        );
        let pool = mempool(&chain).await?;
        ensure!(pool.contains(&bumped1) && pool.contains(&rebuilt2));
        ensure!(!pool.contains(&txid1) && !pool.contains(&txid2));
        let tx = raw_tx(&chain, bumped1).await?;
        check_anchor_tx(&tx, &payload(1))?;
        println!(
            "bump: {} sat -> {} sat for {} vB",
            f_old.to_sat(),
            f_new.to_sat(),
            tx.vsize()
        );

        mine(&chain, 1).await?;
        anchorer.sync().await?;
        ensure!(confirmed_height(&record(&anchorer, 1).await?).is_some());
        ensure!(confirmed_height(&record(&anchorer, 2).await?).is_some());
        ensure!(node_confirmations(&chain, bumped1).await? == 1);
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_returns_anchor_to_mempool_then_it_confirms_again() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let anchorer = open(&chain, dir.path()).await?;
        fund(&chain, &anchorer, 100_000).await?;
        let txid = anchorer.anchor(1, &payload(1)).await?;
        mine(&chain, 1).await?;
        anchorer.sync().await?;
        let before = record(&anchorer, 1).await?;
        let AnchorState::Confirmed { block_hash, .. } = before.state else {
            bail!("not confirmed: {:?}", before.state)
        };

        chain.reorg(1).await?;
        anchorer.sync().await?;
        let r = record(&anchorer, 1).await?;
        ensure!(r.state == AnchorState::Unconfirmed, "{:?}", r.state);
        ensure!(mempool(&chain).await?.contains(&txid));

        mine(&chain, 1).await?;
        anchorer.sync().await?;
        let r = record(&anchorer, 1).await?;
        let tip = chain.tip().await?;
        match r.state {
            AnchorState::Confirmed {
                height,
                block_hash: h,
                ..
            } => ensure!(height == tip.height && h == tip.hash && h != block_hash),
            s => bail!("not confirmed again: {s:?}"),
        }
        ensure!(r.txid == Some(txid) && r.replaced.is_empty());
        chain.stop().await?;
        Ok(())
    })
    .await
}

/// Sync a plain bdk wallet from the same seed, as an attacker (or a second
/// process) holding the keys would.
fn twin_wallet(dir: &std::path::Path, chain: &TestChain) -> Result<bdk_wallet_twin::Twin> {
    bdk_wallet_twin::Twin::new(dir, chain)
}

mod bdk_wallet_twin {
    use super::*;
    use bdk_bitcoind_rpc::bitcoincore_rpc::{Auth, Client};
    use bdk_bitcoind_rpc::Emitter;
    use bdk_wallet::{KeychainKind, SignOptions, Wallet};

    pub struct Twin {
        pub wallet: Wallet,
        client: Client,
    }

    impl Twin {
        pub fn new(dir: &std::path::Path, chain: &TestChain) -> Result<Self> {
            let seed = Seed::load(&dir.join(SEED_FILE_NAME))?;
            let (ext, int) = seed.bip86_descriptors(Network::Regtest, ANCHOR_ACCOUNT)?;
            let wallet = Wallet::create(ext, int)
                .network(Network::Regtest)
                .create_wallet_no_persist()?;
            let client = Client::new(
                chain.rpc_url(),
                Auth::UserPass(
                    chain.rpc_user().to_string(),
                    chain.rpc_password().to_string(),
                ),
            )?;
            Ok(Self { wallet, client })
        }

        pub fn sync(&mut self) -> Result<()> {
            let expected: Vec<Arc<Transaction>> = self
                .wallet
                .transactions()
                .filter(|t| !t.chain_position.is_confirmed())
                .map(|t| t.tx_node.tx.clone())
                .collect();
            let mut emitter =
                Emitter::new(&self.client, self.wallet.latest_checkpoint(), 0, expected);
            while let Some(ev) = emitter.next_block()? {
                self.wallet.apply_block_connected_to(
                    &ev.block,
                    ev.block_height(),
                    ev.connected_to(),
                )?;
            }
            let mempool = emitter.mempool()?;
            self.wallet.apply_evicted_txs(mempool.evicted);
            self.wallet.apply_unconfirmed_txs(mempool.update);
            Ok(())
        }

        /// Spends `coin` (ignoring the mempool transaction that spends it) to
        /// `to` at 5 sat/vB: a conflict that replaces our anchor.
        pub fn double_spend(
            &mut self,
            coin: OutPoint,
            spender: Txid,
            to: &Address,
        ) -> Result<Transaction> {
            self.wallet.apply_evicted_txs([(spender, u64::MAX / 2)]);
            let _ = self.wallet.reveal_next_address(KeychainKind::External);
            let mut b = self.wallet.build_tx();
            b.add_utxo(coin)?
                .manually_selected_only()
                .drain_to(to.script_pubkey())
                .fee_rate(bitcoin::FeeRate::from_sat_per_vb(5).context("rate")?);
            let mut psbt = b.finish()?;
            ensure!(self.wallet.sign(&mut psbt, SignOptions::default())?);
            Ok(psbt.extract_tx()?)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_conflicted_after_reorg_is_reanchored() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let anchorer = open(&chain, dir.path()).await?;
        fund(&chain, &anchorer, 100_000).await?;
        fund(&chain, &anchorer, 80_000).await?;
        let txid = anchorer.anchor(1, &payload(1)).await?;
        let spent = raw_tx(&chain, txid).await?.input[0].previous_output;
        mine(&chain, 1).await?;
        anchorer.sync().await?;
        ensure!(confirmed_height(&record(&anchorer, 1).await?).is_some());

        // The block goes away and, in the new branch, the anchor's input is
        // spent elsewhere: the anchor can never confirm.
        chain.reorg(1).await?;
        let outside = chain.internal_address().await?;
        let path = dir.path().to_path_buf();
        let chain = Arc::new(chain);
        let c = chain.clone();
        let conflict = tokio::task::spawn_blocking(move || -> Result<Transaction> {
            let mut twin = twin_wallet(&path, &c)?;
            twin.sync()?;
            twin.double_spend(spent, txid, &outside)
        })
        .await??;
        chain
            .rpc(
                "sendrawtransaction",
                vec![json!(bitcoin::consensus::encode::serialize_hex(&conflict))],
            )
            .await?;
        mine(&chain, 1).await?;
        ensure!(!mempool(&chain).await?.contains(&txid));

        // The same epoch payload is anchored again, from the other coin.
        anchorer.sync().await?;
        let r = record(&anchorer, 1).await?;
        let new_txid = r.txid.context("txid")?;
        ensure!(new_txid != txid && r.replaced == vec![txid], "{r:?}");
        ensure!(r.state == AnchorState::Unconfirmed, "{:?}", r.state);
        let tx = raw_tx(&chain, new_txid).await?;
        check_anchor_tx(&tx, &payload(1))?;
        ensure!(tx.input.iter().all(|i| i.previous_output != spent));
        mine(&chain, 1).await?;
        anchorer.sync().await?;
        ensure!(confirmed_height(&record(&anchorer, 1).await?) == Some(chain.tip().await?.height));

        // The chain continues from the new anchor.
        let txid2 = anchorer.anchor(2, &payload(2)).await?;
        let tx2 = raw_tx(&chain, txid2).await?;
        ensure!(Some(tx2.input[0].previous_output) == r.change);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_wallet_and_anchor_chain() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let (first_addr, balance, change1) = {
            let anchorer = open(&chain, dir.path()).await?;
            let addr = anchorer.receive_address().await?;
            chain.fund(&addr, Amount::from_sat(50_000)).await?;
            anchorer.anchor(1, &payload(1)).await?;
            mine(&chain, 1).await?;
            anchorer.sync().await?;
            let status = anchorer.status().await?;
            (addr, status.balance, record(&anchorer, 1).await?.change)
        };

        let anchorer = open(&chain, dir.path()).await?;
        // Before any sync: the wallet and records come from disk.
        let status = anchorer.status().await?;
        ensure!(status.balance == balance && balance > Amount::ZERO);
        ensure!(confirmed_height(status.latest.as_ref().context("latest")?).is_some());
        ensure!(anchorer.receive_address().await? != first_addr);
        let txid2 = anchorer.anchor(2, &payload(2)).await?;
        let tx2 = raw_tx(&chain, txid2).await?;
        ensure!(Some(tx2.input[0].previous_output) == change1 && tx2.input.len() == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_wallet_queues_epochs_until_funded() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        mine(&chain, 1).await?;
        let dir = tempfile::tempdir()?;
        let anchorer = open(&chain, dir.path()).await?;

        let err = anchorer.anchor(1, &payload(1)).await.unwrap_err();
        ensure!(err.is_queued(), "{err}");
        let AnchorError::WaitingForFunds { needed, available } = err else {
            bail!("{err}")
        };
        ensure!(available == Amount::ZERO && needed == Amount::from_sat(1_160));
        ensure!(matches!(
            anchorer.anchor(2, &payload(2)).await,
            Err(AnchorError::WaitingForFunds { .. })
        ));
        let status = anchorer.status().await?;
        ensure!(status.queued == vec![1, 2], "{:?}", status.queued);
        ensure!(
            status.health == Health::WaitingForFunds { needed, available },
            "{:?}",
            status.health
        );
        ensure!(mempool(&chain).await?.is_empty());

        fund(&chain, &anchorer, 30_000).await?;
        anchorer.sync().await?;
        let status = anchorer.status().await?;
        ensure!(status.health == Health::Ok && status.queued.is_empty());
        let (r1, r2) = (record(&anchorer, 1).await?, record(&anchorer, 2).await?);
        ensure!(r2.chain_input == r1.change && r1.change.is_some());
        let pool = mempool(&chain).await?;
        ensure!(pool.contains(&r1.txid.context("1")?) && pool.contains(&r2.txid.context("2")?));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_queues_epochs_and_a_restart_resumes() -> Result<()> {
    timed(async {
        let dir = tempfile::tempdir()?;
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut dead = RpcConfig::new(format!("http://127.0.0.1:{port}"), "u", "secret-pw");
        dead.timeout = Duration::from_secs(2);
        ensure!(!format!("{dead:?}").contains("secret-pw"));
        {
            let anchorer = Anchorer::open(dir.path(), Network::Regtest, dead, policy()).await?;
            let err = anchorer.anchor(1, &payload(1)).await.unwrap_err();
            ensure!(matches!(err, AnchorError::ChainUnreachable { .. }), "{err}");
            ensure!(err.is_queued() && !err.to_string().contains("secret-pw"));
            let status = anchorer.status().await?;
            ensure!(matches!(status.health, Health::ChainUnreachable { .. }));
            ensure!(status.queued == vec![1]);
            // Epoch rules hold while queued.
            ensure!(matches!(
                anchorer.anchor(1, &payload(7)).await,
                Err(AnchorError::EpochConflict { epoch: 1 })
            ));
            ensure!(matches!(
                anchorer.anchor(0, &payload(0)).await,
                Err(AnchorError::EpochOutOfOrder {
                    epoch: 0,
                    latest: 1
                })
            ));
            ensure!(matches!(
                anchorer.anchor(2, &[0u8; 81]).await,
                Err(AnchorError::InvalidPayload { len: 81 })
            ));
            ensure!(matches!(
                anchorer.anchor(2, &[]).await,
                Err(AnchorError::InvalidPayload { len: 0 })
            ));
        }

        let chain = TestChain::start().await?;
        let anchorer = open(&chain, dir.path()).await?;
        fund(&chain, &anchorer, 20_000).await?;
        anchorer.sync().await?;
        let r = record(&anchorer, 1).await?;
        ensure!(r.state == AnchorState::Unconfirmed, "{:?}", r.state);
        check_anchor_tx(&raw_tx(&chain, r.txid.context("txid")?).await?, &payload(1))?;
        Ok(())
    })
    .await
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_file_is_created_private_and_reused() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let cfg = rpc(&chain);
        let a = Anchorer::open(dir.path(), Network::Regtest, cfg.clone(), policy()).await?;
        let path = dir.path().join(SEED_FILE_NAME);
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "mode {mode:o}");
        let db_mode = std::fs::metadata(dir.path().join(cairn_identity::anchor::DB_FILE_NAME))?
            .permissions()
            .mode()
            & 0o777;
        ensure!(db_mode == 0o600, "database mode {db_mode:o}");
        let words = std::fs::read_to_string(&path)?;
        ensure!(words.split_whitespace().count() == 24);
        let addr = a.receive_address().await?;
        ensure!(!format!("{a:?}").contains(words.split_whitespace().next().unwrap_or("-")));
        drop(a);
        let b = Anchorer::open(dir.path(), Network::Regtest, cfg.clone(), policy()).await?;
        ensure!(std::fs::read_to_string(&path)? == words);
        ensure!(b.receive_address().await? != addr);
        drop(b);
        // A database from another seed is refused, not silently mixed.
        std::fs::remove_file(&path)?;
        let err = Anchorer::open(dir.path(), Network::Regtest, cfg, policy())
            .await
            .unwrap_err();
        ensure!(matches!(err, AnchorError::Wallet(_)), "{err}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bump_beyond_the_fee_cap() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let capped = AnchorPolicy {
            fee_cap: bitcoin::FeeRate::from_sat_per_vb(1).context("rate")?,
            bump_after_blocks: 1,
            ..policy()
        };
        let anchorer = Anchorer::open(dir.path(), Network::Regtest, rpc(&chain), capped).await?;
        fund(&chain, &anchorer, 10_000).await?;
        let txid = anchorer.anchor(1, &payload(1)).await?;
        mine_empty(&chain, 2).await?;
        anchorer.sync().await?;
        let status = anchorer.status().await?;
        ensure!(
            status.health == Health::FeeCapReached { epoch: 1 },
            "{:?}",
            status.health
        );
        ensure!(status.unconfirmed == vec![1]);
        ensure!(record(&anchorer, 1).await?.txid == Some(txid));
        ensure!(mempool(&chain).await? == vec![txid]);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chain_output_is_topped_up_but_still_spent() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let anchorer = open(&chain, dir.path()).await?;
        // Just enough for one anchor: its change cannot pay for the next.
        fund(&chain, &anchorer, 1_200).await?;
        anchorer.anchor(1, &payload(1)).await?;
        mine(&chain, 1).await?;
        let change1 = record(&anchorer, 1).await?.change.context("change")?;

        let big = fund(&chain, &anchorer, 50_000).await?;
        let txid2 = anchorer.anchor(2, &payload(2)).await?;
        let tx2 = raw_tx(&chain, txid2).await?;
        let inputs: Vec<OutPoint> = tx2.input.iter().map(|i| i.previous_output).collect();
        ensure!(inputs == vec![change1, big], "{inputs:?}");
        check_anchor_tx(&tx2, &payload(2))?;

        // Once the chain output is large again, it is the only input.
        let txid3 = anchorer.anchor(3, &payload(3)).await?;
        let tx3 = raw_tx(&chain, txid3).await?;
        let change2 = record(&anchorer, 2).await?.change.context("change 2")?;
        ensure!(tx3.input.len() == 1 && tx3.input[0].previous_output == change2);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_anchor_stays_queued_until_the_policy_is_fixed() -> Result<()> {
    timed(async {
        let chain = TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        // 20 000 sat/vB is above Bitcoin Core's default maxfeerate (0.1 BTC/kvB).
        let absurd = AnchorPolicy {
            fee_floor: bitcoin::FeeRate::from_sat_per_vb(20_000).context("rate")?,
            fee_cap: bitcoin::FeeRate::from_sat_per_vb(20_000).context("rate")?,
            ..policy()
        };
        {
            let anchorer =
                Anchorer::open(dir.path(), Network::Regtest, rpc(&chain), absurd).await?;
            fund(&chain, &anchorer, 10_000_000).await?;
            let err = anchorer.anchor(1, &payload(1)).await.unwrap_err();
            let AnchorError::Rejected { epoch: 1, code, .. } = &err else {
                bail!("{err}")
            };
            ensure!(*code == -25 && err.is_queued(), "{err}");
            let status = anchorer.status().await?;
            ensure!(matches!(status.health, Health::Rejected { epoch: 1, .. }));
            ensure!(status.queued == vec![1]);
            ensure!(record(&anchorer, 1).await?.txid.is_none());
            ensure!(mempool(&chain).await?.is_empty());
        }
        let anchorer = open(&chain, dir.path()).await?;
        anchorer.sync().await?;
        let r = record(&anchorer, 1).await?;
        ensure!(r.state == AnchorState::Unconfirmed && r.replaced.is_empty());
        ensure!(r.fee.context("fee")?.to_sat() < 1_000);
        ensure!(anchorer.status().await?.health == Health::Ok);
        Ok(())
    })
    .await
}
