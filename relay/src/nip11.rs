//! NIP-11 relay information document: only what is implemented, and every
//! limit that is enforced.

use serde_json::{json, Value};

use crate::config::RelayConfig;

/// NIPs this relay implements, besides those that can be turned off
/// ([`supported_nips`] adds them).
pub const SUPPORTED_NIPS: &[u16] = &[1, 9, 11, 17, 40, 42, 45, 59, 70];

/// NIP-77 (negentropy), advertised only while `[relay.negentropy] enabled`.
pub const NIP_NEGENTROPY: u16 = 77;

/// The NIPs `config` has on: [`SUPPORTED_NIPS`], and 77 when negentropy is
/// enabled, in order.
pub fn supported_nips(config: &RelayConfig) -> Vec<u16> {
    let mut nips = SUPPORTED_NIPS.to_vec();
    if config.negentropy.enabled {
        nips.push(NIP_NEGENTROPY);
        nips.sort_unstable();
    }
    nips
}

/// The document served at `/` for `Accept: application/nostr+json`.
pub fn relay_information(config: &RelayConfig) -> Value {
    let l = &config.limits;
    let r = &config.rate_limits;
    let mut limitation = json!({
        "max_message_length": l.max_message_length,
        "max_subscriptions": l.max_subscriptions,
        "max_limit": l.max_limit,
        "default_limit": l.max_limit,
        "max_subid_length": l.max_subid_length,
        "max_event_tags": l.max_event_tags,
        "max_content_length": l.max_content_length,
        "min_pow_difficulty": 0,
        "auth_required": false,
        "payment_required": false,
        "restricted_writes": config.inbox.allowed_recipients.is_some(),
        "created_at_upper_limit": l.created_at_upper_limit,
        // Not in NIP-11's list, but enforced, so published too.
        "max_event_length": l.max_event_length,
        "max_deletion_targets": l.max_deletion_targets,
        "max_filters": l.max_filters,
        "max_connections": l.max_connections,
        "max_connections_per_ip": l.max_connections_per_ip,
        "max_outbound_queue": l.max_outbound_queue,
        "max_outbound_bytes": l.max_outbound_bytes,
        "slow_reader_grace_ms": l.slow_reader_grace_ms,
        "max_values_per_filter": l.max_values_per_filter,
        "max_values_per_req": l.max_values_per_req,
        "max_values_per_connection": l.max_values_per_connection,
        "max_query_ms": l.max_query_ms,
        "auth_window_secs": l.auth_window,
        "private_kinds_require_auth": [4, 1059],
        "rate_limits": {
            "events_per_ip": r.events_per_ip,
            "events_per_pubkey": r.events_per_pubkey,
            "gift_wraps_per_recipient": r.gift_wraps_per_recipient,
            "reqs_per_ip": r.reqs_per_ip,
            "reqs_per_pubkey": r.reqs_per_pubkey,
            "max_violations": r.max_violations,
        },
    });
    if config.negentropy.enabled {
        // NIP-11 has no field for NIP-77's limits: Cairn's own, like the above.
        limitation["negentropy"] = config.negentropy.nip11();
    }
    if let Some(lower) = l.created_at_lower_limit {
        limitation["created_at_lower_limit"] = lower.into();
    }
    let mut doc = json!({
        "name": config.name,
        "description": config.description,
        "supported_nips": supported_nips(config),
        "software": "cairn",
        "version": env!("CARGO_PKG_VERSION"),
        "limitation": limitation,
    });
    if let Some(retention) = config.retention.nip11() {
        doc["retention"] = retention;
    }
    if let Some(contact) = &config.contact {
        doc["contact"] = contact.clone().into();
    }
    if let Some(pubkey) = &config.pubkey {
        doc["pubkey"] = pubkey.clone().into();
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_limits_from_config() {
        let mut config = RelayConfig::default();
        config.limits.max_limit = 123;
        config.limits.created_at_lower_limit = Some(3600);
        let doc = relay_information(&config);
        assert_eq!(doc["limitation"]["max_limit"], 123);
        assert_eq!(doc["limitation"]["created_at_lower_limit"], 3600);
        for field in [
            "max_outbound_bytes",
            "slow_reader_grace_ms",
            "max_values_per_filter",
            "max_values_per_req",
            "max_values_per_connection",
            "max_query_ms",
        ] {
            assert!(doc["limitation"][field].is_u64(), "{field} not published");
        }
        assert!(doc["supported_nips"]
            .as_array()
            .unwrap()
            .contains(&json!(42)));
        assert!(doc.get("contact").is_none());
    }

    #[test]
    fn negentropy_is_advertised_only_when_enabled() {
        let mut config = RelayConfig::default();
        config.negentropy.max_records = 7;
        let doc = relay_information(&config);
        assert!(doc["supported_nips"]
            .as_array()
            .unwrap()
            .contains(&json!(77)));
        assert_eq!(doc["limitation"]["negentropy"]["max_records"], 7);
        assert_eq!(doc["limitation"]["negentropy"]["protocol_version"], 1);
        config.negentropy.enabled = false;
        let doc = relay_information(&config);
        assert!(!doc["supported_nips"]
            .as_array()
            .unwrap()
            .contains(&json!(77)));
        assert!(doc["limitation"].get("negentropy").is_none());
    }
}
