//! The `[api]` configuration table: where the API listens, who may call it, and the bounds of
//! what it keeps in memory and waits for.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

use crate::{Error, Result};

/// The longest request body accepted at all, whatever `max_body_bytes` says: a subscription is a
/// few kilobytes, so even this is generous.
pub const MAX_BODY_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// The longest an account id may be: ids travel in every record of the account.
pub const MAX_ACCOUNT_ID_LEN: usize = 128;

/// The `[api]` configuration table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where the admin API listens. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Bearer tokens and what each may see. Default none (then `tokens_file` must name some).
    pub tokens: Vec<TokenConfig>,
    /// A file with more tokens, in the same shape as this table's `tokens` (`[[tokens]]` in TOML,
    /// or `{"tokens": [...]}` in a file ending `.json`): where a Kubernetes Secret is mounted.
    /// Read once, when the API is built. Default none.
    pub tokens_file: Option<PathBuf>,
    /// The largest request body accepted, in bytes; larger ones answer 413. Default 64 KiB.
    pub max_body_bytes: usize,
    /// How long a write waits until this process's subscription view or DLQ fold has applied
    /// it (read-your-writes), in milliseconds; past it the request answers 503. Default 10000.
    pub write_timeout_ms: u64,
    /// How many deliveries the attempt history keeps in memory; the oldest fall out first.
    /// Default 100000.
    pub history_max_deliveries: usize,
    /// How far back in `dispatch.attempts` the history starts reading when the API starts, in
    /// seconds. Default 86400 (one day; the topic keeps seven).
    pub history_lookback_secs: u64,
    /// How many dead letters the DLQ view keeps in memory. Default 100000.
    pub dlq_max_entries: usize,
    /// How long a rotated-out signing secret keeps signing deliveries, in seconds. Default 86400.
    pub secret_rotation_overlap_secs: u64,
    /// How many items a list returns when the request names no `limit`. Default 50.
    pub default_page_size: usize,
    /// The largest `limit` a list request may ask for. Default 500.
    pub max_page_size: usize,
    /// How many dead letters one `POST /v1/dlq/replay` queues at most; the caller repeats the
    /// request until it answers `count: 0`. Default 1000.
    pub replay_max_batch: usize,
    /// How long a client has to send a request's headers, in milliseconds, from the moment the
    /// server starts waiting for them; a client that has not finished by then has its connection
    /// closed (a slow or stalled client must not hold a connection and its task forever).
    /// Default 10000.
    pub header_read_timeout_ms: u64,
    /// How long one request may take from its headers to its answer, reading the body
    /// included, in milliseconds; past it the request answers 503 `request_timeout`. Must
    /// exceed `write_timeout_ms`, so a write that waits for its confirmation answers with the
    /// more precise `write_not_confirmed` first. Default 30000.
    pub request_timeout_ms: u64,
    /// The per-token request rate limit (`[api.rate_limit]`).
    pub rate_limit: RateLimitConfig,
    /// The per-account quotas (`[api.quotas]`).
    pub quotas: QuotaConfig,
}

/// The `[api.rate_limit]` table: how fast one bearer token may call the API. Each configured
/// token has its own budget (a generic cell rate: `burst_requests` at once, refilled at
/// `requests_per_second_per_token`); past it requests answer 429 `rate_limited` with
/// `Retry-After`. `/healthz`, `/readyz` and `/openapi.json` are not limited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per second one token may make, sustained. Default 50.
    pub requests_per_second_per_token: u32,
    /// Requests one token may make at once before the sustained rate applies. Default 100.
    pub burst_requests: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second_per_token: 50,
            burst_requests: 100,
        }
    }
}

