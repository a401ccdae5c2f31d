//! A fixed pool of threads for BIP-340 signature and event-id checks.
//!
//! Verification costs tens of microseconds of pure CPU per event; doing it on
//! the async socket tasks would stall every connection sharing that worker.
//! Jobs queue on a bounded channel, so a flood waits instead of growing memory.
//!
//! Each thread keeps a [`Verifier`]: the id is hashed from one reused buffer
//! (no JSON tree per event), and authors' keys are kept lifted onto the
//! curve in a small cache, because lifting an x-only key costs a field
//! square root on every check and most events come from authors seen
//! moments before. Neither changes what is accepted: the id must be the
//! SHA-256 of NIP-01's serialization and the signature must verify against
//! the event's own 32 key bytes (the cache is keyed by all of them).

use std::sync::Arc;
use std::thread;

use nostr::hashes::{sha256, Hash};
use nostr::secp256k1::{Message, XOnlyPublicKey};
use nostr::{Event, PublicKey, SECP256K1};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Queue length per verification thread.
const QUEUE_PER_THREAD: usize = 1024;

/// What is wrong with an event's id or signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The id is not the hash of the event's serialization.
    #[error("invalid: event id does not match its content")]
    BadId,
    /// The BIP-340 signature does not verify.
    #[error("invalid: bad signature")]
    BadSignature,
    /// The pool is shutting down.
    #[error("error: relay is shutting down")]
    Closed,
}

type Job = (
    Box<Event>,
    oneshot::Sender<(Box<Event>, Result<(), VerifyError>)>,
);

/// Handle to the verification threads; cheap to clone.
#[derive(Debug, Clone)]
pub struct VerifierPool {
    jobs: mpsc::Sender<Job>,
}

impl VerifierPool {
    /// Start `threads` verification threads (at least one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_PER_THREAD * threads);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            thread::Builder::new()
                .name(format!("cairn-verify-{i}"))
                .spawn(move || {
                    let mut verifier = Verifier::default();
                    loop {
                        // The lock is held only while waiting for one job; the
                        // other threads queue on the lock, not on the work.
                        let job = rx.lock().blocking_recv();
                        let Some((event, reply)) = job else { break };
                        let result = verifier.verify(&event);
                        let _ = reply.send((event, result));
                    }
                })
                .expect("spawn verification thread");
        }
        Self { jobs: tx }
    }

    /// Verify an event's id and signature off the async workers. The event is
    /// handed back with the result so that it is never copied.
    pub async fn verify(&self, event: Box<Event>) -> (Box<Event>, Result<(), VerifyError>) {
        let (reply_tx, reply_rx) = oneshot::channel();
        if let Err(mpsc::error::SendError((event, _))) = self.jobs.send((event, reply_tx)).await {
            return (event, Err(VerifyError::Closed));
        }
        match reply_rx.await {
            Ok(done) => done,
            // A verification thread can only drop the reply by panicking;
            // there is no event to give back then.
            Err(_) => panic!("verification thread died"),
        }
    }
}

/// Authors' keys kept lifted per verification thread: a direct-mapped
/// table (a key's first bytes are uniformly random, so they pick its slot),
/// fixed in size (4,096 slots, ~400 KiB per thread), nothing allocated per
/// event.
const KEY_SLOTS: usize = 4096;

/// One verification thread's reusable state. Pure CPU, no I/O.
pub struct Verifier {
    /// The id's preimage, reused from event to event.
    preimage: Vec<u8>,
    keys: Box<[Option<(PublicKey, XOnlyPublicKey)>]>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            preimage: Vec::with_capacity(1024),
            keys: vec![None; KEY_SLOTS].into_boxed_slice(),
        }
    }
}

impl Verifier {
    /// Check id then signature.
    pub fn verify(&mut self, event: &Event) -> Result<(), VerifyError> {
        if self.event_id(event) != *event.id.as_bytes() {
            return Err(VerifyError::BadId);
        }
        let key = self
            .lifted(&event.pubkey)
            .ok_or(VerifyError::BadSignature)?;
        let message = Message::from_digest(event.id.to_bytes());
        SECP256K1
            .verify_schnorr(&event.sig, &message, &key)
            .map_err(|_| VerifyError::BadSignature)
    }

    /// SHA-256 of `[0,<pubkey>,<created_at>,<kind>,<tags>,<content>]`,
    /// written by the same serializer as nostr's `EventId::new` (so the same
    /// bytes and escapes) but straight into a buffer.
    fn event_id(&mut self, event: &Event) -> [u8; 32] {
        self.preimage.clear();
        let fields = (
            0u8,
            &event.pubkey,
            &event.created_at,
            &event.kind,
            &event.tags,
            &event.content,
        );
        // Writing these types into a Vec cannot fail (no maps with
        // non-string keys, no I/O); an empty preimage would only fail the
        // id check.
        let _ = serde_json::to_writer(&mut self.preimage, &fields);
        sha256::Hash::hash(&self.preimage).to_byte_array()
    }

