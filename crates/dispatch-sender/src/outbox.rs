//! Every Kafka write the sender makes, and the one rule that ties them to offsets: a task's
//! source offset is finished only once everything the task led to is acknowledged by Kafka.
//!
//! The writes themselves (classified errors, capping, retries until acknowledged) are
//! `dispatch_kafka::outbox`, the one produce path of every role; what to write is decided by the pure plan in `dispatch-core`
//! ([`dispatch_core::delivery_plan`], [`dispatch_core::admission`]). Here the plan is carried
//! out: an attempt's record and its retry task or dead letter ([`write_attempt`]), a skipped
//! task's record, a disabled subscription's dead letter, a deferral, a quarantined record — and
//! [`Outbox`] runs each off the engine's loop, finishing the source offset after it.
//!
//! Each task's work runs in a tracing span carrying its delivery, event, subscription and
//! account ids, so one delivery can be followed through the logs.

use std::future::Future;
use std::time::SystemTime;

use dispatch_core::delivery_plan::{self, AttemptPlan, Deferred, Next};
use dispatch_kafka::outbox::OutboxRecord;
use dispatch_kafka::quarantine::{self, QuarantineInfo};
use dispatch_proto::dispatch::v1::{DeadLetter, DeliveryTask, Subscription};
use dispatch_telemetry::names;
use tokio::sync::mpsc;
use tracing::{Instrument as _, Span, info_span, warn};

use crate::attempt::{self, AttemptContext};
use crate::partitions::{Invalid, OffsetHandle, Pending};
use crate::scheduler::{Completion, Start};

/// The span every piece of work on one delivery runs in.
pub(crate) fn delivery_span(task: &DeliveryTask) -> Span {
    info_span!(
        "delivery",
        delivery_id = %task.delivery_id,
        event_id = %task.event_id,
        subscription_id = %task.subscription_id,
        account_id = %task.account_id,
        attempt = task.attempt,
    )
}

/// Writes what one attempt's `plan` says — its record, and the retry task on its tier or the
/// dead letter — and returns once Kafka acknowledged all of it, with what comes next. The one
/// place an attempt's consequences are written, for attempts made and not made
/// ([`crate::not_sent`]).
pub(crate) async fn write_attempt(ctx: &AttemptContext, plan: AttemptPlan) -> Next {
    let AttemptPlan { record, next, .. } = plan;
    let attempts_topic = ctx.names.attempts();
    let key = record.subscription_id.clone();
    let attempt_sent = ctx
        .outbox
        .write(OutboxRecord::capped(&attempts_topic, &key, record));
    match &next {
        Next::Delivered => {
            attempt_sent.await;
        }
        Next::AgainNow(_) => {
            attempt_sent.await;
            metrics::counter!(names::SENDER_RETRIES_TOTAL, "tier" => "immediate").increment(1);
        }
        Next::Park { tier, task } => {
            let tier_topic = ctx.names.retry_tier(tier);
            let retry_sent =
                ctx.outbox
                    .write(OutboxRecord::capped(&tier_topic, &key, task.clone()));
            tokio::join!(attempt_sent, retry_sent);
            metrics::counter!(names::SENDER_RETRIES_TOTAL, "tier" => tier.clone()).increment(1);
        }
        Next::DeadLetter { letter, .. } => {
            let dead_sent = write_dead_letter(ctx, letter.clone());
            tokio::join!(attempt_sent, dead_sent);
            warn!(reason = %letter.reason, "delivery dead-lettered");
        }
    }
    next
}

/// Produces a dead letter (key = delivery id) until Kafka acknowledges it, and counts it.
pub(crate) async fn write_dead_letter(ctx: &AttemptContext, letter: DeadLetter) {
    let key = letter
        .task
        .as_ref()
        .map(|task| task.delivery_id.clone())
        .unwrap_or_default();
    ctx.outbox
        .write(OutboxRecord::capped(&ctx.names.dlq(), &key, letter))
        .await;
    metrics::counter!(names::SENDER_DEAD_LETTERED_TOTAL).increment(1);
}

/// Writes the attempt record of a task not attempted because its subscription was `reason`.
pub(crate) async fn write_skipped(ctx: &AttemptContext, task: &DeliveryTask, reason: &str) {
    let record = delivery_plan::skipped_record(task, reason, SystemTime::now());
    ctx.outbox
        .write(OutboxRecord::capped(
            &ctx.names.attempts(),
            &task.subscription_id,
            record,
        ))
        .await;
}

/// Runs work that leads on from a taken task off the engine's loop, and finishes the task's
/// source offset once that work — every write it makes — is done.
#[derive(Clone)]
pub(crate) struct Outbox {
    ctx: AttemptContext,
    offsets: OffsetHandle,
}

impl Outbox {
    pub(crate) fn new(ctx: AttemptContext, offsets: OffsetHandle) -> Self {
        Outbox { ctx, offsets }
    }

    /// The one way a taken record leaves the engine: `work` runs off the loop in `span`, the
    /// record's offset is finished once `work` is done — every write it made acknowledged — and
    /// only then `then` gets what `work` returned.
    fn spawn_then_finish<T, F, A>(&self, source: Source, span: Span, work: F, then: A)
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
        A: FnOnce(T) + Send + 'static,
    {
        let offsets = self.offsets.clone();
        tokio::spawn(
            async move {
                let done = work.await;
                offsets.finish(&source.topic, source.partition, source.offset);
                then(done);
            }
            .instrument(span),
        );
    }

