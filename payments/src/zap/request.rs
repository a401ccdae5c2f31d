//! Validation of kind-9734 zap requests (NIP-57 Appendix D).

use bitcoin::hashes::{sha256, Hash};
use nostr::nips::nip01::Coordinate;
use nostr::{Event, EventId, JsonUtil, Kind, PublicKey, RelayUrl};

/// Longest zap request accepted, in bytes. It arrives in a URL query string
/// and is stored until the invoice expires, so it is kept small.
pub const MAX_ZAP_REQUEST_LEN: usize = 16 * 1024;
/// Most relays a receipt is sent to from one request: each is a connection
/// the node opens on a stranger's behalf.
pub const MAX_RECEIPT_RELAYS: usize = 10;

/// Why a zap request was refused. The texts are shown to the payer's client
/// (LUD-06 `reason`), so they name the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZapRequestError {
    /// Larger than [`MAX_ZAP_REQUEST_LEN`].
    #[error("zap request is longer than {MAX_ZAP_REQUEST_LEN} bytes")]
    TooLong,
    /// Not the JSON of a Nostr event.
    #[error("zap request is not a Nostr event: {0}")]
    NotAnEvent(String),
    /// The id does not match the content, or the signature does not verify.
    #[error("zap request has an invalid id or signature")]
    BadSignature,
    /// Not kind 9734.
    #[error("zap request must be kind 9734, not {0}")]
    WrongKind(u16),
    /// Zero or several `p` tags.
    #[error("zap request must have exactly one p tag, not {0}")]
    PTagCount(usize),
    /// The `p` tag holds no public key.
    #[error("zap request p tag is not a public key")]
    BadPTag,
    /// The `p` tag names someone other than the owner of the name.
    #[error("zap request p tag is not the public key of this name")]
    WrongRecipient,
    /// Several `e` tags.
    #[error("zap request must have at most one e tag, not {0}")]
    ETagCount(usize),
    /// The `e` tag holds no event id.
    #[error("zap request e tag is not an event id")]
    BadETag,
    /// No `relays` tag.
    #[error("zap request has no relays tag")]
    NoRelays,
    /// The `relays` tag names no ws:// or wss:// URL.
    #[error("zap request relays tag names no valid ws:// or wss:// relay")]
    NoValidRelay,
    /// The `amount` tag is not a number.
    #[error("zap request amount tag is not a number of millisatoshis")]
    BadAmount,
    /// The `amount` tag differs from the callback's `amount`.
    #[error("zap request amount {tag} msat differs from the requested amount {callback} msat")]
    AmountMismatch {
        /// The tag's amount.
        tag: u64,
        /// The callback's `amount` parameter.
        callback: u64,
    },
    /// Several `P` tags.
    #[error("zap request must have at most one P tag, not {0}")]
    UpperPTagCount(usize),
    /// The `P` tag is not the sender's public key.
    #[error("zap request P tag must be the sender's public key")]
    BadUpperPTag,
    /// Several `a` tags.
    #[error("zap request must have at most one a tag, not {0}")]
    ATagCount(usize),
    /// The `a` tag is not an event coordinate.
    #[error("zap request a tag is not a valid event coordinate")]
    BadATag,
}

/// A zap request that passed [`ZapRequest::validate`].
#[derive(Debug, Clone)]
pub struct ZapRequest {
    json: String,
    event: Event,
    relays: Vec<RelayUrl>,
}

/// SHA-256 of `json`'s bytes: what a zap invoice's description hash commits to.
pub(crate) fn description_hash(json: &str) -> sha256::Hash {
    sha256::Hash::hash(json.as_bytes())
}

/// Values (second elements) of the tags named `name`; `None` for a tag
/// that has a name but no value.
fn tag_values<'a>(event: &'a Event, name: &str) -> Vec<Option<&'a str>> {
    event
        .tags
        .iter()
        .map(|t| t.as_slice())
        .filter(|t| t.first().map(String::as_str) == Some(name))
        .map(|t| t.get(1).map(String::as_str))
        .collect()
}

fn at_most_one<E>(
    values: Vec<Option<&str>>,
    count_error: impl FnOnce(usize) -> E,
    missing_value: E,
) -> Result<Option<&str>, E> {
    match values.as_slice() {
        [] => Ok(None),
        [Some(v)] => Ok(Some(v)),
        [None] => Err(missing_value),
        many => Err(count_error(many.len())),
    }
}

