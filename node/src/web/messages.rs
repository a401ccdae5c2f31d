//! Messages, the centre of the owner's app: contacts (added by `@handle` or
//! by key), conversations, and sending through the durable outbox.
//!
//! Invariants:
//! - The owner's key (`[outbox] key_file`, the key `cairn msg` uses) stays
//!   on the node: gift wraps are opened here ([`open_gift_wrap`], the same
//!   checks as `cairn msg inbox`: seal signer = rumor author, rumor id,
//!   kind 14, addressed to the owner) and pages show only the opened text,
//!   escaped by askama.
//! - Received messages and the copies of sent ones are the gift wraps
//!   `p`-tagged to the owner in this relay's own store (this node is the
//!   owner's first inbox relay), read in-process with the owner as viewer.
//! - A message is sent only through the outbox ([`Outbox::enqueue_all`]:
//!   the wrap for the contact and the copy to self, committed together
//!   before anything is sent); its delivery state is the outbox's. The copy
//!   is also published to this relay in-process at once, so the sent
//!   message shows without waiting for the worker (whose own delivery of it
//!   then counts as a duplicate).
//! - A contact added by `@handle` gets a check mark only when the handle's
//!   binding, as this node's identity service holds it, is anchored or final,
//!   still names the contact's key, and its proof bundle verified against
//!   this node's Bitcoin node ([`super::check`]); a moved, revoked or
//!   re-keyed handle is shown as a warning. A handle added with the Cairn
//!   node that vouches for it (`node`) is resolved and verified there by the
//!   code of `cairn msg send @handle --node URL` ([`resolve_recipient`],
//!   against this node's Bitcoin node).
//! - A payment attached to a message is made by the code of `cairn msg send
//!   --pay` ([`pay_lightning`], [`pay_onchain`]: the handle's LNURL-pay or
//!   on-chain endpoint, paid through this node's admin API), only to a
//!   contact whose `@handle` verifies at that moment; the message is queued
//!   only after the payment succeeded, and a failure after paying shows the
//!   proof ([`paid_not_sent`]) instead of inviting a second payment.
//! - A received payment is shown as PAID only by the checks of `cairn msg
//!   inbox` ([`verify_messages`]: this node's Lightning node or wallet and
//!   Bitcoin Core, the owner's own LNURL-pay metadata, one payment proving
//!   one message, claims in `msg-claims.json`); own copies never are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use cairn_identity::binding::normalize_handle;
use cairn_identity::service::{ServiceError, Standing as IdStanding};
use cairn_identity_core::bundle::DEFAULT_MIN_CONFIRMATIONS;
use cairn_payments::message_payment::{MessagePayment, Method, Verification};
use cairn_relay::store::QueryContext;
use cairn_relay::Relay;
use nostr::{
    Event, EventBuilder, EventId, Filter, JsonUtil as _, Keys, Kind, PublicKey, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::app::{app_html, app_of, checked_post, refused, signed_in_app, App, APP_JS_PATH};
use super::check::{self, NodeCheck};
use super::{Frame, Web};
use crate::admin_token::{token_path, AdminToken};
use crate::cli::msg::outbox::nip05_relays;
use crate::cli::msg::{
    build_rumor, http_client, http_url, lnurl_metadata, node_network, open_gift_wrap,
    paid_not_sent, pay_lightning, pay_onchain, resolve_recipient, verify_messages, ws_url,
    BitcoinRpc, InboxContext, InboxMessage, PayRequest, SendContext, UnverifiedRecipient,
    CLAIMS_FILE,
};
use crate::cli::npub;
use crate::cli::support::admin::{local_base_url, AdminClient};
use crate::cli::support::time::format_unix;
use crate::cli::{ChainSource, VerifyOptions};
use crate::outbox::{self, ItemView, NewItem, Outbox, Role};
use crate::settings::Settings;

/// Name of the contacts file inside the data directory (mode 0600).
pub const CONTACTS_FILE_NAME: &str = "web-contacts.json";
/// Longest message text accepted from the form.
pub const MAX_TEXT: usize = 4_000;
/// Most gift wraps read from the store for one page.
const MAX_WRAPS: usize = 2_000;
/// Most contacts kept.
const MAX_CONTACTS: usize = 500;
/// Opened wraps remembered; beyond it the cache starts over.
const MAX_OPENED: usize = 20_000;
/// Outbox items read to find delivery states.
const MAX_OUTBOX_ITEMS: usize = 1_000;
/// Most satoshis one message may carry.
pub const MAX_PAYMENT_SAT: u64 = 1_000_000;
/// Least satoshis of an on-chain payment: smaller outputs are dust, which
/// Bitcoin nodes do not relay.
pub const MIN_ONCHAIN_SAT: u64 = 546;
/// Longest node URL accepted with a contact.
const MAX_NODE_URL: usize = 200;
/// Received payments not (yet) shown as paid are asked about again after
/// this long; new ones at once.
const PAYMENT_RECHECK: Duration = Duration::from_secs(15);

/// What sending needs: the owner's key and the outbox.
pub struct Messaging {
    keys: Keys,
    outbox: Arc<Outbox>,
    settings: Settings,
    /// The payments of received messages as last verified.
    payments: tokio::sync::Mutex<PaymentChecks>,
}

/// Verdicts on the payments messages carry, by rumor id. A PAID one is
/// final (its claim is kept in the claims file); the others are asked about
/// again after [`PAYMENT_RECHECK`].
#[derive(Default)]
struct PaymentChecks {
    verdicts: HashMap<EventId, Verification>,
    last_round: Option<Instant>,
}

impl Messaging {
    /// Messaging as `keys`, through `outbox`.
    pub fn new(settings: &Settings, outbox: Arc<Outbox>, keys: Keys) -> Self {
        Self {
            keys,
            outbox,
            settings: settings.clone(),
            payments: tokio::sync::Mutex::default(),
        }
    }
}

/// One opened message.
#[derive(Clone)]
pub(super) struct Opened {
    /// The other party: the sender, or (for our own) the first recipient
    /// that is not us.
    counterpart: PublicKey,
    /// The message as `cairn msg inbox` opens it (text, payment tags).
    msg: InboxMessage,
}

/// Gift wraps already opened.
#[derive(Default)]
pub(super) struct OpenedCache(HashMap<EventId, Option<Opened>>);

#[derive(Clone, Serialize, Deserialize)]
struct Contact {
    /// Hex key.
    key: String,
    /// The handle it was added by.
    handle: Option<String>,
    added_at: u64,
    /// The handle's bundle verified at the last full check.
    #[serde(default)]
    verified: bool,
    /// The Cairn node that vouches for the handle (`http(s)://…`) and
    /// serves its LNURL-pay; `None`: this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct ContactsFile {
    contacts: Vec<Contact>,
}

/// How far a contact is to be trusted, as the pages show it.
pub(super) enum Standing {
    /// The handle's binding verified: a check mark.
    Verified(String),
    /// Moved, revoked, re-keyed or failing: a warning.
    Warning(String),
    /// Not (yet) checkable: no check mark, no alarm.
    Unverified(String),
    /// Added by key: nothing to check.
    Key,
}

struct ConversationView {
    npub: String,
    name: String,
    standing: Standing,
    last: Option<String>,
}

struct MessageView {
    id: String,
    outgoing: bool,
    from: String,
    when: String,
    text: String,
    delivery: Option<String>,
    payment: Option<PaymentLine>,
}

/// A message's payment as the list shows it.
struct PaymentLine {
    /// `paid`, `sent` (our own), `pending` or `unverified`.
    state: &'static str,
    text: String,
}

#[derive(Template)]
#[template(path = "app/messages.html")]
struct MessagesPage {
    frame: Frame,
    app_csrf: Option<String>,
    csrf: String,
    unavailable: Option<&'static str>,
    me: String,
    error: Option<String>,
    conversations: Vec<ConversationView>,
}

#[derive(Template)]
#[template(path = "app/conversation.html")]
struct ConversationPage {
    frame: Frame,
    app_csrf: Option<String>,
    csrf: String,
    js: &'static str,
    c: ConversationView,
    error: Option<String>,
    messages: Vec<MessageView>,
    max_text: usize,
    max_sat: u64,
    /// Why no payment can be attached (no handle); `None`: it can.
    no_payment: Option<String>,
    /// This rendering's one-time token: a payment is made once per form.
    pay_token: String,
}

#[derive(Template)]
#[template(path = "app/message_list.html")]
struct MessageList {
    messages: Vec<MessageView>,
}

fn short(key: &PublicKey) -> String {
    let n = npub(key);
    format!(
        "{}…{}",
        &n[..12.min(n.len())],
        &n[n.len().saturating_sub(6)..]
    )
}

fn load_contacts(app: &App) -> ContactsFile {
    match std::fs::read_to_string(app.contacts_path()) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "web: the contacts file does not parse; showing none");
            ContactsFile::default()
        }),
        Err(_) => ContactsFile::default(),
    }
}

