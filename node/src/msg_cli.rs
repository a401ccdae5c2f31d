//! `cairn msg send|inbox`: the node as its user's messaging client, with
//! payments alongside messages (docs/payments-in-messages.md).
//!
//! `send` resolves `@handle` through a Cairn node's identity registry and
//! verifies the binding against the user's own chain view (the same code as
//! `cairn verify`), pays the handle's LNURL-pay invoice (or an on-chain
//! address its node gives) through the user's own node admin API, and sends a
//! NIP-17 private message whose rumor carries the `payment` and `receipt`
//! tags of [`cairn_payments::message_payment`].
//!
//! `inbox` AUTHs to the relay (NIP-42), fetches the user's gift wraps,
//! unwraps them and checks each payment against the user's own node: a
//! payment is shown as paid only when the node received it.
//!
//! Every step is a library function so tests drive the same code as the binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::{Address, Network, Txid};
use cairn_bitcoin::{ChainError, RpcClient, RpcConfig};
use cairn_identity::binding::Status;
use cairn_identity::bundle::{VerifiedIdentity, DEFAULT_MIN_CONFIRMATIONS};
use cairn_identity::service::Standing;
use cairn_payments::message_payment::{
    check_description_hash, check_lnurl_invoice, check_preimage, parse_preimage, LightningLookup,
    LightningState, MessagePayment, MessagePaymentError, NodeReport, OnchainRequest,
    PaymentRequest, Receipt, TxOutputs, Verification, WalletTxLookup, LIGHTNING, ONCHAIN,
    PAYMENT_TAG, RECEIPT_TAG,
};
use nostr::nips::nip59::UnwrappedGift;
use nostr::{
    Event, EventBuilder, EventId, Filter, Keys, Kind, PublicKey, Timestamp, UnsignedEvent,
};
use nostr_sdk::{Client, ClientOptions, RelayUrl};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin_client::{AdminArgs, AdminClient, AdminError};
use crate::cli::{
    load_keys, npub, parse_checkpoint, rpc_credentials, status_label, verify_subject, ChainSource,
    KeyArgs, NodeClient, Subject, VerifyOptions,
};
use crate::cli_amounts::Amount;
use crate::msg_claims::{Claim, ClaimOutcome, ClaimStore, CLAIMS_FILE};
use crate::server::redact_url;
use crate::settings::Settings;

/// Bound on each HTTP request (LNURL, the payee's node).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on connecting to, publishing to and fetching from relays.
const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most gift wraps one `inbox` fetches from each relay.
pub const DEFAULT_INBOX_LIMIT: usize = 500;

// ---------------------------------------------------------------------------
// Command-line arguments.

/// `cairn msg …`
#[derive(Debug, clap::Args)]
pub struct MsgArgs {
    #[command(subcommand)]
    command: MsgCommand,
}

#[derive(Debug, clap::Subcommand)]
enum MsgCommand {
    /// Send a private message (NIP-17), optionally with a payment.
    ///
    /// `cairn msg send @alice "lunch" --pay 5000sat` verifies @alice's binding
    /// against your chain view, pays the name's LNURL-pay invoice through your
    /// node and sends the message with the invoice and the preimage as
    /// receipt. With --onchain it pays an address from the payee's node.
    Send(Box<SendArgs>),
    /// Show your private messages, with each payment verified against your node.
    Inbox(InboxArgs),
}

/// Your own node: its settings (chain view, relay) and admin API (payments).
#[derive(Debug, Clone, clap::Args)]
pub struct OwnNodeArgs {
    /// Your node's TOML config file (default: ./cairn.toml if it exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Your node's data directory (holds admin.token).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Your node's admin API URL (default: http://<bind> from its settings).
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// File holding your node's admin token (default: <data_dir>/admin.token).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl OwnNodeArgs {
    fn admin(&self) -> AdminArgs {
        AdminArgs {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            node: self.admin_url.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

/// The chain view used to verify a handle's binding; defaults to your node's
/// `[bitcoin]` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ChainArgs {
    /// Bitcoin Core RPC URL (default: [bitcoin] rpc_url of your node).
    #[arg(long, value_name = "URL")]
    pub rpc_url: Option<String>,
    /// RPC user (with --rpc-password-file).
    #[arg(long, value_name = "USER", requires = "rpc_password_file")]
    pub rpc_user: Option<String>,
    /// File holding the RPC password (with --rpc-user).
    #[arg(long, value_name = "FILE", requires = "rpc_user")]
    pub rpc_password_file: Option<PathBuf>,
    /// Bitcoin Core's .cookie file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rpc_user", "rpc_password_file"])]
    pub rpc_cookie_file: Option<PathBuf>,
    /// A headers file instead of an RPC (see `cairn identity headers`).
    #[arg(long, value_name = "FILE", conflicts_with = "rpc_url")]
    pub headers: Option<PathBuf>,
    /// The headers file starts at this trusted block.
    #[arg(long, value_name = "HEIGHT:HASH", requires = "headers")]
    pub checkpoint: Option<String>,
    /// Bitcoin network (default: [bitcoin] network of your node).
    #[arg(long)]
    pub network: Option<String>,
    /// Confirmations the binding's anchor needs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_CONFIRMATIONS)]
    pub min_confirmations: u32,
    /// Accept only attestations from this witness key (repeatable).
    #[arg(long = "witness", value_name = "PUBKEY")]
    pub witnesses: Vec<String>,
}

impl ChainArgs {
    /// The verification options: flags first, else `settings.bitcoin`.
    pub fn options(&self, settings: &Settings) -> Result<VerifyOptions> {
        let network = match &self.network {
            Some(n) => Network::from_str(n).map_err(|_| anyhow!("unknown network `{n}`"))?,
            None => settings.bitcoin.network.into(),
        };
        let chain = match (&self.headers, &self.rpc_url) {
            (Some(path), _) => ChainSource::HeadersFile {
                path: path.clone(),
                checkpoint: self
                    .checkpoint
                    .as_deref()
                    .map(parse_checkpoint)
                    .transpose()?,
            },
            (None, Some(url)) => {
                let (user, password) = rpc_credentials(
                    &self.rpc_user,
                    &self.rpc_password_file,
                    &self.rpc_cookie_file,
                )?;
                ChainSource::Rpc {
                    url: url.clone(),
                    user,
                    password,
                }
            }
            (None, None) => ChainSource::Rpc {
                url: settings.bitcoin.rpc_url.clone(),
                user: settings.bitcoin.rpc_user.clone(),
                password: settings.bitcoin.rpc_password.clone(),
            },
        };
        let trusted_witnesses = self
            .witnesses
            .iter()
            .map(|w| PublicKey::parse(w).map_err(|_| anyhow!("--witness `{w}` is not a key")))
            .collect::<Result<_>>()?;
        Ok(VerifyOptions {
            chain,
            network,
            min_confirmations: self.min_confirmations,
            trusted_witnesses,
        })
    }
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The recipient: an X handle (@alice), checked against its proof bundle.
    recipient: String,
    /// The message.
    text: String,
    /// Pay this much with the message, e.g. 5000sat (Lightning, LNURL-pay of the handle).
    #[arg(long, value_name = "AMOUNT")]
    pay: Option<Amount>,
    /// Pay on-chain, to an address the recipient's node gives, instead of Lightning.
    #[arg(long, requires = "pay")]
    onchain: bool,
    /// Send with a payment already made instead of paying (e.g. after a
    /// `msg send` that paid but could not deliver): `preimage:<hex>` with
    /// --invoice, or `txid:<txid>` with --bip21. Nothing is paid.
    #[arg(long, value_name = "preimage:HEX|txid:TXID", conflicts_with = "pay")]
    receipt: Option<String>,
    /// The paid BOLT11 invoice (with --receipt preimage:…).
    #[arg(
        long,
        value_name = "BOLT11",
        requires = "receipt",
        conflicts_with = "bip21"
    )]
    invoice: Option<String>,
    /// The paid BIP21 URI (with --receipt txid:…).
    #[arg(long, value_name = "URI", requires = "receipt")]
    bip21: Option<String>,
    /// The recipient's key (npub or hex). Needed when the handle's binding
    /// does not verify; must equal the bound key when it does.
    #[arg(long, value_name = "NPUB")]
    to: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
    /// The Cairn node that resolves the handle, serves its LNURL-pay and
    /// relays the message when the recipient lists no inbox relays
    /// (default: your node).
    #[arg(long, value_name = "URL")]
    node: Option<String>,
    #[command(flatten)]
    own: OwnNodeArgs,
    #[command(flatten)]
    chain: ChainArgs,
}

