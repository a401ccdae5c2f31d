//! The durable outbox: every event the owner sends (each message's gift
//! wrap for the recipient and the copy to self, and the owner's kind 10050
//! inbox list) is stored in the node's database, one row per (event,
//! destination relay), and delivered by a worker inside `cairn serve`.
//!
//! Modules: [`schedule`] (pure: what an `OK` means, backoff with jitter, time
//! to live, state transitions), [`store`] (the tables), [`worker`] (the
//! connections), and here the destinations ([`destinations`]) and the inbox
//! list ([`publish_inbox_list`]).
//!
//! Invariants:
//!
//! - **Nothing is sent before it is committed.** [`worker::Outbox::enqueue`]
//!   commits the item and all its delivery rows in one transaction and only
//!   then wakes the worker, which reads what it sends from the table. A
//!   `kill -9` at any moment loses nothing that `enqueue` returned for.
//! - **A relay that accepted an event is not sent it again.** The row is
//!   marked delivered where its `OK true` is read, before the next answer is
//!   handled; only pending rows are ever loaded or updated, so a late or
//!   second answer cannot move a delivered row back.
//! - **At least once, and at most once but for a crash.** A `kill -9` (or a
//!   failed commit) between a relay's `OK` and our commit leaves the row
//!   pending: after the restart it is sent once more. That is harmless —
//!   relays deduplicate by event id and answer `duplicate:`, which counts as
//!   delivered (and is kept in `ok_message`, so such resends can be seen).
//!   At most `in_flight` rows per relay are exposed to this at once.
//! - **Claims, not locks.** Loading rows for a relay pushes their next try
//!   `claim_secs` ahead, so a second process on the same Postgres (which
//!   also skips rows locked by another's claim) leaves them alone, and rows
//!   of a process killed mid-batch are due again when the claim ends.
//! - **Bounded.** At most `max_relays` relays are served at once, each by one
//!   task over one connection reused for all its rows, loading at most
//!   `batch` rows and keeping at most `in_flight` waiting for an `OK`:
//!   memory and connections do not grow with the number of recipients or
//!   of pending rows. A relay that cannot be reached costs one connection
//!   attempt per round, its due rows failing in batched transactions.
//! - **Retries back off and end.** A transient failure (no connection, no
//!   answer, `rate-limited:`, `error:`, an unknown prefix, `auth-required:`
//!   that AUTH did not cure) is retried with exponential backoff and jitter
//!   up to `retry_max_secs`; a permanent refusal (`invalid:`, `blocked:`,
//!   `pow:`, `restricted:`, `mute:`) is not retried; nothing is tried after
//!   its item's `ttl_secs`. All of it survives restarts: it is in the table.
//! - **AUTH only when asked.** The worker AUTHs (NIP-42, signed with the
//!   owner's key when `[outbox] key_file` is set) only after a relay answers
//!   `auth-required:`, then sends the refused events again on the same
//!   connection without counting a failed try.
//! - **Destinations are bounded and WebSocket only.** A recipient's relays
//!   (their kind 10050, or the `relays` their NIP-05 answer lists, which a
//!   stranger controls) are normalised, deduplicated, anything but `ws://`
//!   and `wss://` dropped, and capped at [`MAX_DESTINATIONS`]: one message
//!   cannot make the node connect to an unbounded list. Loopback and private
//!   addresses are not refused (local setups and the tests use them), so a
//!   recipient's list can point the node at hosts on its own network: the
//!   node only speaks NIP-01 there, but an operator exposing it to
//!   untrusted senders' lookups should keep that in mind (SSRF).

use std::sync::Arc;
use std::time::Duration;

use cairn_relay::auth::normalize_relay_url;
use cairn_relay::store::{Database, QueryContext};
use cairn_relay::Relay;
use nostr::{
    Event, EventBuilder, Filter, JsonUtil, Keys, Kind, PublicKey, Tag, TagStandard, Timestamp,
};

use crate::settings::Settings;

pub mod schedule;
pub mod store;
pub mod worker;

pub use store::{DeliveryView, ItemView, NewItem, OutboxDb, Role, Totals};
pub use worker::{Outbox, WorkerConfig};

