//! Connection settings shared by every Kafka client of a process, and the producers built on
//! them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use serde::Deserialize;

use crate::{Error, Result};

/// The `[kafka]` configuration table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Prepended to every topic name (e.g. `staging.`); tests use a unique prefix each.
    pub topic_prefix: String,
    /// librdkafka settings passed through unchanged to every client (SASL/SSL, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`. Ours win where both set a key that correctness
    /// depends on (`enable.idempotence`, `acks`, isolation and commit modes).
    pub librdkafka: BTreeMap<String, String>,
    /// How long admin and metadata requests may take.
    pub request_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:19092".to_owned(),
            topic_prefix: String::new(),
            librdkafka: BTreeMap::new(),
            request_timeout_ms: 30_000,
        }
    }
}

impl KafkaConfig {
    /// Checks the settings before any I/O, naming the first bad key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err("kafka.bootstrap_servers: must name at least one broker".to_owned());
        }
        for server in self.bootstrap_servers.split(',') {
            let server = server.trim();
            let port_ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!(
                    "kafka.bootstrap_servers: {server:?} is not host:port"
                ));
            }
        }
        if !self
            .topic_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "kafka.topic_prefix: {:?} may contain only A-Z a-z 0-9 . _ -",
                self.topic_prefix
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err("kafka.request_timeout_ms: must be positive".to_owned());
        }
        Ok(())
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// A librdkafka configuration with the bootstrap servers and the pass-through settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config
    }

    /// A producer that never loses or duplicates what it was handed: idempotent, `acks=all`,
    /// bounded delivery time so a dead cluster surfaces as an error instead of a hang.
    pub fn reliable_producer(&self) -> Result<FutureProducer> {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                self.request_timeout_ms.max(5_000).to_string(),
            );
        config.create().map_err(Error::Client)
    }
}

/// Pause between retries of a request that failed transiently.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Runs `request` until it succeeds, fails for good, or `timeout` passed. Right after a broker
/// start or a topic creation, partition leaders may still be settling.
pub(crate) fn retry_transient<T>(
    timeout: Duration,
    operation: &'static str,
    mut request: impl FnMut() -> std::result::Result<T, rdkafka::error::KafkaError>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match request() {
            Ok(value) => return Ok(value),
            Err(source) if is_transient(&source) && std::time::Instant::now() < deadline => {
                tracing::debug!(error = %source, operation, "not available yet; retrying");
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(source) => return Err(Error::Request { operation, source }),
        }
    }
}

/// Errors that go away once partition leadership settles.
pub(crate) fn is_transient(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::UnknownTopicOrPartition
                | Code::RequestTimedOut
                | Code::OperationTimedOut
                | Code::BrokerTransportFailure
                | Code::AllBrokersDown
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let mut config = KafkaConfig::default();
        assert!(config.validate().is_ok());
        config.bootstrap_servers = "localhost".into();
        assert!(
            config
                .validate()
                .expect_err("no port")
                .starts_with("kafka.bootstrap_servers")
        );
        config.bootstrap_servers = "a:1, b:2".into();
        assert!(config.validate().is_ok());
        config.topic_prefix = "bad prefix".into();
        assert!(
            config
                .validate()
                .expect_err("space")
                .starts_with("kafka.topic_prefix")
        );
    }

    #[test]
    fn pass_through_settings_reach_the_client_and_bootstrap_wins() {
        let config = KafkaConfig {
            librdkafka: [
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("bootstrap.servers".to_owned(), "elsewhere:1".to_owned()),
            ]
            .into(),
            ..KafkaConfig::default()
        };
        let client = config.client_config();
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:19092"));
    }
}
