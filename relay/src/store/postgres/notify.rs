//! Live fan-out across processes sharing one Postgres database: what goes in
//! a `NOTIFY` payload, and which notifications a process delivers. Pure
//! logic; the connection that listens is [`super::listen`].
//!
//! Every process ([`Origin`]) sends, on channel [`CHANNEL`]:
//! - for each event its `save_batch` stored, **inside the commit
//!   transaction** (Postgres delivers a notification only when its
//!   transaction commits, so a listener never hears of an event that is not
//!   durable, and `OK true` still means committed): [`Payload::Stored`] with
//!   the event's JSON when the payload fits [`MAX_PAYLOAD`] bytes, otherwise
//!   a [`Payload::Reference`] (seq and id) that the listener fetches;
//! - for each ephemeral event it relayed: [`Payload::Ephemeral`] (never
//!   stored, so one over [`MAX_PAYLOAD`] reaches only the local process; see
//!   [`payload_for_ephemeral`]).
//!
//! Each payload is stamped with the sender's clock (`@<unix ms> ` before
//! it, see [`stamp`]) so that the receiver can measure the cross-process
//! fan-out lag. A payload without the stamp (an older version's) is read
//! as before; an older version ignores stamped payloads (with a warning),
//! so every process sharing a database should run the same version.
//!
//! Invariants a listening process keeps with its [`Cursor`]:
//! - **Own events are not delivered twice.** The process that accepted an
//!   event already fanned it out in-process; it skips notifications carrying
//!   its own origin, and in a catch-up the seqs it stored itself (recorded
//!   in [`OwnSeqs`] before its commit, so no notification can overtake the
//!   record).
//! - **Each seq is delivered at most once, in seq order.** The cursor keeps
//!   the highest seq it has seen (`high`); a notification at or below it is
//!   a repeat (e.g. already caught up) and skipped.
//! - **No silent gap.** After a lost listener connection the process
//!   LISTENs again *first*, then reads every event with `seq > high` in seq
//!   order ([`Cursor::catch_up`]); events committed during the catch-up
//!   arrive as notifications too and are skipped as repeats.
//!
//! **Why `seq > high` misses nothing:** Postgres sequence values are
//! allocated at insert time, so in general they commit out of order (a
//! transaction holding seq 11 may commit before the one holding 10). Not
//! here: every transaction that inserts into `events` first takes the
//! store's write lock (`pg_advisory_xact_lock`, see `lock_writes`) and holds
//! it until it commits, so seqs are allocated and committed in one order
//! across all processes, and notifications (delivered in commit order) come
//! in seq order. A rolled-back transaction leaves a gap in the numbers,
//! never a late event. Anything that inserts events without that lock would
//! break this rule.

use std::collections::BTreeSet;

use parking_lot::Mutex;

/// The channel every process LISTENs on and NOTIFYs to (per database).
pub const CHANNEL: &str = "cairn_events";

/// Longest payload sent (Postgres refuses 8000 bytes and more).
pub const MAX_PAYLOAD: usize = 7_999;

/// Own seqs remembered while the listener has not yet seen past them. Past
/// this, the oldest are forgotten (with a warning): after a very long
/// listener outage a catch-up could then repeat some of this process's own
/// events to its subscribers, but memory stays bounded (8 bytes a seq).
pub const DEFAULT_MAX_OWN_SEQS: usize = 1_000_000;

/// Identifies one process (one opened store) among those sharing a
/// database: random, chosen when the store opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin(pub u64);

impl Origin {
    /// A fresh random origin.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A stored event with its JSON. Text: `S <origin> <seq> <json>`.
    Stored {
        /// Who stored it.
        origin: Origin,
        /// Its `events.seq`.
        seq: i64,
        /// Its JSON as stored.
        json: &'a str,
    },
    /// A stored event too big to carry: fetch it by seq (and check the id).
    /// Text: `R <origin> <seq> <id hex>`.
    Reference {
        /// Who stored it.
        origin: Origin,
        /// Its `events.seq`.
        seq: i64,
        /// Its id, hex.
        id: &'a str,
    },
    /// An ephemeral event (not stored). Text: `E <origin> <json>`.
    Ephemeral {
        /// Who relayed it.
        origin: Origin,
        /// Its JSON.
        json: &'a str,
    },
}

/// Why a payload was not understood (another version's, or not Cairn's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised notification payload")]
pub struct BadPayload;

