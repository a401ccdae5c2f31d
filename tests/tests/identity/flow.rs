//! The identity flow over HTTP: bind → epoch → anchor → confirmations →
//! bundle; rotation, revocation, moved handles, replays and refusals;
//! restarts; an empty wallet that queues epochs until it is funded.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bitcoin::Txid;
use cairn_e2e::{Backend, WsClient};
use cairn_identity::binding::{revoke_op, rotate_op};
use cairn_identity::bundle::{
    verify_absence, AbsenceBundle, BundleError, ProofBundle, RpcChainView, VerifiedAbsence,
    VerifyPolicy,
};
use cairn_identity::epoch::EpochHeader;
use cairn_identity::service::EpochClose;
use cairn_testchain::TestChain;
use nostr::{Keys, ToBech32};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_x::FakeX;
use crate::support::*;

const ALICE_UID: u64 = 1_047_412_980_948_713_472;
const BOB_UID: u64 = 250_188_760;
const CAROL_UID: u64 = 783_214;

async fn lookup_handle(node: &IdNode, handle: &str) -> Result<Value> {
    let (status, v) = node.get(&format!("/identity/v1/handles/{handle}")).await?;
    ensure!(status == StatusCode::OK, "lookup {handle}: {status} {v}");
    Ok(v)
}

async fn lookup_key(node: &IdNode, npub: &str) -> Result<Value> {
    let (status, v) = node.get(&format!("/identity/v1/keys/{npub}")).await?;
    ensure!(status == StatusCode::OK, "lookup {npub}: {status} {v}");
    Ok(v)
}

async fn nip05(node: &IdNode, name: &str) -> Result<Value> {
    Ok(nip05_body(node, name).await?["names"].clone())
}

/// The whole NIP-05 answer: `names` and the `states` they reflect.
async fn nip05_body(node: &IdNode, name: &str) -> Result<Value> {
    let resp = reqwest::get(format!("{}/.well-known/nostr.json?name={name}", node.base)).await?;
    ensure!(resp.status() == StatusCode::OK);
    let cors = resp
        .headers()
        .get_all("access-control-allow-origin")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    ensure!(cors == ["*"], "NIP-05 needs CORS *, got {cors:?}");
    Ok(resp.json::<Value>().await?)
}

fn closed_with_txid(close: &EpochClose, epoch: u64) -> Result<()> {
    match close {
        EpochClose::Closed {
            epoch: e,
            txid: Some(_),
            queued: None,
        } if *e == epoch => Ok(()),
        other => anyhow::bail!("expected epoch {epoch} closed and anchored, got {other:?}"),
    }
}

