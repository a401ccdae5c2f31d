//! Live filter matching and the size of filters: what one subscription may
//! cost the relay for every event it publishes.
//!
//! Invariants:
//!
//! - [`matches`] agrees with nostr's [`Filter::match_event`] (and so with the
//!   stores), but its cost does not grow with the number of values a filter
//!   lists: `ids`, `authors` and `kinds` are sets (one lookup each), and a
//!   `#x` condition walks whichever is smaller, the event's `x` values or the
//!   filter's, looking each up in the other set. `match_event` walks every
//!   filter value, so a subscription with 5,000 `#e` values cost 5,000
//!   lookups per live event per filter.
//! - [`filter_values`] counts every value a filter binds in SQL and holds in
//!   memory; [`check_sizes`] enforces the three limits on it (per list, per
//!   REQ/COUNT, per connection), so no filter reaches a database's bound-
//!   parameter limit and no connection holds more than a budget of values.

use std::collections::BTreeSet;

use nostr::filter::MatchEventOptions;
use nostr::{Event, Filter};

use crate::config::Limits;

/// Whether `event` matches `filter` (NIP-01), as [`Filter::match_event`]
/// decides it, at a cost independent of how many values the filter lists.
pub fn matches(filter: &Filter, event: &Event) -> bool {
    if filter.search.is_some() {
        // Not served by this relay (REQ refuses it); keep nostr's semantics.
        return filter.match_event(event, MatchEventOptions::new());
    }
    if !in_set(&filter.ids, &event.id)
        || !in_set(&filter.authors, &event.pubkey)
        || !in_set(&filter.kinds, &event.kind)
    {
        return false;
    }
    if filter.since.is_some_and(|t| event.created_at < t)
        || filter.until.is_some_and(|t| event.created_at > t)
    {
        return false;
    }
    if filter.generic_tags.is_empty() {
        return true;
    }
    // Built once per event and shared by every connection (the event is in an Arc).
    let indexes = event.tags.indexes();
    filter.generic_tags.iter().all(|(letter, wanted)| {
        let Some(present) = indexes.get(letter) else {
            return false;
        };
        if present.len() <= wanted.len() {
            present.iter().any(|v| wanted.contains(v))
        } else {
            wanted.iter().any(|v| present.contains(v))
        }
    })
}

/// An absent or empty set constrains nothing (NIP-01, as `match_event`).
fn in_set<T: Ord>(set: &Option<BTreeSet<T>>, value: &T) -> bool {
    set.as_ref()
        .is_none_or(|set| set.is_empty() || set.contains(value))
}

fn len<T>(set: &Option<BTreeSet<T>>) -> usize {
    set.as_ref().map_or(0, BTreeSet::len)
}

/// Values a filter lists: `ids`, `authors`, `kinds` and every `#x` value.
pub fn filter_values(filter: &Filter) -> usize {
    len(&filter.ids)
        + len(&filter.authors)
        + len(&filter.kinds)
        + filter.generic_tags.values().map(|v| v.len()).sum::<usize>()
}