impl<'a> Payload<'a> {
    /// The payload's text.
    pub fn encode(&self) -> String {
        match self {
            Payload::Stored { origin, seq, json } => format!("S {:016x} {seq} {json}", origin.0),
            Payload::Reference { origin, seq, id } => format!("R {:016x} {seq} {id}", origin.0),
            Payload::Ephemeral { origin, json } => format!("E {:016x} {json}", origin.0),
        }
    }

    /// Parse a payload's text.
    pub fn decode(text: &'a str) -> Result<Self, BadPayload> {
        let (tag, rest) = text.split_once(' ').ok_or(BadPayload)?;
        let (origin, rest) = rest.split_once(' ').ok_or(BadPayload)?;
        let origin = Origin(u64::from_str_radix(origin, 16).map_err(|_| BadPayload)?);
        let seq_and = |rest: &'a str| -> Result<(i64, &'a str), BadPayload> {
            let (seq, rest) = rest.split_once(' ').ok_or(BadPayload)?;
            Ok((seq.parse().map_err(|_| BadPayload)?, rest))
        };
        match tag {
            "S" => {
                let (seq, json) = seq_and(rest)?;
                Ok(Payload::Stored { origin, seq, json })
            }
            "R" => {
                let (seq, id) = seq_and(rest)?;
                Ok(Payload::Reference { origin, seq, id })
            }
            "E" => Ok(Payload::Ephemeral { origin, json: rest }),
            _ => Err(BadPayload),
        }
    }
}

/// `text` stamped with the sender's clock, `sent_at_ms` (milliseconds since
/// the Unix epoch): `@<ms> <text>`.
pub fn stamp(sent_at_ms: u64, text: &str) -> String {
    format!("@{sent_at_ms} {text}")
}

/// A notification's stamp (see [`stamp`]), if it has one, and the payload
/// text after it.
pub fn split_stamp(text: &str) -> (Option<u64>, &str) {
    if let Some(rest) = text.strip_prefix('@') {
        if let Some((ms, payload)) = rest.split_once(' ') {
            if let Ok(ms) = ms.parse() {
                return (Some(ms), payload);
            }
        }
    }
    (None, text)
}

/// The (stamped) payload announcing a stored event: its JSON when that
/// fits, else a reference.
pub fn payload_for_stored(
    origin: Origin,
    seq: i64,
    id_hex: &str,
    json: &str,
    sent_at_ms: u64,
) -> String {
    let inline = stamp(sent_at_ms, &Payload::Stored { origin, seq, json }.encode());
    if inline.len() <= MAX_PAYLOAD {
        inline
    } else {
        let reference = Payload::Reference {
            origin,
            seq,
            id: id_hex,
        };
        stamp(sent_at_ms, &reference.encode())
    }
}

/// The (stamped) payload announcing an ephemeral event, or `None` when it
/// does not fit (an ephemeral event is not stored, so there is nothing to
/// fetch).
pub fn payload_for_ephemeral(origin: Origin, json: &str, sent_at_ms: u64) -> Option<String> {
    let text = stamp(sent_at_ms, &Payload::Ephemeral { origin, json }.encode());
    (text.len() <= MAX_PAYLOAD).then_some(text)
}

/// Seqs this process stored and its listener has not yet seen past: what a
/// catch-up must skip. Shared by the store (which records) and the listener
/// (which forgets what it has passed).
#[derive(Debug)]
pub struct OwnSeqs {
    seqs: Mutex<BTreeSet<i64>>,
    max: usize,
}

impl Default for OwnSeqs {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_MAX_OWN_SEQS)
    }
}

impl OwnSeqs {
    /// Remember at most `max` seqs.
    pub fn with_capacity(max: usize) -> Self {
        Self {
            seqs: Mutex::new(BTreeSet::new()),
            max: max.max(1),
        }
    }

    /// Record seqs about to be committed by this process.
    pub fn record(&self, seqs: impl IntoIterator<Item = i64>) {
        let mut set = self.seqs.lock();
        set.extend(seqs);
        if set.len() > self.max {
            let excess = set.len() - self.max;
            tracing::warn!(
                forgotten = excess,
                "the listener has been behind for long: forgetting the oldest own seqs (a \
                 catch-up may repeat those events to this process's subscribers)"
            );
            for _ in 0..excess {
                set.pop_first();
            }
        }
    }

    /// Whether `seq` was stored by this process.
    pub fn contains(&self, seq: i64) -> bool {
        self.seqs.lock().contains(&seq)
    }

