//! One delivery's attempts: sign and POST, classify the result (in `dispatch-core`, the one place
//! that decides), record the attempt in `dispatch.attempts`, and move the task on — retried at
//! once, parked on a delay tier, or dead-lettered. Returns only after every record it produced
//! is acknowledged by Kafka, so the caller may then finish the source offset.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dispatch_core::outcome::AttemptResult;
use dispatch_core::outcome::Classified;
use dispatch_core::request::webhook_request;
use dispatch_core::retry::{DeadReason, RetryDecision, RetrySchedule};
use dispatch_core::timestamp;
use dispatch_http::{AttemptResponse, WebhookClient, WebhookRequest};
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::TopicNames;
use dispatch_proto::dispatch::v1::next_action::{Action, Dead, Done, Retry};
use dispatch_proto::dispatch::v1::{
    AttemptOutcome, AttemptRecord, AttemptSummary, DeadLetter, DeliveryTask, NextAction,
    Subscription,
};
use dispatch_telemetry::names;
use tracing::{info, warn};

use crate::writes::{KafkaWrites, classify};

/// Everything an attempt needs, shared by all attempt tasks of a sender.
#[derive(Clone)]
pub struct AttemptContext {
    /// The webhook client.
    pub client: WebhookClient,
    /// The retry schedule.
    pub schedule: RetrySchedule,
    /// Every Kafka write of the sender (attempts, retries, dead letters, quarantine): an
    /// idempotent `acks=all` producer behind classified errors, capping and backoff.
    pub writes: KafkaWrites,
    /// Topic names.
    pub names: TopicNames,
    /// Writes the disabled state after a 410.
    pub subscriptions: Arc<SubscriptionWriter>,
}

impl std::fmt::Debug for AttemptContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptContext")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// How a delivery ended in this process, for the endpoint's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryEnd {
    /// Delivered (2xx).
    Delivered,
    /// The last attempt here failed (the task was parked on a tier or dead-lettered).
    Failed,
}

