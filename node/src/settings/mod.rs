//! Node settings (`Settings`): defaults, then `cairn.toml`, then `CAIRN_*`
//! environment variables, then command-line flags. Each larger section of the
//! file has its own module: `[bitcoin]`, `[identity]`, `[payments]`, `[zaps]`, `[metrics]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_relay::config::RelayConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub mod bitcoin;
pub mod identity;
pub mod metrics;
pub mod outbox;
pub mod payments;
pub mod sync;
pub mod zaps;

pub use self::bitcoin::BitcoinSettings;
pub use self::identity::IdentitySettings;
pub use self::metrics::MetricsSettings;
pub use self::outbox::OutboxSettings;
pub use self::payments::PaymentsSettings;
pub use self::zaps::ZapSettings;

/// Default listening address.
pub const DEFAULT_BIND: &str = "127.0.0.1:7777";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./cairn-data";
/// Default config file looked for in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "cairn.toml";
/// SQLite file name inside the data directory.
pub const SQLITE_FILE: &str = "cairn.db";

/// Top-level setting names, as `CAIRN_<NAME>` variables may spell them.
const SETTING_NAMES: &[&str] = &[
    "bind",
    "data_dir",
    "database_url",
    "expiration_purge_interval_secs",
    "relay",
    "bitcoin",
    "identity",
    "payments",
    "zaps",
    "metrics",
    "outbox",
    "sync",
];

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
    /// The Bitcoin network and node shared by anchoring and payments.
    pub bitcoin: BitcoinSettings,
    /// The identity witness and registry (off by default).
    pub identity: IdentitySettings,
    /// Wallet, Lightning node, NWC and admin API (off by default).
    pub payments: PaymentsSettings,
    /// Payments to verified names: LNURL-pay, zaps, on-chain (off by default).
    pub zaps: ZapSettings,
    /// Prometheus metrics on their own listener (off by default).
    pub metrics: MetricsSettings,
    /// The durable outbox of the owner's messages and its delivery worker.
    pub outbox: OutboxSettings,
    /// `[[sync]]`: reconciliations with other relays run on a timer.
    pub sync: Vec<sync::SyncSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.parse().expect("valid default bind address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database_url: None,
            expiration_purge_interval_secs: 60,
            relay: RelayConfig::default(),
            bitcoin: BitcoinSettings::default(),
            identity: IdentitySettings::default(),
            payments: PaymentsSettings::default(),
            zaps: ZapSettings::default(),
            metrics: MetricsSettings::default(),
            outbox: OutboxSettings::default(),
            sync: Vec::new(),
        }
    }
}

impl Settings {
    /// Load settings: defaults, then the TOML file (the given one must exist;
    /// without one, `./cairn.toml` is read if present), then `CAIRN_*`
    /// variables (`__` separates sections, e.g. `CAIRN_RELAY__LIMITS__MAX_LIMIT=100`).
    pub fn load(config_file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match config_file {
            Some(path) => {
                if !path.exists() {
                    return Err(Box::new(figment::Error::from(format!(
                        "config file {} does not exist",
                        path.display()
                    ))));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        // Only variables naming a setting: others such as CAIRN_TEST_POSTGRES_URL
        // belong to other tools and must not be rejected as unknown fields.
        let env = Env::prefixed("CAIRN_").split("__").filter(|key| {
            // Keys arrive upper-case, with `__` already turned into `.`.
            let key = key.as_str().to_ascii_lowercase();
            let top = key.split('.').next().unwrap_or_default();
            SETTING_NAMES.contains(&top)
        });
        let settings: Self = figment.merge(env).extract().map_err(Box::new)?;
        // Checked here, before anything (payments included) starts.
        settings
            .zaps
            .validate()
            .map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(settings)
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join(SQLITE_FILE).display()),
        }
    }
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "bind = \"127.0.0.1:9000\"\n[relay.limits]\nmax_limit = 42\n",
            )?;
            jail.set_env("CAIRN_DATA_DIR", "/tmp/elsewhere");
            jail.set_env("CAIRN_RELAY__LIMITS__MAX_FILTERS", "3");
            jail.set_env("CAIRN_TEST_POSTGRES_URL", "postgres://ignored");
            let settings = Settings::load(Some(Path::new("custom.toml"))).expect("loads");
            assert_eq!(settings.bind.port(), 9000);
            assert_eq!(settings.relay.limits.max_limit, 42);
            assert_eq!(settings.relay.limits.max_filters, 3);
            assert_eq!(settings.data_dir, PathBuf::from("/tmp/elsewhere"));
            assert_eq!(settings.database_url(), "sqlite:///tmp/elsewhere/cairn.db");
            Ok(())
        });
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_default_file_is_optional() {
        figment::Jail::expect_with(|_jail| {
            assert!(Settings::load(Some(Path::new("nope.toml"))).is_err());
            let settings = Settings::load(None).expect("defaults");
            assert_eq!(settings.bind.to_string(), DEFAULT_BIND);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "bnd = \"127.0.0.1:1\"\n")?;
            assert!(Settings::load(Some(Path::new("bad.toml"))).is_err());
            Ok(())
        });
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The documented example must stay loadable and equal to the defaults,
    /// or it documents something that is not true.
    #[test]
    fn example_config_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cairn.example.toml");
        let loaded: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file_exact(&path))
            .extract()
            .expect("cairn.example.toml loads");
        let defaults = Settings::default();
        assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(&defaults).unwrap()
        );
    }
}
