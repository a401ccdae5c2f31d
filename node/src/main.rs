//! `cairn`: a self-hosted Nostr relay for private messages.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cairn_node::cli::{self, backup, identity, key, ln, msg, nwc, sync, verify, wallet};
use cairn_node::Settings;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Cairn: a self-hosted node for private messaging (a Nostr relay that keeps
/// gift-wrapped messages private).
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    /// Log more: `-v` info, `-vv` debug, `-vvv` trace. Logs go to stderr;
    /// by default `serve` logs at info and the other commands only warnings
    /// and errors. RUST_LOG, when set, decides instead.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay. With no flags and no cairn.toml: 127.0.0.1:7777, SQLite in ./cairn-data.
    ///
    /// Settings come from defaults, then the config file, then CAIRN_* environment
    /// variables (CAIRN_BIND, CAIRN_DATA_DIR, CAIRN_DATABASE_URL,
    /// CAIRN_RELAY__LIMITS__MAX_LIMIT, ...), then these flags.
    Serve(ServeArgs),
    /// Bind your X account to your Nostr key through a Cairn node, and look bindings up.
    ///
    /// `challenge` gives the text to post on X, `bind` submits the signed
    /// binding, `status` shows what a node says, `bundle` saves a proof bundle.
    Identity(identity::IdentityArgs),
    /// Check an X handle's binding yourself, against your own view of Bitcoin.
    ///
    /// `cairn verify @alice --node URL --rpc-url … | --headers FILE` fetches
    /// the proof bundle from the node and verifies every link (signatures,
    /// log and state proofs, the anchor transaction in a block of your chain,
    /// confirmations); `cairn verify --bundle FILE …` verifies a saved bundle
    /// offline. Exits 1, naming the broken link, when the bundle does not
    /// verify; 2 when it could not be checked (node or chain view unreachable).
    Verify(verify::VerifyArgs),
    /// The node's on-chain wallet: balance, address, send, history, seed.
    ///
    /// Talks to the running node's admin API (token in <data_dir>/admin.token);
    /// `cairn wallet seed` reads the data directory and works offline.
    Wallet(wallet::WalletArgs),
    /// The node's Lightning node: info, channels, open, close, invoice, pay,
    /// offer, pay-offer, payments.
    Ln(ln::LnArgs),
    /// Nostr Wallet Connect: create (`new`), list and revoke app connections.
    Nwc(nwc::NwcArgs),
    /// Private messages (NIP-17) with payments: `send @alice "lunch" --pay 5000sat`, `inbox`.
    ///
    /// `send` verifies the handle's binding against your chain view, pays
    /// through your node and sends the invoice and receipt inside the
    /// message; `inbox` shows each payment as paid only when your node
    /// received it. See docs/payments-in-messages.md.
    Msg(msg::MsgArgs),
    /// Write a consistent backup archive of the data directory while the node serves.
    ///
    /// Every SQLite database (events, identity, wallets, NWC, Lightning) as a
    /// snapshot; the seed, keys and tokens only with --include-secrets. A
    /// Postgres event database is not included: use pg_dump. See docs/operations.md.
    Backup(backup::BackupArgs),
    /// Restore a backup archive into a new or empty data directory.
    Restore(backup::RestoreArgs),
    /// Reconcile this node's events with another relay (NIP-77 negentropy) and
    /// transfer the difference: `--pull`, `--push` or `--both` (the default).
    ///
    /// Reads the node's database (it may be serving meanwhile), AUTHs as the
    /// key of --key-file or CAIRN_NSEC when given; progress on stderr, a
    /// summary on stdout. See docs/sync.md.
    Sync(sync::SyncArgs),
    /// The node's web app: `cairn web passphrase` sets the passphrase that
    /// signs you in at /app/login (besides the admin token).
    Web(cairn_node::web::passphrase::WebArgs),
    /// The owner's Nostr key on the node: `generate`, `import` (from
    /// standard input) or `show` (the npub). The file is [outbox] key_file,
    /// else <data_dir>/owner.key (0600): the key the outbox, the web app
    /// and `cairn msg` use.
    Key(key::KeyArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file (default: ./cairn.toml if it exists). See cairn.example.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on for HTTP and WebSocket, e.g. 0.0.0.0:7777.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Directory for the database and other files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST/DB (default: SQLite in the data directory).
    #[arg(long)]
    database_url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(cli.log_json, default_log_level(serving, cli.verbose));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Identity(args) => cli::exit_with(runtime.block_on(identity::run_identity(args))),
        Command::Verify(args) => cli::exit_with(runtime.block_on(verify::run_verify(args))),
        Command::Wallet(args) => cli::exit_with(runtime.block_on(wallet::run_wallet(args))),
        Command::Ln(args) => cli::exit_with(runtime.block_on(ln::run_ln(args))),
        Command::Nwc(args) => cli::exit_with(runtime.block_on(nwc::run_nwc(args))),
        Command::Msg(args) => cli::exit_with(runtime.block_on(msg::run_msg(args))),
        Command::Backup(args) => cli::exit_with(runtime.block_on(backup::run_backup(args))),
        Command::Restore(args) => cli::exit_with(runtime.block_on(backup::run_restore(args))),
        Command::Sync(args) => cli::exit_with(runtime.block_on(sync::run_sync(args))),
        Command::Web(args) => {
            cli::exit_with(runtime.block_on(cairn_node::web::passphrase::run_web(args)))
        }
        Command::Key(args) => cli::exit_with(runtime.block_on(key::run_key(args))),
    }
}

/// The log level when RUST_LOG is not set: `serve` reports what the node
/// does (info); the other commands print their result on stdout and log only
/// warnings and errors (so the relay pool's connection chatter stays out of
/// the way), each `-v` one level more.
fn default_log_level(serving: bool, verbose: u8) -> &'static str {
    const LEVELS: [&str; 4] = ["warn", "info", "debug", "trace"];
    let level = usize::from(serving) + usize::from(verbose);
    LEVELS[level.min(LEVELS.len() - 1)]
}

/// Logs go to stderr (stdout holds command results), coloured only when
/// stderr is a terminal.
fn init_logging(json: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::load(args.config.as_deref()).context("invalid configuration")?;
    if let Some(bind) = args.bind {
        settings.bind = bind;
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if let Some(url) = args.database_url {
        settings.database_url = Some(url);
    }
    let node = cairn_node::start(settings).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down: finishing in-flight writes");
    node.shutdown().await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_commands_are_quiet_unless_asked_and_serve_logs_info() {
        assert_eq!(default_log_level(false, 0), "warn");
        assert_eq!(default_log_level(false, 1), "info");
        assert_eq!(default_log_level(true, 0), "info");
        assert_eq!(default_log_level(true, 1), "debug");
        assert_eq!(default_log_level(false, 9), "trace");
        let cli = Cli::try_parse_from(["cairn", "ln", "info", "-vv"]).unwrap();
        assert_eq!(cli.verbose, 2);
    }
}
