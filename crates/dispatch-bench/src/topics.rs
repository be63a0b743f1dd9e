//! A run's topics as a whole: read one to its end (the DLQ, `dispatch.invalid`), delete them
//! when the run is over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use dispatch_kafka::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

/// Reads every record of `topic` from the beginning to the end it had when called, and calls
/// `visit` with each value. Gives up after `timeout`.
pub fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    mut visit: impl FnMut(&[u8]),
) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = config
        .client_config()
        .set("group.id", format!("{}bench-reader", config.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating a topic reader")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{partition}"))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    let mut count = 0;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            anyhow::bail!("{topic}: not read to its end in {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if let Some(value) = message.payload() {
                    visit(value);
                    count += 1;
                }
                if let Some(&end) = ends.get(&message.partition())
                    && message.offset() + 1 >= end
                {
                    ends.remove(&message.partition());
                }
            }
            Some(Err(error)) => anyhow::bail!("reading {topic}: {error}"),
            None => {
                // Transaction markers and compaction leave offsets no message carries: a
                // partition whose position passed its end is done.
                let positions = consumer.position()?;
                for element in positions.elements() {
                    if let Offset::Offset(position) = element.offset()
                        && ends
                            .get(&element.partition())
                            .is_some_and(|&end| position >= end)
                    {
                        ends.remove(&element.partition());
                    }
                }
            }
        }
    }
    Ok(count)
}

/// Names of the topics that start with `prefix`.
pub fn with_prefix(config: &KafkaConfig, prefix: &str) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = config.client_config().create()?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("listing topics")?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect())
}

/// Deletes `topics`, failing with the first topic the broker would not delete.
pub async fn delete(config: &KafkaConfig, topics: &[String]) -> anyhow::Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.client_config().create()?;
    let options = AdminOptions::new()
        .request_timeout(Some(config.request_timeout()))
        .operation_timeout(Some(config.request_timeout()));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for result in admin.delete_topics(&names, &options).await? {
        result.map_err(|(topic, code)| anyhow!("{topic}: {code}"))?;
    }
    Ok(())
}
