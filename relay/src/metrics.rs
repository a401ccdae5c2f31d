//! The relay's metrics, through the [`metrics`] facade: every name the relay
//! records is a constant here, with what it counts.
//!
//! The facade is a no-op until a recorder is installed (the node installs a
//! Prometheus one when `[metrics] bind` is set), so the calls cost an atomic
//! load when metrics are off. Labels take values from small fixed sets only
//! (message types, OK prefixes, filter shapes): never an id, pubkey, IP or
//! other client-chosen text, which would let a client grow the registry
//! without bound.

use std::sync::atomic::{AtomicU64, Ordering};

use nostr::Filter;

use crate::message::{ClientMessage, ParseError};

/// Counter: client messages received, label `type` (`EVENT`, `REQ`, `COUNT`,
/// `CLOSE`, `AUTH`, `invalid`).
pub const MESSAGES_RECEIVED: &str = "cairn_messages_received_total";
/// Counter: relay messages built for clients, label `type` (`EVENT`, `OK`,
/// `EOSE`, `CLOSED`, `NOTICE`, `AUTH`, `COUNT`).
pub const MESSAGES_SENT: &str = "cairn_messages_sent_total";
/// Counter: OK answers to clients' EVENTs, labels `accepted` (`true`/`false`)
/// and `reason`: the NIP-01 prefix of the message (`duplicate`, `invalid`,
/// `blocked`, `rate-limited`, `restricted`, `auth-required`, `error`…), or
/// `stored` for an accepted event without one.
pub const EVENTS: &str = "cairn_events_total";
/// Counter: connections closed because the client read too slowly.
pub const SLOW_READERS_DROPPED: &str = "cairn_slow_readers_dropped_total";
/// Histogram: events per group commit.
pub const WRITER_BATCH_EVENTS: &str = "cairn_writer_batch_events";
/// Histogram: seconds one group commit (`Store::save_batch_unsynced`) took.
pub const WRITER_COMMIT_SECONDS: &str = "cairn_writer_commit_seconds";
/// Histogram: seconds one sync of committed batches
/// (`Store::sync_commits`) took.
pub const WRITER_SYNC_SECONDS: &str = "cairn_writer_sync_seconds";
/// Counter: group commits, label `result` (`ok`, `error`).
pub const WRITER_COMMITS: &str = "cairn_writer_commits_total";
/// Histogram: seconds a stored-event query (one filter) took, label `shape`
/// (see [`filter_shape`]).
pub const QUERY_SECONDS: &str = "cairn_query_seconds";
/// Counter: events from other processes on the same Postgres database
/// handed to this process's live fan-out, label `via` (`notify`: a
/// notification; `catch_up`: read after the listener reconnected).
pub const CLUSTER_EVENTS: &str = "cairn_cluster_events_total";
/// Histogram: seconds from another process announcing an event (its
/// `NOTIFY`, inside the commit) to this process handing it to its live
/// subscribers: the cross-process fan-out lag. Measured with both processes'
/// clocks, so machines sharing a database should run NTP; events read in a
/// catch-up are not counted.
pub const CLUSTER_FANOUT_LAG_SECONDS: &str = "cairn_cluster_fanout_lag_seconds";
/// Counter: times remote events stopped waiting for a live subscriber
/// after one remote event had waited a whole slow-reader grace (see the
/// relay's pacing of remote events).
pub const CLUSTER_PACING_STALLS: &str = "cairn_cluster_pacing_stalls_total";
/// Counter: times the cluster listener's connection was lost (each followed
/// by a reconnection and a catch-up).
pub const CLUSTER_LISTENER_LOST: &str = "cairn_cluster_listener_lost_total";
/// Counter: ephemeral events too big for a `NOTIFY` payload, delivered on
/// the accepting process only.
pub const CLUSTER_EPHEMERAL_TOO_BIG: &str = "cairn_cluster_ephemeral_too_big_total";
/// Counter: events removed by the retention policy, label `class`.
pub const RETENTION_PURGED: &str = "cairn_retention_purged_total";

/// Count one client message by its type (parse errors are `invalid`).
pub(crate) fn count_received(parsed: &Result<ClientMessage, ParseError>) {
    let kind = match parsed {
        Ok(ClientMessage::Event(_)) => "EVENT",
        Ok(ClientMessage::Req { .. }) => "REQ",
        Ok(ClientMessage::Count { .. }) => "COUNT",
        Ok(ClientMessage::Close(_)) => "CLOSE",
        Ok(ClientMessage::Auth(_)) => "AUTH",
        Ok(ClientMessage::NegOpen { .. }) => "NEG-OPEN",
        Ok(ClientMessage::NegMsg { .. }) => "NEG-MSG",
        Ok(ClientMessage::NegClose(_)) => "NEG-CLOSE",
        Err(_) => "invalid",
    };
    metrics::counter!(MESSAGES_RECEIVED, "type" => kind).increment(1);
}

/// Every `reason` [`ok_reason`] gives, in the order [`ok_totals`] lists them.
pub const OK_REASONS: [&str; 11] = [
    "stored",
    "duplicate",
    "pow",
    "blocked",
    "rate-limited",
    "invalid",
    "restricted",
    "mute",
    "error",
    "auth-required",
    "other",
];

