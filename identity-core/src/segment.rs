//! Log segments (kind [`kinds::LOG_SEGMENT`]): which operations an epoch
//! holds, in log order, so that a mirror can replay a witness's log from its
//! published events alone.
//!
//! Binding operations (kind 3470) and attestations (3471) say nothing of
//! where they sit in the log, which epoch accepted them or at what block
//! height; the epoch header (3472) only commits to the result. A segment,
//! signed by the witness and published when the epoch closes, fills that in:
//! for every operation of the epoch, in log order, its event id, the id of
//! its attestation (for `bind` and `recover`, whose leaf comes just before
//! the operation's) and the block height the witness applied it at, plus the
//! height the epoch closed at (due recoveries complete there).
//!
//! Invariants: a segment is only a claim by the witness. A mirror replays
//! it and compares the result with the header anchored on its own Bitcoin
//! view, so a wrong segment is caught, never trusted. An epoch with more
//! than [`MAX_SEGMENT_OPS`] operations is split into several parts (`part`
//! `i` of `n`), each within a relay's event size limit. `created_at` is the
//! epoch's close time, so a segment signed again is the same event (same id).

use nostr::{Event, EventBuilder, EventId, Kind, Tag, TagKind, Timestamp};

use crate::kinds;

/// Most operations in one segment event (each ~150 bytes of tags: ~30 KB).
pub const MAX_SEGMENT_OPS: usize = 200;

/// A malformed segment event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed log segment: {0}")]
pub struct SegmentError(pub String);

/// One operation of an epoch, as the witness logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentEntry {
    /// The operation's event id (kind 3470).
    pub op: EventId,
    /// Its attestation's event id (kind 3471), for `bind` and `recover`.
    pub attestation: Option<EventId>,
    /// Block height the witness applied it at.
    pub height: u32,
}

/// One part of an epoch's segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSegment {
    /// The epoch.
    pub epoch: u64,
    /// This part's number, from 0.
    pub part: u32,
    /// How many parts the epoch's segment has.
    pub parts: u32,
    /// Block height the epoch closed at.
    pub close_height: u32,
    /// Unix time the epoch closed (the event's `created_at`).
    pub closed_at: u64,
    /// This part's operations, in log order.
    pub entries: Vec<SegmentEntry>,
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, SegmentError> {
    // Canonical decimal only (protocol §2): no sign, no leading zeros.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(SegmentError(format!("{what} is not a canonical number")));
    }
    s.parse()
        .map_err(|_| SegmentError(format!("{what} is out of range")))
}

fn id(s: &str, what: &str) -> Result<EventId, SegmentError> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(SegmentError(format!("{what} is not 64 lowercase hex")));
    }
    EventId::from_hex(s).map_err(|_| SegmentError(format!("{what} is not 64 lowercase hex")))
}