impl ZapRequest {
    /// Checks `json` (the callback's `nostr` parameter, URL-decoded) as a zap
    /// request for `amount_msat` to `recipient`, following NIP-57 Appendix D:
    /// valid id and signature; kind 9734; exactly one `p` tag, equal to
    /// `recipient`; at most one `e` tag; a `relays` tag; an `amount` tag, if
    /// any, equal to `amount_msat`; at most one `a` tag, a valid coordinate;
    /// at most one `P` tag. Appendix D says the `P` tag must equal "the zap
    /// receipt's pubkey"; the receipt's `P` is the sender, so a `P` naming
    /// anyone but the request's signer is refused — otherwise the receipt
    /// would credit a sender who never signed.
    pub fn validate(
        json: &str,
        amount_msat: u64,
        recipient: &PublicKey,
    ) -> Result<Self, ZapRequestError> {
        use ZapRequestError as E;
        if json.len() > MAX_ZAP_REQUEST_LEN {
            return Err(E::TooLong);
        }
        let event = Event::from_json(json).map_err(|e| E::NotAnEvent(e.to_string()))?;
        event.verify().map_err(|_| E::BadSignature)?;
        if event.kind != Kind::ZapRequest {
            return Err(E::WrongKind(event.kind.as_u16()));
        }

        let p = tag_values(&event, "p");
        if p.len() != 1 {
            return Err(E::PTagCount(p.len()));
        }
        let p = p[0]
            .and_then(|v| PublicKey::from_hex(v).ok())
            .ok_or(E::BadPTag)?;
        if p != *recipient {
            return Err(E::WrongRecipient);
        }

        if let Some(e) = at_most_one(tag_values(&event, "e"), E::ETagCount, E::BadETag)? {
            EventId::from_hex(e).map_err(|_| E::BadETag)?;
        }

        let relays_tag = event
            .tags
            .iter()
            .map(|t| t.as_slice())
            .find(|t| t.first().map(String::as_str) == Some("relays"))
            .ok_or(E::NoRelays)?;
        let mut relays: Vec<RelayUrl> = Vec::new();
        for url in relays_tag.iter().skip(1) {
            // A client's list may hold an odd entry; the good ones still count.
            if let Ok(url) = RelayUrl::parse(url) {
                if !relays.contains(&url) && relays.len() < MAX_RECEIPT_RELAYS {
                    relays.push(url);
                }
            }
        }
        if relays.is_empty() {
            return Err(E::NoValidRelay);
        }

        if let Some(amount) = tag_values(&event, "amount").first() {
            let tag: u64 = amount.and_then(|v| v.parse().ok()).ok_or(E::BadAmount)?;
            if tag != amount_msat {
                return Err(E::AmountMismatch {
                    tag,
                    callback: amount_msat,
                });
            }
        }

        if let Some(a) = at_most_one(tag_values(&event, "a"), E::ATagCount, E::BadATag)? {
            Coordinate::parse(a).map_err(|_| E::BadATag)?;
        }

        if let Some(sender) =
            at_most_one(tag_values(&event, "P"), E::UpperPTagCount, E::BadUpperPTag)?
        {
            if PublicKey::from_hex(sender).ok() != Some(event.pubkey) {
                return Err(E::BadUpperPTag);
            }
        }

        Ok(Self {
            json: json.to_owned(),
            event,
            relays,
        })
    }

    /// The request exactly as received (the receipt's `description`).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The parsed event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Who zaps (the request's signer; a throwaway key for anonymous zaps).
    pub fn sender(&self) -> PublicKey {
        self.event.pubkey
    }

    /// The relays the receipt goes to (valid, distinct, at most
    /// [`MAX_RECEIPT_RELAYS`]).
    pub fn relays(&self) -> &[RelayUrl] {
        &self.relays
    }

    /// What the invoice's description hash must be: SHA-256 of [`Self::json`].
    pub fn description_hash(&self) -> sha256::Hash {
        description_hash(&self.json)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys, Tag};

    pub(crate) const AMOUNT: u64 = 21_000;

    pub(crate) fn tag(values: &[&str]) -> Tag {
        Tag::parse(values.iter().copied()).expect("tag")
    }

    /// A valid request from `sender` to `recipient`, with `tags` instead of
    /// the default ones when given.
    pub(crate) fn request(sender: &Keys, tags: Vec<Tag>) -> String {
        EventBuilder::new(Kind::ZapRequest, "great post")
            .tags(tags)
            .sign_with_keys(sender)
            .expect("sign")
            .as_json()
    }

