//! Mirrored identity logs: node C follows node A's witness on A's relay,
//! verifies A's epochs against its own Bitcoin view, serves @alice with A's
//! attestation (a bundle that verifies offline against A's witness key),
//! refuses forged events, and stops on a split view (a second header signed
//! for an anchored epoch), keeping both headers as evidence across restarts.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bitcoin::Network;
use cairn_e2e::{within, WsClient};
use cairn_identity::bundle::BundleError;
use cairn_identity::epoch::EpochHeader;
use cairn_identity::service::EpochClose;
use cairn_node::cli::{self, ChainSource, HeaderRange, NodeClient, Subject, VerifyOptions};
use cairn_node::settings::identity::MirrorSettings;
use cairn_testchain::TestChain;
use nostr::nips::nip19::ToBech32;
use nostr::{Keys, PublicKey};
use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_x::FakeX;
use crate::support::*;

const ALICE_UID: u64 = 1_500_000_000_000_000_001;
const BOB_UID: u64 = 1_500_000_000_000_000_002;
/// Longest wait for the mirror to catch up (loaded 2-core machine).
const MIRROR_WAIT: Duration = Duration::from_secs(40);

/// Polls `path` on `node` until `done` holds for its answer, or fails at the deadline.
async fn poll(
    node: &IdNode,
    path: &str,
    what: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + MIRROR_WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok((status, body)) = node.get(path).await {
            if done(status, &body) {
                return Ok(body);
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("timed out waiting for {what}; last answer to {path}: {last:?}")
}

fn mirror_status(body: &Value) -> &Value {
    &body["mirrors"][0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serves_verified_bindings_and_stops_on_a_split_view() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let a = IdNode::start(&chain, &x, false).await?;
        a.fund(&chain, 200_000).await?;
        let witness_a = a.service().witness_public_key();

        // Alice and Bob bind on A; the epoch is anchored and confirmed.
        let alice = User::new(ALICE_UID, "alice_m");
        let bob = User::new(BOB_UID, "bob_m");
        let bind_alice = bind(&a, &x, &alice, 1).await?;
        bind(&a, &x, &bob, 2).await?;
        match a.close_epoch().await? {
            EpochClose::Closed {
                epoch: 0,
                txid: Some(_),
                ..
            } => {}
            other => bail!("expected epoch 0 anchored at close, got {other:?}"),
        }
        mine(&chain, CONFIRMATIONS).await?;
        a.sync().await?;

        // C runs no witness of its own; it mirrors A on A's relay.
        let a_relay = a.node().ws_url();
        let c = IdNode::start_tuned(&chain, &x, |s| {
            s.identity.enabled = false;
            s.identity.mirror_recheck_secs = 1;
            s.identity.mirror = vec![MirrorSettings {
                relay: a_relay.clone(),
                witness: witness_a.to_bech32().unwrap(),
                recovery_delay_blocks: 5,
            }];
        })
        .await?;

        // C serves @alice from A's log, naming A, once epoch 0 is verified.
        let view = poll(&c, "/identity/v1/handles/alice_m", "alice on C", |s, b| {
            s == StatusCode::OK && !b["bundle"].is_null()
        })
        .await?;
        assert_eq!(view["witness"], witness_a.to_bech32()?);
        assert_eq!(view["npub"], alice.npub());
        assert_eq!(view["head"], bind_alice.id.to_hex());
        assert_eq!(view["status"], "final", "{view}");
        let attestation_author = view["bundle"]["attestations"][0]["pubkey"]
            .as_str()
            .context("attestation")?;
        assert_eq!(attestation_author, witness_a.to_hex());
        // The witness-prefixed route answers the same; another witness has nothing.
        let (status, by_key) = c
            .get(&format!(
                "/identity/v1/mirrors/{}/keys/{}",
                witness_a.to_bech32()?,
                bob.keys.public_key().to_hex()
            ))
            .await?;
        assert_eq!(status, StatusCode::OK, "{by_key}");
        assert_eq!(by_key["handle"], "bob_m");
        let stranger = Keys::generate().public_key().to_bech32()?;
        let (status, _) = c
            .get(&format!("/identity/v1/mirrors/{stranger}/handles/alice_m"))
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // `cairn verify` pointed at the mirror: the bundle verifies offline
        // (headers file from the verifier's own node) against A's witness key.
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
        let options = |witnesses: Vec<PublicKey>| VerifyOptions {
            chain: ChainSource::HeadersFile {
                path: headers.clone(),
                checkpoint: None,
            },
            network: Network::Regtest,
            min_confirmations: CONFIRMATIONS,
            trusted_witnesses: witnesses,
        };
        let client_c = NodeClient::new(&c.base)?;
        let handle = Subject::parse("@alice_m")?;
        let (verified, _) = within(
            "verify on the mirror",
            cli::verify_subject(&client_c, &handle, &options(vec![witness_a])),
        )
        .await??;
        assert_eq!(verified.key, Some(alice.keys.public_key()));
        assert_eq!(verified.witnesses, vec![witness_a]);
        // Trusting another witness, the mirror's bundle is refused: it is A's word.
        let err = within(
            "verify trusting another witness",
            cli::verify_subject(
                &client_c,
                &handle,
                &options(vec![Keys::generate().public_key()]),
            ),
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

        // A forged epoch header (signed by another key, claiming epoch 1) is
        // refused by the mirror, which keeps following.
        let (_, epoch0) = a.get("/identity/v1/epochs/0").await?;
        let header0 =
            EpochHeader::from_bytes(&hex::decode(epoch0["header"].as_str().context("header")?)?)?;
        let mallory = Keys::generate();
        let forged = EpochHeader {
            epoch: 1,
            prev_header_hash: header0.hash(),
            log_size: header0.log_size + 2,
            ..header0
        }
        .to_event_builder(None)
        .sign_with_keys(&mallory)?;
        let mut ws = WsClient::connect(&a_relay).await?;
        ws.publish(&forged)
            .await?
            .assert_accepted("forged header on A's relay");
        let status = poll(
            &c,
            "/identity/v1/mirrors",
            "the forged header refused",
            |_, b| mirror_status(b)["rejected_events"].as_u64() >= Some(1),
        )
        .await?;
        let m = mirror_status(&status);
        assert_eq!(m["state"], "following", "{m}");
        assert_eq!(m["verified_epochs"], 1, "{m}");
        assert!(
            m["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("not by the mirrored witness"),
            "{m}"
        );

        // A split view: a second header for the anchored epoch 0, signed with
        // A's own witness key (read from A's data directory).
        let secret = std::fs::read_to_string(a.dir.path().join("witness.key"))
            .context("A's witness key file")?;
        let a_keys = Keys::parse(secret.trim())?;
        assert_eq!(a_keys.public_key(), witness_a);
        let conflicting = EpochHeader {
            log_size: header0.log_size + 1,
            ..header0
        }
        .to_event_builder(None)
        .sign_with_keys(&a_keys)?;
        ws.publish(&conflicting)
            .await?
            .assert_accepted("conflicting header on A's relay");
        ws.close().await;
        let status = poll(&c, "/identity/v1/mirrors", "the split view", |_, b| {
            mirror_status(b)["state"] == "stopped"
        })
        .await?;
        let m = mirror_status(&status);
        let evidence = &m["evidence"];
        assert_eq!(evidence["epoch"], 0, "{m}");
        assert_eq!(evidence["second"]["id"], conflicting.id.to_hex(), "{m}");
        assert_eq!(evidence["first"]["pubkey"], witness_a.to_hex(), "{m}");
        let first_header = evidence["first"]["tags"]
            .as_array()
            .and_then(|tags| tags.iter().find(|t| t[0] == "header"))
            .and_then(|t| t[1].as_str())
            .context("first header tag")?;
        assert_eq!(first_header, hex::encode(header0.to_bytes()));
        assert!(
            m["stop_reason"]
                .as_str()
                .unwrap_or("")
                .contains("split view"),
            "{m}"
        );

        // `/ready` reports the stop too, and stays ready: a stopped mirror
        // is news for the operator, not a reason to take C out of service.
        let (code, ready) = c.get("/ready").await?;
        assert_eq!(code, StatusCode::OK, "{ready}");
        assert_eq!(ready["ready"], true, "{ready}");
        assert_eq!(ready["mirrors"][0]["state"], "stopped", "{ready}");
        assert_eq!(
            ready["mirrors"][0]["evidence"]["second"]["id"],
            conflicting.id.to_hex(),
            "{ready}"
        );

        // The evidence is on disk, and a restarted C stays stopped.
        let stopped = c
            .dir
            .path()
            .join("mirror")
            .join(witness_a.to_hex())
            .join("stopped.json");
        let saved: Value = serde_json::from_slice(
            &std::fs::read(&stopped).with_context(|| format!("{}", stopped.display()))?,
        )?;
        assert_eq!(saved["split_view"]["second"]["id"], conflicting.id.to_hex());
        assert_eq!(saved["split_view"]["first"]["id"], evidence["first"]["id"]);

        // After the stop nothing new is taken: Carol's later binding on A
        // never shows up on C.
        let carol = User::new(ALICE_UID + 7, "carol_m");
        bind(&a, &x, &carol, 3).await?;
        ensure!(
            matches!(a.close_epoch().await?, EpochClose::Closed { epoch: 1, .. }),
            "epoch 1 closed"
        );
        mine(&chain, 1).await?;
        a.sync().await?;

        let mut c = c;
        c.restart().await?;
        // It re-checks the epoch it holds against the chain, then stops again.
        let status = poll(&c, "/identity/v1/mirrors", "C after restart", |s, b| {
            s == StatusCode::OK && mirror_status(b)["verified_epochs"] == 1
        })
        .await?;
        let m = mirror_status(&status);
        assert_eq!(m["state"], "stopped", "{m}");
        assert_eq!(m["evidence"]["second"]["id"], conflicting.id.to_hex());
        assert_eq!(m["verified_epochs"], 1, "{m}");
        let (status, _) = c.get("/identity/v1/handles/carol_m").await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // What was verified before the split view is still served (its
        // anchor is on chain; the conflicting header never can be).
        let (status, _) = c.get("/identity/v1/handles/alice_m").await?;
        assert_eq!(status, StatusCode::OK);

        c.finish().await?;
        a.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}
