//! Access to X's public, key-less endpoints, behind the [`XClient`] trait.
//!
//! Two endpoints are used, both without credentials:
//!
//! - **oEmbed**: `GET {oembed_base}/oembed?url=https://twitter.com/{handle}/status/{id}&omit_script=true&dnt=true`
//!   answers `{author_name, author_url, html, …}`; `html` is a
//!   `<blockquote class="twitter-tweet"><p …>text</p>&mdash; Name (@handle) <a …>date</a></blockquote>`.
//!   404 means the post does not exist, 403 that it is not public.
//! - **Syndication**: `GET {syndication_base}/tweet-result?id={id}&lang=en&features=…&token={token}`
//!   answers the post with `id_str`, `text`, `created_at` (ISO 8601), `user`
//!   (`id_str`, `screen_name`, …), `entities.urls` and `edit_control`; a post
//!   that cannot be shown answers 200 with `{"__typename":"TweetTombstone",…}`,
//!   an unknown id 404 (or an empty `{}`).
//!
//! [`PublicXClient`] retries timeouts, connection failures, 5xx and 429 with
//! exponential backoff and then gives up with [`FetchError::Unavailable`].

use std::{fmt, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use url::Url;

use super::token::syndication_token;

/// Default oEmbed base URL.
pub const DEFAULT_OEMBED_BASE: &str = "https://publish.twitter.com";
/// Default syndication base URL.
pub const DEFAULT_SYNDICATION_BASE: &str = "https://cdn.syndication.twimg.com";
/// Default number of attempts per request (the first try included).
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default delay before the first retry; it doubles with every further retry.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(200);
/// Default upper bound of a single backoff delay.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);
/// Default timeout of one HTTP request, body included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body accepted; real answers are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The `features` parameter X's embed widget sends; among others it switches
/// on `edit_control` in the answer, which the edit rules rely on.
const SYNDICATION_FEATURES: &str = "tfw_timeline_list:;tfw_follower_count_sunset:true;\
tfw_tweet_edit_backend:on;tfw_refsrc_session:on;tfw_fosnr_soft_interventions_enabled:on;\
tfw_show_birdwatch_pivots_enabled:on;tfw_show_business_verified_badge:on;\
tfw_duplicate_scribes_to_settings:on;tfw_use_profile_image_shape_enabled:on;\
tfw_show_blue_verified_badge:on;tfw_legacy_timeline_sunset:true;tfw_show_gov_verified_badge:on;\
tfw_show_business_affiliate_badge:on;tfw_tweet_edit_frontend:on";

/// Which of X's endpoints an answer or a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `publish.twitter.com/oembed`.
    OEmbed,
    /// `cdn.syndication.twimg.com/tweet-result`.
    Syndication,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::OEmbed => "X oEmbed endpoint",
            Endpoint::Syndication => "X syndication endpoint",
        })
    }
}

/// A request to X that did not produce a usable answer.
///
/// Messages never contain request URLs, so nothing derived from them (such as
/// the syndication token) ends up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Every attempt timed out, failed to connect, or got 5xx or 429.
    #[error("{endpoint} unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// The endpoint that failed.
        endpoint: Endpoint,
        /// How many requests were made.
        attempts: u32,
        /// Why the last attempt failed (`timed out`, `HTTP 503`, …).
        reason: String,
    },
    /// A status that retrying will not fix and that has no meaning for a proof.
    #[error("{endpoint} answered HTTP {status}")]
    UnexpectedStatus {
        /// The endpoint that answered.
        endpoint: Endpoint,
        /// The HTTP status code.
        status: u16,
    },
    /// The answer could not be understood.
    #[error("{endpoint} sent a malformed response: {detail}")]
    Malformed {
        /// The endpoint that answered.
        endpoint: Endpoint,
        /// What was wrong with it.
        detail: String,
    },
    /// The request could not even be built (bad handle, bad base URL, TLS setup).
    #[error("cannot query {endpoint}: {detail}")]
    Setup {
        /// The endpoint concerned.
        endpoint: Endpoint,
        /// What was wrong.
        detail: String,
    },
}

