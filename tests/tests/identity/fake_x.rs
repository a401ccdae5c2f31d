//! A local fake of X's public endpoints (`/tweet-result` and `/oembed`),
//! serving the response shapes of the real ones (see
//! `identity/tests/x_proof.rs` for the full catalogue of odd cases; the
//! service tests need valid posts, deleted posts and outages).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

/// X's snowflake epoch (ms).
const SNOWFLAKE_EPOCH_MS: u64 = 1_288_834_974_657;

/// One post as X would show it.
#[derive(Debug, Clone)]
pub struct Post {
    pub id: u64,
    pub text: String,
    pub created_at: u64,
    pub user_id: u64,
    pub screen_name: String,
}

impl Post {
    /// A post created `created_at` (unix seconds), with an id X could have given it.
    pub fn new(user_id: u64, screen_name: &str, text: &str, created_at: u64, seq: u64) -> Self {
        Self {
            id: ((created_at * 1000 - SNOWFLAKE_EPOCH_MS) << 22) | (seq & 0x3f_ffff),
            text: text.to_owned(),
            created_at,
            user_id,
            screen_name: screen_name.to_owned(),
        }
    }

    fn syndication(&self) -> Value {
        json!({
            "__typename": "Tweet",
            "lang": "en",
            "favorite_count": 0,
            "created_at": iso8601(self.created_at),
            "display_text_range": [0, self.text.chars().count()],
            "entities": {"hashtags": [], "urls": [], "user_mentions": [], "symbols": []},
            "id_str": self.id.to_string(),
            "text": self.text,
            "user": {
                "id_str": self.user_id.to_string(),
                "name": self.screen_name,
                "screen_name": self.screen_name,
                "verified": false,
                "is_blue_verified": false,
                "profile_image_shape": "Circle",
            },
            "conversation_count": 0,
            "isEdited": false,
            "isStaleEdit": false,
        })
    }

    fn oembed(&self) -> Value {
        let html = format!(
            "<blockquote class=\"twitter-tweet\"><p lang=\"en\" dir=\"ltr\">{}</p>&mdash; {} (@{}) \
             <a href=\"https://twitter.com/{}/status/{}?ref_src=twsrc%5Etfw\">today</a></blockquote>\n",
            self.text, self.screen_name, self.screen_name, self.screen_name, self.id
        );
        json!({
            "url": format!("https://twitter.com/{}/status/{}", self.screen_name, self.id),
            "author_name": self.screen_name,
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

#[derive(Default)]
struct Posts {
    by_id: HashMap<u64, Post>,
    /// When set, every request gets this status (an outage).
    outage: Option<u16>,
}

/// The fake X server on 127.0.0.1.
#[derive(Clone)]
pub struct FakeX {
    pub addr: SocketAddr,
    posts: Arc<Mutex<Posts>>,
}

impl FakeX {
    pub async fn start() -> anyhow::Result<Self> {
        let posts = Arc::new(Mutex::new(Posts::default()));
        let app = Router::new()
            .route("/tweet-result", get(tweet_result))
            .route("/oembed", get(oembed))
            .with_state(posts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, posts })
    }

    /// Base URL for both endpoints.
    pub fn base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn publish(&self, post: &Post) {
        self.posts
            .lock()
            .unwrap()
            .by_id
            .insert(post.id, post.clone());
    }

    pub fn delete(&self, id: u64) {
        self.posts.lock().unwrap().by_id.remove(&id);
    }

    pub fn set_outage(&self, status: Option<u16>) {
        self.posts.lock().unwrap().outage = status;
    }
}

fn answer(posts: &Mutex<Posts>, id: Option<u64>, oembed: bool) -> Response {
    let posts = posts.lock().unwrap();
    if let Some(status) = posts.outage {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    match id.and_then(|id| posts.by_id.get(&id)) {
        Some(post) => (
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            if oembed {
                post.oembed()
            } else {
                post.syndication()
            }
            .to_string(),
        )
            .into_response(),
        // What X sends for an unknown or deleted id: an HTML error page.
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><body>Sorry, that page does not exist</body></html>",
        )
            .into_response(),
    }
}

async fn tweet_result(
    State(posts): State<Arc<Mutex<Posts>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(&posts, q.get("id").and_then(|i| i.parse().ok()), false)
}

async fn oembed(
    State(posts): State<Arc<Mutex<Posts>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id = q
        .get("url")
        .and_then(|u| u.rsplit_once("/status/"))
        .and_then(|(_, id)| id.parse().ok());
    answer(&posts, id, true)
}