/// Check the filters of one REQ or COUNT against `limits`, given the values
/// the connection's other subscriptions already hold (`held`; 0 for COUNT,
/// which holds nothing once answered). Returns the REQ's total values, or
/// the CLOSED reason.
pub fn check_sizes(limits: &Limits, filters: &[Filter], held: usize) -> Result<usize, String> {
    let per_list = limits.max_values_per_filter;
    let mut total = 0usize;
    for filter in filters {
        let longest = [len(&filter.ids), len(&filter.authors), len(&filter.kinds)]
            .into_iter()
            .chain(filter.generic_tags.values().map(|v| v.len()))
            .max()
            .unwrap_or(0);
        if longest > per_list {
            return Err(format!(
                "invalid: a filter lists {longest} values in one field (max_values_per_filter {per_list})"
            ));
        }
        total += filter_values(filter);
    }
    if total > limits.max_values_per_req {
        return Err(format!(
            "invalid: the filters list {total} values (max_values_per_req {})",
            limits.max_values_per_req
        ));
    }
    if held.saturating_add(total) > limits.max_values_per_connection {
        return Err(format!(
            "restricted: this connection's subscriptions would hold {} filter values (max_values_per_connection {}); close some first",
            held.saturating_add(total),
            limits.max_values_per_connection
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use nostr::{Alphabet, EventBuilder, EventId, Keys, Kind, SingleLetterTag, Tag, Timestamp};
    use proptest::prelude::*;

    use super::*;

    fn letter(c: Alphabet) -> SingleLetterTag {
        SingleLetterTag::lowercase(c)
    }

    fn event_with(kind: u16, created_at: u64, tags: Vec<Tag>) -> Event {
        EventBuilder::new(Kind::from(kind), "x")
            .tags(tags)
            .custom_created_at(Timestamp::from(created_at))
            .sign_with_keys(&Keys::generate())
            .unwrap()
    }

    proptest! {
        /// Same answers as nostr's `match_event` on small random filters and events.
        #[test]
        fn agrees_with_match_event(
            kinds in proptest::collection::btree_set(0u16..4, 0..3),
            event_kind in 0u16..4,
            created in 10u64..20,
            since in proptest::option::of(10u64..20),
            until in proptest::option::of(10u64..20),
            event_t in proptest::collection::vec("[ab]", 0..3),
            event_p in proptest::collection::vec("[ab]", 0..2),
            want_t in proptest::option::of(proptest::collection::btree_set("[abc]", 0..3)),
            want_p in proptest::option::of(proptest::collection::btree_set("[abc]", 0..3)),
        ) {
            let mut tags: Vec<Tag> = event_t.iter().map(|v| Tag::parse(["t", v]).unwrap()).collect();
            tags.extend(event_p.iter().map(|v| Tag::parse(["x", v]).unwrap()));
            let event = event_with(event_kind, created, tags);
            let mut filter = Filter::new();
            if !kinds.is_empty() {
                filter = filter.kinds(kinds.iter().map(|k| Kind::from(*k)));
            }
            if let Some(s) = since { filter = filter.since(Timestamp::from(s)); }
            if let Some(u) = until { filter = filter.until(Timestamp::from(u)); }
            if let Some(t) = want_t { filter.generic_tags.insert(letter(Alphabet::T), t); }
            if let Some(p) = want_p { filter.generic_tags.insert(letter(Alphabet::X), p); }
            prop_assert_eq!(
                matches(&filter, &event),
                filter.match_event(&event, MatchEventOptions::new())
            );
        }
    }

    #[test]
    fn ids_and_authors() {
        let keys = Keys::generate();
        let event = EventBuilder::text_note("x").sign_with_keys(&keys).unwrap();
        assert!(matches(&Filter::new().id(event.id), &event));
        assert!(!matches(&Filter::new().id(EventId::all_zeros()), &event));
        assert!(matches(&Filter::new().author(keys.public_key()), &event));
        assert!(!matches(
            &Filter::new().author(Keys::generate().public_key()),
            &event
        ));
    }

    /// 32 subscriptions × 16 filters × 5,000 `#e` values (the attack)
    /// against one live event with an `e` tag: `match_event` walks all
    /// 2.56 M values (seconds in a debug build); this must not.
    #[test]
    fn cost_does_not_grow_with_filter_values() {
        let values: std::collections::BTreeSet<String> =
            (0..5_000).map(|i| format!("{i:064x}")).collect();
        let mut filter = Filter::new();
        filter.generic_tags.insert(letter(Alphabet::E), values);
        let filters = vec![filter; 32 * 16];
        let event = event_with(1, 1, vec![Tag::parse(["e", &"f".repeat(64)]).unwrap()]);
        let started = Instant::now();
        let hits = filters.iter().filter(|f| matches(f, &event)).count();
        let took = started.elapsed();
        assert_eq!(hits, 0);
        assert!(
            took.as_millis() < 50,
            "matching 512 filters of 5,000 values took {took:?}"
        );
    }

    #[test]
    fn sizes_are_checked_per_list_req_and_connection() {
        let limits = Limits {
            max_values_per_filter: 3,
            max_values_per_req: 5,
            max_values_per_connection: 8,
            ..Limits::default()
        };
        let kinds = |n: u16| Filter::new().kinds((0..n).map(Kind::from));
        assert_eq!(check_sizes(&limits, &[kinds(3)], 0), Ok(3));
        let err = check_sizes(&limits, &[kinds(4)], 0).unwrap_err();
        assert!(err.starts_with("invalid:"), "{err}");
        let err = check_sizes(&limits, &[kinds(3), kinds(3)], 0).unwrap_err();
        assert!(err.starts_with("invalid:"), "{err}");
        assert_eq!(check_sizes(&limits, &[kinds(3)], 5), Ok(3));
        let err = check_sizes(&limits, &[kinds(3)], 6).unwrap_err();
        assert!(err.starts_with("restricted:"), "{err}");
    }
}