    /// Spawns `work` for `pending`'s task (in the task's span) and finishes its offset after it.
    fn finish_after<W, F>(&self, pending: Pending, work: W)
    where
        W: FnOnce(AttemptContext, DeliveryTask) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (source, task) = Source::of(pending);
        let span = delivery_span(&task);
        let written = work(self.ctx.clone(), task);
        self.spawn_then_finish(source, span, written, |()| {});
    }

    /// A task whose subscription was deleted: its history ends with a skipped record.
    pub(crate) fn skip(&self, pending: Pending, reason: &'static str) {
        metrics::counter!(names::SENDER_SKIPPED_TOTAL, "reason" => reason).increment(1);
        self.finish_after(pending, move |ctx, task| async move {
            write_skipped(&ctx, &task, reason).await;
        });
    }

    /// A disabled subscription's task is kept in the DLQ (replayable once re-enabled), never
    /// dropped silently.
    pub(crate) fn dead_letter_unsent(&self, pending: Pending, reason: String) {
        metrics::counter!(names::SENDER_SKIPPED_TOTAL, "reason" => "disabled").increment(1);
        self.finish_after(pending, |ctx, task| async move {
            let letter = delivery_plan::dead_letter(&task, reason, SystemTime::now());
            write_dead_letter(&ctx, letter).await;
        });
    }

    /// Parks a task on the first tier (`tier_topic`) without spending an attempt, or
    /// dead-letters it past its deadline ([`delivery_plan::defer`]).
    pub(crate) fn defer(&self, pending: Pending, tier_topic: String, reason: &'static str) {
        metrics::counter!(names::SENDER_DEFERRED_TOTAL, "reason" => reason).increment(1);
        self.finish_after(pending, |ctx, task| async move {
            // The rng is not Send: drawn before any await.
            let deferred =
                delivery_plan::defer(&ctx.schedule, task, SystemTime::now(), &mut rand::rng());
            match deferred {
                Deferred::Park(task) => {
                    let key = task.subscription_id.clone();
                    ctx.outbox
                        .write(OutboxRecord::capped(&tier_topic, &key, task))
                        .await;
                }
                Deferred::DeadLetter(letter) => write_dead_letter(&ctx, letter).await,
            }
        });
    }

    /// An attempt fell due while its endpoint's circuit is open: recorded as not sent and moved
    /// along its schedule like after a failed attempt (see [`crate::not_sent`]).
    pub(crate) fn not_sent(&self, pending: Pending) {
        self.finish_after(pending, |ctx, task| async move {
            crate::not_sent::record_circuit_open(&ctx, task).await;
        });
    }

    /// Writes a record that is not a delivery task to `dispatch.invalid`, then finishes its
    /// offset (a value too large for that topic is cut and marked).
    pub(crate) fn quarantine(&self, invalid: Invalid) {
        metrics::counter!(names::SENDER_RECORDS_INVALID_TOTAL, "reason" => "undecodable")
            .increment(1);
        warn!(
            topic = %invalid.topic,
            partition = invalid.partition,
            offset = invalid.offset,
            error = %invalid.error,
            "quarantining an invalid delivery record"
        );
        let ctx = self.ctx.clone();
        let source = Source {
            topic: invalid.topic.clone(),
            partition: invalid.partition,
            offset: invalid.offset,
        };
        let written = async move {
            let headers = quarantine::headers(
                &QuarantineInfo {
                    reason: "undecodable",
                    error: &invalid.error,
                    topic: &invalid.topic,
                    partition: invalid.partition,
                    offset: invalid.offset,
                },
                None,
            );
            ctx.outbox
                .write(OutboxRecord::quarantined(
                    &ctx.names.invalid(),
                    invalid.key.as_deref(),
                    invalid.value.as_deref(),
                    headers,
                ))
                .await;
        };
        self.spawn_then_finish(source, Span::none(), written, |()| {});
    }

    /// Runs `start`'s attempts in their own task (or, if the subscription was deleted while the
    /// task was queued, records it skipped), finishes the source offset, and reports the end on
    /// `completions`.
    pub(crate) fn attempt(
        &self,
        start: Start,
        subscription: Option<Subscription>,
        completions: mpsc::UnboundedSender<Completion>,
    ) {
        let Start {
            permit,
            place,
            pending,
        } = start;
        let ctx = self.ctx.clone();
        let offsets = self.offsets.clone();
        let key = pending.key();
        offsets.attempt_started(&key);
        let span = delivery_span(&pending.task);
        let (source, task) = Source::of(pending);
        let delivered = async move {
            match subscription {
                Some(subscription) => Some(attempt::deliver(&ctx, task, &subscription).await),
                None => {
                    // Deleted while it waited in the queue: the history says so.
                    let reason = dispatch_core::admission::SKIP_DELETED;
                    metrics::counter!(names::SENDER_SKIPPED_TOTAL, "reason" => reason).increment(1);
                    write_skipped(&ctx, &task, reason).await;
                    None
                }
            }
        };
        // The offset is stored before the attempt stops counting as running (a revoke waiting
        // for running attempts then commits it) and before its permit is returned (the
        // shutdown drain commits once every permit is back).
        self.spawn_then_finish(source, span, delivered, move |end| {
            offsets.attempt_ended(&key);
            let _ = completions.send(Completion { place, end });
            drop(permit);
        });
    }
}

/// Where a taken record came from: the offset its work finishes.
struct Source {
    topic: String,
    partition: i32,
    offset: i64,
}

impl Source {
    fn of(pending: Pending) -> (Source, DeliveryTask) {
        let Pending {
            topic,
            partition,
            offset,
            task,
        } = pending;
        (
            Source {
                topic,
                partition,
                offset,
            },
            task,
        )
    }
}
