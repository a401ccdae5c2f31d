//! An HTTP client for a Cairn node's identity API, and what the node says
//! about a handle or key (its word, not a proof: see `cairn verify`).

use anyhow::{anyhow, ensure, Context, Result};
use cairn_identity::service::{BindingState, IdentityView, Standing};
use cairn_identity_core::binding::normalize_handle;
use nostr::PublicKey;
use serde_json::Value;

use super::keys::{npub, parse_public_key};
use super::REQUEST_TIMEOUT;

/// An HTTP client for one node's identity API.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
}

/// What the node answers for a handle or key (`GET /identity/v1/handles|keys/…`).
/// The bundle stays raw JSON so that a malformed one is reported as such
/// (see [`MalformedBundle`]) rather than failing the whole lookup.
pub type StatusView = IdentityView<Value>;

/// What a lookup is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An X handle, normalized (lowercase, no `@`).
    Handle(String),
    /// A Nostr key.
    Key(PublicKey),
}

impl Subject {
    /// `npub1…` or 64 hex digits is a key; anything else must be a handle.
    pub fn parse(input: &str) -> Result<Self> {
        let input = input.trim();
        if input.starts_with("npub1") || (input.len() == 64 && !input.starts_with('@')) {
            return Ok(Self::Key(parse_public_key(input)?));
        }
        normalize_handle(input)
            .map(Self::Handle)
            .map_err(|e| anyhow!("`{input}` is neither a key nor an X handle: {e}"))
    }

    fn path(&self) -> String {
        match self {
            Self::Handle(h) => format!("/identity/v1/handles/{h}"),
            Self::Key(k) => format!("/identity/v1/keys/{}", k.to_hex()),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handle(h) => write!(f, "@{h}"),
            Self::Key(k) => f.write_str(&npub(k)),
        }
    }
}

/// A non-success answer from the node, with its error code.
#[derive(Debug, thiserror::Error)]
#[error("the node answered {status} {code}: {message}")]
pub struct NodeError {
    /// HTTP status.
    pub status: u16,
    /// The API's error code (`not_found`, `refused`, …).
    pub code: String,
    /// Its message.
    pub message: String,
}

impl NodeClient {
    /// A client for the node at `base` (`http(s)://host[:port]`); no request yet.
    pub fn new(base: &str) -> Result<Self> {
        let url = url::Url::parse(base).with_context(|| format!("invalid node URL `{base}`"))?;
        ensure!(
            matches!(url.scheme(), "http" | "https"),
            "the node URL must be http:// or https://"
        );
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T> {
        let resp = request
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach the node at {}", self.base))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the node's answer"))?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(NodeError {
                status: status.as_u16(),
                code: v["error"].as_str().unwrap_or("unknown").to_owned(),
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            })
            .context(what.to_owned());
        }
        serde_json::from_slice(&body).with_context(|| format!("{what}: unexpected answer"))
    }

    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T> {
        self.call(self.http.get(format!("{}{path}", self.base)), what)
            .await
    }

    pub(crate) async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<T> {
        self.call(
            self.http.post(format!("{}{path}", self.base)).json(body),
            what,
        )
        .await
    }
}

/// The node's record for a handle or key.
pub async fn status(node: &NodeClient, subject: &Subject) -> Result<StatusView> {
    node.get(&subject.path(), &format!("looking up {subject}"))
        .await
}

/// `pending`, `anchored (n conf)`, `final`, `moved (to x_uid …)` or `revoked`.
pub fn status_label(v: &StatusView) -> String {
    match v.status {
        Standing::Anchored => format!("anchored ({} conf)", v.confirmations),
        Standing::Final => format!("final ({} conf)", v.confirmations),
        Standing::Moved => match &v.moved_to {
            Some(to) => format!("moved (the handle now belongs to x_uid {to})"),
            None => "moved".into(),
        },
        Standing::Revoked if v.binding == BindingState::Rotated => {
            "revoked (this key was rotated away)".into()
        }
        other => other.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use nostr::Keys;

    use super::*;

    #[test]
    fn subjects() {
        let keys = Keys::generate();
        let pk = keys.public_key();
        assert_eq!(Subject::parse(&npub(&pk)).unwrap(), Subject::Key(pk));
        assert_eq!(Subject::parse(&pk.to_hex()).unwrap(), Subject::Key(pk));
        assert_eq!(
            Subject::parse("@Alice_1").unwrap(),
            Subject::Handle("alice_1".into())
        );
        assert!(Subject::parse("@not a handle").is_err());
    }
}
