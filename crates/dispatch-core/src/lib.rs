//! Posternity Dispatch's pure domain: everything that decides, nothing that does I/O.
//!
//! # Layout
//! - [`catalog`]: the event types (the public contract), their families, topics and payloads.
//! - [`render`]: an `Event` → the JSON body a receiver gets; event validation.
//! - [`signing`]: Standard Webhooks signatures and `whsec_` secrets.
//! - [`request`]: a delivery task → the signed request of one attempt (URL, headers, body); the
//!   live secrets that sign it; which custom headers a subscription may set.
//! - [`matching`]: which subscriptions want an event, through an index.
//! - [`subscriptions`]: the subscriptions table, a fold of the `dispatch.subscriptions` log.
//! - [`history`]: each delivery's status and attempts, a bounded fold of `dispatch.attempts`.
//! - [`dead_letters`]: the live dead letters, a bounded fold of the compacted `dispatch.dlq`.
//! - [`delivery`]: building delivery tasks: the fan-out's, a replay's, and the test event.
//! - [`retry`]: the retry schedule: after a failed attempt, retry now, on a tier later, or give up.
//! - [`admission`]: a task that fell due → skip, dead-letter, not sent (circuit open), queue or defer.
//! - [`delivery_plan`]: after an attempt → its record, and delivered, again now, a retry tier or
//!   the DLQ (and disable after `410`); a deferred task's tier record or dead letter.
//! - [`outcome`]: an HTTP attempt's result → a classified outcome; `Retry-After` parsing.
//! - [`ids`]: event, subscription and delivery identifiers.
//! - [`event_input`]: an event written as JSON (by a person or a producer's test) → a valid `Event`.
//! - [`timestamp`]: protobuf `Timestamp` ↔ `SystemTime` ↔ RFC 3339.
//!
//! Time is passed in (`now`), never read from a clock here, so every decision is testable.
#![forbid(unsafe_code)]

pub mod admission;
pub mod catalog;
pub mod dead_letters;
pub mod delivery;
pub mod delivery_plan;
pub mod event_input;
pub mod history;
pub mod ids;
pub mod matching;
pub mod outcome;
pub mod render;
pub mod request;
pub mod retry;
pub mod signing;
pub mod subscriptions;
pub mod timestamp;
