//! Who a client is, at the network edge: the settings of `[relay.network]`
//! ([`NetworkConfig`]) and the address rules every per-IP limit keys on.
//!
//! Invariants:
//! - A per-IP limit never keys on a raw address: [`NetworkConfig::client_key`]
//!   folds an IPv6 address to its `/ipv6_prefix` network (one customer's
//!   /64 is one client, however many addresses it rotates through) and an
//!   IPv4-mapped IPv6 address to its IPv4 address.
//! - `Forwarded` / `X-Forwarded-For` are believed only when the TCP peer is
//!   one of `trusted_proxies`, and then only as far back as the chain stays
//!   inside trusted proxies ([`NetworkConfig::client_ip`]); anyone else can
//!   write those headers, so for them the TCP peer is the client.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `[relay.network]`: timeouts and per-IP rules of the HTTP/WebSocket server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Seconds a connection may take to send a request's headers (also the
    /// first request, and between keep-alive requests); then it is closed.
    pub header_read_timeout: u64,
    /// Connections per client (key) that have not (yet) become WebSockets:
    /// half-sent requests, NIP-11 fetches (also kept-alive ones, until
    /// `header_read_timeout`). Further ones are answered `503` with
    /// `Retry-After: 1` and closed at once. Trusted proxies are exempt.
    pub max_pending_per_ip: usize,
    /// Seconds a WebSocket may stay silent before it is closed. After half
    /// of it the server pings; a pong (or any frame) keeps it open.
    pub idle_timeout: u64,
    /// Length of the IPv6 prefix per-IP limits key on (64: a /64 is one client).
    #[serde(deserialize_with = "ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers name the client
    /// (a reverse proxy), as CIDR networks, e.g. `["127.0.0.1/32"]`.
    pub trusted_proxies: Vec<Cidr>,
    /// The one header the trusted proxies write. Only that one is read: a
    /// proxy passes the other through as the client sent it, so reading
    /// both would let a client name any address it likes.
    pub forwarded_header: ForwardedHeader,
}

/// Which forwarding header names the client (`forwarded_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, Caddy, HAProxy).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: 10,
            max_pending_per_ip: 64,
            idle_timeout: 120,
            ipv6_prefix: 64,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
        }
    }
}

fn ipv6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let len = u8::deserialize(d)?;
    if len > 128 {
        return Err(serde::de::Error::custom(format!(
            "ipv6_prefix is a prefix length, at most 128 (got {len})"
        )));
    }
    Ok(len)
}

impl NetworkConfig {
    /// What per-IP limits count `ip` as: an IPv4 address itself (also when
    /// IPv4-mapped), an IPv6 address its `/ipv6_prefix` network address.
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(mask_v6(v6, self.ipv6_prefix)),
            },
        }
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The client's address: `peer` (the TCP peer), unless it is a trusted
    /// proxy; then the nearest address in the forwarding chain that is not
    /// a trusted proxy. `forwarded` are the `Forwarded` header values (RFC
    /// 7239), `x_forwarded_for` the `X-Forwarded-For` ones, each in the
    /// order received; only those of `forwarded_header` are read. An entry that is
    /// not an address (`unknown`, an obfuscated name) ends the walk: the
    /// last address known is used.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded: impl IntoIterator<Item = &'a str>,
        x_forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = unmap(peer);
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let chain: Vec<Option<IpAddr>> = match self.forwarded_header {
            ForwardedHeader::Forwarded => forwarded
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(forwarded_for)
                .collect(),
            ForwardedHeader::XForwardedFor => x_forwarded_for
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(|hop| parse_hop(hop.trim()))
                .collect(),
        };
        let mut client = peer;
        for hop in chain.into_iter().rev() {
            if !self.is_trusted_proxy(client) {
                break;
            }
            match hop {
                Some(ip) => client = unmap(ip),
                None => break,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack socket reports them).
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = match prefix.min(128) {
        0 => 0,
        n => u128::MAX << (128 - u32::from(n)),
    };
    Ipv6Addr::from(bits & mask)
}

/// The `for=` address of one `Forwarded` element (`for=1.2.3.4;proto=https`),
/// `None` when it has none or it is not an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_hop(value.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside.parse().ok();
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// An IP network, `ADDRESS/PREFIX` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4 and IPv6 never match each other).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = match self.prefix {
                    0 => 0,
                    n => u32::MAX << (32 - u32::from(n)),
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(net, self.prefix) == mask_v6(ip, self.prefix)
            }
            _ => false,
        }
    }
}

