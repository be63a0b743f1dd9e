//! Consumer lag per partition from librdkafka's statistics, as the
//! `dispatch_kafka_consumer_lag_records{group, topic, partition}` gauge. Each role's consumer
//! context calls [`record_consumer_lag`] from its `stats` callback; the statistics come every
//! [`statistics_interval`] without extra requests.

use dispatch_telemetry::names::KAFKA_CONSUMER_LAG_RECORDS;
use rdkafka::statistics::Statistics;

/// `statistics.interval.ms` for consumers whose lag is exported, unless the librdkafka
/// pass-through sets one.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// The statistics interval to configure: the pass-through's, else [`STATISTICS_INTERVAL_MS`].
pub fn statistics_interval(config: &crate::KafkaConfig) -> &str {
    config
        .librdkafka
        .get("statistics.interval.ms")
        .map_or(STATISTICS_INTERVAL_MS, String::as_str)
}

/// Sets the lag gauge of every partition this consumer fetches. librdkafka reports -1 for a
/// partition it has no position or high watermark for yet; those are skipped. `topic_prefix` is
/// removed from the label so dashboards work across environments; partitions are a bounded set
/// (the topic's partition count).
pub fn record_consumer_lag(group: &str, topic_prefix: &str, statistics: &Statistics) {
    for (topic, stats) in &statistics.topics {
        let label = topic.strip_prefix(topic_prefix).unwrap_or(topic).to_owned();
        for (partition, partition_stats) in &stats.partitions {
            // -1 is librdkafka's internal UA partition and "unknown" lags.
            if *partition < 0 || partition_stats.consumer_lag < 0 {
                continue;
            }
            metrics::gauge!(
                KAFKA_CONSUMER_LAG_RECORDS,
                "group" => group.to_owned(),
                "topic" => label.clone(),
                "partition" => partition.to_string()
            )
            .set(partition_stats.consumer_lag as f64);
        }
    }
}
