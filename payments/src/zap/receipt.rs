//! Kind-9735 zap receipts (NIP-57 Appendix E).

use nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, Tag, Timestamp};

use super::request::ZapRequestError;
use super::ZapError;

/// The receipt for the zap request `request_json` (as received) paid through
/// `bolt11`, signed by the zapper `keys`, dated `paid_at`. Tags: the
/// request's `p`, its `e` and `a` when present, `P` = the request's signer
/// (the sender), `bolt11`, `description` = the request JSON byte for byte (its
/// SHA-256 is the invoice's description hash), and `preimage` when known.
pub fn build_receipt(
    keys: &Keys,
    request_json: &str,
    bolt11: &str,
    preimage: Option<&str>,
    paid_at: Timestamp,
) -> Result<Event, ZapError> {
    let request =
        Event::from_json(request_json).map_err(|e| ZapRequestError::NotAnEvent(e.to_string()))?;
    let copied = |name: &str| {
        request
            .tags
            .iter()
            .find(|t| t.as_slice().first().map(String::as_str) == Some(name))
            .cloned()
    };
    let mut tags: Vec<Tag> = Vec::with_capacity(7);
    tags.extend(copied("p"));
    tags.extend(copied("e"));
    tags.extend(copied("a"));
    tags.push(custom_tag("P", &request.pubkey.to_hex()));
    tags.push(custom_tag("bolt11", bolt11));
    tags.push(custom_tag("description", request_json));
    if let Some(preimage) = preimage {
        tags.push(custom_tag("preimage", preimage));
    }
    Ok(EventBuilder::new(Kind::ZapReceipt, "")
        .tags(tags)
        .custom_created_at(paid_at)
        .sign_with_keys(keys)?)
}

fn custom_tag(name: &str, value: &str) -> Tag {
    Tag::custom(nostr::TagKind::custom(name.to_owned()), [value.to_owned()])
}

#[cfg(test)]
mod tests {
    use super::super::request::tests::{good_tags, request, tag, AMOUNT};
    use super::super::ZapRequest;
    use super::*;

    fn values(ev: &Event, name: &str) -> Vec<Vec<String>> {
        ev.tags
            .iter()
            .map(|t| t.as_slice().to_vec())
            .filter(|t| t[0] == name)
            .collect()
    }

    #[test]
    fn receipt_has_the_nip57_shape() {
        let zapper = Keys::generate();
        let sender = Keys::generate();
        let recipient = Keys::generate().public_key();
        let mut tags = good_tags(&recipient);
        let coord = format!("30023:{}:post", recipient.to_hex());
        tags.push(tag(&["a", &coord]));
        let json = request(&sender, tags);
        let req = ZapRequest::validate(&json, AMOUNT, &recipient).unwrap();
        let paid_at = Timestamp::from(1_700_000_000);
        let receipt = build_receipt(
            &zapper,
            req.json(),
            "lnbcrt210n1fake",
            Some("ab".repeat(32).as_str()),
            paid_at,
        )
        .unwrap();
        receipt.verify().expect("signed and id valid");
        assert_eq!(receipt.kind, Kind::ZapReceipt);
        assert_eq!(receipt.pubkey, zapper.public_key());
        assert_eq!(receipt.created_at, paid_at);
        assert_eq!(receipt.content, "");
        assert_eq!(
            values(&receipt, "p"),
            vec![vec!["p".to_owned(), recipient.to_hex()]]
        );
        assert_eq!(values(&receipt, "e"), values(req.event(), "e"));
        assert_eq!(values(&receipt, "a"), vec![vec!["a".to_owned(), coord]]);
        assert_eq!(
            values(&receipt, "P"),
            vec![vec!["P".to_owned(), sender.public_key().to_hex()]]
        );
        assert_eq!(values(&receipt, "bolt11")[0][1], "lnbcrt210n1fake");
        // Byte for byte, so SHA-256(description) is the invoice's hash.
        assert_eq!(values(&receipt, "description")[0][1], json);
        assert_eq!(values(&receipt, "preimage")[0][1], "ab".repeat(32));
        // Not copied: relays and amount stay in the description only.
        assert!(values(&receipt, "relays").is_empty());
        assert!(values(&receipt, "amount").is_empty());
    }

    #[test]
    fn receipt_without_e_or_preimage() {
        let zapper = Keys::generate();
        let recipient = Keys::generate().public_key();
        let tags = good_tags(&recipient)
            .into_iter()
            .filter(|t| t.as_slice()[0] != "e")
            .collect();
        let json = request(&Keys::generate(), tags);
        let receipt = build_receipt(&zapper, &json, "lnbc1", None, Timestamp::now()).unwrap();
        assert!(values(&receipt, "e").is_empty());
        assert!(values(&receipt, "preimage").is_empty());
        assert!(build_receipt(&zapper, "{}", "lnbc1", None, Timestamp::now()).is_err());
    }
}
