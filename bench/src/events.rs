//! Building and signing events ahead of time, in parallel across cores, so
//! that no signing happens while the relay is being measured.

use std::num::NonZeroUsize;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nostr::{Event, EventBuilder, JsonUtil, Keys, SecretKey};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One pre-signed event: its id and the complete `["EVENT",…]` frame.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Event id, hex.
    pub id: String,
    /// `["EVENT", <event>]`, ready to send (cheap to clone).
    pub frame: Utf8Bytes,
}

impl Signed {
    /// Wrap a signed event into a client `EVENT` frame.
    pub fn from_event(event: &Event) -> Self {
        Self {
            id: event.id.to_hex(),
            frame: Utf8Bytes::from(format!("[\"EVENT\",{}]", event.as_json())),
        }
    }
}

/// Worker threads to use for signing: every core.
pub fn workers() -> usize {
    thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
}

/// Build and sign `count` events with `make(index)` on all cores; returns
/// them in index order and the time signing took.
pub fn sign_all<F>(count: usize, make: F) -> Result<(Vec<Signed>, Duration)>
where
    F: Fn(usize) -> Result<Event> + Sync,
{
    let started = Instant::now();
    let workers = workers().min(count.max(1));
    let chunk = count.div_ceil(workers.max(1)).max(1);
    let make = &make;
    let parts: Vec<Result<Vec<Signed>>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    let start = (w * chunk).min(count);
                    let end = ((w + 1) * chunk).min(count);
                    (start..end)
                        .map(|i| make(i).map(|e| Signed::from_event(&e)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("signing thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for part in parts {
        all.extend(part?);
    }
    Ok((all, started.elapsed()))
}

/// Sign a builder with the given keys, adding context to the error.
pub fn sign(builder: EventBuilder, keys: &Keys) -> Result<Event> {
    builder.sign_with_keys(keys).context("signing event")
}

/// `count` key pairs derived from `seed` and a domain label, so that `seed`
/// and `query` agree on the same authors without sharing secrets on disk.
pub fn derive_keys(seed: u64, domain: u64, count: usize) -> Result<Vec<Keys>> {
    let mut rng = StdRng::seed_from_u64(seed ^ domain.rotate_left(32));
    (0..count)
        .map(|_| loop {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            // Almost every 32-byte string is a valid key; retry the rare one that is not.
            if let Ok(sk) = SecretKey::from_slice(&bytes) {
                break Ok(Keys::new(sk));
            }
        })
        .collect()
}

/// A fresh random run id (hex), so repeated runs never send duplicates.
pub fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use nostr::Kind;

    use super::*;

    #[test]
    fn signs_in_order_with_valid_signatures() {
        let keys = Keys::generate();
        let (events, _) = sign_all(37, |i| {
            sign(EventBuilder::text_note(format!("note {i}")), &keys)
        })
        .expect("signed");
        assert_eq!(events.len(), 37);
        for (i, s) in events.iter().enumerate() {
            let text = s.frame.as_str();
            let v: serde_json::Value = serde_json::from_str(text).expect("json frame");
            assert_eq!(v[0], "EVENT");
            assert_eq!(v[1]["content"], format!("note {i}"));
            assert_eq!(v[1]["id"], s.id.as_str());
            let event = Event::from_json(v[1].to_string()).expect("event");
            event.verify().expect("valid signature");
            assert_eq!(event.kind, Kind::TextNote);
        }
    }

    #[test]
    fn derived_keys_are_deterministic_and_distinct() {
        let a = derive_keys(42, 1, 5).expect("keys");
        let b = derive_keys(42, 1, 5).expect("keys");
        let c = derive_keys(42, 2, 5).expect("keys");
        let pk = |k: &Vec<Keys>| k.iter().map(|k| k.public_key()).collect::<Vec<_>>();
        assert_eq!(pk(&a), pk(&b));
        assert_ne!(pk(&a), pk(&c));
        let mut uniq = pk(&a);
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 5);
    }
}
