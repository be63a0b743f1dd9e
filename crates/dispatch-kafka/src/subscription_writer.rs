//! Writing subscription records to `dispatch.subscriptions`: an upsert is the whole `Subscription`
//! keyed by its id, a delete is a tombstone (the key with no value).
//!
//! The writer does not decide whether a write wins — the fold does, in every view, in log order
//! (see `dispatch_core::subscriptions`). It returns the offset of the record so the caller can
//! wait for its own view to apply it and learn the outcome
//! (`SubscriptionView::wait_for_offset`), and re-assert the winner after a rejected write.

use dispatch_core::subscriptions::{Rejection, check_record};
use dispatch_proto::dispatch::v1::Subscription;
use dispatch_proto::prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::topics::TopicNames;
use crate::{Error, KafkaConfig, Result};

/// The only partition of `dispatch.subscriptions`, the one every view reads.
const PARTITION: i32 = 0;

/// Writes subscription records and tombstones, acknowledged by every in-sync replica.
#[derive(Clone)]
pub struct SubscriptionWriter {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for SubscriptionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl SubscriptionWriter {
    /// A writer on an idempotent `acks=all` producer (no request is made yet).
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(SubscriptionWriter {
            producer: config.reliable_producer()?,
            topic: TopicNames::new(config.topic_prefix.clone()).subscriptions(),
        })
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `subscription` under its id and returns the record's offset once the cluster
    /// acknowledged it. Set `version` to the current version + 1 (1 for a new subscription).
    ///
    /// A record every view would refuse on its own (no id or account, version 0, an invalid
    /// pattern) is not written: [`Error::InvalidSubscription`]. Such a record could otherwise
    /// become the last of its key and hide the subscription from views built after compaction.
    pub async fn put(&self, subscription: &Subscription) -> Result<i64> {
        check_record(&subscription.id, subscription).map_err(Error::InvalidSubscription)?;
        let payload = subscription.encode_to_vec();
        self.send(&subscription.id, Some(&payload)).await
    }

    /// Writes a tombstone for subscription `id` and returns its offset once acknowledged.
    pub async fn delete(&self, id: &str) -> Result<i64> {
        if id.is_empty() {
            return Err(Error::InvalidSubscription(Rejection::MissingId {
                key: String::new(),
            }));
        }
        self.send(id, None).await
    }

    async fn send(&self, key: &str, payload: Option<&[u8]>) -> Result<i64> {
        // The partition is set rather than left to the key hash: views read partition 0 only,
        // and a topic that someone gave more partitions must not scatter records out of sight.
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .key(key)
            .partition(PARTITION);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        // Timeout::Never only concerns waiting for room in the local queue; the producer's
        // `message.timeout.ms` bounds how long delivery may take.
        let delivery =
            self.producer
                .send(record, Timeout::Never)
                .await
                .map_err(|(source, _)| Error::Request {
                    operation: "produce subscription record",
                    source,
                })?;
        Ok(delivery.offset)
    }
}
