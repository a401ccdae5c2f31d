//! Retention: how long stored events are kept, per kind class and per kind,
//! and an optional cap on the database's size; applied in the background by
//! [`purge_once`] and advertised in NIP-11 (`retention`).
//!
//! Rules, most specific first: a kind listed in `kinds` follows its own
//! rule; kind 1059 follows `gift_wraps`; every other kind follows its NIP-01
//! class (`regular`, `replaceable`, `addressable`; ephemeral events are
//! never stored). Age is counted from the event's `created_at`. Everything
//! is kept forever by default.
//!
//! Invariants: a purge deletes at most `batch` events per transaction, so
//! the group-commit writer waits at most one small transaction for it; one
//! pass deletes at most [`MAX_BATCHES_PER_PASS`] batches per rule, so a
//! large backlog is worked off over several passes instead of one long one.
//! The size cap evicts oldest first and only events whose rule is not
//! `forever`: what the operator said to keep forever is never evicted.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use crate::kinds::KIND_GIFT_WRAP;
use crate::store::{PurgeSelection, Store, StoreError};

/// Default seconds between two retention passes.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
/// Default events deleted per transaction.
pub const DEFAULT_BATCH: usize = 500;
/// Most batches one rule may delete in one pass.
pub const MAX_BATCHES_PER_PASS: usize = 20;

/// How long events are kept: `forever`, or a duration such as `30d`, `12h`,
/// `90m`, `3600s` (or a bare number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    /// Never purged by age, never evicted for size.
    #[default]
    Forever,
    /// Purged once older than this many seconds.
    Seconds(u64),
}

impl FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = digits.parse().map_err(|_| {
            format!("{s:?}: expected \"forever\" or a duration like 30d, 12h, 90m, 3600s")
        })?;
        let factor = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use s, m, h, d or w)"
                ))
            }
        };
        n.checked_mul(factor)
            .map(Keep::Seconds)
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Forever => f.write_str("forever"),
            Keep::Seconds(s) if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            Keep::Seconds(s) if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            Keep::Seconds(s) => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Keep {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Seconds(n) => Ok(Keep::Seconds(n)),
        }
    }
}

/// The `[relay.retention]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Kind 1059 gift wraps (private messages).
    pub gift_wraps: Keep,
    /// Other regular kinds (notes, reactions, …).
    pub regular: Keep,
    /// Replaceable kinds (0, 3, 10000–19999): the one current version each.
    pub replaceable: Keep,
    /// Addressable kinds (30000–39999).
    pub addressable: Keep,
    /// Per-kind rules, over the class rules (TOML keys are kind numbers).
    #[serde(deserialize_with = "kind_rules")]
    pub kinds: BTreeMap<u16, Keep>,
    /// Cap on the live bytes of the event database (SQLite only); over it,
    /// the oldest events whose rule is not `forever` are evicted.
    pub max_db_bytes: Option<u64>,
    /// Seconds between passes.
    pub interval_secs: u64,
    /// Events deleted per transaction.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            gift_wraps: Keep::Forever,
            regular: Keep::Forever,
            replaceable: Keep::Forever,
            addressable: Keep::Forever,
            kinds: BTreeMap::new(),
            max_db_bytes: None,
            interval_secs: DEFAULT_INTERVAL_SECS,
            batch: DEFAULT_BATCH,
        }
    }
}

/// `kinds` keys arrive as strings (TOML and environment keys always are):
/// each must be a kind number.
fn kind_rules<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, Keep>, D::Error> {
    BTreeMap::<String, Keep>::deserialize(d)?
        .into_iter()
        .map(|(key, keep)| {
            key.trim()
                .parse::<u16>()
                .map(|kind| (kind, keep))
                .map_err(|_| {
                    serde::de::Error::custom(format!("{key:?} is not a kind number (0-65535)"))
                })
        })
        .collect()
}

/// Inclusive kind ranges of each class (kind 1059 is carved out of
/// `regular` for `gift_wraps`).
const REGULAR: &[(u16, u16)] = &[(1, 2), (4, 9_999), (40_000, u16::MAX)];
const REPLACEABLE: &[(u16, u16)] = &[(0, 0), (3, 3), (10_000, 19_999)];
const ADDRESSABLE: &[(u16, u16)] = &[(30_000, 39_999)];

/// One rule as the store applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Metrics label: `kind`, `gift_wraps`, `regular`, …
    label: &'static str,
    kinds: Vec<(u16, u16)>,
    except: Vec<u16>,
    keep: Keep,
}

