//! The delivery engine's event loop: one consumer (group `dispatch-sender`) over
//! `dispatch.deliveries`, the configured lanes and every retry tier. Each turn it takes what
//! arrived — a record, an attempt's end, a timer — decides with the pure plan what becomes of
//! each due task, and starts the attempts the scheduler allows.
//!
//! The parts, each in its own file:
//! - [`crate::partitions`]: the consumer, offsets, rebalance, pause/resume, holds on tiers.
//! - [`crate::scheduler`]: per-endpoint queues, the permits, each account's share, fairness.
//! - [`crate::outbox`]: every Kafka write, run off the loop; a task's source offset is finished
//!   once everything it led to is acknowledged.
//! - [`dispatch_core::admission`] and [`dispatch_core::delivery_plan`]: what to do, decided
//!   without I/O.
//!
//! One task (the loop in [`Engine::run`]) owns the queues and decides what runs; every attempt
//! runs in its own task, finishes its source offset itself and reports back so the loop can
//! release the endpoint's next delivery.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::admission::{self, Admission, AdmissionFacts, Backlog, SubscriptionState};
use dispatch_kafka::subscription_view::SubscriptionView;
use futures::FutureExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::Result;
use crate::attempt::AttemptContext;
use crate::config::SenderConfig;
use crate::outbox::Outbox;
use crate::partitions::{PartitionKey, Partitions, Pending, Taken};
use crate::scheduler::{Completion, EndpointFacts, Scheduler};

#[cfg(feature = "test-seams")]
pub use crate::partitions::InjectedFaults;

/// Most records taken in one turn of the loop before its other work runs (a bound on how long
/// completions and starts wait behind a full consumer queue).
const MAX_RECORDS_PER_TURN: usize = 256;

/// How often the loop looks at its consumer group handler's health (see
/// [`Partitions::check_group`]).
const GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The sender: build it, then [`run`](Self::run) it.
pub struct Engine {
    partitions: Partitions,
    scheduler: Scheduler,
    outbox: Outbox,
    ctx: AttemptContext,
    view: Arc<SubscriptionView>,
    config: SenderConfig,
    first_tier_topic: Option<String>,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Creates the consumer and subscribes to deliveries, `lanes` and every tier of the
    /// schedule.
    pub fn build(
        kafka: &dispatch_kafka::KafkaConfig,
        config: SenderConfig,
        lanes: &[String],
        ctx: AttemptContext,
        view: Arc<SubscriptionView>,
    ) -> Result<Self> {
        let names = &ctx.names;
        let tier_topics: BTreeSet<String> = ctx
            .schedule
            .tiers()
            .iter()
            .map(|tier| names.retry_tier(tier.name()))
            .collect();
        let first_tier_topic = ctx
            .schedule
            .tiers()
            .first()
            .map(|tier| names.retry_tier(tier.name()));
        let mut topics = vec![names.deliveries()];
        topics.extend(lanes.iter().map(|lane| names.lane(lane)));
        topics.extend(tier_topics.iter().cloned());
        let partitions = Partitions::build(kafka, &config, topics, tier_topics)?;
        let outbox = Outbox::new(ctx.clone(), partitions.offset_handle());
        let (completions_tx, completions) = mpsc::unbounded_channel();
        Ok(Engine {
            partitions,
            scheduler: Scheduler::new(config.clone()),
            outbox,
            ctx,
            view,
            config,
            first_tier_topic,
            completions_tx,
            completions,
        })
    }

