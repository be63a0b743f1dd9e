//! Producing domain events the way Posternity's pipelines do: protobuf `Event` to
//! `posternity.events.<family>`, keyed by account id. Used by `dispatchd publish`, the tests and
//! the benchmark's publisher.

use dispatch_core::event_input::PublishableEvent;
use dispatch_proto::prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::topics::TopicNames;
use crate::{Error, KafkaConfig, Result};

/// Where a published event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The topic it went to.
    pub topic: String,
    /// The partition it went to.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// Publishes domain events to their family's topic.
#[derive(Clone)]
pub struct EventPublisher {
    producer: FutureProducer,
    names: TopicNames,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher on an idempotent `acks=all` producer.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(EventPublisher {
            producer: config.reliable_producer()?,
            names: TopicNames::new(config.topic_prefix.clone()),
        })
    }

    /// Produces one event and waits until the cluster acknowledged it.
    pub async fn publish(&self, publishable: &PublishableEvent) -> Result<Published> {
        let event = &publishable.event;
        let topic = self
            .names
            .domain(publishable.family)
            .ok_or_else(|| Error::NoDomainTopic(event.r#type.clone()))?;
        let payload = event.encode_to_vec();
        let record = FutureRecord::to(&topic)
            .key(event.account_id.as_bytes())
            .payload(&payload);
        let delivery =
            self.producer
                .send(record, Timeout::Never)
                .await
                .map_err(|(source, _)| Error::Request {
                    operation: "produce",
                    source,
                })?;
        Ok(Published {
            event_id: event.id.clone(),
            event_type: event.r#type.clone(),
            topic,
            partition: delivery.partition,
            offset: delivery.offset,
        })
    }
}
