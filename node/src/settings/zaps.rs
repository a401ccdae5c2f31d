//! The `[zaps]` settings section: which verified names this node takes
//! Lightning zaps (NIP-57 / LNURL-pay) and on-chain payments for.

use cairn_relay::config::Rate;
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZapSettings {
    /// Handles (without `@`, any case) whose payments this node's wallet accepts.
    pub names: Vec<String>,
    /// Smallest Lightning payment accepted, millisatoshis (LUD-06 `minSendable`).
    pub min_sendable_msat: u64,
    /// Largest Lightning payment accepted, millisatoshis (LUD-06 `maxSendable`).
    pub max_sendable_msat: u64,
    /// Requests one client IP may make to `/lnurlp/<name>/callback` and
    /// `/payments/v1/names/<name>/onchain` together (each may create an
    /// invoice or reveal an address): `per_second` refill, up to `burst`.
    /// Over it: 429 with `Retry-After`.
    pub requests_per_ip: Rate,
    /// Most zap invoices outstanding (unpaid, unexpired) at once, across all
    /// clients. Over it: 429 with `Retry-After`.
    pub max_pending_zaps: u64,
    /// Also send zap receipts to relays on loopback, private, link-local or
    /// CGNAT addresses (and `localhost`) named in zap requests. Off: a
    /// stranger's zap request could make the node connect into its own
    /// network. This node's own relay is always used.
    pub allow_private_relays: bool,
}

impl Default for ZapSettings {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            min_sendable_msat: 1_000,
            max_sendable_msat: 100_000_000,
            // A wallet asks once per payment; a client that keeps asking
            // gets twenty at once, then one every 5 s.
            requests_per_ip: Rate::new(0.2, 20.0),
            max_pending_zaps: 1_000,
            allow_private_relays: false,
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

    /// Checks the settings make sense (called when settings are loaded and
    /// when the node starts, before payments do).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.requests_per_ip.per_second > 0.0 && self.requests_per_ip.burst >= 1.0) {
            return Err("[zaps] requests_per_ip: need per_second > 0 and burst >= 1".into());
        }
        if self.max_pending_zaps == 0 {
            return Err("[zaps] max_pending_zaps must be at least 1".into());
        }
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
        assert!(bad.validate().unwrap_err().contains("min_sendable_msat"));
        let equal = ZapSettings {
            min_sendable_msat: 5,
            max_sendable_msat: 5,
            ..ZapSettings::default()
        };
        assert!(equal.validate().is_ok());
        let no_rate = ZapSettings {
            requests_per_ip: Rate::new(0.0, 5.0),
            ..ZapSettings::default()
        };
        assert!(no_rate.validate().is_err());
    }

    /// An inverted amount range is refused when the settings are loaded,
    /// before anything (payments included) starts.
    #[test]
    #[allow(clippy::result_large_err)]
    fn inverted_amounts_fail_at_load_time() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "zaps.toml",
                "[zaps]\nmin_sendable_msat = 5000\nmax_sendable_msat = 1000\n",
            )?;
            let err = crate::settings::Settings::load(Some(std::path::Path::new("zaps.toml")))
                .expect_err("min > max is refused");
            assert!(err.to_string().contains("min_sendable_msat"), "{err}");
            jail.create_file(
                "ok.toml",
                "[zaps]\nmin_sendable_msat = 1000\nmax_sendable_msat = 5000\n",
            )?;
            assert!(crate::settings::Settings::load(Some(std::path::Path::new("ok.toml"))).is_ok());
            Ok(())
        });
    }
}
