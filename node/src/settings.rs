//! Node settings: defaults, then `cairn.toml`, then `CAIRN_*` environment
//! variables, then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_relay::config::RelayConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Default listening address.
pub const DEFAULT_BIND: &str = "127.0.0.1:7777";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./cairn-data";
/// Default config file looked for in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "cairn.toml";
/// SQLite file name inside the data directory.
pub const SQLITE_FILE: &str = "cairn.db";

/// All settings of a Cairn node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP/WebSocket server listens on (port 0: any free port).
    pub bind: SocketAddr,
    /// Where the node keeps its files (the SQLite database by default).
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; default: SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Seconds between purges of expired (NIP-40) events.
    pub expiration_purge_interval_secs: u64,
    /// The relay: NIP-11 identity, limits, rate limits, inbox policy.
    pub relay: RelayConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.parse().expect("valid default bind address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database_url: None,
            expiration_purge_interval_secs: 60,
            relay: RelayConfig::default(),
        }
    }
}

impl Settings {
    /// Load settings: defaults, then the TOML file (the given one must exist;
    /// without one, `./cairn.toml` is read if present), then `CAIRN_*`
    /// variables (`__` separates sections, e.g. `CAIRN_RELAY__LIMITS__MAX_LIMIT=100`).
    pub fn load(config_file: Option<&Path>) -> Result<Self, figment::Error> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match config_file {
            Some(path) => {
                if !path.exists() {
                    return Err(figment::Error::from(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE)),
        }
        figment.merge(Env::prefixed("CAIRN_").split("__")).extract()
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join(SQLITE_FILE).display()),
        }
    }
}