impl RetentionConfig {
    /// Whether any rule can delete anything.
    pub fn is_active(&self) -> bool {
        self.rules().iter().any(|r| r.keep != Keep::Forever) || self.max_db_bytes.is_some()
    }

    /// How long events of `kind` are kept: the first rule that covers it
    /// (per-kind rules first), `forever` for a kind no rule covers
    /// (ephemeral kinds are never stored).
    pub fn keep_for(&self, kind: u16) -> Keep {
        self.rules()
            .into_iter()
            .find(|r| {
                !r.except.contains(&kind) && r.kinds.iter().any(|&(a, b)| (a..=b).contains(&kind))
            })
            .map_or(Keep::Forever, |r| r.keep)
    }

    /// Whether an event of `kind` created at `created_at` is already past
    /// its rule at `now`: what the next pass would delete (`created_at`
    /// before `now` minus the time kept), so the relay refuses it when it is
    /// published instead of answering `OK true` and purging it a minute
    /// later.
    pub fn is_past(&self, kind: u16, created_at: u64, now: u64) -> Option<u64> {
        match self.keep_for(kind) {
            Keep::Seconds(keep) if created_at < now.saturating_sub(keep) => Some(keep),
            _ => None,
        }
    }

    /// Every rule, per-kind ones first, each class excluding the kinds with
    /// their own rule.
    fn rules(&self) -> Vec<Rule> {
        let own: Vec<u16> = self.kinds.keys().copied().collect();
        let mut rules: Vec<Rule> = self
            .kinds
            .iter()
            .map(|(&k, &keep)| Rule {
                label: "kind",
                kinds: vec![(k, k)],
                except: Vec::new(),
                keep,
            })
            .collect();
        let class = |label, kinds: &[(u16, u16)], extra: &[u16], keep| {
            let mut except = own.clone();
            except.extend_from_slice(extra);
            Rule {
                label,
                kinds: kinds.to_vec(),
                except,
                keep,
            }
        };
        if !own.contains(&KIND_GIFT_WRAP) {
            rules.push(class(
                "gift_wraps",
                &[(KIND_GIFT_WRAP, KIND_GIFT_WRAP)],
                &[],
                self.gift_wraps,
            ));
        }
        rules.push(class("regular", REGULAR, &[KIND_GIFT_WRAP], self.regular));
        rules.push(class("replaceable", REPLACEABLE, &[], self.replaceable));
        rules.push(class("addressable", ADDRESSABLE, &[], self.addressable));
        rules
    }

    /// NIP-11's `retention`: `[{kinds, time}]`, per-kind rules first, `time`
    /// in seconds or `null` for forever. `None` when everything is kept
    /// forever (nothing to announce).
    pub fn nip11(&self) -> Option<Value> {
        if !self.is_active() {
            return None;
        }
        let entries: Vec<Value> = self
            .rules()
            .into_iter()
            .filter(|r| r.label == "kind" || r.keep != Keep::Forever)
            .map(|r| {
                let kinds: Vec<Value> = r
                    .kinds
                    .iter()
                    .map(|&(a, b)| if a == b { json!(a) } else { json!([a, b]) })
                    .collect();
                let time = match r.keep {
                    Keep::Forever => Value::Null,
                    Keep::Seconds(s) => json!(s),
                };
                json!({"kinds": kinds, "time": time})
            })
            .collect();
        Some(Value::Array(entries))
    }
}

/// What one [`purge_once`] pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Events deleted for their age.
    pub aged: u64,
    /// Events evicted for the size cap.
    pub evicted: u64,
}

