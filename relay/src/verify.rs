//! A fixed pool of threads for BIP-340 signature and event-id checks.
//!
//! Verification costs tens of microseconds of pure CPU per event; doing it on
//! the async socket tasks would stall every connection sharing that worker.
//! Jobs queue on a bounded channel, so a flood waits instead of growing memory.

use std::sync::Arc;
use std::thread;

use nostr::Event;
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
                .spawn(move || loop {
                    // The lock is held only while waiting for one job; the
                    // other threads queue on the lock, not on the work.
                    let job = rx.lock().blocking_recv();
                    let Some((event, reply)) = job else { break };
                    let result = verify_event(&event);
                    let _ = reply.send((event, result));
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

/// Check id then signature, synchronously.
pub fn verify_event(event: &Event) -> Result<(), VerifyError> {
    if !event.verify_id() {
        return Err(VerifyError::BadId);
    }
    if !event.verify_signature() {
        return Err(VerifyError::BadSignature);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, JsonUtil, Keys};

    use super::*;

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
