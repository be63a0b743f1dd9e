//! The delivery engine: one consumer (group `dispatch-sender`) over `dispatch.deliveries`, the
//! configured lanes and every retry tier; per-endpoint queues so endpoints of one partition
//! never wait for each other; offsets stored only up to the lowest unfinished record.
//!
//! One task (the loop in [`Engine::run`]) owns the queues and decides what runs; every attempt
//! runs in its own task, produces what it led to, finishes its source offset itself (through the
//! shared [`PartitionOffsets`]) and reports back so the loop can release the endpoint's next
//! delivery. Offsets live behind a mutex shared with the consumer's rebalance callback, which
//! can then wait for in-flight attempts of revoked partitions and commit exactly what finished.
//!
//! # Holding retry-tier records until they are due
//! A retry-tier record that is not due yet is held: its partition is paused (the loop keeps
//! polling), records librdkafka had already fetched for it are dropped, and when the held
//! record is due the partition is sought back to just after it and resumed.
//!
//! Holding only the head is correct because a tier's records arrive in due order (the same
//! delay added to times that increase as they are appended); jitter and a capped `Retry-After`
//! bend that a little, and a record behind such a head waits for it rather than overtaking it.
//! The librdkafka trap: pausing stops *fetching*, but messages fetched before the pause are
//! still handed over by later polls — they are dropped without taking their offsets, and the
//! seek at release reads them again. Pause before seek, seek before resume: a seek on a
//! fetching partition races the fetcher. On revoke a held record is forgotten: it was taken but
//! not finished, so the commit position is at or below it and the next owner holds it until the
//! same `not_before`; librdkafka keeps a paused flag across revoke and re-assign in one
//! consumer, so an assigned partition is resumed explicitly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use dispatch_core::admission::{
    self, Admission, AdmissionFacts, Backlog, DeferralPlan, SubscriptionState,
};
use dispatch_core::timestamp;
use dispatch_kafka::group_health::{
    GroupWatch, Rejoins, group_stuck, is_fenced_member, retire, stuck_after,
};
use dispatch_kafka::quarantine::{self, QuarantineInfo};
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_proto::dispatch::v1::next_action::{Action, Done};
use dispatch_proto::dispatch::v1::{
    AttemptOutcome, AttemptRecord, DeliveryTask, NextAction, Subscription,
};
use dispatch_proto::prost::Message as _;
use dispatch_telemetry::names;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::attempt::{self, AttemptContext, DeliveryEnd};
use crate::endpoint::{EndpointConfig, EndpointLimits, EndpointQueue};
use crate::offsets::PartitionOffsets;
use crate::{Error, Result};

/// The `[sender]` configuration table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Consumer group of the sender processes.
    pub group_id: String,
    /// Most webhook requests in flight in this process, all endpoints together.
    pub max_concurrent_requests: usize,
    /// Most of `max_concurrent_requests` one account's requests may hold at once, in percent
    /// (at least one request). Keeps one tenant's slow or hanging endpoints from taking every
    /// permit; permits are handed out round-robin between accounts, and within an account
    /// between its endpoints. 100 = no per-account cap.
    pub max_account_share_percent: u32,
    /// Most taken-but-unfinished records per partition; at it, the partition is paused until
    /// half of them finished (this bounds memory and what a crash makes the next owner redo).
    pub max_uncommitted_per_partition: usize,
    /// How long a revoke or shutdown waits for in-flight attempts, in milliseconds (keep it
    /// under the group's session timeout and the pod's termination grace period).
    pub drain_timeout_ms: u64,
    /// Per-endpoint limits and the circuit breaker.
    pub endpoint: EndpointConfig,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            group_id: "dispatch-sender".to_owned(),
            max_concurrent_requests: 512,
            max_account_share_percent: 50,
            max_uncommitted_per_partition: 10_000,
            drain_timeout_ms: 25_000,
            endpoint: EndpointConfig::default(),
        }
    }
}

impl SenderConfig {
    /// Checks the settings, naming the first bad key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.group_id.trim().is_empty() {
            return Err("sender.group_id: must not be empty".to_owned());
        }
        if !(1..=100_000).contains(&self.max_concurrent_requests) {
            return Err(format!(
                "sender.max_concurrent_requests: must be between 1 and 100000, got {}",
                self.max_concurrent_requests
            ));
        }
        if !(1..=100).contains(&self.max_account_share_percent) {
            return Err(format!(
                "sender.max_account_share_percent: must be between 1 and 100, got {}",
                self.max_account_share_percent
            ));
        }
        if self.max_uncommitted_per_partition == 0 {
            return Err("sender.max_uncommitted_per_partition: must be positive".to_owned());
        }
        if self.drain_timeout_ms == 0 {
            return Err("sender.drain_timeout_ms: must be positive".to_owned());
        }
        self.endpoint
            .validate()
            .map_err(|e| format!("sender.endpoint.{e}"))
    }

    /// Most requests one account may have in flight: its share of the permits, at least one.
    pub fn max_requests_per_account(&self) -> usize {
        let share = self.max_concurrent_requests * self.max_account_share_percent as usize / 100;
        share.max(1)
    }
}

/// Offsets and in-flight counts shared by the loop, the attempt tasks and the rebalance
/// callback.
#[derive(Default)]
struct SharedOffsets {
    offsets: PartitionOffsets,
    /// Attempts running per partition (taken records that are queued are not counted: a revoke
    /// simply drops them).
    running: HashMap<(String, i32), usize>,
    /// Partitions revoked since the loop last looked; it purges their queued records.
    revoked: Vec<(String, i32)>,
    /// Assigned partitions whose resume failed in the rebalance callback; the loop retries.
    resume_failed: Vec<(String, i32)>,
}

/// The consumer's context: rebalance handling.
struct SenderContext {
    shared: Arc<Mutex<SharedOffsets>>,
    /// The group handler's state, to notice one that lost its coordinator for good.
    watch: GroupWatch,
    drain_timeout: Duration,
    group: String,
    topic_prefix: String,
}