    pub(crate) fn good_tags(recipient: &PublicKey) -> Vec<Tag> {
        vec![
            tag(&["p", &recipient.to_hex()]),
            tag(&["relays", "ws://127.0.0.1:1", "wss://relay.example.com"]),
            tag(&["amount", &AMOUNT.to_string()]),
            tag(&["e", &EventId::all_zeros().to_hex()]),
        ]
    }

    fn check(tags: Vec<Tag>) -> Result<ZapRequest, ZapRequestError> {
        let sender = Keys::generate();
        let recipient = recipient();
        let mut all = tags;
        if all.is_empty() {
            all = good_tags(&recipient);
        }
        ZapRequest::validate(&request(&sender, all), AMOUNT, &recipient)
    }

    fn recipient() -> PublicKey {
        // A fixed key so that `check` and the tests agree on the recipient.
        Keys::parse("0000000000000000000000000000000000000000000000000000000000000001")
            .unwrap()
            .public_key()
    }

    fn with(extra: &[&[&str]]) -> Vec<Tag> {
        let mut tags = good_tags(&recipient());
        tags.extend(extra.iter().map(|t| tag(t)));
        tags
    }

    fn without(name: &str) -> Vec<Tag> {
        good_tags(&recipient())
            .into_iter()
            .filter(|t| t.as_slice()[0] != name)
            .collect()
    }

    #[test]
    fn valid_request_is_accepted_with_hash_of_the_exact_json() {
        let sender = Keys::generate();
        let json = request(&sender, good_tags(&recipient()));
        let req = ZapRequest::validate(&json, AMOUNT, &recipient()).expect("valid");
        assert_eq!(req.json(), json);
        assert_eq!(req.sender(), sender.public_key());
        assert_eq!(req.relays().len(), 2);
        assert_eq!(
            req.description_hash().to_string(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(json.as_bytes()))
        );
        // Whitespace changes the hash: the invoice commits to the bytes received.
        let spaced = json.replacen(',', ", ", 1);
        let req2 = ZapRequest::validate(&spaced, AMOUNT, &recipient()).expect("still valid");
        assert_ne!(req2.description_hash(), req.description_hash());
    }

    #[test]
    fn too_long() {
        let json = " ".repeat(MAX_ZAP_REQUEST_LEN + 1);
        assert_eq!(
            ZapRequest::validate(&json, AMOUNT, &recipient()).unwrap_err(),
            ZapRequestError::TooLong
        );
    }

    #[test]
    fn not_an_event() {
        assert!(matches!(
            ZapRequest::validate("{\"kind\":9734}", AMOUNT, &recipient()),
            Err(ZapRequestError::NotAnEvent(_))
        ));
    }

    #[test]
    fn bad_signature_or_id() {
        let sender = Keys::generate();
        let json = request(&sender, good_tags(&recipient()));
        // Content changed after signing: the id no longer matches.
        let tampered = json.replace("great post", "greater post");
        assert_eq!(
            ZapRequest::validate(&tampered, AMOUNT, &recipient()).unwrap_err(),
            ZapRequestError::BadSignature
        );
        // Signature of another event spliced in.
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let other: serde_json::Value =
            serde_json::from_str(&request(&sender, without("e"))).unwrap();
        v["sig"] = other["sig"].clone();
        assert_eq!(
            ZapRequest::validate(&v.to_string(), AMOUNT, &recipient()).unwrap_err(),
            ZapRequestError::BadSignature
        );
    }

    #[test]
    fn wrong_kind() {
        let json = EventBuilder::new(Kind::TextNote, "")
            .tags(good_tags(&recipient()))
            .sign_with_keys(&Keys::generate())
            .unwrap()
            .as_json();
        assert_eq!(
            ZapRequest::validate(&json, AMOUNT, &recipient()).unwrap_err(),
            ZapRequestError::WrongKind(1)
        );
    }

    #[test]
    fn no_p_tag() {
        assert_eq!(
            check(without("p")).unwrap_err(),
            ZapRequestError::PTagCount(0)
        );
    }

    #[test]
    fn two_p_tags() {
        let other = Keys::generate().public_key().to_hex();
        assert_eq!(
            check(with(&[&["p", &other]])).unwrap_err(),
            ZapRequestError::PTagCount(2)
        );
    }

