//! One-time tokens for forms that pay: each rendering of such a form
//! carries a fresh random token, and the POST that pays first spends it, so
//! a double-clicked button or a replayed request pays once. The CSRF token
//! (one per session) cannot do this: it is the same on every form.
//!
//! Invariant: a token is spent before the payment starts, and a spent token
//! is never accepted again while it is remembered (the last [`REMEMBERED`]
//! spent tokens; an older one would need 4,096 later payments in between,
//! and it still needs the session's CSRF token to be posted at all). A
//! payment that then fails leaves its token spent: the page is rendered
//! again with a new one.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// How many spent tokens are remembered.
const REMEMBERED: usize = 4096;

/// The longest token accepted (ours are 64 hex digits).
const MAX_LEN: usize = 128;

/// The spent tokens, oldest first.
#[derive(Default)]
pub struct OnceTokens {
    spent: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl OnceTokens {
    /// A token for one rendering of a paying form.
    pub fn fresh() -> String {
        super::session::random_token()
    }

    /// Spends `token`: true the first time, false when it was spent before,
    /// is empty or is too long.
    pub fn spend(&self, token: &str) -> bool {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_LEN {
            return false;
        }
        let mut guard = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(token.to_owned()) {
            return false;
        }
        order.push_back(token.to_owned());
        if order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_spent_once() {
        let once = OnceTokens::default();
        let t = OnceTokens::fresh();
        assert_ne!(t, OnceTokens::fresh());
        assert!(once.spend(&t));
        assert!(
            !once.spend(&t),
            "a second POST of the same form pays nothing"
        );
        assert!(once.spend(&OnceTokens::fresh()));
    }

    #[test]
    fn empty_or_oversize_tokens_are_refused() {
        let once = OnceTokens::default();
        assert!(!once.spend(""));
        assert!(!once.spend("   "));
        assert!(!once.spend(&"a".repeat(MAX_LEN + 1)));
    }

    #[test]
    fn memory_is_bounded() {
        let once = OnceTokens::default();
        let first = OnceTokens::fresh();
        assert!(once.spend(&first));
        for _ in 0..REMEMBERED {
            assert!(once.spend(&OnceTokens::fresh()));
        }
        let guard = once.spent.lock().unwrap();
        assert_eq!(guard.0.len(), REMEMBERED);
        assert_eq!(guard.1.len(), REMEMBERED);
        assert!(!guard.0.contains(&first));
    }
}
