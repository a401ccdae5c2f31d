//! Which relays a zap receipt may be sent to.
//!
//! The relays come from the zap request, i.e. from anyone on the Internet:
//! sending to them unfiltered would let a stranger make the node open
//! connections to its own loopback, the operator's LAN or a cloud metadata
//! endpoint (SSRF). Unless `allow_private` is set, relays on such addresses
//! are dropped: IP literals and `localhost` when the invoice is issued, and
//! hostnames after resolving them, just before connecting. The node's own
//! relay is always allowed (it is the operator's choice, not the payer's).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use nostr::RelayUrl;

/// Whether `ip` is one a stranger must not make this node connect to: any
/// address of the IANA IPv4 and IPv6 special-purpose registries that is not
/// globally reachable, multicast, the reserved 240.0.0.0/4, and every IPv6
/// address outside global unicast 2000::/3. IPv6 forms that carry an IPv4
/// address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
/// 6to4 `2002:AABB:CCDD::/48`, NAT64 `64:ff9b::a.b.c.d`) are judged by that
/// IPv4 address; local-use NAT64 (64:ff9b:1::/48) and Teredo (2001::/32,
/// inside 2001::/23) are special whatever they embed.
pub fn is_special_purpose(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => is_special_v6(v6),
    }
}

/// `(network, prefix length)` of the non-public IPv4 ranges.
const SPECIAL_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"; reaches the local host on Linux
    ([10, 0, 0, 0], 8),      // private (RFC 1918)
    ([100, 64, 0, 0], 10),   // shared address space, carrier-grade NAT
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata endpoints)
    ([172, 16, 0, 0], 12),   // private (RFC 1918)
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private (RFC 1918)
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the limited broadcast address
];

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    SPECIAL_V4.iter().any(|&(net, len)| {
        let mask = u32::MAX << (32 - u32::from(len));
        bits & mask == u32::from(Ipv4Addr::from(net))
    })
}

/// `(network, prefix length)` of the non-public ranges inside 2000::/3
/// (everything outside it is special anyway).
const SPECIAL_V6_GLOBAL: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // IETF protocol assignments, Teredo 2001::/32 included
    (0x2001_0db8 << 96, 32), // documentation
    (0x3fff_0000 << 96, 20), // documentation (RFC 9637)
];

fn in_v6(bits: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX << (128 - u32::from(len));
    bits & mask == net & mask
}

fn is_special_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    // IPv4-mapped ::ffff:0:0/96 and IPv4-compatible ::/96 (:: and ::1 are
    // in it too, and come out special through 0.0.0.0/8).
    if in_v6(bits, 0xffff << 32, 96) || in_v6(bits, 0, 96) {
        return is_special_v4(Ipv4Addr::from(bits as u32));
    }
    // Local-use NAT64 (RFC 8215) leads to the operator's own network.
    if in_v6(bits, 0x0064_ff9b_0001 << 80, 48) {
        return true;
    }
    // Well-known NAT64 prefix: a translation of the embedded IPv4 address.
    if in_v6(bits, 0x0064_ff9b << 96, 96) {
        return is_special_v4(Ipv4Addr::from(bits as u32));
    }
    // 6to4: 2002:AABB:CCDD::/48 tunnels to AA.BB.CC.DD.
    if in_v6(bits, 0x2002 << 112, 16) {
        return is_special_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    // Only global unicast is public: this excludes unique local fc00::/7,
    // link-local fe80::/10, site-local fec0::/10, multicast ff00::/8,
    // discard-only 100::/64, SRv6 5f00::/16 and the unassigned rest.
    if !in_v6(bits, 0x2000 << 112, 3) {
        return true;
    }
    SPECIAL_V6_GLOBAL
        .iter()
        .any(|&(net, len)| in_v6(bits, net, len))
}

