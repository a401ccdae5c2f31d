//! The `[metrics]` settings section: where Prometheus metrics are served.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Prometheus metrics (see `docs/operations.md` for the list), served at
/// `http://<bind>/metrics` on their own listener, apart from the public
/// port: they describe the node's traffic and balances, which is the
/// operator's business only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address of the metrics listener, e.g. `127.0.0.1:9464`. Unset (the
    /// default): no metrics are recorded or served.
    pub bind: Option<SocketAddr>,
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::Path;

    use cairn_relay::retention::Keep;

    use crate::settings::Settings;

    /// The operations sections as an operator writes them: metrics on, and
    /// retention by class, by kind number and by size.
    #[test]
    fn metrics_and_retention_load_from_toml() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ops.toml",
                "[metrics]\nbind = \"127.0.0.1:9464\"\n\
                 [relay.retention]\ngift_wraps = \"30d\"\nregular = \"12h\"\n\
                 max_db_bytes = 1000000\n\
                 [relay.retention.kinds]\n1 = \"forever\"\n7 = 3600\n",
            )?;
            let s = Settings::load(Some(Path::new("ops.toml"))).expect("loads");
            assert_eq!(s.metrics.bind, Some("127.0.0.1:9464".parse().unwrap()));
            let r = &s.relay.retention;
            assert_eq!(r.gift_wraps, Keep::Seconds(30 * 86_400));
            assert_eq!(r.regular, Keep::Seconds(12 * 3_600));
            assert_eq!(r.kinds.get(&1), Some(&Keep::Forever));
            assert_eq!(r.kinds.get(&7), Some(&Keep::Seconds(3_600)));
            assert_eq!(r.max_db_bytes, Some(1_000_000));
            Ok(())
        });
    }

    #[test]
    fn a_bad_duration_is_refused_with_the_reason() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[relay.retention]\ngift_wraps = \"30y\"\n")?;
            let err = Settings::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(err.to_string().contains("unknown unit"), "{err}");
            Ok(())
        });
    }
}