/// Why the outbox could not do something.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed.
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The database migrations failed.
    #[error("outbox migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store is not an SQL one.
    #[error("the outbox needs an SQL store")]
    NoDatabase,
    /// No relay to deliver to.
    #[error("no destination relay for {0}")]
    NoDestination(String),
    /// An event could not be built or signed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Bound on looking up a recipient's inbox list on other relays.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the outbox on the relay's database, running its migrations.
pub async fn open(
    settings: &Settings,
    relay: &Arc<Relay>,
    signer: Keys,
) -> Result<Arc<Outbox>, OutboxError> {
    let db = match relay.store().database() {
        Some(Database::Sqlite(pool)) => OutboxDb::Sqlite(pool),
        Some(Database::Postgres(pool)) => OutboxDb::Postgres(pool),
        None => return Err(OutboxError::NoDatabase),
    };
    db.migrate().await?;
    Ok(Arc::new(Outbox::new(
        db,
        settings.outbox.worker_config(),
        relay,
        signer,
    )))
}

/// Most destination relays one item goes to, and most relays one
/// recipient's hints add to a lookup: what a stranger's NIP-05 answer or
/// kind 10050 lists beyond this is ignored.
pub const MAX_DESTINATIONS: usize = 8;

/// `urls` normalized, deduplicated, capped at [`MAX_DESTINATIONS`].
pub fn capped<'a>(urls: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = normalize_all(urls);
    out.truncate(MAX_DESTINATIONS);
    out
}

/// `urls` normalized, invalid ones dropped, first occurrence kept.
pub fn normalize_all<'a>(urls: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        match normalize_relay_url(u) {
            Some(n) if n.starts_with("ws://") || n.starts_with("wss://") => {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            _ => tracing::debug!(url = u, "outbox: not a relay URL, skipped"),
        }
    }
    out
}

/// `pubkey`'s newest kind 10050 found in this relay's store or on `relays`.
pub async fn find_inbox_list(
    relay: &Relay,
    pubkey: &PublicKey,
    relays: &[String],
) -> Option<Event> {
    let filter = Filter::new()
        .author(*pubkey)
        .kind(Kind::InboxRelays)
        .limit(1);
    let ctx = QueryContext {
        viewers: Vec::new(),
        now: nostr::Timestamp::now().as_secs(),
        max_limit: 1,
    };
    let mut found: Vec<Event> = relay
        .store()
        .query(&filter, &ctx)
        .await
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|s| Event::from_json(&s.json).ok())
        .collect();
    if !relays.is_empty() {
        // An anonymous read: no NIP-42. With automatic authentication on
        // (nostr-sdk's default) and no signer, the AUTH challenge a relay
        // sends on connect (Cairn's does) fails, and nostr-sdk ends the
        // REQ then in flight with "authentication failed": the lookup came
        // back empty from every relay that challenges, though the list was
        // there (tests/outbox.rs, lookup_relays).
        let client = nostr_sdk::Client::builder()
            .opts(nostr_sdk::ClientOptions::new().automatic_authentication(false))
            .build();
        for r in relays {
            let _ = client.add_relay(r.as_str()).await;
        }
        client.try_connect(LOOKUP_TIMEOUT).await;
        if let Ok(events) = client
            .fetch_events_from(relays.iter().map(String::as_str), filter, LOOKUP_TIMEOUT)
            .await
        {
            found.extend(events);
        }
        client.shutdown().await;
    }
    found
        .into_iter()
        .filter(|e| e.pubkey == *pubkey && e.kind == Kind::InboxRelays && e.verify().is_ok())
        .max_by_key(|e| e.created_at)
}

