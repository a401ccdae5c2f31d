//! A local fake of X's public endpoints, for tests only (cargo feature
//! `fake-x`, enabled by dev-dependencies; never in a node build).
//!
//! X cannot be reached from tests, so this serves `GET /tweet-result` and
//! `GET /oembed` on 127.0.0.1 with the response shapes X's public endpoints
//! really send (modelled on captured answers: the syndication post object
//! with `__typename`, `user`, `entities.urls`, `edit_control`, `isEdited`…;
//! tombstones; 404 HTML pages; oEmbed JSON with the
//! `<blockquote class="twitter-tweet">` embed). A test either
//! [publishes](FakeX::publish) a [`Post`] on both endpoints, or scripts the
//! exact [`Reply`] sequence of one endpoint for one id ([`FakeX::set`]);
//! [`FakeX::set_outage`] makes every request fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::{CheckPolicy, Endpoint, ProofChecker, PublicXClient, RetryPolicy, XClientConfig};

/// X's snowflake epoch (ms).
pub const SNOWFLAKE_EPOCH_MS: u64 = 1_288_834_974_657;

/// A post id X could have given a post created at `created_at_secs`
/// (the low 22 bits are the sequence, masked).
pub fn snowflake(created_at_secs: u64, seq: u64) -> u64 {
    ((created_at_secs * 1000 - SNOWFLAKE_EPOCH_MS) << 22) | (seq & 0x3f_ffff)
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body, as sent.
    pub body: String,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Wait before answering.
    pub delay: Duration,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(value: Value) -> Self {
        Self {
            status: 200,
            body: value.to_string(),
            content_type: "application/json; charset=utf-8",
            delay: Duration::ZERO,
        }
    }

    /// What X sends for an unknown or deleted id: an HTML error page.
    pub fn not_found() -> Self {
        Self {
            status: 404,
            body: "<!DOCTYPE html><html><body>Sorry, that page does not exist</body></html>".into(),
            content_type: "text/html; charset=utf-8",
            delay: Duration::ZERO,
        }
    }

    /// A bare status (rate limits, server errors).
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: String::new(),
            content_type: "text/plain",
            delay: Duration::ZERO,
        }
    }

    /// The same answer, sent after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// How a post shows X's edit history.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Posts from before edits existed carry no `edit_control`.
    Absent,
    /// The shape on an initial version: `edit_control.edit_tweet_ids`.
    Initial(Vec<String>),
    /// The shape on a later version: `initial_tweet_id` + `edit_control_initial`.
    Later(Vec<String>),
}

/// One post as X would show it. Fields are public so that a test can bend
/// any of them (another author, a protected account, t.co links, edits).
#[derive(Clone, Debug)]
pub struct Post {
    /// Post id.
    pub id: u64,
    /// The text as X stores it in the syndication `text` field (escaped, t.co links).
    pub raw_text: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Author id as X reports it (`id_str`; a string, so tests can send odd ones).
    pub user_id: String,
    /// Author handle.
    pub screen_name: String,
    /// Author display name.
    pub name: String,
    /// Whether the account is protected.
    pub protected: bool,
    /// `(t.co url, expanded_url, display_url)` of each link in the text.
    pub urls: Vec<(String, String, String)>,
    /// Edit history.
    pub edit: Edit,
}

impl Post {
    /// A plain post by `user_id`/`screen_name` created at `created_at` (unix
    /// seconds), with the id X could have given it (`seq` sets its low bits).
    pub fn new(user_id: u64, screen_name: &str, text: &str, created_at: u64, seq: u64) -> Self {
        Self {
            id: snowflake(created_at, seq),
            raw_text: text.to_owned(),
            created_at,
            user_id: user_id.to_string(),
            screen_name: screen_name.to_owned(),
            name: screen_name.to_owned(),
            protected: false,
            urls: Vec::new(),
            edit: Edit::Absent,
        }
    }

