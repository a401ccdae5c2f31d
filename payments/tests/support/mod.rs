//! Helpers shared by the Lightning, NWC and restart tests: building a node on
//! testchain, opening a channel, and bounded waits that keep both nodes synced.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::{Amount, Network};
use cairn_bitcoin::{RpcConfig, Seed};
use cairn_payments::lightning::{LightningConfig, LightningNode};
use cairn_payments::relay_link::{RelayLink, WebSocketLink};
use cairn_relay::testing::TestRelay;
use cairn_testchain::TestChain;
use ldk_node::Event;
use tokio::sync::broadcast;

/// Longest wait for one condition or event.
pub const WAIT: Duration = Duration::from_secs(60);

/// A loopback address for a listener that opens later (a Lightning node):
/// a port no `bind(0)` can take in between (see [`cairn_testchain::ports`]).
pub fn free_port() -> Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        cairn_testchain::ports::reserved_port()?,
    )))
}

/// A real Cairn relay on a free loopback port, storing into `dir`.
pub async fn test_relay(dir: &std::path::Path) -> Result<TestRelay> {
    Ok(TestRelay::start("127.0.0.1:0".parse()?, dir).await?)
}

/// A link to the relay at `relay_url` over a WebSocket, authenticating as
/// `keys`: how the services reach any relay but the node's own (which the
/// node reaches in-process; the end-to-end tests cover that path).
pub fn ws_link(relay_url: &str, keys: nostr::Keys) -> Result<Arc<dyn RelayLink>> {
    Ok(Arc::new(WebSocketLink::new(
        nostr::RelayUrl::parse(relay_url)?,
        keys,
    )))
}

/// The link of the NWC service whose data directory is `dir` to its relay.
pub fn nwc_link(dir: &std::path::Path, relay_url: &str) -> Result<Arc<dyn RelayLink>> {
    ws_link(relay_url, cairn_payments::nwc::service_keys(dir)?)
}

pub fn ln_node(dir: &std::path::Path, chain: &TestChain) -> Result<LightningNode> {
    ln_node_at(dir, chain, free_port()?)
}

/// A node listening on `listening_address`: a node restarted on its old
/// address is found again by peers that remember it.
pub fn ln_node_at(
    dir: &std::path::Path,
    chain: &TestChain,
    listening_address: SocketAddr,
) -> Result<LightningNode> {
    let (seed, _) = Seed::load_or_create(dir)?;
    let cfg = LightningConfig {
        network: Network::Regtest,
        data_dir: dir.to_path_buf(),
        listening_address,
        bitcoind: RpcConfig::new(
            format!("http://127.0.0.1:{}", chain.rpc_port()),
            chain.rpc_user(),
            chain.rpc_password(),
        ),
    };
    Ok(LightningNode::build(&cfg, &seed)?)
}

/// Polls `cond` (syncing both nodes first) until it holds or `WAIT` passes.
pub async fn sync_until(
    what: &str,
    nodes: &[&LightningNode],
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        for n in nodes {
            n.sync_wallets()?;
        }
        if cond() {
            return Ok(());
        }
        if start.elapsed() > WAIT {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits for an event matching `pred`, syncing `nodes` meanwhile.
pub async fn next_event(
    what: &str,
    rx: &mut broadcast::Receiver<Event>,
    nodes: &[&LightningNode],
    pred: impl Fn(&Event) -> bool,
) -> Result<Event> {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Ok(ev)) if pred(&ev) => return Ok(ev),
            Ok(Ok(ev)) => eprintln!("while waiting for {what}: skipped {ev:?}"),
            Ok(Err(e)) => bail!("event channel: {e}"),
            Err(_) => {
                for n in nodes {
                    n.sync_wallets()?;
                }
            }
        }
        if start.elapsed() > WAIT {
            bail!("timed out waiting for {what}");
        }
    }
}

/// Funds both nodes with `funding` sat and opens a confirmed, usable private
/// channel of `channel` sat from `a` to `b`.
pub async fn open_channel(
    chain: &TestChain,
    a: &LightningNode,
    b: &LightningNode,
    funding: u64,
    channel: u64,
) -> Result<()> {
    let mut ev_a = a.subscribe();
    let mut ev_b = b.subscribe();
    for n in [a, b] {
        chain
            .fund(&n.funding_address()?, Amount::from_sat(funding))
            .await?;
    }
    sync_until("on-chain funds", &[a, b], || {
        a.balances().spendable_onchain_balance_sats == funding
            && b.balances().spendable_onchain_balance_sats == funding
    })
    .await?;
    a.open_channel(
        b.node_id(),
        b.listening_address().context("B listens")?,
        channel,
        None,
    )?;
    next_event("ChannelPending", &mut ev_a, &[], |e| {
        matches!(e, Event::ChannelPending { .. })
    })
    .await?;
    // The funding transaction must reach the mempool before the blocks.
    mempool_nonempty(chain).await?;
    let to = chain.internal_address().await?;
    chain.mine(6, &to).await?;
    next_event("ChannelReady on A", &mut ev_a, &[a, b], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    next_event("ChannelReady on B", &mut ev_b, &[a, b], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    sync_until("usable channel", &[a, b], || {
        a.list_channels().iter().any(|c| c.is_usable)
            && b.list_channels().iter().any(|c| c.is_usable)
    })
    .await
}

/// Waits (at most `WAIT`) until the chain's mempool holds a transaction.
pub async fn mempool_nonempty(chain: &TestChain) -> Result<()> {
    let start = Instant::now();
    while chain
        .rpc("getrawmempool", vec![])
        .await?
        .as_array()
        .map_or(0, |m| m.len())
        == 0
    {
        if start.elapsed() > WAIT {
            bail!("no transaction reached the mempool");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
