//! Kafka for Posternity Dispatch: connection settings, the topic layout of the design, topic
//! administration, the outbox every role writes through, and the readers every role folds
//! topics with.
//!
//! # Layout
//! - [`client`]: the `[kafka]` configuration and reliable producers.
//! - [`outbox`]: every Kafka write of every role but the fan-out's transactions — errors
//!   classified, records capped to fit, retried until acknowledged ([`outbox::Outbox::write`])
//!   or bounded for callers that answer someone ([`outbox::Outbox::try_write`]), failing writes
//!   counted and shown in `/readyz`, a producer that knows no broker replaced.
//! - [`topics`]: topic names under a prefix, partition counts and configs.
//! - [`admin`]: `topics ensure` — create what is missing, report what drifted.
//! - [`lag`]: consumer lag per partition from librdkafka statistics, as a gauge.
//! - [`quarantine`]: the headers of records quarantined in `dispatch.invalid`.
//! - [`publish`]: producing domain events as the pipelines do (an outbox front-end).
//! - [`subscription_writer`]: writing subscription records and tombstones (an outbox front-end).
//! - [`subscription_view`]: the in-memory subscriptions table every role reads, a topic fold
//!   of `dispatch.subscriptions` that also answers what became of a given record.
//! - [`topic_fold`]: any topic folded into an in-memory value by a reader thread: the
//!   subscription view's, and the delivery history (`dispatch.attempts`) and dead letters
//!   (`dispatch.dlq`) the admin API reads.
//! - [`task_producer`]: the admin API's other writes, delivery tasks and dead-letter tombstones
//!   (an outbox front-end).
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod group_health;
pub mod lag;
pub mod outbox;
pub mod publish;
pub mod quarantine;
pub mod subscription_view;
pub mod subscription_writer;
pub mod task_producer;
#[cfg(test)]
mod test_recorder;
pub mod topic_fold;
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
    /// A subscription record every view would refuse; nothing was written.
    #[error("refusing to write a subscription record: {0}")]
    InvalidSubscription(#[source] dispatch_core::subscriptions::Rejection),
    /// A topic the process reads does not exist (`dispatchd topics ensure` creates it).
    #[error("topic {topic} does not exist")]
    TopicMissing {
        /// The topic.
        topic: String,
    },
    /// `dispatch.subscriptions` must have exactly one partition: one total order of writes is
    /// what makes every view fold conflicting updates the same way.
    #[error(
        "topic {topic} has {partitions} partitions; the subscriptions topic must have exactly 1"
    )]
    SubscriptionPartitions {
        /// The topic.
        topic: String,
        /// Its partition count.
        partitions: usize,
    },
    /// A wait on the subscription view ran out of time.
    #[error(
        "subscription view: {waiting_for} not reached within {timeout:?} (applied up to offset {next_offset}){}",
        last_error.as_ref().map(|e| format!("; last consumer error: {e}")).unwrap_or_default()
    )]
    ViewTimeout {
        /// What was awaited (`catch-up to offset 42`, `offset 17`).
        waiting_for: String,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The offset the view will apply next.
        next_offset: i64,
        /// The consumer's last error, if any: usually why it is behind.
        last_error: Option<String>,
    },
    /// The subscription view's reader has stopped (shut down, or it failed).
    #[error("the subscription view has stopped")]
    ViewStopped,
    /// The view has passed `offset`, but no longer knows (or never knew) what that record did:
    /// it is older than the outcomes the view keeps, or no record is visible there (compacted
    /// away, an aborted transaction, a transaction marker).
    #[error("no outcome is known for the subscription record at offset {offset}")]
    OutcomeUnknown {
        /// The offset asked about.
        offset: i64,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A wait on a topic fold ran out of time.
    #[error(
        "topic fold of {topic}: {waiting_for} not reached within {timeout:?} (next offsets by partition: {next_offsets:?}){}",
        last_error.as_ref().map(|e| format!("; last consumer error: {e}")).unwrap_or_default()
    )]
    FoldTimeout {
        /// The topic folded.
        topic: String,
        /// What was awaited (`catch-up to …`, `offset 17 of partition 2`).
        waiting_for: String,
        /// How long we waited.
        timeout: std::time::Duration,
        /// Per partition, the offset the fold applies next.
        next_offsets: Vec<i64>,
        /// The consumer's last error, if any: usually why it is behind.
        last_error: Option<String>,
    },
    /// A topic fold's reader has stopped (shut down, or it failed).
    #[error("the topic fold of {topic} has stopped")]
    FoldStopped {
        /// The topic folded.
        topic: String,
    },
    /// A partition the topic fold does not read (it reads those that existed at its start).
    #[error("the topic fold of {topic} does not read partition {partition}")]
    UnknownPartition {
        /// The topic folded.
        topic: String,
        /// The partition asked about.
        partition: i32,
    },
    /// A bounded write gave up ([`outbox::Outbox::try_write`]): what its last error means is in
    /// its classification.
    #[error(transparent)]
    Write(Box<outbox::WriteError>),
    /// A record that must not be written (its consumers could not route or read it); nothing
    /// was written.
    #[error("refusing to write a record: {0}")]
    InvalidRecord(String),
}

impl From<outbox::WriteError> for Error {
    fn from(error: outbox::WriteError) -> Self {
        Error::Write(Box::new(error))
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
