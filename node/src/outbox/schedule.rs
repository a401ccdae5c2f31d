//! The outbox's pure rules, free of I/O: what a relay's answer means
//! ([`classify`]), when to try again ([`Backoff`]), and the next state of a
//! delivery ([`next_state`]). The store records what these decide; the
//! worker only reports what happened.

use std::time::Duration;

/// Where a delivery (one event to one relay) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not tried yet.
    Queued,
    /// Tried and failed for a reason that may pass; tried again at `next_at`.
    Retrying {
        /// Unix seconds of the next try.
        next_at: u64,
        /// What went wrong last.
        error: String,
    },
    /// The relay answered `OK true` at `at`.
    Delivered {
        /// Unix seconds.
        at: u64,
        /// The relay's OK message (`duplicate: …` when it had it already).
        message: String,
    },
    /// The relay refused it for a reason that will not pass (`invalid:`,
    /// `blocked:`, `pow:`, …): not tried again.
    Failed {
        /// The relay's answer.
        error: String,
    },
    /// Its time to live ran out before this relay took it.
    Expired {
        /// The last error, when it was tried.
        error: Option<String>,
    },
}

impl State {
    /// The name stored in the `state` column and shown to the owner.
    pub fn name(&self) -> &'static str {
        match self {
            State::Queued => QUEUED,
            State::Retrying { .. } => RETRYING,
            State::Delivered { .. } => DELIVERED,
            State::Failed { .. } => FAILED,
            State::Expired { .. } => EXPIRED,
        }
    }

    /// Whether the worker still has to try it.
    pub fn is_pending(&self) -> bool {
        matches!(self, State::Queued | State::Retrying { .. })
    }
}

/// `state` column values.
pub const QUEUED: &str = "queued";
/// See [`State::Retrying`].
pub const RETRYING: &str = "retrying";
/// See [`State::Delivered`].
pub const DELIVERED: &str = "delivered";
/// See [`State::Failed`].
pub const FAILED: &str = "failed";
/// See [`State::Expired`].
pub const EXPIRED: &str = "expired";

/// What one try came to, as the worker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `OK true` (or `OK false "duplicate: …"`: the relay has it).
    Accepted(String),
    /// `OK false` with a reason that will not pass.
    Refused(String),
    /// `OK false "auth-required: …"`: AUTH, then send again.
    AuthRequired(String),
    /// Anything that may pass: `rate-limited:`, `error:`, an unknown
    /// prefix, no connection, no answer in time, a closed connection.
    Transient(String),
}

/// Prefixes of `OK false` that will not pass by trying again: the event
/// itself is refused (`invalid:`, `pow:`), or its author or content is
/// (`blocked:`, `restricted:` — a relay that takes only its own users'
/// events, `mute:`). `restricted:` is also what some relays answer after an
/// AUTH whose key they do not serve, which retrying does not change either.
pub const PERMANENT_PREFIXES: &[&str] = &["invalid:", "blocked:", "pow:", "restricted:", "mute:"];

/// Reads a relay's `OK`: `accepted` and its message.
///
/// Unknown prefixes and no prefix at all are transient: a relay that does
/// not say why is given until the time to live before the owner is told it
/// failed, rather than dropped on one bad moment.
pub fn classify(accepted: bool, message: &str) -> Outcome {
    let m = message.trim_start();
    if accepted || m.starts_with("duplicate:") {
        return Outcome::Accepted(message.to_owned());
    }
    if m.starts_with("auth-required:") {
        return Outcome::AuthRequired(message.to_owned());
    }
    if PERMANENT_PREFIXES.iter().any(|p| m.starts_with(p)) {
        return Outcome::Refused(message.to_owned());
    }
    Outcome::Transient(message.to_owned())
}

/// Exponential backoff with jitter, capped: the `n`-th retry waits
/// `min(max, initial · 2^(n-1))`, of which the upper half is random so that
/// many deliveries failing together (a relay that went down) do not come
/// back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after `attempts` failed tries (`attempts >= 1`), with
    /// `jitter` in `[0, 1)` choosing within the upper half.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let initial = self.initial.max(Duration::from_secs(1));
        let max = self.max.max(initial);
        // 2^20 · 1 s is 12 days, past any cap worth setting: no overflow.
        let exp = attempts.saturating_sub(1).min(20);
        let full = initial.saturating_mul(1u32 << exp).min(max);
        let jitter = jitter.clamp(0.0, 1.0);
        let half = full / 2;
        half + Duration::from_secs_f64(half.as_secs_f64() * jitter)
    }
}

/// The state after one try made at `now` (since the Unix epoch, to the
/// sub-second) by the `attempts`-th try (counting this one), for a delivery
/// whose time to live ends at `expires_at` (Unix seconds).
///
/// The next try is at the whole second at or after `now + delay`: from a
/// truncated `now`, a "1 s" retry could fall due a millisecond later.
///
/// A transient failure whose next try would come after `expires_at`
/// expires now: the owner learns it will not be delivered as soon as that
/// is known. `AuthRequired` reaching here means AUTH did not help (the
/// worker AUTHs and sends again first): it is retried like a transient one.
pub fn next_state(
    outcome: Outcome,
    attempts: u32,
    now: Duration,
    expires_at: u64,
    backoff: &Backoff,
    jitter: f64,
) -> State {
    match outcome {
        Outcome::Accepted(message) => State::Delivered {
            at: now.as_secs(),
            message,
        },
        Outcome::Refused(error) => State::Failed { error },
        Outcome::AuthRequired(error) | Outcome::Transient(error) => {
            let delay = backoff.delay(attempts, jitter).max(Duration::from_secs(1));
            let due = now.saturating_add(delay);
            let next_at = due
                .as_secs()
                .saturating_add(u64::from(due.subsec_nanos() > 0));
            if next_at > expires_at {
                State::Expired { error: Some(error) }
            } else {
                State::Retrying { next_at, error }
            }
        }
    }
}

