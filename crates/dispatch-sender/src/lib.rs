//! The sender role: the delivery engine. Partitioned consumers of `dispatch.deliveries` (and
//! lanes, and every retry tier) POST signed webhooks, record every attempt, retry through the
//! delay tiers and dead-letter what fails its whole schedule — without letting one endpoint
//! hold up the others of its partition.
//!
//! # Layout
//! Policy is decided in `dispatch-core` (`admission`: what a due task becomes; `delivery_plan`:
//! what an attempt leads to); this crate gathers the facts and performs.
//! - [`engine`]: the event loop alone: records, completions and timers in; admission; starts.
//! - [`config`]: the `[sender]` configuration table.
//! - [`partitions`] (crate-private): the consumer, offsets, rebalance, pause/resume, holds on
//!   retry tiers, back-pressure.
//! - [`scheduler`] (crate-private): per-endpoint queues, the permits, each account's share,
//!   round-robin fairness.
//! - [`outbox`] (crate-private): every Kafka write the sender makes, off the loop, through
//!   `dispatch_kafka::outbox` (retried until acknowledged, capped to fit, counted, shown in
//!   `/readyz` as [`READINESS_COMPONENT`]); a task's source offset is finished once all it led
//!   to is acknowledged.
//! - [`attempt`]: one delivery's attempts: sign, POST, classify, plan, write; disable after 410.
//! - [`not_sent`]: attempts that fall due while the endpoint's circuit is open, recorded as not
//!   sent and spent like failures so the retry schedule holds.
//! - [`offsets`]: per-partition tracking of taken and finished offsets; what may be committed.
//! - [`endpoint`]: per-subscription queue, in-flight limit, rate limit and circuit breaker.
//! - [`circuit`]: the per-endpoint circuit breaker (closed, open for a cool-down, one probe).
//! - [`rate`]: the per-endpoint rate limit (GCRA on the caller's clock).
#![forbid(unsafe_code)]

pub mod attempt;
pub mod circuit;
pub mod config;
pub mod endpoint;
pub mod engine;
pub mod not_sent;
pub mod offsets;
pub(crate) mod outbox;
pub(crate) mod partitions;
pub mod rate;
pub(crate) mod scheduler;

/// The readiness component the sender's Kafka writes report under (a write failing for a while
/// shows there, naming its topic).
pub const READINESS_COMPONENT: &str = "sender_writes";

/// What stops the sender.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created or subscribed.
    #[error("Kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
