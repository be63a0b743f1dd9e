//! Writing subscription records to `dispatch.subscriptions`: an upsert is the whole `Subscription`
//! keyed by its id, a delete is a tombstone (the key with no value). A typed front-end of an
//! [`Outbox`]: bounded writes ([`Outbox::try_write`]), since every caller answers someone or
//! tries again itself.
//!
//! The writer does not decide whether a write wins — the fold does, in every view, in log order
//! (see `dispatch_core::subscriptions`). It returns the offset of the record so the caller can
//! wait for its own view to apply it and learn the outcome
//! (`SubscriptionView::wait_for_offset`), and re-assert the winner after a rejected write.

use dispatch_core::subscriptions::{Rejection, check_record};
use dispatch_proto::dispatch::v1::Subscription;
use dispatch_proto::prost::Message;

use crate::outbox::{Outbox, OutboxRecord, Writer};
use crate::{Error, KafkaConfig, Result};

/// The only partition of `dispatch.subscriptions`, the one every view reads.
const PARTITION: i32 = 0;

/// Writes subscription records and tombstones, acknowledged by every in-sync replica.
#[derive(Debug, Clone)]
pub struct SubscriptionWriter {
    outbox: Outbox,
    topic: String,
}

impl SubscriptionWriter {
    /// A writer on an outbox of its own, counted as the admin API's (no request is made yet).
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(Self::with_outbox(Outbox::new(config, Writer::Api)?))
    }

    /// A writer through `outbox` (shared with the role's other writes).
    pub fn with_outbox(outbox: Outbox) -> Self {
        SubscriptionWriter {
            topic: outbox.topic_names().subscriptions(),
            outbox,
        }
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
    /// A write Kafka did not take is [`Error::Write`].
    pub async fn put(&self, subscription: &Subscription) -> Result<i64> {
        check_record(&subscription.id, subscription).map_err(Error::InvalidSubscription)?;
        let record =
            OutboxRecord::whole(&self.topic, &subscription.id, subscription.encode_to_vec());
        self.send(record).await
    }

    /// Writes a tombstone for subscription `id` and returns its offset once acknowledged.
    pub async fn delete(&self, id: &str) -> Result<i64> {
        if id.is_empty() {
            return Err(Error::InvalidSubscription(Rejection::MissingId {
                key: String::new(),
            }));
        }
        self.send(OutboxRecord::tombstone(&self.topic, id)).await
    }

    async fn send(&self, record: OutboxRecord<'_>) -> Result<i64> {
        // The partition is set rather than left to the key hash: views read partition 0 only,
        // and a topic that someone gave more partitions must not scatter records out of sight.
        let written = self.outbox.try_write(record.partition(PARTITION)).await?;
        Ok(written.offset)
    }
}