/// The `[api.quotas]` table: what one account may have or do, whichever token asks (an
/// operator acting for the account counts against it too).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// The most subscriptions one account may have (enabled or disabled); a create past it
    /// answers 403 `quota_exceeded`. Default 1000.
    pub max_subscriptions_per_account: usize,
    /// The most test events (`POST /v1/subscriptions/{id}/test`) one account may send per
    /// minute, all its subscriptions together; past it they answer 429 `quota_exceeded` with
    /// `Retry-After`. Default 60.
    pub test_events_per_minute_per_account: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            max_subscriptions_per_account: 1000,
            test_events_per_minute_per_account: 60,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            tokens_file: None,
            max_body_bytes: 64 * 1024,
            write_timeout_ms: 10_000,
            history_max_deliveries: 100_000,
            history_lookback_secs: 24 * 60 * 60,
            dlq_max_entries: 100_000,
            secret_rotation_overlap_secs: 24 * 60 * 60,
            default_page_size: 50,
            max_page_size: 500,
            replay_max_batch: 1000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            rate_limit: RateLimitConfig::default(),
            quotas: QuotaConfig::default(),
        }
    }
}

/// One bearer token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token as clients send it (`Authorization: Bearer <token>`).
    pub token: String,
    /// The account the token is scoped to; none makes an operator token, which sees every
    /// account.
    #[serde(default)]
    pub account_id: Option<String>,
}

impl fmt::Debug for TokenConfig {
    /// The token is a credential: `check-config` output and logs show only whose it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"…redacted")
            .field("account_id", &self.account_id)
            .finish()
    }
}

/// The shape of `tokens_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenConfig>,
}

impl ApiConfig {
    /// Checks every value before any I/O, naming the key of the first bad one
    /// (`api.tokens[1].token: must not be empty`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.tokens.is_empty() && self.tokens_file.is_none() {
            return Err(
                "api.tokens: no token configured (neither api.tokens nor api.tokens_file); the API would refuse every request".to_owned(),
            );
        }
        validate_tokens(&self.tokens, "api.tokens")?;
        if self
            .tokens_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err("api.tokens_file: must not be empty; leave it out instead".to_owned());
        }
        if !(1024..=MAX_BODY_BYTES_LIMIT).contains(&self.max_body_bytes) {
            return Err(format!(
                "api.max_body_bytes: must be between 1024 and {MAX_BODY_BYTES_LIMIT}, got {}",
                self.max_body_bytes
            ));
        }
        let positive = [
            ("api.write_timeout_ms", self.write_timeout_ms),
            ("api.header_read_timeout_ms", self.header_read_timeout_ms),
            ("api.request_timeout_ms", self.request_timeout_ms),
            ("api.history_lookback_secs", self.history_lookback_secs),
            (
                "api.secret_rotation_overlap_secs",
                self.secret_rotation_overlap_secs,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key}: must be positive"));
            }
        }
        let counts = [
            ("api.history_max_deliveries", self.history_max_deliveries),
            ("api.dlq_max_entries", self.dlq_max_entries),
            ("api.default_page_size", self.default_page_size),
            ("api.max_page_size", self.max_page_size),
            ("api.replay_max_batch", self.replay_max_batch),
            (
                "api.quotas.max_subscriptions_per_account",
                self.quotas.max_subscriptions_per_account,
            ),
        ];
        for (key, value) in counts {
            if value == 0 {
                return Err(format!("{key}: must be positive"));
            }
        }
        let rates = [
            (
                "api.rate_limit.requests_per_second_per_token",
                self.rate_limit.requests_per_second_per_token,
            ),
            (
                "api.rate_limit.burst_requests",
                self.rate_limit.burst_requests,
            ),
            (
                "api.quotas.test_events_per_minute_per_account",
                self.quotas.test_events_per_minute_per_account,
            ),
        ];
        for (key, value) in rates {
            if value == 0 {
                return Err(format!("{key}: must be positive"));
            }
        }
        if self.request_timeout_ms <= self.write_timeout_ms {
            return Err(format!(
                "api.request_timeout_ms: is {} but must exceed api.write_timeout_ms ({}): a write waits that long for its confirmation",
                self.request_timeout_ms, self.write_timeout_ms
            ));
        }
        if self.default_page_size > self.max_page_size {
            return Err(format!(
                "api.default_page_size: is {} but must not exceed api.max_page_size ({})",
                self.default_page_size, self.max_page_size
            ));
        }
        Ok(())
    }

    /// The write timeout as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// The header-read timeout as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// The whole-request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The history's lookback as a duration.
    pub fn history_lookback(&self) -> Duration {
        Duration::from_secs(self.history_lookback_secs)
    }

    /// The rotation overlap as a duration.
    pub fn secret_rotation_overlap(&self) -> Duration {
        Duration::from_secs(self.secret_rotation_overlap_secs)
    }

    /// Every token: those of the table, then those of `tokens_file` (read now), checked together
    /// (no token listed twice).
    pub fn load_tokens(&self) -> Result<Vec<TokenConfig>> {
        let mut tokens = self.tokens.clone();
        if let Some(path) = &self.tokens_file {
            let from_file = read_tokens_file(path)?;
            validate_tokens(&from_file, "tokens")
                .map_err(|message| tokens_file_error(path, message))?;
            tokens.extend(from_file);
        }
        if tokens.is_empty() {
            return Err(Error::Config(
                "api.tokens: no token configured (api.tokens and api.tokens_file list none)"
                    .to_owned(),
            ));
        }
        validate_tokens(&tokens, "api.tokens").map_err(|message| {
            Error::Config(format!(
                "{message} (api.tokens and api.tokens_file together)"
            ))
        })?;
        Ok(tokens)
    }
}

