//! `cairn-bench-ln`: Lightning payments per second between two local
//! ldk-node nodes, as Cairn runs them (`cairn_payments::lightning::LightningNode`:
//! ldk-node's SQLite store, Cairn's durable event record), on an in-process
//! regtest chain (`cairn-testchain`).
//!
//! Node A opens one private channel to node B. For each concurrency level K,
//! B issues N invoices (not timed), then K payer tasks on A pay them, each
//! paying its next invoice once the previous one succeeded, through
//! `LightningNode::pay_and_wait`, the one payment path the node's NWC service
//! and admin API use too. Latency is from that call until it returns the
//! success (A's `PaymentSuccessful` event wakes it; the preimage is back, the
//! payer's view of "paid"); throughput is N over the time from the first send
//! to the last success. See `docs/benchmarks.md`.
//!
//! Build with `--features lightning` (it links ldk-node and testchain, which
//! the relay benchmarks do not need).

// Shared with `cairn-bench`; this binary uses part of them.
#[path = "../procfs.rs"]
#[allow(dead_code)]
mod procfs;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::{Amount, Network};
use cairn_bitcoin::{RpcConfig, Seed};
use cairn_payments::ldk_node::lightning_invoice::Bolt11Invoice;
use cairn_payments::lightning::{
    InvoiceDescription, LightningConfig, LightningNode, PaymentOutcome, DEFAULT_INVOICE_EXPIRY_SECS,
};
use cairn_testchain::TestChain;
use clap::Parser;

use stats::{Report, Summary};

