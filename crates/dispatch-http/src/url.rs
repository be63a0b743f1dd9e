//! Endpoint URL rules, checked without I/O when a subscription is written (a clear 400 from the
//! admin API) and again before every attempt: an absolute `https://` URL (or `http://` where
//! configuration allows it), a host, no credentials, a port in range, and a literal IP host only
//! if the SSRF guard allows it. Names are checked when they are resolved, at connect time
//! ([`check_endpoint`] does both for the admin API).

use std::net::{IpAddr, Ipv4Addr};

use hyper::Uri;
use hyper::http::uri::Scheme;

use crate::HttpConfig;
use crate::ssrf::{AddressGuard, BlockedAddress, RefusedIp, ResolveError};

/// Why an endpoint URL is refused. Messages are meant for the customer who wrote the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("the endpoint URL is not a valid URL: {reason}")]
    Unparsable {
        /// What the parser said.
        reason: String,
    },
    /// No scheme: `example.com/hook` instead of `https://example.com/hook`.
    #[error("the endpoint URL must be absolute, starting with https://")]
    NotAbsolute,
    /// A scheme other than `https` (and `http` where allowed).
    #[error("the endpoint URL's scheme {scheme:?} is not supported; use https://")]
    UnsupportedScheme {
        /// The scheme as written.
        scheme: String,
    },
    /// `http://` while configuration does not allow it.
    #[error("http:// endpoints are not allowed; use https://")]
    HttpNotAllowed,
    /// No host, or an empty one.
    #[error("the endpoint URL has no host")]
    MissingHost,
    /// `user:password@` in the authority: credentials belong in custom headers, where they are
    /// not logged with the URL.
    #[error(
        "the endpoint URL must not contain credentials (user:password@); use a custom header instead"
    )]
    Credentials,
    /// A port that is empty, not a number or out of 1..=65535.
    #[error("the endpoint URL's port {port:?} is not a number between 1 and 65535")]
    InvalidPort {
        /// The port as written.
        port: String,
    },
    /// A host that looks numeric but is not a dotted-quad IPv4 address (`2130706433`,
    /// `0x7f.1`): resolvers read such hosts as IPv4 addresses in ways that differ between
    /// libraries, so they are refused rather than guessed at.
    #[error(
        "the endpoint host {host:?} is not a valid IPv4 address; write the address as four decimal numbers or use a name"
    )]
    AmbiguousIpv4 {
        /// The host as written.
        host: String,
    },
    /// A literal IP host the SSRF guard refuses.
    #[error("the endpoint address {} is not allowed: {}", .refused.ip, .refused.reason)]
    BlockedAddress {
        /// The address and why it is refused.
        refused: RefusedIp,
    },
    /// The host is a name that resolves only to refused addresses ([`check_endpoint`] only).
    /// The message names the rule, not the addresses ([`BlockedAddress::detail`] has them).
    #[error("the endpoint {0}")]
    BlockedName(BlockedAddress),
    /// The host is a name that does not resolve ([`check_endpoint`] only).
    #[error("the endpoint host cannot be resolved: {0}")]
    Unresolvable(String),
}

/// Checks an endpoint URL against the rules of this module without I/O (literal IP hosts are
/// checked against the guard, names are not resolved). Allow-list entries that do not parse are
/// ignored here; [`HttpConfig::validate`] reports them.
pub fn check_url(url: &str, config: &HttpConfig) -> Result<(), UrlError> {
    let guard = AddressGuard::new(config.allow_list().unwrap_or_default());
    parse_endpoint(url, config.allow_http, &guard).map(drop)
}

/// [`check_url`], then resolves a named host and checks its addresses as a connection would —
/// for the admin API, so a subscription to a name that points at a private address is refused
/// when it is written, not only when it is first delivered to. (DNS can change afterwards; the
/// check at every connection remains the one that counts.)
pub async fn check_endpoint(url: &str, config: &HttpConfig) -> Result<(), UrlError> {
    let guard = AddressGuard::new(config.allow_list().unwrap_or_default());
    let endpoint = parse_endpoint(url, config.allow_http, &guard)?;
    if endpoint.literal_ip.is_some() {
        return Ok(());
    }
    match guard.resolve(&endpoint.host, endpoint.port).await {
        Ok(_) => Ok(()),
        Err(ResolveError::Blocked(blocked)) => Err(UrlError::BlockedName(blocked)),
        Err(error) => Err(UrlError::Unresolvable(error.to_string())),
    }
}

/// A URL that passed the checks.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) uri: Uri,
    /// Without IPv6 brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) literal_ip: Option<IpAddr>,
}

