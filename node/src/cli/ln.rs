//! `cairn ln info|funding-address|withdraw|channels|open|close|invoice|pay|offer|pay-offer|payments`:
//! the node's Lightning node, through the admin API (docs/admin-api.md).
//!
//! Every command prints text; with `--json` (shared with `cairn wallet`) it
//! prints the admin API's answer instead, for scripts.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::support::admin::{AdminArgs, AdminClient, AdminError};
use crate::cli::support::amounts::{parse_duration_secs, Amount};
use crate::cli::support::output::outln;
use crate::cli::support::time::format_unix;

/// `cairn ln …`
#[derive(Debug, clap::Args)]
pub struct LnArgs {
    #[command(flatten)]
    node: AdminArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(subcommand)]
    command: LnCommand,
}

/// `--json`: print the admin API's answer (JSON) instead of text. Shared by
/// `cairn ln` and `cairn wallet`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Print the node's answer as JSON, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

impl OutputArgs {
    /// `text()` normally; the API answer `v`, pretty-printed, with `--json`.
    pub fn render(&self, v: &Value, text: impl FnOnce(&Value) -> String) -> String {
        if self.json {
            pretty(v)
        } else {
            text(v)
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum LnCommand {
    /// Node id and listening address (what a peer needs to open a channel).
    Info,
    /// A fresh address of the Lightning node's on-chain wallet, which funds
    /// channels (send coins here before `cairn ln open`).
    FundingAddress,
    /// Send AMOUNT (or --all) from the Lightning node's on-chain wallet, where
    /// channel closes pay out, to ADDRESS.
    Withdraw {
        /// The recipient's address.
        address: String,
        /// The amount, e.g. 50000sat (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        amount: Option<Amount>,
        /// Everything spendable, minus the fee (the reserve open channels
        /// need stays).
        #[arg(long)]
        all: bool,
        /// Feerate, sat/vB (default: the chain source's estimate).
        #[arg(long)]
        fee_rate: Option<u64>,
    },
    /// The node's channels.
    Channels,
    /// Open a private channel of AMOUNT to NODE_ID at ADDRESS (host:port),
    /// funded from the Lightning node's on-chain wallet (`cairn ln funding-address`).
    Open {
        /// The peer's node id (66 hex digits).
        node_id: String,
        /// The peer's address, host:port.
        address: String,
        /// Channel size, e.g. 400000sat.
        amount: Amount,
        /// Give the peer this much on open, e.g. 1000sat.
        #[arg(long)]
        push: Option<Amount>,
    },
    /// Close a channel cooperatively, or with --force unilaterally (the funds
    /// come back after the timelock).
    Close {
        /// The channel's user_channel_id (from `cairn ln channels`).
        user_channel_id: String,
        /// Force-close.
        #[arg(long)]
        force: bool,
    },
    /// A BOLT11 invoice.
    Invoice {
        /// The amount, e.g. 5000sat (omit: the payer chooses).
        amount: Option<Amount>,
        /// What it is for.
        #[arg(long, short, default_value = "")]
        description: String,
        /// Validity, e.g. 1h or 30m (default 1h).
        #[arg(long)]
        expiry: Option<String>,
    },
    /// Pay a BOLT11 invoice (waits up to 60 s for the outcome).
    Pay {
        /// The invoice.
        invoice: String,
        /// The amount, for an invoice without one.
        #[arg(long)]
        amount: Option<Amount>,
    },
    /// A BOLT12 offer.
    Offer {
        /// The amount, e.g. 5000sat (omit: the payer chooses).
        amount: Option<Amount>,
        /// What it is for.
        #[arg(long, short, default_value = "")]
        description: String,
    },
    /// Pay a BOLT12 offer (waits up to 60 s for the outcome).
    PayOffer {
        /// The offer (lno1…).
        offer: String,
        /// The amount, for an offer without one.
        #[arg(long)]
        amount: Option<Amount>,
        /// A note for the recipient.
        #[arg(long)]
        note: Option<String>,
    },
    /// Payments, or one payment by its hash.
    Payments {
        /// A payment hash (64 hex digits).
        payment_hash: Option<String>,
    },
}

/// `POST /admin/v1/lightning/pay` answer (200 or 202).
#[derive(Debug, Clone, Deserialize)]
pub struct PayOutcome {
    /// The payment hash, hex.
    pub payment_hash: String,
    /// `succeeded` or `pending`.
    pub status: String,
    /// The preimage (the proof of payment), once succeeded.
    #[serde(default)]
    pub preimage: Option<String>,
    /// Routing fee paid, once succeeded.
    #[serde(default)]
    pub fee_msat: Option<u64>,
}

/// Pays a BOLT11 invoice through the node; shared by `cairn ln pay` and
/// other commands that pay (e.g. messages with a payment).
pub async fn pay_invoice(
    client: &AdminClient,
    invoice: &str,
    amount_msat: Option<u64>,
) -> Result<PayOutcome> {
    client
        .post(
            "/admin/v1/lightning/pay",
            &json!({ "invoice": invoice, "amount_msat": amount_msat }),
        )
        .await
}

fn render_outcome(o: &PayOutcome) -> String {
    match (o.status.as_str(), &o.preimage) {
        ("succeeded", Some(preimage)) => format!(
            "paid: payment hash {}\npreimage {preimage}\nfee {} msat",
            o.payment_hash,
            o.fee_msat.unwrap_or(0)
        ),
        _ => format!(
            "payment {} is still pending; check it with `cairn ln payments {}`",
            o.payment_hash, o.payment_hash
        ),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Millisatoshis as text: whole satoshis as `N sat`, others as `N msat`.
fn msat_text(msat: u64) -> String {
    if msat % 1_000 == 0 {
        format!("{} sat", msat / 1_000)
    } else {
        format!("{msat} msat")
    }
}

/// One payment object of `GET /admin/v1/lightning/payments` as a line.
fn payment_line(p: &Value) -> String {
    let arrow = if p["direction"] == "inbound" {
        "in "
    } else {
        "out"
    };
    let amount = p["amount_msat"]
        .as_u64()
        .map_or_else(|| "any amount".to_owned(), msat_text);
    let fee = p["fee_msat"]
        .as_u64()
        .filter(|f| *f > 0)
        .map(|f| format!(", fee {}", msat_text(f)))
        .unwrap_or_default();
    let at = p["updated_at"]
        .as_u64()
        .map(format_unix)
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "{at}  {arrow} {:<9} {:<12} {amount}{fee}  {}",
        p["status"].as_str().unwrap_or("?"),
        p["kind"].as_str().unwrap_or("?"),
        p["payment_hash"]
            .as_str()
            .or(p["payment_id"].as_str())
            .unwrap_or("?"),
    )
}

/// One payment in full.
fn payment_text(p: &Value) -> String {
    let mut out = payment_line(p);
    if let Some(preimage) = p["preimage"].as_str() {
        out.push_str(&format!("\npreimage {preimage}"));
    }
    out
}

fn channels_text(list: &Value) -> String {
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return "no channels".to_owned();
    }
    list.iter()
        .map(|c| {
            format!(
                "{}  peer {}  {} sat  out {} msat / in {} msat  {}",
                c["user_channel_id"].as_str().unwrap_or("?"),
                c["counterparty_node_id"].as_str().unwrap_or("?"),
                c["channel_value_sat"],
                c["outbound_capacity_msat"],
                c["inbound_capacity_msat"],
                if c["is_usable"] == true {
                    "usable"
                } else if c["is_channel_ready"] == true {
                    "ready"
                } else {
                    "pending"
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a Lightning command and returns what to print.
pub async fn execute(args: LnArgs) -> Result<String> {
    let client = args.node.client()?;
    let out = args.output;
    Ok(match args.command {
        LnCommand::Info => {
            let v: Value = client.get("/admin/v1/lightning/info").await?;
            out.render(&v, |v| {
                format!(
                    "node id:   {}\nlistening: {}\nnetwork:   {}\nchannels:  {}",
                    v["node_id"].as_str().unwrap_or("?"),
                    v["listening_address"].as_str().unwrap_or("-"),
                    v["network"].as_str().unwrap_or("?"),
                    v["channels"]
                )
            })
        }
        LnCommand::FundingAddress => {
            let v: Value = client.get("/admin/v1/lightning/funding-address").await?;
            out.render(&v, |v| v["address"].as_str().unwrap_or_default().to_owned())
        }
        LnCommand::Withdraw {
            address,
            amount,
            all,
            fee_rate,
        } => {
            let v: Value = client
                .post(
                    "/admin/v1/lightning/withdraw",
                    &json!({
                        "address": address,
                        "amount_sat": amount.map(|a| a.sat()).transpose()?,
                        "all": all,
                        "fee_rate_sat_per_vb": fee_rate,
                    }),
                )
                .await?;
            out.render(&v, |v| {
                format!("sent: txid {}", v["txid"].as_str().unwrap_or("?"))
            })
        }
        LnCommand::Channels => {
            let v: Value = client.get("/admin/v1/lightning/channels").await?;
            out.render(&v, channels_text)
        }
        LnCommand::Open {
            node_id,
            address,
            amount,
            push,
        } => {
            let v: Value = client
                .post(
                    "/admin/v1/lightning/channels",
                    &json!({
                        "node_id": node_id,
                        "address": address,
                        "amount_sat": amount.sat()?,
                        "push_msat": push.map(|p| p.msat),
                    }),
                )
                .await?;
            out.render(&v, |v| {
                let mut text = format!(
                    "opening: user_channel_id {} (usable after 6 confirmations)",
                    v["user_channel_id"].as_str().unwrap_or("?")
                );
                if let Some(note) = v["note"].as_str() {
                    text.push_str(&format!("\nnote: {note}"));
                }
                text
            })
        }
        LnCommand::Close {
            user_channel_id,
            force,
        } => {
            let v: Value = client
                .post(
                    &format!("/admin/v1/lightning/channels/{user_channel_id}/close"),
                    &json!({ "force": force }),
                )
                .await?;
            out.render(&v, |_| {
                if force {
                    format!("force-closing {user_channel_id}")
                } else {
                    format!("closing {user_channel_id}")
                }
            })
        }
        LnCommand::Invoice {
            amount,
            description,
            expiry,
        } => {
            let expiry_secs = expiry.as_deref().map(parse_duration_secs).transpose()?;
            let expiry_secs = match expiry_secs {
                Some(s) if s > u32::MAX as u64 => bail!("--expiry is too long"),
                s => s.map(|s| s as u32),
            };
            let v: Value = client
                .post(
                    "/admin/v1/lightning/invoices",
                    &json!({
                        "amount_msat": amount.map(|a| a.msat),
                        "description": description,
                        "expiry_secs": expiry_secs,
                    }),
                )
                .await?;
            out.render(&v, |v| v["invoice"].as_str().unwrap_or_default().to_owned())
        }
        LnCommand::Pay { invoice, amount } => {
            let v: Value = client
                .post(
                    "/admin/v1/lightning/pay",
                    &json!({ "invoice": invoice, "amount_msat": amount.map(|a| a.msat) }),
                )
                .await
                .map_err(with_cli_names)?;
            outcome_text(out, &v)?
        }
        LnCommand::Offer {
            amount,
            description,
        } => {
            let v: Value = client
                .post(
                    "/admin/v1/lightning/offers",
                    &json!({ "amount_msat": amount.map(|a| a.msat), "description": description }),
                )
                .await?;
            out.render(&v, |v| v["offer"].as_str().unwrap_or_default().to_owned())
        }
        LnCommand::PayOffer {
            offer,
            amount,
            note,
        } => {
            let v: Value = client
                .post(
                    "/admin/v1/lightning/pay-offer",
                    &json!({
                        "offer": offer,
                        "amount_msat": amount.map(|a| a.msat),
                        "payer_note": note,
                    }),
                )
                .await
                .map_err(with_cli_names)?;
            outcome_text(out, &v)?
        }
        LnCommand::Payments { payment_hash } => match payment_hash {
            Some(h) => {
                let v: Value = client
                    .get(&format!("/admin/v1/lightning/payments/{}", h.trim()))
                    .await?;
                out.render(&v, payment_text)
            }
            None => {
                let v: Value = client.get("/admin/v1/lightning/payments").await?;
                out.render(&v, |v| {
                    let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
                    if list.is_empty() {
                        "no payments".to_owned()
                    } else {
                        list.iter().map(payment_line).collect::<Vec<_>>().join("\n")
                    }
                })
            }
        },
    })
}

/// The answer of `pay` / `pay-offer` as text (or JSON).
fn outcome_text(out: OutputArgs, v: &Value) -> Result<String> {
    if out.json {
        return Ok(pretty(v));
    }
    Ok(render_outcome(&serde_json::from_value(v.clone())?))
}

/// The node's refusal of a payment, in the CLI's terms: where it speaks of
/// "the amount" to give, the flag is `--amount`.
fn with_cli_names(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<AdminError>() {
        Some(a) if a.message.contains("the invoice has no amount") => {
            anyhow::anyhow!("{}: give it with --amount", a.message)
        }
        _ => e,
    }
}

/// `cairn ln …` for the binary: prints the output.
pub async fn run_ln(args: LnArgs) -> Result<()> {
    outln!("{}", execute(args).await?)?;
    Ok(())
}
