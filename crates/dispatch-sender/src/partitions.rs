//! The sender's partitions: its group consumer, which offsets are taken and finished (and so
//! what is committed), rebalances, pausing and resuming, and holding retry-tier records until
//! they are due. The engine asks it for the next due task and tells it what finished; nothing
//! here knows endpoints or webhooks.
//!
//! # Offsets
//! Offsets live behind a mutex shared by the loop, the tasks that finish records (attempts and
//! the outbox's writes, through [`OffsetHandle`]) and the rebalance callback, which can then
//! wait for running attempts of revoked partitions and commit exactly what finished. An offset is
//! stored for commit only up to the lowest unfinished record ([`crate::offsets`]).
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
//!
//! # Back-pressure
//! A partition whose taken-but-unfinished records reach `sender.max_uncommitted_per_partition`
//! is paused until half of them finished: that bounds memory and what a crash makes the next
//! owner redo, and it is what paces a burst (see [`dispatch_core::admission`]).
//!
//! # Rebalance without blocking the runtime
//! librdkafka runs the revoke callback inside the poll that the engine's loop awaits, and the
//! revoke must wait (until `sender.drain_timeout_ms`) for running attempts of the revoked
//! partitions. On a multi-threaded runtime the wait runs in `block_in_place`, so the worker's
//! other tasks — the very attempts being waited for — move to another worker; on a
//! single-threaded runtime nothing else could run while it waits, so it does not wait.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use dispatch_core::timestamp;
use dispatch_kafka::group_health::{
    GroupWatch, Rejoins, group_stuck, is_fenced_member, retire, stuck_after,
};
use dispatch_proto::dispatch::v1::DeliveryTask;
use dispatch_proto::prost::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::SenderConfig;
use crate::offsets::PartitionOffsets;
use crate::{Error, Result};

/// A topic and partition.
pub(crate) type PartitionKey = (String, i32);

/// A taken record's task, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) task: DeliveryTask,
}

impl Pending {
    pub(crate) fn key(&self) -> PartitionKey {
        (self.topic.clone(), self.partition)
    }
}

/// A record that is not a delivery task, to be quarantined before its offset is finished.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) error: String,
}

/// What a fetched record is to the engine.
// One lives for a moment per record and is moved on at once; boxing the common variant would
// add an allocation per delivery to spare a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Taken {
    /// A task that is due now (a first attempt, or a tier record whose time came).
    Due(Pending),
    /// Not a delivery task: quarantine it.
    Invalid(Invalid),
    /// Nothing to do: a refetch behind a hold, a record not taken, or a tier record now held
    /// until it is due.
    Nothing,
}

/// Offsets and in-flight counts shared by the loop, the finishing tasks and the rebalance
/// callback.
#[derive(Default)]
struct SharedOffsets {
    offsets: PartitionOffsets,
    /// Attempts running per partition (taken records that are queued are not counted: a revoke
    /// simply drops them).
    running: HashMap<PartitionKey, usize>,
    /// Partitions revoked since the loop last looked; it purges their queued records.
    revoked: Vec<PartitionKey>,
    /// Assigned partitions whose resume failed in the rebalance callback; the loop retries.
    resume_failed: Vec<PartitionKey>,
}

fn lock(shared: &Mutex<SharedOffsets>) -> MutexGuard<'_, SharedOffsets> {
    // A poisoned lock means an attempt task panicked mid-update; the data is still the best
    // we have, and refusing it would stop every delivery.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The consumer's context: rebalance handling and the group handler's health.
