//! The topics of the design (section 2): their names under a configurable prefix, partition
//! counts and configs. `dispatchd topics ensure` creates exactly these.

use std::collections::BTreeMap;

use dispatch_core::catalog::Family;
use serde::Deserialize;

const SEVEN_DAYS_MS: u64 = 7 * 24 * 60 * 60 * 1000;
const ONE_DAY_MS: u64 = 24 * 60 * 60 * 1000;
const ONE_HOUR_MS: u64 = 60 * 60 * 1000;

/// Partition counts, replication and retention of the topics; the `[topics]` configuration table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// Partitions of each domain topic `posternity.events.<family>`.
    pub domain_partitions: i32,
    /// Partitions of `dispatch.deliveries`, each lane and each retry tier. The sender's
    /// parallelism: at most this many sender processes share the work.
    pub delivery_partitions: i32,
    /// Partitions of `dispatch.attempts`.
    pub attempts_partitions: i32,
    /// Partitions of `dispatch.dlq`.
    pub dlq_partitions: i32,
    /// Partitions of `dispatch.invalid`.
    pub invalid_partitions: i32,
    /// Replication factor of every topic (1 on a single local broker, 3 in production).
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic; unset leaves the broker default. With replication
    /// 3 and producers on `acks=all`, 2 keeps writes going through the loss of one broker.
    pub min_insync_replicas: Option<i32>,
    /// How long domain events, deliveries, retries, attempts and invalid records are kept.
    pub retention_ms: u64,
    /// How long dead letters are kept (the product promises 7 days).
    pub dlq_retention_ms: u64,
    /// Dedicated delivery lanes: each becomes `dispatch.deliveries.<lane>`.
    pub lanes: Vec<String>,
    /// Lets `topics ensure` create topics with `replication_factor` below
    /// [`SAFE_REPLICATION_FACTOR`] or `min_insync_replicas` unset or below
    /// [`SAFE_MIN_INSYNC_REPLICAS`] — topics that one broker failure can lose acknowledged
    /// records from. For a single development broker only. Default false.
    pub allow_unsafe_durability: bool,
}

/// The least replication factor `topics ensure` accepts unless `allow_unsafe_durability`.
pub const SAFE_REPLICATION_FACTOR: i32 = 3;
/// The least `min.insync.replicas` `topics ensure` accepts unless `allow_unsafe_durability`:
/// with `acks=all`, a write is then on two brokers before it is acknowledged.
pub const SAFE_MIN_INSYNC_REPLICAS: i32 = 2;

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            domain_partitions: 12,
            delivery_partitions: 24,
            attempts_partitions: 12,
            dlq_partitions: 6,
            invalid_partitions: 3,
            replication_factor: 1,
            min_insync_replicas: None,
            retention_ms: SEVEN_DAYS_MS,
            dlq_retention_ms: SEVEN_DAYS_MS,
            lanes: Vec::new(),
            allow_unsafe_durability: false,
        }
    }
}

impl TopicSettings {
    /// Whether topics made from these settings keep every acknowledged record through the loss
    /// of one broker: replication factor at least [`SAFE_REPLICATION_FACTOR`] and
    /// `min.insync.replicas` at least [`SAFE_MIN_INSYNC_REPLICAS`], unless
    /// `allow_unsafe_durability` says the operator knows they do not. `topics ensure` refuses
    /// to create topics otherwise; the error says what is wrong and how to allow it.
    pub fn check_durability(&self) -> Result<(), String> {
        if self.allow_unsafe_durability {
            return Ok(());
        }
        let mut problems = Vec::new();
        if self.replication_factor < SAFE_REPLICATION_FACTOR {
            problems.push(format!(
                "topics.replication_factor is {}, below {SAFE_REPLICATION_FACTOR}",
                self.replication_factor
            ));
        }
        match self.min_insync_replicas {
            None => problems.push(
                "topics.min_insync_replicas is not set (the broker default, usually 1, acknowledges a write held by one broker only)".to_owned(),
            ),
            Some(min_isr) if min_isr < SAFE_MIN_INSYNC_REPLICAS => problems.push(format!(
                "topics.min_insync_replicas is {min_isr}, below {SAFE_MIN_INSYNC_REPLICAS}"
            )),
            Some(_) => {}
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!(
            "refusing to create topics that the loss of one broker can lose acknowledged records from: {}. \
             In production set `replication_factor = {SAFE_REPLICATION_FACTOR}` and `min_insync_replicas = {SAFE_MIN_INSYNC_REPLICAS}` under [topics]; \
             on a single development broker allow it explicitly with `allow_unsafe_durability = true` under [topics] \
             (or DISPATCH_TOPICS__ALLOW_UNSAFE_DURABILITY=true)",
            problems.join("; ")
        ))
    }

