//! Whether the relay takes an event, and what it answers: the one place that
//! decides when an OK message says `true`, for WebSocket clients
//! ([`crate::connection`]) and in-process publishers ([`crate::local`]) alike.
//!
//! An event is accepted ([`Accepted`]) only once it is durably stored (or was
//! already), or — for an ephemeral kind, which is never stored — once it was
//! handed to the fan-out. Everything else is a [`Refused`], whose text is the
//! OK message's reason with its NIP-01 prefix.

use nostr::{Event, PublicKey};

use crate::config::RelayConfig;
use crate::kinds::{self, KIND_AUTH, KIND_GIFT_WRAP};
use crate::message::out;
use crate::store::StoreError;
use crate::verify::VerifyError;

/// What the relay did with an event it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Newly and durably stored, then fanned out.
    Stored,
    /// An event with this id was already stored.
    Duplicate,
    /// Ephemeral: fanned out to the subscribers of this moment, not stored.
    Relayed,
}

impl Accepted {
    /// The OK message's reason (empty unless it says something).
    pub fn message(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate: already have this event",
            Self::Stored | Self::Relayed => "",
        }
    }
}

/// Why the relay did not take an event; `Display` is the OK message's reason.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// It breaks one of the relay's rules (size, time bounds, expiry, NIP-70,
    /// inbox policy); the text carries the NIP-01 prefix.
    #[error("{0}")]
    Rule(String),
    /// Its id or signature is wrong.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Its author (or recipient, for gift wraps) sends too much.
    #[error("rate-limited: slow down, too many events")]
    RateLimited,
    /// Its author deleted it (NIP-09); it may not come back.
    #[error("blocked: this event was deleted by its author")]
    Deleted,
    /// A newer version of this replaceable or addressable event is stored.
    #[error("duplicate: a newer version of this event is already stored")]
    Superseded,
    /// The database did not take it; the client may try again.
    #[error("error: could not store the event, try again later")]
    Store(#[source] StoreError),
}

/// The OK message answering event `id` with `result`.
pub fn ok_message(id: &str, result: &Result<Accepted, Refused>) -> String {
    match result {
        Ok(accepted) => out::ok(id, true, accepted.message()),
        Err(refused) => out::ok(id, false, &refused.to_string()),
    }
}

/// The most `p` tags a gift wrap may carry. NIP-59 wraps one seal for one
/// recipient; each `p` costs a rate-limit bucket, so without this bound one
/// event of `max_event_tags` junk recipients would drain thousands of
/// people's gift-wrap budgets (and fill the limiter's map).
pub const MAX_GIFT_WRAP_RECIPIENTS: usize = 8;

/// Tokens an event takes from the per-IP and per-author event buckets: one,
/// plus one per [`DEFAULT_HEAVY_COST`] of its [`write_cost`], so that a
/// 2,500-tag deletion request counts as 20 events and a note as one (the
/// limiter caps it at the bucket's burst).
///
/// [`DEFAULT_HEAVY_COST`]: crate::store::DEFAULT_HEAVY_COST
/// [`write_cost`]: crate::store::write_cost
pub(crate) fn rate_weight(event: &Event) -> u32 {
    let weight = 1 + crate::store::write_cost(event) / crate::store::DEFAULT_HEAVY_COST;
    u32::try_from(weight).unwrap_or(u32::MAX)
}

/// A 64-character lowercase hex string, as NIP-01 spells keys in tags.
fn is_hex_key(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The checks that need no signature: limits, time bounds, expiration, the
/// AUTH kind, NIP-70 (against the pubkeys `authed` on the publishing
/// connection) and the inbox policy. `event_len` is the event's serialized
/// length; `now` Unix seconds.
pub(crate) fn check_event(
    config: &RelayConfig,
    event: &Event,
    event_len: usize,
    authed: &[PublicKey],
    now: u64,
) -> Result<(), Refused> {
    let limits = &config.limits;
    let rule = |reason: String| Err(Refused::Rule(reason));
    let kind = event.kind.as_u16();
    if event_len > limits.max_event_length {
        return rule(format!(
            "invalid: event is larger than max_event_length ({} bytes)",
            limits.max_event_length
        ));
    }
    if event.tags.len() > limits.max_event_tags {
        return rule(format!(
            "invalid: too many tags (max {})",
            limits.max_event_tags
        ));
    }
    let targets = kinds::deletion_targets(event);
    if targets > limits.max_deletion_targets {
        return rule(format!(
            "invalid: a deletion request names at most {} events (max_deletion_targets), not \
             {targets}; send several",
            limits.max_deletion_targets
        ));
    }
    if event.content.len() > limits.max_content_length {
        return rule(format!(
            "invalid: content is longer than max_content_length ({} bytes)",
            limits.max_content_length
        ));
    }
    let created = event.created_at.as_secs();
    if created > now.saturating_add(limits.created_at_upper_limit) {
        return rule(format!(
            "invalid: created_at is more than {} seconds in the future",
            limits.created_at_upper_limit
        ));
    }
    if let Some(lower) = limits.created_at_lower_limit {
        if created < now.saturating_sub(lower) {
            return rule(format!(
                "invalid: created_at is more than {lower} seconds in the past"
            ));
        }
    }
    if kinds::expiration(event).is_some_and(|at| at <= now) {
        return rule("invalid: event has expired".into());
    }
    // What the background purge would delete at its next pass is not taken
    // (it would be `OK true`, then gone).
    if let Some(keep) = config.retention.is_past(kind, created, now) {
        return rule(format!(
            "invalid: created_at is older than this relay keeps kind {kind} ({keep} seconds, \
             see NIP-11 retention)"
        ));
    }
    if kind == KIND_AUTH {
        return rule("invalid: kind 22242 is sent with AUTH, not EVENT".into());
    }
    if event.is_protected() && !authed.contains(&event.pubkey) {
        return rule(if authed.is_empty() {
            "auth-required: this event may only be published by its author".into()
        } else {
            "restricted: this event may only be published by its author".into()
        });
    }
    if kind == KIND_GIFT_WRAP {
        let recipients = kinds::tag_values(event, "p").count();
        if recipients == 0 {
            return rule("invalid: gift wrap has no p tag".into());
        }
        if recipients > MAX_GIFT_WRAP_RECIPIENTS {
            return rule(format!(
                "invalid: a gift wrap has at most {MAX_GIFT_WRAP_RECIPIENTS} p tags (one per recipient), not {recipients}"
            ));
        }
        // Recipients are keys: anything else could never be delivered (the
        // privacy rule compares lowercase hex), and would let junk tags
        // stand in for the recipients the rate limit counts.
        if !kinds::tag_values(event, "p").all(is_hex_key) {
            return rule(
                "invalid: gift wrap p tags must be 64-character lowercase hex public keys".into(),
            );
        }
        if !config.inbox.accepts(kinds::tag_values(event, "p")) {
            return rule("blocked: this relay accepts gift wraps only for its users".into());
        }
    }
    Ok(())
}
