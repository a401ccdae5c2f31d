//! testchain answers in each Bitcoin Core release's shape where releases
//! differ, and like a Core without a wallet: wallet calls are unknown methods
//! and the harness funds addresses without them.
//!
//! The dialect tests check testchain's own imitation, so they run on the
//! in-process chain even when `BITCOIND_EXE` is set; the wallet test runs on
//! whichever chain [`TestChain::start`] gives (bitcoind is run with
//! `-disablewallet`).

mod common;

use anyhow::{ensure, Result};
use bitcoin::{Amount, OutPoint};
use cairn_testchain::wallet::InternalWallet;
use cairn_testchain::{CoreVersion, Dialect, TestChain};
use common::*;
use serde_json::{json, Value};

const COIN: u64 = 100_000_000;

async fn unconfirmed_spend(chain: &TestChain) -> Result<bitcoin::Txid> {
    let wallet = InternalWallet::new();
    let coin = funded_coin(chain, &wallet, Amount::from_sat(COIN)).await?;
    let tx = spend(
        &wallet,
        &[coin],
        vec![out(&wallet.script_pubkey(), COIN - 1_000)],
    );
    Ok(send(chain, &tx).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_follow_the_core_release() -> Result<()> {
    for dialect in Dialect::all() {
        timed(async {
            let chain = TestChain::start_in_process_with(dialect.clone()).await?;
            let txid = unconfirmed_spend(&chain).await?;
            let entry = chain
                .rpc("getmempoolentry", vec![json!(txid.to_string())])
                .await?;
            let verbose = chain.rpc("getrawmempool", vec![json!(true)]).await?;
            let pooled = &verbose[txid.to_string()];
            let bip125 = dialect.sends_bip125_replaceable();
            for e in [&entry, pooled] {
                ensure!(
                    e.get("bip125-replaceable").is_some() == bip125,
                    "{dialect:?}: {e}"
                );
                if bip125 {
                    ensure!(e["bip125-replaceable"] == json!(true));
                }
                // The fee is in the `fees` object in every release 25+.
                ensure!(e["fees"]["base"] == json!(0.00001), "{e}");
                ensure!(e.get("fee").is_none(), "{e}");
            }
            let string_warnings = dialect.warnings_as_string();
            for method in ["getblockchaininfo", "getnetworkinfo"] {
                let v = chain.rpc(method, vec![]).await?;
                let w = &v["warnings"];
                ensure!(
                    if string_warnings {
                        w.is_string()
                    } else {
                        w.is_array()
                    },
                    "{dialect:?} {method}: warnings {w}"
                );
            }
            let net = chain.rpc("getnetworkinfo", vec![]).await?;
            ensure!(net["version"] == json!(dialect.version.client_version()));
            let tip = chain.tip().await?;
            let header = chain
                .rpc("getblockheader", vec![json!(tip.hash.to_string())])
                .await?;
            let info = chain.rpc("getblockchaininfo", vec![]).await?;
            for v in [&header, &info] {
                ensure!(
                    v.get("target").is_some() == (dialect.version >= CoreVersion::V31),
                    "{dialect:?}: {v}"
                );
            }
            chain.stop().await?;
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Wallet RPCs the old harness used, and others a wallet build has.
const WALLET_METHODS: &[&str] = &[
    "createwallet",
    "loadwallet",
    "listwallets",
    "getnewaddress",
    "getbalance",
    "listunspent",
    "sendtoaddress",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_works_without_a_wallet() -> Result<()> {
    timed(async {
        let chain = start().await?;
        // A Core without a wallet (built so, or -disablewallet) does not know
        // these methods at all: "Method not found", not a wallet error (-18).
        for method in WALLET_METHODS {
            let (code, msg) = rpc_error(chain.rpc(method, vec![]).await)?;
            ensure!(
                (code, msg.as_str()) == (-32601, "Method not found"),
                "{method}: {code} {msg}"
            );
        }
        // Funding still pays the test's own key, confirmed, with real coins.
        let wallet = InternalWallet::new();
        let a = chain
            .fund(&wallet.address(), Amount::from_sat(70_000))
            .await?;
        let b = chain
            .fund(&wallet.address(), Amount::from_sat(3 * COIN))
            .await?;
        // Two unconfirmed payments in a row use different coins.
        let c = chain
            .send(&wallet.address(), Amount::from_sat(50_000))
            .await?;
        let d = chain
            .send(&wallet.address(), Amount::from_sat(60_000))
            .await?;
        ensure!(mempool(&chain).await?.len() == 2);
        mine(&chain, 1).await?;
        for (op, sat) in [(a, 70_000), (b, 3 * COIN)] {
            let txout = gettxout(&chain, op).await?;
            ensure!(txout["value"] == json!(sat as f64 / 1e8), "{txout}");
            ensure!(txout["confirmations"].as_u64() >= Some(1), "{txout}");
        }
        for txid in [c, d] {
            ensure!(raw_tx_verbose(&chain, &txid).await?["confirmations"] == json!(1));
        }
        // The harness's coins are where scantxoutset says.
        let own = chain.internal_address().await?;
        let scan = chain
            .rpc(
                "scantxoutset",
                vec![json!("start"), json!([format!("addr({own})")])],
            )
            .await?;
        ensure!(scan["success"] == json!(true), "{scan}");
        ensure!(scan["unspents"].as_array().is_some_and(|u| !u.is_empty()));
        chain.stop().await?;
        Ok(())
    })
    .await
}

async fn gettxout(chain: &TestChain, op: OutPoint) -> Result<Value> {
    Ok(chain
        .rpc(
            "gettxout",
            vec![json!(op.txid.to_string()), json!(op.vout), json!(true)],
        )
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scantxoutset_checks_descriptors() -> Result<()> {
    timed(async {
        let chain = TestChain::start_in_process().await?;
        let (code, _) = rpc_error(
            chain
                .rpc(
                    "scantxoutset",
                    vec![json!("start"), json!(["pkh(nonsense)"])],
                )
                .await,
        )?;
        ensure!(code == -5);
        let (code, _) = rpc_error(
            chain
                .rpc(
                    "scantxoutset",
                    vec![json!("start"), json!(["raw(deadbeef)#00000000"])],
                )
                .await,
        )?;
        ensure!(code == -5);
        let ok = chain
            .rpc(
                "scantxoutset",
                vec![json!("start"), json!([{"desc": "raw(deadbeef)#89f8spxm"}])],
            )
            .await?;
        ensure!(
            ok["unspents"] == json!([]) && ok["total_amount"] == json!(0.0),
            "{ok}"
        );
        ensure!(chain
            .rpc("scantxoutset", vec![json!("status")])
            .await?
            .is_null());
        chain.stop().await?;
        Ok(())
    })
    .await
}