/// Longest wait for one setup step (funds, channel) or one payment.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench-ln",
    version,
    about = "Lightning payments/s and latency between two local ldk-node nodes on testchain"
)]
struct Args {
    /// Payments per concurrency level.
    #[arg(long, default_value_t = 300)]
    payments: usize,
    /// Concurrency levels (payer tasks), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Amount of each payment, in satoshis. Keep it above ~2,500 sat: at
    /// regtest's 1 sat/vB LDK counts smaller HTLCs as dust while others are
    /// pending, and its dust-exposure cap (~2,530 sat at that feerate) then
    /// refuses further concurrent sends with `RouteNotFound`.
    #[arg(long, default_value_t = 5_000)]
    amount_sat: u64,
    /// Channel size, in satoshis (A funds it; B starts with nothing).
    #[arg(long, default_value_t = 10_000_000)]
    channel_sat: u64,
    /// Print one JSON object per level instead of lines.
    #[arg(long)]
    json: bool,
    /// Abort the whole run after this many seconds.
    #[arg(long, default_value_t = 1_800)]
    max_seconds: u64,
    /// Keep the nodes' data directories (ldk-node logs) and print where.
    #[arg(long)]
    keep_dirs: bool,
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn node(dir: &Path, chain: &TestChain) -> Result<LightningNode> {
    let (seed, _) = Seed::load_or_create(dir)?;
    let cfg = LightningConfig {
        network: Network::Regtest,
        data_dir: dir.to_path_buf(),
        listening_address: free_port()?,
        bitcoind: RpcConfig::new(
            format!("http://127.0.0.1:{}", chain.rpc_port()),
            chain.rpc_user(),
            chain.rpc_password(),
        ),
    };
    Ok(LightningNode::build(&cfg, &seed)?)
}

/// Polls `cond`, syncing both nodes, until it holds or `STEP_TIMEOUT` passes.
async fn sync_until(
    what: &str,
    nodes: [&LightningNode; 2],
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
        ensure!(
            start.elapsed() < STEP_TIMEOUT,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Funds both nodes and opens a confirmed, usable channel A → B.
async fn open_channel(
    chain: &TestChain,
    a: &LightningNode,
    b: &LightningNode,
    sat: u64,
) -> Result<()> {
    let funding = sat + 100_000;
    chain
        .fund(&a.funding_address()?, Amount::from_sat(funding))
        .await?;
    sync_until("A's on-chain funds", [a, b], || {
        a.balances().spendable_onchain_balance_sats == funding
    })
    .await?;
    a.open_channel(
        b.node_id(),
        b.listening_address().context("B listens")?,
        sat,
        None,
    )?;
    let start = Instant::now();
    while chain
        .rpc("getrawmempool", vec![])
        .await?
        .as_array()
        .map_or(0, |m| m.len())
        == 0
    {
        ensure!(start.elapsed() < STEP_TIMEOUT, "funding tx never broadcast");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    chain.mine(6, &chain.internal_address().await?).await?;
    sync_until("a usable channel", [a, b], || {
        a.list_channels().iter().any(|c| c.is_usable)
            && b.list_channels().iter().any(|c| c.is_usable)
    })
    .await
}

struct Level {
    latencies: Vec<Duration>,
    failed: usize,
    elapsed: Duration,
}

/// Pays `invoices` from `a` with `k` payer tasks.
async fn pay_all(a: &Arc<LightningNode>, invoices: Vec<Bolt11Invoice>, k: usize) -> Result<Level> {
    let queue = Arc::new(Mutex::new(invoices));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..k {
        let (a, queue) = (Arc::clone(a), Arc::clone(&queue));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            loop {
                let Some(inv) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                    break;
                };
                let t0 = Instant::now();
                match a.pay_and_wait(&inv, None, None, STEP_TIMEOUT).await {
                    Ok(sent) => match sent.outcome {
                        PaymentOutcome::Succeeded { .. } => latencies.push(t0.elapsed()),
                        PaymentOutcome::Failed { .. } => failed += 1,
                        PaymentOutcome::Pending => {
                            bail!("no outcome for a payment within {STEP_TIMEOUT:?}")
                        }
                    },
                    Err(e) => {
                        let range = a.list_channels().first().map(|c| {
                            (
                                c.next_outbound_htlc_minimum_msat,
                                c.next_outbound_htlc_limit_msat,
                            )
                        });
                        eprintln!("send failed: {e} (next outbound HTLC min/max {range:?} msat)");
                        failed += 1;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, failed))
        }));
    }
    let mut level = Level {
        latencies: Vec::new(),
        failed: 0,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (l, f) = t.await??;
        level.latencies.extend(l);
        level.failed += f;
    }
    level.elapsed = start.elapsed();
    Ok(level)
}

async fn run(args: &Args) -> Result<Vec<Report>> {
    let total = args.payments as u64 * args.concurrency.len() as u64 * args.amount_sat;
    ensure!(
        total * 100 < args.channel_sat * 95,
        "{total} sat of payments do not fit into a {} sat channel",
        args.channel_sat
    );
    let chain = TestChain::start().await?;
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    if args.keep_dirs {
        eprintln!(
            "data dirs: A {}, B {}",
            dir_a.path().display(),
            dir_b.path().display()
        );
    }
    let a = Arc::new(node(dir_a.path(), &chain)?);
    let b = node(dir_b.path(), &chain)?;
    a.start()?;
    b.start()?;
    eprintln!("opening a {} sat channel A → B…", args.channel_sat);
    open_channel(&chain, &a, &b, args.channel_sat).await?;

    let mut reports = Vec::new();
    for &k in &args.concurrency {
        let k = k.max(1);
        let invoices = (0..args.payments)
            .map(|i| {
                b.receive_bolt11(
                    Some(args.amount_sat * 1_000),
                    &InvoiceDescription::Text(format!("bench {k}/{i}")),
                    DEFAULT_INVOICE_EXPIRY_SECS,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let received_before = b.balances().total_lightning_balance_sats;
        eprintln!("paying {} invoices with {k} payer(s)…", args.payments);
        let cpu_before = cairn_cpu_seconds();
        let level = pay_all(&a, invoices, k).await?;
        let cpu = cairn_cpu_seconds() - cpu_before;
        let ok = level.latencies.len();
        // B really has the money: its balance grew by every success.
        let expected = received_before + ok as u64 * args.amount_sat;
        sync_until("B's balance", [&a, &b], || {
            b.balances().total_lightning_balance_sats == expected
        })
        .await?;
        let mut r = Report::new("lightning");
        r.add("concurrency", k as u64);
        r.add("payments", args.payments as u64);
        r.add("succeeded", ok as u64);
        r.add("failed", level.failed as u64);
        r.add("amount_sat", args.amount_sat);
        r.add("elapsed_s", level.elapsed.as_secs_f64());
        r.add("payments_per_s", ok as f64 / level.elapsed.as_secs_f64());
        r.add("cpu_s", cpu);
        r.add_summary("latency", Summary::from_durations(&level.latencies));
        r.add(
            "setup",
            "two ldk-node 0.7.1 nodes in one process, one private channel, testchain regtest",
        );
        reports.push(r);
    }
    a.stop().await?;
    b.stop().await?;
    chain.stop().await?;
    if args.keep_dirs {
        let _ = (dir_a.keep(), dir_b.keep());
    }
    Ok(reports)
}

/// CPU seconds this process (both nodes, the chain and the payers) has used.
fn cairn_cpu_seconds() -> f64 {
    procfs::cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // ldk-node blocks inside its synchronous calls (`block_in_place`): it
    // needs a multi-threaded runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let reports = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(args.max_seconds), run(&args))
            .await
            .map_err(|_| {
                anyhow!(
                    "benchmark did not finish within --max-seconds {}",
                    args.max_seconds
                )
            })?
    })?;
    for r in &reports {
        r.print(args.json);
    }
    Ok(())
}