    /// Checks the settings, naming the first bad key.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            ("topics.domain_partitions", self.domain_partitions),
            ("topics.delivery_partitions", self.delivery_partitions),
            ("topics.attempts_partitions", self.attempts_partitions),
            ("topics.dlq_partitions", self.dlq_partitions),
            ("topics.invalid_partitions", self.invalid_partitions),
            ("topics.replication_factor", self.replication_factor),
        ];
        for (key, value) in counts {
            if !(1..=10_000).contains(&value) {
                return Err(format!("{key}: must be between 1 and 10000, got {value}"));
            }
        }
        if let Some(min_isr) = self.min_insync_replicas
            && !(1..=self.replication_factor).contains(&min_isr)
        {
            return Err(format!(
                "topics.min_insync_replicas: must be between 1 and replication_factor ({}), got {min_isr}",
                self.replication_factor
            ));
        }
        for (key, value) in [
            ("topics.retention_ms", self.retention_ms),
            ("topics.dlq_retention_ms", self.dlq_retention_ms),
        ] {
            if value < ONE_HOUR_MS {
                return Err(format!(
                    "{key}: must be at least one hour ({ONE_HOUR_MS}), got {value}"
                ));
            }
        }
        for lane in &self.lanes {
            if !valid_name_part(lane) {
                return Err(format!(
                    "topics.lanes: {lane:?} is not a valid lane name (1-64 characters of a-z 0-9 _ -)"
                ));
            }
        }
        Ok(())
    }
}

/// Lane names and tier names become topic-name suffixes.
pub fn valid_name_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 64
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// The names of every topic, under one prefix. Tests use a unique prefix so they never share
/// topics; production uses an empty prefix or an environment name (`staging.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    /// Names under `prefix` (used as is: include a trailing `.` if you want one).
    pub fn new(prefix: impl Into<String>) -> Self {
        TopicNames {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `posternity.events.<family>`, or `None` for a family without a domain topic.
    pub fn domain(&self, family: Family) -> Option<String> {
        family.domain_topic().map(|topic| self.named(&topic))
    }

    /// `dispatch.subscriptions`.
    pub fn subscriptions(&self) -> String {
        self.named("dispatch.subscriptions")
    }

    /// `dispatch.deliveries`.
    pub fn deliveries(&self) -> String {
        self.named("dispatch.deliveries")
    }

    /// `dispatch.deliveries.<lane>`.
    pub fn lane(&self, lane: &str) -> String {
        self.named(&format!("dispatch.deliveries.{lane}"))
    }

    /// `dispatch.retry.<tier>`, e.g. `dispatch.retry.5m`.
    pub fn retry_tier(&self, tier: &str) -> String {
        self.named(&format!("dispatch.retry.{tier}"))
    }

    /// `dispatch.attempts`.
    pub fn attempts(&self) -> String {
        self.named("dispatch.attempts")
    }

    /// `dispatch.dlq`.
    pub fn dlq(&self) -> String {
        self.named("dispatch.dlq")
    }

    /// `dispatch.invalid`.
    pub fn invalid(&self) -> String {
        self.named("dispatch.invalid")
    }
}

/// One topic as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full name, prefix included.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Topic-level configs we set and check for drift.
    pub configs: BTreeMap<String, String>,
}

fn configs(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect()
}