fn save_contacts(app: &App, contacts: &ContactsFile) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(contacts).map_err(|e| e.to_string())?;
    cairn_bitcoin::private_file::replace(&app.contacts_path(), &json).map_err(|e| {
        tracing::warn!(error = %e, "web: cannot write the contacts file");
        "the contacts file could not be written; see the node's log".to_owned()
    })
}

fn contact_name(c: Option<&Contact>, key: &PublicKey) -> String {
    match c.and_then(|c| c.handle.as_deref()) {
        Some(h) => format!("@{h}"),
        None => short(key),
    }
}

/// Every message in the owner's inbox on this relay, oldest first.
async fn all_messages(web: &Web, app: &App, m: &Messaging) -> Vec<Opened> {
    let me = m.keys.public_key();
    let filter = Filter::new()
        .kind(Kind::GiftWrap)
        .pubkey(me)
        .limit(MAX_WRAPS);
    let ctx = QueryContext {
        viewers: vec![me],
        now: Timestamp::now().as_secs(),
        max_limit: MAX_WRAPS,
    };
    let stored = match web.relay.store().query(&filter, &ctx).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "web: cannot read the owner's gift wraps");
            Vec::new()
        }
    };
    let wraps: Vec<Event> = stored
        .iter()
        .filter_map(|s| Event::from_json(&s.json).ok())
        .collect();
    let unknown: Vec<&Event> = {
        let cache = app.opened.lock().unwrap_or_else(|e| e.into_inner());
        wraps
            .iter()
            .filter(|w| !cache.0.contains_key(&w.id))
            .collect()
    };
    let mut fresh = Vec::with_capacity(unknown.len());
    for wrap in unknown {
        let opened = match open_gift_wrap(&m.keys, wrap).await {
            Ok(msg) => Some(Opened {
                counterpart: if msg.sender == me {
                    msg.recipients
                        .iter()
                        .copied()
                        .find(|k| *k != me)
                        .unwrap_or(me)
                } else {
                    msg.sender
                },
                msg,
            }),
            Err(why) => {
                tracing::debug!(wrap = %wrap.id, why, "web: a gift wrap was not opened");
                None
            }
        };
        fresh.push((wrap.id, opened));
    }
    let mut cache = app.opened.lock().unwrap_or_else(|e| e.into_inner());
    if cache.0.len() + fresh.len() > MAX_OPENED {
        cache.0.clear();
    }
    cache.0.extend(fresh);
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<Opened> = wraps
        .iter()
        .filter_map(|w| cache.0.get(&w.id).cloned().flatten())
        .filter(|o| seen.insert(o.msg.id))
        .collect();
    out.sort_by_key(|o| (o.msg.created_at, o.msg.id));
    out
}

