//! `cairn wallet seed|balance|address|send|history`: the node's on-chain
//! wallet, through the admin API (docs/admin-api.md), except `seed`,
//! which reads the seed file itself and works without a running node.
//!
//! Every command returns its output as text, so tests drive the same code as
//! the binary without capturing stdout; `--json` (as for `cairn ln`) returns
//! the admin API's answer instead.

use anyhow::{bail, Context, Result};
use cairn_bitcoin::seed::{seed_path, Seed};
use serde::Deserialize;
use serde_json::json;

use crate::cli::ln::OutputArgs;
use crate::cli::support::admin::AdminArgs;
use crate::cli::support::amounts::Amount;
use crate::cli::support::output::outln;

/// The flag without which `cairn wallet seed --show` refuses.
pub const SHOW_SEED_CONFIRMATION: &str = "i-understand-this-reveals-my-seed";

/// `cairn wallet …`
#[derive(Debug, clap::Args)]
pub struct WalletArgs {
    #[command(flatten)]
    node: AdminArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(subcommand)]
    command: WalletCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WalletCommand {
    /// Show where the seed is, or (with --show and the confirmation flag) its
    /// BIP39 words. Reads the data directory; the node need not run.
    Seed(SeedArgs),
    /// On-chain and Lightning balances (each sat counted once: a channel's
    /// closing output is on-chain, not in channels).
    Balance {
        /// Sync both wallets with Bitcoin Core first.
        #[arg(long)]
        sync: bool,
    },
    /// A fresh receive address of the on-chain wallet.
    Address,
    /// Pay AMOUNT (e.g. 50000sat, 0.001btc) to ADDRESS on-chain.
    Send {
        /// The recipient's address.
        address: String,
        /// The amount, e.g. 50000sat.
        amount: Amount,
        /// Feerate, sat/vB (default: the node's `default_fee_rate_sat_per_vb`).
        #[arg(long)]
        fee_rate: Option<u64>,
    },
    /// On-chain transactions, newest first.
    History,
}

#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// Print the seed words.
    #[arg(long)]
    show: bool,
    /// Confirms that you know the words give full control of the node's funds.
    #[arg(long = SHOW_SEED_CONFIRMATION)]
    confirmed: bool,
}

/// Runs a wallet command and returns what to print.
pub async fn execute(args: WalletArgs) -> Result<String> {
    let out = args.output;
    match args.command {
        WalletCommand::Seed(seed) => show_seed(&args.node, &seed),
        WalletCommand::Balance { sync } => {
            let client = args.node.client()?;
            if sync {
                client
                    .post::<serde_json::Value>("/admin/v1/sync", &json!({}))
                    .await?;
            }
            let v: serde_json::Value = client.get("/admin/v1/wallet/balance").await?;
            if out.json {
                return Ok(out.render(&v, |_| String::new()));
            }
            Ok(balance_text(&serde_json::from_value(v)?))
        }
        WalletCommand::Address => {
            let v: serde_json::Value = args.node.client()?.get("/admin/v1/wallet/address").await?;
            if out.json {
                return Ok(out.render(&v, |_| String::new()));
            }
            let a: AddressView = serde_json::from_value(v)?;
            Ok(a.address)
        }
        WalletCommand::Send {
            address,
            amount,
            fee_rate,
        } => {
            let body = json!({
                "address": address,
                "amount_sat": amount.sat()?,
                "fee_rate_sat_per_vb": fee_rate,
            });
            let v: serde_json::Value = args
                .node
                .client()?
                .post("/admin/v1/wallet/send", &body)
                .await?;
            if out.json {
                return Ok(out.render(&v, |_| String::new()));
            }
            let sent: Sent = serde_json::from_value(v)?;
            Ok(format!("sent: txid {}", sent.txid))
        }
        WalletCommand::History => {
            let v: serde_json::Value = args
                .node
                .client()?
                .get("/admin/v1/wallet/transactions")
                .await?;
            if out.json {
                return Ok(out.render(&v, |_| String::new()));
            }
            history_text(&serde_json::from_value::<Vec<TxView>>(v)?)
        }
    }
}