    /// The author's key on the curve, or `None` when its bytes are not an
    /// x coordinate on it (such an event cannot have a valid signature).
    fn lifted(&mut self, pubkey: &PublicKey) -> Option<XOnlyPublicKey> {
        let bytes = pubkey.as_bytes();
        let slot = usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) % KEY_SLOTS;
        if let Some((cached, key)) = &self.keys[slot] {
            if cached == pubkey {
                return Some(*key);
            }
        }
        let key = XOnlyPublicKey::from_slice(bytes).ok()?;
        self.keys[slot] = Some((*pubkey, key));
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, EventId, JsonUtil, Keys, Kind, Tag, Tags, Timestamp};
    use proptest::prelude::*;

    use super::*;

    /// An event with these fields and a correct id; `sig` is whatever
    /// `keys` gives over that id (valid only when `keys` owns `pubkey`).
    fn event_with(pubkey: PublicKey, content: &str, tags: Vec<Tag>, keys: &Keys) -> Event {
        let created_at = Timestamp::from(1_700_000_000);
        let kind = Kind::TextNote;
        let tags = Tags::from_list(tags);
        let id = EventId::new(&pubkey, &created_at, &kind, &tags, content);
        let sig = keys.sign_schnorr(&Message::from_digest(id.to_bytes()));
        Event::new(id, pubkey, created_at, kind, tags, content, sig)
    }

    proptest! {
        /// The id is hashed from exactly the bytes nostr's own `EventId::new`
        /// hashes, whatever the content and tags hold (quotes, backslashes,
        /// control characters, any Unicode).
        #[test]
        fn id_preimage_matches_nostr(
            content in "\\PC*|[\\x00-\\x1f\"\\\\/\u{7f}-\u{10ffff}]{0,40}",
            tags in proptest::collection::vec(
                proptest::collection::vec("[a-z]{1,3}|\\PC{0,12}|[\\x00-\\x1f\"\\\\]{1,4}", 1..4),
                0..4,
            ),
        ) {
            let keys = Keys::generate();
            let tags: Vec<Tag> = tags.into_iter().filter_map(|t| Tag::parse(t).ok()).collect();
            let event = event_with(keys.public_key(), &content, tags, &keys);
            let mut verifier = Verifier::default();
            prop_assert_eq!(verifier.event_id(&event), event.id.to_bytes());
            prop_assert_eq!(verifier.verify(&event), Ok(()));
        }
    }

    #[test]
    fn cached_keys_never_stand_in_for_another_author() {
        // Two authors whose keys share a slot of the cache.
        let a = Keys::generate();
        let slot = |k: &Keys| {
            let b = k.public_key().to_bytes();
            usize::from(u16::from_le_bytes([b[0], b[1]])) % KEY_SLOTS
        };
        let b = std::iter::repeat_with(Keys::generate)
            .find(|k| slot(k) == slot(&a))
            .unwrap();
        let by_a = event_with(a.public_key(), "a", vec![], &a);
        let by_b = event_with(b.public_key(), "b", vec![], &b);
        // b's key over a's signature: the id is right, the signature is not b's.
        let forged = event_with(b.public_key(), "forged", vec![], &a);

        let mut verifier = Verifier::default();
        for _ in 0..2 {
            assert_eq!(verifier.verify(&by_a), Ok(()));
            assert_eq!(verifier.verify(&forged), Err(VerifyError::BadSignature));
            assert_eq!(verifier.verify(&by_b), Ok(()));
            assert_eq!(verifier.verify(&by_a), Ok(()));
        }
    }

    #[test]
    fn a_key_off_the_curve_is_a_bad_signature() {
        let off_curve = (1u8..=255)
            .map(|x| {
                let mut bytes = [0u8; 32];
                bytes[31] = x;
                bytes
            })
            .find(|bytes| XOnlyPublicKey::from_slice(bytes).is_err())
            .unwrap();
        let keys = Keys::generate();
        let event = event_with(PublicKey::from_byte_array(off_curve), "x", vec![], &keys);
        let mut verifier = Verifier::default();
        assert_eq!(verifier.verify(&event), Err(VerifyError::BadSignature));
        // Asked again, it is still refused (nothing was cached for it).
        assert_eq!(verifier.verify(&event), Err(VerifyError::BadSignature));
    }

    #[tokio::test]
    async fn pool_accepts_good_and_rejects_tampered_events() {
        let pool = VerifierPool::new(2);
        let keys = Keys::generate();
        let event = EventBuilder::text_note("hello")
            .sign_with_keys(&keys)
            .unwrap();
        let (_, ok) = pool.verify(Box::new(event.clone())).await;
        assert_eq!(ok, Ok(()));

        let tampered = event.as_json().replace("hello", "hellO");
        let tampered = Event::from_json(tampered).unwrap();
        let (_, bad) = pool.verify(Box::new(tampered)).await;
        assert_eq!(bad, Err(VerifyError::BadId));

        let mut json: serde_json::Value = serde_json::from_str(&event.as_json()).unwrap();
        let sig = json["sig"].as_str().unwrap().to_owned();
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        json["sig"] = format!("{flipped}{}", &sig[1..]).into();
        let bad_sig = Event::from_json(json.to_string()).unwrap();
        let (_, bad) = pool.verify(Box::new(bad_sig)).await;
        assert_eq!(bad, Err(VerifyError::BadSignature));
    }
}
