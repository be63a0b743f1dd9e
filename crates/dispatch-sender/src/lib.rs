//! The sender role: the delivery engine. Partitioned consumers of `dispatch.deliveries` (and
//! lanes, and every retry tier) POST signed webhooks, record every attempt, retry through the
//! delay tiers and dead-letter what fails its whole schedule — without letting one endpoint
//! hold up the others of its partition.
//!
//! # Layout
//! - [`engine`]: the consumer loop, per-endpoint scheduling, holds on retry tiers, revoke/drain.
//! - [`attempt`]: one delivery's attempts and the records they lead to.
//! - [`not_sent`]: attempts that fall due while the endpoint's circuit is open, recorded as not
//!   sent and spent like failures so the retry schedule holds.
//! - [`offsets`]: per-partition tracking of taken and finished offsets; what may be committed.
//! - [`endpoint`]: per-subscription queue, in-flight limit, rate limit and circuit breaker.
//! - [`circuit`]: the per-endpoint circuit breaker (closed, open for a cool-down, one probe).
//! - [`rate`]: the per-endpoint rate limit (GCRA on the caller's clock).
//! - [`writes`]: the sender's outbox (`dispatch_kafka::outbox`), through which every Kafka write
//!   of the sender goes: retried until acknowledged, capped to fit, counted and shown in
//!   `/readyz`. A shim until the engine writes through the outbox directly.
#![forbid(unsafe_code)]

pub mod attempt;
pub mod circuit;
pub mod endpoint;
pub mod engine;
pub mod not_sent;
pub mod offsets;
pub mod rate;
pub mod writes;

/// What stops the sender.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created or subscribed.
    #[error("Kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