/// `cairn wallet …` for the binary: prints the output.
pub async fn run_wallet(args: WalletArgs) -> Result<()> {
    outln!("{}", execute(args).await?)?;
    Ok(())
}

fn show_seed(node: &AdminArgs, args: &SeedArgs) -> Result<String> {
    let settings = node.settings()?;
    let path = seed_path(&settings.data_dir);
    if !path.exists() {
        bail!(
            "no seed at {}: the node creates it on its first start with payments or identity enabled",
            path.display()
        );
    }
    if !args.show {
        return Ok(format!(
            "seed file: {}\nTo print its words: cairn wallet seed --show --{SHOW_SEED_CONFIRMATION}",
            path.display()
        ));
    }
    if !args.confirmed {
        bail!(
            "refusing to print the seed: anyone who sees these words controls the node's funds. \
             Add --{SHOW_SEED_CONFIRMATION} if you really want them on this screen."
        );
    }
    // Load through the library first: it refuses a file others can read and
    // one that does not hold a valid mnemonic.
    Seed::load(&path).with_context(|| format!("reading {}", path.display()))?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mnemonic = bip39::Mnemonic::parse_normalized(text.trim())
        .with_context(|| format!("{} does not hold a BIP39 mnemonic", path.display()))?;
    let mut out = String::from(
        "Write these words down, in order, and keep them offline. They restore the\n\
         on-chain wallet, the Lightning node's keys and the identity anchor chain.\n\n",
    );
    for (i, word) in mnemonic.words().enumerate() {
        out.push_str(&format!("{:>2}. {word}\n", i + 1));
    }
    Ok(out.trim_end().to_owned())
}

#[derive(Deserialize)]
struct AddressView {
    address: String,
}

#[derive(Deserialize)]
struct Sent {
    txid: String,
}

/// `GET /admin/v1/wallet/balance`.
#[derive(Debug, Deserialize)]
pub struct BalanceView {
    /// The on-chain wallet.
    pub onchain: OnchainBalance,
    /// The Lightning node.
    pub lightning: LightningBalance,
}

/// On-chain part of [`BalanceView`].
#[derive(Debug, Deserialize)]
pub struct OnchainBalance {
    /// Confirmed.
    pub confirmed_sat: u64,
    /// Unconfirmed or immature.
    pub pending_sat: u64,
}

/// Lightning part of [`BalanceView`].
#[derive(Debug, Deserialize)]
pub struct LightningBalance {
    /// In channels.
    pub spendable_sat: u64,
    /// In the Lightning node's own on-chain wallet.
    pub total_onchain_sat: u64,
}

fn balance_text(b: &BalanceView) -> String {
    format!(
        "on-chain:  {} sat confirmed, {} sat pending\n\
         lightning: {} sat in channels, {} sat in its on-chain wallet",
        b.onchain.confirmed_sat,
        b.onchain.pending_sat,
        b.lightning.spendable_sat,
        b.lightning.total_onchain_sat
    )
}

#[derive(Deserialize)]
struct TxView {
    txid: String,
    received_sat: u64,
    sent_sat: u64,
    fee_sat: Option<u64>,
    confirmation_height: Option<u32>,
}

fn history_text(txs: &[TxView]) -> Result<String> {
    if txs.is_empty() {
        return Ok("no transactions".to_owned());
    }
    let lines: Vec<String> = txs
        .iter()
        .map(|t| {
            let net = t.received_sat as i128 - t.sent_sat as i128;
            let at = t
                .confirmation_height
                .map_or_else(|| "unconfirmed".to_owned(), |h| format!("block {h}"));
            let fee = t
                .fee_sat
                .map(|f| format!(", fee {f} sat"))
                .unwrap_or_default();
            format!("{}  {net:+} sat  {at}{fee}", t.txid)
        })
        .collect();
    Ok(lines.join("\n"))
}
