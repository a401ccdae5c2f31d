//! A node whose payments read the chain from Esplora (`[payments]
//! chain_source = "esplora"`): testchain's Esplora facade, with `[bitcoin]
//! rpc_url` pointing at a closed port so nothing can come from the RPC.
//! The facade serves testchain's in-process chain only, so this test uses it
//! even when `BITCOIND_EXE` is set (never skipped).

use anyhow::{Context, Result};
use bitcoin::{Address, Amount};
use cairn_node::admin_token::token_path;
use cairn_node::cli::support::admin::AdminClient;
use cairn_node::settings::payments::ChainSourceKind;
use cairn_testchain::TestChain;

use crate::support::{free_port, payments_settings, poll, str_at, u64_at, PayNode, TEST_TIMEOUT};

const FUNDING: u64 = 150_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_on_esplora_sees_its_on_chain_and_lightning_funds() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .context("test timed out")?
}

async fn run() -> Result<()> {
    let chain = TestChain::start_in_process().await?;
    let esplora = chain.esplora_url().await?;
    let dir = tempfile::tempdir()?;
    let mut settings = payments_settings(dir.path(), &chain)?;
    settings.bitcoin.rpc_url = format!("http://{}", free_port()?);
    settings.payments.chain_source = ChainSourceKind::Esplora;
    settings.payments.esplora_url = esplora;
    let node = cairn_node::start(settings).await?;
    let token = std::fs::read_to_string(token_path(dir.path()))?;
    let n = PayNode {
        admin: AdminClient::new(&node.http_url(), token.trim())?,
        node,
        dir,
    };
    let status = n.get("/admin/v1/status").await?;
    assert_eq!(status["payments"], "running", "status: {status}");

    for path in [
        "/admin/v1/wallet/address",
        "/admin/v1/lightning/funding-address",
    ] {
        let v = n.get(path).await?;
        let address = str_at(&v, "/address")?
            .parse::<Address<bitcoin::address::NetworkUnchecked>>()?
            .assume_checked();
        chain.fund(&address, Amount::from_sat(FUNDING)).await?;
    }
    poll("both wallets' funds through Esplora", &[&n], async || {
        let b = n.get("/admin/v1/wallet/balance").await?;
        Ok((u64_at(&b, "/onchain/confirmed_sat")? == FUNDING
            && u64_at(&b, "/lightning/total_onchain_sat")? == FUNDING)
            .then_some(()))
    })
    .await?;
    let PayNode { node, dir, .. } = n;
    node.shutdown().await?;
    drop(dir);
    Ok(())
}