/// Where a gift wrap for `recipient` goes: the relays of their newest kind
/// 10050 (looked up in this relay's store, on `lookup_relays` and on the
/// relays their NIP-05 answer lists, `hints`); without one, the `hints`,
/// else `fallback` (the node that answered for their handle). At most
/// [`MAX_DESTINATIONS`] `ws(s)://` relays, deduplicated.
pub async fn destinations(
    relay: &Relay,
    recipient: &PublicKey,
    hints: &[String],
    lookup_relays: &[String],
    fallback: Option<&str>,
) -> Vec<String> {
    let hints = capped(hints.iter().map(String::as_str));
    let own = normalize_all([relay.public_url()]);
    let lookups: Vec<String> = normalize_all(
        lookup_relays
            .iter()
            .map(String::as_str)
            .chain(hints.iter().map(String::as_str)),
    )
    .into_iter()
    .filter(|r| !own.contains(r))
    .collect();
    if let Some(list) = find_inbox_list(relay, recipient, &lookups).await {
        let listed = capped(
            nostr::nips::nip17::extract_relay_list(&list)
                .map(|u| u.as_str_without_trailing_slash()),
        );
        if !listed.is_empty() {
            return listed;
        }
    }
    if !hints.is_empty() {
        return hints;
    }
    normalize_all(fallback)
}

/// The owner's inbox relays: this node, then `[outbox] inbox_relays`.
pub fn own_inboxes(settings: &Settings, relay: &Relay) -> Vec<String> {
    normalize_all(
        std::iter::once(relay.public_url())
            .chain(settings.outbox.inbox_relays.iter().map(String::as_str)),
    )
}

/// Publishes the owner's kind 10050 (this node, then `[outbox]
/// inbox_relays`) through the outbox to this relay, the inbox relays and
/// `[outbox] publish_relays`, when it differs from the last one enqueued;
/// earlier lists still pending are dropped. Returns whether a new list was
/// enqueued. At start; while running, [`check_inbox_list`] also compares
/// with what the relays hold.
pub async fn publish_inbox_list(
    outbox: &Outbox,
    settings: &Settings,
    relay: &Relay,
    owner: &Keys,
) -> Result<bool, OutboxError> {
    let inboxes = own_inboxes(settings, relay);
    if let Some(json) = outbox.db().latest_list(&owner.public_key()).await? {
        if let Ok(last) = Event::from_json(&json) {
            if listed_relays(&last) == inboxes {
                return Ok(false);
            }
        }
    }
    enqueue_inbox_list(outbox, settings, relay, owner, Timestamp::now()).await?;
    Ok(true)
}

/// The relays a kind 10050 lists, normalized.
fn listed_relays(list: &Event) -> Vec<String> {
    normalize_all(
        nostr::nips::nip17::extract_relay_list(list).map(|u| u.as_str_without_trailing_slash()),
    )
}

/// Whether `list` names the same relays as `inboxes` (in any order).
fn lists_same(list: &Event, inboxes: &[String]) -> bool {
    let mut listed = listed_relays(list);
    let mut wanted = inboxes.to_vec();
    listed.sort();
    wanted.sort();
    listed == wanted
}

/// Where the owner's kind 10050 is published: this relay, the inbox
/// relays, `[outbox] publish_relays`.
fn list_targets(settings: &Settings, inboxes: &[String]) -> Vec<String> {
    normalize_all(
        inboxes
            .iter()
            .map(String::as_str)
            .chain(settings.outbox.publish_relays.iter().map(String::as_str)),
    )
}

/// Enqueues a new kind 10050 of the owner (created at `created_at`) to
/// every target, superseding earlier lists still pending.
async fn enqueue_inbox_list(
    outbox: &Outbox,
    settings: &Settings,
    relay: &Relay,
    owner: &Keys,
    created_at: Timestamp,
) -> Result<(), OutboxError> {
    let inboxes = own_inboxes(settings, relay);
    let tags = inboxes
        .iter()
        .filter_map(|r| nostr::RelayUrl::parse(r).ok())
        .map(|u| Tag::from_standardized(TagStandard::Relay(u)));
    let event = EventBuilder::new(Kind::InboxRelays, "")
        .tags(tags)
        .custom_created_at(created_at)
        .sign_with_keys(owner)
        .map_err(|e| OutboxError::Sign(e.to_string()))?;
    let now = event.created_at.as_secs();
    let relays = list_targets(settings, &inboxes);
    let id = outbox
        .enqueue(&NewItem {
            event,
            role: Role::InboxList,
            recipient: owner.public_key(),
            rumor_id: None,
            created_at: now,
            expires_at: now.saturating_add(settings.outbox.ttl_secs),
            relays,
        })
        .await?;
    outbox.db().supersede_lists(&owner.public_key(), id).await?;
    tracing::info!(inboxes = ?inboxes, "outbox: publishing the owner's inbox list (kind 10050)");
    Ok(())
}