pub(crate) struct SenderContext {
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

impl SenderContext {
    /// Waits until no attempt of `revoked` runs or the drain deadline passed; the count of those
    /// still running.
    fn wait_for_running(&self, revoked: &[PartitionKey]) -> usize {
        let running = || -> usize {
            let shared = lock(&self.shared);
            revoked
                .iter()
                .map(|key| shared.running.get(key).copied().unwrap_or(0))
                .sum()
        };
        let multi_threaded = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if !multi_threaded {
            // The attempts could not make progress while this thread waits.
            return running();
        }
        let deadline = Instant::now() + self.drain_timeout;
        tokio::task::block_in_place(|| {
            loop {
                let now_running = running();
                if now_running == 0 || Instant::now() >= deadline {
                    return now_running;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }
}

impl ConsumerContext for SenderContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        let revoked: Vec<PartitionKey> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        // Give running attempts of the revoked partitions until the deadline; queued ones are
        // dropped (the next owner reads them again).
        let running = self.wait_for_running(&revoked);
        if running > 0 {
            warn!(
                running,
                "revoke deadline passed with attempts still running; the next owner repeats them"
            );
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

/// The sender's consumer.
pub(crate) type SenderConsumer = StreamConsumer<SenderContext>;

/// What finishing tasks need of the partitions: mark a taken offset finished (and store the new
/// commit position) and count attempts running, for the revoke's wait. Cheap to clone; one made
/// before the consumer was replaced finishes into nothing (its partitions were forgotten).
#[derive(Clone)]
pub(crate) struct OffsetHandle {
    shared: Arc<Mutex<SharedOffsets>>,
    consumer: Arc<SenderConsumer>,
}

impl OffsetHandle {
    /// Finishes a record's offset and stores the new commit position, if it moved.
    pub(crate) fn finish(&self, topic: &str, partition: i32, offset: i64) {
        let position = lock(&self.shared).offsets.finish(topic, partition, offset);
        match position {
            Ok(Some(position)) => {
                let mut list = TopicPartitionList::new();
                if list
                    .add_partition_offset(topic, partition, Offset::Offset(position))
                    .is_ok()
                    && let Err(error) = self.consumer.store_offsets(&list)
                {
                    debug!(%error, topic, partition, "store offset (partition revoked?)");
                }
            }
            Ok(None) => {}
            Err(error) => debug!(%error, "finish after revoke"),
        }
    }

    /// An attempt of `key`'s partition starts running.
    pub(crate) fn attempt_started(&self, key: &PartitionKey) {
        *lock(&self.shared).running.entry(key.clone()).or_default() += 1;
    }

    /// An attempt of `key`'s partition stopped running (call after [`Self::finish`], so a revoke
    /// waiting for it commits its offset).
    pub(crate) fn attempt_ended(&self, key: &PartitionKey) {
        let mut shared = lock(&self.shared);
        if let Some(running) = shared.running.get_mut(key) {
            *running = running.saturating_sub(1);
        }
    }
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

/// The pause before the next seek after `failures` failed ones in a row.
fn seek_retry_delay(failures: u32) -> Duration {
    SEEK_RETRY_START
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(SEEK_RETRY_MAX)
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

/// The sender's partitions (see the module documentation).
pub(crate) struct Partitions {
    consumer: Arc<SenderConsumer>,
    /// What the consumer is made from, to make a fresh one after it was fenced.
    kafka: dispatch_kafka::KafkaConfig,
    config: SenderConfig,
    /// The topics the consumer subscribes to.
    topics: Vec<String>,
    tier_topics: BTreeSet<String>,
    /// When a fenced consumer may be replaced (see [`Partitions::replace_consumer`]).
    rejoins: Rejoins,
    shared: Arc<Mutex<SharedOffsets>>,
    held: HashMap<PartitionKey, Held>,
    /// Partitions paused because their uncommitted window is full.
    window_paused: HashSet<PartitionKey>,
    /// Partitions to resume whose resume failed; retried every turn of the loop.
    resume_retries: HashSet<PartitionKey>,
    /// Test-only: seeks and pauses that fail as if librdkafka had refused them.
    #[cfg(feature = "test-seams")]
    injected_faults: Arc<InjectedFaults>,
}

/// The sender's group consumer, subscribed to `topics`, with the rebalance handling of
/// [`SenderContext`] on `shared`.
fn group_consumer(
    kafka: &dispatch_kafka::KafkaConfig,
    config: &SenderConfig,
    shared: &Arc<Mutex<SharedOffsets>>,
    topics: &[String],
) -> Result<SenderConsumer> {
    let consumer: SenderConsumer = kafka
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

impl Partitions {
    /// Creates the consumer and subscribes it to `topics`; records of `tier_topics` are held
    /// until due.
    pub(crate) fn build(
        kafka: &dispatch_kafka::KafkaConfig,
        config: &SenderConfig,
        topics: Vec<String>,
        tier_topics: BTreeSet<String>,
    ) -> Result<Self> {
        let shared = Arc::new(Mutex::new(SharedOffsets::default()));
        let consumer = group_consumer(kafka, config, &shared, &topics)?;
        Ok(Partitions {
            consumer: Arc::new(consumer),
            kafka: kafka.clone(),
            config: config.clone(),
            topics,
            tier_topics,
            rejoins: Rejoins::default(),
            shared,
            held: HashMap::new(),
            window_paused: HashSet::new(),
            resume_retries: HashSet::new(),
            #[cfg(feature = "test-seams")]
            injected_faults: Arc::default(),
        })
    }

    /// Test-only seam: the counters that make the next seeks or pauses of a hold fail.
    #[cfg(feature = "test-seams")]
    pub(crate) fn injected_faults(&self) -> Arc<InjectedFaults> {
        Arc::clone(&self.injected_faults)
    }

    /// The consumer the loop polls (replaced after a fence: ask again after
    /// [`Self::after_consumer_error`] or [`Self::check_group`] replaced it).
    pub(crate) fn consumer(&self) -> Arc<SenderConsumer> {
        Arc::clone(&self.consumer)
    }

    /// The handle finishing tasks use (made for the current consumer).
    pub(crate) fn offset_handle(&self) -> OffsetHandle {
        OffsetHandle {
            shared: Arc::clone(&self.shared),
            consumer: Arc::clone(&self.consumer),
        }
    }

    /// Partitions revoked since last asked, with what this keeps for them (holds, pauses)
    /// forgotten; the caller drops their queued tasks. [`Self::take`] does the same for the
    /// revokes of the poll that returned its record.
    pub(crate) fn take_revoked(&mut self) -> HashSet<PartitionKey> {
        let revoked = std::mem::take(&mut lock(&self.shared).revoked);
        self.forget(revoked)
    }

    fn forget(&mut self, revoked: Vec<PartitionKey>) -> HashSet<PartitionKey> {
        let revoked: HashSet<PartitionKey> = revoked.into_iter().collect();
        if !revoked.is_empty() {
            self.held.retain(|key, _| !revoked.contains(key));
            // Our pauses of revoked partitions end with them (an assigned partition is resumed).
            self.window_paused.retain(|key| !revoked.contains(key));
            self.resume_retries.retain(|key| !revoked.contains(key));
        }
        revoked
    }

    /// Registers a fetched record as taken and says what it is (see [`Taken`]). A tier record
    /// not due yet is held here until [`Self::release_due`] hands it over.
    ///
    /// Also returns the partitions revoked since last asked (see [`Self::take_revoked`]), under
    /// the same lock: the poll that returned this record may have revoked and re-assigned its
    /// partition first, and the old assignment's hold and queued tasks must go before this
    /// record is held or queued — or the purge after this turn would drop it with them.
    pub(crate) fn take(&mut self, message: &BorrowedMessage<'_>) -> (HashSet<PartitionKey>, Taken) {
        let topic = message.topic().to_owned();
        let partition = message.partition();
        let offset = message.offset();
        let shared = Arc::clone(&self.shared);
        let mut shared = lock(&shared);
        let revoked = self.forget(std::mem::take(&mut shared.revoked));
        // A paused partition may still hand over records fetched before the pause; they are
        // read again after the held record is released.
        if !self.held.is_empty()
            && let Some(held) = self.held.get(&(topic.clone(), partition))
            && offset > held.pending.offset
        {
            return (revoked, Taken::Nothing);
        }
        shared.offsets.assign(&topic, partition);
        if let Err(error) = shared.offsets.take(&topic, partition, offset) {
            debug!(%error, topic, partition, offset, "record not taken");
            return (revoked, Taken::Nothing);
        }
        drop(shared);
        let task = match message.payload().map(DeliveryTask::decode) {
            Some(Ok(task)) => task,
            other => {
                let error = match other {
                    Some(Err(e)) => format!("not a posternity.dispatch.v1.DeliveryTask: {e}"),
                    _ => "the record has no value".to_owned(),
                };
                let invalid = Invalid {
                    topic,
                    partition,
                    offset,
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    error,
                };
                return (revoked, Taken::Invalid(invalid));
            }
        };
        let tier_record = self.tier_topics.contains(&topic);
        let pending = Pending {
            topic,
            partition,
            offset,
            task,
        };
        if tier_record
            && let Some(due) = pending
                .task
                .not_before
                .as_ref()
                .and_then(timestamp::to_system_time)
            && due > SystemTime::now()
        {
            self.hold(pending, due);
            return (revoked, Taken::Nothing);
        }
        (revoked, Taken::Due(pending))
    }

    /// Holds the head of a tier partition until it is due.
    fn hold(&mut self, pending: Pending, due: SystemTime) {
        if let Err(error) = self.pause_for_hold(&pending.topic, pending.partition) {
            // Still correct: records fetched past the held one are dropped (see `take`) and
            // read again after the seek that ends the hold — which is why a failed seek must
            // never resume the partition (see `release_due`).
            warn!(%error, topic = %pending.topic, partition = pending.partition, "pause for a hold failed");
        }
        self.held.insert(
            pending.key(),
            Held {
                pending,
                due,
                seek_failures: 0,
            },
        );
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

    /// Releases held tier records that are due: seek back to just after them, resume. Returns
    /// the released tasks, due now.
    ///
    /// A partition whose seek failed is never resumed: librdkafka would continue after the
    /// last record it handed over, past those dropped while the partition was paused, and the
    /// next stored offset would commit past them. It stays paused and held instead (records
    /// after the held one keep being dropped, and the held one, taken but unfinished, keeps the
    /// commit position at or below it), and the seek is tried again after a backoff. A revoke
    /// meanwhile forgets the hold; the next owner reads from the committed offset.
    pub(crate) fn release_due(&mut self) -> Vec<Pending> {
        let now = SystemTime::now();
        let due: Vec<PartitionKey> = self
            .held
            .iter()
            .filter(|(_, held)| held.due <= now)
            .map(|(key, _)| key.clone())
            .collect();
        let mut released = Vec::with_capacity(due.len());
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
            released.push(held.pending);
        }
        released
    }

    /// Resumes partitions whose resume failed (after a hold, or on assignment), unless they are
    /// paused for a reason of ours again.
    pub(crate) fn retry_resumes(&mut self) {
        let failed = std::mem::take(&mut lock(&self.shared).resume_failed);
        self.resume_retries.extend(failed);
        if self.resume_retries.is_empty() {
            return;
        }
        let keys: Vec<PartitionKey> = self.resume_retries.drain().collect();
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

    /// Back-pressure: pauses `pending`'s partition when its uncommitted window is full (records
    /// already fetched are still taken: the limit is soft by at most one fetch).
    pub(crate) fn limit_window(&mut self, pending: &Pending) {
        let window = lock(&self.shared)
            .offsets
            .get(&pending.topic, pending.partition)
            .map(|tracker| tracker.uncommitted_window())
            .unwrap_or(0);
        if window < self.config.max_uncommitted_per_partition {
            return;
        }
        if self.window_paused.insert(pending.key()) {
            let mut list = TopicPartitionList::new();
            list.add_partition(&pending.topic, pending.partition);
            if let Err(error) = self.consumer.pause(&list) {
                warn!(%error, topic = %pending.topic, partition = pending.partition, "pause for the window failed");
            }
            debug!(topic = %pending.topic, partition = pending.partition, "window full: partition paused");
        }
    }

    /// Resumes partitions paused for their window once it is down to half the limit.
    pub(crate) fn resume_windows(&mut self) {
        if self.window_paused.is_empty() {
            return;
        }
        let limit = self.config.max_uncommitted_per_partition / 2;
        let shrunk: Vec<PartitionKey> = {
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

    /// When the loop must look again even if nothing arrives: a held record falls due, a failed
    /// resume is retried (within a second).
    pub(crate) fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let system_now = SystemTime::now();
        let held = self
            .held
            .values()
            .map(|held| now + held.due.duration_since(system_now).unwrap_or_default());
        let resume_retry = (!self.resume_retries.is_empty()).then(|| now + Duration::from_secs(1));
        held.chain(resume_retry).min()
    }

    /// How long the group handler may stay away from its coordinator before the consumer is
    /// replaced.
    pub(crate) fn stuck_bound(&self) -> Duration {
        stuck_after(self.kafka.session_timeout())
    }

    /// After a consumer error: `Ok(Some(revoked))` when the consumer was fenced and has been
    /// replaced (the caller drops queued tasks of `revoked`), `Ok(None)` for an error to log and
    /// go on, `Err` for one that leaves the consumer unable to fetch for good (the process
    /// exits so its supervisor restarts it).
    pub(crate) fn after_consumer_error(
        &mut self,
        error: KafkaError,
    ) -> Result<Option<HashSet<PartitionKey>>> {
        if is_fenced_member(&error) {
            // A fenced static membership: a fresh consumer takes it back, within bounds.
            let instance = self.kafka.group_instance_id("sender").unwrap_or_default();
            self.rejoins
                .fenced(error, &self.config.group_id, &instance)
                .map_err(Error::Kafka)?;
            return self.replace_consumer().map(Some);
        }
        if dispatch_kafka::client::is_fatal(&error) {
            return Err(Error::Kafka(error));
        }
        warn!(%error, "consumer error");
        Ok(None)
    }

    /// Replaces the consumer when its group handler has been away from its coordinator past the
    /// bound; the revoked partitions as for [`Self::after_consumer_error`].
    pub(crate) fn check_group(&mut self) -> Result<Option<HashSet<PartitionKey>>> {
        match self.consumer.context().watch.stall() {
            Some(stall) if stall.duration >= self.stuck_bound() => {
                group_stuck(&self.config.group_id, &stall);
                self.replace_consumer().map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Replaces the consumer with a fresh one (same configuration, same `group.instance.id`)
    /// after librdkafka left it unable to fetch again — fenced, or its group handler away from
    /// its coordinator for good (see [`dispatch_kafka::group_health`]). Everything taken
    /// through the old consumer and not finished is forgotten as on a revoke: the fresh
    /// consumer's partitions start at their committed offsets, and attempts still running
    /// finish into nothing (at least once: their records are read and sent again).
    fn replace_consumer(&mut self) -> Result<HashSet<PartitionKey>> {
        let lost: Vec<PartitionKey> = {
            let mut shared = lock(&self.shared);
            let mut lost: Vec<PartitionKey> = shared
                .offsets
                .iter()
                .map(|(topic, partition, _)| (topic.to_owned(), partition))
                .collect();
            shared.offsets.revoke_all();
            shared.running.clear();
            lost.append(&mut shared.revoked);
            lost
        };
        let lost = self.forget(lost);
        let consumer = group_consumer(&self.kafka, &self.config, &self.shared, &self.topics)?;
        retire(std::mem::replace(&mut self.consumer, Arc::new(consumer)));
        Ok(lost)
    }

    /// Commits the stored offsets (shutdown, after the drain).
    pub(crate) async fn commit_finished(&self) {
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