/// Why a network did not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a network like 10.0.0.0/8 or 2001:db8::/32")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxied(proxies: &[&str]) -> NetworkConfig {
        NetworkConfig {
            trusted_proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
            ..NetworkConfig::default()
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        let net = NetworkConfig::default();
        assert_eq!(
            net.client_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            net.client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            net.client_key(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            net.client_key(ip("2001:db8:1:3::1")),
            net.client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(net.client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(net.client_key(ip("10.1.2.3")), ip("10.1.2.3"));
        let full = NetworkConfig {
            ipv6_prefix: 128,
            ..NetworkConfig::default()
        };
        assert_eq!(full.client_key(ip("2001:db8::5")), ip("2001:db8::5"));
        let wide = NetworkConfig {
            ipv6_prefix: 48,
            ..NetworkConfig::default()
        };
        assert_eq!(
            wide.client_key(ip("2001:db8:7:ffff::5")),
            ip("2001:db8:7::")
        );
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let none = NetworkConfig::default();
        let peer = ip("203.0.113.9");
        assert_eq!(none.client_ip(peer, [], ["198.51.100.1"]), peer);

        let net = proxied(&["127.0.0.1/32", "10.0.0.0/8"]);
        let proxy = ip("127.0.0.1");
        // An untrusted peer's headers are ignored.
        assert_eq!(net.client_ip(peer, ["for=1.1.1.1"], ["1.1.1.1"]), peer);
        // The nearest untrusted hop is the client; earlier hops are the
        // client's own claims.
        assert_eq!(
            net.client_ip(proxy, [], ["6.6.6.6, 198.51.100.7, 10.1.1.1"]),
            ip("198.51.100.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            net.client_ip(proxy, [], ["6.6.6.6", "198.51.100.8"]),
            ip("198.51.100.8")
        );
        // Only the configured header is read: a client's own `Forwarded`,
        // passed through by an X-Forwarded-For proxy, names nobody.
        assert_eq!(
            net.client_ip(proxy, ["for=9.9.9.9"], ["198.51.100.8"]),
            ip("198.51.100.8")
        );
        assert_eq!(net.client_ip(proxy, ["for=9.9.9.9"], []), proxy);
        let rfc = NetworkConfig {
            forwarded_header: ForwardedHeader::Forwarded,
            ..net.clone()
        };
        assert_eq!(rfc.client_ip(proxy, [], ["6.6.6.6"]), proxy);
        // Quoted IPv6 with a port.
        assert_eq!(
            rfc.client_ip(
                proxy,
                ["for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https"],
                ["198.51.100.8"]
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            rfc.client_ip(proxy, ["For=192.0.2.60:8080;by=10.0.0.1"], []),
            ip("192.0.2.60")
        );
        // An obfuscated hop ends the walk at the last known address.
        assert_eq!(rfc.client_ip(proxy, ["for=unknown"], []), proxy);
        // No header: the proxy itself.
        assert_eq!(net.client_ip(proxy, [], []), proxy);
        // A dual-stack socket's mapped peer address is matched as IPv4.
        assert_eq!(
            net.client_ip(ip("::ffff:127.0.0.1"), [], ["198.51.100.9"]),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.255.0.1")) && !net.contains(ip("11.0.0.1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "nonsense", "10.0.0.0/x", ""] {
            let err = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(err.contains("is not a network"), "{bad}: {err}");
        }
        assert_eq!(net.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn settings_reject_a_bad_prefix_or_network() {
        let err = serde_json::from_str::<NetworkConfig>(r#"{"ipv6_prefix": 129}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 128"), "{err}");
        let err = serde_json::from_str::<NetworkConfig>(r#"{"trusted_proxies": ["10.0.0.0/40"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a network"), "{err}");
        let ok: NetworkConfig =
            serde_json::from_str(r#"{"trusted_proxies": ["127.0.0.1/32"], "ipv6_prefix": 56}"#)
                .unwrap();
        assert_eq!(ok.ipv6_prefix, 56);
        assert!(ok.is_trusted_proxy(ip("127.0.0.1")));
    }
}