#[derive(Debug, clap::Args)]
struct InboxArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The relay to read from, as the Cairn node's URL (default: your node).
    #[arg(long, value_name = "URL")]
    node: Option<String>,
    #[command(flatten)]
    own: OwnNodeArgs,
    /// Most gift wraps to fetch from each relay.
    #[arg(long, default_value_t = DEFAULT_INBOX_LIMIT)]
    limit: usize,
    /// Your LNURL-pay name (repeatable; default: [zaps] names of your node).
    /// Only invoices of these names' LNURL-pay prove a Lightning payment.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
}

/// Runs `cairn msg …`, printing to stdout.
pub async fn run_msg(args: MsgArgs) -> Result<()> {
    match args.command {
        MsgCommand::Send(a) => {
            let keys = load_keys(a.key.key_file.as_deref())?;
            let admin_args = a.own.admin();
            let settings = admin_args.settings()?;
            let node_url = a
                .node
                .clone()
                .unwrap_or_else(|| crate::admin_client::local_base_url(settings.bind));
            let payment = a.pay.map(|amount| PayRequest {
                amount_msat: amount.msat,
                onchain: a.onchain,
            });
            let to =
                a.to.as_deref()
                    .map(|t| PublicKey::parse(t).map_err(|_| anyhow!("--to `{t}` is not a key")))
                    .transpose()?;
            let existing = a
                .receipt
                .as_deref()
                .map(|r| existing_payment(r, a.invoice.as_deref(), a.bip21.as_deref()))
                .transpose()?;
            let request = SendRequest {
                recipient: a.recipient,
                text: a.text,
                to,
                payment,
                existing,
            };
            let ctx = SendContext {
                keys,
                node_url,
                verify: a.chain.options(&settings)?,
                // Only paying needs the node's admin API.
                admin: match request.payment {
                    Some(_) => Some(admin_args.client()?),
                    None => None,
                },
                own_relay: Some(own_relay_url(&settings)),
            };
            let sent = send(&ctx, &request).await?;
            println!("{}", render_sent(&sent));
        }
        MsgCommand::Inbox(a) => {
            let keys = load_keys(a.key.key_file.as_deref())?;
            let admin_args = a.own.admin();
            let settings = admin_args.settings()?;
            let relay = match &a.node {
                Some(url) => ws_url(url)?,
                None => own_relay_url(&settings),
            };
            let relays = reading_relays(&keys, &relay).await;
            let names = if a.names.is_empty() {
                settings.zaps.names.clone()
            } else {
                a.names.clone()
            };
            let lnurl_base = match &a.node {
                Some(url) => http_url(url)?,
                None => crate::admin_client::local_base_url(settings.bind),
            };
            let lnurl_metadata = lnurl_metadata(&http_client()?, &lnurl_base, &names).await;
            let admin = admin_args.client();
            let (admin, why) = match admin {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            let ctx = InboxContext {
                keys,
                relays,
                admin,
                admin_unavailable: why,
                network: settings.bitcoin.network.into(),
                limit: a.limit,
                bitcoin: (!settings.bitcoin.rpc_user.is_empty())
                    .then(|| BitcoinRpc::from_settings(&settings)),
                lnurl_metadata,
                claims_file: Some(settings.data_dir.join(CLAIMS_FILE)),
            };
            let messages = inbox(&ctx).await?;
            println!("{}", render_inbox(&messages, &ctx.keys.public_key()));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Sending.

/// What `send` needs besides the request.
#[derive(Debug, Clone)]
pub struct SendContext {
    /// The sender's keys.
    pub keys: Keys,
    /// The Cairn node resolving the handle and serving its LNURL-pay (`http(s)://…`).
    pub node_url: String,
    /// How to verify the handle's binding (chain view, network, confirmations).
    pub verify: VerifyOptions,
    /// The sender's own node, which pays.
    pub admin: Option<AdminClient>,
    /// The sender's own relay, for the copy to self when the sender lists no inbox relays.
    pub own_relay: Option<String>,
}

/// A payment to make with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayRequest {
    /// The amount, in millisatoshis (whole satoshis on-chain).
    pub amount_msat: u64,
    /// On-chain instead of Lightning.
    pub onchain: bool,
}

/// One `msg send`.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// `@handle` (or a key, which then needs no verification but cannot be paid).
    pub recipient: String,
    /// The message text.
    pub text: String,
    /// `--to`: the key to use when the handle does not verify.
    pub to: Option<PublicKey>,
    /// `--pay`.
    pub payment: Option<PayRequest>,
    /// `--receipt`: a payment already made, sent instead of paying.
    pub existing: Option<MessagePayment>,
}

/// Who a message goes to, and why that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The key the message is encrypted to.
    pub key: PublicKey,
    /// The handle, when the recipient was given as one (its LNURL name).
    pub handle: Option<String>,
    /// `None` when the binding verified; else why it did not and `--to` was used.
    pub unverified: Option<String>,
}

/// A binding that does not verify, or verifies to a state no message should go to.
#[derive(Debug, thiserror::Error)]
#[error("@{handle} cannot be verified: {reason}. Pass --to npub… to send to a key you trust")]
pub struct UnverifiedRecipient {
    /// The handle.
    pub handle: String,
    /// Why.
    pub reason: String,
}

/// Resolves the recipient: a handle is looked up on `ctx.node_url` and its
/// proof bundle verified like `cairn verify @handle`; a handle that is
/// pending, revoked, moved, under recovery or failing verification is refused
/// unless `to` is given, and a verified key that differs from `to` is an error.
pub async fn resolve_recipient(
    ctx: &SendContext,
    recipient: &str,
    to: Option<PublicKey>,
) -> Result<Recipient> {
    let subject = Subject::parse(recipient)?;
    let handle = match subject {
        Subject::Key(key) => {
            if let Some(to) = to {
                ensure!(to == key, "the recipient key and --to differ");
            }
            return Ok(Recipient {
                key,
                handle: None,
                unverified: None,
            });
        }
        Subject::Handle(h) => h,
    };
    let node = NodeClient::new(&ctx.node_url)?;
    let outcome = verify_subject(&node, &Subject::Handle(handle.clone()), &ctx.verify).await;
    let verdict = match outcome {
        Ok((verified, view)) => usable_key(&verified, view.status, &status_label(&view)),
        Err(e) => Err(crate::cli::render_error(&e)),
    };
    match (verdict, to) {
        (Ok(key), Some(to)) if key != to => bail!(
            "@{handle} is verified as {}, not --to {}",
            npub(&key),
            npub(&to)
        ),
        (Ok(key), _) => Ok(Recipient {
            key,
            handle: Some(handle),
            unverified: None,
        }),
        (Err(reason), Some(to)) => Ok(Recipient {
            key: to,
            handle: Some(handle),
            unverified: Some(reason),
        }),
        (Err(reason), None) => Err(UnverifiedRecipient { handle, reason }.into()),
    }
}

/// The key a verified identity may be messaged at, or why not.
fn usable_key(
    verified: &VerifiedIdentity,
    standing: Standing,
    node_label: &str,
) -> std::result::Result<PublicKey, String> {
    match standing {
        Standing::Anchored | Standing::Final => {}
        other => {
            return Err(format!(
                "the node reports it {} ({node_label})",
                other.as_str()
            ))
        }
    }
    match (&verified.status, verified.key) {
        (Status::Bound, Some(key)) => Ok(key),
        (Status::RecoveryPending(p), _) => Err(format!(
            "a recovery to another key is pending (effective at block {})",
            p.effective_height
        )),
        _ => Err("the binding is revoked".to_owned()),
    }
}

/// What `send` did.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// Who it went to.
    pub recipient: Recipient,
    /// The payment made, as carried by the rumor.
    pub payment: Option<MessagePayment>,
    /// The rumor's id (the message's id in both copies).
    pub rumor_id: EventId,
    /// Relays that accepted the recipient's gift wrap.
    pub delivered_to: Vec<String>,
    /// Relays that accepted the copy to self.
    pub copied_to: Vec<String>,
}