pub(crate) fn parse_endpoint(
    url: &str,
    allow_http: bool,
    guard: &AddressGuard,
) -> Result<Endpoint, UrlError> {
    let url = url.trim();
    // The scheme is judged before parsing: `file:///x` or `example.com/x` deserve a better
    // answer than the parser's "invalid format".
    let Some((written_scheme, _)) = url.split_once("://") else {
        return Err(UrlError::NotAbsolute);
    };
    if !written_scheme.eq_ignore_ascii_case("https") && !written_scheme.eq_ignore_ascii_case("http")
    {
        return Err(UrlError::UnsupportedScheme {
            scheme: written_scheme.to_owned(),
        });
    }
    let uri: Uri =
        url.parse()
            .map_err(|error: hyper::http::uri::InvalidUri| UrlError::Unparsable {
                reason: error.to_string(),
            })?;
    let scheme = uri.scheme().ok_or(UrlError::NotAbsolute)?;
    let default_port = if *scheme == Scheme::HTTPS {
        443
    } else if *scheme == Scheme::HTTP {
        if !allow_http {
            return Err(UrlError::HttpNotAllowed);
        }
        80
    } else {
        return Err(UrlError::UnsupportedScheme {
            scheme: scheme.as_str().to_owned(),
        });
    };
    let authority = uri.authority().ok_or(UrlError::MissingHost)?.as_str();
    if authority.contains('@') {
        return Err(UrlError::Credentials);
    }
    let written_host = uri.host().unwrap_or_default();
    if written_host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    // `Uri::port` is `None` for a port that does not fit a u16, and the connector would then
    // silently use the default port: read what was written instead.
    let port = match authority.strip_prefix(written_host) {
        Some("") => default_port,
        Some(rest) => {
            let written = rest.strip_prefix(':').unwrap_or(rest);
            written
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0 && written.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| UrlError::InvalidPort {
                    port: written.to_owned(),
                })?
        }
        None => return Err(UrlError::MissingHost),
    };
    let host = written_host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(written_host);
    let literal_ip = host.parse::<IpAddr>().ok();
    match literal_ip {
        Some(ip) => {
            guard
                .check(ip)
                .map_err(|refused| UrlError::BlockedAddress { refused })?;
        }
        None if looks_numeric(host) => {
            return Err(UrlError::AmbiguousIpv4 {
                host: host.to_owned(),
            });
        }
        None => {}
    }
    Ok(Endpoint {
        host: host.to_owned(),
        uri,
        port,
        literal_ip,
    })
}

