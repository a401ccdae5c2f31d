//! Mempool acceptance: a wallet transaction accepted and mined, every rejection
//! with Bitcoin Core's code and message, and BIP125 replacement.
//!
//! Where Core releases answer differently, the in-process node is checked in
//! both the Core 28 and the current-Core (v31) dialect; a real bitcoind
//! (`BITCOIND_EXE`, a v31 build) is checked against the current shape.

mod common;

use anyhow::Result;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::{rand, Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{absolute, Address, Amount, Network, OutPoint, Sequence, TxOut, Txid, Witness};
use cairn_testchain::dialect::{CoreVersion, Dialect};
use cairn_testchain::harness::BITCOIND_EXE_ENV;
use cairn_testchain::wallet::InternalWallet;
use cairn_testchain::TestChain;
use common::*;
use serde_json::{json, Value};

const COIN: u64 = 100_000_000;

/// The releases whose answers a test checks: Core 28 and current Core
/// in-process, only current Core against a real bitcoind.
fn versions() -> Vec<CoreVersion> {
    match std::env::var_os(BITCOIND_EXE_ENV) {
        Some(exe) if !exe.is_empty() => vec![CoreVersion::V31],
        _ => vec![CoreVersion::V28, CoreVersion::V31],
    }
}

async fn start_as(v: CoreVersion) -> Result<TestChain> {
    Ok(TestChain::start_with(Dialect::new(v)).await?)
}

/// `(reason, details)` of a failed input script: Core 28 says
/// `mandatory-script-verify-flag-failed (…)`; Core 30+ says `mempool-…` and
/// names the input.
fn script_failure(
    v: CoreVersion,
    error: &str,
    tx: &bitcoin::Transaction,
) -> (String, Option<String>) {
    if v >= CoreVersion::V31 {
        let reason = format!("mempool-script-verify-flag-failed ({error})");
        let p = tx.input[0].previous_output;
        let details = format!(
            "{reason}, input 0 of {} (wtxid {}), spending {}:{}",
            tx.compute_txid(),
            tx.compute_wtxid(),
            p.txid,
            p.vout
        );
        (reason, Some(details))
    } else {
        (
            format!("mandatory-script-verify-flag-failed ({error})"),
            None,
        )
    }
}

/// Checks a `sendrawtransaction` rejection and the matching
/// `testmempoolaccept` answer (`reject-details` only from Core 29 on).
async fn assert_rejected(
    chain: &TestChain,
    v: CoreVersion,
    tx: &bitcoin::Transaction,
    code: i32,
    reason: &str,
    message: &str,
) -> Result<()> {
    let t = chain
        .rpc("testmempoolaccept", vec![json!([serialize_hex(tx)])])
        .await?;
    assert_eq!(t[0]["allowed"], json!(false), "{t}");
    assert_eq!(t[0]["reject-reason"], json!(reason), "{t}");
    let details = if v >= CoreVersion::V31 {
        json!(message)
    } else {
        Value::Null
    };
    assert_eq!(
        t[0].get("reject-details").cloned().unwrap_or(Value::Null),
        details,
        "{t}"
    );
    assert_eq!(
        rpc_error(send(chain, tx).await)?,
        (code, message.to_string())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_transaction_is_accepted_and_mined() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let wallet = InternalWallet::new();
        let coin = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        let dest = InternalWallet::new();
        let tx = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![
                out(&dest.script_pubkey(), 40_000_000),
                out(&wallet.script_pubkey(), COIN - 40_000_000 - 1_000),
            ],
        );
        let txid = send(&chain, &tx).await?;
        assert_eq!(txid, tx.compute_txid());
        // Re-sending a mempool transaction is not an error in Core.
        assert_eq!(send(&chain, &tx).await?, txid);
        assert_eq!(mempool(&chain).await?, vec![txid]);
        let entry = chain
            .rpc("getmempoolentry", vec![json!(txid.to_string())])
            .await?;
        assert_eq!(entry["vsize"], json!(tx.vsize()));
        assert_eq!(entry["fees"]["base"], json!(0.00001));
        // Core before 28 says it signals; current Core leaves the field out
        // (without -deprecatedrpc=bip125), as testchain does by default.
        assert!(
            entry.get("bip125-replaceable").is_none() || entry["bip125-replaceable"] == json!(true),
            "{entry}"
        );
        // The spent coin is gone from gettxout (mempool view), the new one is there.
        let spent = chain
            .rpc(
                "gettxout",
                vec![
                    json!(coin.outpoint.txid.to_string()),
                    json!(coin.outpoint.vout),
                ],
            )
            .await?;
        assert!(spent.is_null());
        let unconf = chain
            .rpc("gettxout", vec![json!(txid.to_string()), json!(0)])
            .await?;
        assert_eq!(unconf["confirmations"], json!(0));

        let hashes = mine(&chain, 1).await?;
        assert!(mempool(&chain).await?.is_empty());
        let v = raw_tx_verbose(&chain, &txid).await?;
        assert_eq!(v["blockhash"], json!(hashes[0].to_string()));
        assert_eq!(v["confirmations"], json!(1));
        let txo = chain
            .rpc("gettxout", vec![json!(txid.to_string()), json!(0)])
            .await?;
        assert_eq!(txo["confirmations"], json!(1));
        assert_eq!(txo["value"], json!(0.4));
        assert_eq!(
            txo["scriptPubKey"]["address"],
            json!(dest.address().to_string())
        );
        // Block verbosity 2 reports the fee.
        let block = chain
            .rpc("getblock", vec![json!(hashes[0].to_string()), json!(2)])
            .await?;
        assert_eq!(block["tx"][1]["txid"], json!(txid.to_string()));
        assert_eq!(block["tx"][1]["fee"], json!(0.00001));
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_match_bitcoin_core() -> Result<()> {
    for v in versions() {
        rejections_on(v).await?;
    }
    Ok(())
}

async fn rejections_on(v: CoreVersion) -> Result<()> {
    timed(async {
        let chain = start_as(v).await?;
        let wallet = InternalWallet::new();
        let coin = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        let spk = wallet.script_pubkey();
        let good = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 1_000)],
        );

        // Missing input.
        let ghost = Coin {
            outpoint: OutPoint::new(Txid::all_zeros(), 7),
            output: coin.output.clone(),
        };
        let tx = spend(&wallet, &[ghost], vec![out(&spk, 10_000)]);
        assert_eq!(
            rpc_error(send(&chain, &tx).await)?,
            (-25, "bad-txns-inputs-missingorspent".into())
        );
        let t = chain
            .rpc("testmempoolaccept", vec![json!([serialize_hex(&tx)])])
            .await?;
        assert_eq!(t[0]["allowed"], json!(false));
        assert_eq!(t[0]["reject-reason"], json!("missing-inputs"));
        // Not even current Core details missing inputs.
        assert!(t[0].get("reject-details").is_none(), "{t}");

        // Bad signature: change an amount after signing.
        let mut bad = good.clone();
        bad.output[0].value = Amount::from_sat(COIN - 2_000);
        let (reason, details) = script_failure(
            v,
            "Signature must be zero for failed CHECK(MULTI)SIG operation",
            &bad,
        );
        let message = details.unwrap_or_else(|| reason.clone());
        assert_rejected(&chain, v, &bad, -26, &reason, &message).await?;
        // No signature at all: P2WPKH wants exactly two witness items.
        let mut unsigned = good.clone();
        unsigned.input[0].witness = Witness::new();
        let (reason, details) = script_failure(v, "Witness program hash mismatch", &unsigned);
        let message = details.unwrap_or_else(|| reason.clone());
        assert_rejected(&chain, v, &unsigned, -26, &reason, &message).await?;

        // Outputs above inputs.
        let tx = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN + 1_000_000)],
        );
        assert_rejected(
            &chain,
            v,
            &tx,
            -26,
            "bad-txns-in-belowout",
            "bad-txns-in-belowout, value in (1.00) < value out (1.01)",
        )
        .await?;

        // Zero fee.
        // Zero fee: 1 sat/vB before Core 30, 0.1 sat/vB since.
        let tx = spend(&wallet, std::slice::from_ref(&coin), vec![out(&spk, COIN)]);
        let min_fee = tx.vsize() as u64 * v.min_relay_fee_sat_per_kvb() / 1000;
        assert_rejected(
            &chain,
            v,
            &tx,
            -26,
            "min relay fee not met",
            &format!("min relay fee not met, 0 < {min_fee}"),
        )
        .await?;

        // Dust (Core 29+ explains that only a 0-fee transaction may have it).
        let tx = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 10_000), out(&spk, 100)],
        );
        let message = if v >= CoreVersion::V31 {
            "dust, tx with dust output must be 0-fee"
        } else {
            "dust"
        };
        assert_rejected(&chain, v, &tx, -26, "dust", message).await?;

        // OP_RETURN: 80 bytes is standard; before Core 30, 81 is not, nor are two.
        let op_return = |n: usize| {
            let data = PushBytesBuf::try_from(vec![0xab; n]).unwrap();
            let s = Builder::new()
                .push_opcode(bitcoin::opcodes::all::OP_RETURN)
                .push_slice(data)
                .into_script();
            TxOut {
                value: Amount::ZERO,
                script_pubkey: s,
            }
        };
        let ok = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 2_000), op_return(80)],
        );
        let t = chain
            .rpc("testmempoolaccept", vec![json!([serialize_hex(&ok)])])
            .await?;
        assert_eq!(t[0]["allowed"], json!(true), "{t}");
        let big = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 2_000), op_return(81)],
        );
        let two = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 2_000), op_return(4), op_return(4)],
        );
        if v >= CoreVersion::V31 {
            for tx in [&big, &two] {
                let t = chain
                    .rpc("testmempoolaccept", vec![json!([serialize_hex(tx)])])
                    .await?;
                assert_eq!(t[0]["allowed"], json!(true), "{t}");
            }
        } else {
            assert_rejected(&chain, v, &big, -26, "scriptpubkey", "scriptpubkey").await?;
            assert_rejected(&chain, v, &two, -26, "multi-op-return", "multi-op-return").await?;
        }

        // Absolute locktime in the future.
        let tip = chain.tip().await?.height;
        let tx = build(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 1_000)],
            absolute::LockTime::from_height(tip + 2)?,
            Sequence::ENABLE_RBF_NO_LOCKTIME,
        );
        assert_rejected(&chain, v, &tx, -26, "non-final", "non-final").await?;
        // Locktime equal to the next height is final.
        let tx = build(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 1_000)],
            absolute::LockTime::from_height(tip)?,
            Sequence::ENABLE_RBF_NO_LOCKTIME,
        );
        let t = chain
            .rpc("testmempoolaccept", vec![json!([serialize_hex(&tx)])])
            .await?;
        assert_eq!(t[0]["allowed"], json!(true), "{t}");

        // BIP68 relative locktime of 10 blocks on a 1-confirmation coin.
        let tx = build(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 1_000)],
            absolute::LockTime::ZERO,
            Sequence::from_height(10),
        );
        assert_rejected(&chain, v, &tx, -26, "non-BIP68-final", "non-BIP68-final").await?;

        // Absurd fee.
        let tx = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN / 2)],
        );
        assert_eq!(
            rpc_error(send(&chain, &tx).await)?,
            (
                -25,
                "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)".into()
            )
        );
        // ... which maxfeerate=0 allows (checked without sending).
        let t = chain
            .rpc(
                "testmempoolaccept",
                vec![json!([serialize_hex(&tx)]), json!(0)],
            )
            .await?;
        assert_eq!(t[0]["allowed"], json!(true), "{t}");

        // Undecodable.
        let (code, msg) = rpc_error(chain.rpc("sendrawtransaction", vec![json!("00zz")]).await)?;
        assert_eq!(
            (code, msg.as_str()),
            (
                -22,
                "TX decode failed. Make sure the tx has at least one input."
            )
        );

        // Confirmed: re-sending says already in chain; spending the coin again says missing.
        send(&chain, &good).await?;
        mine(&chain, 1).await?;
        let (code, msg) = rpc_error(send(&chain, &good).await)?;
        assert_eq!(code, -27);
        assert!(
            msg == "Transaction outputs already in utxo set"
                || msg == "Transaction already in block chain",
            "{msg}"
        );
        let again = spend(
            &wallet,
            std::slice::from_ref(&coin),
            vec![out(&spk, COIN - 5_000)],
        );
        assert_eq!(
            rpc_error(send(&chain, &again).await)?,
            (-25, "bad-txns-inputs-missingorspent".into())
        );
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taproot_key_spend_is_verified() -> Result<()> {
    for v in versions() {
        taproot_key_spend_on(v).await?;
    }
    Ok(())
}

