//! Connection settings shared by every Kafka client of a process, and the producers built on
//! them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use serde::Deserialize;

use crate::group_health::BrokerWatch;
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
    /// This process's identity in its consumer groups: with it, the fan-out's and the sender's
    /// consumers are *static* members (`group.instance.id`), so a process restarted under the
    /// same identity (a `kill -9`, a crash, a container restart) takes its partitions back at
    /// once instead of waiting for the broker to expire its previous incarnation. It must be
    /// unique among the processes of each group and stable across restarts of the same one
    /// (on Kubernetes: the pod name, which the Helm chart sets). Two processes with one identity
    /// fence each other: the older one exits. Each role appends its name (`<id>-sender`,
    /// `<id>-fanout`), so the roles of `dispatchd all` share one identity. Unset (the default):
    /// dynamic membership — deliberately not derived from the host name, because two processes
    /// on one host (development, tests, a scale-out on one machine) would then fence each other.
    pub instance_id: Option<String>,
    /// `session.timeout.ms` of the fan-out's and the sender's consumers, in milliseconds: how
    /// long the broker keeps the partitions of a member it no longer hears from. A static
    /// member does not leave its group on shutdown, so this is also how long the partitions of
    /// a stopped (SIGTERM) process that does not come back wait before they move (see
    /// docs/operations.md). At least the broker's `group.min.session.timeout.ms` (6 s by
    /// default).
    pub session_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:19092".to_owned(),
            topic_prefix: String::new(),
            librdkafka: BTreeMap::new(),
            request_timeout_ms: 30_000,
            instance_id: None,
            session_timeout_ms: 10_000,
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
        if let Some(id) = &self.instance_id {
            // group.instance.id is a broker-side name: keep it printable and short.
            let valid = !id.is_empty()
                && id.len() <= 200
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !valid {
                return Err(format!(
                    "kafka.instance_id: {id:?} must be 1 to 200 characters of A-Z a-z 0-9 . _ -"
                ));
            }
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return Err(format!(
                "kafka.session_timeout_ms: must be between 1000 and 300000, got {}",
                self.session_timeout_ms
            ));
        }
        Ok(())
    }

    /// The `group.instance.id` of `role`'s consumer, when membership is static.
    pub fn group_instance_id(&self, role: &str) -> Option<String> {
        self.instance_id.as_ref().map(|id| format!("{id}-{role}"))
    }

    /// A librdkafka configuration for a member of consumer group `group_id` run by `role`
    /// (`fanout`, `sender`): [`KafkaConfig::client_config`] plus the group, the session timeout
    /// and, with an instance id, static membership.
    pub fn group_member_config(&self, group_id: &str, role: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            // librdkafka's default heartbeat (3 s) is meant for a 45 s session; a third of the
            // session keeps two heartbeats' slack inside it.
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).max(500).to_string(),
            );
        if let Some(instance) = self.group_instance_id(role) {
            config.set("group.instance.id", instance);
        }
        config
    }

    /// The group session timeout as a duration.
    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
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
        self.reliable_config().create().map_err(Error::Client)
    }

    /// As [`Self::reliable_producer`], reporting statistics every second to a context that
    /// follows whether it still knows a broker ([`WatchedContext`]): for a producer that is
    /// replaced when librdkafka left it knowing none (librdkafka#5301).
    pub fn watched_reliable_producer(&self) -> Result<WatchedProducer> {
        let mut config = self.reliable_config();
        config.set("statistics.interval.ms", WATCHED_STATISTICS_INTERVAL_MS);
        let brokers = Arc::new(BrokerWatch::default());
        let producer = config
            .create_with_context(WatchedContext {
                brokers: Arc::clone(&brokers),
            })
            .map_err(Error::Client)?;
        Ok(WatchedProducer { producer, brokers })
    }

    fn reliable_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                self.request_timeout_ms.max(5_000).to_string(),
            );
        config
    }
}

impl std::fmt::Debug for WatchedProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedProducer")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

/// `statistics.interval.ms` of a [`WatchedContext`] client.
const WATCHED_STATISTICS_INTERVAL_MS: &str = "1000";

/// A client context that follows, from the client's statistics, whether the client still knows
/// a broker of the cluster ([`BrokerWatch`]).
#[derive(Debug, Default)]
pub struct WatchedContext {
    brokers: Arc<BrokerWatch>,
}

/// A reliable producer and the watch of its brokers (a `FutureProducer` hides its context).
pub struct WatchedProducer {
    /// The producer itself.
    pub producer: FutureProducer<WatchedContext>,
    /// Since when the producer has known no broker, if it knows none.
    pub brokers: Arc<BrokerWatch>,
}

impl rdkafka::ClientContext for WatchedContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.brokers.observe(&statistics);
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

/// Errors after which a client is unusable: librdkafka's fatal error (raised, for a consumer,
/// when a static member is fenced by another with the same `group.instance.id`), a fenced
/// producer or member.
pub fn is_fatal(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(Code::Fatal | Code::Fenced | Code::FencedInstanceId)
    )
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
    fn static_membership_needs_a_valid_identity_and_adds_the_role() {
        let config = KafkaConfig {
            instance_id: Some("pod-7".to_owned()),
            ..KafkaConfig::default()
        };
        assert!(config.validate().is_ok());
        let member = config.group_member_config("dispatch-sender", "sender");
        assert_eq!(member.get("group.id"), Some("dispatch-sender"));
        assert_eq!(member.get("group.instance.id"), Some("pod-7-sender"));
        assert_eq!(member.get("session.timeout.ms"), Some("10000"));
        assert_eq!(
            config.group_instance_id("fanout").as_deref(),
            Some("pod-7-fanout")
        );
        for bad in ["", "two words", "a/b"] {
            let config = KafkaConfig {
                instance_id: Some(bad.to_owned()),
                ..KafkaConfig::default()
            };
            assert!(
                config
                    .validate()
                    .expect_err(bad)
                    .starts_with("kafka.instance_id"),
                "{bad:?}"
            );
        }
        let config = KafkaConfig {
            session_timeout_ms: 10,
            ..KafkaConfig::default()
        };
        assert!(
            config
                .validate()
                .expect_err("too short")
                .starts_with("kafka.session_timeout_ms")
        );
        // No identity: dynamic membership.
        let member = KafkaConfig::default().group_member_config("g", "fanout");
        assert_eq!(member.get("group.instance.id"), None);
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