/// Attempts `task` until it succeeds or leaves this process (tier or DLQ). Produces the attempt
/// records, the retry task or dead letter, and waits for Kafka to acknowledge all of them.
pub async fn deliver(
    ctx: &AttemptContext,
    mut task: DeliveryTask,
    subscription: &Subscription,
) -> DeliveryEnd {
    loop {
        let started = SystemTime::now();
        if task.first_attempt_at.is_none() {
            task.first_attempt_at = Some(timestamp::from_system_time(started));
        }
        metrics::gauge!(names::SENDER_IN_FLIGHT_REQUESTS).increment(1.0);
        let sent = match webhook_request(&task, subscription, started) {
            Ok(signed) => {
                let request = WebhookRequest {
                    url: signed.url,
                    headers: signed.headers,
                    body: signed.body,
                };
                ctx.client.send(request).await.map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        let response = sent.unwrap_or_else(|error| AttemptResponse {
            // Nothing was sent (no live secret, an id unfit for a header): retrying cannot
            // help, so it is classified like an unusable URL and dead-lettered, replayable
            // once the subscription is fixed.
            result: AttemptResult::InvalidUrl {
                message: format!("not sent: {error}"),
            },
            duration: Duration::ZERO,
            response_excerpt: String::new(),
        });
        metrics::gauge!(names::SENDER_IN_FLIGHT_REQUESTS).decrement(1.0);
        let finished = SystemTime::now();
        let classified = response.result.classify(finished);
        metrics::histogram!(names::SENDER_ATTEMPT_DURATION_SECONDS)
            .record(response.duration.as_secs_f64());
        metrics::counter!(names::SENDER_ATTEMPTS_TOTAL, "outcome" => outcome_label(classified.outcome)).increment(1);

        let decision = decide(ctx, &task, &classified, finished);
        let summary = AttemptSummary {
            attempt: task.attempt,
            started_at: Some(timestamp::from_system_time(started)),
            duration_ms: response.duration.as_millis() as u64,
            outcome: classified.outcome as i32,
            status_code: u32::from(classified.status.unwrap_or(0)),
            error: if classified.is_success() {
                String::new()
            } else {
                classified.description().to_owned()
            },
        };
        let record = AttemptRecord {
            started_at: summary.started_at,
            duration_ms: summary.duration_ms,
            outcome: summary.outcome,
            status_code: summary.status_code,
            response_excerpt: response.response_excerpt.clone(),
            error: summary.error.clone(),
            next_action: Some(next_action(&decision)),
            ..record_for(&task)
        };
        match record_and_move_on(ctx, &mut task, record, summary, decision, finished).await {
            Moved::AgainNow => {}
            Moved::Left(Decision::Delivered) => {
                if let Some(occurred) = task
                    .occurred_at
                    .as_ref()
                    .and_then(timestamp::to_system_time)
                    && let Ok(latency) = finished.duration_since(occurred)
                {
                    metrics::histogram!(names::SENDER_EVENT_TO_DELIVERY_SECONDS)
                        .record(latency.as_secs_f64());
                }
                return DeliveryEnd::Delivered;
            }
            Moved::Left(Decision::Dead {
                reason,
                disable: true,
            }) => {
                disable_subscription(ctx, subscription, &reason).await;
                return DeliveryEnd::Failed;
            }
            Moved::Left(_) => return DeliveryEnd::Failed,
        }
    }
}

/// Where a delivery is after [`record_and_move_on`].
pub(crate) enum Moved {
    /// The next attempt is due at once; `task.attempt` is already advanced.
    AgainNow,
    /// The delivery left this process as decided (delivered, parked on a tier, dead-lettered);
    /// everything it owed is acknowledged by Kafka.
    Left(Decision),
}

/// Carries out one attempt's `decision`, sent or not: appends `summary` to the task's history,
/// writes the attempt `record` and, as decided, the retry task on its tier or the dead letter —
/// all through [`KafkaWrites`] (capped, retried until acknowledged). The one place an attempt's
/// consequences are written, for attempts made ([`deliver`]) and not made
/// ([`crate::not_sent`]).
pub(crate) async fn record_and_move_on(
    ctx: &AttemptContext,
    task: &mut DeliveryTask,
    record: AttemptRecord,
    summary: AttemptSummary,
    decision: Decision,
    at: SystemTime,
) -> Moved {
    // The dead letter carries every attempt, not-sent ones included.
    task.attempts.push(summary);
    let attempts_topic = ctx.names.attempts();
    let attempt_sent = ctx
        .writes
        .write_record(&attempts_topic, &task.subscription_id, record);
    match &decision {
        Decision::Delivered => attempt_sent.await,
        Decision::RetryNow { next_attempt } => {
            attempt_sent.await;
            task.attempt = *next_attempt;
            metrics::counter!(names::SENDER_RETRIES_TOTAL, "tier" => "immediate").increment(1);
            return Moved::AgainNow;
        }
        Decision::RetryLater {
            next_attempt,
            tier,
            not_before,
        } => {
            let mut next = task.clone();
            next.attempt = *next_attempt;
            next.not_before = Some(timestamp::from_system_time(*not_before));
            let tier_topic = ctx.names.retry_tier(tier);
            let retry_sent = ctx
                .writes
                .write_record(&tier_topic, &task.subscription_id, next);
            tokio::join!(attempt_sent, retry_sent);
            metrics::counter!(names::SENDER_RETRIES_TOTAL, "tier" => tier.clone()).increment(1);
        }
        Decision::Dead { reason, .. } => {
            let dead_sent = dead_letter(ctx, task, reason.clone(), at);
            tokio::join!(attempt_sent, dead_sent);
            warn!(delivery_id = %task.delivery_id, subscription_id = %task.subscription_id, %reason, "delivery dead-lettered");
        }
    }
    Moved::Left(decision)
}

/// An attempt record of `task` with its identifying fields filled in; the caller sets what the
/// attempt came to.
pub fn record_for(task: &DeliveryTask) -> AttemptRecord {
    AttemptRecord {
        delivery_id: task.delivery_id.clone(),
        event_id: task.event_id.clone(),
        subscription_id: task.subscription_id.clone(),
        account_id: task.account_id.clone(),
        event_type: task.event_type.clone(),
        attempt: task.attempt,
        replay_of: task.replay_of.clone(),
        ..AttemptRecord::default()
    }
}

/// Produces `task`'s dead letter (key = delivery id) until Kafka acknowledges it, and counts it.
pub async fn dead_letter(
    ctx: &AttemptContext,
    task: &DeliveryTask,
    reason: String,
    at: SystemTime,
) {
    let letter = DeadLetter {
        task: Some(task.clone()),
        attempts: task.attempts.clone(),
        reason,
        dead_at: Some(timestamp::from_system_time(at)),
    };
    ctx.writes
        .write_record(&ctx.names.dlq(), &task.delivery_id, letter)
        .await;
    metrics::counter!(names::SENDER_DEAD_LETTERED_TOTAL).increment(1);
}

/// What happens after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Delivered,
    RetryNow {
        next_attempt: u32,
    },
    RetryLater {
        next_attempt: u32,
        tier: String,
        not_before: SystemTime,
    },
    Dead {
        reason: String,
        disable: bool,
    },
}

pub(crate) fn decide(
    ctx: &AttemptContext,
    task: &DeliveryTask,
    classified: &Classified,
    now: SystemTime,
) -> Decision {
    let Some(failure) = &classified.failure else {
        return Decision::Delivered;
    };
    let first = task
        .first_attempt_at
        .as_ref()
        .and_then(timestamp::to_system_time)
        .unwrap_or(now);
    let dead = |reason: DeadReason, what: &Classified| Decision::Dead {
        disable: reason.disables_subscription(),
        reason: format!("{reason} (last attempt: {})", what.description()),
    };
    if let Some(reason) = ctx.schedule.expired(first, now) {
        return dead(reason, classified);
    }
    match ctx
        .schedule
        .decide(task.attempt, failure, now, &mut rand::rng())
    {
        RetryDecision::RetryNow { next_attempt } => Decision::RetryNow { next_attempt },
        RetryDecision::RetryLater {
            next_attempt,
            tier,
            not_before,
        } => Decision::RetryLater {
            next_attempt,
            tier: tier.name().to_owned(),
            not_before,
        },
        RetryDecision::Dead { reason } => dead(reason, classified),
    }
}

pub(crate) fn next_action(decision: &Decision) -> NextAction {
    let action = match decision {
        Decision::Delivered => Action::Done(Done {}),
        Decision::RetryNow { next_attempt } => Action::Retry(Retry {
            at: Some(timestamp::from_system_time(SystemTime::now())),
            tier: String::new(),
            next_attempt: *next_attempt,
        }),
        Decision::RetryLater {
            next_attempt,
            tier,
            not_before,
        } => Action::Retry(Retry {
            at: Some(timestamp::from_system_time(*not_before)),
            tier: tier.clone(),
            next_attempt: *next_attempt,
        }),
        Decision::Dead { reason, .. } => Action::Dead(Dead {
            reason: reason.clone(),
        }),
    };
    NextAction {
        action: Some(action),
    }
}

/// A bounded label of an outcome.
pub fn outcome_label(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Success => "success",
        AttemptOutcome::HttpStatus => "http_status",
        AttemptOutcome::Timeout => "timeout",
        AttemptOutcome::ConnectError => "connect_error",
        AttemptOutcome::TlsError => "tls_error",
        AttemptOutcome::BlockedAddress => "blocked_address",
        AttemptOutcome::Gone => "gone",
        AttemptOutcome::InvalidUrl => "invalid_url",
        AttemptOutcome::Skipped => "skipped",
        AttemptOutcome::CircuitOpen => "circuit_open",
        AttemptOutcome::Unspecified => "unspecified",
    }
}

