//! The owner's sign-in: the admin token or the web passphrase
//! ([`super::passphrase`]) opens a session; the session is a random id in
//! an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the node's public
//! URL is `https`/`wss`), looked up in a table held in memory.
//!
//! Invariants:
//! - A session id is 32 random bytes from the OS, compared only through the
//!   table (a `HashMap` lookup by the id's SHA-256, so the ids themselves are
//!   not kept and a timing probe learns nothing about a live id's bytes).
//! - Every session ends [`SESSION_TTL`] after sign-in, or at sign-out, or
//!   when the node restarts (the table is in memory: a restart signs the
//!   owner out, which is the safe direction).
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
//!   `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use cairn_relay::config::Rate;
use cairn_relay::ratelimit::RateLimiter;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

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
    expires: Instant,
    started: Instant,
}

/// The session table and the sign-in limiter.
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
    logins: RateLimiter<IpAddr>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            logins: RateLimiter::new(Rate {
                per_second: 1.0 / LOGIN_REFILL_SECS,
                burst: LOGIN_BURST,
            }),
        }
    }
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Takes one sign-in attempt for `client`; `Err(wait)` when it has
    /// none left.
    pub fn attempt(&self, client: IpAddr) -> Result<(), Duration> {
        self.logins.acquire(&client)
    }

    /// Opens a session; returns its id (for the cookie).
    pub fn open(&self) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, s| s.expires > now);
        if table.len() >= MAX_SESSIONS {
            if let Some(oldest) = table.iter().min_by_key(|(_, s)| s.started).map(|(k, _)| *k) {
                table.remove(&oldest);
            }
        }
        table.insert(
            key_of(&id),
            Session {
                csrf: random_token(),
                expires: now + SESSION_TTL,
                started: now,
            },
        );
        id
    }

    /// The live session named by the request's cookie.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let key = key_of(&id);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session named by the request's cookie.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key_of(&id));
        }
    }

    /// Ends every session.
    pub fn close_all(&self) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clear();
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

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn sessions_open_are_found_and_end_at_sign_out() {
        let s = Sessions::default();
        let id = s.open();
        let h = headers(&[("cookie", &format!("other=1; {SESSION_COOKIE}={id}"))]);
        let session = s.get(&h).expect("open");
        assert_eq!(session.csrf.len(), 64);
        assert!(s
            .get(&headers(&[("cookie", &format!("{SESSION_COOKIE}=x{id}"))]))
            .is_none());
        s.close(&h);
        assert!(s.get(&h).is_none(), "signed out");
        let again = s.open();
        s.close_all();
        assert!(s
            .get(&headers(&[(
                "cookie",
                &format!("{SESSION_COOKIE}={again}")
            )]))
            .is_none());
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

    #[test]
    fn sign_ins_are_limited_per_address() {
        let s = Sessions::default();
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
