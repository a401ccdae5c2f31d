//! The owner's sign-in: the admin token or the web passphrase
//! ([`super::passphrase`]) opens a session; the session is a random id in
//! an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the node's public
//! URL is `https`/`wss`), looked up in the node's database
//! ([`super::store`]), so that a session opened on one `cairn serve`
//! process works on every process sharing that database, and outlives a
//! restart.
//!
//! Invariants:
//! - A session id is 32 random bytes from the OS, never stored: the table
//!   holds its SHA-256 and is searched by that digest, so a reader of the
//!   database cannot sign in and a timing probe learns nothing about a live
//!   id's bytes.
//! - Every session ends [`SESSION_TTL`] after sign-in (by the wall clock
//!   of the process that looks it up: processes on several machines need
//!   synchronized clocks), or at sign-out, or at "sign out everywhere"; each
//!   deletes rows that every process reads at every lookup (nothing is
//!   cached per process). An expired session is refused and its row
//!   deleted; signing in deletes every expired row.
//! - At most [`MAX_SESSIONS`] sessions are kept: signing in beyond it ends
//!   the oldest.
//! - A lookup that fails (the database does not answer) counts as no
//!   session: the owner is sent to sign in, nothing is changed.
//! - Every state-changing request is a `POST` that passes [`check_post`]:
//!   its `Sec-Fetch-Site` and `Origin` do not name another site (see
//!   [`same_origin`]), and its form's `csrf` field equals the session's
//!   token (constant-time). The
//!   sign-in form, which has no session yet, carries a pre-session token
//!   that must equal its own cookie (double submit).
//! - Sign-in attempts are limited per client address (the relay's rule for
//!   which address a request is from, forwarding headers only from trusted
//!   proxies): [`LOGIN_BURST`] attempts, then one per
//!   [`LOGIN_REFILL_SECS`]; a refused attempt is answered 429 with
//!   `Retry-After`. The limiter is per process (in memory): behind a proxy
//!   spreading requests over N processes an address gets up to N times the
//!   burst, still bounded, and each attempt still costs an scrypt check.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use cairn_relay::config::Rate;
use cairn_relay::ratelimit::RateLimiter;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::store::WebDb;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "cairn_session";
/// Name of the sign-in form's pre-session cookie.
pub const LOGIN_COOKIE: &str = "cairn_login";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sign-in attempts one address may make at once.
pub const LOGIN_BURST: f64 = 5.0;
/// Seconds after which an address may try once more.
pub const LOGIN_REFILL_SECS: f64 = 60.0;
/// Most sessions held; signing in beyond it ends the oldest.
const MAX_SESSIONS: usize = 64;

/// A signed-in owner.
#[derive(Clone)]
pub struct Session {
    /// The token every form of this session must carry.
    pub csrf: String,
}

/// The session table (in the node's database) and the sign-in limiter.
pub struct Sessions {
    db: WebDb,
    logins: RateLimiter<IpAddr>,
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The hex SHA-256 of a secret: what the tables keep instead of it.
pub(super) fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Unix milliseconds now.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Sessions {
    /// The sessions kept in `db`.
    pub(super) fn new(db: WebDb) -> Self {
        Self {
            db,
            logins: RateLimiter::new(Rate {
                per_second: 1.0 / LOGIN_REFILL_SECS,
                burst: LOGIN_BURST,
            }),
        }
    }

    /// Takes one sign-in attempt for `client`; `Err(wait)` when it has
    /// none left.
    pub fn attempt(&self, client: IpAddr) -> Result<(), Duration> {
        self.logins.acquire(&client)
    }

    /// Opens a session; returns its id (for the cookie).
    pub async fn open(&self) -> Result<String, sqlx::Error> {
        self.open_at(now_ms()).await
    }

    async fn open_at(&self, now_ms: u64) -> Result<String, sqlx::Error> {
        let id = random_token();
        let now = now_ms / 1000;
        self.db
            .insert_session(
                &digest(&id),
                &random_token(),
                now_ms,
                now + SESSION_TTL.as_secs(),
                now,
                MAX_SESSIONS,
            )
            .await?;
        Ok(id)
    }

    /// The live session named by the request's cookie; `None` too when
    /// the database does not answer (logged).
    pub async fn get(&self, headers: &HeaderMap) -> Option<Session> {
        self.get_at(headers, now_ms() / 1000).await
    }

    async fn get_at(&self, headers: &HeaderMap, now: u64) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        match self.db.session(&digest(&id), now).await {
            Ok(csrf) => csrf.map(|csrf| Session { csrf }),
            Err(e) => {
                tracing::warn!(error = %e, "web: cannot read the sessions table");
                None
            }
        }
    }