/// Turns a relay's host name into addresses (the system resolver, or a
/// fake one in tests).
#[async_trait]
pub trait Resolver: Send + Sync {
    /// The addresses of `host` (a name, not an IP literal) at `port`.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
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
            Some(ip) => !is_special_purpose(ip),
            None => true,
        }
    }

    /// The full check, just before connecting: [`Self::allows`], then the
    /// address to connect to — the IP literal, or the first address the
    /// host resolves to, when every address it resolves to is public. The
    /// caller connects to exactly that address: resolving again could
    /// answer differently (DNS rebinding). `Err` when the name does not
    /// resolve now (worth a retry); `Ok(None)` when the relay must be dropped.
    pub async fn resolve(
        &self,
        url: &RelayUrl,
        resolver: &dyn Resolver,
    ) -> Result<Option<SocketAddr>, std::io::Error> {
        if !self.allows(url) {
            return Ok(None);
        }
        let Ok(parsed) = nostr::Url::parse(url.as_str()) else {
            return Ok(None);
        };
        let Some(host) = parsed.host_str() else {
            return Ok(None);
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        if let Some(ip) = ip_literal(host) {
            return Ok(Some(SocketAddr::new(ip, port)));
        }
        let addrs = resolver.resolve(host, port).await?;
        if !self.allow_private && addrs.iter().any(|a| is_special_purpose(a.ip())) {
            return Ok(None);
        }
        Ok(addrs.first().copied())
    }

    /// [`Self::resolve`] with the system resolver, as a yes or no.
    pub async fn allows_resolved(&self, url: &RelayUrl) -> Result<bool, std::io::Error> {
        Ok(self.resolve(url, &SystemResolver).await?.is_some())
    }
}

/// The system resolver, shared.
pub(crate) fn system_resolver() -> Arc<dyn Resolver> {
    Arc::new(SystemResolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RelayUrl {
        RelayUrl::parse(s).unwrap()
    }

    /// Each special-purpose range by an address inside it (and at its
    /// edges), and public addresses just outside them.
    #[test]
    fn special_purpose_ranges_table() {
        let special = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.1.2.3", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.254", "shared (CGNAT)"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "TEST-NET-1"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "TEST-NET-2"),
            ("203.0.113.9", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("::ffff:10.0.0.1", "IPv4-mapped private"),
            ("::127.0.0.1", "IPv4-compatible loopback"),
            ("::169.254.169.254", "IPv4-compatible link-local"),
            ("64:ff9b::7f00:1", "NAT64 of loopback"),
            ("64:ff9b::a9fe:a9fe", "NAT64 of link-local"),
            ("64:ff9b:1::808:808", "local-use NAT64"),
            ("100::1", "discard-only"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("2001:db8::1", "documentation"),
            ("2001:db8:ffff::1", "documentation"),
            ("2002:7f00:1::1", "6to4 of loopback"),
            ("2002:c0a8:101::1", "6to4 of private"),
            ("3fff::1", "documentation (RFC 9637)"),
            ("5f00::1", "SRv6 SIDs"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
        ];
        for (ip, why) in special {
            assert!(
                is_special_purpose(ip.parse().unwrap()),
                "{ip} ({why}) must not count as public"
            );
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "2001:4860:4860::8888",
            "2002:808:808::1",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
        ] {
            assert!(!is_special_purpose(ip.parse().unwrap()), "{ip} is public");
        }
    }

    /// Answers every name with the same addresses, counting the calls.
    struct FixedResolver(Vec<SocketAddr>, std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl Resolver for FixedResolver {
        async fn resolve(&self, _: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn a_name_with_any_special_address_is_dropped() {
        let strict = RelayPolicy {
            allow_private: false,
        };
        let relay = url("wss://relay.example.com");
        let resolver = |addrs: &[&str]| {
            FixedResolver(
                addrs.iter().map(|a| a.parse().unwrap()).collect(),
                Default::default(),
            )
        };
        let public = resolver(&["8.8.8.8:443", "[2606:4700::1111]:443"]);
        assert_eq!(
            strict.resolve(&relay, &public).await.unwrap(),
            Some("8.8.8.8:443".parse().unwrap()),
            "the first checked address is the one to connect to"
        );
        for addrs in [
            &["8.8.8.8:443", "127.0.0.1:443"][..],
            &["[64:ff9b::7f00:1]:443"],
            &["[2002:a00:1::1]:443"],
            &["198.18.0.5:443"],
            &[],
        ] {
            let r = resolver(addrs);
            assert_eq!(strict.resolve(&relay, &r).await.unwrap(), None, "{addrs:?}");
        }
        // Allowed private: the name is still resolved once, and its first
        // address used.
        let open = RelayPolicy {
            allow_private: true,
        };
        let local = resolver(&["127.0.0.1:7000"]);
        assert_eq!(
            open.resolve(&url("ws://relay.test:7000"), &local)
                .await
                .unwrap(),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(local.1.load(std::sync::atomic::Ordering::SeqCst), 1);
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
            "ws://[64:ff9b::7f00:1]",
            "ws://[2002:7f00:1::1]",
            "ws://[::127.0.0.1]",
            "ws://198.18.0.1",
            "ws://240.0.0.1",
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