/// A post as the syndication endpoint describes it (the fields Cairn uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyndicationTweet {
    /// The post id.
    pub id_str: String,
    /// The post text, HTML-escaped (`&amp;`, `&lt;`, `&gt;`), links as t.co.
    pub text: String,
    /// Creation time of this version, ISO 8601 UTC.
    pub created_at: String,
    /// The author; absent for posts of suspended accounts.
    #[serde(default)]
    pub user: Option<SyndicationUser>,
    /// Links and other entities of the text.
    #[serde(default)]
    pub entities: Entities,
    /// Edit history, for posts created since edits exist.
    #[serde(default)]
    pub edit_control: Option<EditControl>,
    /// Whether X says the post has been edited.
    #[serde(default, rename = "isEdited")]
    pub is_edited: bool,
    /// Whether this answer is an older version of an edited post.
    #[serde(default, rename = "isStaleEdit")]
    pub is_stale_edit: bool,
}

/// The author of a post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyndicationUser {
    /// The stable numeric user id (`x_uid`).
    pub id_str: String,
    /// The current handle, without `@`.
    pub screen_name: String,
    /// The display name.
    #[serde(default)]
    pub name: String,
    /// Whether the account's posts are visible to followers only.
    #[serde(default)]
    pub protected: bool,
}

/// Entities of a post text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entities {
    /// Links, each rewritten by X to a t.co URL in the text.
    #[serde(default)]
    pub urls: Vec<UrlEntity>,
}

/// One link in a post text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlEntity {
    /// The t.co URL that appears in `text`.
    pub url: String,
    /// The URL the author wrote.
    #[serde(default)]
    pub expanded_url: Option<String>,
    /// The shortened form shown to readers.
    #[serde(default)]
    pub display_url: Option<String>,
}

/// Edit metadata. The initial version carries `edit_tweet_ids` directly; later
/// versions carry `initial_tweet_id` and `edit_control_initial.edit_tweet_ids`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditControl {
    /// Ids of all versions, oldest first (on the initial version).
    #[serde(default)]
    pub edit_tweet_ids: Option<Vec<String>>,
    /// Id of the initial version (on later versions).
    #[serde(default)]
    pub initial_tweet_id: Option<String>,
    /// The initial version's edit metadata (on later versions).
    #[serde(default)]
    pub edit_control_initial: Option<EditControlInitial>,
}

/// The edit metadata of an initial version, as nested in later versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditControlInitial {
    /// Ids of all versions, oldest first.
    #[serde(default)]
    pub edit_tweet_ids: Vec<String>,
}

impl SyndicationTweet {
    /// Ids of all versions of this post, oldest first; just this id when the
    /// answer has no edit history.
    pub fn edit_chain(&self) -> Vec<String> {
        let chain = self.edit_control.as_ref().and_then(|ec| {
            ec.edit_tweet_ids.clone().or_else(|| {
                ec.edit_control_initial
                    .as_ref()
                    .map(|i| i.edit_tweet_ids.clone())
            })
        });
        match chain {
            Some(ids) if !ids.is_empty() => ids,
            _ => vec![self.id_str.clone()],
        }
    }
}

/// The syndication endpoint's verdict on a post id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyndicationLookup {
    /// The post is visible.
    Found(Box<SyndicationTweet>),
    /// No such post (HTTP 404 or an empty answer).
    NotFound,
    /// X shows a tombstone instead of the post (deleted, or withheld from
    /// signed-out readers); `text` is X's explanation when given.
    Tombstone {
        /// X's explanation, e.g. "This Post was deleted by the Post author."
        text: Option<String>,
    },
}

/// A post as the oEmbed endpoint describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OEmbedPost {
    /// The author's display name.
    #[serde(default)]
    pub author_name: String,
    /// The author's profile URL (`https://twitter.com/{handle}`).
    pub author_url: String,
    /// The embed HTML with the post text.
    pub html: String,
    /// The canonical post URL.
    #[serde(default)]
    pub url: Option<String>,
}

/// The oEmbed endpoint's verdict on a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OEmbedLookup {
    /// The post is visible.
    Found(OEmbedPost),
    /// No such post (HTTP 404).
    NotFound,
    /// The post exists but is not public (HTTP 403: protected account).
    Forbidden,
}

