//! `cairn nwc new|list|revoke`: Nostr Wallet Connect connections of the
//! node's wallet, through the admin API (docs/admin-api.md).
//!
//! `new` prints the `nostr+walletconnect://` URI once: it holds the app's
//! secret, so paste it into the app and nowhere else.

use anyhow::Result;
use serde::Deserialize;
use serde_json::json;

use crate::cli::support::admin::AdminArgs;
use crate::cli::support::amounts::{parse_duration_secs, Amount, Budget};
use crate::cli::support::output::outln;
use crate::cli::support::time::format_unix;

/// Permissions given when `--permissions` is not.
pub const DEFAULT_PERMISSIONS: &str = "pay_invoice,get_balance,get_info";

/// `cairn nwc …`
#[derive(Debug, clap::Args)]
pub struct NwcArgs {
    #[command(flatten)]
    node: AdminArgs,
    #[command(subcommand)]
    command: NwcCommand,
}

#[derive(Debug, clap::Subcommand)]
enum NwcCommand {
    /// Create a connection and print its nostr+walletconnect:// URI.
    New(NewArgs),
    /// The connections (without their secrets).
    List,
    /// Revoke a connection: its app can no longer use the wallet.
    Revoke {
        /// The connection's id (from `cairn nwc list`).
        id: i64,
    },
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// A name for the app, e.g. "Damus on my phone".
    #[arg(long)]
    name: String,
    /// Spending budget and renewal, e.g. 10000sat/month (periods: daily,
    /// weekly, monthly, yearly, never). Default: no budget.
    #[arg(long)]
    budget: Option<Budget>,
    /// Largest single payment, e.g. 2000sat.
    #[arg(long)]
    max: Option<Amount>,
    /// Allowed methods, comma-separated: pay_invoice, make_invoice,
    /// lookup_invoice, list_transactions, get_balance, get_info.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_PERMISSIONS)]
    permissions: Vec<String>,
    /// Lifetime, e.g. 30d or 12h. Default: until revoked.
    #[arg(long)]
    expires: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    id: i64,
    uri: String,
}

#[derive(Deserialize)]
struct ConnectionView {
    id: i64,
    name: String,
    permissions: Vec<String>,
    budget_sat: Option<u64>,
    budget_period: String,
    spent_sat: Option<u64>,
    max_payment_sat: Option<u64>,
    expires_at: Option<u64>,
    revoked: bool,
}

/// Runs an NWC command and returns what to print.
pub async fn execute(args: NwcArgs) -> Result<String> {
    let client = args.node.client()?;
    match args.command {
        NwcCommand::New(new) => {
            let expires_in_secs = new
                .expires
                .as_deref()
                .map(parse_duration_secs)
                .transpose()?;
            let body = json!({
                "name": new.name,
                "budget_sat": new.budget.map(|b| b.sat),
                "budget_period": new.budget.map(|b| b.period.as_str()),
                "max_payment_sat": new.max.map(|m| m.sat()).transpose()?,
                "permissions": new
                    .permissions
                    .iter()
                    .map(|p| p.trim())
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>(),
                "expires_in_secs": expires_in_secs,
            });
            let c: Created = client.post("/admin/v1/nwc/connections", &body).await?;
            Ok(format!(
                "connection {} created. Paste this URI into the app (it is shown only now):\n{}",
                c.id, c.uri
            ))
        }
        NwcCommand::List => {
            let list: Vec<ConnectionView> = client.get("/admin/v1/nwc/connections").await?;
            if list.is_empty() {
                return Ok("no connections".to_owned());
            }
            Ok(list
                .iter()
                .map(|c| {
                    let budget = match c.budget_sat {
                        Some(b) => format!(
                            "budget {}/{b} sat {}",
                            c.spent_sat.unwrap_or(0),
                            c.budget_period
                        ),
                        None => "no budget".to_owned(),
                    };
                    let max = c
                        .max_payment_sat
                        .map(|m| format!(", max {m} sat"))
                        .unwrap_or_default();
                    let state = if c.revoked {
                        " REVOKED".to_owned()
                    } else {
                        c.expires_at
                            .map(|e| format!(", expires {}", format_unix(e)))
                            .unwrap_or_default()
                    };
                    format!(
                        "{}  {}  [{}]  {budget}{max}{state}",
                        c.id,
                        c.name,
                        c.permissions.join(",")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        NwcCommand::Revoke { id } => {
            client
                .delete(&format!("/admin/v1/nwc/connections/{id}"))
                .await?;
            Ok(format!("connection {id} revoked"))
        }
    }
}

/// `cairn nwc …` for the binary: prints the output.
pub async fn run_nwc(args: NwcArgs) -> Result<()> {
    outln!("{}", execute(args).await?)?;
    Ok(())
}
