//! `topics ensure`: create every topic of the layout that is missing, with its configs, and
//! report every existing topic whose live partition count, replication or configs differ from
//! the spec. It never changes an existing topic: adding partitions moves keys to other
//! partitions and altering configs is an operator's decision, so drift is reported, not fixed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tracing::{info, warn};

use crate::topics::TopicSpec;
use crate::{Error, KafkaConfig, Result};

/// One difference between a live topic and its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The topic.
    pub topic: String,
    /// What differs: `partitions`, `replication_factor`, or a config key.
    pub setting: String,
    /// What the spec says.
    pub expected: String,
    /// What the cluster has (`<unset>` when the key has no value).
    pub actual: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is {} but the spec says {}",
            self.topic, self.setting, self.actual, self.expected
        )
    }
}

/// What `ensure_topics` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Topics this run created.
    pub created: Vec<String>,
    /// Topics that already existed (with or without drift).
    pub existing: Vec<String>,
    /// Differences between existing topics and their specs.
    pub drift: Vec<Drift>,
}

/// Administrative access to the cluster.
pub struct TopicAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
    options: AdminOptions,
    timeout: std::time::Duration,
}

impl fmt::Debug for TopicAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicAdmin").finish_non_exhaustive()
    }
}

/// A live topic's partition count and replication factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicShape {
    /// Number of partitions.
    pub partitions: i32,
    /// Replicas of the first partition.
    pub replication_factor: i32,
    /// Every partition has a leader and no error: the topic can be written and read.
    pub ready: bool,
}

impl TopicAdmin {
    /// Connects an admin client (no request is made yet).
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let client: AdminClient<DefaultClientContext> =
            config.client_config().create().map_err(Error::Client)?;
        let timeout = config.request_timeout();
        Ok(TopicAdmin {
            client: Arc::new(client),
            options: AdminOptions::new().request_timeout(Some(timeout)),
            timeout,
        })
    }

    /// Partition count and replication of every topic in the cluster.
    pub async fn topic_shapes(&self) -> Result<BTreeMap<String, TopicShape>> {
        let client = Arc::clone(&self.client);
        let timeout = self.timeout;
        // fetch_metadata blocks; keep it off the async workers.
        let metadata =
            tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout))
                .await?
                .map_err(|source| Error::Request {
                    operation: "metadata request",
                    source,
                })?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|topic| topic.error().is_none())
            .map(|topic| {
                let partitions = topic.partitions();
                let shape = TopicShape {
                    partitions: partitions.len() as i32,
                    replication_factor: partitions
                        .first()
                        .map(|p| p.replicas().len() as i32)
                        .unwrap_or(0),
                    ready: !partitions.is_empty()
                        && partitions
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none()),
                };
                (topic.name().to_owned(), shape)
            })
            .collect())
    }

    /// Polls the metadata until every topic of `specs` is listed with a leader for each
    /// partition, or the request timeout passed.
    async fn wait_until_visible(
        &self,
        specs: &[TopicSpec],
    ) -> Result<BTreeMap<String, TopicShape>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let shapes = self.topic_shapes().await?;
            let missing = specs
                .iter()
                .find(|spec| !shapes.get(&spec.name).is_some_and(|shape| shape.ready));
            match missing {
                None => return Ok(shapes),
                Some(spec) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::CreateTopic {
                        topic: spec.name.clone(),
                        reason: format!(
                            "created, but without a leader for every partition after {:?}",
                            self.timeout
                        ),
                    });
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    /// The live values of the given config keys of `topic`.
    pub async fn topic_configs(&self, topic: &str) -> Result<BTreeMap<String, Option<String>>> {
        let resources = self
            .client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options)
            .await
            .map_err(|source| Error::Request {
                operation: "describe configs",
                source,
            })?;
        let mut values = BTreeMap::new();
        for resource in resources {
            let resource = resource.map_err(|code| Error::Request {
                operation: "describe configs",
                source: rdkafka::error::KafkaError::AdminOp(code),
            })?;
            for entry in resource.entries {
                values.insert(entry.name, entry.value);
            }
        }
        if values.is_empty() {
            // A topic always has configs (defaults included); none means the broker does not
            // know the topic (yet).
            return Err(Error::CreateTopic {
                topic: topic.to_owned(),
                reason: "the broker returned no configs for it".to_owned(),
            });
        }
        Ok(values)
    }

    /// Creates what is missing and reports drift of what exists. Idempotent: a second run
    /// creates nothing and reports the same drift.
    pub async fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<EnsureReport> {
        let shapes = self.topic_shapes().await?;
        let mut report = EnsureReport::default();

        let missing: Vec<&TopicSpec> = specs
            .iter()
            .filter(|spec| !shapes.contains_key(&spec.name))
            .collect();
        if !missing.is_empty() {
            let new_topics: Vec<NewTopic<'_>> = missing
                .iter()
                .map(|spec| {
                    spec.configs.iter().fold(
                        NewTopic::new(
                            &spec.name,
                            spec.partitions,
                            TopicReplication::Fixed(spec.replication_factor),
                        ),
                        |topic, (key, value)| topic.set(key, value),
                    )
                })
                .collect();
            let results = self
                .client
                .create_topics(&new_topics, &self.options)
                .await
                .map_err(|source| Error::Request {
                    operation: "create topics",
                    source,
                })?;
            for result in results {
                match result {
                    Ok(topic) => {
                        info!(topic, "created topic");
                        report.created.push(topic);
                    }
                    // Another process created it between our metadata request and now.
                    Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        report.existing.push(topic)
                    }
                    Err((topic, code)) => {
                        return Err(Error::CreateTopic {
                            topic,
                            reason: code.to_string(),
                        });
                    }
                }
            }
        }

        // A created topic reaches every broker's metadata a moment after the controller
        // acknowledged it; wait for all of them, so the caller (and the drift check below, which
        // needs the live shapes) never sees a topic as missing.
        let shapes = if missing.is_empty() {
            shapes
        } else {
            self.wait_until_visible(specs).await?
        };

        for spec in specs
            .iter()
            .filter(|spec| !report.created.contains(&spec.name))
        {
            if !report.existing.contains(&spec.name) {
                report.existing.push(spec.name.clone());
            }
            let mut drift = Vec::new();
            if let Some(shape) = shapes.get(&spec.name) {
                if shape.partitions != spec.partitions {
                    drift.push((
                        "partitions".to_owned(),
                        spec.partitions.to_string(),
                        shape.partitions.to_string(),
                    ));
                }
                if shape.replication_factor != spec.replication_factor {
                    drift.push((
                        "replication_factor".to_owned(),
                        spec.replication_factor.to_string(),
                        shape.replication_factor.to_string(),
                    ));
                }
            }
            let live = self.topic_configs(&spec.name).await?;
            for (key, expected) in &spec.configs {
                let actual = live.get(key).cloned().flatten();
                if actual.as_deref() != Some(expected.as_str()) {
                    drift.push((
                        key.clone(),
                        expected.clone(),
                        actual.unwrap_or_else(|| "<unset>".to_owned()),
                    ));
                }
            }
            for (setting, expected, actual) in drift {
                let drift = Drift {
                    topic: spec.name.clone(),
                    setting,
                    expected,
                    actual,
                };
                warn!(topic = %drift.topic, setting = %drift.setting, expected = %drift.expected, actual = %drift.actual, "topic drifted from its spec");
                report.drift.push(drift);
            }
        }
        Ok(report)
    }
}