/// Read access to X posts. [`PublicXClient`] is the real one; tests and other
/// deployments may plug in their own.
#[async_trait]
pub trait XClient: Send + Sync {
    /// Looks a post up on the syndication endpoint.
    async fn syndication(&self, post_id: u64) -> Result<SyndicationLookup, FetchError>;

    /// Looks a post up on the oEmbed endpoint. `handle` only forms the post
    /// URL; X resolves the post by id and reports the real author.
    async fn oembed(&self, handle: &str, post_id: u64) -> Result<OEmbedLookup, FetchError>;
}

/// Lets a shared client (`Arc<dyn XClient>`) drive a [`ProofChecker`](super::ProofChecker).
#[async_trait]
impl<T: XClient + ?Sized> XClient for std::sync::Arc<T> {
    async fn syndication(&self, post_id: u64) -> Result<SyndicationLookup, FetchError> {
        (**self).syndication(post_id).await
    }

    async fn oembed(&self, handle: &str, post_id: u64) -> Result<OEmbedLookup, FetchError> {
        (**self).oembed(handle, post_id).await
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request, the first included (at least 1).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Upper bound of a single delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Configuration of [`PublicXClient`].
#[derive(Debug, Clone)]
pub struct XClientConfig {
    /// Base URL of the oEmbed endpoint (`/oembed` is appended).
    pub oembed_base: Url,
    /// Base URL of the syndication endpoint (`/tweet-result` is appended).
    pub syndication_base: Url,
    /// Timeout of one request, body included.
    pub request_timeout: Duration,
    /// Retries of timeouts, connection failures, 5xx and 429.
    pub retry: RetryPolicy,
    /// `User-Agent` header sent with every request.
    pub user_agent: String,
}

impl Default for XClientConfig {
    fn default() -> Self {
        Self {
            oembed_base: Url::parse(DEFAULT_OEMBED_BASE).expect("valid default URL"),
            syndication_base: Url::parse(DEFAULT_SYNDICATION_BASE).expect("valid default URL"),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            user_agent: concat!("cairn/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// [`XClient`] over HTTPS to X's public endpoints (or to whatever the base URLs name).
#[derive(Debug, Clone)]
pub struct PublicXClient {
    http: reqwest::Client,
    config: XClientConfig,
}

/// What one attempt produced.
enum Attempt {
    /// A final answer: status and body.
    Answer(u16, Vec<u8>),
    /// A failure worth retrying, with its description.
    Retry(String),
}

impl PublicXClient {
    /// Builds a client. Fails only if the HTTP stack cannot be set up.
    pub fn new(config: XClientConfig) -> Result<Self, FetchError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(config.user_agent.clone())
            // X's answers are not redirects; following one could leave X's hosts.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FetchError::Setup {
                endpoint: Endpoint::Syndication,
                detail: e.without_url().to_string(),
            })?;
        Ok(Self { http, config })
    }

    /// The configuration in use.
    pub fn config(&self) -> &XClientConfig {
        &self.config
    }

    fn endpoint_url(base: &Url, path: &str, endpoint: Endpoint) -> Result<Url, FetchError> {
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|()| FetchError::Setup {
                endpoint,
                detail: "base URL cannot have a path".into(),
            })?
            .pop_if_empty()
            .push(path);
        Ok(url)
    }

    /// Performs GET `url` with retries; returns the first non-retryable answer.
    async fn get(&self, url: Url, endpoint: Endpoint) -> Result<(u16, Vec<u8>), FetchError> {
        let attempts = self.config.retry.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.attempt(url.clone()).await {
                Attempt::Answer(status, body) => return Ok((status, body)),
                Attempt::Retry(reason) => last = reason,
            }
            if attempt < attempts {
                tokio::time::sleep(self.config.retry.delay_after(attempt)).await;
            }
        }
        Err(FetchError::Unavailable {
            endpoint,
            attempts,
            reason: last,
        })
    }

    async fn attempt(&self, url: Url) -> Attempt {
        let mut response = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(describe(&e)),
        };
        let status = response.status().as_u16();
        if status == 429 {
            return Attempt::Retry("HTTP 429 (rate limited)".into());
        }
        if (500..600).contains(&status) {
            return Attempt::Retry(format!("HTTP {status}"));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        // Not retried: the same request will send the same oversized body.
                        return Attempt::Answer(status, b"<oversized>".to_vec());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Attempt::Answer(status, body),
                Err(e) => return Attempt::Retry(describe(&e)),
            }
        }
    }
}

