//! gettxoutproof output verifies with rust-bitcoin's MerkleBlock and with
//! verifytxoutproof; tampering breaks it.

mod common;

use anyhow::Result;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::merkle_tree::MerkleBlock;
use bitcoin::{Amount, TxMerkleNode};
use cairn_testchain::wallet::InternalWallet;
use common::*;
use serde_json::json;

const COIN: u64 = 100_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txout_proofs_verify() -> Result<()> {
    timed(async {
        let chain = start().await?;
        let wallet = InternalWallet::new();
        let c1 = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        let c2 = funded_coin(&chain, &wallet, Amount::from_sat(COIN)).await?;
        let t1 = send(
            &chain,
            &spend(
                &wallet,
                &[c1],
                vec![out(&wallet.script_pubkey(), COIN - 1_000)],
            ),
        )
        .await?;
        let t2 = send(
            &chain,
            &spend(
                &wallet,
                &[c2],
                vec![out(&wallet.script_pubkey(), COIN - 1_000)],
            ),
        )
        .await?;

        let (code, msg) = rpc_error(
            chain
                .rpc("gettxoutproof", vec![json!([t1.to_string()])])
                .await,
        )?;
        assert_eq!((code, msg.as_str()), (-5, "Transaction not yet in block"));

        let block = mine(&chain, 1).await?[0];
        let proof = chain
            .rpc("gettxoutproof", vec![json!([t1.to_string()])])
            .await?;
        let proof = proof.as_str().unwrap().to_string();
        let mb: MerkleBlock = deserialize_hex(&proof)?;
        assert_eq!(mb.header.block_hash(), block);
        let header = chain
            .rpc("getblockheader", vec![json!(block.to_string())])
            .await?;
        let root: TxMerkleNode = header["merkleroot"].as_str().unwrap().parse()?;
        let (mut matches, mut idx) = (vec![], vec![]);
        assert_eq!(mb.extract_matches(&mut matches, &mut idx)?, ());
        assert_eq!(mb.header.merkle_root, root);
        assert_eq!(matches, vec![t1]);
        assert_eq!(mb.txn.num_transactions(), 3);
        let v = chain.rpc("verifytxoutproof", vec![json!(proof)]).await?;
        assert_eq!(v, json!([t1.to_string()]));

        let both = chain
            .rpc(
                "gettxoutproof",
                vec![
                    json!([t1.to_string(), t2.to_string()]),
                    json!(block.to_string()),
                ],
            )
            .await?;
        let v = chain.rpc("verifytxoutproof", vec![both]).await?;
        let mut got: Vec<String> = serde_json::from_value(v)?;
        got.sort();
        let mut want = vec![t1.to_string(), t2.to_string()];
        want.sort();
        assert_eq!(got, want);

        // A flipped bit in a hash no longer reaches the header's merkle root.
        let mut tampered = mb.clone();
        let mut bytes = bitcoin::consensus::encode::serialize(&tampered.txn);
        let last = bytes.len() - 3;
        bytes[last - 10] ^= 1;
        tampered.txn = bitcoin::consensus::encode::deserialize(&bytes)?;
        let (mut m2, mut i2) = (vec![], vec![]);
        assert!(tampered.extract_matches(&mut m2, &mut i2).is_err());
        let v = chain
            .rpc("verifytxoutproof", vec![json!(serialize_hex(&tampered))])
            .await?;
        assert_eq!(v, json!([]));

        // A proof for a block that left the chain is refused.
        chain
            .rpc("invalidateblock", vec![json!(block.to_string())])
            .await?;
        let (code, msg) = rpc_error(chain.rpc("verifytxoutproof", vec![json!(proof)]).await)?;
        assert_eq!((code, msg.as_str()), (-5, "Block not found in chain"));
        chain.stop().await?;
        Ok(())
    })
    .await
}