    /// The syndication answer, shaped like a captured `tweet-result` response.
    pub fn syndication_json(&self) -> Value {
        let urls: Vec<Value> = self
            .urls
            .iter()
            .map(|(url, expanded, display)| {
                let start = self.raw_text.find(url.as_str()).unwrap_or(0);
                json!({
                    "display_url": display,
                    "expanded_url": expanded,
                    "indices": [start, start + url.len()],
                    "url": url,
                })
            })
            .collect();
        let mut post = json!({
            "__typename": "Tweet",
            "lang": "en",
            "favorite_count": 0,
            "possibly_sensitive": false,
            "created_at": iso8601(self.created_at),
            "display_text_range": [0, self.raw_text.chars().count()],
            "entities": {"hashtags": [], "urls": urls, "user_mentions": [], "symbols": []},
            "id_str": self.id.to_string(),
            "text": self.raw_text,
            "user": {
                "id_str": self.user_id,
                "name": self.name,
                "profile_image_url_https": "https://pbs.twimg.com/profile_images/1/a_normal.jpg",
                "screen_name": self.screen_name,
                "verified": false,
                "is_blue_verified": false,
                "profile_image_shape": "Circle",
            },
            "conversation_count": 0,
            "news_action_type": "conversation",
            "isEdited": false,
            "isStaleEdit": false,
        });
        if self.protected {
            post["user"]["protected"] = json!(true);
        }
        let editable_until = (self.created_at + 3600) * 1000;
        match &self.edit {
            Edit::Absent => {}
            Edit::Initial(ids) => {
                post["edit_control"] = json!({
                    "edit_tweet_ids": ids,
                    "editable_until_msecs": editable_until.to_string(),
                    "is_edit_eligible": true,
                    "edits_remaining": (6 - ids.len()).to_string(),
                });
                post["isEdited"] = json!(ids.len() > 1);
                post["isStaleEdit"] = json!(ids.last() != Some(&self.id.to_string()));
            }
            Edit::Later(ids) => {
                post["edit_control"] = json!({
                    "initial_tweet_id": ids[0],
                    "edit_control_initial": {
                        "edit_tweet_ids": ids,
                        "editable_until_msecs": editable_until.to_string(),
                        "is_edit_eligible": true,
                        "edits_remaining": (6 - ids.len()).to_string(),
                    },
                });
                post["isEdited"] = json!(true);
                post["isStaleEdit"] = json!(ids.last() != Some(&self.id.to_string()));
            }
        }
        post
    }

    /// The oEmbed answer, shaped like `publish.twitter.com/oembed?omit_script=true`.
    pub fn oembed_json(&self) -> Value {
        // oEmbed re-escapes the decoded text for HTML and shows links by display_url.
        let mut body = html_escape(&decode_entities(&self.raw_text));
        for (url, _, display) in &self.urls {
            body = body.replace(url, &format!("<a href=\"{url}\">{display}</a>"));
        }
        let body = body.replace('\n', "<br>");
        let html = format!(
            "<blockquote class=\"twitter-tweet\"><p lang=\"en\" dir=\"ltr\">{body}</p>&mdash; {} (@{}) \
             <a href=\"https://twitter.com/{}/status/{}?ref_src=twsrc%5Etfw\">September 21, 2026</a></blockquote>\n",
            self.name, self.screen_name, self.screen_name, self.id
        );
        json!({
            "url": format!("https://twitter.com/{}/status/{}", self.screen_name, self.id),
            "author_name": self.name,
            "author_url": format!("https://twitter.com/{}", self.screen_name),
            "html": html,
            "width": 550,
            "height": null,
            "type": "rich",
            "cache_age": "3153600000",
            "provider_name": "Twitter",
            "provider_url": "https://twitter.com",
            "version": "1.0",
        })
    }
}