/// This node's own HTTP base: `http://<bind>` (loopback for a wildcard
/// bind, as the CLI reaches it), or the relay's URL when the port was
/// chosen at start (`:0`).
fn own_base(web: &Web, settings: &Settings) -> String {
    if settings.bind.port() != 0 {
        return local_base_url(settings.bind);
    }
    crate::server::routes::zaps::http_base_of(web.relay.public_url())
        .unwrap_or_else(|| local_base_url(settings.bind))
}

/// This node's admin API, as `cairn msg` reaches it (the token from the
/// data directory; never shown).
fn own_admin(settings: &Settings, base: &str) -> Result<AdminClient, String> {
    AdminToken::load(&token_path(&settings.data_dir))
        .and_then(|t| AdminClient::new(base, t.expose()))
        .map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "web: this node's admin API cannot be used");
            "this node's admin API cannot be used (see the node's log)".to_owned()
        })
}

/// What `cairn msg inbox` on this node would check payments with.
async fn inbox_context(web: &Web, m: &Messaging) -> InboxContext {
    let settings = &m.settings;
    let base = own_base(web, settings);
    let (admin, admin_unavailable) = match own_admin(settings, &base) {
        Ok(a) => (Some(a), None),
        Err(why) => (None, Some(why)),
    };
    let lnurl_metadata = match http_client() {
        Ok(http) => lnurl_metadata(&http, &base, &settings.zaps.names).await,
        Err(_) => Vec::new(),
    };
    InboxContext {
        keys: m.keys.clone(),
        relays: Vec::new(),
        admin,
        admin_unavailable,
        network: settings.bitcoin.network.into(),
        limit: 0,
        bitcoin: (!settings.bitcoin.rpc_user.is_empty())
            .then(|| BitcoinRpc::from_settings(settings)),
        lnurl_metadata,
        claims_file: Some(settings.data_dir.join(CLAIMS_FILE)),
    }
}

/// The verdict on every payment in `messages`, by rumor id: the checks of
/// `cairn msg inbox` ([`verify_messages`]) over every message not already
/// PAID, run when one is new or the last run is [`PAYMENT_RECHECK`] old.
async fn payment_verdicts(
    web: &Web,
    m: &Messaging,
    messages: &[Opened],
) -> HashMap<EventId, Verification> {
    let mut checks = m.payments.lock().await;
    let open: Vec<InboxMessage> = messages
        .iter()
        .filter(|o| o.msg.payment.is_some())
        .filter(|o| {
            !checks
                .verdicts
                .get(&o.msg.id)
                .is_some_and(Verification::is_paid)
        })
        .map(|o| o.msg.clone())
        .collect();
    let fresh = open.iter().any(|o| !checks.verdicts.contains_key(&o.id));
    let stale = checks
        .last_round
        .is_none_or(|t| t.elapsed() >= PAYMENT_RECHECK);
    if !open.is_empty() && (fresh || stale) {
        let ctx = inbox_context(web, m).await;
        match verify_messages(&ctx, open).await {
            Ok(checked) => {
                for msg in checked {
                    if let Some(p) = msg.payment {
                        checks.verdicts.insert(msg.id, p.verification);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "web: payments could not be checked")
            }
        }
        checks.last_round = Some(Instant::now());
    }
    checks.verdicts.clone()
}

/// "5000 sat", "1.5 sat".
fn sats(msat: u64) -> String {
    match msat % 1000 {
        0 => format!("{} sat", msat / 1000),
        r => format!("{}.{r:03} sat", msat / 1000),
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Lightning => "Lightning",
        Method::Onchain => "on-chain",
    }
}

/// How the list shows a payment: received ones as `cairn msg inbox` words
/// them (PAID only when verified), our own as what we paid.
fn payment_line(outgoing: bool, v: &Verification) -> PaymentLine {
    match (outgoing, v) {
        (_, Verification::Paid { .. }) => PaymentLine {
            state: "paid",
            text: v.to_string(),
        },
        (
            true,
            Verification::Unconfirmed {
                method,
                amount_msat,
                ..
            },
        ) => PaymentLine {
            state: "sent",
            text: format!(
                "You paid {} ({}) with this message; the receipt matches its request. \
                 Only the recipient's node can confirm it arrived.",
                sats(*amount_msat),
                method_name(*method)
            ),
        },
        (false, Verification::Unconfirmed { .. }) => PaymentLine {
            state: "pending",
            text: v.to_string(),
        },
        (_, Verification::Unverified(_)) => PaymentLine {
            state: "unverified",
            text: v.to_string(),
        },
    }
}

/// Delivery state of each message the outbox holds, by rumor id (hex).
async fn deliveries(m: &Messaging) -> HashMap<String, String> {
    let items = match m.outbox.db().list(MAX_OUTBOX_ITEMS, None).await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "web: cannot read the outbox");
            return HashMap::new();
        }
    };
    items
        .into_iter()
        .filter(|i| i.role == Role::Message.as_str())
        .filter_map(|i| Some((i.rumor_id.clone()?, delivery_text(&i))))
        .collect()
}

/// "Delivered to 1 of 2 relays", "Queued", "Retrying: …", "Not delivered: …".
fn delivery_text(item: &ItemView) -> String {
    let n = item.deliveries.len();
    let count = |s: &str| item.deliveries.iter().filter(|d| d.state == s).count();
    let last_error = item
        .deliveries
        .iter()
        .filter_map(|d| d.last_error.as_deref())
        .next()
        .unwrap_or("no answer");
    let delivered = count("delivered");
    if delivered == n && n > 0 {
        return format!("Delivered ({delivered} of {n} relays)");
    }
    if delivered > 0 {
        return format!("Delivered to {delivered} of {n} relays; still trying the others");
    }
    if count("retrying") > 0 {
        return format!("Retrying: {last_error}");
    }
    if count("queued") > 0 {
        return "Queued for delivery".to_owned();
    }
    format!("Not delivered: {last_error}")
}

