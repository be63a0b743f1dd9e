//! What the admin API writes besides subscriptions: delivery tasks (test events and replays)
//! and the tombstones that remove replayed or discarded dead letters from `dispatch.dlq`.
//!
//! Records are keyed as the fan-out and the sender key theirs: a task by its subscription id
//! (one endpoint ⇒ one partition ⇒ one sender owns its ordering, limits and circuit), a dead
//! letter by its delivery id (compaction keeps one entry per delivery). The partitioner is the
//! one every client of the process gets from the same `[kafka]` settings, so a task lands on the
//! partition the fan-out would have chosen.
//!
//! A typed front-end of an [`Outbox`]: bounded writes ([`Outbox::try_write`]), since every
//! caller answers an API request.

use dispatch_proto::dispatch::v1::DeliveryTask;

use crate::outbox::{Outbox, OutboxRecord, Writer};
use crate::topics::TopicNames;
use crate::{Error, KafkaConfig, Result};

/// Writes delivery tasks and dead-letter tombstones, acknowledged by every in-sync replica.
#[derive(Debug, Clone)]
pub struct TaskProducer {
    outbox: Outbox,
    names: TopicNames,
}

impl TaskProducer {
    /// A producer on an outbox of its own, counted as the admin API's (no request is made yet).
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(Self::with_outbox(Outbox::new(config, Writer::Api)?))
    }

    /// A producer through `outbox` (shared with the role's other writes).
    pub fn with_outbox(outbox: Outbox) -> Self {
        TaskProducer {
            names: outbox.topic_names(),
            outbox,
        }
    }

    /// The topic names under the configured prefix (`deliveries()`, `lane(..)` for
    /// [`TaskProducer::send_task`]).
    pub fn names(&self) -> &TopicNames {
        &self.names
    }

    /// Writes `task` to `topic` (a full name: `dispatch.deliveries` or a lane, prefix included)
    /// keyed by its subscription id, and returns `(partition, offset)` once acknowledged; a task
    /// too large for the topic loses attempt summaries as the sender's would, never its body.
    /// A task without a delivery or subscription id is refused ([`Error::InvalidRecord`]): the
    /// sender could neither route nor record it. A write Kafka did not take is [`Error::Write`].
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
        self.send(OutboxRecord::capped(
            topic,
            &task.subscription_id,
            task.clone(),
        ))
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
        self.send(OutboxRecord::tombstone(&topic, delivery_id))
            .await
    }

    async fn send(&self, record: OutboxRecord<'_>) -> Result<(i32, i64)> {
        let written = self.outbox.try_write(record).await?;
        Ok((written.partition, written.offset))
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
