//! The SSRF guard's address rules: which IP addresses a webhook may never reach (loopback,
//! private, link-local, …), the operator's allow-list, and resolving a host to the addresses that
//! pass. The connector ([`crate::connector`]) connects only to what [`AddressGuard::resolve`]
//! returned, so a name cannot be re-resolved to something else between check and connect.
//!
//! The rules follow the IANA special-purpose address registries. For IPv6 the guard is an
//! allow-rule, not a deny-list: only global unicast space (`2000::/3`) is reachable, minus its
//! special-purpose blocks, and the prefixes that embed an IPv4 address (IPv4-mapped,
//! IPv4-compatible, NAT64, 6to4) are judged by the embedded address — otherwise `::ffff:127.0.0.1`
//! would be a way around the IPv4 rules.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::HttpConfig;

/// Why `ip` must not be connected to, or `None` when it is a global address.
///
/// The reason is a short phrase such as `"loopback"` or `"private (RFC 1918)"`; an IPv6
/// address embedding an IPv4 one (IPv4-mapped, NAT64, 6to4) carries the embedded address's reason.
#[must_use]
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    // Most specific first, so 255.255.255.255 is "broadcast", not "reserved".
    let reason = match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_broadcast() => "broadcast",
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (10, _, _) => "private (RFC 1918)",
        (100, 64..=127, _) => "shared address space / CGNAT (100.64.0.0/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (172, 16..=31, _) => "private (RFC 1918)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation (TEST-NET)",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (RFC 1918)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    };
    Some(reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d — the socket layer connects to the IPv4 address itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // ::a.b.c.d, deprecated IPv4-compatible: never a real endpoint; name the embedded
    // address's problem when it has one.
    if segments[..6] == [0; 6] {
        return Some(
            forbidden_v4(embedded_v4(segments[6], segments[7]))
                .unwrap_or("deprecated IPv4-compatible IPv6 (::/96)"),
        );
    }
    // 64:ff9b::/96, the well-known NAT64 prefix: a translator reaches the embedded IPv4
    // address, which is fine when that address is global.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1 {
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    // 2002:aabb:ccdd::/48, 6to4: the relay reaches the embedded IPv4 address.
    if segments[0] == 0x2002 {
        return forbidden_v4(embedded_v4(segments[1], segments[2]));
    }
    let reason = match segments {
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        [0xfe80..=0xfebf, ..] => "link-local",
        [0xfec0..=0xfeff, ..] => "site-local (deprecated, fec0::/10)",
        [0xfc00..=0xfdff, ..] => "unique local (fc00::/7)",
        [0xff00..=0xffff, ..] => "multicast",
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 2, 0, ..] => "benchmarking (2001:2::/48)",
        [0x2001, 0x0000..=0x01ff, ..] => "IETF protocol assignments (2001::/23)",
        [0x2001, 0x0db8, ..] => "documentation (2001:db8::/32)",
        [0x3fff, 0x0000..=0x0fff, ..] => "documentation (3fff::/20)",
        // Everything outside 2000::/3 is either special-purpose or unallocated.
        [first, ..] if first & 0xe000 != 0x2000 => "not global unicast (outside 2000::/3)",
        _ => return None,
    };
    Some(reason)
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// An address the guard refuses, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedIp {
    /// The address.
    pub ip: IpAddr,
    /// Why it is refused (see [`is_forbidden`]).
    pub reason: &'static str,
}

impl fmt::Display for RefusedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.ip, self.reason)
    }
}

/// A host the guard refuses: a literal IP that is not allowed, or a name that resolves only to
/// addresses that are not allowed.
///
/// Its `Display` is what the customer who wrote the URL is told (the admin API's 400, an attempt
/// record's message): the rule that refused it, and never the internal addresses a name
/// resolved to — those would map our network for whoever registers a name pointing into it.
/// [`BlockedAddress::detail`] adds the addresses, for operators' logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BlockedAddress {
    /// The host as written in the URL (without IPv6 brackets).
    pub host: String,
    /// Every address that was refused, in resolution order.
    pub refused: Vec<RefusedIp>,
}

