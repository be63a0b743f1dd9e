//! The process configuration: a TOML file, overridden by `DISPATCH_*` environment variables,
//! overridden by command-line flags. Checked completely before any I/O; a bad value fails with
//! a message naming its key.

use std::path::Path;

use anyhow::bail;
use dispatch_core::retry::{RetryConfig, RetrySchedule};
use dispatch_fanout::FanoutConfig;
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::topics::TopicSettings;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// Everything `dispatchd` can be configured with. Every table is optional; defaults suit the
/// local broker of `make kafka-up`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Brokers, topic prefix, librdkafka pass-through.
    pub kafka: KafkaConfig,
    /// Partition counts, replication, retention, lanes.
    pub topics: TopicSettings,
    /// The retry schedule (its non-zero delays are the retry tier topics).
    pub retry: RetryConfig,
    /// The fan-out role.
    pub fanout: FanoutConfig,
    /// The sender role.
    pub sender: dispatch_sender::config::SenderConfig,
    /// The webhook client of the sender.
    pub http: dispatch_http::HttpConfig,
    /// Telemetry server and start-up limits of every role.
    pub metrics: crate::roles::MetricsConfig,
    /// The admin API role (checked only by the roles that serve it: `api`, `all`).
    pub api: dispatch_api::ApiConfig,
}

/// Overrides given on the command line (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    /// `--bootstrap-servers`.
    pub bootstrap_servers: Option<String>,
    /// `--topic-prefix`.
    pub topic_prefix: Option<String>,
}

/// A configuration that passed every check, with the parts derived from it.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// The raw configuration.
    pub config: DispatchConfig,
    /// The retry schedule built from `config.retry`.
    pub retry: RetrySchedule,
}

impl ValidConfig {
    /// The `[api]` table, checked: only the roles that serve the API need its tokens.
    pub fn api(&self) -> anyhow::Result<&dispatch_api::ApiConfig> {
        self.config
            .api
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(&self.config.api)
    }

    /// The names of the retry tiers (`1m`, `5m`, ...), the suffixes of their topics.
    pub fn retry_tier_names(&self) -> Vec<String> {
        self.retry
            .tiers()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    }
}

/// The short form of `retry.delays` in the environment.
const RETRY_SCHEDULE_ENV: &str = "DISPATCH_RETRY_SCHEDULE";
/// [`RETRY_SCHEDULE_ENV`] as figment's `Env` provider sees it (prefix stripped, lower case).
const RETRY_SCHEDULE_KEY: &str = "retry_schedule";

/// `0s, 1s,2s` → `["0s", "1s", "2s"]`; each delay is checked by the retry table itself.
fn schedule_delays(text: &str) -> anyhow::Result<Vec<String>> {
    let delays: Vec<String> = text
        .split(',')
        .map(|delay| delay.trim().to_owned())
        .collect();
    if delays.iter().any(String::is_empty) {
        bail!(
            "invalid configuration: {RETRY_SCHEDULE_ENV}: {text:?} is not a comma-separated list of delays such as 0s,1m,5m"
        );
    }
    Ok(delays)
}

