//! Who may receive private events. Applied per event to everything that
//! leaves the relay (stored results, live fan-out); the stores apply the same
//! rule inside their queries so that COUNT and `limit` are right too.

use nostr::{Event, Filter, PublicKey};

use crate::kinds::{is_private, tag_values, KIND_ENCRYPTED_DM, KIND_GIFT_WRAP};

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

/// Whether a filter asks explicitly for private kinds, which requires AUTH
/// before anything is sent.
pub fn asks_for_private_kinds(filter: &Filter) -> bool {
    filter.kinds.as_ref().is_some_and(|kinds| {
        kinds
            .iter()
            .any(|k| matches!(k.as_u16(), KIND_GIFT_WRAP | KIND_ENCRYPTED_DM))
    })
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