async fn bind_anchor_verify(postgres: bool) -> Result<()> {
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    let node = IdNode::start(&chain, &x, postgres).await?;
    node.fund(&chain, 200_000).await?;
    let alice = User::new(ALICE_UID, "alice_cairn");

    // Nothing yet.
    let (status, err) = node.get("/identity/v1/handles/alice_cairn").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"], "not_found");
    let (status, _) = node.get("/identity/v1/epochs/latest").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let bind_event = bind(&node, &x, &alice, 1).await?;
    let v = lookup_handle(&node, "@Alice_Cairn").await?;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["binding"], "bound");
    assert_eq!(v["x_uid"], ALICE_UID.to_string());
    assert_eq!(v["pubkey"], alice.keys.public_key().to_hex());
    assert!(v["bundle"].is_null(), "no bundle before anchoring");
    assert_eq!(v["reflects"], "pending", "{v}");
    // By default NIP-05 serves only anchored bindings.
    assert_eq!(nip05(&node, "alice_cairn").await?, json!({}));
    assert_eq!(nip05(&node, "nobody").await?, json!({}));

    // An empty epoch is skipped; this one closes and is anchored at once.
    let close = node.close_epoch().await?;
    closed_with_txid(&close, 0)?;
    assert_eq!(node.close_epoch().await?, EpochClose::Skipped);
    let (status, epoch) = node.get("/identity/v1/epochs/latest").await?;
    assert_eq!(status, StatusCode::OK, "{epoch}");
    assert_eq!(epoch["epoch"], 0);
    assert_eq!(epoch["log_size"], 2, "attestation + bind");
    assert_eq!(epoch["anchor"]["state"], "unconfirmed");
    let (_, same) = node.get("/identity/v1/epochs/0").await?;
    assert_eq!(same["header_hash"], epoch["header_hash"]);

    mine(&chain, 1).await?;
    node.sync().await?;
    let v = lookup_handle(&node, "alice_cairn").await?;
    assert_eq!(v["status"], "anchored", "{v}");
    assert_eq!(v["reflects"], "anchored", "{v}");
    assert_eq!(v["confirmations"], 1);
    let body = nip05_body(&node, "alice_cairn").await?;
    assert_eq!(
        body["names"]["alice_cairn"],
        alice.keys.public_key().to_hex()
    );
    assert_eq!(body["states"]["alice_cairn"], "anchored", "{body}");
    // The bundle exists from the first confirmation but a verifier asking
    // for more refuses it.
    let early: ProofBundle = serde_json::from_value(v["bundle"].clone())?;
    let err = verify_parsed(&chain, &node, early).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<BundleError>(),
            Some(BundleError::InsufficientConfirmations { .. })
        ),
        "{err:#}"
    );

    mine(&chain, CONFIRMATIONS - 1).await?;
    node.sync().await?;
    let v = lookup_key(&node, &alice.npub()).await?;
    assert_eq!(v["status"], "final", "{v}");
    let verified = verify_bundle(&chain, &node, &v).await?;
    assert_eq!(verified.x_uid, ALICE_UID);
    assert_eq!(verified.handle, "alice_cairn");
    assert_eq!(verified.key, Some(alice.keys.public_key()));
    assert_eq!(verified.head, bind_event.id);
    assert_eq!(verified.confirmations, CONFIRMATIONS);
    assert_eq!(v["anchor_txid"], verified.anchor_txid.to_string());

    // One changed byte in the record: the bundle no longer verifies.
    let mut bad: ProofBundle = serde_json::from_value(v["bundle"].clone())?;
    let last = bad.record.len() - 1;
    bad.record[last] ^= 1;
    assert!(verify_parsed(&chain, &node, bad).await.is_err());

    // The binding, the attestation and the epoch header are on the relay.
    let witness = node.service().witness_public_key();
    let mut events = Vec::new();
    for _ in 0..50 {
        let mut ws = WsClient::connect(&node.node().ws_url()).await?;
        events = ws
            .query_once(&[json!({"kinds": [3470, 3471, 3472]})])
            .await?;
        ws.close().await;
        if events.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        events.iter().any(|e| e.id == bind_event.id),
        "binding published"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind.as_u16() == 3471 && e.pubkey == witness),
        "attestation published"
    );
    let epoch_events: Vec<_> = events.iter().filter(|e| e.kind.as_u16() == 3472).collect();
    assert!(
        epoch_events.iter().any(|e| e.tags.iter().any(|t| t
            .as_slice()
            .first()
            .map(String::as_str)
            == Some("anchor"))),
        "epoch header with its anchor published: {epoch_events:?}"
    );

    node.finish().await?;
    chain.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_anchor_and_verify_offline_sqlite() -> Result<()> {
    case(bind_anchor_verify(false)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_anchor_and_verify_offline_postgres() -> Result<()> {
    if Backend::postgres_from_env().is_none() {
        cairn_e2e::skip_postgres("identity bind_anchor_and_verify");
        return Ok(());
    }
    case(bind_anchor_verify(true)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_revocation_moved_and_refusals() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        // This test follows NIP-05 through pending operations: the operator
        // opted in (the default serves anchored bindings only, tested below).
        let node = IdNode::start_tuned(&chain, &x, |s| {
            s.identity.nip05_serves_pending = true;
        })
        .await?;
        node.fund(&chain, 200_000).await?;
        let alice = User::new(ALICE_UID, "alice_cairn");
        let bind_event = bind(&node, &x, &alice, 1).await?;

        // Replaying the accepted bind is refused (old seq), as is any error
        // shape: JSON with a code and a message.
        let (status, err) = submit(&node, &bind_event, None).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");
        assert_eq!(err["error"], "refused");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));

        // Malformed requests.
        let (status, err) = node
            .post("/identity/v1/bindings", &json!({"event": 1}))
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"], "invalid_request");
        let (status, err) = node
            .post("/identity/v1/challenges", &json!({"npub": "npub1nope"}))
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(err["error"], "invalid_key");
        let mut forged = serde_json::to_value(&bind_event)?;
        forged["content"] = json!("changed");
        let (status, err) = node
            .post("/identity/v1/bindings", &json!({"event": forged}))
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"], "invalid_event");

        // A challenge issued for another key, a made-up challenge, a deleted post,
        // and X down.
        let carol = User::new(777, "carol");
        let (nonce, post) = challenge_and_post(&node, &x, &carol, 2).await?;
        let mallory = User {
            keys: Keys::generate(),
            x_uid: 777,
            handle: "carol".into(),
        };
        let stolen = proof_event(&mallory, false, 0, None, &nonce, &post);
        let (status, err) = submit(&node, &stolen, None).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"], "challenge_key_mismatch");
        let made_up = proof_event(
            &carol,
            false,
            0,
            None,
            "abcdefabcdefabcdefabcdefabcdefab",
            &post,
        );
        let (status, err) = submit(&node, &made_up, None).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"], "unknown_challenge");
        x.delete(post.id);
        let event = proof_event(&carol, false, 0, None, &nonce, &post);
        let (status, err) = submit(&node, &event, Some(post.id)).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"], "proof_rejected");
        x.publish(&post);
        x.set_outage(Some(503));
        let (status, err) = submit(&node, &event, Some(post.id)).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
        assert_eq!(err["error"], "x_unavailable");
        x.set_outage(None);
        // The failed attempts did not burn the challenge.
        let (status, ok) = submit(&node, &event, Some(post.id)).await?;
        assert_eq!(status, StatusCode::CREATED, "{ok}");
        let (status, err) = submit(&node, &event, Some(post.id)).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");

        closed_with_txid(&node.close_epoch().await?, 0)?;

        // Rotation, signed by the current and the new key.
        let alice2 = Keys::generate();
        let rotate = rotate_op(
            &alice.keys.public_key(),
            &alice2,
            ALICE_UID,
            1,
            &bind_event.id,
        )
        .sign_with_keys(&alice.keys)?;
        let (status, r) = submit(&node, &rotate, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        assert_eq!(r["op"], "rotate");
        assert_eq!(r["epoch"], 1);
        // One operation per identity per epoch.
        let revoke = revoke_op(ALICE_UID, 2, &rotate.id).sign_with_keys(&alice2)?;
        let (status, err) = submit(&node, &revoke, None).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");
        assert!(err["message"].as_str().unwrap().contains("epoch"), "{err}");

        let new_npub = alice2.public_key().to_bech32()?;
        let v = lookup_key(&node, &new_npub).await?;
        assert_eq!(
            (v["status"].as_str(), v["binding"].as_str()),
            (Some("pending"), Some("bound"))
        );
        let v = lookup_key(&node, &alice.npub()).await?;
        assert_eq!(
            (v["status"].as_str(), v["binding"].as_str()),
            (Some("revoked"), Some("rotated"))
        );
        assert_eq!(v["npub"], new_npub);
        let body = nip05_body(&node, "alice_cairn").await?;
        assert_eq!(body["names"]["alice_cairn"], alice2.public_key().to_hex());
        assert_eq!(body["states"]["alice_cairn"], "pending", "{body}");

        closed_with_txid(&node.close_epoch().await?, 1)?;
        let (_, e1) = node.get("/identity/v1/epochs/1").await?;
        let (_, e0) = node.get("/identity/v1/epochs/0").await?;
        assert_eq!(
            e1["prev_header_hash"], e0["header_hash"],
            "epochs chain by header hash"
        );

        // Revocation by the current key.
        let (status, r) = submit(&node, &revoke, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["status"], "revoked");
        assert!(v["pubkey"].is_null());
        assert_eq!(nip05(&node, "alice_cairn").await?, json!({}));

        // The handle is recycled by another X account: alice's record is "moved".
        let bob = User::new(BOB_UID, "alice_cairn");
        bind(&node, &x, &bob, 3).await?;
        let v = lookup_key(&node, &new_npub).await?;
        assert_eq!(v["status"], "moved", "{v}");
        assert_eq!(v["moved_to"], BOB_UID.to_string());
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["x_uid"], BOB_UID.to_string());
        assert_eq!(
            nip05(&node, "alice_cairn").await?["alice_cairn"],
            bob.keys.public_key().to_hex()
        );

        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_log_epochs_and_bundles() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let mut node = IdNode::start(&chain, &x, false).await?;
        node.fund(&chain, 200_000).await?;
        let alice = User::new(ALICE_UID, "alice_cairn");
        bind(&node, &x, &alice, 1).await?;
        closed_with_txid(&node.close_epoch().await?, 0)?;
        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;
        let (_, before) = node.get("/identity/v1/status").await?;
        let (_, epoch_before) = node.get("/identity/v1/epochs/0").await?;
        let witness = node.service().witness_public_key();

        node.restart().await?;
        node.sync().await?;
        assert_eq!(
            node.service().witness_public_key(),
            witness,
            "same witness key"
        );
        let (_, after) = node.get("/identity/v1/status").await?;
        assert_eq!(after["log_size"], before["log_size"]);
        assert_eq!(after["open_epoch"], 1);
        let (_, epoch_after) = node.get("/identity/v1/epochs/0").await?;
        assert_eq!(epoch_after["header"], epoch_before["header"]);
        assert_eq!(
            epoch_after["anchor"]["txid"],
            epoch_before["anchor"]["txid"]
        );
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["status"], "final");
        verify_bundle(&chain, &node, &v).await?;

        // The log continues where it stopped.
        let bob = User::new(BOB_UID, "bob");
        let (nonce, post) = challenge_and_post(&node, &x, &bob, 2).await?;
        let event = proof_event(&bob, false, 0, None, &nonce, &post);
        let (status, r) = submit(&node, &event, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        assert_eq!(r["log_index"], 3, "after attestation #2");
        closed_with_txid(&node.close_epoch().await?, 1)?;

        // A database edited behind the node's back is refused at start.
        node.stop().await?;
        let db = node.dir.path().join(cairn_node::settings::SQLITE_FILE);
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts).await?;
        sqlx::query("DELETE FROM identity_operations WHERE log_index = 1")
            .execute(&mut conn)
            .await?;
        sqlx::Connection::close(conn).await?;
        let settings = node.settings.clone();
        let err = cairn_node::start(settings).await.unwrap_err();
        assert!(format!("{err:#}").contains("inconsistent"), "{err:#}");
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_wallet_queues_epochs_until_funded() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start(&chain, &x, false).await?;
        node.sync().await?;
        let alice = User::new(ALICE_UID, "alice_cairn");
        bind(&node, &x, &alice, 1).await?;
        match node.close_epoch().await? {
            EpochClose::Closed {
                epoch: 0,
                txid: None,
                queued: Some(reason),
            } => assert!(reason.contains("funds"), "{reason}"),
            other => anyhow::bail!("expected a queued epoch, got {other:?}"),
        }
        let (_, status) = node.get("/identity/v1/status").await?;
        assert_eq!(
            status["anchoring"]["health"], "waiting_for_funds",
            "{status}"
        );
        assert_eq!(status["anchoring"]["queued_epochs"], json!([0]));
        assert!(status["anchoring"]["message"].as_str().is_some());

        // The next epoch still closes on schedule (it links to epoch 0 by
        // header hash, which needs no transaction) and queues behind it.
        let bob = User::new(BOB_UID, "bob");
        bind(&node, &x, &bob, 2).await?;
        match node.close_epoch().await? {
            EpochClose::Closed {
                epoch: 1,
                txid: None,
                queued: Some(_),
            } => {}
            other => anyhow::bail!("expected epoch 1 queued, got {other:?}"),
        }
        let (_, status) = node.get("/identity/v1/status").await?;
        assert_eq!(status["anchoring"]["queued_epochs"], json!([0, 1]));
        assert_eq!(status["open_epoch"], 2, "{status}");
        assert_eq!(
            lookup_handle(&node, "alice_cairn").await?["status"],
            "pending"
        );

        // Funding: both queued epochs are anchored, in order, on the next sync.
        node.fund(&chain, 200_000).await?;
        let (_, status) = node.get("/identity/v1/status").await?;
        assert_eq!(status["anchoring"]["queued_epochs"], json!([]), "{status}");
        assert_eq!(status["anchoring"]["health"], "ok", "{status}");
        let (_, e0) = node.get("/identity/v1/epochs/0").await?;
        let (_, e1) = node.get("/identity/v1/epochs/1").await?;
        assert_eq!(e1["prev_header_hash"], e0["header_hash"]);
        assert!(e0["anchor"]["txid"].is_string() && e1["anchor"]["txid"].is_string());
        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;
        for handle in ["alice_cairn", "bob"] {
            let v = lookup_handle(&node, handle).await?;
            assert_eq!(v["status"], "final", "{handle}: {v}");
            let verified = verify_bundle(&chain, &node, &v).await.context(handle)?;
            assert_eq!(verified.handle, handle);
        }
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_off_by_default_and_the_relay_works() -> Result<()> {
    case(async {
        let node = cairn_e2e::TestNode::start(&Backend::Sqlite).await?;
        for path in ["/identity/v1/status", "/.well-known/nostr.json?name=a"] {
            let resp = reqwest::get(format!("{}{path}", node.http_url())).await?;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let mut ws = node.connect().await?;
        let event =
            nostr::EventBuilder::text_note("still a relay").sign_with_keys(&Keys::generate())?;
        ws.publish(&event).await?.assert_accepted("text note");
        ws.close().await;
        node.finish().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_veto_then_without() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let mut node = IdNode::start(&chain, &x, false).await?;
        node.fund(&chain, 200_000).await?;
        let alice = User::new(ALICE_UID, "alice_cairn");
        let bind_event = bind(&node, &x, &alice, 1).await?;
        closed_with_txid(&node.close_epoch().await?, 0)?;

        // Someone with the X account (but not the key) starts a recovery.
        let thief = User {
            keys: Keys::generate(),
            x_uid: ALICE_UID,
            handle: "alice_cairn".into(),
        };
        let (nonce, post) = challenge_and_post(&node, &x, &thief, 2).await?;
        let recover = proof_event(&thief, true, 1, Some(&bind_event.id), &nonce, &post);
        let (status, r) = submit(&node, &recover, Some(post.id)).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        assert_eq!(r["op"], "recover");
        assert!(r["attestation"].is_object(), "a recovery is attested: {r}");
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["binding"], "recovery_pending");
        assert_eq!(v["pubkey"], alice.keys.public_key().to_hex(), "not yet");
        assert!(v["recovery_effective_height"].as_u64().is_some());
        closed_with_txid(&node.close_epoch().await?, 1)?;

        // The key holder vetoes within the delay.
        let veto = cairn_identity::binding::veto_op(ALICE_UID, 2, &recover.id, &recover.id)
            .sign_with_keys(&alice.keys)?;
        let (status, r) = submit(&node, &veto, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["binding"], "bound");
        assert_eq!(v["pubkey"], alice.keys.public_key().to_hex());
        closed_with_txid(&node.close_epoch().await?, 2)?;

        // A recovery nobody vetoes completes once the delay has passed.
        let heir = User {
            keys: Keys::generate(),
            x_uid: ALICE_UID,
            handle: "alice_cairn".into(),
        };
        let (nonce, post) = challenge_and_post(&node, &x, &heir, 3).await?;
        let recover = proof_event(&heir, true, 3, Some(&veto.id), &nonce, &post);
        let (status, r) = submit(&node, &recover, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        closed_with_txid(&node.close_epoch().await?, 3)?;
        let v = lookup_handle(&node, "alice_cairn").await?;
        let effective = v["recovery_effective_height"].as_u64().context("pending")?;
        mine(&chain, 2).await?;
        node.sync().await?;
        assert_eq!(
            lookup_handle(&node, "alice_cairn").await?["binding"],
            "recovery_pending"
        );
        let tip = chain.tip().await?.height as u64;
        mine(&chain, (effective - tip) as u32).await?;
        node.sync().await?;
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["binding"], "bound", "{v}");
        assert_eq!(v["pubkey"], heir.keys.public_key().to_hex());
        assert_eq!(
            nip05(&node, "alice_cairn").await?["alice_cairn"],
            heir.keys.public_key().to_hex()
        );
        // The epoch holding the recovery is deep enough now: its bundle
        // shows the recovery, which the verifier sees has completed.
        let verified = verify_bundle(&chain, &node, &v).await?;
        assert_eq!(verified.head, recover.id);

        // The new key can act, and a restart replays to the same headers.
        let revoke = revoke_op(ALICE_UID, 4, &recover.id).sign_with_keys(&heir.keys)?;
        let (status, r) = submit(&node, &revoke, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        closed_with_txid(&node.close_epoch().await?, 4)?;
        node.restart().await?;
        node.sync().await?;
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["status"], "revoked", "{v}");
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_job_closes_anchors_and_confirms() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start_tuned(&chain, &x, |s| {
            s.identity.epoch_interval_secs = 1;
            s.identity.anchor_sync_interval_secs = 1;
        })
        .await?;
        node.fund(&chain, 200_000).await?;
        let alice = User::new(ALICE_UID, "alice_cairn");
        bind(&node, &x, &alice, 1).await?;
        let mut anchored = false;
        for _ in 0..100 {
            let (status, e) = node.get("/identity/v1/epochs/latest").await?;
            if status == StatusCode::OK && e["anchor"]["txid"].is_string() {
                anchored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(anchored, "the epoch job closed and anchored epoch 0");
        mine(&chain, CONFIRMATIONS).await?;
        let mut last = Value::Null;
        for _ in 0..100 {
            last = lookup_handle(&node, "alice_cairn").await?;
            if last["status"] == "final" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            last["status"], "final",
            "the sync job saw the confirmations: {last}"
        );
        verify_bundle(&chain, &node, &last).await?;
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_drops_the_anchor_then_it_confirms_and_verifies_again() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start(&chain, &x, false).await?;
        node.fund(&chain, 200_000).await?;
        let alice = User::new(ALICE_UID, "alice_cairn");
        bind(&node, &x, &alice, 1).await?;
        closed_with_txid(&node.close_epoch().await?, 0)?;
        mine(&chain, 1).await?;
        node.sync().await?;
        let before = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(before["status"], "anchored");
        let first_block = before["bundle"]["block_height"].clone();
        assert!(first_block.is_u64(), "{before}");

        // The anchor's block is replaced by empty ones: back to pending, no bundle.
        chain.reorg(1).await?;
        node.sync().await?;
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["status"], "pending", "{v}");
        assert!(v["bundle"].is_null());

        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(v["status"], "final", "{v}");
        assert_ne!(
            v["bundle"]["block_height"], first_block,
            "a block of the new chain"
        );
        verify_bundle(&chain, &node, &v).await?;
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

/// Item of the identity issue: an epoch header must never name a transaction
/// that is not in the chain. Epoch 0's anchor is fee-bumped (new txid) after
/// epoch 1 was anchored on top of it (so epoch 1's anchor is rebuilt too),
/// then epoch 2 closes. Headers link by header hash, so every link still
/// holds, the anchors still spend each other's change, and every bundle
/// verifies against the replacement transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fee_bumped_anchors_keep_epochs_linked_and_bundles_valid() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start_tuned(&chain, &x, |s| s.identity.bump_after_blocks = 2).await?;
        node.fund(&chain, 200_000).await?;
        let users = [
            User::new(ALICE_UID, "alice_cairn"),
            User::new(BOB_UID, "bob"),
            User::new(CAROL_UID, "carol"),
        ];
        let anchor_txid = |e: &Value| -> Result<Txid> {
            Ok(e["anchor"]["txid"]
                .as_str()
                .context("anchor txid")?
                .parse()?)
        };
        bind(&node, &x, &users[0], 1).await?;
        closed_with_txid(&node.close_epoch().await?, 0)?;
        bind(&node, &x, &users[1], 2).await?;
        closed_with_txid(&node.close_epoch().await?, 1)?;
        let first = [
            anchor_txid(&node.get("/identity/v1/epochs/0").await?.1)?,
            anchor_txid(&node.get("/identity/v1/epochs/1").await?.1)?,
        ];

        // Two blocks without them: epoch 0's anchor is replaced by a fee
        // bump, and epoch 1's is rebuilt on the replacement's change.
        mine_empty(&chain, 2).await?;
        node.sync().await?;
        let bumped = [
            anchor_txid(&node.get("/identity/v1/epochs/0").await?.1)?,
            anchor_txid(&node.get("/identity/v1/epochs/1").await?.1)?,
        ];
        assert_ne!(bumped[0], first[0], "epoch 0 was fee-bumped");
        assert_ne!(bumped[1], first[1], "epoch 1 was rebuilt");

        bind(&node, &x, &users[2], 3).await?;
        closed_with_txid(&node.close_epoch().await?, 2)?;
        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;

        let mut headers = Vec::new();
        let mut txids = Vec::new();
        for n in 0..3 {
            let (status, e) = node.get(&format!("/identity/v1/epochs/{n}")).await?;
            assert_eq!(status, StatusCode::OK, "{e}");
            let bytes = hex::decode(e["header"].as_str().context("header")?)?;
            let header = EpochHeader::from_bytes(&bytes)?;
            assert_eq!(
                e["prev_header_hash"].as_str(),
                Some(hex::encode(header.prev_header_hash).as_str())
            );
            assert_eq!(e["anchor"]["state"], "confirmed", "{e}");
            headers.push(header);
            txids.push(anchor_txid(&e)?);
        }
        assert_eq!(&txids[..2], &bumped[..], "the replacements confirmed");
        assert_eq!(headers[0].prev_header_hash, [0; 32]);
        headers[1].verify_successor_of(&headers[0])?;
        headers[2].verify_successor_of(&headers[1])?;
        // On chain, each anchor spends the one before it (its change output).
        for n in 1..3 {
            let raw = chain
                .rpc(
                    "getrawtransaction",
                    vec![json!(txids[n].to_string()), json!(false)],
                )
                .await?;
            let tx: bitcoin::Transaction =
                bitcoin::consensus::encode::deserialize_hex(raw.as_str().context("hex")?)?;
            assert!(
                tx.input
                    .iter()
                    .any(|i| i.previous_output.txid == txids[n - 1]),
                "anchor {n} spends anchor {}",
                n - 1
            );
        }

        for (n, user) in users.iter().enumerate() {
            let v = lookup_handle(&node, &user.handle).await?;
            assert_eq!(v["status"], "final", "{v}");
            let verified = verify_bundle(&chain, &node, &v).await?;
            assert_eq!(verified.epoch, headers[n]);
            assert_eq!(verified.anchor_txid, txids[n]);
        }
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

/// Verifies an absence bundle against the chain's own RPC.
async fn verify_absence_rpc(
    chain: &TestChain,
    bundle: AbsenceBundle,
) -> Result<VerifiedAbsence, BundleError> {
    let (url, user, pass) = (
        chain.rpc_url().to_owned(),
        chain.rpc_user().to_owned(),
        chain.rpc_password().to_owned(),
    );
    let mut policy = VerifyPolicy::new(bitcoin::Network::Regtest);
    policy.min_confirmations = CONFIRMATIONS;
    tokio::task::spawn_blocking(move || {
        let view =
            RpcChainView::new(&url, &user, &pass, Duration::from_secs(10)).expect("RPC client");
        verify_absence(&bundle, &view, &policy)
    })
    .await
    .expect("verifier task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_x_uid_gets_a_verifiable_absence_proof() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start(&chain, &x, false).await?;
        node.fund(&chain, 200_000).await?;

        // Nothing anchored yet: nothing to prove against.
        let (status, body) = node.get(&format!("/identity/v1/absence/{BOB_UID}")).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        let alice = User::new(ALICE_UID, "alice_cairn");
        bind(&node, &x, &alice, 1).await?;
        closed_with_txid(&node.close_epoch().await?, 0)?;
        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;

        let (status, body) = node.get(&format!("/identity/v1/absence/{BOB_UID}")).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["x_uid"], BOB_UID.to_string());
        let bundle: AbsenceBundle = serde_json::from_value(body)?;
        let verified = verify_absence_rpc(&chain, bundle.clone()).await?;
        assert_eq!(verified.x_uid, BOB_UID);
        assert_eq!(verified.epoch.epoch, 0);
        assert!(verified.confirmations >= CONFIRMATIONS);

        // The same proof relabelled for the bound id does not verify.
        let mut forged = bundle.clone();
        forged.x_uid = ALICE_UID;
        let err = verify_absence_rpc(&chain, forged).await.unwrap_err();
        assert!(matches!(err, BundleError::StateProof(_)), "{err:?}");
        // Nor does it against a header other than the anchored one.
        let mut moved = bundle;
        moved.epoch_header.log_size += 1;
        let err = verify_absence_rpc(&chain, moved).await.unwrap_err();
        assert!(matches!(err, BundleError::Anchor(_)), "{err:?}");

        // Known ids are looked up instead; bad ids are refused.
        let (status, body) = node
            .get(&format!("/identity/v1/absence/{ALICE_UID}"))
            .await?;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "bound");
        let (status, _) = node.get("/identity/v1/absence/alice").await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Once bob binds (even before his epoch is anchored) he is known.
        let bob = User::new(BOB_UID, "bob");
        bind(&node, &x, &bob, 2).await?;
        let (status, body) = node.get(&format!("/identity/v1/absence/{BOB_UID}")).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nip05_serves_only_anchored_bindings_by_default() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start(&chain, &x, false).await?;
        node.fund(&chain, 200_000).await?;
        let alice = User::new(ALICE_UID, "alice_cairn");
        let bind_event = bind(&node, &x, &alice, 1).await?;
        assert_eq!(nip05(&node, "alice_cairn").await?, json!({}), "pending");
        assert_eq!(
            lookup_handle(&node, "alice_cairn").await?["reflects"],
            "pending"
        );

        closed_with_txid(&node.close_epoch().await?, 0)?;
        assert_eq!(
            nip05(&node, "alice_cairn").await?,
            json!({}),
            "not in a block"
        );
        mine(&chain, 1).await?;
        node.sync().await?;
        let body = nip05_body(&node, "alice_cairn").await?;
        assert_eq!(
            body["names"]["alice_cairn"],
            alice.keys.public_key().to_hex()
        );
        assert_eq!(body["states"]["alice_cairn"], "anchored", "{body}");

        // A pending rotation: the old key is not served any more, the new one
        // not yet.
        let alice2 = Keys::generate();
        let rotate = rotate_op(
            &alice.keys.public_key(),
            &alice2,
            ALICE_UID,
            1,
            &bind_event.id,
        )
        .sign_with_keys(&alice.keys)?;
        let (status, r) = submit(&node, &rotate, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        assert_eq!(nip05(&node, "alice_cairn").await?, json!({}));
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(
            (v["status"].as_str(), v["reflects"].as_str()),
            (Some("pending"), Some("pending"))
        );
        closed_with_txid(&node.close_epoch().await?, 1)?;
        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;
        let body = nip05_body(&node, "alice_cairn").await?;
        assert_eq!(body["names"]["alice_cairn"], alice2.public_key().to_hex());
        assert_eq!(body["states"]["alice_cairn"], "final", "{body}");
        assert_eq!(
            lookup_handle(&node, "alice_cairn").await?["reflects"],
            "final"
        );

        // A revocation withdraws the name at once, anchored or not; the
        // lookup says it reflects a pending operation.
        let revoke = revoke_op(ALICE_UID, 2, &rotate.id).sign_with_keys(&alice2)?;
        let (status, r) = submit(&node, &revoke, None).await?;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        assert_eq!(nip05(&node, "alice_cairn").await?, json!({}));
        let v = lookup_handle(&node, "alice_cairn").await?;
        assert_eq!(
            (v["status"].as_str(), v["reflects"].as_str()),
            (Some("revoked"), Some("pending"))
        );

        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_gives_the_funding_address_and_says_when_funds_are_short() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start(&chain, &x, false).await?;
        node.sync().await?;

        // Nothing queued yet, but an empty wallet cannot pay the next anchor.
        let (_, status) = node.get("/identity/v1/status").await?;
        let anchoring = &status["anchoring"];
        assert_eq!(anchoring["health"], "waiting_for_funds", "{status}");
        assert_eq!(anchoring["queued_epochs"], json!([]));
        let address = anchoring["funding_address"]
            .as_str()
            .context("funding_address")?
            .to_owned();
        assert!(
            anchoring["message"]
                .as_str()
                .unwrap_or_default()
                .contains(&address),
            "{status}"
        );
        // The same address until it is paid; `cairn identity funding-address` prints it.
        let (_, again) = node.get("/identity/v1/status").await?;
        assert_eq!(again["anchoring"]["funding_address"], address.as_str());
        let client = cairn_node::cli::NodeClient::new(&node.base)?;
        let funding = cairn_node::cli::identity::funding_address(&client).await?;
        assert_eq!(funding.address, address);
        assert_eq!(funding.health, "waiting_for_funds");
        let printed = cairn_node::cli::identity::render_funding(&funding);
        assert_eq!(printed.lines().next(), Some(address.as_str()));

        // Too little to pay an anchor: still waiting.
        let addr: bitcoin::Address = address
            .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()?
            .require_network(bitcoin::Network::Regtest)?;
        cairn_e2e::within("fund", chain.fund(&addr, bitcoin::Amount::from_sat(600))).await??;
        node.sync().await?;
        let (_, status) = node.get("/identity/v1/status").await?;
        assert_eq!(
            status["anchoring"]["health"], "waiting_for_funds",
            "{status}"
        );
        assert_eq!(status["anchoring"]["balance_sat"], 600);
        let next = status["anchoring"]["funding_address"]
            .as_str()
            .context("address")?;
        assert_ne!(next, address, "a paid address is not shown again");

        // Enough: ok, and an epoch anchors at once.
        node.fund(&chain, 200_000).await?;
        let (_, status) = node.get("/identity/v1/status").await?;
        assert_eq!(status["anchoring"]["health"], "ok", "{status}");
        bind(&node, &x, &User::new(ALICE_UID, "alice_cairn"), 1).await?;
        closed_with_txid(&node.close_epoch().await?, 0)?;

        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}
