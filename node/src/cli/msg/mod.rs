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
//! This module holds the arguments and the URL helpers; the steps live in
//! [`send`] (resolve, pay, deliver), [`lnurl`] (paying a name), [`relays`]
//! (NIP-17 inbox relays), [`inbox`] (fetch and open gift wraps),
//! [`verification`] (a payment as the user's node saw it) and [`claims`] (one
//! payment proves one message). Every step is a library function, re-exported
//! here, so tests drive the same code as the binary.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Network;
use cairn_identity_core::bundle::DEFAULT_MIN_CONFIRMATIONS;
use nostr::PublicKey;

use crate::cli::support::admin::{local_base_url, AdminArgs};
use crate::cli::support::amounts::Amount;
use crate::cli::support::keys::{load_keys, KeyArgs};
use crate::cli::support::output::outln;
use crate::cli::support::rpc::RpcLoginArgs;
use crate::cli::verify::{parse_checkpoint, ChainSource, VerifyOptions};
use crate::settings::Settings;

pub mod claims;
pub mod inbox;
pub mod lnurl;
pub mod outbox;
pub mod relays;
pub mod send;
pub mod verification;

pub use claims::CLAIMS_FILE;
pub use inbox::{
    inbox, open_gift_wrap, render_inbox, verify_messages, Inbox, InboxContext, InboxMessage,
    PaymentView, Undecryptable,
};
pub use lnurl::{http_client, lnurl_metadata, node_network, pay_lightning, pay_onchain};
pub use relays::reading_relays;
pub use send::{
    build_rumor, deliver, existing_payment, paid_not_sent, render_sent, resolve_recipient, send,
    PayRequest, Recipient, SendContext, SendRequest, SentMessage, UnverifiedRecipient,
};
pub use verification::BitcoinRpc;

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
    /// What your node's outbox holds: each message sent, and per destination
    /// relay whether it is queued, delivered (when), retrying (next try,
    /// last error) or expired.
    Outbox(OutboxArgs),
}

#[derive(Debug, clap::Args)]
struct OutboxArgs {
    #[command(flatten)]
    own: OwnNodeArgs,
    /// Most items to show, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print the node's answer as JSON, for scripts.
    #[arg(long)]
    json: bool,
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
    #[command(flatten)]
    pub rpc_login: RpcLoginArgs,
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
                let (user, password) = self.rpc_login.credentials()?;
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
    /// Seconds to wait for the first delivery tries before reporting
    /// (delivery goes on in your node either way).
    #[arg(long, value_name = "SECS", default_value_t = outbox::DEFAULT_SEND_WAIT.as_secs())]
    wait: u64,
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
                .unwrap_or_else(|| local_base_url(settings.bind));
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
                // Only paying needs the node's payments.
                admin: match request.payment {
                    Some(_) => Some(admin_args.client()?),
                    None => None,
                },
                own_relay: Some(own_relay_url(&settings)),
                // Every message goes through the node's outbox, unless
                // `[outbox] enabled = false`: the node then has no outbox
                // API, and the message is published once, from here.
                outbox: if settings.outbox.enabled {
                    Some(admin_args.client().context(
                        "msg send queues the message in your node's outbox: start `cairn serve`",
                    )?)
                } else {
                    None
                },
                wait: std::time::Duration::from_secs(a.wait),
            };
            let sent = send(&ctx, &request).await?;
            outln!("{}", render_sent(&sent))?;
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
                None => local_base_url(settings.bind),
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
            outln!("{}", render_inbox(&messages, &ctx.keys.public_key()))?;
        }
        MsgCommand::Outbox(a) => {
            let admin = a.own.admin().client()?;
            let v = outbox::outbox(&admin, a.limit).await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let page: outbox::OutboxPage =
                    serde_json::from_value(v).context("the node's outbox answer")?;
                outln!("{}", outbox::render_outbox(&page))?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Node URLs.

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
        ws_url(&local_base_url(settings.bind)).unwrap_or_else(|_| format!("ws://{}", settings.bind))
    })
}

#[cfg(test)]
mod tests {
    use nostr::Keys;

    use crate::cli::support::keys::npub;
    use cairn_payments::message_payment::Receipt;

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

    pub(super) fn test_invoice(preimage: &[u8; 32]) -> String {
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

    pub(super) const BIP21: &str =
        "bitcoin:bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk?amount=0.0002";

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
}
