//! Challenges: the nonce a node issues and the exact text a user posts on X.

use std::time::Duration;

use nostr::{nips::nip19::ToBech32, PublicKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// How long a challenge stays valid by default.
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(60 * 60);

/// Number of random bytes in a nonce (128 bits).
pub const NONCE_BYTES: usize = 16;

/// Text before the npub in the proof post.
pub const PROOF_TEXT_PREFIX: &str = "Verifying my Nostr key for Cairn: ";

/// Marker directly before the nonce in the proof post.
pub const NONCE_MARKER: &str = "cairn:";

/// A challenge issued to the holder of `npub`.
///
/// The proof post text is exactly
///
/// ```text
/// Verifying my Nostr key for Cairn: {npub} cairn:{nonce}
/// ```
///
/// (one line, single spaces, `npub` in NIP-19 bech32, `nonce` as 32 lowercase
/// hex digits). The check is deliberately more lenient than the template: the
/// post passes when its text, after HTML-entity decoding and t.co expansion,
/// contains the npub and the nonce anywhere, so users may add words around them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// 128 random bits as 32 lowercase hex digits.
    pub nonce: String,
    /// The key being bound, NIP-19 bech32 (`npub1…`).
    pub npub: String,
    /// When the challenge was issued, unix seconds.
    pub issued_at: u64,
    /// When it stops being accepted, unix seconds.
    pub expires_at: u64,
}

impl Challenge {
    /// Issues a challenge with a fresh nonce from the operating system's RNG.
    pub fn issue(public_key: &PublicKey, issued_at: u64, ttl: Duration) -> Self {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        Self::with_nonce(nonce, public_key, issued_at, ttl)
    }

    /// Builds a challenge around a given nonce (for tests and replays of stored challenges).
    pub fn with_nonce(
        nonce: [u8; NONCE_BYTES],
        public_key: &PublicKey,
        issued_at: u64,
        ttl: Duration,
    ) -> Self {
        Self {
            nonce: hex::encode(nonce),
            npub: public_key
                .to_bech32()
                .expect("encoding a valid public key cannot fail"),
            issued_at,
            expires_at: issued_at.saturating_add(ttl.as_secs()),
        }
    }

    /// The exact text the user is asked to post.
    pub fn proof_text(&self) -> String {
        format!(
            "{PROOF_TEXT_PREFIX}{} {NONCE_MARKER}{}",
            self.npub, self.nonce
        )
    }

    /// Whether the challenge is no longer accepted at `now` (unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        now > self.expires_at
    }

    /// Whether the nonce has the issued form (32 lowercase hex digits).
    pub fn nonce_is_well_formed(&self) -> bool {
        self.nonce.len() == NONCE_BYTES * 2
            && self
                .nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// The public key the challenge is for.
    pub fn public_key(&self) -> Option<PublicKey> {
        use nostr::nips::nip19::FromBech32;
        PublicKey::from_bech32(&self.npub).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PublicKey {
        PublicKey::from_hex("3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d")
            .unwrap()
    }

    #[test]
    fn proof_text_follows_the_template() {
        let c = Challenge::with_nonce([0xab; 16], &key(), 1_000, Duration::from_secs(600));
        assert_eq!(
            c.proof_text(),
            "Verifying my Nostr key for Cairn: \
             npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6 \
             cairn:abababababababababababababababab"
        );
        assert_eq!(c.expires_at, 1_600);
        assert!(!c.is_expired(1_600));
        assert!(c.is_expired(1_601));
        assert!(c.nonce_is_well_formed());
        assert_eq!(c.public_key(), Some(key()));
    }

    #[test]
    fn issued_nonces_are_fresh() {
        let a = Challenge::issue(&key(), 0, DEFAULT_CHALLENGE_TTL);
        let b = Challenge::issue(&key(), 0, DEFAULT_CHALLENGE_TTL);
        assert!(a.nonce_is_well_formed() && b.nonce_is_well_formed());
        assert_ne!(a.nonce, b.nonce);
    }
}
