//! `cairn sync --relay ws(s)://… [--filter JSON] [--pull|--push|--both]`:
//! reconcile this node's events with another relay over NIP-77 (negentropy)
//! and transfer the difference, once. The reconciliation itself is
//! [`crate::sync`] (shared with the scheduled `[[sync]]` runs of `cairn
//! serve`); this is its command line.
//!
//! - The command opens the node's event database
//!   (`--config`/`--data-dir`/`--database-url`, as `cairn serve` does; the
//!   node may be serving meanwhile: SQLite in WAL mode and Postgres both take
//!   a second process). AUTH is answered as the key given with `--key-file`
//!   or `CAIRN_NSEC`; without one the command does not authenticate.
//! - On SQLite, live subscribers of a `cairn serve` running on the same
//!   database do not see pulled events as they arrive (they are stored, not
//!   fanned out by that process; they see them on their next REQ); on
//!   Postgres this command's `Relay` NOTIFYs like any node, so the serving
//!   process fans them out (docs/scale-out.md). On SQLite this command is
//!   a second writer process on the node's database file: each write waits
//!   up to the busy timeout (5 s) for the other's transaction, and a
//!   pulled event whose write still finds the file locked counts as failed
//!   (exit status 2; run again).
//!
//! Progress goes to stderr, the summary to stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cairn_relay::Relay;
use nostr::{Filter, JsonUtil};

use crate::cli::support::keys::{load_keys, KeyArgs, NSEC_ENV};
use crate::cli::support::output::outln;
use crate::settings::Settings;
pub use crate::sync::{sync, Direction, SyncReport, SyncRequest, DEFAULT_REPLY_TIMEOUT};

/// `cairn sync …`
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The relay to reconcile with (ws:// or wss://).
    #[arg(long)]
    pub relay: String,
    /// NIP-01 filter (JSON) selecting the events to reconcile; default: all.
    #[arg(long, default_value = "{}")]
    pub filter: String,
    /// Only fetch the remote's events this node lacks.
    #[arg(long, conflicts_with_all = ["push", "both"])]
    pub pull: bool,
    /// Only send this node's events the remote lacks.
    #[arg(long, conflicts_with = "both")]
    pub push: bool,
    /// Both ways (the default).
    #[arg(long)]
    pub both: bool,
    /// The node's TOML config file (default: ./cairn.toml if it exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The node's data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The node's database (default: from its settings).
    #[arg(long)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `cairn sync`: parse the arguments, open the node's database, sync, and
/// print the summary.
pub async fn run_sync(args: SyncArgs) -> Result<()> {
    let mut settings = Settings::load(args.config.as_deref())
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    if let Some(dir) = &args.data_dir {
        settings.data_dir = dir.clone();
    }
    if let Some(url) = &args.database_url {
        settings.database_url = Some(url.clone());
    }
    let filter = Filter::from_json(&args.filter).context("--filter is not a NIP-01 filter")?;
    let direction = match (args.pull, args.push) {
        (true, _) => Direction::Pull,
        (_, true) => Direction::Push,
        _ => Direction::Both,
    };
    let keys = if args.keys.key_file.is_some() || std::env::var_os(NSEC_ENV).is_some() {
        Some(load_keys(args.keys.key_file.as_deref())?)
    } else {
        None
    };
    let request = SyncRequest {
        relay_url: args.relay.clone(),
        filter,
        direction,
        keys,
        max_records: settings.relay.negentropy.max_records,
        reply_timeout: DEFAULT_REPLY_TIMEOUT,
    };
    let store = cairn_relay::store::open(&settings.database_url())
        .await
        .context("cannot open the node's database")?;
    let public_url = settings
        .relay
        .public_url
        .clone()
        .unwrap_or_else(|| format!("ws://{}", settings.bind));
    let (relay, writer) = Relay::new(settings.relay.clone(), &public_url, Arc::clone(&store));
    let result = sync(&relay, &request, &mut |line| eprintln!("sync: {line}")).await;
    // The writer commits what is queued once the last handle is gone.
    drop(relay);
    let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
    store.close().await;
    let report = result?;
    outln!("{}", render_report(&request, &report))?;
    if report.pull_failed > 0 || report.push_failed > 0 {
        bail!(
            "{} events could not be pulled and {} not pushed",
            report.pull_failed,
            report.push_failed
        );
    }
    Ok(())
}

/// The summary printed on stdout.
pub fn render_report(request: &SyncRequest, report: &SyncReport) -> String {
    format!(
        "relay        {}\n\
         local        {} events in the set\n\
         remote only  {} (pulled {}, failed {})\n\
         local only   {} (pushed {}, failed {})\n\
         exchange     {} rounds, {} bytes",
        request.relay_url,
        report.local,
        report.remote_only,
        report.pulled,
        report.pull_failed,
        report.local_only,
        report.pushed,
        report.push_failed,
        report.rounds,
        report.bytes,
    )
}
