//! `[[sync]]`: reconciliations with other relays that `cairn serve` runs
//! on a timer (see [`crate::sync::scheduled`] and docs/sync.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sync::Direction;

/// Default seconds between two runs of one sync.
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
/// Default bound on one run.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// One `[[sync]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// The relay to reconcile with (`ws://` or `wss://`).
    pub relay: String,
    /// The events to reconcile: a NIP-01 filter as a TOML table
    /// (`filter = { kinds = [1, 1059] }`) or as a JSON string; default all.
    #[serde(default = "all_events")]
    pub filter: serde_json::Value,
    /// Seconds from the end of a run that worked to the start of the next;
    /// failed runs are retried with backoff from this up to
    /// `max(interval_secs, 1 h)`.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// `pull`, `push` or `both`.
    #[serde(default = "default_direction")]
    pub direction: Direction,
    /// Longest one run may take; a run past it is stopped and counts as
    /// failed.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The key that answers AUTH (and whose gift wraps are reconciled);
    /// default `[outbox] key_file`, the owner's; without either, no AUTH.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn all_events() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn default_interval() -> u64 {
    DEFAULT_INTERVAL_SECS
}

fn default_direction() -> Direction {
    Direction::Both
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

impl SyncSettings {
    /// The filter, checked: a JSON string is parsed first.
    pub fn filter(&self) -> Result<nostr::Filter, String> {
        use nostr::JsonUtil as _;
        let json = match &self.filter {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        nostr::Filter::from_json(&json).map_err(|e| {
            format!(
                "[[sync]] {}: filter is not a NIP-01 filter: {e}",
                self.relay
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_or_a_json_string_is_a_filter_and_defaults_apply() {
        #[derive(Deserialize)]
        struct File {
            sync: Vec<SyncSettings>,
        }
        use figment::providers::{Format as _, Toml};
        let file: File = figment::Figment::from(Toml::string(
            r#"
            [[sync]]
            relay = "ws://a"
            filter = { kinds = [1, 1059], limit = 10 }
            direction = "pull"
            [[sync]]
            relay = "ws://b"
            filter = '{"authors":["79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"]}'
            [[sync]]
            relay = "ws://c"
            filter = { kinds = "one" }
            "#,
        ))
        .extract()
        .unwrap();
        let [a, b, c] = &file.sync[..] else {
            panic!("three entries")
        };
        let fa = a.filter().unwrap();
        assert_eq!(fa.limit, Some(10));
        assert_eq!(fa.kinds.as_ref().map(|k| k.len()), Some(2));
        assert_eq!(a.direction, Direction::Pull);
        assert_eq!(
            b.filter().unwrap().authors.as_ref().map(|a| a.len()),
            Some(1)
        );
        assert_eq!(b.direction, Direction::Both);
        assert_eq!(b.interval_secs, DEFAULT_INTERVAL_SECS);
        assert_eq!(b.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert!(c.filter().is_err());
    }
}
