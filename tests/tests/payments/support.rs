//! Cairn nodes with `[payments] enabled` on testchain, and bounded polling
//! of their admin API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_node::admin_token::token_path;
use cairn_node::cli::support::admin::AdminClient;
use cairn_node::settings::bitcoin::{BitcoinNetwork, BitcoinSettings};
use cairn_node::{RunningNode, Settings};
use cairn_testchain::TestChain;
use serde_json::{json, Value};

pub use crate::ln_support::{free_port, mempool_nonempty, WAIT};

/// Bound on a whole test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(420);

/// Settings of a node with payments on `chain`'s regtest, Lightning on a
/// free loopback port, the on-chain wallet synced every second.
pub fn payments_settings(dir: &Path, chain: &TestChain) -> Result<Settings> {
    let mut s = cairn_e2e::test_settings(dir.to_path_buf(), None);
    s.bitcoin = BitcoinSettings {
        network: BitcoinNetwork::Regtest,
        rpc_url: chain.rpc_url().to_owned(),
        rpc_user: chain.rpc_user().to_owned(),
        rpc_password: chain.rpc_password().to_owned(),
    };
    s.payments.enabled = true;
    s.payments.lightning_listen = free_port()?;
    s.payments.wallet_sync_interval_secs = 1;
    s.payments.start_retry_interval_secs = 1;
    Ok(s)
}

/// A running node and an admin client for it.
pub struct PayNode {
    pub node: RunningNode,
    pub admin: AdminClient,
    pub dir: tempfile::TempDir,
}

impl PayNode {
    pub async fn start(chain: &TestChain) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let settings = payments_settings(dir.path(), chain)?;
        let node = cairn_node::start(settings).await?;
        let token = std::fs::read_to_string(token_path(dir.path()))?;
        let admin = AdminClient::new(&node.http_url(), token.trim())?;
        Ok(Self { node, admin, dir })
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.admin.get(path).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.admin.post(path, &body).await
    }

    /// Syncs both wallets with the chain now (instead of waiting for the jobs).
    pub async fn sync(&self) -> Result<()> {
        self.post("/admin/v1/sync", json!({})).await.map(|_| ())
    }
}

/// Polls `probe` (after syncing `nodes`) until it returns `Some`, at most `WAIT`.
pub async fn poll<T>(
    what: &str,
    nodes: &[&PayNode],
    mut probe: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        for n in nodes {
            n.sync()
                .await
                .with_context(|| format!("syncing for {what}"))?;
        }
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if start.elapsed() > WAIT {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn mine(chain: &TestChain, n: u32) -> Result<()> {
    let to = chain.internal_address().await?;
    chain.mine(n, &to).await?;
    Ok(())
}

/// `u64` field of a JSON answer.
pub fn u64_at(v: &Value, pointer: &str) -> Result<u64> {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .with_context(|| format!("{pointer} in {v}"))
}

/// `str` field of a JSON answer.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("{pointer} in {v}"))
}

// ---------------------------------------------------------------------------
// The `cairn wallet|ln|nwc` command code, run against a node.

#[derive(clap::Parser)]
struct NwcCmd {
    #[command(flatten)]
    args: cairn_node::cli::nwc::NwcArgs,
}

#[derive(clap::Parser)]
struct WalletCmd {
    #[command(flatten)]
    args: cairn_node::cli::wallet::WalletArgs,
}

#[derive(clap::Parser)]
struct LnCmd {
    #[command(flatten)]
    args: cairn_node::cli::ln::LnArgs,
}

/// `--node URL --token-file FILE` for the command code.
fn node_args(n: &PayNode) -> Result<Vec<String>> {
    Ok(vec![
        "--node".into(),
        n.node.http_url(),
        "--token-file".into(),
        token_path(n.dir.path())
            .to_str()
            .context("utf-8 path")?
            .to_owned(),
    ])
}

/// `command argv… --node … --token-file …` as the command line would parse it.
fn command_line(command: &str, n: &PayNode, argv: &[&str]) -> Result<Vec<String>> {
    let mut all = vec![command.to_owned()];
    all.extend(argv.iter().map(|s| s.to_string()));
    all.extend(node_args(n)?);
    Ok(all)
}

/// `cairn nwc argv…` against `n`.
pub async fn nwc_cmd(n: &PayNode, argv: &[&str]) -> Result<String> {
    use clap::Parser as _;
    let cmd = NwcCmd::try_parse_from(command_line("nwc", n, argv)?)?;
    cairn_node::cli::nwc::execute(cmd.args).await
}

/// `cairn wallet argv…` against `n`.
pub async fn wallet_cmd(n: &PayNode, argv: &[&str]) -> Result<String> {
    use clap::Parser as _;
    let cmd = WalletCmd::try_parse_from(command_line("wallet", n, argv)?)?;
    cairn_node::cli::wallet::execute(cmd.args).await
}

/// `cairn ln argv…` against `n`.
pub async fn ln_cmd(n: &PayNode, argv: &[&str]) -> Result<String> {
    use clap::Parser as _;
    let cmd = LnCmd::try_parse_from(command_line("ln", n, argv)?)?;
    cairn_node::cli::ln::execute(cmd.args).await
}