fn iso8601(secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The five entities X escapes in syndication text (the fixture's own
/// decoder, kept independent of the one under test in [`super::text`]).
fn decode_entities(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[derive(Default)]
struct FakeState {
    /// Replies per (endpoint, post id), served in order; the last one repeats.
    replies: HashMap<(Endpoint, String), Vec<Reply>>,
    hits: HashMap<(Endpoint, String), usize>,
    /// Query parameters of every request, in arrival order.
    queries: Vec<(Endpoint, HashMap<String, String>)>,
    /// When set, every request gets this status (an outage).
    outage: Option<u16>,
}

/// The fake X server on 127.0.0.1 (runs until the runtime stops).
#[derive(Clone)]
pub struct FakeX {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

impl FakeX {
    /// Binds 127.0.0.1 on a free port and serves both endpoints.
    pub async fn start() -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route("/tweet-result", get(tweet_result))
            .route("/oembed", get(oembed))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state })
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock must not hide its own failure.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Base URL of both endpoints (for `x_oembed_base` / `x_syndication_base`).
    pub fn base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Scripts the answers of `endpoint` for `id`: served in order, the last
    /// one repeating.
    pub fn set(&self, endpoint: Endpoint, id: u64, replies: Vec<Reply>) {
        self.state()
            .replies
            .insert((endpoint, id.to_string()), replies);
    }

    /// Serves `post` on both endpoints.
    pub fn publish(&self, post: &Post) {
        self.set(
            Endpoint::Syndication,
            post.id,
            vec![Reply::json(post.syndication_json())],
        );
        self.set(
            Endpoint::OEmbed,
            post.id,
            vec![Reply::json(post.oembed_json())],
        );
    }

    /// Deletes post `id`: both endpoints answer 404 as X does.
    pub fn delete(&self, id: u64) {
        let mut state = self.state();
        for endpoint in [Endpoint::Syndication, Endpoint::OEmbed] {
            state.replies.remove(&(endpoint, id.to_string()));
        }
    }

    /// With `Some(status)`, every request fails with that status until
    /// cleared with `None`.
    pub fn set_outage(&self, status: Option<u16>) {
        self.state().outage = status;
    }

    /// Requests `endpoint` received for `id`.
    pub fn hits(&self, endpoint: Endpoint, id: u64) -> usize {
        self.state()
            .hits
            .get(&(endpoint, id.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Query parameters of every request to `endpoint`, in arrival order.
    pub fn queries(&self, endpoint: Endpoint) -> Vec<HashMap<String, String>> {
        self.state()
            .queries
            .iter()
            .filter(|(e, _)| *e == endpoint)
            .map(|(_, q)| q.clone())
            .collect()
    }

    /// A client configuration pointing at this server, with short timeouts
    /// and retries.
    pub fn config(&self) -> XClientConfig {
        let base = url::Url::parse(&self.base()).expect("a loopback URL");
        XClientConfig {
            oembed_base: base.clone(),
            syndication_base: base,
            request_timeout: Duration::from_millis(1_000),
            retry: RetryPolicy {
                attempts: 3,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
            },
            user_agent: "cairn-test".into(),
        }
    }

    /// A proof checker on [`FakeX::config`] with the default policy.
    pub fn checker(&self) -> ProofChecker<PublicXClient> {
        self.checker_with(self.config(), CheckPolicy::default())
    }

    /// A proof checker on `config` and `policy`.
    pub fn checker_with(
        &self,
        config: XClientConfig,
        policy: CheckPolicy,
    ) -> ProofChecker<PublicXClient> {
        ProofChecker::new(
            PublicXClient::new(config).expect("a valid client configuration"),
            policy,
        )
    }
}

async fn serve(
    state: &Mutex<FakeState>,
    endpoint: Endpoint,
    id: String,
    query: HashMap<String, String>,
) -> Response {
    let reply = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.queries.push((endpoint, query));
        let hit = {
            let counter = s.hits.entry((endpoint, id.clone())).or_default();
            *counter += 1;
            *counter
        };
        if let Some(status) = s.outage {
            Reply::status(status)
        } else {
            s.replies
                .get(&(endpoint, id))
                .map(|replies| replies[(hit - 1).min(replies.len() - 1)].clone())
                .unwrap_or_else(Reply::not_found)
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}

async fn tweet_result(
    State(state): State<Arc<Mutex<FakeState>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let id = query.get("id").cloned().unwrap_or_default();
    serve(&state, Endpoint::Syndication, id, query).await
}

async fn oembed(
    State(state): State<Arc<Mutex<FakeState>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    // X resolves the post by the id at the end of `url`; the handle does not matter.
    let id = query
        .get("url")
        .and_then(|u| u.rsplit_once("/status/"))
        .map(|(_, id)| id.to_owned())
        .unwrap_or_default();
    serve(&state, Endpoint::OEmbed, id, query).await
}