/// Loads file → environment → flags, and validates.
pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<ValidConfig> {
    let mut figment = Figment::new();
    if let Some(file) = file {
        if !file.is_file() {
            bail!("configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    // DISPATCH_KAFKA__BOOTSTRAP_SERVERS=… sets kafka.bootstrap_servers. DISPATCH_CONFIG names the
    // file itself and is not a key; DISPATCH_RETRY_SCHEDULE is the short form below.
    figment = figment.merge(
        Env::prefixed("DISPATCH_")
            .split("__")
            .ignore(&["config", RETRY_SCHEDULE_KEY]),
    );
    // DISPATCH_RETRY_SCHEDULE=0s,1s,2s sets retry.delays: a whole schedule in one variable, the
    // way demos and tests shorten it (an environment variable cannot carry a TOML list).
    if let Ok(schedule) = std::env::var(RETRY_SCHEDULE_ENV) {
        figment = figment.merge(("retry.delays", schedule_delays(&schedule)?));
    }
    if let Some(servers) = &flags.bootstrap_servers {
        figment = figment.merge(("kafka.bootstrap_servers", servers));
    }
    if let Some(prefix) = &flags.topic_prefix {
        figment = figment.merge(("kafka.topic_prefix", prefix));
    }
    let config: DispatchConfig = figment
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    validate(config)
}

/// Checks every table, naming the first bad key.
pub fn validate(config: DispatchConfig) -> anyhow::Result<ValidConfig> {
    config
        .kafka
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config
        .topics
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config
        .fanout
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config
        .sender
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config.http.validate().map_err(|e| match e {
        dispatch_http::Error::Config { key, message } => {
            anyhow::anyhow!("invalid configuration: http.{key}: {message}")
        }
        other => anyhow::anyhow!("invalid configuration: http: {other}"),
    })?;
    if config.metrics.view_catch_up_timeout_secs == 0 {
        bail!("invalid configuration: metrics.view_catch_up_timeout_secs: must be positive");
    }
    let retry = RetrySchedule::new(config.retry.clone())
        .map_err(|e| anyhow::anyhow!("invalid configuration: retry: {e}"))?;
    for tier in retry.tiers() {
        if !dispatch_kafka::topics::valid_name_part(tier.name()) {
            bail!(
                "invalid configuration: retry.delays: tier {:?} cannot be a topic name suffix",
                tier.name()
            );
        }
    }
    Ok(ValidConfig { config, retry })
}

/// Parses a TOML text without the environment (tests).
#[cfg(test)]
pub fn from_toml(text: &str) -> anyhow::Result<ValidConfig> {
    let config: DispatchConfig = Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    validate(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        format!("{:#}", from_toml(text).expect_err(text))
    }

    #[test]
    fn defaults_are_valid_and_give_the_four_tiers() {
        let valid = from_toml("").expect("defaults");
        assert_eq!(valid.retry_tier_names(), ["1m", "5m", "15m", "1h"]);
        assert_eq!(valid.config.kafka.bootstrap_servers, "127.0.0.1:19092");
    }

    #[test]
    fn errors_name_the_key() {
        assert!(error_of("[kafka]\nbootstrap_server = 'x:1'").contains("bootstrap_server"));
        assert!(
            error_of("[kafka]\nbootstrap_servers = 'nohost'").contains("kafka.bootstrap_servers")
        );
        assert!(
            error_of("[topics]\ndelivery_partitions = 0").contains("topics.delivery_partitions")
        );
        assert!(error_of("[topics]\ndelivery_partitions = 'many'").contains("delivery_partitions"));
        assert!(error_of("[retry]\ndelays = ['1m', 'soon']").contains("soon"));
        assert!(error_of("[retry]\njitter = 2.0").contains("jitter"));
        assert!(error_of("[sender]\nx = 1").contains("sender"));
        assert!(error_of("[fanout]\nbatch_max_records = 0").contains("fanout.batch_max_records"));
        assert!(
            error_of("[fanout]\ndomain_topic_pattern = '('")
                .contains("fanout.domain_topic_pattern")
        );
        assert!(error_of("[metrics]\nlisten = 'nowhere'").contains("listen"));
        assert!(error_of("[http]\ntimeout_ms = 0").contains("http.timeout_ms"));
        assert!(
            error_of("[sender]\nmax_concurrent_requests = 0")
                .contains("sender.max_concurrent_requests")
        );
        assert!(
            error_of("[sender.endpoint]\nmax_backlog = 0").contains("sender.endpoint.max_backlog")
        );
    }

    #[test]
    fn the_short_schedule_form_splits_on_commas() {
        assert_eq!(
            schedule_delays("0s, 1s,2s").expect("valid"),
            ["0s", "1s", "2s"]
        );
        assert!(
            format!("{:#}", schedule_delays("0s,,1s").expect_err("empty"))
                .contains("DISPATCH_RETRY_SCHEDULE")
        );
    }

    #[test]
    fn the_api_table_is_checked_only_when_asked() {
        let valid = from_toml("").expect("no [api] table is fine for fanout and sender");
        assert!(format!("{:#}", valid.api().expect_err("no tokens")).contains("api.tokens"));
        let valid = from_toml("[[api.tokens]]\ntoken = 'dev-token'\naccount_id = 'acc_demo'")
            .expect("valid");
        assert_eq!(valid.api().expect("tokens").tokens.len(), 1);
        assert!(error_of("[api]\nlisten_on = 1").contains("listen_on"));
    }

    #[test]
    fn custom_schedule_gives_custom_tiers() {
        let valid = from_toml("[retry]\ndelays = ['0s', '500ms', '2s']").expect("valid");
        assert_eq!(valid.retry_tier_names(), ["500ms", "2s"]);
    }
}
