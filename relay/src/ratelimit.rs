//! Token-bucket rate limiting keyed by client IP, pubkey or recipient.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

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

    /// [`RateLimiter::acquire`] at a given instant (for tests).
    pub fn acquire_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
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
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
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

#[cfg(test)]
mod tests {
    use super::*;

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