/// What `cairn msg send @handle --node URL` resolves a handle with: the
/// node at `node_url`, checked against this node's Bitcoin node with the
/// command's defaults (any witness, [`DEFAULT_MIN_CONFIRMATIONS`]).
fn send_context(m: &Messaging, node_url: &str) -> SendContext {
    let b = &m.settings.bitcoin;
    SendContext {
        keys: m.keys.clone(),
        node_url: node_url.to_owned(),
        verify: VerifyOptions {
            chain: ChainSource::Rpc {
                url: b.rpc_url.clone(),
                user: b.rpc_user.clone(),
                password: b.rpc_password.clone(),
            },
            network: b.network.into(),
            min_confirmations: DEFAULT_MIN_CONFIRMATIONS,
            trusted_witnesses: Vec::new(),
        },
        admin: None,
        own_relay: None,
        outbox: None,
        wait: Duration::ZERO,
    }
}

/// `@h` resolved on `node` by [`resolve_recipient`]: its key, or the
/// warning (`Err(Ok)`: it does not verify) or the reason it could not be
/// checked (`Err(Err)`).
async fn resolve_on(
    m: &Messaging,
    node: &str,
    h: &str,
) -> Result<PublicKey, Result<String, String>> {
    match resolve_recipient(&send_context(m, node), &format!("@{h}"), None).await {
        Ok(r) => Ok(r.key),
        Err(e) => match e.downcast_ref::<UnverifiedRecipient>() {
            Some(u) => Err(Ok(u.reason.clone())),
            None => {
                tracing::warn!(error = %format!("{e:#}"), node, "web: a handle could not be resolved");
                Err(Err(format!(
                    "@{h} could not be checked on {node} (see the node's log)"
                )))
            }
        },
    }
}

/// The contact's standing; `full` runs the bundle check against this
/// node's Bitcoin node (else the last full check's result is used).
async fn standing(web: &Web, m: Option<&Messaging>, c: &Contact, full: bool) -> (Standing, bool) {
    let Some(h) = &c.handle else {
        return (Standing::Key, c.verified);
    };
    if let Some(node) = &c.node {
        if !full {
            return if c.verified {
                (
                    Standing::Verified(format!("@{h} verified (on {node})")),
                    true,
                )
            } else {
                (
                    Standing::Unverified(format!("@{h} on {node}: not verified at the last check")),
                    false,
                )
            };
        }
        let Some(m) = m else {
            return (
                Standing::Unverified(format!("@{h} cannot be checked: messaging is off")),
                c.verified,
            );
        };
        return match resolve_on(m, node, h).await {
            Ok(key) if key.to_hex() == c.key => (
                Standing::Verified(format!(
                    "@{h} verified against this node's Bitcoin node (bound on {node})"
                )),
                true,
            ),
            Ok(_) => (
                Standing::Warning(format!("@{h} on {node} is now bound to another key")),
                false,
            ),
            Err(Ok(reason)) => (
                Standing::Warning(format!("@{h} on {node} does not verify: {reason}")),
                false,
            ),
            Err(Err(why)) => (Standing::Unverified(why), c.verified),
        };
    }
    let Some(identity) = &web.identity else {
        return (
            Standing::Unverified(format!(
                "@{h} cannot be checked: this node's identity witness is off"
            )),
            c.verified,
        );
    };
    let view = match identity.service.lookup_handle(h).await {
        Ok(v) => v,
        Err(ServiceError::NotFound(_)) => {
            return (
                Standing::Warning(format!("@{h} is no longer bound on this node")),
                false,
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "web: identity lookup failed");
            return (
                Standing::Unverified(format!("@{h} could not be looked up")),
                c.verified,
            );
        }
    };
    match view.status {
        IdStanding::Moved => {
            return (
                Standing::Warning(format!(
                    "@{h} moved to another X account: this key may no longer be theirs"
                )),
                false,
            )
        }
        IdStanding::Revoked => {
            return (
                Standing::Warning(format!("@{h}'s binding was revoked")),
                false,
            )
        }
        _ => {}
    }
    if view.pubkey.as_deref() != Some(c.key.as_str()) {
        return (
            Standing::Warning(format!("@{h} is now bound to another key")),
            false,
        );
    }
    if view.status == IdStanding::Pending {
        return (
            Standing::Unverified(format!("@{h}: binding pending, not in a Bitcoin block yet")),
            false,
        );
    }
    let status = view.status.as_str();
    if !full {
        return if c.verified {
            (
                Standing::Verified(format!("@{h} verified ({status})")),
                true,
            )
        } else {
            (
                Standing::Unverified(format!("@{h}: not checked yet (open the conversation)")),
                false,
            )
        };
    }
    let Some(bundle) = view.bundle else {
        return (
            Standing::Unverified(format!("@{h}: no proof bundle yet")),
            false,
        );
    };
    match check::identity_bundle(identity, bundle).await {
        NodeCheck::Verified(p) => (
            Standing::Verified(format!(
                "@{h} verified against this node's Bitcoin node: {status}, {} confirmations",
                p.confirmations
            )),
            true,
        ),
        NodeCheck::Failed { step, reason } => (
            Standing::Warning(format!("@{h}'s proof did not verify ({step}: {reason})")),
            false,
        ),
        NodeCheck::Unreachable => (
            Standing::Unverified(format!(
                "@{h} could not be checked: this node's Bitcoin node did not answer"
            )),
            c.verified,
        ),
    }
}

/// `GET /app/messages`.
pub(super) async fn list_page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (app, session) = match signed_in_app(&web, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    render_list(&web, app, &session.csrf, StatusCode::OK, None).await
}

