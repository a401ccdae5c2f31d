//! The `[outbox]` settings section: how the node delivers the messages its
//! owner sends (see `node/src/outbox` and the README's "Outbox" section).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outbox::schedule::Backoff;
use crate::outbox::worker::WorkerConfig;

/// Default time to live of a queued message: a week.
pub const DEFAULT_TTL_SECS: u64 = 7 * 86_400;
/// Default time finished items (every delivery delivered, failed or
/// expired) are kept after their time to live ends: 30 days.
pub const DEFAULT_RETENTION_SECS: u64 = 30 * 86_400;
/// Default delay before the first retry.
pub const DEFAULT_RETRY_INITIAL_SECS: u64 = 10;
/// Default longest delay between retries.
pub const DEFAULT_RETRY_MAX_SECS: u64 = 3_600;
/// Default number of relays (connections) served at once.
pub const DEFAULT_MAX_RELAYS: usize = 16;
/// Default number of events waiting for their `OK` on one connection.
pub const DEFAULT_IN_FLIGHT: usize = 8;
/// Default rows loaded at a time per relay.
pub const DEFAULT_BATCH: usize = 100;
/// Default claim on loaded rows.
pub const DEFAULT_CLAIM_SECS: u64 = 60;
/// Default seconds between checks of the owner's published inbox list.
pub const DEFAULT_INBOX_LIST_CHECK_SECS: u64 = 600;
/// Default bound on connecting and on each `OK`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// `[outbox]`: the durable outbox and its delivery worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Run the outbox (its admin API and its delivery worker).
    pub enabled: bool,
    /// The owner's secret key (nsec1… or hex, mode 0600). With it the node
    /// signs NIP-42 AUTH as the owner, publishes the owner's kind 10050
    /// inbox list, and names this node in its NIP-05 answers for the
    /// owner's verified names. Without it AUTH is signed with a key of the
    /// running process and no list is published.
    pub key_file: Option<PathBuf>,
    /// Seconds a message is tried before it is given up as expired.
    pub ttl_secs: u64,
    /// Seconds a finished item (no delivery queued or retrying) is kept
    /// after its time to live ended, for `msg outbox`; then the worker
    /// deletes it. 0 keeps them forever.
    pub retention_secs: u64,
    /// Delay before the first retry; it doubles on each failed try.
    pub retry_initial_secs: u64,
    /// Longest delay between two tries.
    pub retry_max_secs: u64,
    /// Most relays (connections) served at once.
    pub max_relays: usize,
    /// Most events waiting for their `OK` on one connection.
    pub in_flight: usize,
    /// Deliveries loaded from the database at a time, per relay.
    pub batch: usize,
    /// Seconds loaded deliveries stay claimed by this process (another
    /// process on the same Postgres leaves them alone; after a crash they
    /// are tried again then).
    pub claim_secs: u64,
    /// Seconds allowed for connecting to a relay and for each `OK`.
    pub timeout_secs: u64,
    /// Pause between two events sent on one connection, in milliseconds.
    pub send_interval_ms: u64,
    /// Relays where recipients' inbox lists (kind 10050) are looked up,
    /// besides this node's relay and the relays their NIP-05 answer lists.
    pub lookup_relays: Vec<String>,
    /// Further inbox relays of the owner, listed after this node in the
    /// owner's kind 10050 (the copy to self goes there too).
    pub inbox_relays: Vec<String>,
    /// Public relays the owner's kind 10050 is published to, besides this
    /// node's relay and the inbox relays.
    pub publish_relays: Vec<String>,
    /// Seconds between two checks that this node's relay holds the owner's
    /// kind 10050 as configured (republished to every target when missing
    /// or different; see `crate::outbox::check_inbox_list`); 0: only at
    /// start.
    pub inbox_list_check_secs: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key_file: None,
            ttl_secs: DEFAULT_TTL_SECS,
            retention_secs: DEFAULT_RETENTION_SECS,
            retry_initial_secs: DEFAULT_RETRY_INITIAL_SECS,
            retry_max_secs: DEFAULT_RETRY_MAX_SECS,
            max_relays: DEFAULT_MAX_RELAYS,
            in_flight: DEFAULT_IN_FLIGHT,
            batch: DEFAULT_BATCH,
            claim_secs: DEFAULT_CLAIM_SECS,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            send_interval_ms: 0,
            lookup_relays: Vec::new(),
            inbox_relays: Vec::new(),
            publish_relays: Vec::new(),
            inbox_list_check_secs: DEFAULT_INBOX_LIST_CHECK_SECS,
        }
    }
}

impl OutboxSettings {
    /// The worker's pacing.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            backoff: Backoff {
                initial: Duration::from_secs(self.retry_initial_secs),
                max: Duration::from_secs(self.retry_max_secs),
            },
            max_relays: self.max_relays.max(1),
            in_flight: self.in_flight.max(1),
            batch: self.batch.max(1),
            claim: Duration::from_secs(self.claim_secs.max(1)),
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            send_interval: Duration::from_millis(self.send_interval_ms),
            retention: (self.retention_secs > 0).then(|| Duration::from_secs(self.retention_secs)),
        }
    }
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::Path;

    use crate::settings::Settings;

    #[test]
    fn outbox_settings_load_from_toml() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "o.toml",
                "[outbox]\nttl_secs = 60\nretry_initial_secs = 1\nretry_max_secs = 2\n\
                 lookup_relays = [\"wss://a.example\"]\n",
            )?;
            let s = Settings::load(Some(Path::new("o.toml"))).expect("loads");
            assert!(s.outbox.enabled);
            assert_eq!(s.outbox.ttl_secs, 60);
            assert_eq!(s.outbox.lookup_relays, vec!["wss://a.example".to_owned()]);
            let w = s.outbox.worker_config();
            assert_eq!(w.backoff.max.as_secs(), 2);
            jail.create_file("bad.toml", "[outbox]\nttl = 60\n")?;
            assert!(Settings::load(Some(Path::new("bad.toml"))).is_err());
            Ok(())
        });
    }
}
