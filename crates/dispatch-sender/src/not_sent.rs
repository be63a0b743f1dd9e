//! Attempts that fall due while their endpoint's circuit is open: nothing is sent, the attempt is
//! recorded with outcome `CIRCUIT_OPEN` ("not sent: circuit open") and the delivery moves along
//! its schedule exactly as after a failed attempt — the next tier, or the DLQ after the last one.
//!
//! Why not wait for the circuit: the retry schedule is what the customer is promised (issue 12,
//! item 8). Deferring without spending attempts kept a dead endpoint's deliveries cycling through
//! the first tier until `retry.max_total_age` (48 h). Whether an attempt counts and when the next
//! one is due is decided in `dispatch-core` (`outcome::classify`, `RetrySchedule::decide`), as
//! for any sent attempt.

use std::time::SystemTime;

use dispatch_core::outcome::AttemptResult;
use dispatch_core::timestamp;
use dispatch_proto::dispatch::v1::{AttemptRecord, AttemptSummary, DeliveryTask};
use dispatch_telemetry::names;

use crate::attempt::{self, AttemptContext, Moved};

/// Records `task`'s due attempt as not sent (circuit open) and moves it on: produces the attempt
/// record and the retry task or dead letter, and returns once Kafka acknowledged them, so the
/// caller may then finish the source offset. An immediate retry (`0s` delay) falls due at once,
/// while the circuit is still open, so it is recorded as not sent too.
pub async fn record_circuit_open(ctx: &AttemptContext, mut task: DeliveryTask) {
    loop {
        let now = SystemTime::now();
        if task.first_attempt_at.is_none() {
            task.first_attempt_at = Some(timestamp::from_system_time(now));
        }
        let classified = AttemptResult::CircuitOpen.classify(now);
        metrics::counter!(names::SENDER_ATTEMPTS_TOTAL, "outcome" => attempt::outcome_label(classified.outcome)).increment(1);
        let decision = attempt::decide(ctx, &task, &classified, now);
        let summary = AttemptSummary {
            attempt: task.attempt,
            started_at: Some(timestamp::from_system_time(now)),
            duration_ms: 0,
            outcome: classified.outcome as i32,
            status_code: 0,
            error: classified.description().to_owned(),
        };
        let record = AttemptRecord {
            started_at: summary.started_at,
            outcome: summary.outcome,
            error: summary.error.clone(),
            next_action: Some(attempt::next_action(&decision)),
            ..attempt::record_for(&task)
        };
        // Never `disable` (only a 410 disables, and nothing was sent): the decision for a
        // not-sent attempt is a retry or a dead letter, carried out like any attempt's.
        if let Moved::Left(_) =
            attempt::record_and_move_on(ctx, &mut task, record, summary, decision, now).await
        {
            return;
        }
    }
}
