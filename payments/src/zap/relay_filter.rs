//! Which relays a zap receipt may be sent to.
//!
//! The relays come from the zap request, i.e. from anyone on the Internet:
//! sending to them unfiltered would let a stranger make the node open
//! connections to its own loopback, the operator's LAN or a cloud metadata
//! endpoint (SSRF). Unless `allow_private` is set, relays on such addresses
//! are dropped: IP literals and `localhost` when the invoice is issued, and
//! hostnames after resolving them, just before connecting. The node's own
//! relay is always allowed (it is the operator's choice, not the payer's).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nostr::RelayUrl;

/// Whether `ip` is one a stranger must not make this node connect to:
/// unspecified, loopback, private (RFC 1918 / IPv6 ULA), link-local,
/// carrier-grade NAT (100.64.0.0/10); IPv4-mapped IPv6 by its IPv4 address.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        // 0.0.0.0/8 ("this network") reaches the local host on Linux.
        || a == 0
        // Carrier-grade NAT, 100.64.0.0/10.
        || (a == 100 && (b & 0xc0) == 64)
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        // Unique local fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local fe80::/10.
        || (first & 0xffc0) == 0xfe80
}

/// The host of `url` as an IP address, if it is a literal (`[…]` stripped).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether `host` names this machine without DNS (`localhost`, `*.localhost`).
fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Which relays named in zap requests the node connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPolicy {
    /// Also private, loopback and link-local addresses (tests, closed networks).
    pub allow_private: bool,
}

impl RelayPolicy {
    /// The check that needs no DNS: false for a URL whose host is a
    /// non-public IP literal or `localhost` (unless private relays are allowed).
    pub fn allows(&self, url: &RelayUrl) -> bool {
        if self.allow_private {
            return true;
        }
        let Ok(parsed) = nostr::Url::parse(url.as_str()) else {
            return false;
        };
        let Some(host) = parsed.host_str() else {
            return false;
        };
        if is_localhost(host) {
            return false;
        }
        match ip_literal(host) {
            Some(ip) => !is_private_ip(ip),
            None => true,
        }
    }

    /// The full check, just before connecting: [`Self::allows`], and a
    /// hostname must resolve, only to public addresses. `Err` when it does
    /// not resolve now (worth a retry); `Ok(false)` when it must be dropped.
    pub async fn allows_resolved(&self, url: &RelayUrl) -> Result<bool, std::io::Error> {
        if !self.allows(url) {
            return Ok(false);
        }
        if self.allow_private {
            return Ok(true);
        }
        let Ok(parsed) = nostr::Url::parse(url.as_str()) else {
            return Ok(false);
        };
        let Some(host) = parsed.host_str() else {
            return Ok(false);
        };
        if ip_literal(host).is_some() {
            return Ok(true);
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        let mut any = false;
        for addr in tokio::net::lookup_host((host, port)).await? {
            if is_private_ip(addr.ip()) {
                return Ok(false);
            }
            any = true;
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RelayUrl {
        RelayUrl::parse(s).unwrap()
    }

    #[test]
    fn every_non_public_range_is_private() {
        for ip in [
            "0.0.0.0",         // unspecified
            "0.1.2.3",         // this network
            "127.0.0.1",       // loopback
            "127.255.0.9",     // loopback
            "10.1.2.3",        // private
            "172.16.0.1",      // private
            "172.31.255.254",  // private
            "192.168.1.1",     // private
            "169.254.169.254", // link-local (cloud metadata)
            "100.64.0.1",      // CGNAT
            "100.127.255.254", // CGNAT
            "255.255.255.255", // broadcast
            "::",              // unspecified
            "::1",             // loopback
            "fc00::1",         // unique local
            "fd12:3456::1",    // unique local
            "fe80::1",         // link-local
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private_ip(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private_ip(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn private_relays_are_dropped_unless_allowed() {
        let strict = RelayPolicy {
            allow_private: false,
        };
        let open = RelayPolicy {
            allow_private: true,
        };
        for u in [
            "ws://127.0.0.1:7777",
            "ws://localhost:7777",
            "wss://LOCALHOST./",
            "ws://foo.localhost",
            "ws://[::1]:7777",
            "ws://[fe80::1]",
            "ws://[fd00::5]",
            "ws://10.0.0.5",
            "ws://192.168.0.10",
            "ws://172.20.1.1",
            "ws://169.254.169.254",
            "ws://100.64.1.1",
            "ws://0.0.0.0:80",
            "ws://[::ffff:127.0.0.1]",
        ] {
            assert!(!strict.allows(&url(u)), "{u} dropped");
            assert!(!strict.allows_resolved(&url(u)).await.unwrap(), "{u}");
            assert!(open.allows(&url(u)), "{u} allowed when private is on");
        }
        for u in [
            "wss://8.8.8.8",
            "wss://[2606:4700::1111]",
            "wss://relay.example.com",
        ] {
            assert!(strict.allows(&url(u)), "{u} kept");
        }
        // A public literal passes the resolved check without DNS.
        assert!(strict.allows_resolved(&url("wss://8.8.8.8")).await.unwrap());
    }
}