/// Why [`check_inbox_list`] republished the owner's kind 10050.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Republished {
    /// The configured inboxes differ from the last list enqueued.
    Changed,
    /// This relay's store has no list of the owner's (deleted, or lost).
    Missing,
    /// This relay's newest list of the owner names other relays (another
    /// client of the owner's published one: kind 10050 is replaceable).
    Differs,
}

/// The periodic check of the owner's kind 10050 (every `[outbox]
/// inbox_list_check_secs`). Nothing changes the configured inboxes while
/// the node runs (there is no configuration reload and no API for them),
/// but what the node's relay holds can change: another client of the
/// owner's publishes a different list (it replaces ours), or it is deleted
/// (NIP-09). The configuration is the source of truth, so a new list
/// (created after the newest one seen) is enqueued to every target (this
/// relay, the inbox relays, `publish_relays`) when:
///
/// - the configured inboxes differ from the last list enqueued, or
/// - the last list was delivered to this relay, and its store now has no
///   list of the owner's, or a newest one naming other relays (in any
///   order).
///
/// Other relays are not asked: what they hold is left to the outbox's
/// deliveries (a list they lose is not noticed; a republish for this
/// relay reaches them too). Returns why it republished, if it did.
pub async fn check_inbox_list(
    outbox: &Outbox,
    settings: &Settings,
    relay: &Relay,
    owner: &Keys,
) -> Result<Option<Republished>, OutboxError> {
    if publish_inbox_list(outbox, settings, relay, owner).await? {
        return Ok(Some(Republished::Changed));
    }
    let me = owner.public_key();
    let inboxes = own_inboxes(settings, relay);
    let pending = outbox.db().list_pending_relays(&me).await?;
    let own = normalize_all([relay.public_url()]);
    if own.iter().any(|r| pending.contains(r)) {
        // Still on its way here: the worker's business.
        return Ok(None);
    }
    let (why, newest_seen) = match find_inbox_list(relay, &me, &[]).await {
        None => (Republished::Missing, Timestamp::from(0)),
        Some(list) if !lists_same(&list, &inboxes) => (Republished::Differs, list.created_at),
        Some(_) => return Ok(None),
    };
    // A replaceable event replaces only an older one; and it must not tie
    // with the last list this node made.
    let last_made = match outbox.db().latest_list(&me).await? {
        Some(json) => Event::from_json(&json)
            .map(|e| e.created_at)
            .unwrap_or(Timestamp::from(0)),
        None => Timestamp::from(0),
    };
    let created_at = Timestamp::now().max(newest_seen + 1).max(last_made + 1);
    tracing::info!(reason = ?why, "outbox: the owner's inbox list on this relay is not the configured one");
    enqueue_inbox_list(outbox, settings, relay, owner, created_at).await?;
    Ok(Some(why))
}

/// Runs [`check_inbox_list`] every `every` until `stop`.
async fn check_inbox_list_every(
    outbox: Arc<Outbox>,
    settings: Arc<Settings>,
    relay: Arc<Relay>,
    owner: Keys,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let check = check_inbox_list(&outbox, &settings, &relay, &owner);
        tokio::select! {
            _ = stop.cancelled() => return,
            result = check => if let Err(e) = result {
                tracing::warn!(error = %e, "outbox: cannot check the owner's inbox list");
            }
        }
    }
}

/// The owner's keys from `[outbox] key_file`, when set, else from
/// `<data_dir>/owner.key` when `cairn key` created it
/// ([`crate::cli::key::owner_key_file`]).
pub fn owner_keys(settings: &Settings) -> anyhow::Result<Option<Keys>> {
    crate::cli::key::owner_key_file(settings)
        .as_deref()
        .map(|path| crate::cli::support::keys::load_keys(Some(path)))
        .transpose()
        .map_err(|e| e.context("[outbox] key_file"))
}

