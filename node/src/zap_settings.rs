//! The `[zaps]` settings section: which verified names this node takes
//! Lightning zaps (NIP-57 / LNURL-pay) and on-chain payments for.

use serde::{Deserialize, Serialize};

/// Name payments: LNURL-pay (`/.well-known/lnurlp/<name>`), zaps and
/// `/payments/v1/names/<name>/onchain`.
///
/// The money goes to **this node's wallet**. An identity witness verifies
/// bindings for anyone, so serving payments for every verified name would
/// let the operator collect payments meant for other people. Hence a name is
/// served only when it is listed in `names` *and* has a verified binding on
/// this node (the same lookup as NIP-05); the default, an empty list, turns
/// LNURL off. List only names whose payments this wallet should receive,
/// e.g. the operator's own handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZapSettings {
    /// Handles (without `@`, any case) whose payments this node's wallet accepts.
    pub names: Vec<String>,
    /// Smallest Lightning payment accepted, millisatoshis (LUD-06 `minSendable`).
    pub min_sendable_msat: u64,
    /// Largest Lightning payment accepted, millisatoshis (LUD-06 `maxSendable`).
    pub max_sendable_msat: u64,
}

impl Default for ZapSettings {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            min_sendable_msat: 1_000,
            max_sendable_msat: 100_000_000,
        }
    }
}

impl ZapSettings {
    /// Whether `name` is listed (case-insensitive; a leading `@` is ignored).
    /// Being listed is not enough to be served: the name also needs a
    /// verified binding on this node.
    pub fn lists(&self, name: &str) -> bool {
        let name = name.trim_start_matches('@');
        self.names
            .iter()
            .any(|n| n.trim_start_matches('@').eq_ignore_ascii_case(name))
    }

    /// Checks the amounts make sense (called when the node starts).
    pub fn validate(&self) -> Result<(), String> {
        if self.min_sendable_msat == 0 {
            return Err("[zaps] min_sendable_msat must be at least 1".into());
        }
        if self.min_sendable_msat > self.max_sendable_msat {
            return Err("[zaps] min_sendable_msat is larger than max_sendable_msat".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_serves_nobody_and_lists_are_case_insensitive() {
        let s = ZapSettings::default();
        assert!(!s.lists("alice"));
        assert!(s.validate().is_ok());
        let s = ZapSettings {
            names: vec!["@Alice".into()],
            ..ZapSettings::default()
        };
        assert!(s.lists("alice"));
        assert!(s.lists("ALICE"));
        assert!(!s.lists("bob"));
        let bad = ZapSettings {
            min_sendable_msat: 10,
            max_sendable_msat: 5,
            ..ZapSettings::default()
        };
        assert!(bad.validate().is_err());
    }
}