async fn render_list(
    web: &Web,
    app: &App,
    csrf: &str,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let mut page = MessagesPage {
        frame: Frame::of(web),
        app_csrf: Some(csrf.to_owned()),
        csrf: csrf.to_owned(),
        unavailable: None,
        me: String::new(),
        error,
        conversations: Vec::new(),
    };
    let m = match &app.messaging {
        Ok(m) => m,
        Err(why) => {
            page.unavailable = Some(why);
            return app_html(status, page.render());
        }
    };
    page.me = npub(&m.keys.public_key());
    let contacts = load_contacts(app).contacts;
    let messages = all_messages(web, app, m).await;
    let mut last: HashMap<PublicKey, &Opened> = HashMap::new();
    for o in &messages {
        last.insert(o.counterpart, o);
    }
    let mut keys: Vec<PublicKey> = contacts
        .iter()
        .filter_map(|c| PublicKey::from_hex(&c.key).ok())
        .collect();
    for k in last.keys() {
        if !keys.contains(k) {
            keys.push(*k);
        }
    }
    // Most recent conversation first; contacts without messages after.
    keys.sort_by_key(|k| std::cmp::Reverse(last.get(k).map(|o| o.msg.created_at)));
    for key in keys {
        let contact = contacts.iter().find(|c| c.key == key.to_hex());
        let standing = match contact {
            Some(c) => standing(web, Some(m), c, false).await.0,
            None => Standing::Unverified("not in your contacts".to_owned()),
        };
        page.conversations.push(ConversationView {
            npub: npub(&key),
            name: contact_name(contact, &key),
            standing,
            last: last.get(&key).map(|o| {
                let text: String = o.msg.text.chars().take(80).collect();
                format!("{} · {text}", format_unix(o.msg.created_at.as_secs()))
            }),
        });
    }
    app_html(status, page.render())
}

#[derive(Deserialize)]
pub(super) struct ContactForm {
    csrf: Option<String>,
    #[serde(default)]
    contact: String,
    /// The Cairn node that vouches for the handle (optional).
    #[serde(default)]
    node: String,
}

/// The optional node of the contact form: `http(s)://host[:port]` (a
/// `ws(s)://` relay URL is taken as its node), without credentials.
fn parse_node_url(raw: &str) -> Result<Option<String>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || {
        format!(
            "The node is the http:// or https:// address of a Cairn node (at most {MAX_NODE_URL} \
             characters), e.g. https://cairn.example.org."
        )
    };
    if raw.len() > MAX_NODE_URL {
        return Err(bad());
    }
    let http = http_url(raw).map_err(|_| bad())?;
    let url = url::Url::parse(&http).map_err(|_| bad())?;
    if url.host_str().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(Some(http))
}

/// `POST /app/contacts`: adds a contact by `@handle` or key.
pub(super) async fn add_contact(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<ContactForm>,
) -> Response {
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let session =
        match checked_post(&web, app, &headers, form.csrf.as_deref(), "/app/messages").await {
            Ok(s) => s,
            Err(r) => return r,
        };
    let fail =
        |msg: String| render_list(&web, app, &session.csrf, StatusCode::BAD_REQUEST, Some(msg));
    let input = form.contact.trim();
    let node = match parse_node_url(&form.node) {
        Ok(n) => n,
        Err(e) => return fail(e).await,
    };
    let by_key = input.starts_with("npub1") || input.len() == 64;
    let (key, handle) = if by_key {
        if node.is_some() {
            return fail(
                "A node goes with an @handle: it is where the handle is looked up.".to_owned(),
            )
            .await;
        }
        match crate::cli::support::keys::parse_public_key(input) {
            Ok(k) => (k, None),
            Err(_) => return fail("That is not an npub or a 64-hex-digit key.".to_owned()).await,
        }
    } else if let Some(node) = &node {
        let Ok(h) = normalize_handle(input) else {
            return fail("An X handle is 1 to 15 letters, digits or underscores.".to_owned()).await;
        };
        let Ok(m) = &app.messaging else {
            return fail("Messaging is off on this node.".to_owned()).await;
        };
        match resolve_on(m, node, &h).await {
            Ok(k) => (k, Some(h)),
            Err(Ok(reason)) => {
                return fail(format!("@{h} on {node} does not verify: {reason}.")).await
            }
            Err(Err(why)) => return fail(format!("{why}.")).await,
        }
    } else {
        let Ok(h) = normalize_handle(input) else {
            return fail(
                "An X handle is 1 to 15 letters, digits or underscores; a key is npub1… or 64 hex digits."
                    .to_owned(),
            )
            .await;
        };
        let Some(identity) = &web.identity else {
            return fail(format!(
                "@{h} cannot be looked up: this node's identity witness is off. Add the contact by npub."
            ))
            .await;
        };
        match identity.service.lookup_handle(&h).await {
            Ok(view) => match view.pubkey.as_deref().map(PublicKey::from_hex) {
                Some(Ok(k))
                    if matches!(
                        view.status,
                        IdStanding::Pending | IdStanding::Anchored | IdStanding::Final
                    ) =>
                {
                    (k, Some(h))
                }
                _ => {
                    return fail(format!(
                        "@{h} has no usable binding on this node (it is {}).",
                        view.status.as_str()
                    ))
                    .await
                }
            },
            Err(ServiceError::NotFound(_)) => {
                return fail(format!("@{h} is not bound on this node.")).await
            }
            Err(e) => {
                tracing::error!(error = %e, "web: identity lookup failed");
                return fail(format!("@{h} could not be looked up; see the node's log.")).await;
            }
        }
    };
    let _guard = app.contacts_lock.lock().await;
    let mut file = load_contacts(app);
    let mut contact = Contact {
        key: key.to_hex(),
        handle,
        added_at: Timestamp::now().as_secs(),
        verified: false,
        node,
    };
    contact.verified = standing(&web, app.messaging.as_ref().ok(), &contact, true)
        .await
        .1;
    match file.contacts.iter_mut().find(|c| c.key == contact.key) {
        Some(existing) => {
            if contact.handle.is_some() {
                *existing = contact;
            }
        }
        None => {
            if file.contacts.len() >= MAX_CONTACTS {
                return fail(format!("At most {MAX_CONTACTS} contacts.")).await;
            }
            file.contacts.push(contact);
        }
    }
    if let Err(e) = save_contacts(app, &file) {
        return fail(e).await;
    }
    Redirect::to(&format!("/app/c/{}", npub(&key))).into_response()
}

