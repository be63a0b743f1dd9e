//! [`HttpConfig`]: how the webhook client connects, what it refuses, and how long it waits.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The default whole-request timeout: 30 s, as the design promises customers.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// The default TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// The default cap on the response body read (and kept as the attempt's excerpt).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4096;
/// The largest allowed `max_response_bytes`: the excerpt lands in every attempt record, and a
/// hostile endpoint must not make us buffer much.
pub const MAX_RESPONSE_BYTES_LIMIT: usize = 1024 * 1024;
/// How long an idle pooled connection is kept by default.
pub const DEFAULT_POOL_IDLE_TIMEOUT_SECS: u64 = 90;
/// How many idle connections per endpoint are kept by default: as many as the sender may have
/// in flight (`sender.max_concurrent_requests`' default). A smaller cap closes every
/// connection beyond it after one request whenever one host gets more concurrent webhooks
/// than the cap (many subscriptions on one host): measured with `dispatch-bench e2e
/// --receivers 4`, a cap of 32 turned the load into ~45,000 TIME-WAIT sockets and halved
/// throughput (docs/benchmarks.md).
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 512;

/// The default `user-agent`: `Posternity-Webhooks/<version>`, as the design's section 5 says.
#[must_use]
pub fn default_user_agent() -> String {
    format!("Posternity-Webhooks/{}", env!("CARGO_PKG_VERSION"))
}

/// Configuration of the webhook client. Every field has a default (see [`HttpConfig::default`]);
/// [`HttpConfig::validate`] checks the values without doing I/O.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Upper bound on one whole attempt, in milliseconds: resolution, connect, TLS handshake,
    /// sending the request, the response headers and the capped body read. Default 30000.
    pub timeout_ms: u64,
    /// Upper bound on establishing the TCP connection, in milliseconds (split between the
    /// addresses a name resolves to). Never more than `timeout_ms` in effect. Default 10000.
    pub connect_timeout_ms: u64,
    /// How much of a response body is read, in bytes; the rest is dropped unread. What was read
    /// becomes the attempt record's excerpt (lossy UTF-8). Default 4096, at most 1 MiB.
    pub max_response_bytes: usize,
    /// Whether `http://` endpoints are allowed (development and tests only). Default false:
    /// only `https://`.
    pub allow_http: bool,
    /// Addresses exempt from the SSRF guard, as IPs (`10.1.2.3`, `::1`) or CIDR networks
    /// (`10.0.0.0/8`). Default empty: every non-global address is refused.
    pub allow_addresses: Vec<String>,
    /// A PEM bundle of extra CA certificates trusted in addition to the webpki roots (private
    /// PKI). Default none.
    pub extra_ca_file: Option<PathBuf>,
    /// The `user-agent` header. Default `Posternity-Webhooks/<version>`.
    pub user_agent: String,
    /// How long an idle pooled connection is kept open, in seconds; 0 closes idle connections
    /// at once. Default 90.
    pub pool_idle_timeout_secs: u64,
    /// How many idle connections are kept per endpoint (scheme, host and port); 0 disables
    /// keep-alive reuse. Default 512.
    pub pool_max_idle_per_host: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            allow_http: false,
            allow_addresses: Vec::new(),
            extra_ca_file: None,
            user_agent: default_user_agent(),
            pool_idle_timeout_secs: DEFAULT_POOL_IDLE_TIMEOUT_SECS,
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
        }
    }
}

