//! Token-bucket rate limiting keyed by client IP, pubkey or recipient
//! ([`RateLimiter`]), and a cap on how many of one key's queries run at once
//! ([`ConcurrencyLimiter`]).
//!
//! Invariant of [`ConcurrencyLimiter`]: a key is tracked only while one of
//! its slots is held or waited for, so its map is bounded by the queries in
//! progress, not by the addresses ever seen.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Rate;

/// Keys kept before idle (full) buckets are swept, bounding memory.
const SWEEP_AT: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets for one kind of key.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Buckets of the given shape.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`; `false` when the bucket is empty.
    pub fn check(&self, key: &K) -> bool {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (for tests).
    pub fn check_at(&self, key: &K, now: Instant) -> bool {
        self.acquire_at(key, now).is_ok()
    }

    /// Take one token for `key`; when the bucket is empty, how long until
    /// it holds one again (what an HTTP `Retry-After` should say).
    pub fn acquire(&self, key: &K) -> Result<(), Duration> {
        self.acquire_at(key, Instant::now())
    }

    /// Take `tokens` tokens for `key` at once (what a heavier request
    /// costs; at least 1, and at most the burst, so that a request within
    /// the limits can always pass once the bucket is full); `false` when the
    /// bucket holds fewer.
    pub fn check_weighted(&self, key: &K, tokens: u32) -> bool {
        self.take_at(key, f64::from(tokens), Instant::now()).is_ok()
    }

    /// [`RateLimiter::acquire`] at a given instant (for tests).
    pub fn acquire_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.take_at(key, 1.0, now)
    }

    /// [`RateLimiter::check_weighted`] at a given instant (for tests).
    pub fn check_weighted_at(&self, key: &K, tokens: u32, now: Instant) -> bool {
        self.take_at(key, f64::from(tokens), now).is_ok()
    }

    fn take_at(&self, key: &K, tokens: f64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(key) {
            self.sweep(&mut buckets, now);
        }
        let rate = self.rate;
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.updated = now;
        let tokens = tokens.clamp(1.0, rate.burst.max(1.0));
        if bucket.tokens >= tokens {
            bucket.tokens -= tokens;
            Ok(())
        } else {
            let missing = tokens - bucket.tokens;
            Err(Duration::from_secs_f64(
                missing / rate.per_second.max(f64::MIN_POSITIVE),
            ))
        }
    }

    /// Forget keys whose bucket has refilled: they carry no state worth keeping.
    fn sweep(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let rate = self.rate;
        buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * rate.per_second < rate.burst
        });
    }

    /// Number of tracked keys.
    pub fn len(&self) -> usize {
        self.buckets.lock().len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// At most `max` slots held at once per key (0: no limit); a caller waits
/// for one in arrival order (the semaphore is fair), at most `wait`.
#[derive(Debug)]
pub struct ConcurrencyLimiter<K> {
    max: usize,
    wait: Duration,
    keys: Mutex<HashMap<K, Arc<Semaphore>>>,
}

/// No slot came free within the limiter's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// One held slot of a key (or a wait for one); dropping it gives it back
/// and forgets the key once nobody else holds or waits for one of it.
#[derive(Debug)]
pub struct Slot<'a, K: Hash + Eq> {
    limiter: &'a ConcurrencyLimiter<K>,
    key: K,
    semaphore: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<K: Hash + Eq + Clone> ConcurrencyLimiter<K> {
    /// `max` concurrent slots per key (0: unlimited), each waited for at most `wait`.
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            max,
            wait,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// A slot of `key`, once one is free: `Ok(None)` when there is no
    /// limit, `Err(Busy)` when none came free within the wait.
    pub async fn acquire(&self, key: &K) -> Result<Option<Slot<'_, K>>, Busy> {
        if self.max == 0 {
            return Ok(None);
        }
        // Every clone of a key's semaphore is made under the lock, and a
        // `Slot` owns it from here on, so its `Drop` sees every holder.
        let semaphore = Arc::clone(
            self.keys
                .lock()
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max))),
        );
        let mut slot = Slot {
            limiter: self,
            key: key.clone(),
            semaphore: Some(Arc::clone(&semaphore)),
            permit: None,
        };
        // `timeout` polls the acquisition first: a free slot is taken even
        // with a zero wait. The acquisition owns the last loose clone and
        // is gone (or is the permit) before `slot` can be dropped.
        let acquired = tokio::time::timeout(self.wait, semaphore.acquire_owned()).await;
        match acquired {
            // The semaphore is never closed.
            Ok(Ok(permit)) => {
                slot.permit = Some(permit);
                Ok(Some(slot))
            }
            Ok(Err(_)) | Err(_) => Err(Busy),
        }
    }

    /// Keys with a slot held or waited for.
    pub fn tracked(&self) -> usize {
        self.keys.lock().len()
    }
}

impl<K: Hash + Eq> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        // The permit holds a clone of the semaphore too: give it back first.
        drop(self.permit.take());
        let mut keys = self.limiter.keys.lock();
        drop(self.semaphore.take());
        if keys
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn weighted_requests_take_their_tokens() {
        let limiter = RateLimiter::new(Rate::new(10.0, 100.0));
        let now = Instant::now();
        assert!(limiter.check_weighted_at(&"a", 60, now));
        // 40 left: a 60-token request waits, a 40-token one passes.
        assert!(!limiter.check_weighted_at(&"a", 60, now));
        assert!(limiter.check_weighted_at(&"a", 40, now));
        assert!(!limiter.check_at(&"a", now));
        // After 2 s, 20 tokens came back.
        let later = now + Duration::from_secs(2);
        assert!(!limiter.check_weighted_at(&"a", 21, later));
        assert!(limiter.check_weighted_at(&"a", 20, later));
        // A request above the burst costs the whole bucket, never more: it
        // passes once the bucket is full.
        let full = later + Duration::from_secs(10);
        assert!(limiter.check_weighted_at(&"a", 1_000, full));
        assert!(!limiter.check_at(&"a", full));
        // Zero counts as one.
        assert!(limiter.check_weighted_at(&"b", 0, now));
    }

    #[tokio::test]
    async fn concurrent_slots_are_capped_per_key_and_queued() {
        let limiter = ConcurrencyLimiter::new(1, Duration::from_secs(30));
        let first = limiter.acquire(&"a").await.unwrap().expect("a slot");
        // Another key is independent.
        let other = limiter.acquire(&"b").await.unwrap().expect("b slot");
        assert_eq!(limiter.tracked(), 2);
        // A second query of "a" waits while the first holds the slot ...
        let mut second = Box::pin(limiter.acquire(&"a"));
        assert!((&mut second).now_or_never().is_none(), "did not wait");
        // ... and gets it once the first is done.
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the freed slot is handed on")
            .unwrap()
            .expect("a slot");
        // With no wait allowed, a busy key is refused at once.
        let impatient = ConcurrencyLimiter::new(1, Duration::ZERO);
        let held = impatient.acquire(&"a").await.unwrap();
        assert!(held.is_some());
        assert_eq!(impatient.acquire(&"a").await.err(), Some(Busy));
        drop(held);
        assert!(impatient.acquire(&"a").await.unwrap().is_some());
        drop((second, other));
        // Nothing is kept for keys without a query in progress, also
        // after a wait that gave up.
        assert_eq!(limiter.tracked(), 0);
        assert_eq!(impatient.tracked(), 0);
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let limiter = ConcurrencyLimiter::new(0, Duration::ZERO);
        let held: Vec<_> = futures::future::join_all((0..100).map(|_| limiter.acquire(&1)))
            .await
            .into_iter()
            .map(|s| s.expect("never busy"))
            .collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(Rate::new(2.0, 3.0));
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.check_at(&"a", t0)));
        assert!(!limiter.check_at(&"a", t0));
        // Other keys are independent.
        assert!(limiter.check_at(&"b", t0));
        // Half a second refills one token at 2/s.
        assert!(limiter.check_at(&"a", t0 + Duration::from_millis(500)));
        assert!(!limiter.check_at(&"a", t0 + Duration::from_millis(500)));
    }

    #[test]
    fn an_empty_bucket_says_when_it_refills() {
        let limiter = RateLimiter::new(Rate::new(0.5, 1.0));
        let t0 = Instant::now();
        assert_eq!(limiter.acquire_at(&"a", t0), Ok(()));
        // Empty at 0.5 tokens/s: the next token is 2 s away, then 1 s.
        assert_eq!(limiter.acquire_at(&"a", t0), Err(Duration::from_secs(2)));
        assert_eq!(
            limiter.acquire_at(&"a", t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(
            limiter.acquire_at(&"a", t0 + Duration::from_secs(2)),
            Ok(())
        );
    }

    #[test]
    fn sweep_drops_only_idle_keys() {
        let limiter = RateLimiter::new(Rate::new(1.0, 1.0));
        let t0 = Instant::now();
        let mut buckets = limiter.buckets.lock();
        buckets.insert(
            1,
            Bucket {
                tokens: 0.0,
                updated: t0,
            },
        );
        buckets.insert(
            2,
            Bucket {
                tokens: 1.0,
                updated: t0,
            },
        );
        limiter.sweep(&mut buckets, t0);
        assert!(buckets.contains_key(&1) && !buckets.contains_key(&2));
    }
}