/// `cairn msg send`: resolve, pay (or take `existing`, paying nothing),
/// send. Nothing is paid when the recipient does not resolve; when the
/// payment fails nothing is sent; when sending fails after paying, the error
/// carries the payment's proof and the `--receipt` command to re-send it.
pub async fn send(ctx: &SendContext, request: &SendRequest) -> Result<SentMessage> {
    let recipient = resolve_recipient(ctx, &request.recipient, request.to).await?;
    let node_relay = ws_url(&ctx.node_url)?;
    let payment = match (&request.payment, &request.existing) {
        (Some(_), Some(_)) => bail!("--pay and --receipt exclude each other"),
        (None, None) => None,
        (None, Some(existing)) => {
            check_existing(ctx, &recipient, existing).await?;
            Some(existing.clone())
        }
        (Some(pay), None) => {
            let name = recipient.handle.as_deref().ok_or_else(|| {
                anyhow!("--pay needs an @handle: its LNURL-pay name is where the money goes")
            })?;
            let admin = ctx
                .admin
                .as_ref()
                .ok_or_else(|| anyhow!("--pay needs your node's admin API"))?;
            let http = http_client()?;
            let network = node_network(admin).await?;
            Some(if pay.onchain {
                pay_onchain(&http, admin, &ctx.node_url, name, pay.amount_msat, network).await?
            } else {
                pay_lightning(&http, admin, &ctx.node_url, name, pay.amount_msat, network).await?
            })
        }
    };
    let rumor = build_rumor(
        ctx.keys.public_key(),
        recipient.key,
        &request.text,
        payment.as_ref(),
    );
    let delivered = deliver(
        &ctx.keys,
        recipient.key,
        rumor.clone(),
        &node_relay,
        ctx.own_relay.as_deref().unwrap_or(&node_relay),
    )
    .await;
    let (delivered_to, copied_to) = match (delivered, &payment) {
        (Ok(d), _) => d,
        // Paid but not delivered: without the proof the user could only pay again.
        (Err(e), Some(p)) => {
            return Err(e.context(paid_not_sent(p, &request.recipient, &request.text)))
        }
        (Err(e), None) => return Err(e),
    };
    Ok(SentMessage {
        recipient,
        payment,
        rumor_id: rumor.id.expect("build_rumor sets the id"),
        delivered_to,
        copied_to,
    })
}