impl LogSegment {
    /// Splits an epoch's operations into parts of at most [`MAX_SEGMENT_OPS`].
    /// An epoch always has at least one operation (empty ones are skipped).
    pub fn split(
        epoch: u64,
        close_height: u32,
        closed_at: u64,
        entries: &[SegmentEntry],
    ) -> Vec<LogSegment> {
        let chunks: Vec<&[SegmentEntry]> = entries.chunks(MAX_SEGMENT_OPS).collect();
        let parts = chunks.len().max(1) as u32;
        let mut out: Vec<LogSegment> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| LogSegment {
                epoch,
                part: i as u32,
                parts,
                close_height,
                closed_at,
                entries: c.to_vec(),
            })
            .collect();
        if out.is_empty() {
            out.push(LogSegment {
                epoch,
                part: 0,
                parts: 1,
                close_height,
                closed_at,
                entries: Vec::new(),
            });
        }
        out
    }

    /// The unsigned event: tags `["epoch", n]`, `["part", i, n]`,
    /// `["close_height", h]`, then one `["op", <id>, <height>]` or
    /// `["op", <id>, <height>, <attestation id>]` per operation, in log order.
    pub fn to_event_builder(&self) -> EventBuilder {
        let mut tags = vec![
            Tag::custom(TagKind::custom("epoch"), [self.epoch.to_string()]),
            Tag::custom(
                TagKind::custom("part"),
                [self.part.to_string(), self.parts.to_string()],
            ),
            Tag::custom(
                TagKind::custom("close_height"),
                [self.close_height.to_string()],
            ),
        ];
        for e in &self.entries {
            let mut values = vec![e.op.to_hex(), e.height.to_string()];
            if let Some(att) = e.attestation {
                values.push(att.to_hex());
            }
            tags.push(Tag::custom(TagKind::custom("op"), values));
        }
        EventBuilder::new(Kind::Custom(kinds::LOG_SEGMENT), "")
            .tags(tags)
            .custom_created_at(Timestamp::from(self.closed_at))
    }

    /// Parses and checks a segment event: id and signature, kind, each tag
    /// exactly once with its number of values (`op` in order). Whether its
    /// author is the witness you follow is up to you.
    pub fn from_event(event: &Event) -> Result<Self, SegmentError> {
        event
            .verify()
            .map_err(|e| SegmentError(format!("signature: {e}")))?;
        if event.kind != Kind::Custom(kinds::LOG_SEGMENT) {
            return Err(SegmentError("wrong kind".into()));
        }
        let (mut epoch, mut part, mut close_height) = (None, None, None);
        let mut entries = Vec::new();
        for tag in event.tags.iter() {
            let t = tag.as_slice();
            let once = |seen: bool, n: usize| {
                if seen {
                    return Err(SegmentError(format!("`{}` tag repeated", t[0])));
                }
                if t.len() != n + 1 {
                    return Err(SegmentError(format!("`{}` tag needs {n} values", t[0])));
                }
                Ok(())
            };
            match t.first().map(String::as_str) {
                Some("epoch") => {
                    once(epoch.is_some(), 1)?;
                    epoch = Some(num::<u64>(&t[1], "epoch")?);
                }
                Some("part") => {
                    once(part.is_some(), 2)?;
                    part = Some((num::<u32>(&t[1], "part")?, num::<u32>(&t[2], "parts")?));
                }
                Some("close_height") => {
                    once(close_height.is_some(), 1)?;
                    close_height = Some(num::<u32>(&t[1], "close_height")?);
                }
                Some("op") => {
                    if !(t.len() == 3 || t.len() == 4) {
                        return Err(SegmentError("`op` tag needs 2 or 3 values".into()));
                    }
                    entries.push(SegmentEntry {
                        op: id(&t[1], "op id")?,
                        height: num(&t[2], "op height")?,
                        attestation: t.get(3).map(|a| id(a, "attestation id")).transpose()?,
                    });
                }
                _ => {}
            }
        }
        let (part, parts) = part.ok_or_else(|| SegmentError("missing `part` tag".into()))?;
        if parts == 0 || part >= parts {
            return Err(SegmentError("part is not below parts".into()));
        }
        if entries.len() > MAX_SEGMENT_OPS {
            return Err(SegmentError("too many operations in one part".into()));
        }
        Ok(Self {
            epoch: epoch.ok_or_else(|| SegmentError("missing `epoch` tag".into()))?,
            part,
            parts,
            close_height: close_height
                .ok_or_else(|| SegmentError("missing `close_height` tag".into()))?,
            closed_at: event.created_at.as_secs(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use nostr::Keys;

    use super::*;

    fn entry(i: u8, att: bool) -> SegmentEntry {
        SegmentEntry {
            op: EventId::from_byte_array([i; 32]),
            attestation: att.then(|| EventId::from_byte_array([i ^ 0xff; 32])),
            height: 100 + u32::from(i),
        }
    }

    #[test]
    fn segments_round_trip_and_split() {
        let keys = Keys::generate();
        let entries: Vec<_> = (0..=250u8).map(|i| entry(i, i % 2 == 0)).collect();
        let parts = LogSegment::split(3, 400, 1_700_000_000, &entries);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].entries.len(), MAX_SEGMENT_OPS);
        let mut back = Vec::new();
        for p in &parts {
            let event = p.to_event_builder().sign_with_keys(&keys).unwrap();
            assert_eq!(event.created_at.as_secs(), 1_700_000_000);
            let parsed = LogSegment::from_event(&event).unwrap();
            assert_eq!(&parsed, p);
            back.extend(parsed.entries);
            // Signed again: the same event id (a republication is a duplicate).
            let again = p.to_event_builder().sign_with_keys(&keys).unwrap();
            assert_eq!(again.id, event.id);
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn malformed_segments_are_rejected() {
        let keys = Keys::generate();
        let good = LogSegment::split(0, 10, 5, &[entry(1, true)]).remove(0);
        let event = good.to_event_builder().sign_with_keys(&keys).unwrap();
        // A changed byte breaks the id/signature.
        let mut json: serde_json::Value =
            serde_json::from_str(&nostr::JsonUtil::as_json(&event)).unwrap();
        json["tags"][2][1] = "11".into();
        let tampered: Event = nostr::JsonUtil::from_json(json.to_string()).unwrap();
        assert!(LogSegment::from_event(&tampered).is_err());
        for tags in [
            vec![vec!["epoch", "0"], vec!["close_height", "1"]],
            vec![
                vec!["epoch", "0"],
                vec!["part", "1", "1"],
                vec!["close_height", "1"],
            ],
            vec![
                vec!["epoch", "01"],
                vec!["part", "0", "1"],
                vec!["close_height", "1"],
            ],
            vec![
                vec!["epoch", "0"],
                vec!["epoch", "0"],
                vec!["part", "0", "1"],
                vec!["close_height", "1"],
            ],
            vec![
                vec!["epoch", "0"],
                vec!["part", "0", "1"],
                vec!["close_height", "1"],
                vec!["op", "AB", "1"],
            ],
        ] {
            let tags: Vec<Tag> = tags.into_iter().map(|t| Tag::parse(t).unwrap()).collect();
            let event = EventBuilder::new(Kind::Custom(kinds::LOG_SEGMENT), "")
                .tags(tags.clone())
                .sign_with_keys(&keys)
                .unwrap();
            assert!(LogSegment::from_event(&event).is_err(), "{tags:?}");
        }
    }
}