    #[test]
    fn p_tag_not_a_key() {
        let mut tags = without("p");
        tags.push(tag(&["p", "npub-nope"]));
        assert_eq!(check(tags).unwrap_err(), ZapRequestError::BadPTag);
    }

    #[test]
    fn p_tag_for_someone_else() {
        let mut tags = without("p");
        tags.push(tag(&["p", &Keys::generate().public_key().to_hex()]));
        assert_eq!(check(tags).unwrap_err(), ZapRequestError::WrongRecipient);
    }

    #[test]
    fn two_e_tags() {
        let id = EventId::all_zeros().to_hex().replace('0', "1");
        assert_eq!(
            check(with(&[&["e", &id]])).unwrap_err(),
            ZapRequestError::ETagCount(2)
        );
    }

    #[test]
    fn e_tag_not_an_id() {
        let mut tags = without("e");
        tags.push(tag(&["e", "xyz"]));
        assert_eq!(check(tags).unwrap_err(), ZapRequestError::BadETag);
    }

    #[test]
    fn no_e_tag_is_fine() {
        assert!(check(without("e")).is_ok());
    }

    #[test]
    fn no_relays_tag() {
        assert_eq!(
            check(without("relays")).unwrap_err(),
            ZapRequestError::NoRelays
        );
    }

    #[test]
    fn relays_tag_without_a_relay_url() {
        let mut tags = without("relays");
        tags.push(tag(&["relays", "https://not-a-relay.example", "nonsense"]));
        assert_eq!(check(tags).unwrap_err(), ZapRequestError::NoValidRelay);
    }

    #[test]
    fn relays_are_deduplicated_and_capped() {
        let mut tags = without("relays");
        let mut relays = vec!["relays".to_owned(), "ws://127.0.0.1:1".to_owned()];
        relays.extend((0..20).map(|i| format!("ws://127.0.0.1:{}", i + 1)));
        tags.push(Tag::parse(relays).unwrap());
        let req = check(tags).unwrap();
        assert_eq!(req.relays().len(), MAX_RECEIPT_RELAYS);
        assert_eq!(req.relays()[1].as_str(), "ws://127.0.0.1:2");
    }

    #[test]
    fn amount_tag_must_equal_the_callback_amount() {
        let mut tags = without("amount");
        tags.push(tag(&["amount", "1000"]));
        assert_eq!(
            check(tags).unwrap_err(),
            ZapRequestError::AmountMismatch {
                tag: 1000,
                callback: AMOUNT
            }
        );
    }

    #[test]
    fn amount_tag_not_a_number() {
        let mut tags = without("amount");
        tags.push(tag(&["amount", "lots"]));
        assert_eq!(check(tags).unwrap_err(), ZapRequestError::BadAmount);
    }

    #[test]
    fn no_amount_tag_is_fine() {
        assert!(check(without("amount")).is_ok());
    }

    #[test]
    fn a_tag_must_be_a_coordinate() {
        assert_eq!(
            check(with(&[&["a", "not:a:coordinate:really"]])).unwrap_err(),
            ZapRequestError::BadATag
        );
        let coord = format!(
            "30023:{}:my-article",
            Keys::generate().public_key().to_hex()
        );
        assert!(check(with(&[&["a", &coord]])).is_ok());
    }

    #[test]
    fn two_a_tags() {
        let coord = format!("30023:{}:x", Keys::generate().public_key().to_hex());
        assert_eq!(
            check(with(&[&["a", &coord], &["a", &coord]])).unwrap_err(),
            ZapRequestError::ATagCount(2)
        );
    }

    #[test]
    fn two_upper_p_tags() {
        let k = Keys::generate().public_key().to_hex();
        assert_eq!(
            check(with(&[&["P", &k], &["P", &k]])).unwrap_err(),
            ZapRequestError::UpperPTagCount(2)
        );
    }

    #[test]
    fn upper_p_tag_must_be_the_sender() {
        let k = Keys::generate().public_key().to_hex();
        assert_eq!(
            check(with(&[&["P", &k]])).unwrap_err(),
            ZapRequestError::BadUpperPTag
        );
        let sender = Keys::generate();
        let mut tags = good_tags(&recipient());
        tags.push(tag(&["P", &sender.public_key().to_hex()]));
        assert!(ZapRequest::validate(&request(&sender, tags), AMOUNT, &recipient()).is_ok());
    }
}