/// The error context when a payment was made but the message not delivered:
/// the proof, and the command that sends it without paying again.
pub fn paid_not_sent(p: &MessagePayment, recipient: &str, text: &str) -> String {
    let (proof, flags) = match (&p.request, &p.receipt) {
        (PaymentRequest::Lightning(i), Some(Receipt::Preimage(pre))) => (
            format!(
                "payment hash {}, preimage {}",
                i.payment_hash(),
                hex::encode(pre)
            ),
            format!("--receipt preimage:{} --invoice {i}", hex::encode(pre)),
        ),
        (PaymentRequest::Onchain(r), Some(Receipt::Txid(t))) => (
            format!("txid {t}"),
            format!("--receipt txid:{t} --bip21 '{r}'"),
        ),
        _ => (p.reference(), String::new()),
    };
    format!(
        "the payment WAS MADE ({proof}) but the message was not sent; do not pay again. \
         Send it with this payment: cairn msg send {} {} {flags}",
        shell_quote(recipient),
        shell_quote(text)
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `--receipt kind:value` with `--invoice`/`--bip21`, read with the same
/// grammar as a rumor's tags.
pub fn existing_payment(
    receipt: &str,
    invoice: Option<&str>,
    bip21: Option<&str>,
) -> Result<MessagePayment> {
    let (kind, value) = receipt
        .split_once(':')
        .ok_or_else(|| anyhow!("--receipt is preimage:<hex> or txid:<txid>"))?;
    let (method, request) = match (invoice, bip21) {
        (Some(i), None) => (LIGHTNING, i),
        (None, Some(u)) => (ONCHAIN, u),
        _ => bail!("--receipt needs --invoice (Lightning) or --bip21 (on-chain)"),
    };
    let tags = [
        nostr::Tag::custom(nostr::TagKind::custom(PAYMENT_TAG), [method, request]),
        nostr::Tag::custom(nostr::TagKind::custom(RECEIPT_TAG), [kind, value]),
    ];
    MessagePayment::from_tags(&tags)
        .context("--receipt")?
        .ok_or_else(|| anyhow!("--receipt: no payment"))
}

/// Checks a payment given with `--receipt` before sending it: consistent
/// (the preimage hashes to the invoice's hash), for the network, and — for
/// Lightning to a handle — an invoice of the handle's LNURL-pay, the only
/// kind the recipient's inbox accepts.
async fn check_existing(
    ctx: &SendContext,
    recipient: &Recipient,
    p: &MessagePayment,
) -> Result<()> {
    p.check_receipt(ctx.verify.network).context("--receipt")?;
    if let (PaymentRequest::Lightning(invoice), Some(name)) = (&p.request, &recipient.handle) {
        let metadata =
            lnurl_metadata(&http_client()?, &ctx.node_url, std::slice::from_ref(name)).await;
        ensure!(
            metadata
                .iter()
                .any(|m| check_description_hash(invoice, m).is_ok()),
            "--invoice is not an invoice of @{name}'s LNURL-pay on {}",
            ctx.node_url
        );
    }
    Ok(())
}

/// The LNURL-pay metadata (LUD-06) of each of `names` on the node at
/// `node_url`; names whose LNURL does not answer are left out (logged).
pub async fn lnurl_metadata(
    http: &reqwest::Client,
    node_url: &str,
    names: &[String],
) -> Vec<String> {
    let base = node_url.trim_end_matches('/');
    let mut out = Vec::new();
    for name in names {
        let url = format!("{base}/.well-known/lnurlp/{name}");
        match get_json(http, &url, "LNURL-pay").await {
            Ok(v) => match v["metadata"].as_str() {
                Some(m) => out.push(m.to_owned()),
                None => tracing::warn!("{url} gave no LNURL metadata"),
            },
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    out
}

/// The kind-14 rumor: `p` tag of the recipient, then the payment tags.
pub fn build_rumor(
    sender: PublicKey,
    recipient: PublicKey,
    text: &str,
    payment: Option<&MessagePayment>,
) -> UnsignedEvent {
    let tags = payment.map(MessagePayment::to_tags).unwrap_or_default();
    let mut rumor = EventBuilder::private_msg_rumor(recipient, text)
        .tags(tags)
        .build(sender);
    rumor.ensure_id();
    rumor
}

/// Gift-wraps `rumor` for the recipient and for the sender and publishes
/// each to its owner's NIP-17 inbox relays (kind 10050, looked up on
/// `lookup_relay`), falling back to `recipient_fallback` / `self_fallback`.
/// Returns the relays that accepted each copy; fails when none accepted the
/// recipient's.
pub async fn deliver(
    keys: &Keys,
    recipient: PublicKey,
    rumor: UnsignedEvent,
    recipient_fallback: &str,
    self_fallback: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let wrap = EventBuilder::gift_wrap(keys, &recipient, rumor.clone(), [])
        .await
        .context("cannot gift-wrap the message")?;
    let copy = EventBuilder::gift_wrap(keys, &keys.public_key(), rumor, [])
        .await
        .context("cannot gift-wrap the copy to self")?;
    let client = relay_client(keys);
    let to_relays = inbox_relays(&client, &recipient, recipient_fallback).await;
    let self_relays = inbox_relays(&client, &keys.public_key(), self_fallback).await;
    let delivered = publish(&client, &to_relays, &wrap).await;
    let copied = publish(&client, &self_relays, &copy).await;
    client.shutdown().await;
    ensure!(
        !delivered.is_empty(),
        "no relay accepted the message (tried {})",
        to_relays.join(", ")
    );
    Ok((delivered, copied))
}

/// `pubkey`'s NIP-17 inbox relays (its latest kind 10050 on `fallback`), or `[fallback]`.
async fn inbox_relays(client: &Client, pubkey: &PublicKey, fallback: &str) -> Vec<String> {
    let filter = Filter::new()
        .author(*pubkey)
        .kind(Kind::InboxRelays)
        .limit(1);
    let listed: Vec<String> = async {
        client.add_relay(fallback).await.ok()?;
        client
            .try_connect_relay(fallback, RELAY_TIMEOUT)
            .await
            .ok()?;
        let events = client
            .fetch_events_from([fallback], filter, RELAY_TIMEOUT)
            .await
            .ok()?;
        let latest = events
            .into_iter()
            .filter(|e| e.pubkey == *pubkey && e.kind == Kind::InboxRelays)
            .max_by_key(|e| e.created_at)?;
        Some(
            nostr::nips::nip17::extract_relay_list(&latest)
                .map(|u| u.to_string())
                .collect(),
        )
    }
    .await
    .unwrap_or_default();
    if listed.is_empty() {
        vec![fallback.to_owned()]
    } else {
        listed
    }
}

/// `relay` and the NIP-17 inbox relays the user lists there (kind 10050):
/// where the user's gift wraps are.
pub async fn reading_relays(keys: &Keys, relay: &str) -> Vec<String> {
    let client = relay_client(keys);
    let mut relays = inbox_relays(&client, &keys.public_key(), relay).await;
    client.shutdown().await;
    if !relays.iter().any(|r| r.trim_end_matches('/') == relay) {
        relays.insert(0, relay.to_owned());
    }
    relays
}

async fn publish(client: &Client, relays: &[String], event: &Event) -> Vec<String> {
    let mut ok = Vec::new();
    for url in relays {
        let Ok(parsed) = RelayUrl::parse(url) else {
            tracing::warn!("skipping invalid relay URL {url}");
            continue;
        };
        if client.add_relay(parsed.clone()).await.is_err()
            || client
                .try_connect_relay(parsed.clone(), RELAY_TIMEOUT)
                .await
                .is_err()
        {
            tracing::warn!("cannot connect to relay {url}");
            continue;
        }
        match tokio::time::timeout(RELAY_TIMEOUT, client.send_event_to([parsed], event)).await {
            Ok(Ok(out)) if !out.success.is_empty() => ok.push(url.clone()),
            Ok(Ok(out)) => tracing::warn!("relay {url} refused the event: {:?}", out.failed),
            Ok(Err(e)) => tracing::warn!("relay {url}: {e}"),
            Err(_) => tracing::warn!("relay {url}: no answer"),
        }
    }
    ok
}

fn relay_client(keys: &Keys) -> Client {
    Client::builder()
        .signer(keys.clone())
        .opts(ClientOptions::new().automatic_authentication(true))
        .build()
}

/// The LUD-06 payRequest answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayRequestAnswer {
    callback: String,
    min_sendable: u64,
    max_sendable: u64,
    metadata: String,
    tag: String,
}

/// Pays `amount_msat` to `name`'s LNURL-pay on `node_url` through `admin`:
/// plain LUD-06 (no `nostr` parameter: a private message must not cause a
/// public zap receipt), checking the invoice's amount and description hash
/// before paying and the preimage after.
pub async fn pay_lightning(
    http: &reqwest::Client,
    admin: &AdminClient,
    node_url: &str,
    name: &str,
    amount_msat: u64,
    network: Network,
) -> Result<MessagePayment> {
    let base = node_url.trim_end_matches('/');
    let lnurl = format!("{base}/.well-known/lnurlp/{name}");
    let answer: Value = get_json(http, &lnurl, "LNURL-pay").await?;
    lnurl_error(&answer, "LNURL-pay")?;
    let pr: PayRequestAnswer = serde_json::from_value(answer)
        .with_context(|| format!("{lnurl} is not an LNURL-pay answer"))?;
    ensure!(pr.tag == "payRequest", "{lnurl} is not a payRequest");
    ensure!(
        (pr.min_sendable..=pr.max_sendable).contains(&amount_msat),
        "@{name} accepts {}..={} msat, not {amount_msat}",
        pr.min_sendable,
        pr.max_sendable
    );
    let mut callback = url::Url::parse(&pr.callback).context("the LNURL callback URL")?;
    callback
        .query_pairs_mut()
        .append_pair("amount", &amount_msat.to_string());
    let answer: Value = get_json(http, callback.as_str(), "LNURL callback").await?;
    lnurl_error(&answer, "LNURL callback")?;
    let invoice_text = answer["pr"]
        .as_str()
        .ok_or_else(|| anyhow!("the LNURL callback gave no invoice"))?;
    let invoice = check_lnurl_invoice(invoice_text, amount_msat, &pr.metadata, network)
        .context("refusing the LNURL invoice")?;
    let paid: Value = admin
        .post(
            "/admin/v1/lightning/pay",
            &json!({ "invoice": invoice.to_string() }),
        )
        .await
        .context("your node could not pay")?;
    ensure!(
        paid["status"] == "succeeded",
        "the payment {} is still pending and may still settle: do not pay again. \
         The message is not sent; once `cairn ln payments` shows it succeeded, send it \
         with --receipt preimage:<its preimage> --invoice {invoice}",
        paid["payment_hash"].as_str().unwrap_or("?")
    );
    let preimage = parse_preimage(paid["preimage"].as_str().unwrap_or_default())
        .context("your node's answer has no valid preimage")?;
    check_preimage(&invoice, &preimage).context("your node's preimage")?;
    Ok(MessagePayment::lightning(invoice, preimage))
}

/// Pays `amount_msat` (whole satoshis) on-chain to an address of `name`'s
/// node (`/payments/v1/names/{name}/onchain`), through `admin`.
pub async fn pay_onchain(
    http: &reqwest::Client,
    admin: &AdminClient,
    node_url: &str,
    name: &str,
    amount_msat: u64,
    network: Network,
) -> Result<MessagePayment> {
    ensure!(
        amount_msat % 1000 == 0,
        "on-chain amounts are whole satoshis"
    );
    let amount_sat = amount_msat / 1000;
    let base = node_url.trim_end_matches('/');
    let url = format!("{base}/payments/v1/names/{name}/onchain?amount_sat={amount_sat}");
    let answer: Value = get_json(http, &url, "on-chain address").await?;
    let address = answer["address"]
        .as_str()
        .ok_or_else(|| anyhow!("{url} gave no address"))?;
    let bip21 = answer["bip21"]
        .as_str()
        .ok_or_else(|| anyhow!("{url} gave no BIP21 URI"))?;
    let request = OnchainRequest::parse(bip21).context("the payee's BIP21 URI")?;
    request
        .check_answer(address, amount_sat, network)
        .context("refusing the payee's address")?;
    let sent: Value = admin
        .post(
            "/admin/v1/wallet/send",
            &json!({ "address": address, "amount_sat": amount_sat }),
        )
        .await
        .context("your node could not pay")?;
    let txid = sent["txid"]
        .as_str()
        .and_then(|t| Txid::from_str(t).ok())
        .ok_or_else(|| anyhow!("your node's answer has no txid"))?;
    Ok(MessagePayment::onchain(request, txid))
}

fn lnurl_error(answer: &Value, what: &str) -> Result<()> {
    if answer["status"] == "ERROR" {
        bail!(
            "{what}: {}",
            answer["reason"].as_str().unwrap_or("the service refused")
        );
    }
    Ok(())
}

async fn get_json(http: &reqwest::Client, url: &str, what: &str) -> Result<Value> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach {url}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("{what}: {url} did not answer JSON ({status})"))?;
    if !status.is_success() && body["status"] != "ERROR" {
        bail!(
            "{what}: {url} answered {status}: {}",
            body["error"]
                .as_str()
                .or(body["reason"].as_str())
                .unwrap_or("")
        );
    }
    Ok(body)
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

/// The network of the node behind `admin` (`/admin/v1/status`).
pub async fn node_network(admin: &AdminClient) -> Result<Network> {
    let status: Value = admin
        .get("/admin/v1/status")
        .await
        .context("asking your node for its status")?;
    let n = status["network"].as_str().unwrap_or_default();
    Network::from_str(n).map_err(|_| anyhow!("your node reports an unknown network `{n}`"))
}

/// The text `msg send` prints.
pub fn render_sent(s: &SentMessage) -> String {
    let to = match (&s.recipient.handle, &s.recipient.unverified) {
        (Some(h), None) => format!("@{h} ({}, binding verified)", npub(&s.recipient.key)),
        (Some(h), Some(why)) => format!(
            "{} (--to; @{h} NOT verified: {why})",
            npub(&s.recipient.key)
        ),
        (None, _) => npub(&s.recipient.key),
    };
    let mut out = format!(
        "sent message {} to {to}\ndelivered to: {}\ncopy to self: {}",
        s.rumor_id,
        s.delivered_to.join(", "),
        if s.copied_to.is_empty() {
            "none (no relay accepted it)".to_owned()
        } else {
            s.copied_to.join(", ")
        }
    );
    if let Some(p) = &s.payment {
        let amount = p.request.amount_msat().unwrap_or(0) / 1000;
        let receipt = match (&p.request, p.txid()) {
            (PaymentRequest::Lightning(_), _) => format!("payment hash {}", p.reference()),
            (PaymentRequest::Onchain(_), Some(t)) => format!("txid {t}"),
            (PaymentRequest::Onchain(_), None) => String::new(),
        };
        out.push_str(&format!(
            "\npaid:          {amount} sat ({}), {receipt}",
            p.request.method()
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// Inbox.

/// What `inbox` needs.
#[derive(Debug, Clone)]
pub struct InboxContext {
    /// The user's keys (they AUTH and decrypt).
    pub keys: Keys,
    /// Relays to read (`ws(s)://…`).
    pub relays: Vec<String>,
    /// The user's own node, which confirms payments.
    pub admin: Option<AdminClient>,
    /// Why `admin` is `None`, for the "not confirmed" reason.
    pub admin_unavailable: Option<String>,
    /// The network payments must be on (the node's, when it answers).
    pub network: Network,
    /// Most gift wraps per relay.
    pub limit: usize,
    /// The user's Bitcoin Core RPC (`[bitcoin]` of the node): confirmations
    /// and the outputs of on-chain payments. Without it no on-chain payment
    /// is shown as paid (nothing shows which address it paid).
    pub bitcoin: Option<BitcoinRpc>,
    /// The LNURL-pay metadata of the user's own names: only invoices
    /// committing to one of them prove a Lightning payment.
    pub lnurl_metadata: Vec<String>,
    /// Where claims (payment → first message) persist; `None`: this run only.
    pub claims_file: Option<PathBuf>,
}

/// A Bitcoin Core JSON-RPC endpoint.
#[derive(Clone)]
pub struct BitcoinRpc {
    /// `http://host:port`.
    pub url: String,
    /// RPC user.
    pub user: String,
    /// RPC password (never shown).
    pub password: String,
}

impl std::fmt::Debug for BitcoinRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinRpc")
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl BitcoinRpc {
    /// The `[bitcoin]` settings' RPC.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            url: settings.bitcoin.rpc_url.clone(),
            user: settings.bitcoin.rpc_user.clone(),
            password: settings.bitcoin.rpc_password.clone(),
        }
    }

    /// Runs `f` against Core; errors name the (redacted) URL, never the password.
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&RpcClient) -> Result<T, ChainError> + Send + 'static,
    ) -> Result<T> {
        let config = RpcConfig::new(&self.url, &self.user, &self.password);
        let shown = redact_url(&self.url);
        let client = RpcClient::new(&config).map_err(|e| anyhow!("{what}: {shown}: {e}"))?;
        client.run(f).await.map_err(|e| match e {
            ChainError::Unreachable(e) => {
                anyhow!("{what}: cannot reach Bitcoin Core at {shown}: {e}")
            }
            other => anyhow!("{what}: {other}"),
        })
    }

    /// The chain's height.
    async fn tip(&self) -> Result<u32> {
        self.run("getblockcount", |c| c.tip_height()).await
    }

    /// The outputs of transaction `txid` (confirmed at `height`, or in the
    /// mempool), split by whether they pay `address`.
    async fn outputs(
        &self,
        txid: &Txid,
        height: Option<u32>,
        address: &Address,
    ) -> Result<TxOutputs> {
        let id = *txid;
        let tx = self
            .run("getrawtransaction", move |c| {
                // Without -txindex Bitcoin Core finds a confirmed transaction only in its block.
                let block = match height {
                    Some(h) => c.block_hash(h)?,
                    None => None,
                };
                c.transaction(&id, block.as_ref())
            })
            .await?;
        ensure!(
            tx.compute_txid() == *txid,
            "getrawtransaction: another transaction"
        );
        let script = address.script_pubkey();
        let (to, others): (Vec<_>, Vec<_>) =
            tx.output.iter().partition(|o| o.script_pubkey == script);
        Ok(TxOutputs {
            // Consensus caps every output (and so their sum) at 21M BTC.
            to_address_sat: to.iter().map(|o| o.value.to_sat()).sum(),
            others_sat: others.iter().map(|o| o.value.to_sat()).collect(),
        })
    }
}

/// One message of the inbox.
#[derive(Debug, Clone)]
pub struct InboxMessage {
    /// The rumor's id.
    pub id: EventId,
    /// The gift wrap it came in (the first seen, when it came in several).
    pub wrap_id: EventId,
    /// Its author (the seal's signer, checked equal).
    pub sender: PublicKey,
    /// The keys it is addressed to (`p` tags).
    pub recipients: Vec<PublicKey>,
    /// When the sender says it was written.
    pub created_at: Timestamp,
    /// The text.
    pub text: String,
    /// The payment it carries, verified; `None` when it carries none.
    pub payment: Option<PaymentView>,
}

/// A payment as the inbox shows it.
#[derive(Debug, Clone)]
pub struct PaymentView {
    /// The parsed tags, when they parse.
    pub payment: Option<MessagePayment>,
    /// The verdict.
    pub verification: Verification,
}

/// A gift wrap that could not be opened, or whose content is inconsistent.
#[derive(Debug, Clone)]
pub struct Undecryptable {
    /// The gift wrap's id.
    pub wrap_id: EventId,
    /// Why.
    pub reason: String,
}

/// What `inbox` found.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    /// Messages, oldest first, one per rumor.
    pub messages: Vec<InboxMessage>,
    /// Gift wraps that were refused.
    pub refused: Vec<Undecryptable>,
}

/// `cairn msg inbox`: AUTH, fetch the user's gift wraps, unwrap, verify each
/// payment with the user's own node.
pub async fn inbox(ctx: &InboxContext) -> Result<Inbox> {
    let me = ctx.keys.public_key();
    let wraps = fetch_gift_wraps(ctx).await?;
    let mut claims = match &ctx.claims_file {
        Some(path) => ClaimStore::load(path)?,
        None => ClaimStore::in_memory(),
    };
    let now = Timestamp::now().as_secs();
    // Rumor id → (when its wrap was first seen, the message).
    let mut by_rumor: BTreeMap<EventId, (u64, InboxMessage)> = BTreeMap::new();
    let mut refused = Vec::new();
    for wrap in &wraps {
        match open_gift_wrap(&ctx.keys, wrap).await {
            Ok(m) => {
                // Only wraps whose payment can be claimed need remembering.
                let seen = match &m.payment {
                    Some(_) if m.sender != me => claims.first_seen(wrap.id, now),
                    _ => now,
                };
                match by_rumor.get(&m.id) {
                    Some((s, _)) if *s <= seen => {}
                    _ => {
                        by_rumor.insert(m.id, (seen, m));
                    }
                }
            }
            Err(reason) => refused.push(Undecryptable {
                wrap_id: wrap.id,
                reason,
            }),
        }
    }
    // Claims go in the order the wraps were first seen; the rumor's
    // created_at (chosen by the sender) only breaks ties between wraps first
    // seen in the same run.
    let mut messages: Vec<(u64, InboxMessage)> = by_rumor.into_values().collect();
    messages.sort_by_key(|(seen, m)| (*seen, m.created_at, m.id));
    let mut checker = PaymentChecker::new(ctx).await?;
    for (_, m) in &mut messages {
        let Some(view) = m.payment.as_mut() else {
            continue;
        };
        let Some(p) = view.payment.clone() else {
            continue;
        };
        if m.sender == me {
            // Our own copy: the recipient's node holds the proof, not ours.
            view.verification = match p.check_receipt(checker.network) {
                Ok(amount_msat) => Verification::Unconfirmed {
                    method: p.request.method(),
                    amount_msat,
                    reason: "sent by you; only the recipient's node can confirm it".to_owned(),
                },
                Err(e) => Verification::Unverified(e),
            };
            continue;
        }
        let verification = checker.verify(&p).await;
        view.verification = if verification.is_paid() {
            // One payment proves one message: later claims of it are replays.
            let claim = Claim {
                wrap: m.wrap_id,
                rumor: m.id,
            };
            match claims.claim(&p.claim_key(), claim) {
                ClaimOutcome::Ours => verification,
                ClaimOutcome::Taken(first) => {
                    Verification::Unverified(MessagePaymentError::AlreadyClaimed {
                        by: first.wrap.to_hex(),
                    })
                }
            }
        } else {
            verification
        };
    }
    claims.save().context("saving payment claims")?;
    let mut messages: Vec<InboxMessage> = messages.into_iter().map(|(_, m)| m).collect();
    messages.sort_by_key(|m| (m.created_at, m.id));
    Ok(Inbox { messages, refused })
}

async fn fetch_gift_wraps(ctx: &InboxContext) -> Result<Vec<Event>> {
    let me = ctx.keys.public_key();
    let filter = Filter::new()
        .kind(Kind::GiftWrap)
        .pubkey(me)
        .limit(ctx.limit);
    let client = relay_client(&ctx.keys);
    let mut connected = Vec::new();
    for url in &ctx.relays {
        if client.add_relay(url.as_str()).await.is_ok()
            && client
                .try_connect_relay(url.as_str(), RELAY_TIMEOUT)
                .await
                .is_ok()
        {
            connected.push(url.clone());
        } else {
            tracing::warn!("cannot connect to relay {url}");
        }
    }
    if connected.is_empty() {
        client.shutdown().await;
        bail!("cannot connect to any relay ({})", ctx.relays.join(", "));
    }
    // The relay answers a gift-wrap REQ with `auth-required` until the AUTH
    // (sent by the client on the relay's challenge) is accepted; the client
    // then re-sends the REQ. A second try covers a REQ that raced the AUTH.
    let mut events = client
        .fetch_events_from(connected.clone(), filter.clone(), RELAY_TIMEOUT)
        .await
        .context("fetching gift wraps")?;
    if events.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        events = client
            .fetch_events_from(connected, filter, RELAY_TIMEOUT)
            .await
            .context("fetching gift wraps")?;
    }
    client.shutdown().await;
    Ok(events
        .into_iter()
        .filter(|e| e.kind == Kind::GiftWrap && e.verify().is_ok())
        .collect())
}