impl BlockedAddress {
    /// Whether the host was written as this one literal address (then naming it tells the
    /// customer nothing they did not write).
    fn is_literal(&self) -> bool {
        matches!(self.refused.as_slice(), [only] if only.ip.to_string() == self.host)
    }

    /// The distinct reasons of the refused addresses, in resolution order.
    fn reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        for refused in &self.refused {
            if !reasons.contains(&refused.reason) {
                reasons.push(refused.reason);
            }
        }
        reasons
    }

    /// The refusal with every refused address and its reason: for operators' logs only.
    #[must_use]
    pub fn detail(&self) -> String {
        let addresses: Vec<String> = self.refused.iter().map(ToString::to_string).collect();
        format!("{} resolved to {}", self.host, addresses.join(", "))
    }
}

impl fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_literal() {
            let only = &self.refused[0];
            return write!(f, "address {} is not allowed: {}", only.ip, only.reason);
        }
        match self.reasons().as_slice() {
            [] => write!(f, "{} resolves to no address that is allowed", self.host),
            [reason] => write!(
                f,
                "{} resolves to a {reason} address, which is not allowed",
                self.host
            ),
            reasons => write!(
                f,
                "{} resolves only to addresses that are not allowed ({})",
                self.host,
                reasons.join(", ")
            ),
        }
    }
}

/// Why a host yields no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Every address is refused by the guard.
    #[error(transparent)]
    Blocked(#[from] BlockedAddress),
    /// The name could not be resolved.
    #[error("could not resolve {host}: {source}")]
    Lookup {
        /// The host.
        host: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// The name resolved to nothing.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host.
        host: String,
    },
}

/// The SSRF guard: [`is_forbidden`] plus the operator's allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressGuard {
    allow: Vec<IpNet>,
}

impl AddressGuard {
    /// A guard that lets the given networks through even when they are not global.
    #[must_use]
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// The guard of a configuration (its `allow_addresses`).
    pub fn from_config(config: &HttpConfig) -> crate::Result<Self> {
        config.allow_list().map(Self::new)
    }