    /// Forget every seq up to and including `high`.
    pub fn forget_through(&self, high: i64) {
        let mut set = self.seqs.lock();
        let keep = set.split_off(&high.saturating_add(1));
        *set = keep;
    }

    /// Seqs remembered.
    pub fn len(&self) -> usize {
        self.seqs.lock().len()
    }

    /// Whether none are remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to do with one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// Fan this JSON out to local subscribers.
    Deliver(&'a str),
    /// Fetch the event with this seq (and this id), then fan it out.
    Fetch {
        /// Its seq.
        seq: i64,
        /// Its id, hex.
        id: &'a str,
    },
    /// Nothing: own event, or a repeat.
    Skip,
}

/// A listener's position: the highest seq seen, and who "we" are.
#[derive(Debug)]
pub struct Cursor {
    origin: Origin,
    high: i64,
}

impl Cursor {
    /// A cursor for `origin` that has seen everything up to `high`.
    pub fn new(origin: Origin, high: i64) -> Self {
        Self { origin, high }
    }

    /// The highest seq seen.
    pub fn high(&self) -> i64 {
        self.high
    }

    /// Decide on a live notification, advancing past its seq.
    pub fn on_notification<'a>(&mut self, payload: &Payload<'a>, own: &OwnSeqs) -> Action<'a> {
        match *payload {
            Payload::Ephemeral { origin, json } => {
                if origin == self.origin {
                    Action::Skip
                } else {
                    Action::Deliver(json)
                }
            }
            Payload::Stored { origin, seq, .. } | Payload::Reference { origin, seq, .. } => {
                if !self.advance(seq, own) || origin == self.origin {
                    return Action::Skip;
                }
                match *payload {
                    Payload::Stored { json, .. } => Action::Deliver(json),
                    Payload::Reference { seq, id, .. } => Action::Fetch { seq, id },
                    Payload::Ephemeral { .. } => Action::Skip,
                }
            }
        }
    }

    /// Go back to just before `seq` (an event seen but not handed over), so
    /// that the next catch-up reads it again. Seqs above it were not seen.
    pub fn rewind_before(&mut self, seq: i64) {
        self.high = self.high.min(seq.saturating_sub(1));
    }

    /// Decide on a stored event read in a catch-up (`seq > high`, in seq
    /// order): deliver unless this process stored it (or it is a repeat).
    pub fn catch_up(&mut self, seq: i64, own: &OwnSeqs) -> bool {
        let mine = own.contains(seq);
        self.advance(seq, own) && !mine
    }

    /// Move past `seq`; false when it is not beyond `high` (a repeat).
    fn advance(&mut self, seq: i64, own: &OwnSeqs) -> bool {
        if seq <= self.high {
            return false;
        }
        self.high = seq;
        own.forget_through(seq);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Origin = Origin(0xabc);
    const OTHER: Origin = Origin(u64::MAX);
    const T: u64 = 1_764_000_000_000;

    #[test]
    fn payloads_round_trip() {
        let json = r#"{"id":"aa","content":"a b  c"}"#;
        for p in [
            Payload::Stored {
                origin: OTHER,
                seq: 42,
                json,
            },
            Payload::Reference {
                origin: ME,
                seq: 7,
                id: "00ff",
            },
            Payload::Ephemeral { origin: ME, json },
        ] {
            assert_eq!(Payload::decode(&p.encode()), Ok(p.clone()));
        }
        assert_eq!(Payload::decode("X 1 2"), Err(BadPayload));
        assert_eq!(Payload::decode("S zz 1 {}"), Err(BadPayload));
        assert_eq!(Payload::decode("S 1 x {}"), Err(BadPayload));
        assert_eq!(Payload::decode("S"), Err(BadPayload));
    }

    #[test]
    fn a_big_event_is_announced_by_reference_and_a_big_ephemeral_not_at_all() {
        let small = "x".repeat(100);
        let big = "x".repeat(MAX_PAYLOAD);
        let text = payload_for_stored(ME, 5, "ab", &small, T);
        let (sent, body) = split_stamp(&text);
        assert_eq!(sent, Some(T));
        assert!(matches!(
            Payload::decode(body),
            Ok(Payload::Stored { seq: 5, .. })
        ));
        let text = payload_for_stored(ME, 5, "ab", &big, T);
        assert!(text.len() <= MAX_PAYLOAD);
        assert_eq!(
            Payload::decode(split_stamp(&text).1),
            Ok(Payload::Reference {
                origin: ME,
                seq: 5,
                id: "ab"
            })
        );
        assert!(payload_for_ephemeral(ME, &small, T).is_some());
        assert!(payload_for_ephemeral(ME, &big, T).is_none());
        // The largest payload that fits (stamp included) is sent inline.
        let empty = Payload::Stored {
            origin: ME,
            seq: 5,
            json: "",
        };
        let header = stamp(T, &empty.encode()).len();
        let exact = "y".repeat(MAX_PAYLOAD - header);
        let text = payload_for_stored(ME, 5, "ab", &exact, T);
        assert_eq!(text.len(), MAX_PAYLOAD);
        assert!(matches!(
            Payload::decode(split_stamp(&text).1),
            Ok(Payload::Stored { .. })
        ));
    }

    #[test]
    fn unstamped_payloads_still_decode() {
        let old = Payload::Ephemeral {
            origin: ME,
            json: "{}",
        }
        .encode();
        assert_eq!(split_stamp(&old), (None, old.as_str()));
        assert_eq!(split_stamp("@x S"), (None, "@x S"));
        assert_eq!(split_stamp(&stamp(7, &old)), (Some(7), old.as_str()));
    }

    #[test]
    fn own_and_repeated_notifications_are_skipped() {
        let own = OwnSeqs::default();
        let mut cursor = Cursor::new(ME, 10);
        let theirs = |seq| Payload::Stored {
            origin: OTHER,
            seq,
            json: "{}",
        };
        assert_eq!(cursor.on_notification(&theirs(9), &own), Action::Skip);
        assert_eq!(cursor.on_notification(&theirs(10), &own), Action::Skip);
        assert_eq!(
            cursor.on_notification(&theirs(11), &own),
            Action::Deliver("{}")
        );
        assert_eq!(cursor.on_notification(&theirs(11), &own), Action::Skip);
        let mine = Payload::Stored {
            origin: ME,
            seq: 12,
            json: "{}",
        };
        assert_eq!(cursor.on_notification(&mine, &own), Action::Skip);
        assert_eq!(cursor.high(), 12, "own events advance the cursor too");
        let reference = Payload::Reference {
            origin: OTHER,
            seq: 20,
            id: "ab",
        };
        assert_eq!(
            cursor.on_notification(&reference, &own),
            Action::Fetch { seq: 20, id: "ab" }
        );
        let e = |origin| Payload::Ephemeral { origin, json: "{}" };
        assert_eq!(cursor.on_notification(&e(ME), &own), Action::Skip);
        assert_eq!(
            cursor.on_notification(&e(OTHER), &own),
            Action::Deliver("{}")
        );
        assert_eq!(cursor.high(), 20, "ephemeral events have no seq");
    }

    #[test]
    fn a_catch_up_skips_own_seqs_and_forgets_what_it_passed() {
        let own = OwnSeqs::default();
        own.record([3, 5, 9]);
        let mut cursor = Cursor::new(ME, 2);
        let delivered: Vec<i64> = (3..=6).filter(|&s| cursor.catch_up(s, &own)).collect();
        assert_eq!(delivered, vec![4, 6]);
        assert_eq!(own.len(), 1, "only 9 is still ahead");
        // The notifications of the events caught up are repeats now.
        let repeat = Payload::Stored {
            origin: OTHER,
            seq: 6,
            json: "{}",
        };
        assert_eq!(cursor.on_notification(&repeat, &own), Action::Skip);
        assert!(!cursor.catch_up(9, &own), "own, though never notified");
        assert!(own.is_empty());
    }

    #[test]
    fn a_rewound_cursor_catches_up_the_event_it_could_not_hand_over() {
        let own = OwnSeqs::default();
        let mut cursor = Cursor::new(ME, 10);
        let theirs = Payload::Stored {
            origin: OTHER,
            seq: 11,
            json: "{}",
        };
        assert_eq!(cursor.on_notification(&theirs, &own), Action::Deliver("{}"));
        cursor.rewind_before(11);
        assert_eq!(cursor.high(), 10);
        assert!(cursor.catch_up(11, &own), "read again by the catch-up");
        assert_eq!(cursor.high(), 11);
    }

    #[test]
    fn own_seqs_stay_bounded() {
        let own = OwnSeqs::with_capacity(3);
        own.record([1, 2, 3, 4, 5]);
        assert_eq!(own.len(), 3);
        assert!(!own.contains(1) && !own.contains(2) && own.contains(5));
        own.forget_through(4);
        assert!(own.contains(5) && own.len() == 1);
    }
}