/// A description of a transport error without its URL.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() {
        "response body interrupted".into()
    } else {
        "request failed".into()
    }
}

/// Interprets a syndication answer.
pub fn parse_syndication(status: u16, body: &[u8]) -> Result<SyndicationLookup, FetchError> {
    let endpoint = Endpoint::Syndication;
    match status {
        200 => {}
        404 => return Ok(SyndicationLookup::NotFound),
        _ => return Err(FetchError::UnexpectedStatus { endpoint, status }),
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| FetchError::Malformed {
            endpoint,
            detail: format!("not JSON: {e}"),
        })?;
    let Some(object) = value.as_object() else {
        return Err(FetchError::Malformed {
            endpoint,
            detail: "not a JSON object".into(),
        });
    };
    if object.is_empty() {
        return Ok(SyndicationLookup::NotFound);
    }
    if value.get("__typename").and_then(|t| t.as_str()) == Some("TweetTombstone") {
        let text = value
            .pointer("/tombstone/text/text")
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        return Ok(SyndicationLookup::Tombstone { text });
    }
    let tweet: SyndicationTweet =
        serde_json::from_value(value).map_err(|e| FetchError::Malformed {
            endpoint,
            detail: format!("unexpected post shape: {e}"),
        })?;
    Ok(SyndicationLookup::Found(Box::new(tweet)))
}

/// Interprets an oEmbed answer.
pub fn parse_oembed(status: u16, body: &[u8]) -> Result<OEmbedLookup, FetchError> {
    let endpoint = Endpoint::OEmbed;
    match status {
        200 => serde_json::from_slice(body)
            .map(OEmbedLookup::Found)
            .map_err(|e| FetchError::Malformed {
                endpoint,
                detail: format!("unexpected oEmbed shape: {e}"),
            }),
        404 => Ok(OEmbedLookup::NotFound),
        403 => Ok(OEmbedLookup::Forbidden),
        _ => Err(FetchError::UnexpectedStatus { endpoint, status }),
    }
}

#[async_trait]
impl XClient for PublicXClient {
    async fn syndication(&self, post_id: u64) -> Result<SyndicationLookup, FetchError> {
        let endpoint = Endpoint::Syndication;
        let post_id = post_id.to_string();
        let token = syndication_token(&post_id).unwrap_or_default();
        let mut url = Self::endpoint_url(&self.config.syndication_base, "tweet-result", endpoint)?;
        url.query_pairs_mut()
            .append_pair("id", &post_id)
            .append_pair("lang", "en")
            .append_pair("features", SYNDICATION_FEATURES)
            .append_pair("token", &token);
        let (status, body) = self.get(url, endpoint).await?;
        parse_syndication(status, &body)
    }

    async fn oembed(&self, handle: &str, post_id: u64) -> Result<OEmbedLookup, FetchError> {
        let endpoint = Endpoint::OEmbed;
        if !super::text::is_valid_handle(handle) {
            return Err(FetchError::Setup {
                endpoint,
                detail: "handle must be letters, digits or '_'".into(),
            });
        }
        let mut url = Self::endpoint_url(&self.config.oembed_base, "oembed", endpoint)?;
        url.query_pairs_mut()
            .append_pair(
                "url",
                &format!("https://twitter.com/{handle}/status/{post_id}"),
            )
            .append_pair("omit_script", "true")
            .append_pair("dnt", "true");
        let (status, body) = self.get(url, endpoint).await?;
        parse_oembed(status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(500),
        };
        assert_eq!(policy.delay_after(1), Duration::from_millis(200));
        assert_eq!(policy.delay_after(2), Duration::from_millis(400));
        assert_eq!(policy.delay_after(3), Duration::from_millis(500));
        assert_eq!(policy.delay_after(40), Duration::from_millis(500));
    }