/// OK answers to EVENTs since the process started, `[accepted][reason]`
/// (indices of [`OK_REASONS`]): the same counts as [`EVENTS`], kept without
/// a recorder so that the node's own pages can show them.
static OK_TOTALS: [[AtomicU64; OK_REASONS.len()]; 2] =
    [const { [const { AtomicU64::new(0) }; OK_REASONS.len()] }; 2];

fn count_ok(accepted: bool, reason: &'static str) {
    let i = OK_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(OK_REASONS.len() - 1);
    OK_TOTALS[usize::from(accepted)][i].fetch_add(1, Ordering::Relaxed);
}

/// `(accepted, reason, count)` of the OK answers to EVENTs this process
/// sent since it started, every pair of [`OK_REASONS`] (zeros included).
/// Process-wide: several relays in one process (tests) share the counts.
pub fn ok_totals() -> Vec<(bool, &'static str, u64)> {
    let mut out = Vec::with_capacity(2 * OK_REASONS.len());
    for accepted in [true, false] {
        for (i, reason) in OK_REASONS.iter().enumerate() {
            let n = OK_TOTALS[usize::from(accepted)][i].load(Ordering::Relaxed);
            out.push((accepted, *reason, n));
        }
    }
    out
}

/// The `reason` label of an OK message's text: its NIP-01 prefix (a word
/// before `:` from a fixed set), `stored` for an accepted one without, else
/// `other`.
pub fn ok_reason(accepted: bool, message: &str) -> &'static str {
    const PREFIXES: [&str; 9] = [
        "duplicate",
        "pow",
        "blocked",
        "rate-limited",
        "invalid",
        "restricted",
        "mute",
        "error",
        "auth-required",
    ];
    match message.split_once(':') {
        Some((prefix, _)) => PREFIXES
            .into_iter()
            .find(|p| *p == prefix)
            .unwrap_or("other"),
        None if accepted => "stored",
        None => "other",
    }
}

/// Counts one OK answer to an EVENT: in [`EVENTS`] and in [`ok_totals`].
pub(crate) fn record_ok(accepted: bool, message: &str) {
    let reason = ok_reason(accepted, message);
    let accepted_label = if accepted { "true" } else { "false" };
    metrics::counter!(EVENTS, "accepted" => accepted_label, "reason" => reason).increment(1);
    count_ok(accepted, reason);
}

/// The `shape` label of a filter: which index can answer it, most selective
/// first: `ids`, `authors_kinds`, `authors`, `tags`, `kinds`, else `scan`
/// (time range only).
pub fn filter_shape(filter: &Filter) -> &'static str {
    let has_kinds = filter.kinds.as_ref().is_some_and(|k| !k.is_empty());
    if filter.ids.as_ref().is_some_and(|s| !s.is_empty()) {
        "ids"
    } else if filter.authors.as_ref().is_some_and(|s| !s.is_empty()) {
        if has_kinds {
            "authors_kinds"
        } else {
            "authors"
        }
    } else if !filter.generic_tags.is_empty() {
        "tags"
    } else if has_kinds {
        "kinds"
    } else {
        "scan"
    }
}

#[cfg(test)]
mod tests {
    use nostr::{Alphabet, Keys, Kind, SingleLetterTag};

    use super::*;

    #[test]
    fn ok_answers_are_tallied_by_acceptance_and_reason() {
        let count = |accepted: bool, reason: &str| {
            ok_totals()
                .into_iter()
                .find(|(a, r, _)| *a == accepted && *r == reason)
                .map(|(_, _, n)| n)
                .unwrap()
        };
        let (limited, stored) = (count(false, "rate-limited"), count(true, "stored"));
        record_ok(false, "rate-limited: slow down");
        record_ok(true, "");
        // Other tests in this process may count too: at least one more each.
        assert!(count(false, "rate-limited") > limited);
        assert!(count(true, "stored") > stored);
        assert_eq!(ok_totals().len(), 2 * OK_REASONS.len());
        for (accepted, message) in [(true, "duplicate: x"), (false, "made-up: x"), (false, "x")] {
            assert!(OK_REASONS.contains(&ok_reason(accepted, message)));
        }
    }

    #[test]
    fn ok_reasons_are_prefixes_or_stored() {
        assert_eq!(ok_reason(true, ""), "stored");
        assert_eq!(
            ok_reason(true, "duplicate: already have this event"),
            "duplicate"
        );
        assert_eq!(ok_reason(false, "invalid: bad signature"), "invalid");
        assert_eq!(ok_reason(false, "rate-limited: slow down"), "rate-limited");
        assert_eq!(ok_reason(false, "made-up: x"), "other");
        assert_eq!(ok_reason(false, "no prefix"), "other");
    }

    #[test]
    fn filter_shapes_follow_the_most_selective_field() {
        let pk = Keys::generate().public_key();
        assert_eq!(
            filter_shape(&Filter::new().id(nostr::EventId::all_zeros())),
            "ids"
        );
        assert_eq!(
            filter_shape(&Filter::new().author(pk).kind(Kind::TextNote)),
            "authors_kinds"
        );
        assert_eq!(filter_shape(&Filter::new().author(pk)), "authors");
        assert_eq!(
            filter_shape(&Filter::new().custom_tag(SingleLetterTag::lowercase(Alphabet::P), "x")),
            "tags"
        );
        assert_eq!(filter_shape(&Filter::new().kind(Kind::TextNote)), "kinds");
        assert_eq!(filter_shape(&Filter::new().limit(5)), "scan");
    }
}