fn parse_key(raw: &str) -> Option<PublicKey> {
    crate::cli::support::keys::parse_public_key(raw).ok()
}

async fn message_views(
    web: &Web,
    app: &App,
    m: &Messaging,
    key: &PublicKey,
    name: &str,
) -> Vec<MessageView> {
    let me = m.keys.public_key();
    let states = deliveries(m).await;
    let all = all_messages(web, app, m).await;
    // Over every conversation: claims go in the order wraps were first seen.
    let verdicts = payment_verdicts(web, m, &all).await;
    all.into_iter()
        .filter(|o| o.counterpart == *key)
        .map(|o| {
            let msg = o.msg;
            let outgoing = msg.sender == me;
            let payment = msg
                .payment
                .as_ref()
                .map(|p| payment_line(outgoing, verdicts.get(&msg.id).unwrap_or(&p.verification)));
            MessageView {
                id: msg.id.to_hex(),
                outgoing,
                from: name.to_owned(),
                when: format_unix(msg.created_at.as_secs()),
                delivery: if outgoing {
                    states.get(&msg.id.to_hex()).cloned()
                } else {
                    None
                },
                payment,
                text: msg.text,
            }
        })
        .collect()
}

/// `GET /app/c/{key}`.
pub(super) async fn conversation_page(
    State(web): State<Arc<Web>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (app, session) = match signed_in_app(&web, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    render_conversation(&web, app, &session.csrf, &raw, StatusCode::OK, None).await
}

/// The conversation's peer named by the path (`raw`) and the messaging
/// service, or the page that says why there is no conversation.
#[allow(clippy::result_large_err)] // the error is the page, returned at once
fn peer_and_messaging<'a>(
    web: &Web,
    app: &'a App,
    raw: &str,
) -> Result<(PublicKey, &'a Messaging), Response> {
    let Some(key) = parse_key(raw) else {
        return Err(refused(
            web,
            StatusCode::NOT_FOUND,
            "Not a key",
            "This address names no Nostr key.",
            "/app/messages",
        ));
    };
    match &app.messaging {
        Ok(m) => Ok((key, m)),
        Err(why) => Err(refused(
            web,
            StatusCode::SERVICE_UNAVAILABLE,
            "Messaging is off",
            why,
            "/app/messages",
        )),
    }
}

async fn render_conversation(
    web: &Web,
    app: &App,
    csrf: &str,
    raw: &str,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let (key, m) = match peer_and_messaging(web, app, raw) {
        Ok(found) => found,
        Err(r) => return r,
    };
    let mut contacts = load_contacts(app);
    let contact = contacts
        .contacts
        .iter()
        .find(|c| c.key == key.to_hex())
        .cloned();
    let standing = match &contact {
        Some(c) => {
            let (s, verified) = standing(web, Some(m), c, true).await;
            if verified != c.verified {
                let _guard = app.contacts_lock.lock().await;
                contacts = load_contacts(app);
                if let Some(stored) = contacts.contacts.iter_mut().find(|s| s.key == c.key) {
                    stored.verified = verified;
                    let _ = save_contacts(app, &contacts);
                }
            }
            s
        }
        None => Standing::Unverified("not in your contacts".to_owned()),
    };
    let name = contact_name(contact.as_ref(), &key);
    let no_payment = match contact.as_ref().and_then(|c| c.handle.as_ref()) {
        Some(_) => None,
        None => Some(format!(
            "A payment goes to a contact's @handle (its Lightning address on the node that \
             vouches for it); {name} was not added by one."
        )),
    };
    let page = ConversationPage {
        frame: Frame::of(web),
        app_csrf: Some(csrf.to_owned()),
        csrf: csrf.to_owned(),
        js: APP_JS_PATH,
        messages: message_views(web, app, m, &key, &name).await,
        c: ConversationView {
            npub: npub(&key),
            name,
            standing,
            last: None,
        },
        error,
        max_text: MAX_TEXT,
        max_sat: MAX_PAYMENT_SAT,
        pay_token: super::once::OnceTokens::fresh(),
        no_payment,
    };
    app_html(status, page.render())
}

/// `GET /app/c/{key}/list`: the message list alone, for the page's script.
pub(super) async fn conversation_fragment(
    State(web): State<Arc<Web>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if app.sessions.get(&headers).await.is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (Some(key), Ok(m)) = (parse_key(&raw), &app.messaging) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let contacts = load_contacts(app);
    let contact = contacts.contacts.iter().find(|c| c.key == key.to_hex());
    let name = contact_name(contact, &key);
    let list = MessageList {
        messages: message_views(&web, app, m, &key, &name).await,
    };
    app_html(StatusCode::OK, list.render())
}

#[derive(Deserialize)]
pub(super) struct SendForm {
    csrf: Option<String>,
    #[serde(default)]
    text: String,
    /// Satoshis to pay with the message; empty: no payment.
    #[serde(default)]
    amount_sat: String,
    /// `lightning` (the default) or `onchain`.
    #[serde(default)]
    method: String,
    /// The form's one-time token ([`super::once`]).
    #[serde(default)]
    pay_token: String,
}

