//! The fan-out role: reads Posternity's domain events, validates them, matches them against the
//! subscription view, renders each event's receiver body once, and writes one `DeliveryTask` per
//! matched subscription to `dispatch.deliveries` (or the subscription's lane) — exactly once,
//! through Kafka transactions. Bad input is quarantined in `dispatch.invalid`, never fatal.
//!
//! # Layout
//! - [`plan`]: what one record becomes (quarantine, or delivery tasks) — no I/O.
//! - [`fanout`]: [`Fanout`] — `build` (clients, transactions, subscription), then
//!   `run(shutdown)`: the consumer → transactional producer loop on its own thread.
//! - [`txn`]: what a failed transactional call leads to (repeat, abort, exit) — no I/O.
#![forbid(unsafe_code)]

pub mod fanout;
pub mod plan;
pub mod txn;

pub use fanout::{Fanout, FanoutConfig};

/// What stops the fan-out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client failed in a way a restart must fix (fenced, fatal, misconfigured).
    #[error("Kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// A transactional call kept failing with an error librdkafka calls retriable (the same
    /// call must be made again) for longer than `fanout.transaction_retry_max_ms`: a restart
    /// (a new producer fencing this one) is the way on.
    #[error("{call} kept failing for {waited_ms} ms (fanout.transaction_retry_max_ms): {source}")]
    TransactionStuck {
        /// The call: `begin`, `produce`, `send_offsets`, `commit` or `abort`.
        call: &'static str,
        /// How long it was repeated.
        waited_ms: u64,
        /// The last error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A transactional call did not return at all within its deadline. librdkafka 2.12 can
    /// wait for a coordinator's reply without end, whatever the call's timeout (librdkafka#5301:
    /// a producer that dropped every broker after a stalled broker resumed); the call's thread
    /// and its producer are abandoned and a new producer fences the old one.
    #[error("{call} did not return within {deadline_ms} ms; abandoning the producer")]
    TransactionHung {
        /// The call: `init`, `begin`, `send_offsets`, `commit` or `abort`.
        call: &'static str,
        /// How long it was waited for.
        deadline_ms: u64,
    },
    /// The loop's thread panicked or could not be joined.
    #[error("the fan-out thread failed: {0}")]
    Thread(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
