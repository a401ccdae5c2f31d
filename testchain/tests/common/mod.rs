//! Helpers shared by the testchain integration tests. Everything goes through
//! RPC or the harness API, so the tests run unchanged against a real bitcoind.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{
    absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use cairn_testchain::harness::HarnessError;
use cairn_testchain::wallet::InternalWallet;
use cairn_testchain::TestChain;
use serde_json::{json, Value};

/// Upper bound for any single test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn timed<T, F: Future<Output = Result<T>>>(f: F) -> Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

/// Starts a chain (in-process, or bitcoind when `BITCOIND_EXE` is set).
pub async fn start() -> Result<TestChain> {
    Ok(TestChain::start().await?)
}

/// A coin the test's own key controls: outpoint and the output it spends.
#[derive(Debug, Clone)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub output: TxOut,
}

/// Funds `wallet` with a confirmed coin of `amount`.
pub async fn funded_coin(
    chain: &TestChain,
    wallet: &InternalWallet,
    amount: Amount,
) -> Result<Coin> {
    let outpoint = chain.fund(&wallet.address(), amount).await?;
    Ok(Coin {
        outpoint,
        output: TxOut {
            value: amount,
            script_pubkey: wallet.script_pubkey(),
        },
    })
}

/// A version-2, RBF-signalling transaction spending `coins` to `outputs`, signed by `wallet`.
pub fn spend(wallet: &InternalWallet, coins: &[Coin], outputs: Vec<TxOut>) -> Transaction {
    build(
        wallet,
        coins,
        outputs,
        absolute::LockTime::ZERO,
        Sequence::ENABLE_RBF_NO_LOCKTIME,
    )
}

/// Like [`spend`] with explicit locktime and sequence.
pub fn build(
    wallet: &InternalWallet,
    coins: &[Coin],
    outputs: Vec<TxOut>,
    lock_time: absolute::LockTime,
    sequence: Sequence,
) -> Transaction {
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time,
        input: coins
            .iter()
            .map(|c| TxIn {
                previous_output: c.outpoint,
                script_sig: ScriptBuf::new(),
                sequence,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs,
    };
    let prevouts: Vec<TxOut> = coins.iter().map(|c| c.output.clone()).collect();
    wallet
        .sign(tx, &prevouts)
        .expect("test coins are P2WPKH outputs of the wallet")
}

/// An output paying `sat` to `script`.
pub fn out(script: &ScriptBuf, sat: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sat),
        script_pubkey: script.clone(),
    }
}

/// `sendrawtransaction`.
pub async fn send(chain: &TestChain, tx: &Transaction) -> Result<Txid, HarnessError> {
    let v = chain
        .rpc("sendrawtransaction", vec![json!(serialize_hex(tx))])
        .await?;
    Ok(v.as_str().unwrap_or_default().parse().expect("txid"))
}

/// The RPC error `(code, message)` of a failed call.
pub fn rpc_error<T: std::fmt::Debug>(r: Result<T, HarnessError>) -> Result<(i32, String)> {
    match r {
        Err(HarnessError::Rpc(e)) => Ok((e.code, e.message)),
        other => Err(anyhow!("expected an RPC error, got {other:?}")),
    }
}

/// `getrawmempool` as txids.
pub async fn mempool(chain: &TestChain) -> Result<Vec<Txid>> {
    let v = chain.rpc("getrawmempool", vec![]).await?;
    v.as_array()
        .ok_or_else(|| anyhow!("not an array: {v}"))?
        .iter()
        .map(|t| Ok(t.as_str().ok_or_else(|| anyhow!("not a string"))?.parse()?))
        .collect()
}

/// Mines `n` blocks to the harness wallet.
pub async fn mine(chain: &TestChain, n: u32) -> Result<Vec<bitcoin::BlockHash>> {
    let a = chain.internal_address().await?;
    Ok(chain.mine(n, &a).await?)
}

/// `getrawtransaction txid true`.
pub async fn raw_tx_verbose(chain: &TestChain, txid: &Txid) -> Result<Value> {
    Ok(chain
        .rpc(
            "getrawtransaction",
            vec![json!(txid.to_string()), json!(true)],
        )
        .await?)
}
