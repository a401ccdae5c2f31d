//! Challenge issuance limits over HTTP: the per-IP token bucket and the cap
//! on outstanding challenges, each answered 429 with a JSON error and
//! `Retry-After`, and lifted once that time has passed.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_testchain::TestChain;
use nostr::{Keys, ToBech32};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_x::FakeX;
use crate::support::*;

/// An HTTP client whose requests come from `ip` (any 127.0.0.0/8 address
/// reaches the node on 127.0.0.1), so one test can play several clients.
fn client_from(ip: &str) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>()?)
        .timeout(Duration::from_secs(20))
        .build()?)
}

/// Asks for a challenge for a fresh key: status, `Retry-After`, body.
async fn ask(client: &reqwest::Client, node: &IdNode) -> Result<(StatusCode, Option<u64>, Value)> {
    let npub = Keys::generate().public_key().to_bech32()?;
    let resp = client
        .post(format!("{}/identity/v1/challenges", node.base))
        .json(&json!({ "npub": npub }))
        .send()
        .await?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| -> Result<u64> { Ok(v.to_str()?.parse()?) })
        .transpose()?;
    let body = resp.json().await.context("JSON body")?;
    Ok((status, retry_after, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_rate_limited_per_client_ip() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start_tuned(&chain, &x, |s| {
            s.identity.challenges_per_ip.per_second = 1.0;
            s.identity.challenges_per_ip.burst = 3.0;
        })
        .await?;

        let first = client_from("127.0.0.1")?;
        for i in 0..3 {
            let (status, _, body) = ask(&first, &node).await?;
            assert_eq!(status, StatusCode::CREATED, "challenge #{i}: {body}");
        }
        let (status, retry_after, body) = ask(&first, &node).await?;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "rate_limited", "{body}");
        assert!(body["message"].is_string(), "{body}");
        // One token at 1/s: at most a second away.
        assert_eq!(retry_after, Some(1));

        // Another address has its own bucket.
        let second = client_from("127.0.0.2")?;
        let (status, _, body) = ask(&second, &node).await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        // Other routes are not limited.
        let (status, _) = node.get("/identity/v1/status").await?;
        assert_eq!(status, StatusCode::OK);

        // After Retry-After the first address gets one more, and only one.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, _, body) = ask(&first, &node).await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _, body) = ask(&first, &node).await?;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outstanding_challenges_are_capped_until_they_expire() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        // (The per-IP limit stays generous, as for every test node.)
        let node = IdNode::start_tuned(&chain, &x, |s| {
            s.identity.max_outstanding_challenges = 3;
            s.identity.challenge_ttl_secs = 2;
        })
        .await?;

        // The cap holds across clients: two addresses share it.
        let clients = [client_from("127.0.0.1")?, client_from("127.0.0.3")?];
        for i in 0..3 {
            let (status, _, body) = ask(&clients[i % 2], &node).await?;
            assert_eq!(status, StatusCode::CREATED, "challenge #{i}: {body}");
        }
        for client in &clients {
            let (status, retry_after, body) = ask(client, &node).await?;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["error"], "too_many_challenges", "{body}");
            let retry_after = retry_after.context("Retry-After")?;
            // Until the oldest expires: within the 2 s TTL (plus the second
            // it is still valid in).
            assert!((1..=3).contains(&retry_after), "{retry_after}");
        }

        // Once the oldest challenges have expired, new ones are issued.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (status, _, body) = ask(&clients[0], &node).await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

/// Total requests the fake X received about `post`.
fn x_hits(x: &FakeX, post: u64) -> usize {
    use cairn_identity::x::Endpoint;
    x.hits(Endpoint::Syndication, post) + x.hits(Endpoint::OEmbed, post)
}

/// Posts a binding submission from `client`: status and body.
async fn submit_from(
    client: &reqwest::Client,
    node: &IdNode,
    body: &Value,
) -> Result<(StatusCode, Value)> {
    let resp = client
        .post(format!("{}/identity/v1/bindings", node.base))
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await.context("JSON body")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_binding_is_not_rechecked_on_x_and_submissions_are_rate_limited() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start_tuned(&chain, &x, |s| {
            let id = &mut s.identity;
            id.bindings_per_ip = cairn_relay::config::Rate::new(0.01, 4.0);
            id.bindings_per_challenge = cairn_relay::config::Rate::new(0.01, 2.0);
            id.failed_binding_cache_secs = 60;
        })
        .await?;
        let user = User::new(4242, "resubmitter");
        let (nonce, post) = challenge_and_post(&node, &x, &user, 1).await?;
        // The post is gone from X: the proof fails.
        x.delete(post.id);
        let event = proof_event(&user, false, 0, None, &nonce, &post);
        let body = json!({ "event": event, "post_id": post.id.to_string() });
        let client = client_from("127.0.0.1")?;
        let (status, err) = submit_from(&client, &node, &body).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"], "proof_rejected", "{err}");
        let asked = x_hits(&x, post.id);
        assert!(asked > 0, "the first submission asked X");

        // The same submission again: the same answer, from memory.
        let (status, again) = submit_from(&client, &node, &body).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{again}");
        assert_eq!(again["error"], "proof_rejected", "{again}");
        assert!(
            again["message"]
                .as_str()
                .unwrap_or("")
                .contains("not checked again"),
            "{again}"
        );
        assert_eq!(x_hits(&x, post.id), asked, "X was asked again");

        // Other submissions for the same challenge: one more (the bucket
        // holds two), then 429 — without asking X.
        let other_post = json!({ "event": event, "post_id": (post.id + 1).to_string() });
        let (status, err) = submit_from(&client, &node, &other_post).await?;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{err}");
        let third = json!({ "event": event, "post_id": (post.id + 2).to_string() });
        let before = x_hits(&x, post.id + 2);
        let (status, err) = submit_from(&client, &node, &third).await?;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{err}");
        assert_eq!(err["error"], "rate_limited", "{err}");
        assert!(
            err["message"].as_str().unwrap_or("").contains("challenge"),
            "{err}"
        );
        assert_eq!(x_hits(&x, post.id + 2), before);
        // The challenge is public (it is in the post): someone else's signed
        // events carrying it draw on their own bucket, not on its owner's.
        let mallory = User::new(666, "mallory");
        let forged = proof_event(&mallory, false, 0, None, &nonce, &post);
        let from_mallory = client_from("127.0.0.3")?;
        let (status, err) = submit_from(
            &from_mallory,
            &node,
            &json!({ "event": forged, "post_id": post.id.to_string() }),
        )
        .await?;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{err}");

        // Per address: four in all from 127.0.0.1 (malformed ones count),
        // then 429; another address has its own bucket.
        let (status, err) = submit_from(&client, &node, &json!({"junk": 1})).await?;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{err}");
        assert_eq!(err["error"], "rate_limited", "{err}");
        assert!(
            err["message"].as_str().unwrap_or("").contains("address"),
            "{err}"
        );
        let other = client_from("127.0.0.2")?;
        let (status, err) = submit_from(&other, &node, &json!({"junk": 1})).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}
