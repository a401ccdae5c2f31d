//! `msg inbox`: AUTH to the relays, fetch the user's gift wraps, open them
//! (NIP-17 checks), and show each payment as the user's node saw it, one
//! payment proving one message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bitcoin::Network;
use cairn_payments::message_payment::{MessagePayment, MessagePaymentError, Verification};
use nostr::nips::nip59::UnwrappedGift;
use nostr::{Event, EventId, Filter, Keys, Kind, PublicKey, Timestamp};

use super::claims::{Claim, ClaimOutcome, ClaimStore};
use super::relays::{relay_client, RELAY_TIMEOUT};
use super::verification::{BitcoinRpc, PaymentChecker};
use crate::cli::support::admin::AdminClient;
use crate::cli::support::keys::npub;

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
    let wraps = fetch_gift_wraps(ctx).await?;
    let mut opened = Vec::new();
    let mut refused = Vec::new();
    for wrap in &wraps {
        match open_gift_wrap(&ctx.keys, wrap).await {
            Ok(m) => opened.push(m),
            Err(reason) => refused.push(Undecryptable {
                wrap_id: wrap.id,
                reason,
            }),
        }
    }
    let messages = verify_messages(ctx, opened).await?;
    Ok(Inbox { messages, refused })
}

/// Opened messages ([`open_gift_wrap`]) → one per rumor (the gift wrap this
/// inbox saw first), oldest first, each payment verified with the user's
/// own node (`ctx.admin`, `ctx.bitcoin`, `ctx.lnurl_metadata`), one payment
/// proving one message: claims go in the order the wraps were first seen,
/// kept in `ctx.claims_file`. `ctx.relays` and `ctx.limit` are not used.
/// `cairn msg inbox` and the owner's web app both run this.
pub async fn verify_messages(
    ctx: &InboxContext,
    opened: Vec<InboxMessage>,
) -> Result<Vec<InboxMessage>> {
    let me = ctx.keys.public_key();
    let mut claims = match &ctx.claims_file {
        Some(path) => ClaimStore::load(path)?,
        None => ClaimStore::in_memory(),
    };
    let now = Timestamp::now().as_secs();
    // Rumor id → (when its wrap was first seen, the message).
    let mut by_rumor: BTreeMap<EventId, (u64, InboxMessage)> = BTreeMap::new();
    for m in opened {
        // Only wraps whose payment can be claimed need remembering.
        let seen = match &m.payment {
            Some(_) if m.sender != me => claims.first_seen(m.wrap_id, now),
            _ => now,
        };
        match by_rumor.get(&m.id) {
            Some((s, _)) if *s <= seen => {}
            _ => {
                by_rumor.insert(m.id, (seen, m));
            }
        }
    }
    // Claims go in the order the wraps were first seen; the rumor's
    // created_at (chosen by the sender) only breaks ties between wraps first
    // seen in the same run.
    let mut messages: Vec<(u64, InboxMessage)> = by_rumor.into_values().collect();
    messages.sort_by_key(|(seen, m)| (*seen, m.created_at, m.id));
    let mut checker = PaymentChecker::new(
        ctx.admin.as_ref(),
        ctx.admin_unavailable.as_deref(),
        ctx.network,
        ctx.bitcoin.as_ref(),
        &ctx.lnurl_metadata,
    )
    .await?;
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
    Ok(messages)
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

#[cfg(test)]
mod tests {
    use nostr::nips::nip59::make_seal;
    use nostr::{EventBuilder, Tag};

    use super::*;
    use crate::cli::msg::send::build_rumor;

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
