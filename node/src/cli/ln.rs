//! `cairn ln info|channels|open|close|invoice|pay|offer|pay-offer`: the
//! node's Lightning node, through the admin API (docs/admin-api.md).

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::support::admin::{AdminArgs, AdminClient};
use crate::cli::support::amounts::{parse_duration_secs, Amount};
use crate::cli::support::output::outln;

/// `cairn ln …`
#[derive(Debug, clap::Args)]
pub struct LnArgs {
    #[command(flatten)]
    node: AdminArgs,
    #[command(subcommand)]
    command: LnCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LnCommand {
    /// Node id and listening address (what a peer needs to open a channel).
    Info,
    /// A fresh address of the Lightning node's on-chain wallet, which funds channels.
    FundingAddress,
    /// The node's channels.
    Channels,
    /// Open a private channel of AMOUNT to NODE_ID at ADDRESS (host:port).
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

/// Runs a Lightning command and returns what to print.
pub async fn execute(args: LnArgs) -> Result<String> {
    let client = args.node.client()?;
    Ok(match args.command {
        LnCommand::Info => {
            let v: Value = client.get("/admin/v1/lightning/info").await?;
            format!(
                "node id:   {}\nlistening: {}\nnetwork:   {}\nchannels:  {}",
                v["node_id"].as_str().unwrap_or("?"),
                v["listening_address"].as_str().unwrap_or("-"),
                v["network"].as_str().unwrap_or("?"),
                v["channels"]
            )
        }
        LnCommand::FundingAddress => {
            let v: Value = client.get("/admin/v1/lightning/funding-address").await?;
            v["address"].as_str().unwrap_or_default().to_owned()
        }
        LnCommand::Channels => {
            let list: Vec<Value> = client.get("/admin/v1/lightning/channels").await?;
            if list.is_empty() {
                "no channels".to_owned()
            } else {
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
            format!(
                "opening: user_channel_id {} (usable after 6 confirmations)",
                v["user_channel_id"].as_str().unwrap_or("?")
            )
        }
        LnCommand::Close {
            user_channel_id,
            force,
        } => {
            let _: Value = client
                .post(
                    &format!("/admin/v1/lightning/channels/{user_channel_id}/close"),
                    &json!({ "force": force }),
                )
                .await?;
            if force {
                format!("force-closing {user_channel_id}")
            } else {
                format!("closing {user_channel_id}")
            }
        }
        LnCommand::Invoice {
            amount,
            description,
            expiry,
        } => {
            let expiry_secs = expiry.as_deref().map(parse_duration_secs).transpose()?;
            let expiry_secs = match expiry_secs {
                Some(s) if s > u32::MAX as u64 => bail!("expiry too long"),
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
            v["invoice"].as_str().unwrap_or_default().to_owned()
        }
        LnCommand::Pay { invoice, amount } => {
            render_outcome(&pay_invoice(&client, &invoice, amount.map(|a| a.msat)).await?)
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
            v["offer"].as_str().unwrap_or_default().to_owned()
        }
        LnCommand::PayOffer {
            offer,
            amount,
            note,
        } => {
            let o: PayOutcome = client
                .post(
                    "/admin/v1/lightning/pay-offer",
                    &json!({
                        "offer": offer,
                        "amount_msat": amount.map(|a| a.msat),
                        "payer_note": note,
                    }),
                )
                .await?;
            render_outcome(&o)
        }
        LnCommand::Payments { payment_hash } => match payment_hash {
            Some(h) => pretty(
                &client
                    .get::<Value>(&format!("/admin/v1/lightning/payments/{h}"))
                    .await?,
            ),
            None => pretty(&client.get::<Value>("/admin/v1/lightning/payments").await?),
        },
    })
}

/// `cairn ln …` for the binary: prints the output.
pub async fn run_ln(args: LnArgs) -> Result<()> {
    outln!("{}", execute(args).await?)?;
    Ok(())
}