/// Whether a host that is not a dotted-quad would be read as an IPv4 address by the WHATWG URL
/// parser or `inet_aton`: its last label is a decimal, octal or hex number.
fn looks_numeric(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let is_number = |label: &str| {
        let hex = label
            .strip_prefix("0x")
            .or_else(|| label.strip_prefix("0X"));
        match hex {
            Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
            None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
        }
    };
    is_number(last) && host.parse::<Ipv4Addr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow_http: bool, allow: &[&str]) -> HttpConfig {
        HttpConfig {
            allow_http,
            allow_addresses: allow.iter().map(|text| (*text).to_owned()).collect(),
            ..HttpConfig::default()
        }
    }

    #[test]
    fn good_urls_pass() {
        let strict = config(false, &[]);
        for url in [
            "https://example.com/hooks",
            "https://example.com",
            "https://example.com:8443/hooks?token=abc",
            "https://sub.example.co.uk./x",
            "https://8.8.8.8/hook",
            "https://[2606:4700:4700::1111]:443/hook",
            "  https://example.com/padded  ",
            "https://xn--bcher-kva.example/",
            // A trailing number in a non-final label is a name.
            "https://api.1.example.com/",
        ] {
            assert_eq!(check_url(url, &strict), Ok(()), "{url}");
        }
        let lax = config(true, &["127.0.0.1", "10.0.0.0/8"]);
        for url in [
            "http://example.com/hooks",
            "http://127.0.0.1:8080/hook",
            "https://10.9.8.7/hook",
        ] {
            assert_eq!(check_url(url, &lax), Ok(()), "{url}");
        }
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        let strict = config(false, &[]);
        let blocked = |ip: &str, reason: &'static str| UrlError::BlockedAddress {
            refused: RefusedIp {
                ip: ip.parse().expect("valid"),
                reason,
            },
        };
        let cases: Vec<(&str, UrlError)> = vec![
            ("http://example.com/", UrlError::HttpNotAllowed),
            (
                "ftp://example.com/",
                UrlError::UnsupportedScheme {
                    scheme: "ftp".into(),
                },
            ),
            (
                "file:///etc/passwd",
                UrlError::UnsupportedScheme {
                    scheme: "file".into(),
                },
            ),
            (
                "https://exa mple.com/",
                UrlError::Unparsable {
                    reason: "invalid uri character".into(),
                },
            ),
            ("example.com/hook", UrlError::NotAbsolute),
            ("/hook", UrlError::NotAbsolute),
            ("https://user:pw@example.com/", UrlError::Credentials),
            ("https://token@example.com/", UrlError::Credentials),
            (
                "https://example.com:0/",
                UrlError::InvalidPort { port: "0".into() },
            ),
            (
                "https://example.com:65536/",
                UrlError::InvalidPort {
                    port: "65536".into(),
                },
            ),
            (
                "https://example.com:99999999999/",
                UrlError::InvalidPort {
                    port: "99999999999".into(),
                },
            ),
            (
                "https://example.com:/",
                UrlError::InvalidPort { port: "".into() },
            ),
            ("https://127.0.0.1/", blocked("127.0.0.1", "loopback")),
            (
                "https://169.254.169.254/latest/meta-data",
                blocked("169.254.169.254", "link-local"),
            ),
            ("https://[::1]:8443/", blocked("::1", "loopback")),
            (
                "https://[::ffff:10.0.0.1]/",
                blocked("::ffff:10.0.0.1", "private (RFC 1918)"),
            ),
            ("https://0.0.0.0/", blocked("0.0.0.0", "unspecified")),
            (
                "https://2130706433/",
                UrlError::AmbiguousIpv4 {
                    host: "2130706433".into(),
                },
            ),
            (
                "https://0x7f.1/",
                UrlError::AmbiguousIpv4 {
                    host: "0x7f.1".into(),
                },
            ),
            (
                "https://127.1/",
                UrlError::AmbiguousIpv4 {
                    host: "127.1".into(),
                },
            ),
            (
                "https://017700000001/",
                UrlError::AmbiguousIpv4 {
                    host: "017700000001".into(),
                },
            ),
        ];
        for (url, expected) in cases {
            let actual = check_url(url, &strict);
            match (&actual, &expected) {
                // The parser's wording is not ours to pin down.
                (Err(UrlError::Unparsable { .. }), UrlError::Unparsable { .. }) => {}
                _ => assert_eq!(actual, Err(expected), "{url}"),
            }
        }
    }

    #[test]
    fn unparsable_urls_say_so() {
        let strict = config(false, &[]);
        for url in ["", "https://exa mple.com/", "https://", "not a url"] {
            let error = check_url(url, &strict).expect_err(url);
            assert!(
                matches!(
                    error,
                    UrlError::Unparsable { .. } | UrlError::NotAbsolute | UrlError::MissingHost
                ),
                "{url}: {error:?}"
            );
        }
    }

    #[test]
    fn messages_are_clear() {
        let strict = config(false, &[]);
        let message = |url: &str| check_url(url, &strict).expect_err("refused").to_string();
        assert_eq!(
            message("http://example.com/"),
            "http:// endpoints are not allowed; use https://"
        );
        assert_eq!(
            message("https://10.0.0.1/"),
            "the endpoint address 10.0.0.1 is not allowed: private (RFC 1918)"
        );
        assert_eq!(
            message("https://example.com:70000/"),
            "the endpoint URL's port \"70000\" is not a number between 1 and 65535"
        );
    }

    #[test]
    fn the_endpoint_carries_host_and_port() {
        let guard = AddressGuard::default();
        let endpoint =
            parse_endpoint("https://[2606:4700::1]:8443/x", false, &guard).expect("valid");
        assert_eq!(endpoint.host, "2606:4700::1");
        assert_eq!(endpoint.port, 8443);
        assert_eq!(
            endpoint.literal_ip,
            Some("2606:4700::1".parse().expect("ip"))
        );
        let endpoint = parse_endpoint("http://example.com/x", true, &guard).expect("valid");
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("example.com", 80));
        assert_eq!(endpoint.literal_ip, None);
    }

    #[tokio::test]
    async fn check_endpoint_resolves_names() {
        let strict = config(false, &[]);
        let error = check_endpoint("https://localhost:8443/hook", &strict)
            .await
            .expect_err("loopback");
        assert!(matches!(error, UrlError::BlockedName(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "the endpoint localhost resolves to a loopback address, which is not allowed"
        );
        let error = check_endpoint("https://no-such-host.invalid/", &strict)
            .await
            .expect_err("unresolvable");
        assert!(matches!(error, UrlError::Unresolvable(_)), "{error:?}");

        let allowed = config(false, &["127.0.0.1"]);
        check_endpoint("https://localhost:8443/hook", &allowed)
            .await
            .expect("allow-listed");
    }
}
