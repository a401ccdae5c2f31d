//! `cairn-bench`: a load generator that speaks NIP-01 over raw WebSockets to
//! a running Cairn relay (or any Nostr relay). Every event is built and
//! signed before the clock starts. See `docs/benchmarks.md`.

mod abuse;
mod events;
mod fanout;
mod filewatch;
mod idle;
mod ingest;
mod mixed;
mod paced;
mod procfs;
mod query;
mod seed;
mod stats;
mod ws;

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench",
    version,
    about = "Load generator for Nostr relays (NIP-01 over WebSockets)"
)]
struct Cli {
    /// Relay WebSocket URL. `ingest` and `fanout` take it several times
    /// (several relay processes on one database): `ingest` spreads its
    /// connections round-robin over the URLs, `fanout` its subscribers,
    /// with the publisher on the first URL. The others use one URL only.
    #[arg(
        long,
        global = true,
        env = "CAIRN_BENCH_URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:7777"
    )]
    url: Vec<String>,
    /// Print the result as one JSON object instead of lines.
    #[arg(long, global = true)]
    json: bool,
    /// Abort the whole run after this many seconds.
    #[arg(long, global = true, default_value_t = 1_800)]
    max_seconds: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish pre-signed events over many pipelined connections; events/s of `OK true`.
    Ingest(ingest::IngestArgs),
    /// One publisher, many live subscribers: publish → delivery latency.
    Fanout(fanout::FanoutArgs),
    /// Fill the store with a varied data set (authors, kinds, `p` tags, a year of timestamps).
    Seed(seed::SeedArgs),
    /// REQ → EOSE latency by author, kind, `#p` and follow feed on a seeded store.
    Query(query::QueryArgs),
    /// The same REQs while fresh events are ingested at a steady rate.
    Mixed(mixed::MixedArgs),
    /// Hold idle connections open and measure the relay's memory per connection.
    Idle(idle::IdleArgs),
    /// Attacks from one address while bystanders on another publish and
    /// query: their latency and success, the relay's CPU and peak RSS.
    Abuse(abuse::AbuseArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let urls = cli.url.as_slice();
    let url = urls
        .first()
        .ok_or_else(|| anyhow!("--url is empty"))?
        .as_str();
    let spreads = matches!(cli.command, Command::Ingest(_) | Command::Fanout(_));
    if urls.len() > 1 && !spreads {
        bail!("only ingest and fanout take --url more than once");
    }
    let work = async {
        match &cli.command {
            Command::Ingest(a) => ingest::run(urls, a).await,
            Command::Fanout(a) => fanout::run(urls, a).await,
            Command::Seed(a) => seed::run(url, a).await,
            Command::Query(a) => query::run(url, a).await,
            Command::Mixed(a) => mixed::run(url, a).await,
            Command::Idle(a) => idle::run(url, a).await,
            Command::Abuse(a) => abuse::run(url, a).await,
        }
    };
    let report = tokio::time::timeout(Duration::from_secs(cli.max_seconds), work)
        .await
        .map_err(|_| {
            anyhow!(
                "benchmark did not finish within --max-seconds {}",
                cli.max_seconds
            )
        })??;
    report.print(cli.json);
    Ok(())
}
