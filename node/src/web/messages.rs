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
//!   re-keyed handle is shown as a warning.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use cairn_identity::binding::normalize_handle;
use cairn_identity::service::{ServiceError, Standing as IdStanding};
use cairn_relay::store::QueryContext;
use cairn_relay::Relay;
use nostr::{
    Event, EventBuilder, EventId, Filter, JsonUtil as _, Keys, Kind, PublicKey, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::app::{app_html, app_of, checked_post, refused, signed_in, App, APP_JS_PATH};
use super::check::{self, NodeCheck};
use super::{Frame, Web};
use crate::cli::msg::{build_rumor, open_gift_wrap};
use crate::cli::npub;
use crate::cli::support::time::format_unix;
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

/// What sending needs: the owner's key and the outbox.
pub struct Messaging {
    keys: Keys,
    outbox: Arc<Outbox>,
    settings: Settings,
}

impl Messaging {
    /// Messaging as `keys`, through `outbox`.
    pub fn new(settings: &Settings, outbox: Arc<Outbox>, keys: Keys) -> Self {
        Self {
            keys,
            outbox,
            settings: settings.clone(),
        }
    }
}

/// One opened message.
#[derive(Clone)]
pub(super) struct Opened {
    id: EventId,
    sender: PublicKey,
    /// The other party: the sender, or (for our own) the first recipient
    /// that is not us.
    counterpart: PublicKey,
    created_at: u64,
    text: String,
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
                id: msg.id,
                sender: msg.sender,
                counterpart: if msg.sender == me {
                    msg.recipients
                        .iter()
                        .copied()
                        .find(|k| *k != me)
                        .unwrap_or(me)
                } else {
                    msg.sender
                },
                created_at: msg.created_at.as_secs(),
                text: msg.text,
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
        .filter(|o| seen.insert(o.id))
        .collect();
    out.sort_by_key(|o| (o.created_at, o.id));
    out
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

/// The contact's standing; `full` runs the bundle check against this
/// node's Bitcoin node (else the last full check's result is used).
async fn standing(web: &Web, c: &Contact, full: bool) -> (Standing, bool) {
    let Some(h) = &c.handle else {
        return (Standing::Key, c.verified);
    };
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
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let session = match signed_in(app, &headers) {
        Ok(s) => s,
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
    keys.sort_by_key(|k| std::cmp::Reverse(last.get(k).map(|o| o.created_at)));
    for key in keys {
        let contact = contacts.iter().find(|c| c.key == key.to_hex());
        let standing = match contact {
            Some(c) => standing(web, c, false).await.0,
            None => Standing::Unverified("not in your contacts".to_owned()),
        };
        page.conversations.push(ConversationView {
            npub: npub(&key),
            name: contact_name(contact, &key),
            standing,
            last: last.get(&key).map(|o| {
                let text: String = o.text.chars().take(80).collect();
                format!("{} · {text}", format_unix(o.created_at))
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
    let session = match checked_post(&web, app, &headers, form.csrf.as_deref(), "/app/messages") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fail =
        |msg: String| render_list(&web, app, &session.csrf, StatusCode::BAD_REQUEST, Some(msg));
    let input = form.contact.trim();
    let (key, handle) = if input.starts_with("npub1") || input.len() == 64 {
        match crate::cli::support::keys::parse_public_key(input) {
            Ok(k) => (k, None),
            Err(_) => return fail("That is not an npub or a 64-hex-digit key.".to_owned()).await,
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
    };
    contact.verified = standing(&web, &contact, true).await.1;
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
    all_messages(web, app, m)
        .await
        .into_iter()
        .filter(|o| o.counterpart == *key)
        .map(|o| {
            let outgoing = o.sender == me;
            MessageView {
                id: o.id.to_hex(),
                outgoing,
                from: name.to_owned(),
                when: format_unix(o.created_at),
                delivery: if outgoing {
                    states.get(&o.id.to_hex()).cloned()
                } else {
                    None
                },
                text: o.text,
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
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let session = match signed_in(app, &headers) {
        Ok(s) => s,
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
            let (s, verified) = standing(web, c, true).await;
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
    if app.sessions.get(&headers).is_none() {
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
    let session = match checked_post(&web, app, &headers, form.csrf.as_deref(), &back) {
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
    match enqueue(&web.relay, m, key, text).await {
        Ok(()) => Redirect::to(&format!("/app/c/{}", npub(&key))).into_response(),
        Err(e) => fail(e).await,
    }
}

/// Wraps `text` for `to` and for the owner and commits both to the outbox.
async fn enqueue(
    relay: &Arc<Relay>,
    m: &Messaging,
    to: PublicKey,
    text: &str,
) -> Result<(), String> {
    let me = m.keys.public_key();
    let rumor = build_rumor(me, to, text, None);
    let rumor_id = rumor.id;
    let wrap = EventBuilder::gift_wrap(&m.keys, &to, rumor.clone(), [])
        .await
        .map_err(|e| format!("cannot wrap the message: {e}"))?;
    let copy = EventBuilder::gift_wrap(&m.keys, &me, rumor, [])
        .await
        .map_err(|e| format!("cannot wrap the copy: {e}"))?;
    let settings = &m.settings;
    let to_relays =
        outbox::destinations(relay, &to, &[], &settings.outbox.lookup_relays, None).await;
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
