//! A Cairn node with the identity service on `testchain` and the fake X,
//! driven over HTTP, with explicit epoch closes and anchor syncs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context, Result};
use bitcoin::{Amount, Network};
use cairn_e2e::{within, PgDatabase};
use cairn_identity::binding::proof_post_op;
use cairn_identity::bundle::{verify, ProofBundle, RpcChainView, VerifiedIdentity, VerifyPolicy};
use cairn_identity::service::{EpochClose, IdentityService};
use cairn_node::settings::bitcoin::{BitcoinNetwork, BitcoinSettings};
use cairn_node::{RunningNode, Settings};
use cairn_testchain::TestChain;
use nostr::{Event, EventId, Keys};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_x::{FakeX, Post};

/// Confirmations after which the test node calls a binding final.
pub const CONFIRMATIONS: u32 = 3;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Settings of an identity-enabled test node.
pub fn identity_settings(
    dir: &std::path::Path,
    database_url: Option<String>,
    chain: &TestChain,
    x: &FakeX,
) -> Settings {
    let mut s = cairn_e2e::test_settings(dir.to_path_buf(), database_url);
    s.bitcoin = BitcoinSettings {
        network: BitcoinNetwork::Regtest,
        rpc_url: chain.rpc_url().to_owned(),
        rpc_user: chain.rpc_user().to_owned(),
        rpc_password: chain.rpc_password().to_owned(),
    };
    let id = &mut s.identity;
    id.enabled = true;
    id.x_oembed_base = x.base();
    id.x_syndication_base = x.base();
    id.x_request_timeout_secs = 2;
    // Tests close epochs and sync anchors themselves.
    id.epoch_interval_secs = 3600;
    id.anchor_sync_interval_secs = 3600;
    id.confirmations = CONFIRMATIONS;
    id.bump_after_blocks = 50;
    id.recovery_delay_blocks = 5;
    // Every test client is 127.0.0.1; tests of the limit itself lower it.
    id.challenges_per_ip.per_second = 100.0;
    id.challenges_per_ip.burst = 100.0;
    id.bindings_per_ip.per_second = 100.0;
    id.bindings_per_ip.burst = 100.0;
    id.bindings_per_challenge.per_second = 100.0;
    id.bindings_per_challenge.burst = 100.0;
    // Tests resubmit after changing what X answers.
    id.failed_binding_cache_secs = 0;
    s
}

/// A running identity node.
pub struct IdNode {
    node: Option<RunningNode>,
    pub settings: Settings,
    http: reqwest::Client,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDatabase>,
}

impl IdNode {
    pub async fn start(chain: &TestChain, x: &FakeX, postgres: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pg = if postgres {
            let admin = match cairn_e2e::Backend::postgres_from_env() {
                Some(cairn_e2e::Backend::Postgres { admin_url }) => admin_url,
                _ => return Err(anyhow!("no Postgres configured")),
            };
            Some(PgDatabase::create(&admin).await?)
        } else {
            None
        };
        let settings = identity_settings(dir.path(), pg.as_ref().map(|p| p.url.clone()), chain, x);
        Self::start_with(settings, dir, pg).await
    }

    /// Starts a SQLite-backed node after `tune` adjusted its settings.
    pub async fn start_tuned(
        chain: &TestChain,
        x: &FakeX,
        tune: impl FnOnce(&mut Settings),
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut settings = identity_settings(dir.path(), None, chain, x);
        tune(&mut settings);
        Self::start_with(settings, dir, None).await
    }

    pub async fn start_with(
        settings: Settings,
        dir: tempfile::TempDir,
        pg: Option<PgDatabase>,
    ) -> Result<Self> {
        let node = within("cairn_node::start", cairn_node::start(settings.clone())).await??;
        Ok(Self {
            base: node.http_url(),
            node: Some(node),
            settings,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
            dir,
            pg,
        })
    }

    pub fn node(&self) -> &RunningNode {
        self.node.as_ref().expect("running")
    }