fn tokens_file_error(path: &Path, message: String) -> Error {
    Error::Config(format!("api.tokens_file: {}: {message}", path.display()))
}

fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| tokens_file_error(path, format!("cannot be read: {error}")))?;
    let is_json = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("json"));
    let parsed: TokensFile = if is_json {
        serde_json::from_str(&text).map_err(|error| tokens_file_error(path, error.to_string()))?
    } else {
        Figment::new()
            .merge(Toml::string(&text))
            .extract()
            .map_err(|error| {
                // The TOML parser quotes the offending line below its first line, and that line
                // may hold a token.
                let message = error.to_string();
                let first_line = message.lines().next().unwrap_or_default().to_owned();
                tokens_file_error(path, first_line)
            })?
    };
    Ok(parsed.tokens)
}

/// Checks a list of tokens; `key` is where they came from, for the messages.
fn validate_tokens(tokens: &[TokenConfig], key: &str) -> std::result::Result<(), String> {
    let mut seen = BTreeSet::new();
    for (index, token) in tokens.iter().enumerate() {
        let at = format!("{key}[{index}]");
        if token.token.is_empty() {
            return Err(format!("{at}.token: must not be empty"));
        }
        // Tokens travel in a header: anything but visible ASCII could not be sent, and
        // surrounding blanks are almost always a copy-and-paste accident.
        if !token.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}.token: must be visible ASCII without spaces (it is sent as `Authorization: Bearer <token>`)"
            ));
        }
        if !seen.insert(token.token.as_str()) {
            return Err(format!("{at}.token: the same token is listed twice"));
        }
        if let Some(account_id) = &token.account_id {
            check_account_id(account_id).map_err(|reason| format!("{at}.account_id: {reason}"))?;
        }
    }
    Ok(())
}