/// The payment fields of the send form: `None` without an amount.
fn parse_payment(amount: &str, method: &str) -> Result<Option<PayRequest>, String> {
    let digits: String = amount
        .trim()
        .chars()
        .filter(|c| !matches!(c, ',' | '_' | ' '))
        .collect();
    if digits.is_empty() {
        return Ok(None);
    }
    let onchain = match method.trim() {
        "" | "lightning" => false,
        "onchain" => true,
        _ => return Err("Choose Lightning or on-chain for the payment.".to_owned()),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("The amount is a whole number of satoshis, e.g. 5000.".to_owned());
    }
    let sat: u64 = match digits.parse() {
        Ok(n) if n <= MAX_PAYMENT_SAT => n,
        _ => return Err(format!("A message carries at most {MAX_PAYMENT_SAT} sat.")),
    };
    if sat == 0 {
        return Err("The amount is at least 1 sat (leave it empty to send no payment).".to_owned());
    }
    if onchain && sat < MIN_ONCHAIN_SAT {
        return Err(format!(
            "An on-chain payment is at least {MIN_ONCHAIN_SAT} sat: smaller outputs are dust, \
             which Bitcoin nodes do not relay. Use Lightning for small amounts."
        ));
    }
    Ok(Some(PayRequest {
        amount_msat: sat * 1000,
        onchain,
    }))
}

/// Where a message to `c` goes when it lists no inbox relays that this
/// node finds: a handle's node's NIP-05 relays, then that node's relay
/// (what `cairn msg send --node` does); nothing extra for the others.
async fn contact_routes(c: Option<&Contact>, key: &PublicKey) -> (Vec<String>, Option<String>) {
    match c.and_then(|c| Some((c.node.as_deref()?, c.handle.as_deref()?))) {
        Some((node, h)) => (nip05_relays(node, h, key).await, ws_url(node).ok()),
        None => (Vec::new(), None),
    }
}

/// Pays `request` to contact `c`'s `@handle` through this node, by the
/// code of `cairn msg send --pay`; only when the handle verifies now.
async fn pay_contact(
    web: &Web,
    m: &Messaging,
    c: Option<&Contact>,
    name: &str,
    request: PayRequest,
) -> Result<MessagePayment, String> {
    let Some((c, h)) = c.and_then(|c| Some((c, c.handle.clone()?))) else {
        return Err(format!(
            "Not paid, not sent: a payment goes to a contact's @handle (its Lightning address on \
             the node that vouches for it), and {name} was not added by one."
        ));
    };
    match standing(web, Some(m), c, true).await.0 {
        Standing::Verified(_) => {}
        Standing::Warning(why) | Standing::Unverified(why) => {
            return Err(format!(
                "Not paid, not sent: payments go only to a verified handle, and {why}."
            ))
        }
        Standing::Key => {
            return Err("Not paid, not sent: this contact has no handle to pay.".to_owned())
        }
    }
    let base = own_base(web, &m.settings);
    let admin = own_admin(&m.settings, &base).map_err(|e| format!("Not paid, not sent: {e}."))?;
    let network = node_network(&admin).await.map_err(|e| {
        tracing::warn!(error = %format!("{e:#}"), "web: this node's payments do not answer");
        "Not paid, not sent: this node's payments do not answer ([payments] enabled? see the \
         node's log)."
            .to_owned()
    })?;
    let http = http_client().map_err(|e| format!("Not paid, not sent: {e:#}"))?;
    let node_url = c.node.clone().unwrap_or(base);
    let paid = if request.onchain {
        pay_onchain(&http, &admin, &node_url, &h, request.amount_msat, network).await
    } else {
        pay_lightning(&http, &admin, &node_url, &h, request.amount_msat, network).await
    };
    paid.map_err(|e| format!("Not sent: {e:#}"))
}

/// `POST /app/c/{key}/send`: the message into the outbox.
pub(super) async fn send(
    State(web): State<Arc<Web>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(form): Form<SendForm>,
) -> Response {
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let back = format!(
        "/app/c/{}",
        raw.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
    );
    let session = match checked_post(&web, app, &headers, form.csrf.as_deref(), &back).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (key, m) = match peer_and_messaging(&web, app, &raw) {
        Ok(found) => found,
        Err(r) => return r,
    };
    let text = form.text.trim();
    let fail = |msg: String| {
        render_conversation(
            &web,
            app,
            &session.csrf,
            &raw,
            StatusCode::BAD_REQUEST,
            Some(msg),
        )
    };
    if text.is_empty() {
        return fail("The message is empty.".to_owned()).await;
    }
    if text.chars().count() > MAX_TEXT {
        return fail(format!("A message is at most {MAX_TEXT} characters.")).await;
    }
    let pay = match parse_payment(&form.amount_sat, &form.method) {
        Ok(p) => p,
        Err(e) => return fail(e).await,
    };
    let contacts = load_contacts(app);
    let contact = contacts.contacts.iter().find(|c| c.key == key.to_hex());
    let name = contact_name(contact, &key);
    if pay.is_some() && !app.paid_forms.spend(&form.pay_token).await {
        // A second POST of one form (a double click, a replay): its
        // payment was made, or is being made, by the first.
        return render_conversation(
            &web,
            app,
            &session.csrf,
            &raw,
            StatusCode::CONFLICT,
            Some(
                "This form was already sent, so nothing was paid again. \
                 Check the conversation; to pay again, write the message anew."
                    .to_owned(),
            ),
        )
        .await;
    }
    let payment = match pay {
        None => None,
        Some(request) => match pay_contact(&web, m, contact, &name, request).await {
            Ok(p) => Some(p),
            Err(e) => return fail(e).await,
        },
    };
    let (hints, fallback) = contact_routes(contact, &key).await;
    match enqueue(
        &web.relay,
        m,
        key,
        text,
        payment.as_ref(),
        &hints,
        fallback.as_deref(),
    )
    .await
    {
        Ok(()) => Redirect::to(&format!("/app/c/{}", npub(&key))).into_response(),
        Err(e) => match &payment {
            // Paid but not queued: the proof, so the owner does not pay again.
            Some(p) => {
                let to = contact
                    .and_then(|c| c.handle.as_deref())
                    .map(|h| format!("@{h}"))
                    .unwrap_or_else(|| npub(&key));
                fail(format!("{e} {}", paid_not_sent(p, &to, text))).await
            }
            None => fail(e).await,
        },
    }
}