impl ClientContext for SenderContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.watch.observe(&statistics);
        // Lag on the retry tiers is expected: records wait there until they are due.
        dispatch_kafka::lag::record_consumer_lag(
            &self.group,
            &self.topic_prefix,
            dispatch_kafka::lag::LagBasis::Committed,
            &statistics,
        );
    }
}

fn lock(shared: &Mutex<SharedOffsets>) -> MutexGuard<'_, SharedOffsets> {
    // A poisoned lock means an attempt task panicked mid-update; the data is still the best
    // we have, and refusing it would stop every delivery.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConsumerContext for SenderContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        let revoked: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        // Give running attempts of the revoked partitions until the deadline; queued ones are
        // dropped (the next owner reads them again).
        let deadline = Instant::now() + self.drain_timeout;
        loop {
            let running: usize = {
                let shared = lock(&self.shared);
                revoked
                    .iter()
                    .map(|key| shared.running.get(key).copied().unwrap_or(0))
                    .sum()
            };
            if running == 0 || Instant::now() >= deadline {
                if running > 0 {
                    warn!(
                        running,
                        "revoke deadline passed with attempts still running; the next owner repeats them"
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        {
            let mut shared = lock(&self.shared);
            for (topic, partition) in &revoked {
                shared.offsets.revoke(topic, *partition);
                shared.running.remove(&(topic.clone(), *partition));
            }
            shared.revoked.extend(revoked.iter().cloned());
        }
        // Commit exactly what finished (the stored offsets).
        let commit_started = Instant::now();
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(%error, "commit on revoke");
        }
        info!(
            partitions = revoked.len(),
            commit_ms = commit_started.elapsed().as_millis() as u64,
            "partitions revoked"
        );
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            {
                let mut shared = lock(&self.shared);
                for element in partitions.elements() {
                    shared.offsets.assign(element.topic(), element.partition());
                }
            }
            // librdkafka keeps a partition's paused flag across a revoke and a re-assign to the
            // same consumer; the hold or window that paused it was forgotten on revoke, so
            // nothing would ever resume it (a test of a held tier record across two rebalances
            // caught exactly that).
            if let Err(error) = consumer.resume(partitions) {
                // Left paused they would never be read again: the loop retries.
                warn!(%error, "resuming assigned partitions failed; retrying");
                lock(&self.shared).resume_failed.extend(
                    partitions
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
            }
            info!(partitions = partitions.count(), "partitions assigned");
        }
    }
}

/// A task waiting in its endpoint's queue, with where it came from.
#[derive(Debug, Clone)]
struct Pending {
    topic: String,
    partition: i32,
    offset: i64,
    task: DeliveryTask,
}

/// A retry-tier record that is not due yet.
#[derive(Debug)]
struct Held {
    pending: Pending,
    due: SystemTime,
    /// Seeks past it that failed in a row; the next one is tried after a backoff.
    seek_failures: u32,
}

/// First pause before a failed seek after a hold is tried again; it doubles up to
/// [`SEEK_RETRY_MAX`].
const SEEK_RETRY_START: Duration = Duration::from_millis(200);
/// Longest pause between seeks of a held partition.
const SEEK_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the loop looks at its consumer group handler's health (see
/// [`Engine::replace_consumer`]).
const GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The pause before the next seek after `failures` failed ones in a row.
fn seek_retry_delay(failures: u32) -> Duration {
    SEEK_RETRY_START
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(SEEK_RETRY_MAX)
}

/// An attempt task reporting back.
#[derive(Debug)]
struct Completion {
    subscription_id: String,
    account_id: String,
    end: Option<DeliveryEnd>,
}

/// One endpoint's queue and the account it belongs to (for the per-account share of permits).
#[derive(Debug)]
struct Endpoint {
    account_id: String,
    queue: EndpointQueue<Pending>,
}

/// How often idle endpoint queues are looked for and dropped (and the open-circuits gauge set).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The sender: build it, then [`run`](Self::run) it.
pub struct Engine {
    consumer: Arc<StreamConsumer<SenderContext>>,
    /// What the consumer is made from, to make a fresh one after it was fenced.
    kafka: dispatch_kafka::KafkaConfig,
    /// The topics the consumer subscribes to.
    topics: Vec<String>,
    /// When a fenced consumer may be replaced (see [`Engine::replace_consumer`]).
    rejoins: Rejoins,
    ctx: AttemptContext,
    view: Arc<SubscriptionView>,
    shared: Arc<Mutex<SharedOffsets>>,
    config: SenderConfig,
    tier_topics: BTreeSet<String>,
    first_tier_topic: Option<String>,
    /// Endpoint queues by subscription id: only endpoints with something worth keeping (idle
    /// ones are dropped by [`Engine::sweep_idle`]), so this is bounded by recent activity, not
    /// by every subscription ever seen.
    endpoints: HashMap<String, Endpoint>,
    /// Endpoints that may be able to start an attempt now.
    dirty: HashSet<String>,
    /// Endpoints with deliveries waiting in their queue: what the wake-up and rate/circuit
    /// scans look at instead of every endpoint.
    waiting: HashSet<String>,
    /// Requests in flight per account (entries at zero are removed).
    account_in_flight: HashMap<String, usize>,
    /// Endpoints with work whose account is at its share, by account: released into `dirty`
    /// when one of the account's requests completes, not rescanned on every turn.
    capped: HashMap<String, HashSet<String>>,
    /// Turns the order accounts are served in, so none is always first.
    rotation: usize,
    /// When [`Engine::sweep_idle`] last ran.
    last_sweep: Instant,
    held: HashMap<(String, i32), Held>,
    /// Partitions paused because their uncommitted window is full.
    window_paused: HashSet<(String, i32)>,
    /// Partitions to resume whose resume failed; retried every turn of the loop.
    resume_retries: HashSet<(String, i32)>,
    semaphore: Arc<Semaphore>,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    /// Test-only: seeks and pauses that fail as if librdkafka had refused them.
    #[cfg(feature = "test-seams")]
    injected_faults: Arc<InjectedFaults>,
}

/// Test-only seam (feature `test-seams`, never enabled by `dispatchd`): failures of the
/// consumer calls that decide which offsets are read again, on demand. Each call of the kind
/// takes one from its counter and fails while it is positive.
#[cfg(feature = "test-seams")]
#[derive(Debug, Default)]
pub struct InjectedFaults {
    /// Seeks after a hold still to fail.
    pub seek_failures: std::sync::atomic::AtomicU32,
    /// Pauses for a hold still to fail.
    pub pause_failures: std::sync::atomic::AtomicU32,
}

#[cfg(feature = "test-seams")]
fn take_injected(counter: &std::sync::atomic::AtomicU32) -> bool {
    use std::sync::atomic::Ordering;
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The sender's group consumer, subscribed to `topics`, with the rebalance handling of
/// [`SenderContext`] on `shared`.
fn group_consumer(
    kafka: &dispatch_kafka::KafkaConfig,
    config: &SenderConfig,
    shared: &Arc<Mutex<SharedOffsets>>,
    topics: &[String],
) -> Result<StreamConsumer<SenderContext>> {
    let consumer: StreamConsumer<SenderContext> = kafka
        // Static membership and the session timeout: see KafkaConfig::instance_id.
        .group_member_config(&config.group_id, "sender")
        // Offsets are stored by us when a record is finished and committed by librdkafka
        // periodically, plus synchronously on revoke and shutdown.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // The broker answers a fetch as soon as data is there; this bounds how long it
        // holds one when there is none yet. librdkafka's 500 ms held the first fetch after
        // every assignment that long while the records were already arriving (measured:
        // docs/benchmarks.md), delaying the first deliveries after each rebalance.
        .set("fetch.wait.max.ms", "100")
        .set(
            "statistics.interval.ms",
            dispatch_kafka::lag::statistics_interval(kafka),
        )
        .create_with_context(SenderContext {
            shared: Arc::clone(shared),
            watch: GroupWatch::default(),
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
            group: config.group_id.clone(),
            topic_prefix: kafka.topic_prefix.clone(),
        })
        .map_err(Error::Kafka)?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs).map_err(Error::Kafka)?;
    info!(?topics, "sender subscribed");
    Ok(consumer)
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
        let shared = Arc::new(Mutex::new(SharedOffsets::default()));
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
        let consumer = group_consumer(kafka, &config, &shared, &topics)?;
        let (completions_tx, completions) = mpsc::unbounded_channel();
        Ok(Engine {
            consumer: Arc::new(consumer),
            kafka: kafka.clone(),
            topics,
            rejoins: Rejoins::default(),
            semaphore: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            ctx,
            view,
            shared,
            config,
            tier_topics,
            first_tier_topic,
            endpoints: HashMap::new(),
            dirty: HashSet::new(),
            waiting: HashSet::new(),
            account_in_flight: HashMap::new(),
            capped: HashMap::new(),
            rotation: 0,
            last_sweep: Instant::now(),
            held: HashMap::new(),
            window_paused: HashSet::new(),
            resume_retries: HashSet::new(),
            completions_tx,
            completions,
            #[cfg(feature = "test-seams")]
            injected_faults: Arc::default(),
        })
    }

    /// Test-only seam (feature `test-seams`, never enabled by `dispatchd`): set its counters to
    /// make the next seeks or pauses of a hold fail.
    #[cfg(feature = "test-seams")]
    pub fn injected_faults(&self) -> Arc<InjectedFaults> {
        Arc::clone(&self.injected_faults)
    }

    /// Pauses `topic`/`partition` to hold a record.
    fn pause_for_hold(&self, topic: &str, partition: i32) -> std::result::Result<(), KafkaError> {
        #[cfg(feature = "test-seams")]
        if take_injected(&self.injected_faults.pause_failures) {
            return Err(KafkaError::PauseResume("injected by a test".to_owned()));
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        self.consumer.pause(&list)
    }

    /// Seeks `topic`/`partition` to `offset` (the record after a held one).
    fn seek_past_hold(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> std::result::Result<(), KafkaError> {
        #[cfg(feature = "test-seams")]
        if take_injected(&self.injected_faults.seek_failures) {
            return Err(KafkaError::Seek("injected by a test".to_owned()));
        }
        self.consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        )
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight attempts (until the drain
    /// deadline) and commits what finished.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut consumer = Arc::clone(&self.consumer);
        let stuck_bound = stuck_after(self.kafka.session_timeout());
        // The group handler's health comes with the statistics, which `recv` serves without
        // returning: an idle loop would never look at it.
        let mut group_check = tokio::time::interval(GROUP_CHECK_INTERVAL);
        group_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.next_wakeup();
            let mut fenced = None;
            let mut check_group = false;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(completion) = self.completions.recv() => self.on_completion(completion),
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let pending = self.take(&message);
                        drop(message);
                        if let Some((pending, tier_record)) = pending {
                            self.on_record(pending, tier_record);
                        }
                    }
                    // A fenced static membership: a fresh consumer takes it back, within
                    // bounds (see `Engine::rejoin`).
                    Err(error) if is_fenced_member(&error) => fenced = Some(error),
                    // Any other fatal consumer error leaves a consumer that never fetches
                    // again: exit, so the supervisor restarts the process.
                    Err(error) if dispatch_kafka::client::is_fatal(&error) => {
                        error!(%error, "fatal consumer error; exiting");
                        return Err(Error::Kafka(error));
                    }
                    Err(error) => warn!(%error, "consumer error"),
                },
                () = sleep_until(wake) => self.mark_waiting_endpoints(),
                _ = group_check.tick() => check_group = true,
            }
            if let Some(error) = fenced {
                let instance = self.kafka.group_instance_id("sender").unwrap_or_default();
                self.rejoins
                    .fenced(error, &self.config.group_id, &instance)
                    .map_err(Error::Kafka)?;
                self.replace_consumer()?;
                consumer = Arc::clone(&self.consumer);
            } else if check_group
                && let Some(stall) = self.consumer.context().watch.stall()
                && stall.duration >= stuck_bound
            {
                group_stuck(&self.config.group_id, &stall);
                self.replace_consumer()?;
                consumer = Arc::clone(&self.consumer);
            }
            self.purge_revoked();
            self.release_due();
            self.retry_resumes();
            self.dispatch_ready();
            self.resume_windows();
        }
        self.drain().await;
        Ok(())
    }

    /// Registers a record as taken and decodes it; `None` when it needs no further work here
    /// (dropped refetch, quarantined).
    fn take(&mut self, message: &BorrowedMessage<'_>) -> Option<(Pending, bool)> {
        let topic = message.topic().to_owned();
        let partition = message.partition();
        let offset = message.offset();
        {
            // One lock per message for both the revocations and the offset.
            let shared = Arc::clone(&self.shared);
            let mut shared = lock(&shared);
            // The poll that returned this message may have run a revoke and a re-assign of its
            // partition first: forget the old assignment's queue and hold *before* taking it,
            // or the purge after this turn would drop the new hold along with the old one (and
            // leave the partition paused with nothing to release it).
            self.forget_revoked(std::mem::take(&mut shared.revoked));
            // A paused partition may still hand over records fetched before the pause; they
            // are read again after the held record is released.
            if let Some(held) = self.held.get(&(topic.clone(), partition))
                && offset > held.pending.offset
            {
                return None;
            }
            shared.offsets.assign(&topic, partition);
            if let Err(error) = shared.offsets.take(&topic, partition, offset) {
                debug!(%error, topic, partition, offset, "record not taken");
                return None;
            }
        }
        match message.payload().map(DeliveryTask::decode) {
            Some(Ok(task)) => Some((
                Pending {
                    topic: topic.clone(),
                    partition,
                    offset,
                    task,
                },
                self.tier_topics.contains(&topic),
            )),
            other => {
                let error = match other {
                    Some(Err(e)) => format!("not a posternity.dispatch.v1.DeliveryTask: {e}"),
                    _ => "the record has no value".to_owned(),
                };
                self.quarantine(message, &error);
                None
            }
        }
    }

    fn quarantine(&self, message: &BorrowedMessage<'_>, error: &str) {
        metrics::counter!(names::SENDER_RECORDS_INVALID_TOTAL, "reason" => "undecodable")
            .increment(1);
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error,
            "quarantining an invalid delivery record"
        );
        let ctx = self.ctx.clone();
        let shared = Arc::clone(&self.shared);
        let consumer = Arc::clone(&self.consumer);
        let (topic, partition, offset) = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        let key = message.key().map(<[u8]>::to_vec);
        let value = message.payload().map(<[u8]>::to_vec);
        let error = error.to_owned();
        tokio::spawn(async move {
            let invalid = ctx.names.invalid();
            let headers = quarantine::headers(
                &QuarantineInfo {
                    reason: "undecodable",
                    error: &error,
                    topic: &topic,
                    partition,
                    offset,
                },
                None,
            );
            // Until it is in (a value too large for dispatch.invalid is cut and marked): the
            // offset is finished only then.
            ctx.writes
                .write_quarantined(&invalid, key.as_deref(), value.as_deref(), headers)
                .await;
            finish(&shared, &consumer, &topic, partition, offset);
        });
    }

    fn on_record(&mut self, pending: Pending, tier_record: bool) {
        if tier_record
            && let Some(due) = pending
                .task
                .not_before
                .as_ref()
                .and_then(timestamp::to_system_time)
            && due > SystemTime::now()
        {
            // Hold the head of this tier partition until it is due.
            let key = (pending.topic.clone(), pending.partition);
            if let Err(error) = self.pause_for_hold(&pending.topic, pending.partition) {
                // Still correct: records fetched past the held one are dropped (see `take`) and
                // read again after the seek that ends the hold — which is why a failed seek
                // must never resume the partition (see `release_due`).
                warn!(%error, topic = %pending.topic, partition = pending.partition, "pause for a hold failed");
            }
            self.held.insert(
                key,
                Held {
                    pending,
                    due,
                    seek_failures: 0,
                },
            );
            return;
        }
        self.accept(pending);
    }

    /// Releases held tier records that are due: seek back to just after them, resume.
    ///
    /// A partition whose seek failed is never resumed: librdkafka would continue after the
    /// last record it handed over, past those dropped while the partition was paused, and the
    /// next stored offset would commit past them. It stays paused and held instead (records
    /// after the held one keep being dropped, and the held one, taken but unfinished, keeps the
    /// commit position at or below it), and the seek is tried again after a backoff. A revoke
    /// meanwhile forgets the hold; the next owner reads from the committed offset.
    fn release_due(&mut self) {
        let now = SystemTime::now();
        let due: Vec<(String, i32)> = self
            .held
            .iter()
            .filter(|(_, held)| held.due <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let Some(mut held) = self.held.remove(&key) else {
                continue;
            };
            let (topic, partition) = key;
            // Pause came before; seek before resume, so fetched-and-dropped records are read again.
            if let Err(error) = self.seek_past_hold(&topic, partition, held.pending.offset + 1) {
                held.seek_failures += 1;
                let retry_in = seek_retry_delay(held.seek_failures);
                warn!(
                    %error,
                    topic,
                    partition,
                    failures = held.seek_failures,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "seek after a hold failed; the partition stays paused and held until a seek succeeds"
                );
                held.due = now + retry_in;
                self.held.insert((topic, partition), held);
                continue;
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            if let Err(error) = self.consumer.resume(&list) {
                // Still paused: nothing is skipped, but nothing more is read until a resume
                // succeeds, so it is retried on every turn of the loop.
                warn!(%error, topic, partition, "resume after a hold failed; retrying");
                self.resume_retries.insert((topic.clone(), partition));
            }
            self.accept(held.pending);
        }
    }

    /// Resumes partitions whose resume failed (after a hold, or on assignment), unless they are
    /// paused for a reason of ours again.
    fn retry_resumes(&mut self) {
        let failed = std::mem::take(&mut lock(&self.shared).resume_failed);
        self.resume_retries.extend(failed);
        if self.resume_retries.is_empty() {
            return;
        }
        let keys: Vec<(String, i32)> = self.resume_retries.drain().collect();
        for key in keys {
            if self.held.contains_key(&key) || self.window_paused.contains(&key) {
                // Its hold or window resumes it.
                continue;
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(&key.0, key.1);
            if let Err(error) = self.consumer.resume(&list) {
                debug!(%error, topic = %key.0, partition = key.1, "resume failed again");
                self.resume_retries.insert(key);
            }
        }
    }

    /// Performs what [`admission::admit`] decides for a due task: skip (deleted), dead-letter
    /// (disabled), not sent (circuit open), queue on its endpoint (past its backlog when it
    /// keeps up: a burst is paced by the partition's window, not parked), or defer (a slow
    /// endpoint's full backlog).
    fn accept(&mut self, pending: Pending) {
        let subscription = self
            .view
            .read(|table| table.get(&pending.task.subscription_id).cloned());
        let window = {
            let shared = lock(&self.shared);
            shared
                .offsets
                .get(&pending.topic, pending.partition)
                .map(|tracker| tracker.uncommitted_window())
                .unwrap_or(0)
        };
        if window >= self.config.max_uncommitted_per_partition {
            // Back-pressure: stop fetching this partition until its window shrinks (records
            // already fetched are still taken: the limit is soft by at most one fetch).
            self.pause_for_window(&pending.topic, pending.partition);
        }
        let now = Instant::now();
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
                let max_queue_wait = self.config.endpoint.max_queue_wait();
                let endpoint = self.endpoint_of(subscription);
                let backlog = if endpoint.queue.is_full() {
                    Backlog::Full {
                        // Its backlog limit, not the queue: a burst makes any queue long,
                        // and only the endpoint's own pace says whether it is slow.
                        drains_in_time: admission::drains_in_time(
                            endpoint.queue.max_backlog(),
                            endpoint.queue.drain_rate(now),
                            max_queue_wait,
                        ),
                    }
                } else {
                    Backlog::Room
                };
                (
                    SubscriptionState::Enabled,
                    endpoint.queue.is_open(now),
                    backlog,
                )
            }
        };
        let admission = admission::admit(&AdmissionFacts {
            subscription: state,
            circuit_open,
            backlog,
            can_defer: self.first_tier_topic.is_some(),
        });
        match (admission, &subscription) {
            (Admission::Skip { reason }, _) => self.skip(pending, reason),
            (Admission::DeadLetter { reason }, _) => self.dead_letter_disabled(pending, reason),
            (Admission::NotSent, _) => self.circuit_open(pending),
            (Admission::Defer { reason }, _) => self.defer(pending, reason),
            (admission @ (Admission::Queue | Admission::QueuePastBacklog), Some(subscription)) => {
                let id = subscription.id.clone();
                let past_backlog = admission == Admission::QueuePastBacklog;
                // The queue `endpoint_of` made and updated above (looked up again, not remade:
                // this runs per delivery).
                if let Some(endpoint) = self.endpoints.get_mut(&id) {
                    enqueue(&mut endpoint.queue, pending, past_backlog);
                } else {
                    enqueue(
                        &mut self.endpoint_of(subscription).queue,
                        pending,
                        past_backlog,
                    );
                }
                self.waiting.insert(id.clone());
                self.dirty.insert(id);
            }
            // `admit` queues only for an enabled subscription.
            (Admission::Queue | Admission::QueuePastBacklog, None) => {
                self.skip(pending, admission::SKIP_DELETED);
            }
        }
    }

    /// The queue of `subscription`'s endpoint, made if absent, with its current limits.
    fn endpoint_of(&mut self, subscription: &Subscription) -> &mut Endpoint {
        let config = &self.config.endpoint;
        let limits = EndpointLimits::of(subscription);
        let endpoint = self
            .endpoints
            .entry(subscription.id.clone())
            .or_insert_with(|| Endpoint {
                account_id: subscription.account_id.clone(),
                queue: EndpointQueue::new(config, limits),
            });
        endpoint.queue.set_limits(config, limits);
        endpoint
    }

    /// An attempt fell due while its endpoint's circuit is open: it is recorded as not sent
    /// (outcome `CIRCUIT_OPEN`) and the delivery moves along its schedule like after a failed
    /// attempt — next tier, or the DLQ after the last attempt (see [`crate::not_sent`]).
    fn circuit_open(&mut self, pending: Pending) {
        let ctx = self.ctx.clone();
        self.finish_after(pending, |task| async move {
            crate::not_sent::record_circuit_open(&ctx, task).await;
        });
    }

    /// Writes what a task owes without attempting it (`write`, given the task) off the loop, and
    /// finishes its source offset once Kafka acknowledged that — the one way a task leaves the
    /// engine unattempted (not sent, deferred, skipped, dead-lettered unsent).
    fn finish_after<W, F>(&self, pending: Pending, write: W)
    where
        W: FnOnce(DeliveryTask) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let Pending {
            topic,
            partition,
            offset,
            task,
        } = pending;
        let written = write(task);
        let shared = Arc::clone(&self.shared);
        let consumer = Arc::clone(&self.consumer);
        tokio::spawn(async move {
            written.await;
            finish(&shared, &consumer, &topic, partition, offset);
        });
    }

    fn pause_for_window(&mut self, topic: &str, partition: i32) {
        if self.window_paused.insert((topic.to_owned(), partition)) {
            let mut list = TopicPartitionList::new();
            list.add_partition(topic, partition);
            if let Err(error) = self.consumer.pause(&list) {
                warn!(%error, topic, partition, "pause for the window failed");
            }
            debug!(topic, partition, "window full: partition paused");
        }
    }

    /// Resumes partitions paused for their window once it is down to half the limit.
    fn resume_windows(&mut self) {
        if self.window_paused.is_empty() {
            return;
        }
        let limit = self.config.max_uncommitted_per_partition / 2;
        let shrunk: Vec<(String, i32)> = {
            let shared = lock(&self.shared);
            self.window_paused
                .iter()
                .filter(|(topic, partition)| {
                    shared
                        .offsets
                        .get(topic, *partition)
                        .is_none_or(|tracker| tracker.uncommitted_window() <= limit)
                })
                .cloned()
                .collect()
        };
        for key in shrunk {
            self.window_paused.remove(&key);
            if self.held.contains_key(&key) {
                // Held for a due time: releasing the hold resumes it.
                continue;
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(&key.0, key.1);
            if let Err(error) = self.consumer.resume(&list) {
                debug!(%error, "resume after the window shrank");
            }
        }
    }

    /// Parks a task whose slow endpoint's backlog is full on the first tier without spending an
    /// attempt.
    fn defer(&mut self, pending: Pending, reason: &'static str) {
        let Some(tier_topic) = self.first_tier_topic.clone() else {
            // `admit` defers only when a tier exists; deciding afresh keeps the task either way.
            self.accept(pending);
            return;
        };
        metrics::counter!(names::SENDER_DEFERRED_TOTAL, "reason" => reason).increment(1);
        let ctx = self.ctx.clone();
        self.finish_after(pending, |mut task| async move {
            let now = SystemTime::now();
            let first_seen = task
                .first_attempt_at
                .as_ref()
                .or(task.created_at.as_ref())
                .and_then(timestamp::to_system_time)
                .unwrap_or(now);
            // The rng is not Send: drawn before any await.
            let plan = admission::plan_deferral(
                &ctx.schedule,
                first_seen,
                task.deferrals,
                now,
                &mut rand::rng(),
            );
            match plan {
                Some(DeferralPlan::Park {
                    not_before,
                    deferrals,
                }) => {
                    task.deferrals = deferrals;
                    task.not_before = Some(timestamp::from_system_time(not_before));
                    let key = task.subscription_id.clone();
                    ctx.writes.write_record(&tier_topic, &key, task).await;
                }
                Some(DeferralPlan::DeadLetter { reason }) => {
                    attempt::dead_letter(&ctx, &task, reason, now).await;
                }
                // A first tier topic exists only for a schedule with a tier.
                None => {
                    let reason = "no retry tier to defer to".to_owned();
                    attempt::dead_letter(&ctx, &task, reason, now).await;
                }
            }
        });
    }

    fn skip(&mut self, pending: Pending, reason: &'static str) {
        metrics::counter!(names::SENDER_SKIPPED_TOTAL, "reason" => reason).increment(1);
        let ctx = self.ctx.clone();
        self.finish_after(pending, move |task| async move {
            record_skipped(&ctx, &task, reason).await;
        });
    }

    /// A disabled subscription's deliveries are kept in the DLQ (replayable once re-enabled),
    /// never dropped silently.
    fn dead_letter_disabled(&mut self, pending: Pending, reason: String) {
        metrics::counter!(names::SENDER_SKIPPED_TOTAL, "reason" => "disabled").increment(1);
        let ctx = self.ctx.clone();
        self.finish_after(pending, |task| async move {
            attempt::dead_letter(&ctx, &task, reason, SystemTime::now()).await;
        });
    }

    /// Starts attempts for endpoints that may have work, within the global concurrency limit
    /// and each account's share of it.
    ///
    /// Fairness: one attempt at a time, round-robin between the accounts with work and, within
    /// an account, between its endpoints, so that when permits are scarce each account (and
    /// each endpoint of one) gets its turn; an account at its share
    /// ([`SenderConfig::max_requests_per_account`]) waits for one of its own requests to
    /// complete, so one tenant's hanging endpoints cannot hold every permit.
    fn dispatch_ready(&mut self) {
        let now = Instant::now();
        let mut by_account: BTreeMap<String, VecDeque<String>> = BTreeMap::new();
        for id in self.dirty.drain() {
            if let Some(endpoint) = self.endpoints.get(&id) {
                by_account
                    .entry(endpoint.account_id.clone())
                    .or_default()
                    .push_back(id);
            }
        }
        let mut turns: VecDeque<(String, VecDeque<String>)> = by_account.into_iter().collect();
        if !turns.is_empty() {
            let rotate = self.rotation % turns.len();
            turns.rotate_left(rotate);
            self.rotation = self.rotation.wrapping_add(1);
        }
        let account_cap = self.config.max_requests_per_account();
        while let Some((account_id, mut ids)) = turns.pop_front() {
            let Some(id) = ids.pop_front() else {
                continue;
            };
            if self
                .account_in_flight
                .get(&account_id)
                .copied()
                .unwrap_or(0)
                >= account_cap
            {
                // At its share: looked at again after one of its requests completes.
                let capped = self.capped.entry(account_id).or_default();
                capped.insert(id);
                capped.extend(ids);
                continue;
            }
            let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() else {
                // Out of global capacity: everyone left looks again when an attempt completes.
                self.dirty.insert(id);
                self.dirty.extend(ids);
                for (_, rest) in turns.drain(..) {
                    self.dirty.extend(rest);
                }
                break;
            };
            let Some(endpoint) = self.endpoints.get_mut(&id) else {
                turns.push_back((account_id, ids));
                continue;
            };
            let Some(pending) = endpoint.queue.next_ready(now) else {
                // Nothing more may go from this endpoint now (its limits, or empty).
                if endpoint.queue.is_empty() {
                    self.waiting.remove(&id);
                }
                if !ids.is_empty() {
                    turns.push_back((account_id, ids));
                }
                continue;
            };
            if endpoint.queue.is_empty() {
                self.waiting.remove(&id);
            }
            self.start_attempt(permit, &id, &account_id, pending);
            // This endpoint may have more: to the back of its account's line, and the account
            // to the back of the accounts' line.
            ids.push_back(id);
            turns.push_back((account_id, ids));
        }
        self.sweep_idle(now);
    }

    /// Runs one attempt (or, if the subscription was deleted meanwhile, records it skipped) in
    /// its own task, holding `permit` and counting against the account's share.
    fn start_attempt(
        &mut self,
        permit: tokio::sync::OwnedSemaphorePermit,
        subscription_id: &str,
        account_id: &str,
        pending: Pending,
    ) {
        *self
            .account_in_flight
            .entry(account_id.to_owned())
            .or_default() += 1;
        let subscription = self.view.read(|table| table.get(subscription_id).cloned());
        let ctx = self.ctx.clone();
        let shared = Arc::clone(&self.shared);
        let consumer = Arc::clone(&self.consumer);
        let completions = self.completions_tx.clone();
        let key = (pending.topic.clone(), pending.partition);
        *lock(&self.shared).running.entry(key.clone()).or_default() += 1;
        let subscription_id = subscription_id.to_owned();
        let account_id = account_id.to_owned();
        tokio::spawn(async move {
            let _permit = permit;
            let end = match subscription {
                Some(subscription) => {
                    Some(attempt::deliver(&ctx, pending.task, &subscription).await)
                }
                None => {
                    // Deleted while it waited in the queue: the history says so.
                    metrics::counter!(names::SENDER_SKIPPED_TOTAL, "reason" => admission::SKIP_DELETED)
                        .increment(1);
                    record_skipped(&ctx, &pending.task, admission::SKIP_DELETED).await;
                    None
                }
            };
            // Store the offset before the attempt stops counting as running: a revoke
            // waiting for running attempts then commits it.
            finish(
                &shared,
                &consumer,
                &pending.topic,
                pending.partition,
                pending.offset,
            );
            {
                let mut guard = lock(&shared);
                if let Some(running) = guard.running.get_mut(&key) {
                    *running = running.saturating_sub(1);
                }
            }
            let _ = completions.send(Completion {
                subscription_id,
                account_id,
                end,
            });
        });
    }

    /// Drops idle endpoint queues (see [`EndpointQueue::is_evictable`]) and sets the
    /// open-circuits gauge, at most once per [`SWEEP_INTERVAL`]: the one scan over every
    /// endpoint kept, so the per-turn work does not grow with the endpoints seen.
    fn sweep_idle(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let failure_memory = self.config.endpoint.max_cool_down();
        let before = self.endpoints.len();
        self.endpoints
            .retain(|_, endpoint| !endpoint.queue.is_evictable(now, failure_memory));
        if self.endpoints.len() < before / 2 {
            // A burst of endpoints is gone: give the memory back.
            self.endpoints.shrink_to_fit();
            self.waiting.shrink_to_fit();
            self.dirty.shrink_to_fit();
        }
        let open = self
            .endpoints
            .values()
            .filter(|endpoint| endpoint.queue.is_open(now))
            .count();
        metrics::gauge!(names::SENDER_OPEN_CIRCUITS).set(open as f64);
        metrics::gauge!(names::SENDER_TRACKED_ENDPOINTS).set(self.endpoints.len() as f64);
    }

    fn on_completion(&mut self, completion: Completion) {
        let now = Instant::now();
        if let Some(in_flight) = self.account_in_flight.get_mut(&completion.account_id) {
            *in_flight = in_flight.saturating_sub(1);
            if *in_flight == 0 {
                self.account_in_flight.remove(&completion.account_id);
            }
        }
        // Below its share again: its waiting endpoints get their turn.
        if let Some(ids) = self.capped.remove(&completion.account_id) {
            self.dirty.extend(ids);
        }
        if let Some(endpoint) = self.endpoints.get_mut(&completion.subscription_id) {
            let queue = &mut endpoint.queue;
            let result = match completion.end {
                Some(DeliveryEnd::Delivered) => queue.complete(true, now).map(|_| ()),
                Some(DeliveryEnd::Failed) => queue.complete(false, now).map(|_| ()),
                None => queue.abandon(),
            };
            if result.is_err() {
                debug!(subscription_id = %completion.subscription_id, "completion without an attempt in flight");
            }
            if queue.is_open(now) {
                // The circuit opened: what waits here falls due now, with the circuit open.
                let waiting: Vec<Pending> = queue.drain().collect();
                self.waiting.remove(&completion.subscription_id);
                for pending in waiting {
                    self.circuit_open(pending);
                }
            }
            self.dirty.insert(completion.subscription_id);
        }
    }

    /// Endpoints with waiting items whose limits may have lifted (rate limit, circuit).
    fn mark_waiting_endpoints(&mut self) {
        self.dirty.extend(self.waiting.iter().cloned());
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let now = Instant::now();
        let system_now = SystemTime::now();
        let held = self
            .held
            .values()
            .map(|held| now + held.due.duration_since(system_now).unwrap_or_default());
        // Out of global capacity, an endpoint's ready time would wake the loop for nothing (a
        // busy spin while every permit hangs on slow endpoints): a completion wakes it instead.
        // The same holds for an account at its share.
        let capacity_left = self.semaphore.available_permits() > 0;
        let account_cap = self.config.max_requests_per_account();
        let endpoints = self
            .waiting
            .iter()
            .filter(|_| capacity_left)
            .filter_map(|id| self.endpoints.get(id))
            .filter(|endpoint| {
                self.account_in_flight
                    .get(&endpoint.account_id)
                    .copied()
                    .unwrap_or(0)
                    < account_cap
            })
            .filter_map(|endpoint| endpoint.queue.ready_at(now));
        // The idle sweep needs a turn now and then even when nothing else happens.
        let sweep = (!self.endpoints.is_empty()).then_some(self.last_sweep + SWEEP_INTERVAL);
        // A failed resume is tried again within a second even if nothing else wakes the loop.
        let resume_retry = (!self.resume_retries.is_empty()).then(|| now + Duration::from_secs(1));
        held.chain(endpoints).chain(sweep).chain(resume_retry).min()
    }

    /// Replaces the consumer with a fresh one (same configuration, same `group.instance.id`)
    /// after librdkafka left it unable to fetch again — fenced, or its group handler away from
    /// its coordinator for good (see [`dispatch_kafka::group_health`]). Everything taken
    /// through the old consumer and not finished is forgotten as on a revoke: the fresh
    /// consumer's partitions start at their committed offsets, and attempts still running
    /// finish into nothing (at least once: their records are read and sent again).
    fn replace_consumer(&mut self) -> Result<()> {
        let lost: Vec<(String, i32)> = {
            let mut shared = lock(&self.shared);
            let mut lost: Vec<(String, i32)> = shared
                .offsets
                .iter()
                .map(|(topic, partition, _)| (topic.to_owned(), partition))
                .collect();
            shared.offsets.revoke_all();
            shared.running.clear();
            lost.append(&mut shared.revoked);
            lost
        };
        self.forget_revoked(lost);
        let consumer = group_consumer(&self.kafka, &self.config, &self.shared, &self.topics)?;
        retire(std::mem::replace(&mut self.consumer, Arc::new(consumer)));
        Ok(())
    }

    /// Drops queued and held records of partitions revoked meanwhile: their next owner reads
    /// them from the committed offset.
    fn purge_revoked(&mut self) {
        let revoked = std::mem::take(&mut lock(&self.shared).revoked);
        self.forget_revoked(revoked);
    }

    /// Drops what this engine keeps for `revoked` partitions: held records, window pauses,
    /// queued records.
    fn forget_revoked(&mut self, revoked: Vec<(String, i32)>) {
        if revoked.is_empty() {
            return;
        }
        let revoked: HashSet<(String, i32)> = revoked.into_iter().collect();
        self.held.retain(|key, _| !revoked.contains(key));
        // Our pauses of revoked partitions end with them (an assigned partition is resumed).
        self.window_paused.retain(|key| !revoked.contains(key));
        self.resume_retries.retain(|key| !revoked.contains(key));
        for id in self.waiting.iter() {
            let Some(endpoint) = self.endpoints.get_mut(id) else {
                continue;
            };
            let queue = &mut endpoint.queue;
            let kept: Vec<Pending> = queue
                .drain()
                .filter(|p| !revoked.contains(&(p.topic.clone(), p.partition)))
                .collect();
            for pending in kept {
                // It was in the queue a moment ago (possibly past the backlog, see `defer`).
                queue.push_past_backlog(pending);
            }
        }
        let endpoints = &self.endpoints;
        self.waiting
            .retain(|id| endpoints.get(id).is_some_and(|e| !e.queue.is_empty()));
    }

    /// Shutdown: stop taking records, wait for running attempts until the deadline, commit.
    async fn drain(mut self) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.drain_timeout_ms);
        let capacity = self.config.max_concurrent_requests;
        while self.semaphore.available_permits() < capacity {
            tokio::select! {
                _ = self.completions.recv() => {}
                () = tokio::time::sleep_until(deadline) => {
                    warn!("drain deadline passed with attempts running; they are repeated after restart");
                    break;
                }
            }
        }
        let consumer = Arc::clone(&self.consumer);
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match committed {
            Ok(Ok(())) => info!("sender stopped; finished offsets committed"),
            Ok(Err(KafkaError::ConsumerCommit(code))) => {
                debug!(?code, "nothing to commit at shutdown")
            }
            Ok(Err(error)) => warn!(%error, "final commit failed"),
            Err(error) => warn!(%error, "final commit task failed"),
        }
    }
}

