//! Producing domain events the way Posternity's pipelines do: protobuf `Event` to
//! `posternity.events.<family>`, keyed by account id. Used by `dispatchd publish`, the tests and
//! the benchmark's publisher. A typed front-end of an [`Outbox`] (bounded writes: the caller is
//! told).

use dispatch_core::event_input::PublishableEvent;
use dispatch_proto::prost::Message;

use crate::outbox::{Outbox, OutboxRecord, Writer};
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
#[derive(Debug, Clone)]
pub struct EventPublisher {
    outbox: Outbox,
    names: TopicNames,
}

impl EventPublisher {
    /// A publisher on an outbox of its own, as a tool's (nothing counted; errors are returned).
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(Self::with_outbox(Outbox::new(config, Writer::Tool)?))
    }

    /// A publisher through `outbox`.
    pub fn with_outbox(outbox: Outbox) -> Self {
        EventPublisher {
            names: outbox.topic_names(),
            outbox,
        }
    }

    /// Produces one event and waits until the cluster acknowledged it.
    pub async fn publish(&self, publishable: &PublishableEvent) -> Result<Published> {
        let event = &publishable.event;
        let topic = self
            .names
            .domain(publishable.family)
            .ok_or_else(|| Error::NoDomainTopic(event.r#type.clone()))?;
        let record = OutboxRecord::whole(&topic, &event.account_id, event.encode_to_vec());
        let written = self.outbox.try_write(record).await?;
        Ok(Published {
            event_id: event.id.clone(),
            event_type: event.r#type.clone(),
            topic,
            partition: written.partition,
            offset: written.offset,
        })
    }
}