/// Unwraps one gift wrap addressed to `keys`: the seal's signature, the seal
/// signer equal to the rumor's author (the NIP-17 rule against impersonation),
/// the rumor's id, kind 14, and `keys` among its recipients or its author.
pub async fn open_gift_wrap(
    keys: &Keys,
    wrap: &Event,
) -> std::result::Result<InboxMessage, String> {
    let me = keys.public_key();
    let unwrapped = UnwrappedGift::from_gift_wrap(keys, wrap)
        .await
        .map_err(|e| format!("cannot unwrap: {e}"))?;
    let rumor = unwrapped.rumor;
    if rumor.pubkey != unwrapped.sender {
        return Err("the rumor's author is not the seal's signer".to_owned());
    }
    rumor
        .verify_id()
        .map_err(|_| "the rumor's id does not match its content".to_owned())?;
    if rumor.kind != Kind::PrivateDirectMessage {
        return Err(format!(
            "a kind {} rumor, not a message",
            rumor.kind.as_u16()
        ));
    }
    let recipients: Vec<PublicKey> = rumor.tags.public_keys().copied().collect();
    if !recipients.contains(&me) && rumor.pubkey != me {
        return Err("the message is not addressed to you".to_owned());
    }
    let payment = match MessagePayment::from_tags(rumor.tags.iter()) {
        Ok(None) => None,
        Ok(Some(p)) => Some(PaymentView {
            verification: Verification::Unconfirmed {
                method: p.request.method(),
                amount_msat: p.request.amount_msat().unwrap_or(0),
                reason: "not checked yet".to_owned(),
            },
            payment: Some(p),
        }),
        Err(e) => Some(PaymentView {
            payment: None,
            verification: Verification::Unverified(e),
        }),
    };
    Ok(InboxMessage {
        id: rumor.id.ok_or("the rumor has no id")?,
        wrap_id: wrap.id,
        sender: rumor.pubkey,
        recipients,
        created_at: rumor.created_at,
        text: rumor.content,
        payment,
    })
}

