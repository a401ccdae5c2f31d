//! The relay's live matcher (`cairn_relay::matching::matches`) against
//! nostr's `Filter::match_event`, the semantics the stores implement: on
//! any filter and event built from the input they must agree.
//!
//! Values are drawn from small pools (a few ids, keys, kinds, times, tag
//! letters and values) so that filters and events share values and both
//! the matching and the non-matching paths are exercised; a free value is
//! mixed in so the pools do not bound what is tried.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use nostr::filter::MatchEventOptions;
use nostr::secp256k1::schnorr::Signature;
use nostr::{
    Alphabet, Event, EventId, Filter, Keys, Kind, PublicKey, SecretKey, SingleLetterTag, Tag,
    Timestamp,
};

const IDS: usize = 4;
const LETTERS: [&str; 9] = ["e", "p", "t", "a", "d", "E", "P", "ab", "-"];
const TEXT: [&str; 6] = ["", "x", "y", "X", "hello", "é"];
const KINDS: [u16; 7] = [0, 1, 5, 1059, 22242, 30023, u16::MAX];
const TIMES: [u64; 5] = [0, 1, 1_700_000_000, (1 << 53) - 1, u64::MAX];

fn keys() -> &'static [PublicKey] {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (1u8..=4)
            .map(|i| Keys::new(SecretKey::from_slice(&[i; 32]).unwrap()).public_key())
            .collect()
    })
}

fn id(u: &mut Unstructured) -> Result<EventId> {
    Ok(EventId::from_byte_array([u.choose_index(IDS)? as u8; 32]))
}

fn key(u: &mut Unstructured) -> Result<PublicKey> {
    Ok(*u.choose(keys())?)
}

fn kind(u: &mut Unstructured) -> Result<Kind> {
    Ok(Kind::from_u16(if u.ratio(1, 8)? {
        u.arbitrary()?
    } else {
        *u.choose(&KINDS)?
    }))
}

fn time(u: &mut Unstructured) -> Result<Timestamp> {
    Ok(Timestamp::from_secs(if u.ratio(1, 8)? {
        u.arbitrary()?
    } else {
        *u.choose(&TIMES)?
    }))
}

/// A tag value: free text, or the hex of a pooled id or key (what `e`/`p`
/// tags and `#e`/`#p` filters carry).
fn value(u: &mut Unstructured) -> Result<String> {
    Ok(match u.choose_index(4)? {
        0 => id(u)?.to_hex(),
        1 => key(u)?.to_hex(),
        2 => u.arbitrary::<String>()?,
        _ => (*u.choose(&TEXT)?).to_owned(),
    })
}

fn set<T: Ord>(
    u: &mut Unstructured,
    mut item: impl FnMut(&mut Unstructured) -> Result<T>,
) -> Result<Option<BTreeSet<T>>> {
    if !u.arbitrary::<bool>()? {
        return Ok(None);
    }
    let n = u.int_in_range(0..=4)?;
    (0..n).map(|_| item(u)).collect::<Result<_>>().map(Some)
}

fn letter(u: &mut Unstructured) -> Result<SingleLetterTag> {
    let c = *u.choose(&[
        Alphabet::E,
        Alphabet::P,
        Alphabet::T,
        Alphabet::A,
        Alphabet::D,
    ])?;
    Ok(if u.ratio(1, 4)? {
        SingleLetterTag::uppercase(c)
    } else {
        SingleLetterTag::lowercase(c)
    })
}

fn filter(u: &mut Unstructured) -> Result<Filter> {
    let mut f = Filter::new();
    f.ids = set(u, id)?;
    f.authors = set(u, key)?;
    f.kinds = set(u, kind)?;
    if u.arbitrary()? {
        f.since = Some(time(u)?);
    }
    if u.arbitrary()? {
        f.until = Some(time(u)?);
    }
    if u.ratio(1, 8)? {
        f.search = Some(value(u)?);
    }
    let mut tags = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let values = set(u, value)?.unwrap_or_default();
        tags.insert(letter(u)?, values);
    }
    f.generic_tags = tags;
    Ok(f)
}

fn event(u: &mut Unstructured) -> Result<Event> {
    let mut tags = Vec::new();
    for _ in 0..u.int_in_range(0..=5)? {
        let mut parts = vec![(*u.choose(&LETTERS)?).to_owned()];
        for _ in 0..u.int_in_range(0..=3)? {
            parts.push(value(u)?);
        }
        // `Tag::parse` refuses only an empty list.
        tags.push(Tag::parse(parts).expect("a tag with a name parses"));
    }
    let content = if u.arbitrary()? {
        u.arbitrary::<String>()?
    } else {
        (*u.choose(&TEXT)?).to_owned()
    };
    // Neither matcher looks at the signature: any 64 bytes will do.
    let sig = Signature::from_slice(&[1; 64]).expect("64 bytes");
    Ok(Event::new(
        id(u)?,
        key(u)?,
        time(u)?,
        kind(u)?,
        tags,
        content,
        sig,
    ))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(filter), Ok(event)) = (filter(&mut u), event(&mut u)) else {
        return;
    };
    let relay = cairn_relay::matching::matches(&filter, &event);
    let nostr = filter.match_event(&event, MatchEventOptions::new());
    assert_eq!(
        relay,
        nostr,
        "relay and nostr disagree on\nfilter {}\nevent {}",
        nostr::JsonUtil::as_json(&filter),
        nostr::JsonUtil::as_json(&event)
    );
});
