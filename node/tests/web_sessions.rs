//! The owner's web app on several `cairn serve` processes (the built
//! binary) sharing one Postgres database, as behind a reverse proxy
//! (docs/scale-out.md): a session opened on one process works on another,
//! and after a restart, signing out on one signs out on all, and a paying
//! form's one-time token
//! spent on one process is refused on another (`409`), so a replayed POST
//! pays once.
//!
//! Each run creates a fresh database on `CAIRN_TEST_POSTGRES_URL` and drops
//! it at the end; without that variable the test says so and passes. Every
//! request is bounded by 10 s, every start by [`common::START_WAIT`], the
//! whole test by [`TEST_TIMEOUT`].

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use nostr::{Keys, ToBech32 as _};
use reqwest::Method;

mod common;
use common::{serve_command, PgDatabase, Serve, OUTBOX_READY, START_WAIT};

/// Whole-test bound (two starts on a busy 2-core machine, a dozen requests).
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// `cairn serve` on `dir` and `database_url` with the outbox on (the
/// Messages pages), once it says its outbox is ready.
fn start(database_url: &str, dir: &Path) -> Serve {
    let mut cmd = serve_command(None, dir);
    cmd.env("CAIRN_DATABASE_URL", database_url)
        .env("CAIRN_OUTBOX__ENABLED", "true");
    Serve::spawn(cmd, OUTBOX_READY, Instant::now() + START_WAIT).unwrap_or_else(|lines| {
        panic!(
            "cairn serve did not start its outbox; it logged:\n{}",
            lines.join("\n")
        )
    })
}

/// One answer of the owner's web app: what a browser without JavaScript
/// would act on.
struct WebAnswer {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl WebAnswer {
    /// The value a `Set-Cookie` of this answer gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let (k, rest) = c.split_once('=')?;
            (k == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
        })
    }

    /// The value of the page's (first) hidden field `name`.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
            + marker.len();
        let len = self.body[start..].find('"').unwrap();
        self.body[start..start + len].to_owned()
    }
}

/// A request to `node`'s web app with `cookie` (a `Cookie` header) and a
/// form body, redirects not followed, bounded by 10 s (panics after that).
async fn web(
    node: &Serve,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> WebAnswer {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client
        .request(method.clone(), format!("{}{path}", node.http()))
        .header("accept", "text/html");
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    if !form.is_empty() {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", node.addr()));
    let header = |name| {
        resp.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let location = header(reqwest::header::LOCATION).pop();
    let set_cookies = header(reqwest::header::SET_COOKIE);
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    WebAnswer {
        status,
        location,
        set_cookies,
        body,
    }
}

/// Signs in on `node` as the login form does (its pre-session cookie and
/// token, then the admin token): the `Cookie` header of the session.
async fn sign_in(node: &Serve, admin_token: &str) -> String {
    let form = web(node, reqwest::Method::GET, "/app/login", None, &[]).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let pre = form.cookie("cairn_login").expect("a pre-session cookie");
    let csrf = form.field("csrf");
    let signed = web(
        node,
        reqwest::Method::POST,
        "/app/login",
        Some(&format!("cairn_login={pre}")),
        &[("csrf", &csrf), ("secret", admin_token)],
    )
    .await;
    assert_eq!(signed.status, 303, "{}", signed.body);
    assert_eq!(signed.location.as_deref(), Some("/app/messages"));
    let id = signed.cookie("cairn_session").expect("a session cookie");
    format!("cairn_session={id}")
}

/// A fresh one-time form token (256 random bits, hex), like the pages'.
fn form_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// A message form paying 10 sat by Lightning with one-time token `token`.
fn pay_form<'a>(csrf: &'a str, token: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("csrf", csrf),
        ("text", "hello"),
        ("amount_sat", "10"),
        ("method", "lightning"),
        ("pay_token", token),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_web_session_and_paying_forms_hold_on_every_process() {
    let Some(db) = PgDatabase::create("cairn_web_sessions").await else {
        return;
    };
    let database_url = db.url.clone();
    let mut run = tokio::spawn(async move {
        // One owner: the processes share the data directory (the owner's
        // key, the admin token), as docs/scale-out.md describes.
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().to_owned();
        let key_file = dir.join("owner.key");
        std::fs::write(&key_file, Keys::generate().secret_key().to_secret_hex()).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = start(&database_url, &dir);
        let b = start(&database_url, &dir);
        let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap();

        // Signed in on A, the cookie works on B.
        let session = sign_in(&a, admin_token.trim()).await;
        let on_b = web(&b, Method::GET, "/app/messages", Some(&session), &[]).await;
        assert_eq!(
            on_b.status, 200,
            "B does not know A's session: {}",
            on_b.body
        );
        let csrf = on_b.field("csrf");
        let anonymous = web(&b, Method::GET, "/app/messages", None, &[]).await;
        assert_eq!(anonymous.status, 303, "B's pages need a session");

        // A paying form posted to A and replayed to B pays at most once:
        // A spends its token (and then refuses to pay a stranger), B
        // answers 409 for the same token.
        let peer = Keys::generate().public_key().to_bech32().unwrap();
        let conversation = format!("/app/c/{peer}");
        let send = format!("{conversation}/send");
        // The page offers a payment only to a contact added by @handle;
        // the server never registers the tokens it hands out (it remembers
        // spent ones), so the test mints its own, as a page would carry.
        let page = web(&a, Method::GET, &conversation, Some(&session), &[]).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let pay_token = form_token();
        let first = pay_form(&csrf, &pay_token);
        let on_a = web(&a, Method::POST, &send, Some(&session), &first).await;
        assert_eq!(on_a.status, 400, "{}", on_a.body);
        assert!(on_a.body.contains("Not paid"), "{}", on_a.body);
        let replayed = web(&b, Method::POST, &send, Some(&session), &first).await;
        assert_eq!(
            replayed.status, 409,
            "B took A's spent token: {}",
            replayed.body
        );
        assert!(replayed.body.contains("already sent"), "{}", replayed.body);
        // A fresh token is not refused so: the 409 was the replay's.
        let fresh = form_token();
        assert_ne!(fresh, pay_token);
        let on_b = web(
            &b,
            Method::POST,
            &send,
            Some(&session),
            &pay_form(&csrf, &fresh),
        )
        .await;
        assert_eq!(on_b.status, 400, "{}", on_b.body);

        // A restarted process still knows the session (it is in the
        // database, not in the process).
        drop(a);
        let a = start(&database_url, &dir);
        let again = web(&a, Method::GET, "/app/messages", Some(&session), &[]).await;
        assert_eq!(again.status, 200, "a restart signed the owner out");

        // Signed out on B, the cookie is refused on A (and on B).
        let out = web(
            &b,
            Method::POST,
            "/app/logout",
            Some(&session),
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(out.status, 303, "{}", out.body);
        assert_eq!(out.location.as_deref(), Some("/app/login?signed_out=1"));
        for (name, node) in [("A", &a), ("B", &b)] {
            let after = web(node, Method::GET, "/app/messages", Some(&session), &[]).await;
            assert_eq!(after.status, 303, "{name} still knows the session");
            assert_eq!(after.location.as_deref(), Some("/app/login"), "{name}");
        }
    });
    let outcome = tokio::time::timeout(TEST_TIMEOUT, &mut run).await;
    if outcome.is_err() {
        // Dropping the body kills its `cairn serve` children.
        run.abort();
        let _ = run.await;
    }
    db.drop_now().await;
    match outcome {
        Err(_) => panic!("the test timed out after {TEST_TIMEOUT:?}"),
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Ok(Ok(())) => {}
    }
}
