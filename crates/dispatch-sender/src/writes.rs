//! The sender's Kafka writes (attempt records, retry-tier tasks, dead letters, quarantined
//! records) go through its [`Outbox`] (`dispatch_kafka::outbox`): every produce error
//! classified in one place, records too large for their topic capped until they fit (and
//! marked), everything else retried with backoff until acknowledged — never dropped — while the
//! [`READINESS_COMPONENT`] of `/readyz` and `dispatch_sender_produce_failures_total` show it.
//! The caller finishes a delivery's source offset only after its writes returned, so a write
//! that cannot succeed pins its partition's commit position behind it: it delays, never loses.
//!
//! What is left here is a shim: the names `engine`, `attempt` and `not_sent` use, re-exported,
//! and [`KafkaWrites`], the sender's outbox with the typed writes they call. Once they write
//! through [`Outbox::write`] themselves, this file goes.

use std::ops::Deref;

use dispatch_kafka::KafkaConfig;
pub use dispatch_kafka::outbox::{
    Cappable, DEFAULT_MAX_RECORD_BYTES, HEADER_TRUNCATED, ProduceErrorClass, ProduceFailure,
    TRUNCATION_MARK, cap_bytes, classify, next_budget,
};
use dispatch_kafka::outbox::{Outbox, OutboxRecord, Writer};
use rdkafka::message::OwnedHeaders;

/// The readiness component the sender's writes report under.
pub const READINESS_COMPONENT: &str = "sender_writes";

/// The sender's [`Outbox`] (its metrics are the sender's), with the writes the sender makes;
/// everything else of the outbox through `Deref`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KafkaWrites(Outbox);

impl KafkaWrites {
    /// The sender's outbox on `kafka` (see [`Outbox::new`]).
    pub fn new(kafka: &KafkaConfig) -> dispatch_kafka::Result<Self> {
        Outbox::new(kafka, Writer::Sender).map(KafkaWrites)
    }

    /// The outbox itself, to share with the sender's other writers (the subscription writer).
    pub fn outbox(&self) -> &Outbox {
        &self.0
    }

    /// Produces `record` to `topic` until Kafka acknowledges it, capped to fit if the topic
    /// refuses it as too large.
    pub async fn write_record<R: Cappable>(&self, topic: &str, key: &str, record: R) {
        self.0.write(OutboxRecord::capped(topic, key, record)).await;
    }

    /// Produces a quarantined record (its headers say why and where from) until Kafka
    /// acknowledges it; a value too large for the topic is cut and marked.
    pub async fn write_quarantined(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
    ) {
        self.0
            .write(OutboxRecord::quarantined(topic, key, value, headers))
            .await;
    }
}

impl Deref for KafkaWrites {
    type Target = Outbox;

    fn deref(&self) -> &Outbox {
        &self.0
    }
}