/// Asks the user's node about payments.
struct PaymentChecker<'a> {
    admin: Option<&'a AdminClient>,
    unavailable: String,
    network: Network,
    wallet: Option<Vec<WalletTx>>,
    tip: Option<u32>,
    bitcoin: Option<&'a BitcoinRpc>,
    lnurl_metadata: &'a [String],
}

#[derive(Debug, Deserialize)]
struct WalletTx {
    txid: String,
    received_sat: u64,
    sent_sat: u64,
    confirmation_height: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct LnPayment {
    direction: String,
    status: String,
    amount_msat: Option<u64>,
    preimage: Option<String>,
}

impl<'a> PaymentChecker<'a> {
    async fn new(ctx: &'a InboxContext) -> Result<Self> {
        let mut checker = Self {
            admin: None,
            unavailable: ctx
                .admin_unavailable
                .clone()
                .unwrap_or_else(|| "no admin API configured".to_owned()),
            network: ctx.network,
            wallet: None,
            tip: None,
            bitcoin: ctx.bitcoin.as_ref(),
            lnurl_metadata: &ctx.lnurl_metadata,
        };
        let Some(admin) = &ctx.admin else {
            return Ok(checker);
        };
        match node_network(admin).await {
            Ok(n) => {
                checker.network = n;
                checker.admin = Some(admin);
            }
            Err(e) => checker.unavailable = format!("{e:#}"),
        }
        Ok(checker)
    }

    async fn verify(&mut self, p: &MessagePayment) -> Verification {
        let report = match self.admin {
            None => NodeReport::Unavailable(self.unavailable.clone()),
            Some(admin) => match &p.request {
                PaymentRequest::Lightning(_) => self.lightning_report(admin, p).await,
                PaymentRequest::Onchain(r) => self.onchain_report(admin, p, r).await,
            },
        };
        p.verify_inbound(self.network, self.lnurl_metadata, &report)
    }

    async fn lightning_report(&self, admin: &AdminClient, p: &MessagePayment) -> NodeReport {
        let Some(hash) = p.payment_hash() else {
            return NodeReport::Lightning(None);
        };
        match admin
            .get::<LnPayment>(&format!("/admin/v1/lightning/payments/{hash}"))
            .await
        {
            Ok(l) => NodeReport::Lightning(Some(LightningLookup {
                inbound: l.direction == "inbound",
                state: match l.status.as_str() {
                    "succeeded" => LightningState::Succeeded,
                    "failed" => LightningState::Failed,
                    _ => LightningState::Pending,
                },
                amount_msat: l.amount_msat,
                preimage: l.preimage.as_deref().and_then(|h| parse_preimage(h).ok()),
            })),
            Err(e)
                if e.downcast_ref::<AdminError>()
                    .is_some_and(|a| a.status == 404) =>
            {
                NodeReport::Lightning(None)
            }
            Err(e) => NodeReport::Unavailable(format!("{e:#}")),
        }
    }