async fn taproot_key_spend_on(v: CoreVersion) -> Result<()> {
    timed(async {
        let chain = start_as(v).await?;
        let secp = Secp256k1::new();
        let keypair = Keypair::new(&secp, &mut rand::thread_rng());
        let (xonly, _) = keypair.x_only_public_key();
        let address = Address::p2tr(&secp, xonly, None, Network::Regtest);
        let amount = Amount::from_sat(COIN);
        let outpoint = chain.fund(&address, amount).await?;
        let prevout = TxOut {
            value: amount,
            script_pubkey: address.script_pubkey(),
        };
        let dest = InternalWallet::new();
        let unsigned = bitcoin::Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn {
                previous_output: outpoint,
                script_sig: bitcoin::ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: vec![out(&dest.script_pubkey(), COIN - 1_000)],
        };
        let sighash = SighashCache::new(&unsigned).taproot_key_spend_signature_hash(
            0,
            &Prevouts::All(&[prevout]),
            TapSighashType::Default,
        )?;
        let tweaked = keypair.tap_tweak(&secp, None);
        let msg = Message::from_digest(sighash.to_byte_array());

        // Signed with the untweaked key: Core's "Invalid Schnorr signature".
        let mut wrong = unsigned.clone();
        wrong.input[0]
            .witness
            .push(secp.sign_schnorr_no_aux_rand(&msg, &keypair).as_ref());
        let (reason, details) = script_failure(v, "Invalid Schnorr signature", &wrong);
        let message = details.unwrap_or_else(|| reason.clone());
        assert_rejected(&chain, v, &wrong, -26, &reason, &message).await?;
        let mut right = unsigned.clone();
        right.input[0].witness.push(
            secp.sign_schnorr_no_aux_rand(&msg, &tweaked.to_keypair())
                .as_ref(),
        );
        let txid = send(&chain, &right).await?;
        assert_eq!(mempool(&chain).await?, vec![txid]);
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_needs_higher_fee_and_feerate() -> Result<()> {
    for v in versions() {
        replacement_on(v).await?;
    }
    Ok(())
}

async fn replacement_on(v: CoreVersion) -> Result<()> {
    timed(async {
        let chain = start_as(v).await?;
        let wallet = InternalWallet::new();
        let coin = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        let spk = wallet.script_pubkey();
        let a = spend(&wallet, std::slice::from_ref(&coin), vec![out(&spk, COIN - 10_000)]);
        let a_id = send(&chain, &a).await?;

        // Less fee and feerate: Core 28 checks the feerate first, the
        // cluster mempool (Core 31) the absolute fee.
        let b = spend(&wallet, std::slice::from_ref(&coin), vec![out(&spk, COIN - 5_000)]);
        let b_id = b.compute_txid();
        if v >= CoreVersion::V31 {
            let message = format!("insufficient fee, rejecting replacement {b_id}, less fees than conflicting txs; 0.00005 < 0.0001");
            assert_rejected(&chain, v, &b, -26, "insufficient fee", &message).await?;
        } else {
            let (code, msg) = rpc_error(send(&chain, &b).await)?;
            assert_eq!(code, -26);
            assert!(msg.starts_with(&format!("insufficient fee, rejecting replacement {b_id}; new feerate")), "{msg}");
            let t = chain.rpc("testmempoolaccept", vec![json!([serialize_hex(&b)])]).await?;
            assert_eq!(t[0]["reject-reason"], json!("insufficient fee"));
        }

        let c = spend(&wallet, std::slice::from_ref(&coin), vec![out(&spk, COIN - 20_000)]);
        let c_id = send(&chain, &c).await?;
        assert_eq!(mempool(&chain).await?, vec![c_id]);
        let (code, msg) = rpc_error(chain.rpc("getmempoolentry", vec![json!(a_id.to_string())]).await)?;
        assert_eq!((code, msg.as_str()), (-5, "Transaction not in mempool"));

        // One more satoshi does not pay for relay (rule 4). It beats c's
        // feerate unless d's signature came out a byte longer and crossed a
        // vbyte (ECDSA signatures vary in length); Core before 31 checks the
        // feerate first, so then it answers with that rule.
        let d = spend(&wallet, std::slice::from_ref(&coin), vec![out(&spk, COIN - 20_001)]);
        let lower_feerate = 20_001 * (c.vsize() as u64) <= 20_000 * (d.vsize() as u64);
        if v < CoreVersion::V31 && lower_feerate {
            let (code, msg) = rpc_error(send(&chain, &d).await)?;
            assert_eq!(code, -26);
            let start = format!("insufficient fee, rejecting replacement {}; new feerate", d.compute_txid());
            assert!(msg.starts_with(&start), "{msg}");
        } else {
            let relay = d.vsize() as u64 * v.min_relay_fee_sat_per_kvb() / 1000;
            let message = format!(
                "insufficient fee, rejecting replacement {}, not enough additional fees to relay; 0.00000001 < {}",
                d.compute_txid(),
                cairn_testchain::format::format_money(relay as i64)
            );
            assert_rejected(&chain, v, &d, -26, "insufficient fee", &message).await?;
        }

        // More fee but a lower feerate (ten more outputs): Core 28's feerate
        // rule, Core 31's feerate diagram.
        let mut outs = vec![out(&spk, COIN - 20_100 - 10_000)];
        outs.extend((0..10).map(|_| out(&spk, 1_000)));
        let e = spend(&wallet, std::slice::from_ref(&coin), outs);
        if v >= CoreVersion::V31 {
            let message = "replacement-failed, insufficient feerate: does not improve feerate diagram";
            assert_rejected(&chain, v, &e, -26, "replacement-failed", message).await?;
        } else {
            let (code, msg) = rpc_error(send(&chain, &e).await)?;
            assert_eq!(code, -26);
            assert!(msg.starts_with(&format!("insufficient fee, rejecting replacement {}; new feerate", e.compute_txid())), "{msg}");
        }

        mine(&chain, 1).await?;
        assert_eq!(raw_tx_verbose(&chain, &c_id).await?["confirmations"], json!(1));
        let (code, _) = rpc_error(chain.rpc("getrawtransaction", vec![json!(a_id.to_string())]).await)?;
        assert_eq!(code, -5);
        chain.stop().await?;
        Ok(())
    })
    .await
}

/// Core 31's cluster mempool: a child paying for its low-fee parent is
/// mined in one chunk with it, so both entries report the pair's weight and
/// fee as `chunkweight` and `fees.chunk`; a lone transaction is its own chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_pays_for_parent_in_one_chunk() -> Result<()> {
    timed(async {
        let chain = start_as(CoreVersion::V31).await?;
        let wallet = InternalWallet::new();
        let spk = wallet.script_pubkey();
        let coin = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        let lone_coin = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        // The parent pays ~1 sat/vB, the child ~50.
        let parent = spend(&wallet, &[coin], vec![out(&spk, COIN - 200)]);
        let parent_id = send(&chain, &parent).await?;
        let child = spend(
            &wallet,
            &[Coin {
                outpoint: OutPoint::new(parent_id, 0),
                output: out(&spk, COIN - 200),
            }],
            vec![out(&spk, COIN - 200 - 5_000)],
        );
        let child_id = send(&chain, &child).await?;
        let lone = spend(&wallet, &[lone_coin], vec![out(&spk, COIN - 1_000)]);
        let lone_id = send(&chain, &lone).await?;
        let entry = |t: Txid| chain.rpc("getmempoolentry", vec![json!(t.to_string())]);
        let (p, c, l) = (
            entry(parent_id).await?,
            entry(child_id).await?,
            entry(lone_id).await?,
        );
        let pair_weight = p["weight"].as_u64().unwrap_or(0) + c["weight"].as_u64().unwrap_or(0);
        assert_eq!(p["chunkweight"], json!(pair_weight), "{p}");
        assert_eq!(c["chunkweight"], json!(pair_weight), "{c}");
        assert_eq!(p["fees"]["chunk"], json!(0.000052), "{p}");
        assert_eq!(c["fees"]["chunk"], json!(0.000052), "{c}");
        assert_eq!(l["chunkweight"], l["weight"], "{l}");
        assert_eq!(l["fees"]["chunk"], json!(0.00001), "{l}");
        chain.stop().await?;
        Ok(())
    })
    .await
}
