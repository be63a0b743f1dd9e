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

/// What a consumer's lag is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagBasis {
    /// The group's committed offset, as librdkafka reports it (`consumer_lag`): for consumers
    /// that commit through themselves (the sender). Where it is not known yet, the position.
    Committed,
    /// The position the consumer reached (`app_offset`): for consumers whose commits
    /// librdkafka never sees — the fan-out commits through its producer's transactions, so the
    /// committed offset librdkafka fetched at assignment goes stale and `consumer_lag` grows
    /// with every event — and for readers that never commit (the admin API's folds).
    Position,
}

/// Sets the lag gauge of every partition this consumer fetches, measured from `basis`, to the
/// end of the partition (the last stable offset — we read committed data — when known, else the
/// high watermark). Partitions where librdkafka knows too little are skipped. `topic_prefix` is
/// removed from the label so dashboards work across environments; partitions are a bounded set
/// (the topic's partition count).
pub fn record_consumer_lag(
    group: &str,
    topic_prefix: &str,
    basis: LagBasis,
    statistics: &Statistics,
) {
    for (topic, stats) in &statistics.topics {
        let label = topic.strip_prefix(topic_prefix).unwrap_or(topic).to_owned();
        for (partition, partition_stats) in &stats.partitions {
            // -1 is librdkafka's internal UA partition.
            if *partition < 0 {
                continue;
            }
            let Some(lag) = lag_of(partition_stats, basis) else {
                continue;
            };
            metrics::gauge!(
                KAFKA_CONSUMER_LAG_RECORDS,
                "group" => group.to_owned(),
                "topic" => label.clone(),
                "partition" => partition.to_string()
            )
            .set(lag as f64);
        }
    }
}

/// One partition's lag, if librdkafka's statistics say enough to tell.
fn lag_of(partition: &rdkafka::statistics::Partition, basis: LagBasis) -> Option<i64> {
    if basis == LagBasis::Committed && partition.consumer_lag >= 0 {
        return Some(partition.consumer_lag);
    }
    let end = if partition.ls_offset >= 0 {
        partition.ls_offset
    } else {
        partition.hi_offset
    };
    (end >= 0 && partition.app_offset >= 0).then(|| (end - partition.app_offset).max(0))
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::Partition;

    use super::{LagBasis, lag_of};

    fn partition(consumer_lag: i64, ls: i64, hi: i64, app: i64) -> Partition {
        Partition {
            consumer_lag,
            ls_offset: ls,
            hi_offset: hi,
            app_offset: app,
            ..Partition::default()
        }
    }

    #[test]
    fn librdkafka_lag_wins_where_it_knows_the_committed_offset() {
        assert_eq!(
            lag_of(&partition(7, 100, 100, 99), LagBasis::Committed),
            Some(7)
        );
        // A stale committed offset (transactional commits) is ignored where position counts.
        assert_eq!(
            lag_of(&partition(7, 100, 100, 99), LagBasis::Position),
            Some(1)
        );
    }

    #[test]
    fn without_a_known_commit_the_position_reached_counts() {
        assert_eq!(
            lag_of(&partition(-1, 100, 120, 90), LagBasis::Committed),
            Some(10),
            "stable end"
        );
        assert_eq!(
            lag_of(&partition(-1, -1, 120, 90), LagBasis::Committed),
            Some(30),
            "high watermark"
        );
        assert_eq!(
            lag_of(&partition(-1, 100, 100, 100), LagBasis::Committed),
            Some(0)
        );
    }

    #[test]
    fn nothing_known_is_no_value() {
        assert_eq!(lag_of(&partition(-1, -1, -1, 5), LagBasis::Committed), None);
        assert_eq!(
            lag_of(&partition(-1, 100, 100, -1001), LagBasis::Committed),
            None
        );
    }
}