/// Writes the attempt record of a task not attempted because its subscription was `reason`
/// (deleted, …): outcome `SKIPPED`, next action done, so its history ends visibly.
/// Appends an admitted task to its endpoint's queue (past the backlog limit when admission
/// said so). A queue found full since the facts were read — not possible on the loop's one
/// thread — keeps the task anyway: in memory it is not lost.
fn enqueue(queue: &mut EndpointQueue<Pending>, pending: Pending, past_backlog: bool) {
    if past_backlog {
        queue.push_past_backlog(pending);
    } else if let Err(overflow) = queue.push(pending) {
        queue.push_past_backlog(overflow.into_inner());
    }
}

async fn record_skipped(ctx: &AttemptContext, task: &DeliveryTask, reason: &str) {
    let record = AttemptRecord {
        started_at: Some(timestamp::from_system_time(SystemTime::now())),
        outcome: AttemptOutcome::Skipped as i32,
        error: format!("not attempted: the subscription was {reason}"),
        next_action: Some(NextAction {
            action: Some(Action::Done(Done {})),
        }),
        ..attempt::record_for(task)
    };
    ctx.writes
        .write_record(&ctx.names.attempts(), &task.subscription_id, record)
        .await;
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Finishes a record's offset and stores the new commit position, if it moved.
fn finish(
    shared: &Mutex<SharedOffsets>,
    consumer: &StreamConsumer<SenderContext>,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    let position = lock(shared).offsets.finish(topic, partition, offset);
    match position {
        Ok(Some(position)) => {
            let mut list = TopicPartitionList::new();
            if list
                .add_partition_offset(topic, partition, Offset::Offset(position))
                .is_ok()
                && let Err(error) = consumer.store_offsets(&list)
            {
                debug!(%error, topic, partition, "store offset (partition revoked?)");
            }
        }
        Ok(None) => {}
        Err(error) => debug!(%error, "finish after revoke"),
    }
}
