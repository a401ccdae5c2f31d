//! An HTTP client for the node's admin API (`/admin/v1/…`, see
//! docs/admin-api.md), used by `cairn wallet|ln|nwc` and by other
//! commands that pay through the local node.
//!
//! The token comes from a file (default `<data_dir>/admin.token`, refused when
//! others can read it) or from `CAIRN_ADMIN_TOKEN`; it is sent only in the
//! `Authorization` header and never printed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::admin_token::{token_path, AdminToken, ADMIN_TOKEN_ENV};
use crate::settings::Settings;

/// Bound on one admin request: above the node's 60 s wait for a payment's
/// outcome, so that a slow payment is answered (202 pending) rather than cut.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// A non-success answer from the admin API, with the node's message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the node answered {status}: {message}")]
pub struct AdminError {
    /// HTTP status.
    pub status: u16,
    /// The `error` field of the node's JSON answer (or the raw body).
    pub message: String,
}

/// A client for one node's admin API.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: AdminToken,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// `http://<bind>`, with a wildcard bind address (0.0.0.0, ::) replaced by
/// loopback: the CLI runs on the node's machine.
pub fn local_base_url(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, bind.port()))
}

impl AdminClient {
    /// A client for the node at `base_url` (`http(s)://host[:port]`).
    pub fn new(base_url: &str, token: &str) -> Result<Self> {
        let url =
            url::Url::parse(base_url).with_context(|| format!("invalid node URL `{base_url}`"))?;
        ensure!(
            matches!(url.scheme(), "http" | "https"),
            "the node URL must be http:// or https://"
        );
        let token = AdminToken::new(token);
        ensure!(!token.expose().is_empty(), "the admin token is empty");
        let http = reqwest::Client::builder()
            .timeout(ADMIN_REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A client for the node these settings describe: `http://<bind>`, the
    /// token from `token_file`, else from `CAIRN_ADMIN_TOKEN`, else from
    /// `<data_dir>/admin.token`.
    pub fn from_settings(settings: &Settings, token_file: Option<&Path>) -> Result<Self> {
        let token = match token_file {
            Some(path) => AdminToken::load(path)?,
            None => match std::env::var(ADMIN_TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => AdminToken::new(&t),
                _ => {
                    let path = token_path(&settings.data_dir);
                    AdminToken::load(&path).with_context(|| {
                        format!(
                            "no admin token: is the node running (`cairn serve`, with [outbox] or [payments] enabled) with \
                             data_dir {}? (or set {ADMIN_TOKEN_ENV})",
                            settings.data_dir.display()
                        )
                    })?
                }
            },
        };
        Self::new(&local_base_url(settings.bind), token.expose())
    }

    /// The node's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let resp = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the node at {}: {e}", self.base))?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the node's answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(AdminError {
                status: status.as_u16(),
                message,
            }
            .into());
        }
        // Empty bodies (204) deserialize as JSON null.
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).context("unexpected answer from the node")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` (e.g. `/admin/v1/wallet/balance`).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.http.get(self.url(path))).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call(self.http.post(self.url(path)).json(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.call::<Value>(self.http.delete(self.url(path)))
            .await
            .map(|_| ())
    }
}

/// How the payment commands reach the node: `--config`/`--data-dir` name the
/// node's settings (for its address and token file), `--node` overrides the
/// address, `--token-file` the token (or `CAIRN_ADMIN_TOKEN`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// The node's TOML config file (default: ./cairn.toml if it exists).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The node's data directory (holds admin.token and the seed).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// The node's URL (default: http://<bind> from its settings).
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// File holding the admin token (default: <data_dir>/admin.token).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The node's settings, with `--data-dir` applied.
    pub fn settings(&self) -> Result<Settings> {
        let mut settings = Settings::load(self.config.as_deref())
            .map_err(|e| anyhow!("invalid configuration: {e}"))?;
        if let Some(dir) = &self.data_dir {
            settings.data_dir = dir.clone();
        }
        Ok(settings)
    }

    /// A client for the node these arguments name.
    pub fn client(&self) -> Result<AdminClient> {
        let settings = self.settings()?;
        match &self.node {
            None => AdminClient::from_settings(&settings, self.token_file.as_deref()),
            Some(url) => {
                let from_file = AdminClient::from_settings(&settings, self.token_file.as_deref())?;
                AdminClient::new(url, from_file.token.expose())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_become_loopback() {
        assert_eq!(
            local_base_url("0.0.0.0:7777".parse().unwrap()),
            "http://127.0.0.1:7777"
        );
        assert_eq!(
            local_base_url("[::]:7777".parse().unwrap()),
            "http://[::1]:7777"
        );
        assert_eq!(
            local_base_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let c = AdminClient::new("http://127.0.0.1:1", "s3cr3t-token").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(AdminClient::new("ftp://x", "t").is_err());
        assert!(AdminClient::new("http://x", " ").is_err());
    }
}