    pub fn service(&self) -> &Arc<IdentityService> {
        self.node().identity().expect("identity enabled")
    }

    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = resp.status();
        let body = resp
            .json()
            .await
            .with_context(|| format!("GET {path}: {status} not JSON"))?;
        Ok((status, body))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let body = resp
            .json()
            .await
            .with_context(|| format!("POST {path}: {status} not JSON"))?;
        Ok((status, body))
    }

    /// Closes the open epoch (syncing first, as the background job would).
    pub async fn close_epoch(&self) -> Result<EpochClose> {
        Ok(within("close_epoch", self.service().close_epoch()).await??)
    }

    pub async fn sync(&self) -> Result<()> {
        Ok(within("sync_anchors", self.service().sync_anchors()).await??)
    }

    /// Funds the anchoring wallet with one confirmed coin.
    pub async fn fund(&self, chain: &TestChain, sat: u64) -> Result<()> {
        let addr = within(
            "receive_address",
            self.service().anchorer().receive_address(),
        )
        .await??;
        within("fund", chain.fund(&addr, Amount::from_sat(sat))).await??;
        self.sync().await
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let mut settings = self.settings.clone();
        settings.bind = "127.0.0.1:0".parse()?;
        let node = within("cairn_node::start (restart)", cairn_node::start(settings)).await??;
        self.base = node.http_url();
        self.node = Some(node);
        Ok(())
    }

    pub async fn stop(&mut self) -> Result<()> {
        if let Some(node) = self.node.take() {
            within("shutdown", node.shutdown()).await??;
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<()> {
        self.stop().await?;
        if let Some(pg) = self.pg.take() {
            pg.drop_now().await?;
        }
        Ok(())
    }
}

pub async fn mine(chain: &TestChain, n: u32) -> Result<()> {
    let addr = chain.internal_address().await?;
    within("mine", chain.mine(n, &addr)).await??;
    Ok(())
}

/// Mines `n` blocks that leave the mempool's transactions out (so an
/// anchor stays unconfirmed long enough to be fee-bumped).
pub async fn mine_empty(chain: &TestChain, n: u32) -> Result<()> {
    let addr = chain.internal_address().await?;
    for _ in 0..n {
        within(
            "generateblock",
            chain.rpc("generateblock", vec![json!(addr.to_string()), json!([])]),
        )
        .await??;
    }
    Ok(())
}

/// An X account and the Nostr key its owner binds.
pub struct User {
    pub keys: Keys,
    pub x_uid: u64,
    pub handle: String,
}

impl User {
    pub fn new(x_uid: u64, handle: &str) -> Self {
        Self {
            keys: Keys::generate(),
            x_uid,
            handle: handle.to_owned(),
        }
    }

    pub fn npub(&self) -> String {
        use nostr::nips::nip19::ToBech32;
        self.keys.public_key().to_bech32().unwrap()
    }
}

/// Asks for a challenge and posts its text on the fake X as `user`;
/// returns the nonce and the post.
pub async fn challenge_and_post(
    node: &IdNode,
    x: &FakeX,
    user: &User,
    post_seq: u64,
) -> Result<(String, Post)> {
    let (status, c) = node
        .post("/identity/v1/challenges", &json!({ "npub": user.npub() }))
        .await?;
    ensure!(status == StatusCode::CREATED, "challenge: {status} {c}");
    let text = c["text"].as_str().context("text")?;
    ensure!(
        text.contains(&user.npub()),
        "the text names the key: {text}"
    );
    let nonce = c["nonce"].as_str().context("nonce")?.to_owned();
    ensure!(text.contains(&nonce), "the text names the nonce");
    let post = Post::new(user.x_uid, &user.handle, text, unix_now(), post_seq);
    x.publish(&post);
    Ok((nonce, post))
}

/// A signed `bind` (or `recover`) event for `user` quoting `nonce` and `post`.
pub fn proof_event(
    user: &User,
    recover: bool,
    seq: u64,
    prev: Option<&EventId>,
    nonce: &str,
    post: &Post,
) -> Event {
    proof_post_op(recover, user.x_uid, seq, prev, &user.handle, post.id, nonce)
        .sign_with_keys(&user.keys)
        .unwrap()
}

/// Posts a binding event; returns status and body.
pub async fn submit(
    node: &IdNode,
    event: &Event,
    post_id: Option<u64>,
) -> Result<(StatusCode, Value)> {
    let mut body = json!({ "event": event });
    if let Some(id) = post_id {
        body["post_id"] = json!(id.to_string());
    }
    node.post("/identity/v1/bindings", &body).await
}

/// The full bind flow; returns the accepted event.
pub async fn bind(node: &IdNode, x: &FakeX, user: &User, post_seq: u64) -> Result<Event> {
    let (nonce, post) = challenge_and_post(node, x, user, post_seq).await?;
    let event = proof_event(user, false, 0, None, &nonce, &post);
    let (status, receipt) = submit(node, &event, Some(post.id)).await?;
    ensure!(status == StatusCode::CREATED, "bind: {status} {receipt}");
    ensure!(
        receipt["status"] == "accepted" && receipt["op"] == "bind",
        "{receipt}"
    );
    ensure!(
        receipt["x_uid"].as_str() == Some(user.x_uid.to_string().as_str()),
        "{receipt}"
    );
    Ok(event)
}

/// Verifies a bundle from a lookup answer against the chain's own RPC.
pub async fn verify_bundle(
    chain: &TestChain,
    node: &IdNode,
    view: &Value,
) -> Result<VerifiedIdentity> {
    let bundle: ProofBundle =
        serde_json::from_value(view["bundle"].clone()).context("bundle in the answer")?;
    verify_parsed(chain, node, bundle).await
}

pub async fn verify_parsed(
    chain: &TestChain,
    node: &IdNode,
    bundle: ProofBundle,
) -> Result<VerifiedIdentity> {
    let (url, user, pass) = (
        chain.rpc_url().to_owned(),
        chain.rpc_user().to_owned(),
        chain.rpc_password().to_owned(),
    );
    let mut policy = VerifyPolicy::new(Network::Regtest);
    policy.min_confirmations = CONFIRMATIONS;
    policy.trusted_witnesses = vec![node.service().witness_public_key()];
    tokio::task::spawn_blocking(move || -> Result<VerifiedIdentity> {
        let view = RpcChainView::new(&url, &user, &pass, Duration::from_secs(10))?;
        Ok(verify(&bundle, &view, &policy)?)
    })
    .await?
}

/// Runs a test body with an overall timeout.
pub async fn case<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .map_err(|_| anyhow!("test case timed out"))?
}
