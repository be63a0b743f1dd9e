//! What the admin API writes besides subscriptions: delivery tasks (test events and replays)
//! and the tombstones that remove replayed or discarded dead letters from `dispatch.dlq`.
//!
//! Records are keyed as the fan-out and the sender key theirs: a task by its subscription id
//! (one endpoint ⇒ one partition ⇒ one sender owns its ordering, limits and circuit), a dead
//! letter by its delivery id (compaction keeps one entry per delivery). The partitioner is the
//! one every client of the process gets from the same `[kafka]` settings, so a task lands on the
//! partition the fan-out would have chosen.

use dispatch_proto::dispatch::v1::DeliveryTask;
use dispatch_proto::prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::topics::TopicNames;
use crate::{Error, KafkaConfig, Result};

/// Writes delivery tasks and dead-letter tombstones, acknowledged by every in-sync replica.
#[derive(Clone)]
pub struct TaskProducer {
    producer: FutureProducer,
    names: TopicNames,
}

impl std::fmt::Debug for TaskProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskProducer")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl TaskProducer {
    /// A producer on an idempotent `acks=all` client (no request is made yet).
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(TaskProducer {
            producer: config.reliable_producer()?,
            names: TopicNames::new(config.topic_prefix.clone()),
        })
    }

    /// The topic names under the configured prefix (`deliveries()`, `lane(..)` for
    /// [`TaskProducer::send_task`]).
    pub fn names(&self) -> &TopicNames {
        &self.names
    }

    /// Writes `task` to `topic` (a full name: `dispatch.deliveries` or a lane, prefix included)
    /// keyed by its subscription id, and returns `(partition, offset)` once acknowledged.
    /// A task without a delivery or subscription id is refused ([`Error::InvalidRecord`]): the
    /// sender could neither route nor record it.
    pub async fn send_task(&self, topic: &str, task: &DeliveryTask) -> Result<(i32, i64)> {
        if task.subscription_id.is_empty() {
            return Err(Error::InvalidRecord(
                "a delivery task needs a subscription id (its key)".to_owned(),
            ));
        }
        if task.delivery_id.is_empty() {
            return Err(Error::InvalidRecord(
                "a delivery task needs a delivery id".to_owned(),
            ));
        }
        let payload = task.encode_to_vec();
        self.send(
            topic,
            &task.subscription_id,
            Some(&payload),
            "produce delivery task",
        )
        .await
    }

    /// Writes a tombstone for `delivery_id` to `dispatch.dlq` under the configured prefix and
    /// returns `(partition, offset)` once acknowledged: the dead letter is gone from every
    /// [`crate::topic_fold::DeadLetterFold`] that reads past it, and from the topic at its next
    /// compaction.
    pub async fn tombstone_dead_letter(&self, delivery_id: &str) -> Result<(i32, i64)> {
        if delivery_id.is_empty() {
            return Err(Error::InvalidRecord(
                "a dead-letter tombstone needs a delivery id (its key)".to_owned(),
            ));
        }
        let topic = self.names.dlq();
        self.send(&topic, delivery_id, None, "produce dead-letter tombstone")
            .await
    }

    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        operation: &'static str,
    ) -> Result<(i32, i64)> {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        // Timeout::Never only concerns waiting for room in the local queue; the producer's
        // `message.timeout.ms` bounds how long delivery may take.
        let delivery = self
            .producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(source, _)| Error::Request { operation, source })?;
        Ok((delivery.partition, delivery.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_that_cannot_be_routed_are_refused_before_any_io() {
        // No broker is contacted: the checks come first, and creating the producer makes no
        // request.
        let config = KafkaConfig {
            bootstrap_servers: "127.0.0.1:1".to_owned(),
            ..KafkaConfig::default()
        };
        let producer = TaskProducer::new(&config).expect("producer");
        let no_subscription = DeliveryTask {
            delivery_id: "dlv_1".into(),
            ..DeliveryTask::default()
        };
        let error = producer
            .send_task("dispatch.deliveries", &no_subscription)
            .await
            .expect_err("no key");
        assert!(matches!(error, Error::InvalidRecord(_)), "{error}");
        let no_delivery = DeliveryTask {
            subscription_id: "sub_1".into(),
            ..DeliveryTask::default()
        };
        assert!(matches!(
            producer
                .send_task("dispatch.deliveries", &no_delivery)
                .await,
            Err(Error::InvalidRecord(_))
        ));
        assert!(matches!(
            producer.tombstone_dead_letter("").await,
            Err(Error::InvalidRecord(_))
        ));
        assert_eq!(producer.names().dlq(), "dispatch.dlq");
    }
}
