//! One-time tokens for forms that pay: each rendering of such a form
//! carries a fresh random token, and the POST that pays first spends it, so
//! a double-clicked button or a replayed request pays once. The CSRF token
//! (one per session) cannot do this: it is the same on every form.
//!
//! Spent tokens are kept in the node's database ([`super::store`]), so a
//! form posted to one `cairn serve` process and replayed to another (behind
//! a proxy) pays once too.
//!
//! Invariants:
//! - A token is spent before the payment starts, by one atomic statement
//!   (the row's primary key decides which of two concurrent spends, on any
//!   processes, wins); a payment that then fails leaves its token spent: the
//!   page is rendered again with a new one.
//! - Only the token's SHA-256 is stored.
//! - A spent token is remembered for [`REMEMBERED`] ([`SESSION_TTL`] and an
//!   hour for clocks that disagree). That is long enough: a form carries the
//!   CSRF token of the session it was rendered in, every paying POST is
//!   checked against a live session's token before it spends, and that
//!   session began before the form was rendered, so it has ended by the
//!   time the spent row is forgotten.
//! - When the database does not answer, the token counts as spent: nothing
//!   is paid.

use std::time::Duration;

use super::session::{digest, now_ms, SESSION_TTL};
use super::store::WebDb;

/// How long a spent token is remembered.
const REMEMBERED: Duration = Duration::from_secs(SESSION_TTL.as_secs() + 3600);

/// The longest token accepted (ours are 64 hex digits).
const MAX_LEN: usize = 128;

/// The spent tokens, in the node's database.
pub struct OnceTokens {
    db: WebDb,
}

impl OnceTokens {
    /// The spent tokens kept in `db`.
    pub(super) fn new(db: WebDb) -> Self {
        Self { db }
    }

    /// A token for one rendering of a paying form.
    pub fn fresh() -> String {
        super::session::random_token()
    }

    /// Spends `token`: true the first time, false when it was spent before
    /// (here or on another process), is empty or is too long, or the
    /// database did not answer (logged).
    pub async fn spend(&self, token: &str) -> bool {
        self.spend_at(token, now_ms() / 1000).await
    }

    async fn spend_at(&self, token: &str, now: u64) -> bool {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_LEN {
            return false;
        }
        let forget_before = now.saturating_sub(REMEMBERED.as_secs());
        match self.db.spend(&digest(token), now, forget_before).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(error = %e, "web: cannot spend a form token; nothing is paid");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::testing::on_both;
    use super::*;

    #[tokio::test]
    async fn a_token_is_spent_once_on_every_process_on_both_backends() {
        on_both(|db| async move {
            let once = OnceTokens::new(db.clone());
            let other = OnceTokens::new(db.clone());
            let t = OnceTokens::fresh();
            assert_ne!(t, OnceTokens::fresh());
            assert!(once.spend(&t).await);
            assert!(
                !once.spend(&t).await,
                "a second POST of the same form pays nothing"
            );
            assert!(
                !other.spend(&t).await,
                "nor one replayed to another process"
            );
            assert!(other.spend(&OnceTokens::fresh()).await);
        })
        .await;
    }

    #[tokio::test]
    async fn concurrent_spends_of_one_token_let_exactly_one_through_on_both_backends() {
        on_both(|db| async move {
            let t = OnceTokens::fresh();
            let spenders: Vec<_> = (0..8).map(|_| OnceTokens::new(db.clone())).collect();
            let results = futures::future::join_all(spenders.iter().map(|s| s.spend(&t))).await;
            assert_eq!(
                results.iter().filter(|fresh| **fresh).count(),
                1,
                "{results:?}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn empty_or_oversize_tokens_are_refused() {
        on_both(|db| async move {
            let once = OnceTokens::new(db);
            assert!(!once.spend("").await);
            assert!(!once.spend("   ").await);
            assert!(!once.spend(&"a".repeat(MAX_LEN + 1)).await);
        })
        .await;
    }

    #[tokio::test]
    async fn only_digests_are_kept_and_old_ones_are_forgotten_on_both_backends() {
        on_both(|db| async move {
            let once = OnceTokens::new(db.clone());
            let start = now_ms() / 1000;
            let first = OnceTokens::fresh();
            assert!(once.spend_at(&first, start).await);
            // The one row is keyed by the digest: the token is not kept.
            assert_eq!(db.spent_count().await.unwrap(), 1);
            assert!(!db.spend(&digest(&first), start, 0).await.unwrap());
            let forgotten = start + REMEMBERED.as_secs() + 1;
            assert!(once.spend_at(&OnceTokens::fresh(), forgotten).await);
            assert_eq!(db.spent_count().await.unwrap(), 1, "the old row is purged");
        })
        .await;
    }
}