/// One retention pass at `now` (Unix seconds): delete what is older than its
/// rule allows, then, over `max_db_bytes`, evict the oldest evictable events.
pub async fn purge_once(
    store: &dyn Store,
    config: &RetentionConfig,
    now: u64,
) -> Result<PurgeReport, StoreError> {
    let batch = config.batch.max(1);
    let mut report = PurgeReport::default();
    let rules = config.rules();
    for rule in rules.iter() {
        let Keep::Seconds(keep) = rule.keep else {
            continue;
        };
        let selection = PurgeSelection {
            kinds: rule.kinds.clone(),
            except: rule.except.clone(),
            created_before: Some(now.saturating_sub(keep)),
        };
        for _ in 0..MAX_BATCHES_PER_PASS {
            let n = store.purge_selected(&selection, batch).await?;
            report.aged += n;
            metrics::counter!(crate::metrics::RETENTION_PURGED, "rule" => rule.label).increment(n);
            if n < batch as u64 {
                break;
            }
        }
    }
    if let Some(cap) = config.max_db_bytes {
        // Evictable: the kinds of every finite rule, minus the kinds whose
        // own rule is forever (they are in `except` of their class already).
        let finite: Vec<&Rule> = rules.iter().filter(|r| r.keep != Keep::Forever).collect();
        for _ in 0..MAX_BATCHES_PER_PASS {
            match store.live_bytes().await? {
                Some(bytes) if bytes > cap => {}
                _ => break,
            }
            let mut deleted = 0;
            for rule in &finite {
                let selection = PurgeSelection {
                    kinds: rule.kinds.clone(),
                    except: rule.except.clone(),
                    created_before: None,
                };
                deleted += store.purge_selected(&selection, batch).await?;
            }
            report.evicted += deleted;
            metrics::counter!(crate::metrics::RETENTION_PURGED, "rule" => "size_cap")
                .increment(deleted);
            if deleted == 0 {
                break;
            }
        }
    }
    Ok(report)
}

/// Runs [`purge_once`] every `interval_secs` until `shutdown` is cancelled.
/// A failed pass is logged and retried at the next tick.
pub async fn run(
    store: std::sync::Arc<dyn Store>,
    config: RetentionConfig,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let every = std::time::Duration::from_secs(config.interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = nostr::Timestamp::now().as_secs();
        match purge_once(&*store, &config, now).await {
            Ok(r) if r.aged + r.evicted > 0 => {
                tracing::info!(
                    aged = r.aged,
                    evicted = r.evicted,
                    "retention purged events"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }
}

/// Checks that `store` can apply `config`: a size cap needs a backend that
/// can measure its live data (SQLite).
pub async fn check_supported(store: &dyn Store, config: &RetentionConfig) -> Result<(), String> {
    if config.max_db_bytes.is_some() {
        match store.live_bytes().await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(
                    "[relay.retention] max_db_bytes needs the SQLite store: Postgres \
                            cannot measure its live data cheaply (use time rules there)"
                        .into(),
                )
            }
            Err(e) => return Err(format!("cannot measure the database size: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("forever".parse::<Keep>(), Ok(Keep::Forever));
        assert_eq!("30d".parse::<Keep>(), Ok(Keep::Seconds(30 * 86_400)));
        assert_eq!("12h".parse::<Keep>(), Ok(Keep::Seconds(12 * 3_600)));
        assert_eq!("90m".parse::<Keep>(), Ok(Keep::Seconds(5_400)));
        assert_eq!("3600".parse::<Keep>(), Ok(Keep::Seconds(3_600)));
        assert_eq!(Keep::Seconds(30 * 86_400).to_string(), "30d");
        assert_eq!(Keep::Seconds(7_200).to_string(), "2h");
        assert_eq!(Keep::Seconds(61).to_string(), "61s");
        for bad in ["", "d", "30y", "-1d", "soon", "99999999999999999999d"] {
            assert!(bad.parse::<Keep>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_keep_everything_and_announce_nothing() {
        let config = RetentionConfig::default();
        assert!(!config.is_active());
        assert_eq!(config.nip11(), None);
    }

    #[test]
    fn nip11_lists_kind_rules_then_finite_classes() {
        let mut config = RetentionConfig {
            gift_wraps: Keep::Seconds(30 * 86_400),
            regular: Keep::Seconds(86_400),
            ..RetentionConfig::default()
        };
        config.kinds.insert(1, Keep::Forever);
        let doc = config.nip11().expect("active");
        assert_eq!(
            doc,
            json!([
                {"kinds": [1], "time": null},
                {"kinds": [1059], "time": 2_592_000},
                {"kinds": [[1, 2], [4, 9999], [40000, 65535]], "time": 86_400},
            ])
        );
    }

    #[test]
    fn classes_exclude_kinds_with_their_own_rule() {
        let mut config = RetentionConfig::default();
        config.kinds.insert(7, Keep::Seconds(60));
        let rules = config.rules();
        let regular = rules
            .iter()
            .find(|r| r.label == "regular")
            .expect("regular");
        assert!(regular.except.contains(&7) && regular.except.contains(&KIND_GIFT_WRAP));
        config.kinds.insert(KIND_GIFT_WRAP, Keep::Forever);
        assert!(!config.rules().iter().any(|r| r.label == "gift_wraps"));
    }
}
