//! How NIP-01 classifies event kinds, and which kinds Cairn treats as private.

use nostr::Event;

/// Legacy NIP-04 encrypted direct message.
pub const KIND_ENCRYPTED_DM: u16 = 4;
/// NIP-09 deletion request.
pub const KIND_DELETION: u16 = 5;
/// NIP-59 gift wrap (carries NIP-17 private messages).
pub const KIND_GIFT_WRAP: u16 = 1059;
/// NIP-42 client authentication.
pub const KIND_AUTH: u16 = 22242;

/// Storage class of a kind, per NIP-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindClass {
    /// Stored as is.
    Regular,
    /// Only the newest per author and kind is kept.
    Replaceable,
    /// Never stored, only fanned out.
    Ephemeral,
    /// Only the newest per author, kind and `d` tag is kept.
    Addressable,
}

/// Classify a kind number.
pub fn classify(kind: u16) -> KindClass {
    match kind {
        0 | 3 | 10_000..=19_999 => KindClass::Replaceable,
        20_000..=29_999 => KindClass::Ephemeral,
        30_000..=39_999 => KindClass::Addressable,
        _ => KindClass::Regular,
    }
}

/// Kinds whose delivery is restricted to their recipients (and, for kind 4,
/// the author): see [`crate::privacy`], which states the rule in Rust and in SQL.
pub const PRIVATE_KINDS: [u16; 2] = [KIND_ENCRYPTED_DM, KIND_GIFT_WRAP];

/// Whether `kind` is one of [`PRIVATE_KINDS`].
pub fn is_private(kind: u16) -> bool {
    PRIVATE_KINDS.contains(&kind)
}

/// The `d` tag value that, together with author and kind, identifies a
/// replaceable (`Some("")`) or addressable event. `None` for other classes.
pub fn replacement_key(event: &Event) -> Option<String> {
    match classify(event.kind.as_u16()) {
        KindClass::Replaceable => Some(String::new()),
        KindClass::Addressable => Some(first_tag_value(event, "d").unwrap_or_default().to_owned()),
        _ => None,
    }
}

/// The first value of the first tag named `name`.
pub fn first_tag_value<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event.tags.iter().find_map(|tag| {
        let s = tag.as_slice();
        (s.len() >= 2 && s[0] == name).then(|| s[1].as_str())
    })
}

/// The NIP-40 expiration timestamp, if the event has a well-formed one.
pub fn expiration(event: &Event) -> Option<u64> {
    first_tag_value(event, "expiration").and_then(|v| v.parse().ok())
}

/// Values of all tags named `name` (first value only), e.g. every `p` recipient.
pub fn tag_values<'a>(event: &'a Event, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    event.tags.iter().filter_map(move |tag| {
        let s = tag.as_slice();
        (s.len() >= 2 && s[0] == name).then(|| s[1].as_str())
    })
}

/// How many events a NIP-09 deletion request names: its `e` and `a` tags
/// (0 for any other kind). What the writer's cost and the relay's
/// `max_deletion_targets` count.
pub fn deletion_targets(event: &Event) -> usize {
    if event.kind.as_u16() != KIND_DELETION {
        return 0;
    }
    event
        .tags
        .iter()
        .filter(|t| matches!(t.as_slice().first().map(String::as_str), Some("e" | "a")))
        .count()
}

/// Single-letter tags as `(letter, value)` pairs: what `#x` filters match and
/// what the stores index.
pub fn indexable_tags(event: &Event) -> impl Iterator<Item = (&str, &str)> + '_ {
    event.tags.iter().filter_map(|tag| {
        let s = tag.as_slice();
        (s.len() >= 2 && s[0].len() == 1 && s[0].as_bytes()[0].is_ascii_alphabetic())
            .then(|| (s[0].as_str(), s[1].as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_kind_ranges() {
        assert_eq!(classify(1), KindClass::Regular);
        assert_eq!(classify(0), KindClass::Replaceable);
        assert_eq!(classify(3), KindClass::Replaceable);
        assert_eq!(classify(10_002), KindClass::Replaceable);
        assert_eq!(classify(20_001), KindClass::Ephemeral);
        assert_eq!(classify(30_023), KindClass::Addressable);
        assert_eq!(classify(40_000), KindClass::Regular);
        assert!(is_private(1059) && is_private(4) && !is_private(14));
    }
}