/// The owner's key and inbox relays, when the outbox runs with `[outbox]
/// key_file`: what the NIP-05 answers for the owner's names list.
pub fn owner_inboxes(
    settings: &Settings,
    relay: &Relay,
) -> anyhow::Result<Option<(PublicKey, Vec<String>)>> {
    if !settings.outbox.enabled {
        return Ok(None);
    }
    Ok(owner_keys(settings)?.map(|k| (k.public_key(), own_inboxes(settings, relay))))
}

/// Starts the outbox of a node: opens it, publishes the owner's inbox list
/// when it changed, and returns the admin routes and the worker's task
/// (which ends when the relay shuts down).
pub async fn serve(
    settings: &Settings,
    relay: &Arc<Relay>,
) -> anyhow::Result<(axum::Router, tokio::task::JoinHandle<()>)> {
    let (routes, job, _) = serve_with_handle(settings, relay).await?;
    Ok((routes, job))
}

/// [`serve`], also returning the outbox itself (the web app sends
/// through it).
pub async fn serve_with_handle(
    settings: &Settings,
    relay: &Arc<Relay>,
) -> anyhow::Result<(axum::Router, tokio::task::JoinHandle<()>, Arc<Outbox>)> {
    let owner = owner_keys(settings)?;
    // Without the owner's key, AUTH proves nothing about the owner; a key
    // of this run keeps it from linking the runs either.
    let signer = owner.clone().unwrap_or_else(Keys::generate);
    let outbox = open(settings, relay, signer).await?;
    if let Some(owner) = &owner {
        publish_inbox_list(&outbox, settings, relay, owner).await?;
    }
    let token = crate::admin_token::AdminToken::load_or_create(&settings.data_dir)?;
    let routes = crate::server::routes::outbox::router(
        Arc::clone(&outbox),
        Arc::clone(relay),
        Arc::new(settings.clone()),
        token,
    );
    let worker = tokio::spawn(worker::run(
        Arc::clone(&outbox),
        relay.shutdown_token().clone(),
    ));
    let every = Duration::from_secs(settings.outbox.inbox_list_check_secs);
    let checker = match owner {
        Some(owner) if !every.is_zero() => {
            let (outbox, settings, relay) = (
                Arc::clone(&outbox),
                Arc::new(settings.clone()),
                Arc::clone(relay),
            );
            let pool = match relay.store().database() {
                Some(Database::Postgres(pool)) => Some(pool),
                _ => None,
            };
            let shutdown = relay.shutdown_token().clone();
            // On Postgres one process checks (under its lease), so that two
            // do not publish two lists at once.
            let work: crate::server::lease::WorkFn = Box::new(move |stop| {
                Box::pin(check_inbox_list_every(
                    Arc::clone(&outbox),
                    Arc::clone(&settings),
                    Arc::clone(&relay),
                    owner.clone(),
                    every,
                    stop,
                )) as crate::server::lease::BoxedWork
            });
            Some(
                crate::server::lease::spawn(
                    crate::server::lease::Job::InboxList,
                    pool,
                    shutdown,
                    work,
                )
                .0,
            )
        }
        _ => None,
    };
    let job = tokio::spawn(async move {
        let _ = worker.await;
        if let Some(checker) = checker {
            let _ = checker.await;
        }
    });
    Ok((routes, job, outbox))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_normalized_and_deduplicated() {
        assert_eq!(
            normalize_all([
                "wss://a.example/",
                "wss://a.example",
                "http://x",
                "nonsense",
                "ws://b:7"
            ]),
            vec!["wss://a.example".to_owned(), "ws://b:7".to_owned()]
        );
    }

    #[test]
    fn destinations_are_capped_after_deduplication() {
        let many: Vec<String> = (0..3)
            .flat_map(|_| (0..20).map(|i| format!("wss://r{i}.example/")))
            .chain(["https://web.example".to_owned()])
            .collect();
        let out = capped(
            std::iter::once("ftp://x")
                .chain(["wss://r0.example"; 5])
                .chain(many.iter().map(String::as_str)),
        );
        assert_eq!(out.len(), MAX_DESTINATIONS);
        assert_eq!(out[0], "wss://r0.example");
        assert_eq!(out[1], "wss://r1.example", "duplicates do not use the cap");
        assert!(out.iter().all(|u| u.starts_with("wss://")));
    }
}