    /// Test-only seam (feature `test-seams`, never enabled by `dispatchd`): set its counters to
    /// make the next seeks or pauses of a hold fail.
    #[cfg(feature = "test-seams")]
    pub fn injected_faults(&self) -> Arc<InjectedFaults> {
        self.partitions.injected_faults()
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight attempts (until the drain
    /// deadline) and commits what finished.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut consumer = self.partitions.consumer();
        // The group handler's health comes with the statistics, which `recv` serves without
        // returning: an idle loop would never look at it.
        let mut group_check = tokio::time::interval(GROUP_CHECK_INTERVAL);
        group_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.next_wakeup();
            let mut replaced = None;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(completion) = self.completions.recv() => {
                    self.on_completion(completion);
                    while let Ok(completion) = self.completions.try_recv() {
                        self.on_completion(completion);
                    }
                }
                message = consumer.recv() => {
                    replaced = self.on_message(message)?;
                    // What else the consumer holds already is taken in the same turn, so the
                    // turn's fixed work (releases, starts, resumes, the wake-up scan) is paid
                    // once per batch of records, not once per record.
                    let mut taken = 1;
                    while replaced.is_none() && taken < MAX_RECORDS_PER_TURN {
                        let Some(message) = consumer.recv().now_or_never() else {
                            break;
                        };
                        replaced = self.on_message(message)?;
                        taken += 1;
                    }
                }
                // A timer fell due: the turn below starts what it allows.
                () = sleep_until(wake) => {}
                _ = group_check.tick() => replaced = self.partitions.check_group()?,
            }
            if let Some(lost) = replaced {
                self.scheduler.forget(&lost);
                consumer = self.partitions.consumer();
                self.outbox = Outbox::new(self.ctx.clone(), self.partitions.offset_handle());
            }
            self.forget_revoked();
            for pending in self.partitions.release_due() {
                self.accept(pending);
            }
            self.partitions.retry_resumes();
            self.start_ready();
            self.partitions.resume_windows();
        }
        self.drain().await;
        Ok(())
    }

    /// Takes one record from the consumer: a due task is admitted, an invalid record
    /// quarantined. After a consumer error, `Some(revoked)` when the consumer was replaced (see
    /// [`Partitions::after_consumer_error`]); `Err` when the process must exit.
    fn on_message(
        &mut self,
        message: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
    ) -> Result<Option<HashSet<PartitionKey>>> {
        match message {
            Ok(message) => {
                let (revoked, taken) = self.partitions.take(&message);
                drop(message);
                // Before this record is queued: see `Partitions::take`.
                self.scheduler.forget(&revoked);
                match taken {
                    Taken::Due(pending) => self.accept(pending),
                    Taken::Invalid(invalid) => self.outbox.quarantine(invalid),
                    Taken::Nothing => {}
                }
                Ok(None)
            }
            Err(error) => self
                .partitions
                .after_consumer_error(error)
                .map_err(|error| {
                    // A consumer that never fetches again: exit, so the supervisor restarts the
                    // process.
                    error!(%error, "fatal consumer error; exiting");
                    error
                }),
        }
    }

    /// Drops what is kept for partitions revoked meanwhile (holds, pauses, queued tasks): their
    /// next owner reads them from the committed offset.
    fn forget_revoked(&mut self) {
        let revoked: HashSet<PartitionKey> = self.partitions.take_revoked();
        self.scheduler.forget(&revoked);
    }

    /// Performs what [`admission::admit`] decides for a due task: skip (deleted), dead-letter
    /// (disabled), not sent (circuit open), queue on its endpoint (past its backlog when it
    /// keeps up: a burst is paced by the partition's window, not parked), or defer (a slow
    /// endpoint's full backlog).
    fn accept(&mut self, pending: Pending) {
        self.partitions.limit_window(&pending);
        let subscription = self
            .view
            .read(|table| table.get(&pending.task.subscription_id).cloned());
        let (state, circuit_open, backlog) = match &subscription {
            None => (SubscriptionState::Deleted, false, Backlog::Room),
            Some(subscription) if !subscription.enabled => (
                SubscriptionState::Disabled {
                    reason: &subscription.disabled_reason,
                },
                false,
                Backlog::Room,
            ),
            Some(subscription) => {
                let EndpointFacts {
                    circuit_open,
                    backlog,
                } = self.scheduler.facts(subscription, Instant::now());
                (SubscriptionState::Enabled, circuit_open, backlog)
            }
        };
        let admission = admission::admit(&AdmissionFacts {
            subscription: state,
            circuit_open,
            backlog,
            can_defer: self.first_tier_topic.is_some(),
        });
        match (admission, &subscription, &self.first_tier_topic) {
            (Admission::Skip { reason }, _, _) => self.outbox.skip(pending, reason),
            (Admission::DeadLetter { reason }, _, _) => {
                self.outbox.dead_letter_unsent(pending, reason)
            }
            (Admission::NotSent, _, _) => self.outbox.not_sent(pending),
            (Admission::Defer { reason }, _, Some(tier_topic)) => {
                self.outbox.defer(pending, tier_topic.clone(), reason)
            }
            // `admit` queues only for an enabled subscription and defers only when a tier
            // exists; were either not so, the task is still kept (queued) or its history ended
            // (skipped), never dropped.
            (admission, Some(subscription), _) => {
                let past_backlog = admission != Admission::Queue;
                self.scheduler.enqueue(subscription, pending, past_backlog);
            }
            (_, None, _) => self.outbox.skip(pending, admission::SKIP_DELETED),
        }
    }

    /// Starts the attempts the scheduler allows now, each in its own task.
    fn start_ready(&mut self) {
        for start in self.scheduler.next_attempts(Instant::now()) {
            // Read again: the subscription may have been deleted while the task was queued.
            let subscription = self
                .view
                .read(|table| table.get(&start.pending.task.subscription_id).cloned());
            self.outbox
                .attempt(start, subscription, self.completions_tx.clone());
        }
    }

    fn on_completion(&mut self, completion: Completion) {
        // The circuit opened: what waited on the endpoint falls due now, with the circuit open.
        for pending in self.scheduler.completed(completion, Instant::now()) {
            self.outbox.not_sent(pending);
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let now = Instant::now();
        [
            self.partitions.next_wakeup(now),
            self.scheduler.next_wakeup(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Shutdown: stop taking records, wait for running attempts until the deadline, commit.
    async fn drain(mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.config.drain_timeout_ms);
        while self.scheduler.any_running() {
            tokio::select! {
                _ = self.completions.recv() => {}
                () = tokio::time::sleep_until(deadline) => {
                    warn!("drain deadline passed with attempts running; they are repeated after restart");
                    break;
                }
            }
        }
        self.partitions.commit_finished().await;
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
