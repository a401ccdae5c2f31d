//! NIP-42 authentication: challenges and the checks on kind 22242 events.

use nostr::Event;
use url::Url;

use crate::kinds::{first_tag_value, KIND_AUTH};

/// Why an AUTH event was refused (the text goes into `OK false`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not kind 22242.
    #[error("invalid: AUTH event must be kind 22242")]
    WrongKind,
    /// `challenge` tag missing or not the one this connection was sent.
    #[error("invalid: challenge does not match")]
    WrongChallenge,
    /// `relay` tag missing or naming another relay.
    #[error("invalid: relay tag does not name this relay")]
    WrongRelay,
    /// `created_at` too far from now.
    #[error("invalid: created_at is outside the allowed window")]
    Stale,
}

/// A fresh random challenge (128 bits, hex).
pub fn new_challenge() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Canonical form of a relay URL for comparison: parsed, lower-cased scheme
/// and host, default port dropped, no trailing slash, no fragment.
pub fn normalize_relay_url(url: &str) -> Option<String> {
    let parsed = Url::parse(url.trim()).ok()?;
    let mut s = parsed.to_string();
    while s.ends_with('/') {
        s.pop();
    }
    Some(s)
}

/// Check an AUTH event's kind, challenge, relay and time. The signature is
/// checked separately (by the verification pool).
pub fn check_auth_event(
    event: &Event,
    challenge: &str,
    relay_url: &str,
    now: u64,
    window_secs: u64,
) -> Result<(), AuthError> {
    if event.kind.as_u16() != KIND_AUTH {
        return Err(AuthError::WrongKind);
    }
    if first_tag_value(event, "challenge") != Some(challenge) {
        return Err(AuthError::WrongChallenge);
    }
    let expected = normalize_relay_url(relay_url);
    let given = first_tag_value(event, "relay").and_then(normalize_relay_url);
    if expected.is_none() || given != expected {
        return Err(AuthError::WrongRelay);
    }
    let created = event.created_at.as_secs();
    if created.abs_diff(now) > window_secs {
        return Err(AuthError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, Keys, RelayUrl, Timestamp};

    use super::*;

    fn auth_event(keys: &Keys, relay: &str, challenge: &str, at: u64) -> Event {
        EventBuilder::auth(challenge, RelayUrl::parse(relay).unwrap())
            .custom_created_at(Timestamp::from(at))
            .sign_with_keys(keys)
            .unwrap()
    }

    #[test]
    fn accepts_matching_event_and_ignores_trailing_slash() {
        let keys = Keys::generate();
        let now = Timestamp::now().as_secs();
        let ev = auth_event(&keys, "ws://127.0.0.1:7777/", "abc", now);
        assert_eq!(
            check_auth_event(&ev, "abc", "ws://127.0.0.1:7777", now, 600),
            Ok(())
        );
        assert_eq!(
            check_auth_event(&ev, "abc", "WS://127.0.0.1:7777/", now, 600),
            Ok(())
        );
    }

    #[test]
    fn rejects_wrong_challenge_relay_and_time() {
        let keys = Keys::generate();
        let now = Timestamp::now().as_secs();
        let ev = auth_event(&keys, "ws://127.0.0.1:7777", "abc", now);
        assert_eq!(
            check_auth_event(&ev, "xyz", "ws://127.0.0.1:7777", now, 600),
            Err(AuthError::WrongChallenge)
        );
        assert_eq!(
            check_auth_event(&ev, "abc", "ws://127.0.0.1:7778", now, 600),
            Err(AuthError::WrongRelay)
        );
        assert_eq!(
            check_auth_event(&ev, "abc", "ws://127.0.0.1:7777", now + 601, 600),
            Err(AuthError::Stale)
        );
    }
}