/// Tries of the disable write after a 410; past them the next 410 disables it.
const DISABLE_TRIES: u32 = 5;

/// Writes the subscription back disabled, with the reason, at the next version. A concurrent
/// update wins (the fold rejects ours); the next 410 disables it then.
async fn disable_subscription(ctx: &AttemptContext, subscription: &Subscription, reason: &str) {
    let mut disabled = subscription.clone();
    disabled.enabled = false;
    disabled.disabled_reason = format!("disabled by the sender: {reason}");
    disabled.version = subscription.version + 1;
    disabled.updated_at = Some(timestamp::from_system_time(SystemTime::now()));
    // Bounded: the dead letter is already written, so nothing is lost if this never goes
    // through, and the next delivery that meets the 410 writes it again.
    let mut backoff = Duration::from_millis(200);
    for tries in 1..=DISABLE_TRIES {
        match ctx.subscriptions.put(&disabled).await {
            Ok(_) => {
                info!(subscription_id = %subscription.id, "subscription disabled after 410 Gone");
                return;
            }
            Err(error) => {
                let reason = match &error {
                    dispatch_kafka::Error::Request { source, .. }
                    | dispatch_kafka::Error::Client(source) => classify(source).reason,
                    _ => "other",
                };
                metrics::counter!(
                    names::SENDER_PRODUCE_FAILURES_TOTAL,
                    "topic" => "dispatch.subscriptions",
                    "reason" => reason,
                )
                .increment(1);
                warn!(%error, subscription_id = %subscription.id, tries, "could not disable the subscription");
                if matches!(error, dispatch_kafka::Error::InvalidSubscription(_)) {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}