/// The rules for account ids, in configuration and in requests: non-empty, bounded, printable.
pub(crate) fn check_account_id(account_id: &str) -> std::result::Result<(), String> {
    if account_id.is_empty() {
        return Err("must not be empty (leave it out for an operator token)".to_owned());
    }
    if account_id.len() > MAX_ACCOUNT_ID_LEN {
        return Err(format!("must be at most {MAX_ACCOUNT_ID_LEN} bytes long"));
    }
    if !account_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII without spaces".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(token: &str, account_id: Option<&str>) -> TokenConfig {
        TokenConfig {
            token: token.to_owned(),
            account_id: account_id.map(str::to_owned),
        }
    }

    fn with_tokens(tokens: Vec<TokenConfig>) -> ApiConfig {
        ApiConfig {
            tokens,
            ..ApiConfig::default()
        }
    }

    #[test]
    fn defaults_with_a_token_are_valid() {
        let config = with_tokens(vec![token("dev-token", Some("acc_demo"))]);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(config.max_body_bytes, 65_536);
        assert_eq!(
            config.secret_rotation_overlap(),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(ApiConfig, &str)> = vec![
            (ApiConfig::default(), "api.tokens: no token configured"),
            (
                with_tokens(vec![token("a", None), token("", None)]),
                "api.tokens[1].token: must not be empty",
            ),
            (
                with_tokens(vec![token("has space", None)]),
                "api.tokens[0].token: must be visible ASCII",
            ),
            (
                with_tokens(vec![token("a", Some("x")), token("a", None)]),
                "api.tokens[1].token: the same token is listed twice",
            ),
            (
                with_tokens(vec![token("a", Some(""))]),
                "api.tokens[0].account_id: must not be empty",
            ),
            (
                ApiConfig {
                    max_body_bytes: 10,
                    ..with_tokens(vec![token("a", None)])
                },
                "api.max_body_bytes",
            ),
            (
                ApiConfig {
                    write_timeout_ms: 0,
                    ..with_tokens(vec![token("a", None)])
                },
                "api.write_timeout_ms: must be positive",
            ),
            (
                ApiConfig {
                    request_timeout_ms: 10_000,
                    ..with_tokens(vec![token("a", None)])
                },
                "api.request_timeout_ms: is 10000 but must exceed api.write_timeout_ms (10000)",
            ),
            (
                ApiConfig {
                    header_read_timeout_ms: 0,
                    ..with_tokens(vec![token("a", None)])
                },
                "api.header_read_timeout_ms: must be positive",
            ),
            (
                ApiConfig {
                    rate_limit: RateLimitConfig {
                        burst_requests: 0,
                        ..RateLimitConfig::default()
                    },
                    ..with_tokens(vec![token("a", None)])
                },
                "api.rate_limit.burst_requests: must be positive",
            ),
            (
                ApiConfig {
                    quotas: QuotaConfig {
                        max_subscriptions_per_account: 0,
                        ..QuotaConfig::default()
                    },
                    ..with_tokens(vec![token("a", None)])
                },
                "api.quotas.max_subscriptions_per_account: must be positive",
            ),
            (
                ApiConfig {
                    quotas: QuotaConfig {
                        test_events_per_minute_per_account: 0,
                        ..QuotaConfig::default()
                    },
                    ..with_tokens(vec![token("a", None)])
                },
                "api.quotas.test_events_per_minute_per_account: must be positive",
            ),
            (
                ApiConfig {
                    dlq_max_entries: 0,
                    ..with_tokens(vec![token("a", None)])
                },
                "api.dlq_max_entries: must be positive",
            ),
            (
                ApiConfig {
                    default_page_size: 900,
                    ..with_tokens(vec![token("a", None)])
                },
                "api.default_page_size: is 900",
            ),
            (
                ApiConfig {
                    tokens_file: Some(PathBuf::new()),
                    ..ApiConfig::default()
                },
                "api.tokens_file",
            ),
        ];
        for (config, expected) in cases {
            let error = config.validate().expect_err(expected);
            assert!(error.starts_with(expected), "{error:?} vs {expected:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_and_missing_ones_defaulted() {
        let parsed: ApiConfig = serde_json::from_str(
            r#"{"listen": "0.0.0.0:9000", "tokens": [{"token": "t"}], "write_timeout_ms": 5}"#,
        )
        .expect("parses");
        assert_eq!(parsed.listen.port(), 9000);
        assert_eq!(parsed.tokens, vec![token("t", None)]);
        assert_eq!(parsed.write_timeout_ms, 5);
        assert_eq!(parsed.max_page_size, ApiConfig::default().max_page_size);
        let error = serde_json::from_str::<ApiConfig>(r#"{"write_timeout_secs": 5}"#)
            .expect_err("unknown key");
        assert!(error.to_string().contains("write_timeout_secs"), "{error}");
        let error =
            serde_json::from_str::<ApiConfig>(r#"{"tokens": [{"token": "t", "acount_id": "a"}]}"#)
                .expect_err("unknown token key");
        assert!(error.to_string().contains("acount_id"), "{error}");
        let parsed: ApiConfig = serde_json::from_str(
            r#"{"rate_limit": {"burst_requests": 7}, "quotas": {"max_subscriptions_per_account": 3}}"#,
        )
        .expect("nested tables parse");
        assert_eq!(parsed.rate_limit.burst_requests, 7);
        assert_eq!(parsed.rate_limit.requests_per_second_per_token, 50);
        assert_eq!(parsed.quotas.max_subscriptions_per_account, 3);
        assert_eq!(parsed.quotas.test_events_per_minute_per_account, 60);
        let error = serde_json::from_str::<ApiConfig>(r#"{"quotas": {"max_subscriptions": 3}}"#)
            .expect_err("unknown quota key");
        assert!(error.to_string().contains("max_subscriptions"), "{error}");
    }

    #[test]
    fn debug_output_hides_tokens() {
        let config = with_tokens(vec![token("s3cret-token", Some("acc_1"))]);
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret-token"), "{printed}");
        assert!(printed.contains("acc_1"), "{printed}");
    }

    #[test]
    fn tokens_file_in_toml_or_json_adds_to_the_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let toml = dir.path().join("tokens.toml");
        std::fs::write(
            &toml,
            "[[tokens]]\ntoken = \"from-toml\"\naccount_id = \"acc_t\"\n",
        )
        .expect("write");
        let json = dir.path().join("tokens.json");
        std::fs::write(&json, r#"{"tokens": [{"token": "from-json"}]}"#).expect("write");

        let config = ApiConfig {
            tokens_file: Some(toml),
            ..with_tokens(vec![token("inline", None)])
        };
        let loaded = config.load_tokens().expect("loads");
        assert_eq!(
            loaded,
            vec![token("inline", None), token("from-toml", Some("acc_t"))]
        );
        let config = ApiConfig {
            tokens_file: Some(json),
            ..ApiConfig::default()
        };
        assert_eq!(config.validate(), Ok(()), "a file alone is enough");
        assert_eq!(
            config.load_tokens().expect("loads"),
            vec![token("from-json", None)]
        );
    }

    #[test]
    fn a_bad_tokens_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.toml");
        let config = ApiConfig {
            tokens_file: Some(missing.clone()),
            ..ApiConfig::default()
        };
        let error = config.load_tokens().expect_err("missing file").to_string();
        assert!(
            error.contains("api.tokens_file") && error.contains("missing.toml"),
            "{error}"
        );

        let duplicate = dir.path().join("dup.toml");
        std::fs::write(&duplicate, "[[tokens]]\ntoken = \"inline\"\n").expect("write");
        let config = ApiConfig {
            tokens_file: Some(duplicate),
            ..with_tokens(vec![token("inline", None)])
        };
        let error = config.load_tokens().expect_err("duplicate").to_string();
        assert!(error.contains("listed twice"), "{error}");
        assert!(!error.contains("inline"), "never quote a token: {error}");

        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "[[tokens]]\ntoken = \"\"\n").expect("write");
        let config = ApiConfig {
            tokens_file: Some(empty),
            ..ApiConfig::default()
        };
        let error = config.load_tokens().expect_err("empty token").to_string();
        assert!(
            error.contains("tokens[0].token: must not be empty"),
            "{error}"
        );
    }
}