    /// Ends the session named by the request's cookie, on every process.
    pub async fn close(&self, headers: &HeaderMap) -> Result<(), sqlx::Error> {
        match cookie(headers, SESSION_COOKIE) {
            Some(id) => self.db.delete_session(&digest(&id)).await,
            None => Ok(()),
        }
    }

    /// Ends every session, on every process.
    pub async fn close_all(&self) -> Result<(), sqlx::Error> {
        self.db.delete_all_sessions().await
    }
}

/// The value of cookie `name`, if the request sent one.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, path `/app`,
/// `Secure` when `secure`; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/app; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// Why a `POST` was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PostRefused {
    /// It came from another site.
    CrossOrigin,
    /// Its form's token is missing or wrong.
    Csrf,
}

/// A `POST` from a page of this origin carrying `expected` as its `csrf`.
pub fn check_post(
    headers: &HeaderMap,
    form_csrf: Option<&str>,
    expected: &str,
) -> Result<(), PostRefused> {
    if !same_origin(headers) {
        return Err(PostRefused::CrossOrigin);
    }
    match form_csrf {
        Some(t) if crate::admin_token::constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
            Ok(())
        }
        _ => Err(PostRefused::Csrf),
    }
}

/// Whether the request says it comes from this origin. Browsers send
/// `Sec-Fetch-Site`; it must be `same-origin` (or `none`: typed by the
/// user). An `Origin` other than `null` must name the `Host` the request
/// was sent to. `Origin: null` is what a page with `Referrer-Policy:
/// no-referrer` (ours) sends on a form `POST`, so it proves nothing either
/// way and counts only beside a same-origin `Sec-Fetch-Site`. A request
/// with neither header (not a browser) relies on the CSRF token alone.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let fetch_site = get("sec-fetch-site");
    if let Some(site) = fetch_site {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match get("origin") {
        None => true,
        Some("null") => fetch_site.is_some(),
        Some(origin) => {
            let Some(host) = get("host") else {
                return false;
            };
            let Some((scheme, authority)) = origin.split_once("://") else {
                return false;
            };
            (scheme == "http" || scheme == "https") && authority.eq_ignore_ascii_case(host)
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::super::store::testing::{on_both, TestDb};
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn with_cookie(id: &str) -> HeaderMap {
        headers(&[("cookie", &format!("other=1; {SESSION_COOKIE}={id}"))])
    }

    #[tokio::test]
    async fn sessions_open_are_found_and_end_at_sign_out_on_both_backends() {
        on_both(|db| async move {
            let s = Sessions::new(db.clone());
            let id = s.open().await.unwrap();
            let h = with_cookie(&id);
            let session = s.get(&h).await.expect("open");
            assert_eq!(session.csrf.len(), 64);
            assert_ne!(session.csrf, id);
            assert!(s.get(&with_cookie(&format!("x{id}"))).await.is_none());
            // Another process's table is the same rows.
            let other = Sessions::new(db.clone());
            assert_eq!(
                other.get(&h).await.expect("seen elsewhere").csrf,
                session.csrf
            );
            other.close(&h).await.unwrap();
            assert!(s.get(&h).await.is_none(), "signed out on the other process");
            let a = s.open().await.unwrap();
            let b = s.open().await.unwrap();
            other.close_all().await.unwrap();
            for gone in [a, b] {
                assert!(
                    s.get(&with_cookie(&gone)).await.is_none(),
                    "signed out everywhere"
                );
            }
            assert_eq!(db.session_count().await.unwrap(), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn only_the_digest_of_a_session_id_is_stored_on_both_backends() {
        on_both(|db| async move {
            let s = Sessions::new(db.clone());
            let id = s.open().await.unwrap();
            assert!(
                db.session(&id, 0).await.unwrap().is_none(),
                "not by the id itself"
            );
            assert!(db.session(&digest(&id), 0).await.unwrap().is_some());
        })
        .await;
    }

    #[tokio::test]
    async fn expired_sessions_are_refused_and_purged_on_both_backends() {
        on_both(|db| async move {
            let s = Sessions::new(db.clone());
            let start = now_ms();
            let id = s.open_at(start).await.unwrap();
            let h = with_cookie(&id);
            let end = start / 1000 + SESSION_TTL.as_secs();
            assert!(s.get_at(&h, end - 1).await.is_some());
            assert!(s.get_at(&h, end).await.is_none(), "expired");
            assert_eq!(db.session_count().await.unwrap(), 0, "its row is deleted");
            // Signing in purges the expired rows nobody looked up.
            let _stale = s.open_at(start).await.unwrap();
            let later = (end + 1) * 1000;
            let fresh = s.open_at(later).await.unwrap();
            assert_eq!(db.session_count().await.unwrap(), 1);
            assert!(s.get_at(&with_cookie(&fresh), end + 1).await.is_some());
        })
        .await;
    }

    #[tokio::test]
    async fn signing_in_beyond_the_bound_ends_the_oldest_on_both_backends() {
        on_both(|db| async move {
            let s = Sessions::new(db.clone());
            let start = now_ms();
            let mut ids = Vec::new();
            for i in 0..MAX_SESSIONS as u64 + 2 {
                ids.push(s.open_at(start + i).await.unwrap());
            }
            assert_eq!(db.session_count().await.unwrap(), MAX_SESSIONS as i64);
            let now = start / 1000;
            assert!(s.get_at(&with_cookie(&ids[0]), now).await.is_none());
            assert!(s.get_at(&with_cookie(&ids[1]), now).await.is_none());
            assert!(s.get_at(&with_cookie(&ids[2]), now).await.is_some());
            assert!(s
                .get_at(&with_cookie(ids.last().unwrap()), now)
                .await
                .is_some());
            // A sign-in stamped earlier than every other (another
            // process's slower clock) still keeps its own session.
            let early = s.open_at(start - 1000).await.unwrap();
            assert!(s.get_at(&with_cookie(&early), now).await.is_some());
            assert_eq!(db.session_count().await.unwrap(), MAX_SESSIONS as i64);
        })
        .await;
    }

    #[test]
    fn posts_need_this_origin_and_the_token() {
        let ok = headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "http://127.0.0.1:7777"),
        ]);
        assert_eq!(check_post(&ok, Some("t"), "t"), Ok(()));
        assert_eq!(check_post(&ok, Some("u"), "t"), Err(PostRefused::Csrf));
        assert_eq!(check_post(&ok, None, "t"), Err(PostRefused::Csrf));
        let evil = headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            check_post(&evil, Some("t"), "t"),
            Err(PostRefused::CrossOrigin)
        );
        let null = headers(&[("host", "127.0.0.1:7777"), ("origin", "null")]);
        assert_eq!(
            check_post(&null, Some("t"), "t"),
            Err(PostRefused::CrossOrigin)
        );
        let null_same = headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(check_post(&null_same, Some("t"), "t"), Ok(()));
        let evil_same = headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(
            check_post(&evil_same, Some("t"), "t"),
            Err(PostRefused::CrossOrigin)
        );
        let fetch = headers(&[("host", "a"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(
            check_post(&fetch, Some("t"), "t"),
            Err(PostRefused::CrossOrigin)
        );
        let bare = headers(&[("host", "a")]);
        assert_eq!(
            check_post(&bare, Some("t"), "t"),
            Ok(()),
            "curl sends neither"
        );
    }

    #[test]
    fn cookies_are_strict_and_http_only() {
        let c = set_cookie(SESSION_COOKIE, "abc", SESSION_TTL, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(SESSION_COOKIE, "abc", SESSION_TTL, false).contains("Secure"));
    }

    #[tokio::test]
    async fn sign_ins_are_limited_per_address() {
        let db = TestDb::sqlite().await;
        let s = Sessions::new(db.db.clone());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..LOGIN_BURST as usize {
            assert!(s.attempt(a).is_ok());
        }
        let wait = s.attempt(a).unwrap_err();
        assert!(wait > Duration::from_secs(1), "{wait:?}");
        assert!(
            s.attempt("192.0.2.2".parse().unwrap()).is_ok(),
            "another address"
        );
    }
}
