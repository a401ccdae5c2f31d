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
