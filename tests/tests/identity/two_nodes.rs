//! Two Cairn nodes, each with its own data directory and witness key, on the
//! same chain and the same X: both check the same binding (one key, one X
//! account) and must agree on its status, and each node's proof bundle must
//! verify to the same identity against one chain view.
//!
//! Nodes do not import each other's bindings: a node only attests proof posts
//! it fetched itself for challenges it issued. What a mirror can take from a
//! node is its published events, so the test also checks that the bundle's
//! operation and attestation are exactly what the node published.

use std::time::Duration;

use anyhow::{ensure, Result};
use bitcoin::Network;
use cairn_e2e::{within, WsClient};
use cairn_identity::binding::Status;
use cairn_identity::bundle::BundleError;
use cairn_identity::service::EpochClose;
use cairn_node::cli::{self, ChainSource, HeaderRange, NodeClient, Subject, VerifyOptions};
use cairn_testchain::TestChain;
use nostr::{Event, PublicKey};
use serde_json::json;

use crate::fake_x::FakeX;
use crate::support::*;

const ERIN_UID: u64 = 1_400_000_000_000_000_001;

fn closed(close: EpochClose) -> Result<()> {
    match close {
        EpochClose::Closed {
            epoch: 0,
            txid: Some(_),
            queued: None,
        } => Ok(()),
        other => anyhow::bail!("expected epoch 0 closed and anchored, got {other:?}"),
    }
}

/// The node's published identity events (kinds 3470-3472), read from its relay.
async fn published(node: &IdNode, at_least: usize) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    // Publication is asynchronous; give the relay a moment.
    for _ in 0..50 {
        let mut ws = WsClient::connect(&node.node().ws_url()).await?;
        events = ws
            .query_once(&[json!({"kinds": [3470, 3471, 3472]})])
            .await?;
        ws.close().await;
        if events.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(events)
}

fn options(headers: &std::path::Path, witnesses: Vec<PublicKey>) -> VerifyOptions {
    VerifyOptions {
        chain: ChainSource::HeadersFile {
            path: headers.to_owned(),
            checkpoint: None,
        },
        network: Network::Regtest,
        min_confirmations: CONFIRMATIONS,
        trusted_witnesses: witnesses,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_that_see_the_same_binding_agree() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let a = IdNode::start(&chain, &x, false).await?;
        let b = IdNode::start(&chain, &x, false).await?;
        ensure!(a.dir.path() != b.dir.path(), "two data directories");
        a.fund(&chain, 200_000).await?;
        b.fund(&chain, 200_000).await?;
        let (witness_a, witness_b) = (
            a.service().witness_public_key(),
            b.service().witness_public_key(),
        );
        assert_ne!(witness_a, witness_b, "each node is its own witness");

        // Erin binds her key to her X account on both nodes: each node issues
        // its own challenge and fetches her post itself.
        let erin = User::new(ERIN_UID, "erin_two");
        let bind_a = bind(&a, &x, &erin, 1).await?;
        let bind_b = bind(&b, &x, &erin, 2).await?;
        closed(a.close_epoch().await?)?;
        closed(b.close_epoch().await?)?;
        mine(&chain, CONFIRMATIONS).await?;
        a.sync().await?;
        b.sync().await?;

        // Both nodes report the same status for the handle and for the key.
        let (client_a, client_b) = (NodeClient::new(&a.base)?, NodeClient::new(&b.base)?);
        for subject in [
            Subject::parse("@erin_two")?,
            Subject::Key(erin.keys.public_key()),
        ] {
            let va = within("status on A", cli::status(&client_a, &subject)).await??;
            let vb = within("status on B", cli::status(&client_b, &subject)).await??;
            assert_eq!(
                cli::status_label(&va),
                format!("final ({CONFIRMATIONS} conf)")
            );
            assert_eq!(cli::status_label(&va), cli::status_label(&vb), "{subject}");
            assert_eq!(
                (&va.x_uid, &va.handle, &va.npub, &va.binding, va.seq),
                (&vb.x_uid, &vb.handle, &vb.npub, &vb.binding, vb.seq),
                "{subject}"
            );
            assert_eq!(va.npub, Some(erin.npub()));
            assert_eq!(va.head, bind_a.id.to_hex());
            assert_eq!(vb.head, bind_b.id.to_hex());
        }

        // The verifier's own chain view: headers exported from its Bitcoin node.
        let files = tempfile::tempdir()?;
        let headers = files.path().join("headers.bin");
        within(
            "export headers",
            cli::export_headers(
                chain.rpc_url(),
                chain.rpc_user(),
                chain.rpc_password(),
                HeaderRange::default(),
                &headers,
            ),
        )
        .await??;

        // B's side verifies A's bundle (and its own): the same identity, at the
        // same confirmations, each vouched for by its own witness.
        let both = options(&headers, vec![witness_a, witness_b]);
        let handle = Subject::parse("@erin_two")?;
        let (from_a, _) = within(
            "verify A's bundle",
            cli::verify_subject(&client_a, &handle, &both),
        )
        .await??;
        let (from_b, _) = within(
            "verify B's bundle",
            cli::verify_subject(&client_b, &handle, &both),
        )
        .await??;
        for v in [&from_a, &from_b] {
            assert_eq!(v.x_uid, ERIN_UID);
            assert_eq!(v.handle, "erin_two");
            assert_eq!(v.key, Some(erin.keys.public_key()));
            assert_eq!(v.status, Status::Bound);
            assert_eq!(v.confirmations, CONFIRMATIONS);
        }
        assert_eq!(from_a.witnesses, vec![witness_a]);
        assert_eq!(from_b.witnesses, vec![witness_b]);
        assert_ne!(
            from_a.anchor_txid, from_b.anchor_txid,
            "anchored separately"
        );

        // Trusting only B's witness, A's bundle is refused: B does not take
        // A's word for the X post, only the chain's for the anchor.
        let only_b = options(&headers, vec![witness_b]);
        let err = within(
            "verify A's bundle trusting only B",
            cli::verify_subject(&client_a, &handle, &only_b),
        )
        .await?
        .unwrap_err();
        assert!(
            err.chain().any(|c| matches!(
                c.downcast_ref::<BundleError>(),
                Some(BundleError::UntrustedWitness { .. })
            )),
            "{err:#}"
        );

        // What A proves is what A published for mirrors: the bundle's
        // operation and attestation are events on A's relay, signed by Erin
        // and by A's witness.
        let bundle_a = within("A's bundle", cli::fetch_bundle(&client_a, &handle)).await??;
        let events = published(&a, 3).await?;
        assert!(
            bundle_a.ops.iter().all(|op| events.contains(op)),
            "ops published"
        );
        assert!(
            bundle_a.attestations.iter().all(|att| events.contains(att)),
            "attestations published"
        );
        assert!(bundle_a.ops.contains(&bind_a));
        assert!(bundle_a
            .attestations
            .iter()
            .all(|att| att.pubkey == witness_a));
        assert!(events
            .iter()
            .any(|e| e.kind.as_u16() == 3472 && e.pubkey == witness_a));
        // B published its own, separate record of the same binding.
        let events_b = published(&b, 3).await?;
        assert!(events_b.contains(&bind_b) && !events_b.contains(&bind_a));

        a.finish().await?;
        b.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}
