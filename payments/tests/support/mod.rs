//! Helpers shared by the Lightning and NWC tests: building a node on
//! testchain and bounded waits that keep both nodes synced.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bitcoin::Network;
use cairn_payments::lightning::{BitcoindRpc, LightningConfig, LightningNode};
use cairn_payments::Seed;
use cairn_testchain::TestChain;
use ldk_node::Event;
use tokio::sync::broadcast;

/// Longest wait for one condition or event.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

pub fn ln_node(dir: &std::path::Path, chain: &TestChain) -> Result<LightningNode> {
    let (seed, _) = Seed::load_or_create(dir)?;
    let cfg = LightningConfig {
        network: Network::Regtest,
        data_dir: dir.to_path_buf(),
        listening_address: free_port()?,
        bitcoind: BitcoindRpc {
            host: "127.0.0.1".into(),
            port: chain.rpc_port(),
            user: chain.rpc_user().into(),
            password: chain.rpc_password().into(),
        },
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