    /// Whether `ip` is in the allow-list. An IPv4-mapped IPv6 address matches the IPv4
    /// networks too: it reaches the same host.
    #[must_use]
    pub fn is_allow_listed(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    /// `Ok` when `ip` may be connected to: it is global, or allow-listed.
    pub fn check(&self, ip: IpAddr) -> Result<(), RefusedIp> {
        match is_forbidden(ip) {
            Some(reason) if !self.is_allow_listed(ip) => Err(RefusedIp { ip, reason }),
            _ => Ok(()),
        }
    }

    /// Checks a literal IP host (as written in a URL).
    pub fn check_literal(&self, host: &str, ip: IpAddr) -> Result<(), BlockedAddress> {
        self.check(ip).map_err(|refused| BlockedAddress {
            host: host.to_owned(),
            refused: vec![refused],
        })
    }

    /// Resolves `host` and keeps the addresses the guard allows, in resolution order, each with
    /// `port`. Fails when the name does not resolve or when every address is refused; a refusal
    /// of some addresses but not all is not an error (the refused ones are dropped).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_literal(host, ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: host.to_owned(),
                source,
            })?;
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for addr in resolved {
            match self.check(addr.ip()) {
                Ok(()) if !allowed.contains(&addr) => allowed.push(addr),
                Ok(()) => {}
                Err(refusal) if !refused.contains(&refusal) => refused.push(refusal),
                Err(_) => {}
            }
        }
        if !allowed.is_empty() {
            if !refused.is_empty() {
                tracing::debug!(
                    host,
                    refused = refused.len(),
                    "dropped resolved addresses the SSRF guard refuses"
                );
            }
            return Ok(allowed);
        }
        if refused.is_empty() {
            return Err(ResolveError::NoAddress {
                host: host.to_owned(),
            });
        }
        let blocked = BlockedAddress {
            host: host.to_owned(),
            refused,
        };
        // The refusal itself names only the rule (it reaches customers); the addresses are
        // for the operator.
        tracing::info!(detail = %blocked.detail(), "the SSRF guard refused every address of a name");
        Err(ResolveError::Blocked(blocked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a valid IP in the test table")
    }

    #[test]
    fn forbidden_ipv4_addresses() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "\"this network\" (0.0.0.0/8)"),
            ("10.0.0.1", "private (RFC 1918)"),
            ("10.255.255.255", "private (RFC 1918)"),
            ("100.64.0.1", "shared address space / CGNAT (100.64.0.0/10)"),
            (
                "100.127.255.254",
                "shared address space / CGNAT (100.64.0.0/10)",
            ),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
            ("192.0.2.10", "documentation (TEST-NET)"),
            ("198.51.100.7", "documentation (TEST-NET)"),
            ("203.0.113.200", "documentation (TEST-NET)"),
            ("192.88.99.1", "6to4 relay anycast (192.88.99.0/24)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("198.18.0.1", "benchmarking (198.18.0.0/15)"),
            ("198.19.255.255", "benchmarking (198.18.0.0/15)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved (240.0.0.0/4)"),
            ("254.1.2.3", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "broadcast"),
        ];
        for (text, reason) in cases {
            assert_eq!(is_forbidden(ip(text)), Some(reason), "{text}");
        }
    }

    #[test]
    fn global_ipv4_addresses_are_allowed() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.114.1",
            "223.255.255.255",
        ] {
            assert_eq!(is_forbidden(ip(text)), None, "{text}");
        }
    }

    #[test]
    fn forbidden_ipv6_addresses() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            // IPv4-mapped and -compatible addresses carry the embedded address's reason.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private (RFC 1918)"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::127.0.0.1", "loopback"),
            ("::192.168.0.1", "private (RFC 1918)"),
            ("::8.8.8.8", "deprecated IPv4-compatible IPv6 (::/96)"),
            // NAT64 of a forbidden IPv4 address, and the local-use NAT64 prefix.
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::10.0.0.1", "private (RFC 1918)"),
            ("64:ff9b:1::8.8.8.8", "local-use NAT64 (64:ff9b:1::/48)"),
            // 6to4 of a forbidden IPv4 address: 2002:7f00:0001:: embeds 127.0.0.1.
            ("2002:7f00:1::1", "loopback"),
            ("2002:c0a8:101::1", "private (RFC 1918)"),
            ("100::1", "discard-only (100::/64)"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local (deprecated, fec0::/10)"),
            ("fc00::1", "unique local (fc00::/7)"),
            ("fd12:3456:789a::1", "unique local (fc00::/7)"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("2001::1", "Teredo (2001::/32)"),
            ("2001:2::1", "benchmarking (2001:2::/48)"),
            ("2001:10::1", "IETF protocol assignments (2001::/23)"),
            ("2001:db8::1", "documentation (2001:db8::/32)"),
            ("3fff::1", "documentation (3fff::/20)"),
            ("::ffff:0:7f00:1", "not global unicast (outside 2000::/3)"),
            ("5f00::1", "not global unicast (outside 2000::/3)"),
            ("4000::1", "not global unicast (outside 2000::/3)"),
        ];
        for (text, reason) in cases {
            assert_eq!(is_forbidden(ip(text)), Some(reason), "{text}");
        }
    }

    #[test]
    fn global_ipv6_addresses_are_allowed() {
        for text in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
            "2001:200::1",
            "3ffe::1",
            "3fff:1000::1",
            // Mapped, NAT64 and 6to4 forms of a global IPv4 address reach a global host.
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert_eq!(is_forbidden(ip(text)), None, "{text}");
        }
    }

    #[test]
    fn allow_list_exempts_addresses_and_networks() {
        let guard = AddressGuard::new(vec![
            "127.0.0.1/32".parse().expect("valid"),
            "10.0.0.0/8".parse().expect("valid"),
            "fd00::/8".parse().expect("valid"),
        ]);
        assert_eq!(guard.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(guard.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(guard.check(ip("10.20.30.40")), Ok(()));
        assert_eq!(guard.check(ip("fd00::5")), Ok(()));
        assert_eq!(guard.check(ip("8.8.8.8")), Ok(()));
        assert_eq!(
            guard.check(ip("127.0.0.2")),
            Err(RefusedIp {
                ip: ip("127.0.0.2"),
                reason: "loopback"
            })
        );
        assert_eq!(
            guard.check(ip("::1")),
            Err(RefusedIp {
                ip: ip("::1"),
                reason: "loopback"
            })
        );
        assert!(AddressGuard::default().check(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn blocked_address_messages_name_the_rule_and_only_literal_addresses() {
        let literal = BlockedAddress {
            host: "127.0.0.1".into(),
            refused: vec![RefusedIp {
                ip: ip("127.0.0.1"),
                reason: "loopback",
            }],
        };
        assert_eq!(
            literal.to_string(),
            "address 127.0.0.1 is not allowed: loopback"
        );
        let name = BlockedAddress {
            host: "localhost".into(),
            refused: vec![
                RefusedIp {
                    ip: ip("::1"),
                    reason: "loopback",
                },
                RefusedIp {
                    ip: ip("127.0.0.1"),
                    reason: "loopback",
                },
            ],
        };
        assert_eq!(
            name.to_string(),
            "localhost resolves to a loopback address, which is not allowed"
        );
        assert_eq!(
            name.detail(),
            "localhost resolved to ::1 (loopback), 127.0.0.1 (loopback)"
        );
        let mixed = BlockedAddress {
            host: "internal.example".into(),
            refused: vec![
                RefusedIp {
                    ip: ip("10.1.2.3"),
                    reason: "private (RFC 1918)",
                },
                RefusedIp {
                    ip: ip("169.254.169.254"),
                    reason: "link-local",
                },
            ],
        };
        let told = mixed.to_string();
        assert_eq!(
            told,
            "internal.example resolves only to addresses that are not allowed (private (RFC 1918), link-local)"
        );
        assert!(
            !told.contains("10.1.2.3") && !told.contains("169.254"),
            "a name's refusal must not reveal what it resolved to: {told}"
        );
    }

    #[tokio::test]
    async fn resolve_refuses_localhost_unless_allow_listed() {
        let error = AddressGuard::default()
            .resolve("localhost", 443)
            .await
            .expect_err("localhost is loopback");
        match error {
            ResolveError::Blocked(blocked) => {
                assert_eq!(blocked.host, "localhost");
                assert!(!blocked.refused.is_empty());
                assert!(blocked.refused.iter().all(|r| r.reason == "loopback"));
            }
            other => panic!("expected Blocked, got {other:?}"),
        }

        let guard = AddressGuard::new(vec!["127.0.0.1/32".parse().expect("valid")]);
        let addrs = guard
            .resolve("localhost", 8443)
            .await
            .expect("allow-listed");
        // ::1 (if /etc/hosts has it) is still refused and dropped; 127.0.0.1 remains.
        assert_eq!(addrs, vec!["127.0.0.1:8443".parse().expect("valid")]);
    }

    #[tokio::test]
    async fn resolve_checks_literal_ips_without_a_lookup() {
        let error = AddressGuard::default()
            .resolve("10.1.2.3", 80)
            .await
            .expect_err("private");
        assert_eq!(
            error.to_string(),
            "address 10.1.2.3 is not allowed: private (RFC 1918)"
        );
        let addrs = AddressGuard::default()
            .resolve("1.1.1.1", 443)
            .await
            .expect("global");
        assert_eq!(addrs, vec!["1.1.1.1:443".parse().expect("valid")]);
    }

    #[tokio::test]
    async fn unresolvable_names_are_lookup_errors() {
        // `.invalid` never resolves (RFC 6761).
        let error = AddressGuard::default()
            .resolve("no-such-host.invalid", 443)
            .await
            .expect_err("does not resolve");
        assert!(
            matches!(error, ResolveError::Lookup { ref host, .. } if host == "no-such-host.invalid"),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("could not resolve no-such-host.invalid: ")
        );
    }
}