/// Whether a pending delivery has run out of time at `now`.
pub fn is_expired(now: u64, expires_at: u64) -> bool {
    now >= expires_at
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(3_600),
    };

    #[test]
    fn ok_prefixes_are_classified() {
        assert_eq!(classify(true, ""), Outcome::Accepted(String::new()));
        assert!(matches!(
            classify(true, "duplicate: have it"),
            Outcome::Accepted(_)
        ));
        assert!(matches!(
            classify(false, "duplicate: have it"),
            Outcome::Accepted(_)
        ));
        for p in [
            "invalid: bad sig",
            "blocked: no",
            "pow: 20 bits",
            "restricted: members only",
        ] {
            assert!(matches!(classify(false, p), Outcome::Refused(_)), "{p}");
        }
        assert!(matches!(
            classify(false, "auth-required: who are you"),
            Outcome::AuthRequired(_)
        ));
        for t in ["rate-limited: slow", "error: db down", "", "whatever"] {
            assert!(matches!(classify(false, t), Outcome::Transient(_)), "{t:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half_and_is_capped() {
        // No jitter: the lower bound, half the full delay.
        assert_eq!(B.delay(1, 0.0), Duration::from_secs(5));
        assert_eq!(B.delay(2, 0.0), Duration::from_secs(10));
        assert_eq!(B.delay(3, 0.0), Duration::from_secs(20));
        // Full jitter approaches the full delay, never more.
        assert!(B.delay(1, 0.999) < Duration::from_secs(10));
        assert!(B.delay(1, 0.999) > Duration::from_secs(9));
        // Capped at `max`, also for absurd attempt counts.
        assert_eq!(B.delay(30, 0.0), Duration::from_secs(1_800));
        assert!(B.delay(u32::MAX, 1.0) <= Duration::from_secs(3_600));
        // Monotone in attempts for a fixed jitter.
        let mut last = Duration::ZERO;
        for n in 1..40 {
            let d = B.delay(n, 0.5);
            assert!(d >= last, "attempt {n}");
            last = d;
        }
        // A zero initial delay is lifted to 1 s rather than spinning.
        let tight = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(tight.delay(1, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn transitions_follow_the_outcome() {
        let now = 1_000;
        let exp = now + 86_400;
        let now_d = Duration::from_secs(now);
        assert_eq!(
            next_state(Outcome::Accepted("".into()), 1, now_d, exp, &B, 0.0),
            State::Delivered {
                at: now,
                message: String::new()
            }
        );
        assert_eq!(
            next_state(
                Outcome::Refused("invalid: x".into()),
                1,
                now_d,
                exp,
                &B,
                0.0
            ),
            State::Failed {
                error: "invalid: x".into()
            }
        );
        assert_eq!(
            next_state(Outcome::Transient("down".into()), 2, now_d, exp, &B, 0.0),
            State::Retrying {
                next_at: now + 10,
                error: "down".into()
            }
        );
        // AUTH that did not help is retried, not dropped.
        assert!(matches!(
            next_state(
                Outcome::AuthRequired("auth-required: x".into()),
                1,
                now_d,
                exp,
                &B,
                0.0
            ),
            State::Retrying { .. }
        ));
    }

    #[test]
    fn a_retry_past_the_time_to_live_expires_at_once() {
        let now = 1_000;
        let now_d = Duration::from_secs(now);
        let s = next_state(
            Outcome::Transient("down".into()),
            1,
            now_d,
            now + 3,
            &B,
            0.0,
        );
        assert_eq!(
            s,
            State::Expired {
                error: Some("down".into())
            }
        );
        assert!(!s.is_pending());
        // Exactly at the end still gets its try.
        assert!(matches!(
            next_state(Outcome::Transient("x".into()), 1, now_d, now + 5, &B, 0.0),
            State::Retrying { next_at: 1_005, .. }
        ));
        // A 1 s retry from 1000.999 s is due at 1002, a whole second or
        // more later, not at 1001 (a millisecond later).
        let tight = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let late = Duration::from_millis(1_000_999);
        assert!(matches!(
            next_state(
                Outcome::Transient("x".into()),
                1,
                late,
                now + 60,
                &tight,
                0.0
            ),
            State::Retrying { next_at: 1_002, .. }
        ));
        // On the second exactly, no rounding up.
        assert!(matches!(
            next_state(
                Outcome::Transient("x".into()),
                1,
                now_d,
                now + 60,
                &tight,
                0.0
            ),
            State::Retrying { next_at: 1_001, .. }
        ));
        assert!(is_expired(10, 10));
        assert!(!is_expired(9, 10));
    }

    #[test]
    fn names_are_the_stored_ones() {
        assert_eq!(State::Queued.name(), "queued");
        assert!(State::Queued.is_pending());
        assert!(State::Retrying {
            next_at: 0,
            error: String::new()
        }
        .is_pending());
        assert!(!State::Failed {
            error: String::new()
        }
        .is_pending());
    }
}
