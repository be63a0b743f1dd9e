//! Attempts that fall due while their endpoint's circuit is open: nothing is sent, the attempt is
//! recorded with outcome `CIRCUIT_OPEN` ("not sent: circuit open") and the delivery moves along
//! its schedule exactly as after a failed attempt — the next tier, or the DLQ after the last one.
//!
//! Why not wait for the circuit: the retry schedule is what the customer is promised (issue 12,
//! item 8). Deferring without spending attempts kept a dead endpoint's deliveries cycling through
//! the first tier until `retry.max_total_age` (48 h). Whether an attempt counts and when the next
//! one is due is decided in `dispatch-core` (`outcome::classify`,
//! `delivery_plan::after_attempt`), as for any sent attempt.

use std::time::{Duration, SystemTime};

use dispatch_core::delivery_plan::{self, AttemptFacts, Next};
use dispatch_core::outcome::{self, AttemptResult};
use dispatch_proto::dispatch::v1::DeliveryTask;
use dispatch_telemetry::names;

use crate::attempt::AttemptContext;
use crate::outbox;

/// Records `task`'s due attempt as not sent (circuit open) and moves it on: produces the attempt
/// record and the retry task or dead letter, and returns once Kafka acknowledged them, so the
/// caller may then finish the source offset. An immediate retry (`0s` delay) falls due at once,
/// while the circuit is still open, so it is recorded as not sent too. Never disables (only a
/// `410` does, and nothing was sent).
pub async fn record_circuit_open(ctx: &AttemptContext, mut task: DeliveryTask) {
    loop {
        let now = SystemTime::now();
        let classified = AttemptResult::CircuitOpen.classify(now);
        metrics::counter!(names::SENDER_ATTEMPTS_TOTAL, "outcome" => outcome::label(classified.outcome))
            .increment(1);
        let facts = AttemptFacts {
            started: now,
            duration: Duration::ZERO,
            classified: &classified,
            response_excerpt: String::new(),
            finished: now,
        };
        // The rng is not Send: drawn before any await.
        let plan = delivery_plan::after_attempt(&ctx.schedule, task, &facts, &mut rand::rng());
        match outbox::write_attempt(ctx, plan).await {
            Next::AgainNow(next) => task = next,
            Next::Delivered | Next::Park { .. } | Next::DeadLetter { .. } => return,
        }
    }
}
