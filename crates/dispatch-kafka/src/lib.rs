//! Kafka for Posternity Dispatch: connection settings, the topic layout of the design, topic
//! administration, and the producers every role shares.
//!
//! # Layout
//! - [`client`]: the `[kafka]` configuration and reliable producers.
//! - [`topics`]: topic names under a prefix, partition counts and configs.
//! - [`admin`]: `topics ensure` — create what is missing, report what drifted.
//! - [`publish`]: producing domain events as the pipelines do.
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod publish;
pub mod topics;

pub use client::KafkaConfig;

use rdkafka::error::KafkaError;

/// What can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client could not be created (usually a bad librdkafka setting).
    #[error("cannot create Kafka client: {0}")]
    Client(#[source] KafkaError),
    /// A request to the cluster failed.
    #[error("Kafka {operation} failed: {source}")]
    Request {
        /// What we were doing.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The cluster refused to create a topic.
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's error code.
        reason: String,
    },
    /// The event's family has no domain topic (`webhook.test`).
    #[error("event type {0:?} has no domain topic")]
    NoDomainTopic(String),
    /// A blocking librdkafka call could not be run.
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
