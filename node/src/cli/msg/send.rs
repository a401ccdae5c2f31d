//! `msg send`: resolve the recipient (verifying a handle's binding), pay
//! (see [`super::lnurl`]) or take a payment already made, and deliver the
//! gift-wrapped message to the recipient's and the sender's inbox relays.

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_identity::service::Standing;
use cairn_identity_core::binding::Status;
use cairn_identity_core::bundle::VerifiedIdentity;
use cairn_payments::message_payment::{
    check_description_hash, MessagePayment, PaymentRequest, Receipt, LIGHTNING, ONCHAIN,
    PAYMENT_TAG, RECEIPT_TAG,
};
use nostr::{EventBuilder, EventId, Keys, PublicKey, UnsignedEvent};

use super::lnurl::{http_client, lnurl_metadata, node_network, pay_lightning, pay_onchain};
use super::relays::{inbox_relays, publish, relay_client};
use super::ws_url;
use crate::cli::support::admin::AdminClient;
use crate::cli::support::keys::npub;
use crate::cli::support::node::{status_label, NodeClient, Subject};
use crate::cli::verify::{verify_subject, VerifyOptions};

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
    /// The sender's own node's outbox (its admin API): with it the message
    /// is queued there and delivered by the node until each relay accepts
    /// it; without it, it is published once, from here.
    pub outbox: Option<AdminClient>,
    /// How long to wait for the outbox's first tries before reporting.
    pub wait: std::time::Duration,
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
    /// The outbox items (the wrap and the copy) as the node showed them
    /// after the wait; empty when sent without the outbox.
    pub queued: Vec<crate::outbox::ItemView>,
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
    let delivered = match &ctx.outbox {
        Some(admin) => {
            let hints = match &recipient.handle {
                Some(h) => super::outbox::nip05_relays(&ctx.node_url, h, &recipient.key).await,
                None => Vec::new(),
            };
            super::outbox::queue_message(
                admin,
                &ctx.keys,
                recipient.key,
                rumor.clone(),
                &hints,
                &node_relay,
                ctx.wait,
            )
            .await
            .map(|items| {
                let accepted = |role: &str| -> Vec<String> {
                    items
                        .iter()
                        .filter(|i| i.role == role)
                        .flat_map(|i| &i.deliveries)
                        .filter(|d| d.state == "delivered")
                        .map(|d| d.relay.clone())
                        .collect()
                };
                (accepted("message"), accepted("copy"), items)
            })
        }
        None => deliver(
            &ctx.keys,
            recipient.key,
            rumor.clone(),
            &node_relay,
            ctx.own_relay.as_deref().unwrap_or(&node_relay),
        )
        .await
        .map(|(d, c)| (d, c, Vec::new())),
    };
    let (delivered_to, copied_to, queued) = match (delivered, &payment) {
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
        queued,
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
    let mut out = if s.queued.is_empty() {
        format!(
            "sent message {} to {to}\ndelivered to: {}\ncopy to self: {}",
            s.rumor_id,
            s.delivered_to.join(", "),
            if s.copied_to.is_empty() {
                "none (no relay accepted it)".to_owned()
            } else {
                s.copied_to.join(", ")
            }
        )
    } else {
        let mut out = format!(
            "queued message {} to {to} in your node's outbox",
            s.rumor_id
        );
        for item in &s.queued {
            out.push_str(if item.role == "copy" {
                "\ncopy to self:"
            } else {
                "\nto the recipient:"
            });
            for d in &item.deliveries {
                out.push_str(&format!("\n  {}", super::outbox::render_delivery(d)));
            }
        }
        if s.queued
            .iter()
            .flat_map(|i| &i.deliveries)
            .any(|d| d.state == "queued" || d.state == "retrying")
        {
            out.push_str(
                "\nyour node keeps trying until each relay accepts it: see `cairn msg outbox`",
            );
        }
        out
    };
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

#[cfg(test)]
mod tests {
    use bitcoin::Network;

    use super::super::tests::{test_invoice, BIP21};
    use super::*;
    use crate::cli::verify::ChainSource;

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
            outbox: None,
            wait: std::time::Duration::ZERO,
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
}