/// Every topic of the design, for the given settings and retry tier names (`1m`, `5m`, ...).
pub fn topic_specs(
    names: &TopicNames,
    settings: &TopicSettings,
    retry_tiers: &[String],
) -> Vec<TopicSpec> {
    let delete = |retention_ms: u64| {
        configs(&[
            ("cleanup.policy", "delete".to_owned()),
            ("retention.ms", retention_ms.to_string()),
            // Retention deletes whole segments: a segment much shorter than the retention keeps
            // data from living up to twice as long.
            ("segment.ms", ONE_DAY_MS.min(retention_ms).to_string()),
        ])
    };
    let spec = |name: String, partitions: i32, mut configs: BTreeMap<String, String>| {
        if let Some(min_isr) = settings.min_insync_replicas {
            configs.insert("min.insync.replicas".to_owned(), min_isr.to_string());
        }
        TopicSpec {
            name,
            partitions,
            replication_factor: settings.replication_factor,
            configs,
        }
    };

    let mut specs = Vec::new();
    for family in Family::PUBLISHED {
        if let Some(name) = names.domain(family) {
            specs.push(spec(
                name,
                settings.domain_partitions,
                delete(settings.retention_ms),
            ));
        }
    }
    specs.push(spec(
        names.subscriptions(),
        // One partition: a total order of writes, so every process folds conflicting updates
        // the same way.
        1,
        configs(&[
            ("cleanup.policy", "compact".to_owned()),
            ("retention.ms", "-1".to_owned()),
            // Compaction only touches closed segments; roll hourly so deleted subscriptions'
            // secrets do not linger.
            ("segment.ms", ONE_HOUR_MS.to_string()),
            ("min.cleanable.dirty.ratio", "0.1".to_owned()),
        ]),
    ));
    specs.push(spec(
        names.deliveries(),
        settings.delivery_partitions,
        delete(settings.retention_ms),
    ));
    for lane in &settings.lanes {
        specs.push(spec(
            names.lane(lane),
            settings.delivery_partitions,
            delete(settings.retention_ms),
        ));
    }
    for tier in retry_tiers {
        specs.push(spec(
            names.retry_tier(tier),
            settings.delivery_partitions,
            delete(settings.retention_ms),
        ));
    }
    specs.push(spec(
        names.attempts(),
        settings.attempts_partitions,
        delete(settings.retention_ms),
    ));
    specs.push(spec(
        names.dlq(),
        settings.dlq_partitions,
        configs(&[
            // Compacted so a replay or discard (a tombstone) removes the entry; deleted after
            // the retention so nothing is kept longer than promised.
            ("cleanup.policy", "compact,delete".to_owned()),
            ("retention.ms", settings.dlq_retention_ms.to_string()),
            ("segment.ms", ONE_HOUR_MS.to_string()),
            ("delete.retention.ms", ONE_DAY_MS.to_string()),
        ]),
    ));
    specs.push(spec(
        names.invalid(),
        settings.invalid_partitions,
        delete(settings.retention_ms),
    ));
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_cover_the_design_under_the_prefix() {
        let settings = TopicSettings {
            lanes: vec!["acme".into()],
            min_insync_replicas: Some(1),
            ..TopicSettings::default()
        };
        let specs = topic_specs(
            &TopicNames::new("t1."),
            &settings,
            &["1m".into(), "5m".into(), "15m".into(), "1h".into()],
        );
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "t1.posternity.events.image",
                "t1.posternity.events.video",
                "t1.posternity.events.operation",
                "t1.posternity.events.studio",
                "t1.posternity.events.map",
                "t1.dispatch.subscriptions",
                "t1.dispatch.deliveries",
                "t1.dispatch.deliveries.acme",
                "t1.dispatch.retry.1m",
                "t1.dispatch.retry.5m",
                "t1.dispatch.retry.15m",
                "t1.dispatch.retry.1h",
                "t1.dispatch.attempts",
                "t1.dispatch.dlq",
                "t1.dispatch.invalid",
            ]
        );
        let dlq = specs
            .iter()
            .find(|s| s.name == "t1.dispatch.dlq")
            .expect("dlq");
        assert_eq!(dlq.configs["cleanup.policy"], "compact,delete");
        assert_eq!(dlq.configs["retention.ms"], "604800000");
        assert_eq!(dlq.configs["segment.ms"], "3600000");
        let subscriptions = specs
            .iter()
            .find(|s| s.name == "t1.dispatch.subscriptions")
            .expect("subscriptions");
        assert_eq!(subscriptions.partitions, 1);
        assert_eq!(subscriptions.configs["cleanup.policy"], "compact");
        assert!(
            specs
                .iter()
                .all(|s| s.configs["min.insync.replicas"] == "1")
        );
    }

    #[test]
    fn validation_names_the_key() {
        let bad = TopicSettings {
            delivery_partitions: 0,
            ..TopicSettings::default()
        };
        assert!(
            bad.validate()
                .expect_err("zero")
                .starts_with("topics.delivery_partitions")
        );
        let bad = TopicSettings {
            lanes: vec!["Big Lane".into()],
            ..TopicSettings::default()
        };
        assert!(
            bad.validate()
                .expect_err("lane")
                .starts_with("topics.lanes")
        );
        let bad = TopicSettings {
            min_insync_replicas: Some(2),
            ..TopicSettings::default()
        };
        assert!(
            bad.validate()
                .expect_err("isr")
                .starts_with("topics.min_insync_replicas")
        );
        assert!(TopicSettings::default().validate().is_ok());
    }

    #[test]
    fn durability_below_production_is_refused_unless_allowed() {
        let single = TopicSettings::default();
        let error = single
            .check_durability()
            .expect_err("replication 1, no min ISR");
        assert!(
            error.contains("topics.replication_factor is 1, below 3")
                && error.contains("topics.min_insync_replicas is not set")
                && error.contains("allow_unsafe_durability = true"),
            "{error}"
        );
        let low_isr = TopicSettings {
            replication_factor: 3,
            min_insync_replicas: Some(1),
            ..TopicSettings::default()
        };
        let error = low_isr.check_durability().expect_err("min ISR 1");
        assert!(
            error.contains("topics.min_insync_replicas is 1, below 2")
                && !error.contains("replication_factor is"),
            "{error}"
        );
        let production = TopicSettings {
            replication_factor: 3,
            min_insync_replicas: Some(2),
            ..TopicSettings::default()
        };
        assert_eq!(production.check_durability(), Ok(()));
        let allowed = TopicSettings {
            allow_unsafe_durability: true,
            ..TopicSettings::default()
        };
        assert_eq!(allowed.check_durability(), Ok(()));
    }
}