    #[test]
    fn endpoint_urls_keep_base_paths() {
        let base = Url::parse("http://127.0.0.1:9/x/").unwrap();
        let url = PublicXClient::endpoint_url(&base, "oembed", Endpoint::OEmbed).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/x/oembed");
        let base = Url::parse("https://cdn.syndication.twimg.com").unwrap();
        let url =
            PublicXClient::endpoint_url(&base, "tweet-result", Endpoint::Syndication).unwrap();
        assert_eq!(
            url.as_str(),
            "https://cdn.syndication.twimg.com/tweet-result"
        );
    }

    #[test]
    fn parses_tombstones_and_empty_answers() {
        let tomb = br#"{"__typename":"TweetTombstone","tombstone":{"text":{"text":"This Post was deleted by the Post author. Learn more","entities":[],"rtl":false}}}"#;
        assert_eq!(
            parse_syndication(200, tomb).unwrap(),
            SyndicationLookup::Tombstone {
                text: Some("This Post was deleted by the Post author. Learn more".into())
            }
        );
        assert_eq!(
            parse_syndication(200, br#"{"__typename":"TweetTombstone","tombstone":{}}"#).unwrap(),
            SyndicationLookup::Tombstone { text: None }
        );
        assert_eq!(
            parse_syndication(200, b"{}").unwrap(),
            SyndicationLookup::NotFound
        );
        assert_eq!(
            parse_syndication(404, b"<html>").unwrap(),
            SyndicationLookup::NotFound
        );
        assert!(matches!(
            parse_syndication(200, b"<html>"),
            Err(FetchError::Malformed { .. })
        ));
        assert_eq!(
            parse_syndication(401, b""),
            Err(FetchError::UnexpectedStatus {
                endpoint: Endpoint::Syndication,
                status: 401
            })
        );
    }

    #[test]
    fn reads_both_edit_control_shapes() {
        let initial = br#"{"id_str":"10","text":"a","created_at":"2026-01-01T00:00:00.000Z","edit_control":{"edit_tweet_ids":["10","11"],"editable_until_msecs":"1","is_edit_eligible":true,"edits_remaining":"4"}}"#;
        let later = br#"{"id_str":"11","text":"b","created_at":"2026-01-01T00:01:00.000Z","edit_control":{"initial_tweet_id":"10","edit_control_initial":{"edit_tweet_ids":["10","11"],"editable_until_msecs":"1","is_edit_eligible":true,"edits_remaining":"4"}}}"#;
        let plain = br#"{"id_str":"12","text":"c","created_at":"2026-01-01T00:01:00.000Z"}"#;
        for (body, chain) in [
            (&initial[..], vec!["10", "11"]),
            (&later[..], vec!["10", "11"]),
            (&plain[..], vec!["12"]),
        ] {
            let SyndicationLookup::Found(t) = parse_syndication(200, body).unwrap() else {
                panic!("expected a post");
            };
            assert_eq!(t.edit_chain(), chain);
        }
    }

    #[test]
    fn parses_oembed_statuses() {
        assert_eq!(parse_oembed(404, b"").unwrap(), OEmbedLookup::NotFound);
        assert_eq!(parse_oembed(403, b"").unwrap(), OEmbedLookup::Forbidden);
        let ok = br#"{"url":"https://twitter.com/jack/status/20","author_name":"jack","author_url":"https://twitter.com/jack","html":"<blockquote class=\"twitter-tweet\"><p lang=\"en\" dir=\"ltr\">just setting up my twttr</p>&mdash; jack (@jack) <a href=\"https://twitter.com/jack/status/20?ref_src=twsrc%5Etfw\">March 21, 2006</a></blockquote>\n","width":550,"height":null,"type":"rich","cache_age":"3153600000","provider_name":"Twitter","provider_url":"https://twitter.com","version":"1.0"}"#;
        let OEmbedLookup::Found(post) = parse_oembed(200, ok).unwrap() else {
            panic!("expected a post");
        };
        assert_eq!(post.author_url, "https://twitter.com/jack");
        assert!(matches!(
            parse_oembed(500, b""),
            Err(FetchError::UnexpectedStatus { .. })
        ));
    }
}
