//! Who may receive private events ([`PRIVATE_KINDS`]). Applied per event to
//! everything that leaves the relay (stored results, live fan-out) by
//! [`may_receive`]; the stores apply the same rule inside their queries, so
//! that COUNT and `limit` are right too, through [`push_may_receive`], its
//! SQL form. The two sit side by side and are built from the same constants:
//! a change to one is a change to the other.

use nostr::{Event, Filter, JsonUtil, PublicKey, Timestamp};
use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::kinds::{self, is_private, tag_values, KIND_ENCRYPTED_DM, PRIVATE_KINDS};
use crate::store::{push_in, StoredEvent};

/// Whether `event` may be sent to a connection authenticated as `viewers`.
/// Public kinds always may; kind 1059 only to a `p`-tagged viewer; kind 4 to
/// a `p`-tagged viewer or its author.
pub fn may_receive(event: &Event, viewers: &[PublicKey]) -> bool {
    let kind = event.kind.as_u16();
    if !is_private(kind) {
        return true;
    }
    if viewers.is_empty() {
        return false;
    }
    if kind == KIND_ENCRYPTED_DM && viewers.contains(&event.pubkey) {
        return true;
    }
    tag_values(event, "p").any(|p| viewers.iter().any(|v| v.to_hex() == p))
}

/// Whether a live event may go to `viewers` now: [`may_receive`], and not
/// expired (NIP-40) since it was published.
pub(crate) fn live_event_visible(event: &Event, viewers: &[PublicKey]) -> bool {
    may_receive(event, viewers)
        && kinds::expiration(event).is_none_or(|at| at > Timestamp::now().as_secs())
}

/// Defence in depth for stored results: the store already applied the rule
/// in SQL ([`push_may_receive`]); this checks the event itself again.
pub(crate) fn stored_event_visible(stored: &StoredEvent, viewers: &[PublicKey]) -> bool {
    match Event::from_json(&stored.json) {
        Ok(event) => may_receive(&event, viewers),
        Err(_) => false,
    }
}

/// [`may_receive`] as SQL: appends ` AND (…)` to a WHERE clause over events
/// `e` (columns `seq`, `kind`, `pubkey`) and the `tags` table, for viewers
/// given as stored pubkeys (`viewers`) and as `p` tag index keys
/// (`viewer_tags`), both empty for a connection without AUTH.
pub(crate) fn push_may_receive<'a, DB>(
    qb: &mut QueryBuilder<'a, DB>,
    viewers: &[Vec<u8>],
    viewer_tags: &[Vec<u8>],
) where
    DB: Database,
    Vec<u8>: Encode<'a, DB> + Type<DB>,
{
    let private = PRIVATE_KINDS.map(|k| k.to_string()).join(", ");
    qb.push(format!(" AND (e.kind NOT IN ({private})"));
    if !viewers.is_empty() {
        // A p-tagged viewer, or the author of a kind 4.
        qb.push(" OR EXISTS (SELECT 1 FROM tags v WHERE v.event_seq = e.seq AND v.name = 'p'");
        push_in(qb, "v.value", viewer_tags);
        qb.push(format!(") OR (e.kind = {KIND_ENCRYPTED_DM}"));
        push_in(qb, "e.pubkey", viewers);
        qb.push(")");
    }
    qb.push(")");
}

/// Whether a filter asks explicitly for private kinds, which requires AUTH
/// before anything is sent.
pub fn asks_for_private_kinds(filter: &Filter) -> bool {
    filter
        .kinds
        .as_ref()
        .is_some_and(|kinds| kinds.iter().any(|k| is_private(k.as_u16())))
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, Keys, Kind, Tag};

    use super::*;

    fn event(kind: u16, author: &Keys, to: &PublicKey) -> Event {
        EventBuilder::new(Kind::from(kind), "x")
            .tag(Tag::public_key(*to))
            .sign_with_keys(author)
            .unwrap()
    }

    #[test]
    fn gift_wraps_only_to_recipient() {
        let (author, alice, eve) = (Keys::generate(), Keys::generate(), Keys::generate());
        let wrap = event(1059, &author, &alice.public_key());
        assert!(!may_receive(&wrap, &[]));
        assert!(!may_receive(&wrap, &[eve.public_key()]));
        assert!(may_receive(&wrap, &[eve.public_key(), alice.public_key()]));
        // The one-time author of a gift wrap is not a recipient.
        assert!(!may_receive(&wrap, &[author.public_key()]));
    }

    #[test]
    fn sql_names_the_same_kinds() {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new("");
        push_may_receive(&mut qb, &[], &[]);
        assert_eq!(qb.sql(), " AND (e.kind NOT IN (4, 1059))");
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new("");
        push_may_receive(&mut qb, &[vec![1]], &[vec![2]]);
        assert!(qb.sql().contains(") OR (e.kind = 4 AND e.pubkey = "));
    }

    #[test]
    fn legacy_dm_to_author_or_recipient() {
        let (author, alice, eve) = (Keys::generate(), Keys::generate(), Keys::generate());
        let dm = event(4, &author, &alice.public_key());
        assert!(may_receive(&dm, &[author.public_key()]));
        assert!(may_receive(&dm, &[alice.public_key()]));
        assert!(!may_receive(&dm, &[eve.public_key()]));
        let note = event(1, &author, &alice.public_key());
        assert!(may_receive(&note, &[]));
    }
}