    async fn onchain_report(
        &mut self,
        admin: &AdminClient,
        p: &MessagePayment,
        request: &OnchainRequest,
    ) -> NodeReport {
        let Some(txid) = p.txid() else {
            return NodeReport::Onchain(None);
        };
        if self.wallet.is_none() {
            // The wallet learns of new transactions when it syncs.
            let _ = admin.post::<Value>("/admin/v1/sync", &json!({})).await;
            match admin
                .get::<Vec<WalletTx>>("/admin/v1/wallet/transactions")
                .await
            {
                Ok(list) => self.wallet = Some(list),
                Err(e) => return NodeReport::Unavailable(format!("{e:#}")),
            }
            self.tip = match self.bitcoin {
                Some(rpc) => rpc.tip().await.ok(),
                None => None,
            };
            if self.tip.is_none() {
                // Without a chain source, the newest block the wallet has a
                // transaction in: a lower bound on the tip.
                self.tip = self
                    .wallet
                    .iter()
                    .flatten()
                    .filter_map(|t| t.confirmation_height)
                    .max();
            }
        }
        let txid_text = txid.to_string();
        let Some(tx) = self.wallet.iter().flatten().find(|t| t.txid == txid_text) else {
            return NodeReport::Onchain(None);
        };
        let confirmations = match (tx.confirmation_height, self.tip) {
            (Some(h), Some(tip)) => tip.saturating_sub(h) + 1,
            _ => 0,
        };
        // The wallet's total could come from another of its addresses; the
        // transaction's outputs tell whether it pays the address of the URI.
        let outputs = match (self.bitcoin, request.address(self.network)) {
            (Some(rpc), Ok(address)) => rpc
                .outputs(&txid, tx.confirmation_height, &address)
                .await
                .map_err(|e| tracing::warn!("cannot read transaction {txid}: {e:#}"))
                .ok(),
            _ => None,
        };
        NodeReport::Onchain(Some(WalletTxLookup {
            received_sat: tx.received_sat,
            sent_sat: tx.sent_sat,
            confirmations,
            outputs,
        }))
    }
}

/// The text `msg inbox` prints.
pub fn render_inbox(inbox: &Inbox, me: &PublicKey) -> String {
    let mut out = String::new();
    if inbox.messages.is_empty() {
        out.push_str("no messages\n");
    }
    for m in &inbox.messages {
        let direction = if m.sender == *me {
            let to: Vec<String> = m.recipients.iter().filter(|k| *k != me).map(npub).collect();
            format!("you → {}", to.join(", "))
        } else {
            format!("from {}", npub(&m.sender))
        };
        out.push_str(&format!(
            "[{}] {direction} (message {})\n  {}\n",
            m.created_at.to_human_datetime(),
            m.id,
            m.text.replace('\n', "\n  ")
        ));
        if let Some(p) = &m.payment {
            out.push_str(&format!("  payment: {}\n", p.verification));
        }
    }
    for r in &inbox.refused {
        out.push_str(&format!("refused gift wrap {}: {}\n", r.wrap_id, r.reason));
    }
    out.trim_end().to_owned()
}

// ---------------------------------------------------------------------------
// Small helpers.

/// `ws(s)://host[:port]` of a Cairn node given as `http(s)://…` (or already ws).
pub fn ws_url(node_url: &str) -> Result<String> {
    with_scheme(node_url, "ws", "a relay URL")
}

/// `http(s)://host[:port]` of a Cairn node given as `ws(s)://…` (or already http).
pub fn http_url(node_url: &str) -> Result<String> {
    with_scheme(node_url, "http", "an HTTP URL")
}

/// `node_url` with its scheme turned into `plain` (`http` or `ws`), or its
/// TLS form (`https` or `wss`) when `node_url` uses TLS.
fn with_scheme(node_url: &str, plain: &str, what: &str) -> Result<String> {
    let mut url =
        url::Url::parse(node_url).with_context(|| format!("invalid node URL `{node_url}`"))?;
    let scheme = match url.scheme() {
        "http" | "ws" => plain.to_owned(),
        "https" | "wss" => format!("{plain}s"),
        other => bail!("the node URL must be http(s):// or ws(s)://, not {other}://"),
    };
    url.set_scheme(&scheme)
        .map_err(|_| anyhow!("cannot turn {node_url} into {what}"))?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The user's own relay: `[relay] public_url`, else `ws://<bind>`.
pub fn own_relay_url(settings: &Settings) -> String {
    settings.relay.public_url.clone().unwrap_or_else(|| {
        ws_url(&crate::admin_client::local_base_url(settings.bind))
            .unwrap_or_else(|_| format!("ws://{}", settings.bind))
    })
}

#[cfg(test)]
mod tests {
    use nostr::nips::nip59::make_seal;
    use nostr::Tag;

    use super::*;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        msg: MsgArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<MsgCommand, clap::Error> {
        use clap::Parser;
        Wrap::try_parse_from(std::iter::once("msg").chain(args.iter().copied()))
            .map(|w| w.msg.command)
    }

    #[test]
    fn send_and_inbox_flags_parse() {
        use clap::CommandFactory;
        Wrap::command().debug_assert();
        let npub = npub(&Keys::generate().public_key());
        let cmd = parse(&[
            "send",
            "@alice",
            "lunch",
            "--pay",
            "5000sat",
            "--onchain",
            "--to",
            &npub,
            "--key-file",
            "k",
            "--node",
            "http://n",
        ])
        .unwrap();
        let MsgCommand::Send(a) = cmd else {
            panic!("not send")
        };
        assert_eq!(a.pay.map(|p| p.msat), Some(5_000_000));
        assert!(a.onchain);
        assert_eq!(a.to.as_deref(), Some(npub.as_str()));
        assert_eq!(a.node.as_deref(), Some("http://n"));
        assert!(
            parse(&["send", "@alice", "hi", "--onchain"]).is_err(),
            "--onchain needs --pay"
        );
        assert!(parse(&["send", "@alice", "hi", "--pay", "lots"]).is_err());
        assert!(matches!(
            parse(&["inbox", "--key-file", "k", "--node", "http://n"]).unwrap(),
            MsgCommand::Inbox(InboxArgs {
                limit: DEFAULT_INBOX_LIMIT,
                ..
            })
        ));
    }

    fn test_invoice(preimage: &[u8; 32]) -> String {
        use bitcoin::hashes::{sha256, Hash};
        use bitcoin::secp256k1::{Secp256k1, SecretKey};
        use cairn_payments::ldk_node::lightning_invoice::{
            Currency, InvoiceBuilder, PaymentSecret,
        };
        let key = SecretKey::from_slice(&[7u8; 32]).unwrap();
        InvoiceBuilder::new(Currency::Regtest)
            .description_hash(sha256::Hash::hash(b"[]"))
            .payment_hash(sha256::Hash::hash(preimage))
            .payment_secret(PaymentSecret([42u8; 32]))
            .current_timestamp()
            .min_final_cltv_expiry_delta(144)
            .amount_milli_satoshis(5_000_000)
            .build_signed(|hash| Secp256k1::new().sign_ecdsa_recoverable(hash, &key))
            .unwrap()
            .to_string()
    }

    const BIP21: &str = "bitcoin:bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk?amount=0.0002";

    #[test]
    fn receipt_flags_parse_and_exclude_paying() {
        let preimage = hex::encode([9u8; 32]);
        let receipt = format!("preimage:{preimage}");
        let inv = test_invoice(&[9u8; 32]);
        let MsgCommand::Send(a) = parse(&[
            "send",
            "@alice",
            "hi",
            "--receipt",
            &receipt,
            "--invoice",
            &inv,
        ])
        .unwrap() else {
            panic!("not send")
        };
        let p = existing_payment(
            a.receipt.as_deref().unwrap(),
            a.invoice.as_deref(),
            a.bip21.as_deref(),
        )
        .unwrap();
        assert_eq!(p.receipt, Some(Receipt::Preimage([9u8; 32])));
        assert!(parse(&["send", "@a", "hi", "--receipt", &receipt, "--pay", "1sat"]).is_err());
        assert!(
            parse(&["send", "@a", "hi", "--invoice", &inv]).is_err(),
            "needs --receipt"
        );
        assert!(parse(&[
            "send",
            "@a",
            "hi",
            "--receipt",
            &receipt,
            "--invoice",
            &inv,
            "--bip21",
            BIP21
        ])
        .is_err());

        let txid = "ab".repeat(32);
        let onchain = existing_payment(&format!("txid:{txid}"), None, Some(BIP21)).unwrap();
        assert_eq!(onchain.txid().map(|t| t.to_string()), Some(txid.clone()));
        // Wrong pairings and malformed values are refused by the tag grammar.
        assert!(existing_payment(&format!("txid:{txid}"), Some(&inv), None).is_err());
        assert!(existing_payment(&receipt, None, None).is_err());
        assert!(existing_payment("preimage:abcd", Some(&inv), None).is_err());
        assert!(
            existing_payment(&preimage, Some(&inv), None).is_err(),
            "no kind:"
        );
    }

    #[tokio::test]
    async fn a_paid_message_that_cannot_be_delivered_prints_its_proof() {
        let recipient = npub(&Keys::generate().public_key());
        let ctx = SendContext {
            keys: Keys::generate(),
            // Nothing listens there: no relay accepts the message.
            node_url: "http://127.0.0.1:9".into(),
            verify: VerifyOptions {
                chain: ChainSource::HeadersFile {
                    path: "/nonexistent".into(),
                    checkpoint: None,
                },
                network: Network::Regtest,
                min_confirmations: 1,
                trusted_witnesses: vec![],
            },
            admin: None,
            own_relay: None,
        };
        let txid = "cd".repeat(32);
        let request = SendRequest {
            recipient: recipient.clone(),
            text: "rent, it's late".into(),
            to: None,
            payment: None,
            existing: Some(existing_payment(&format!("txid:{txid}"), None, Some(BIP21)).unwrap()),
        };
        let err = format!("{:#}", send(&ctx, &request).await.unwrap_err());
        assert!(err.contains("WAS MADE"), "{err}");
        assert!(
            err.contains(&format!("--receipt txid:{txid} --bip21 '{BIP21}'")),
            "{err}"
        );
        assert!(err.contains(r"'rent, it'\''s late'"), "{err}");
        assert!(err.contains("no relay accepted the message"), "{err}");

        // Lightning: the hash, the preimage and the invoice to re-send with.
        let inv = test_invoice(&[4u8; 32]);
        let p = existing_payment(
            &format!("preimage:{}", hex::encode([4u8; 32])),
            Some(&inv),
            None,
        )
        .unwrap();
        let text = paid_not_sent(&p, "@alice", "lunch");
        assert!(text.contains(&p.reference()), "{text}");
        assert!(
            text.contains(&format!(
                "--receipt preimage:{} --invoice {inv}",
                hex::encode([4u8; 32])
            )),
            "{text}"
        );

        // Without a payment, the plain delivery error.
        let plain = SendRequest {
            existing: None,
            ..request
        };
        let err = format!("{:#}", send(&ctx, &plain).await.unwrap_err());
        assert!(!err.contains("WAS MADE"), "{err}");
    }

    #[tokio::test]
    async fn bitcoin_rpc_errors_do_not_show_the_password() {
        let rpc = BitcoinRpc {
            url: "http://rpcuser:hunter2@127.0.0.1:9".into(),
            user: "rpcuser".into(),
            password: "hunter2".into(),
        };
        let err = format!("{:#}", rpc.tip().await.unwrap_err());
        assert!(err.contains("cannot reach Bitcoin Core"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!format!("{rpc:?}").contains("hunter2"));
    }

    #[test]
    fn http_urls_from_relay_urls() {
        assert_eq!(
            http_url("ws://127.0.0.1:7777/").unwrap(),
            "http://127.0.0.1:7777"
        );
        assert_eq!(http_url("wss://r.example").unwrap(), "https://r.example");
        assert!(http_url("ftp://x").is_err());
    }

    #[test]
    fn relay_urls_from_node_urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:7777").unwrap(),
            "ws://127.0.0.1:7777"
        );
        assert_eq!(
            ws_url("https://cairn.example.org/").unwrap(),
            "wss://cairn.example.org"
        );
        assert_eq!(ws_url("wss://r.example").unwrap(), "wss://r.example");
        assert!(ws_url("ftp://x").is_err());
    }

    #[tokio::test]
    async fn messages_open_and_carry_their_payment_tags() {
        let (alice, bob) = (Keys::generate(), Keys::generate());
        let rumor = build_rumor(alice.public_key(), bob.public_key(), "hi", None);
        let wrap = EventBuilder::gift_wrap(&alice, &bob.public_key(), rumor.clone(), [])
            .await
            .unwrap();
        let m = open_gift_wrap(&bob, &wrap).await.unwrap();
        assert_eq!((m.sender, m.text.as_str()), (alice.public_key(), "hi"));
        assert_eq!(m.recipients, vec![bob.public_key()]);
        assert_eq!(Some(m.id), rumor.id);
        assert!(m.payment.is_none());
        // Not for Eve.
        assert!(open_gift_wrap(&Keys::generate(), &wrap).await.is_err());

        // A malformed payment tag is shown as unverified, not dropped.
        let mut bad = EventBuilder::private_msg_rumor(bob.public_key(), "pay")
            .tag(Tag::parse(["payment", "lightning"]).unwrap())
            .build(alice.public_key());
        bad.ensure_id();
        let wrap = EventBuilder::gift_wrap(&alice, &bob.public_key(), bad, [])
            .await
            .unwrap();
        let m = open_gift_wrap(&bob, &wrap).await.unwrap();
        let p = m.payment.expect("a payment view");
        assert!(matches!(p.verification, Verification::Unverified(_)));
        assert!(p.payment.is_none());
    }

    #[tokio::test]
    async fn impersonation_and_other_kinds_are_refused() {
        let (alice, bob, eve) = (Keys::generate(), Keys::generate(), Keys::generate());
        // Eve seals a rumor that claims to be written by Alice.
        let forged = build_rumor(alice.public_key(), bob.public_key(), "pay eve", None);
        let seal = make_seal(&eve, &bob.public_key(), forged)
            .await
            .unwrap()
            .sign_with_keys(&eve)
            .unwrap();
        let wrap = EventBuilder::gift_wrap_from_seal(&bob.public_key(), &seal, []).unwrap();
        let err = open_gift_wrap(&bob, &wrap).await.unwrap_err();
        assert!(err.contains("mismatch"), "{err}");

        // A rumor id that does not match its content.
        let mut wrong_id = build_rumor(alice.public_key(), bob.public_key(), "a", None);
        wrong_id.content = "b".into();
        let wrap = EventBuilder::gift_wrap(&alice, &bob.public_key(), wrong_id, [])
            .await
            .unwrap();
        let err = open_gift_wrap(&bob, &wrap).await.unwrap_err();
        assert!(err.contains("id"), "{err}");

        // A text note is not a private message.
        let note = EventBuilder::text_note("public?").build(alice.public_key());
        let wrap = EventBuilder::gift_wrap(&alice, &bob.public_key(), note, [])
            .await
            .unwrap();
        let err = open_gift_wrap(&bob, &wrap).await.unwrap_err();
        assert!(err.contains("kind 1"), "{err}");

        // Addressed to someone else (Bob received a wrap meant for Carol's rumor).
        let carol = Keys::generate();
        let other = build_rumor(alice.public_key(), carol.public_key(), "x", None);
        let wrap = EventBuilder::gift_wrap(&alice, &bob.public_key(), other, [])
            .await
            .unwrap();
        let err = open_gift_wrap(&bob, &wrap).await.unwrap_err();
        assert!(err.contains("not addressed to you"), "{err}");
    }
}