/// Wraps `text` (with `payment`'s tags) for `to` and for the owner and
/// commits both to the outbox; `hints` and `fallback` as for
/// [`outbox::destinations`].
async fn enqueue(
    relay: &Arc<Relay>,
    m: &Messaging,
    to: PublicKey,
    text: &str,
    payment: Option<&MessagePayment>,
    hints: &[String],
    fallback: Option<&str>,
) -> Result<(), String> {
    let me = m.keys.public_key();
    let rumor = build_rumor(me, to, text, payment);
    let rumor_id = rumor.id;
    let wrap = EventBuilder::gift_wrap(&m.keys, &to, rumor.clone(), [])
        .await
        .map_err(|e| format!("cannot wrap the message: {e}"))?;
    let copy = EventBuilder::gift_wrap(&m.keys, &me, rumor, [])
        .await
        .map_err(|e| format!("cannot wrap the copy: {e}"))?;
    let settings = &m.settings;
    let to_relays =
        outbox::destinations(relay, &to, hints, &settings.outbox.lookup_relays, fallback).await;
    if to_relays.is_empty() {
        return Err(
            "No inbox relay is known for this contact (no kind 10050 found here or on [outbox] \
             lookup_relays), so the message was not queued."
                .to_owned(),
        );
    }
    let now = Timestamp::now().as_secs();
    let expires_at = now.saturating_add(settings.outbox.ttl_secs);
    let items = [
        NewItem {
            event: wrap,
            role: Role::Message,
            recipient: to,
            rumor_id,
            created_at: now,
            expires_at,
            relays: to_relays,
        },
        NewItem {
            event: copy.clone(),
            role: Role::Copy,
            recipient: me,
            rumor_id,
            created_at: now,
            expires_at,
            relays: outbox::own_inboxes(settings, relay),
        },
    ];
    m.outbox.enqueue_all(&items).await.map_err(|e| {
        tracing::warn!(error = %e, "web: cannot enqueue a message");
        "The outbox database is unavailable; the message was not queued.".to_owned()
    })?;
    // Shown at once; the worker's own delivery of it is then a duplicate.
    if let Err(refused) = relay.publish(copy).await {
        tracing::debug!(%refused, "web: the copy to self waits for the outbox worker");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_amounts_are_bounded_whole_satoshis() {
        assert_eq!(parse_payment("", "lightning"), Ok(None));
        assert_eq!(parse_payment("  ", "onchain"), Ok(None));
        assert_eq!(
            parse_payment("5,000", ""),
            Ok(Some(PayRequest {
                amount_msat: 5_000_000,
                onchain: false
            }))
        );
        assert_eq!(
            parse_payment("20000", "onchain"),
            Ok(Some(PayRequest {
                amount_msat: 20_000_000,
                onchain: true
            }))
        );
        for bad in ["0", "-5", "1.5", "5k", "99999999999999999999999"] {
            assert!(parse_payment(bad, "lightning").is_err(), "{bad}");
        }
        let over = (MAX_PAYMENT_SAT + 1).to_string();
        assert!(parse_payment(&over, "lightning")
            .unwrap_err()
            .contains("at most"));
        assert!(parse_payment(&MAX_PAYMENT_SAT.to_string(), "lightning").is_ok());
        assert!(parse_payment("100", "onchain")
            .unwrap_err()
            .contains("dust"));
        assert!(parse_payment("100", "paypal").is_err());
    }

    #[test]
    fn contact_nodes_are_plain_http_urls() {
        assert_eq!(parse_node_url(""), Ok(None));
        assert_eq!(
            parse_node_url("https://cairn.example.org/")
                .unwrap()
                .as_deref(),
            Some("https://cairn.example.org")
        );
        assert_eq!(
            parse_node_url("ws://127.0.0.1:7777").unwrap().as_deref(),
            Some("http://127.0.0.1:7777")
        );
        for bad in [
            "cairn.example.org",
            "ftp://x",
            "https://user:pw@x.example",
            "https://x.example/?a=1",
        ] {
            assert!(parse_node_url(bad).is_err(), "{bad}");
        }
        assert!(parse_node_url(&format!("https://{}.example", "a".repeat(300))).is_err());
    }

    #[test]
    fn own_copies_are_never_shown_as_paid() {
        let sent = Verification::Unconfirmed {
            method: Method::Lightning,
            amount_msat: 5_000_000,
            reason: "sent by you".into(),
        };
        let line = payment_line(true, &sent);
        assert_eq!(line.state, "sent");
        assert!(
            line.text.contains("You paid 5000 sat (Lightning)"),
            "{}",
            line.text
        );
        assert!(!line.text.contains("PAID"));
        let line = payment_line(false, &sent);
        assert_eq!(line.state, "pending");
        assert!(line.text.starts_with("UNVERIFIED"), "{}", line.text);
        let paid = Verification::Paid {
            method: Method::Lightning,
            amount_msat: 5_000_000,
            confirmations: None,
        };
        assert_eq!(payment_line(false, &paid).state, "paid");
        assert!(payment_line(false, &paid).text.starts_with("PAID 5000 sat"));
    }
}