impl HttpConfig {
    /// Checks every value, naming the key of the first bad one. Does no I/O: whether
    /// `extra_ca_file` can be read is checked by [`crate::WebhookClient::new`].
    pub fn validate(&self) -> Result<()> {
        if self.timeout_ms == 0 {
            return Err(invalid("timeout_ms", "must be greater than 0"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(invalid("connect_timeout_ms", "must be greater than 0"));
        }
        if self.connect_timeout_ms > self.timeout_ms {
            return Err(invalid(
                "connect_timeout_ms",
                format!(
                    "is {} but must not exceed timeout_ms ({}), which bounds the whole request",
                    self.connect_timeout_ms, self.timeout_ms
                ),
            ));
        }
        if self.max_response_bytes > MAX_RESPONSE_BYTES_LIMIT {
            return Err(invalid(
                "max_response_bytes",
                format!(
                    "is {} but must be at most {MAX_RESPONSE_BYTES_LIMIT}",
                    self.max_response_bytes
                ),
            ));
        }
        self.allow_list()?;
        if self
            .extra_ca_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(invalid(
                "extra_ca_file",
                "is empty; leave it out to use only the webpki roots",
            ));
        }
        if self.user_agent.trim().is_empty() {
            return Err(invalid("user_agent", "must not be empty"));
        }
        if hyper::header::HeaderValue::from_str(&self.user_agent).is_err() {
            return Err(invalid(
                "user_agent",
                "must be a valid header value (visible ASCII and spaces)",
            ));
        }
        Ok(())
    }

    /// The whole-request timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The TCP connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `allow_addresses` parsed: a plain IP is a single-address network.
    pub fn allow_list(&self) -> Result<Vec<IpNet>> {
        self.allow_addresses
            .iter()
            .enumerate()
            .map(|(index, text)| {
                parse_allowed(text).ok_or_else(|| {
                    invalid(
                        format!("allow_addresses[{index}]"),
                        format!("{text:?} is neither an IP address nor a CIDR network"),
                    )
                })
            })
            .collect()
    }
}

fn parse_allowed(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Config {
        key: key.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(result: Result<()>) -> String {
        match result {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = HttpConfig::default();
        config.validate().expect("defaults are valid");
        assert_eq!(config.timeout(), Duration::from_secs(30));
        assert_eq!(config.connect_timeout(), Duration::from_secs(10));
        assert_eq!(config.max_response_bytes, 4096);
        assert!(!config.allow_http);
        assert!(config.allow_addresses.is_empty());
        assert_eq!(config.extra_ca_file, None);
        assert_eq!(
            config.user_agent,
            format!("Posternity-Webhooks/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(config.pool_idle_timeout_secs, 90);
        assert_eq!(config.pool_max_idle_per_host, 512);
    }

    #[test]
    fn missing_keys_take_defaults_and_unknown_keys_are_refused() {
        let parsed: HttpConfig =
            serde_json::from_str(r#"{"timeout_ms": 500, "allow_http": true}"#).expect("parses");
        assert_eq!(parsed.timeout_ms, 500);
        assert!(parsed.allow_http);
        assert_eq!(parsed.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);

        let error =
            serde_json::from_str::<HttpConfig>(r#"{"timeout_secs": 5}"#).expect_err("unknown key");
        assert!(error.to_string().contains("timeout_secs"), "{error}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = HttpConfig::default;
        let cases: Vec<(HttpConfig, &str)> = vec![
            (
                HttpConfig {
                    timeout_ms: 0,
                    ..base()
                },
                "timeout_ms",
            ),
            (
                HttpConfig {
                    connect_timeout_ms: 0,
                    ..base()
                },
                "connect_timeout_ms",
            ),
            (
                HttpConfig {
                    timeout_ms: 1000,
                    connect_timeout_ms: 2000,
                    ..base()
                },
                "connect_timeout_ms",
            ),
            (
                HttpConfig {
                    max_response_bytes: MAX_RESPONSE_BYTES_LIMIT + 1,
                    ..base()
                },
                "max_response_bytes",
            ),
            (
                HttpConfig {
                    allow_addresses: vec!["10.0.0.0/8".into(), "not-an-ip".into()],
                    ..base()
                },
                "allow_addresses[1]",
            ),
            (
                HttpConfig {
                    extra_ca_file: Some(PathBuf::new()),
                    ..base()
                },
                "extra_ca_file",
            ),
            (
                HttpConfig {
                    user_agent: "  ".into(),
                    ..base()
                },
                "user_agent",
            ),
            (
                HttpConfig {
                    user_agent: "bad\nagent".into(),
                    ..base()
                },
                "user_agent",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(key_of(config.validate()), key);
        }
    }

    #[test]
    fn allow_list_takes_ips_and_networks() {
        let config = HttpConfig {
            allow_addresses: vec![
                "127.0.0.1".into(),
                "10.0.0.0/8".into(),
                "::1".into(),
                "fd00::/8".into(),
            ],
            ..HttpConfig::default()
        };
        let nets = config.allow_list().expect("valid");
        let expected: Vec<IpNet> = ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]
            .iter()
            .map(|text| text.parse().expect("valid network"))
            .collect();
        assert_eq!(nets, expected);
    }
}
