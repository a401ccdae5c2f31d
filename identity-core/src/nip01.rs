//! NIP-01 event ids, computed exactly as `docs/identity-protocol.md` §3.1 says.
//!
//! The id is `SHA-256` of the UTF-8 string
//! `[0,"<pubkey hex>",<created_at>,<kind>,<tags>,"<content>"]` with no
//! whitespace, where every string escapes only the seven characters NIP-01
//! lists (`\n` `"` `\\` `\r` `\t` `\b` `\f`) and writes every other character
//! verbatim. JSON libraries (serde_json, `JSON.stringify`, go-nostr) instead
//! write the other C0 control characters as `\u00XX`, so the two readings give
//! different ids exactly for strings holding U+0000–U+001F other than those
//! five. Cairn's protocol events therefore **must not** contain them
//! ([`has_forbidden_control`]): for every event Cairn accepts, this function
//! and any JSON library agree, and two verifiers cannot disagree on an id.
//!
//! `created_at` is capped at 2^53 − 1 ([`MAX_SAFE_INTEGER`]) on protocol
//! events so that a JavaScript verifier reads the JSON number exactly.

use nostr::{
    hashes::{sha256::Hash as Sha256Hash, Hash as _},
    secp256k1::Message,
    Event, EventId, PublicKey, Tags, SECP256K1,
};

/// 2^53 − 1: the largest integer every JSON implementation (IEEE-754 doubles) reads exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Appends `s` as a JSON string with NIP-01's escaping: the seven listed
/// characters escaped, everything else verbatim.
fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The NIP-01 serialization the id hashes (see the module docs).
pub fn serialize_for_id(
    pubkey: &PublicKey,
    created_at: u64,
    kind: u16,
    tags: &Tags,
    content: &str,
) -> String {
    let mut out = String::with_capacity(256 + content.len());
    out.push_str("[0,\"");
    out.push_str(&pubkey.to_hex());
    out.push_str("\",");
    out.push_str(&created_at.to_string());
    out.push(',');
    out.push_str(&kind.to_string());
    out.push_str(",[");
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        for (j, v) in tag.as_slice().iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_string(&mut out, v);
        }
        out.push(']');
    }
    out.push_str("],");
    push_string(&mut out, content);
    out.push(']');
    out
}

/// The NIP-01 id of an event with these fields.
pub fn event_id(
    pubkey: &PublicKey,
    created_at: u64,
    kind: u16,
    tags: &Tags,
    content: &str,
) -> EventId {
    let s = serialize_for_id(pubkey, created_at, kind, tags, content);
    EventId::from_byte_array(Sha256Hash::hash(s.as_bytes()).to_byte_array())
}

/// Whether `s` holds a C0 control character that has no two-character escape
/// in NIP-01 (U+0000–U+001F except U+0008, U+0009, U+000A, U+000C, U+000D).
pub fn has_forbidden_control(s: &str) -> bool {
    s.chars()
        .any(|c| c < '\u{20}' && !matches!(c, '\u{8}' | '\t' | '\n' | '\u{c}' | '\r'))
}

/// Why an event fails the NIP-01 checks Cairn applies to its protocol events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventCheckError {
    /// A tag value or the content holds a control character without a NIP-01 escape.
    #[error("content or a tag holds a control character NIP-01 does not escape")]
    ControlCharacter,
    /// An empty tag (`[]`): it has no name.
    #[error("empty tag")]
    EmptyTag,
    /// `created_at` is above 2^53 − 1.
    #[error("created_at is above 2^53 - 1")]
    CreatedAtTooLarge,
    /// The `id` is not the NIP-01 hash of the other fields.
    #[error("event id does not match its contents")]
    Id,
    /// The signature does not verify over the id.
    #[error("event signature does not verify")]
    Signature,
}

/// Checks a protocol event: no forbidden control character, no empty tag,
/// `created_at` ≤ 2^53 − 1, id = NIP-01 hash, BIP-340 signature over the id.
pub fn check_event(event: &Event) -> Result<(), EventCheckError> {
    if has_forbidden_control(&event.content)
        || event
            .tags
            .iter()
            .any(|t| t.as_slice().iter().any(|v| has_forbidden_control(v)))
    {
        return Err(EventCheckError::ControlCharacter);
    }
    if event.tags.iter().any(|t| t.as_slice().is_empty()) {
        return Err(EventCheckError::EmptyTag);
    }
    if event.created_at.as_secs() > MAX_SAFE_INTEGER {
        return Err(EventCheckError::CreatedAtTooLarge);
    }
    let id = event_id(
        &event.pubkey,
        event.created_at.as_secs(),
        event.kind.as_u16(),
        &event.tags,
        &event.content,
    );
    if id != event.id {
        return Err(EventCheckError::Id);
    }
    let key = event
        .pubkey
        .xonly()
        .map_err(|_| EventCheckError::Signature)?;
    SECP256K1
        .verify_schnorr(&event.sig, &Message::from_digest(id.to_bytes()), &key)
        .map_err(|_| EventCheckError::Signature)
}

#[cfg(test)]
mod tests {
    use nostr::{Kind, Tag, Timestamp};

    use super::*;

    fn key() -> PublicKey {
        PublicKey::from_hex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
            .unwrap()
    }

    fn tags(values: &[&[&str]]) -> Tags {
        Tags::from_list(
            values
                .iter()
                .map(|t| Tag::parse(t.iter().copied()).unwrap())
                .collect(),
        )
    }

    #[test]
    fn serialization_is_nip01_exactly() {
        let t = tags(&[&["x", "a\"b"], &["y"]]);
        let s = serialize_for_id(&key(), 7, 3470, &t, "l1\nl2\t\\ é 🙂 \u{7f} \u{2028}");
        assert_eq!(
            s,
            "[0,\"79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\",7,3470,\
             [[\"x\",\"a\\\"b\"],[\"y\"]],\"l1\\nl2\\t\\\\ é 🙂 \u{7f} \u{2028}\"]"
        );
    }

    /// For every string Cairn accepts, the id equals what the `nostr` crate
    /// (serde_json escaping) computes; for the control characters it does not
    /// escape the same way, the two differ, which is why Cairn refuses them.
    #[test]
    fn agrees_with_the_nostr_crate_exactly_where_allowed() {
        for content in [
            "",
            "plain",
            "\u{8}\t\n\u{c}\r \" \\ / é ü 中文 🙂 \u{7f} \u{85} \u{2028} \u{2029} \u{feff}",
        ] {
            assert!(!has_forbidden_control(content));
            let t = tags(&[&["alt", content], &["k", "v", content]]);
            let ours = event_id(&key(), 1_700_000_000, 3470, &t, content);
            let theirs = EventId::new(
                &key(),
                &Timestamp::from(1_700_000_000),
                &Kind::Custom(3470),
                &t,
                content,
            );
            assert_eq!(ours, theirs, "content {content:?}");
        }
        for c in (0u8..0x20).map(char::from) {
            let content = format!("a{c}b");
            let forbidden = has_forbidden_control(&content);
            assert_eq!(
                forbidden,
                !matches!(c, '\u{8}' | '\t' | '\n' | '\u{c}' | '\r')
            );
            let t = Tags::new();
            let ours = event_id(&key(), 1, 1, &t, &content);
            let theirs = EventId::new(&key(), &Timestamp::from(1), &Kind::Custom(1), &t, &content);
            // serde_json writes \u00XX where NIP-01 says "verbatim".
            assert_eq!(ours != theirs, forbidden, "U+{:04X}", c as u32);
        }
    }
}
