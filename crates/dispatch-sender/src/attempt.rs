//! One delivery's attempts: sign and POST, classify the result and plan what follows (both in
//! `dispatch-core`, the one place that decides), write the plan through the outbox — the attempt
//! record, then retried at once, parked on a delay tier, or dead-lettered — and disable the
//! subscription after `410 Gone`. Returns only after every record it produced is acknowledged by
//! Kafka, so the caller may then finish the source offset.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dispatch_core::delivery_plan::{self, AttemptFacts, Next};
use dispatch_core::outcome::{self, AttemptResult};
use dispatch_core::request::webhook_request;
use dispatch_core::retry::RetrySchedule;
use dispatch_core::timestamp;
use dispatch_http::{AttemptResponse, WebhookClient, WebhookRequest};
use dispatch_kafka::outbox::Outbox;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::TopicNames;
use dispatch_proto::dispatch::v1::{DeliveryTask, Subscription};
use dispatch_telemetry::names;
use tracing::{debug, info, warn};

use crate::outbox;

/// Everything an attempt needs, shared by all attempt tasks of a sender.
#[derive(Clone)]
pub struct AttemptContext {
    /// The webhook client.
    pub client: WebhookClient,
    /// The retry schedule.
    pub schedule: RetrySchedule,
    /// Every Kafka write of the sender (attempts, retries, dead letters, quarantine): the
    /// sender's outbox (`dispatch_kafka::outbox`, `Writer::Sender`), an idempotent `acks=all`
    /// producer behind classified errors, capping and retries until acknowledged.
    pub outbox: Outbox,
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

/// Attempts `task` until it succeeds or leaves this process (tier or DLQ): each attempt is
/// sent, classified and planned ([`delivery_plan::after_attempt`]), and the plan written
/// ([`outbox::write_attempt`]) before the next step. Returns once Kafka acknowledged every record
/// the delivery produced here.
pub async fn deliver(
    ctx: &AttemptContext,
    mut task: DeliveryTask,
    subscription: &Subscription,
) -> DeliveryEnd {
    let occurred_at = task
        .occurred_at
        .as_ref()
        .and_then(timestamp::to_system_time);
    loop {
        let started = SystemTime::now();
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
        metrics::counter!(names::SENDER_ATTEMPTS_TOTAL, "outcome" => outcome::label(classified.outcome))
            .increment(1);
        debug!(
            attempt = task.attempt,
            outcome = outcome::label(classified.outcome),
            status = classified.status.unwrap_or(0),
            duration_ms = response.duration.as_millis() as u64,
            "attempt made"
        );
        let facts = AttemptFacts {
            started,
            duration: response.duration,
            classified: &classified,
            response_excerpt: response.response_excerpt,
            finished,
        };
        // The rng is not Send: drawn before any await.
        let plan = delivery_plan::after_attempt(&ctx.schedule, task, &facts, &mut rand::rng());
        match outbox::write_attempt(ctx, plan).await {
            Next::AgainNow(next) => task = next,
            Next::Delivered => {
                if let Some(occurred) = occurred_at
                    && let Ok(latency) = finished.duration_since(occurred)
                {
                    metrics::histogram!(names::SENDER_EVENT_TO_DELIVERY_SECONDS)
                        .record(latency.as_secs_f64());
                }
                return DeliveryEnd::Delivered;
            }
            Next::DeadLetter {
                disable: Some(reason),
                ..
            } => {
                disable_subscription(ctx, subscription, &reason).await;
                return DeliveryEnd::Failed;
            }
            Next::Park { .. } | Next::DeadLetter { .. } => return DeliveryEnd::Failed,
        }
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
            // The outbox counted the failed produce (with its reason) already.
            Err(error) => {
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
