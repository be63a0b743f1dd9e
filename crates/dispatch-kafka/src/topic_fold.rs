//! A reader thread that folds every partition of one topic into an in-memory value — the
//! subscriptions every role works from (`crate::subscription_view`), the admin API's delivery
//! history (`dispatch.attempts`) and dead letters (`dispatch.dlq`) — and the two ready-made
//! folds for the latter, [`AttemptFold`] and [`DeadLetterFold`].
//!
//! # Reading
//! The topic is read with no consumer group: every process needs every record, and nothing is
//! committed because the value is rebuilt on every start. Every partition that exists at start is assigned
//! by hand (partitions added later are not read until a restart); a fixed `group.id` satisfies
//! librdkafka and is never joined. Only committed records are read
//! (`isolation.level=read_committed`). A dedicated thread polls a `BaseConsumer` and applies
//! each record under a `std::sync::RwLock`; the tokio side is a `watch` channel of progress. A
//! thread rather than a tokio task: `poll` blocks, and neither it nor the fold should occupy an
//! async worker; the `watch` channel needs no runtime to send, so the fold works under any
//! runtime (or none).
//!
//! A consumer that has known no broker for the stuck bound (librdkafka#5301) is replaced by a
//! fresh one assigned where the fold stands (`crate::group_health::renew_blind_reader`).
//!
//! [`StartAt::Since`] starts each partition at the first record whose timestamp is within the
//! window (`offsets_for_times`); a partition with nothing that new starts at its end. A log
//! kept 7 days can thus be folded from the last hour only, at a fraction of the start-up time.
//!
//! # Readiness and read-your-writes
//! [`TopicFold::start`] notes every partition's high watermark; the fold is caught up once each
//! partition has been applied up to it (or its end was reached, which also covers offsets
//! holding nothing visible: aborted records, transaction markers, compacted records).
//! [`TopicFold::wait_for`] waits until a given record (its partition and offset, as a producer
//! learned them) has been applied.
//!
//! # Bad records
//! What a record means is the fold's business: [`RecordFold::apply`] cannot fail. The
//! ready-made folds log and count a record they cannot read
//! ([`FOLD_RECORDS_INVALID_TOTAL`]) and go on; one bad record must not stop the reader.
//!
//! # Metrics
//! Every fold's lag per partition on `dispatch_kafka_consumer_lag_records{group="reader:<topic>"}`
//! (from librdkafka's statistics); a fold started with [`FoldOptions::lag_gauge`] also keeps its
//! total lag on a gauge of its own, fresh after every record.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatch_core::dead_letters::DeadLetterTable;
use dispatch_core::history::DeliveryHistory;
use dispatch_proto::dispatch::v1::{AttemptRecord, DeadLetter};
use dispatch_proto::prost::Message as _;
use dispatch_telemetry::names::{
    FOLD_ENTRIES, FOLD_ENTRIES_EVICTED_TOTAL, FOLD_RECORDS_INVALID_TOTAL,
};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::group_health::{BrokerWatch, renew_blind_reader, stuck_after};
use crate::{Error, KafkaConfig, Result};

/// The longest a poll blocks: how late the reader notices a shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Required by librdkafka's configuration, never joined: partitions are assigned by hand.
const UNUSED_GROUP_ID: &str = "dispatch-topic-fold";
/// `statistics.interval.ms` of a fold with a lag gauge of its own: how fresh its watermark is.
const LAG_GAUGE_STATISTICS_INTERVAL_MS: &str = "1000";

/// A value built from the records of a topic, one record at a time, in each partition's order
/// (records of different partitions interleave in no particular order).
pub trait RecordFold: Send + Sync + 'static {
    /// Folds the record at `offset` of `partition`. `payload` is `None` for a tombstone.
    fn apply(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>);
}

/// What a fold reports besides its value; [`TopicFold::start`] takes the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldOptions {
    /// A gauge (no labels) set to the fold's total lag — records below the partitions' high
    /// watermarks not applied yet — after every record, and whenever librdkafka's statistics
    /// (then every second) bring a newer watermark. A process is expected to run one fold per
    /// such gauge; several (as in tests) share it.
    pub lag_gauge: Option<&'static str>,
}

/// Where the reader starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first record still in the log.
    Beginning,
    /// The first record with a timestamp no older than this long ago; a partition with none
    /// starts at its end.
    Since(Duration),
}

/// What the reader thread publishes after every record.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Per partition (the index): the offset after the last record applied or passed.
    next_offsets: Vec<i64>,
    /// Per partition: everything below the start's high watermark was applied.
    caught_up: Vec<bool>,
    /// Every partition is caught up.
    all_caught_up: bool,
    /// The reader has exited; nothing will change any more.
    stopped: bool,
    /// The consumer's most recent error, for the timeout message.
    last_error: Option<String>,
}

/// State shared by the handle and the reader thread.
struct Shared<F> {
    topic: String,
    fold: RwLock<F>,
    stop: AtomicBool,
}

/// A fold's total lag on a gauge of its own ([`FoldOptions::lag_gauge`]).
#[derive(Debug)]
struct LagGauge {
    name: &'static str,
    /// Per partition: the newest high watermark known, and the next offset to apply.
    partitions: Mutex<Vec<(i64, i64)>>,
}

impl LagGauge {
    fn new(name: &'static str) -> Self {
        LagGauge {
            name,
            partitions: Mutex::new(Vec::new()),
        }
    }

    /// Sets `partition`'s high watermark and/or next offset, and the gauge.
    fn update(&self, partition: i32, high_watermark: Option<i64>, next_offset: Option<i64>) {
        let Ok(index) = usize::try_from(partition) else {
            return;
        };
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if partitions.len() <= index {
            partitions.resize(index + 1, (0, 0));
        }
        let (high, next) = &mut partitions[index];
        *high = high_watermark.unwrap_or(*high);
        *next = next_offset.unwrap_or(*next);
        // The watermark is refreshed with the statistics only, so the reader can be ahead.
        let lag: i64 = partitions
            .iter()
            .map(|(high, next)| (high - next).max(0))
            .sum();
        metrics::gauge!(self.name).set(lag as f64);
    }
}

/// The consumer's context: keeps the end of a partition (how the reader learns it caught up)
/// out of the error log.
struct FoldContext {
    topic: String,
    /// Removed from the lag gauge's topic label.
    topic_prefix: String,
    /// The lag gauge's `group` label: a fold joins no group, so `reader:<topic without prefix>`.
    lag_group: String,
    /// Whether the client still knows a broker (see [`renew_blind_reader`]).
    brokers: BrokerWatch,
    /// The fold's own lag gauge, if it has one.
    lag: Option<Arc<LagGauge>>,
}

impl FoldContext {
    /// The context of a consumer replacing this one.
    fn renewed(&self) -> Self {
        FoldContext {
            topic: self.topic.clone(),
            topic_prefix: self.topic_prefix.clone(),
            lag_group: self.lag_group.clone(),
            brokers: BrokerWatch::default(),
            lag: self.lag.clone(),
        }
    }
}

impl ClientContext for FoldContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            debug!(topic = %self.topic, reason, "topic fold reached the end of a partition");
        } else {
            tracing::error!(topic = %self.topic, %error, reason, "librdkafka error in a topic fold");
        }
    }

    /// How far the fold is behind its topic, on the same gauge as the roles' consumers.
    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
        crate::lag::record_consumer_lag(
            &self.lag_group,
            &self.topic_prefix,
            crate::lag::LagBasis::Position,
            &statistics,
        );
        if let Some(lag) = &self.lag
            && let Some(topic) = statistics.topics.get(&self.topic)
        {
            for (partition, stats) in &topic.partitions {
                // librdkafka reports -1 until it has fetched once; partition -1 is its own.
                if *partition >= 0 && stats.hi_offset >= 0 {
                    lag.update(*partition, Some(stats.hi_offset), None);
                }
            }
        }
    }
}

impl ConsumerContext for FoldContext {}

/// A value folded from every partition of one topic by a background thread (see the module
/// documentation). Share it behind an `Arc`; dropping it (or [`TopicFold::shutdown`]) stops the
/// thread.
pub struct TopicFold<F: RecordFold> {
    shared: Arc<Shared<F>>,
    progress: watch::Receiver<Progress>,
    /// Per partition: the high watermark noted at start.
    targets: Vec<i64>,
}

impl<F: RecordFold> fmt::Debug for TopicFold<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let progress = self.progress.borrow();
        f.debug_struct("TopicFold")
            .field("topic", &self.shared.topic)
            .field("targets", &self.targets)
            .field("next_offsets", &progress.next_offsets)
            .field("caught_up", &progress.all_caught_up)
            .field("stopped", &progress.stopped)
            .finish_non_exhaustive()
    }
}

impl<F: RecordFold> TopicFold<F> {
    /// Checks that `topic` (the full name, prefix included) exists, notes each partition's high
    /// watermark as its catch-up target, finds where to start, and starts folding every
    /// partition into `fold` on a thread of its own.
    ///
    /// This blocks for a few metadata round trips, each bounded by `request_timeout_ms`: call it
    /// while the process starts, or through `spawn_blocking`.
    pub fn start(config: &KafkaConfig, topic: &str, start_at: StartAt, fold: F) -> Result<Self> {
        Self::start_with(config, topic, start_at, fold, FoldOptions::default())
    }

    /// As [`TopicFold::start`], reporting as `options` say.
    pub fn start_with(
        config: &KafkaConfig,
        topic: &str,
        start_at: StartAt,
        fold: F,
        options: FoldOptions,
    ) -> Result<Self> {
        let timeout = config.request_timeout();
        let lag = options.lag_gauge.map(|name| Arc::new(LagGauge::new(name)));
        let mut client_config = config.client_config();
        client_config
            .set("group.id", UNUSED_GROUP_ID)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            // The end of a partition is how the reader knows it is caught up when the last
            // offsets below the target hold nothing it can see.
            .set("enable.partition.eof", "true")
            // If retention moves the log start past the reader, the earliest record left is next.
            .set("auto.offset.reset", "earliest")
            .set(
                "statistics.interval.ms",
                match lag {
                    Some(_) => LAG_GAUGE_STATISTICS_INTERVAL_MS,
                    None => crate::lag::statistics_interval(config),
                },
            );
        let unprefixed = topic.strip_prefix(&config.topic_prefix).unwrap_or(topic);
        let consumer: BaseConsumer<FoldContext> = client_config
            .create_with_context(FoldContext {
                topic: topic.to_owned(),
                topic_prefix: config.topic_prefix.clone(),
                lag_group: format!("reader:{unprefixed}"),
                brokers: BrokerWatch::default(),
                lag: lag.clone(),
            })
            .map_err(Error::Client)?;

        let partitions = partition_count(&consumer, topic, timeout)?;
        let mut watermarks = Vec::with_capacity(partitions);
        for partition in 0..partitions as i32 {
            let pair = crate::client::retry_transient(timeout, "fetch watermarks", || {
                consumer.fetch_watermarks(topic, partition, timeout)
            })?;
            watermarks.push(pair);
        }
        let starts = match start_at {
            StartAt::Beginning => watermarks.iter().map(|(low, _)| *low).collect(),
            StartAt::Since(window) => starts_since(&consumer, topic, window, &watermarks, timeout)?,
        };

        let mut assignment = TopicPartitionList::new();
        for (partition, start) in starts.iter().enumerate() {
            assignment
                .add_partition_offset(topic, partition as i32, Offset::Offset(*start))
                .map_err(|source| Error::Request {
                    operation: "assign",
                    source,
                })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Request {
                operation: "assign",
                source,
            })?;

        let targets: Vec<i64> = watermarks.iter().map(|(_, high)| *high).collect();
        if let Some(lag) = &lag {
            for (partition, (target, start)) in targets.iter().zip(&starts).enumerate() {
                lag.update(partition as i32, Some(*target), Some(*start));
            }
        }
        let caught_up: Vec<bool> = starts
            .iter()
            .zip(&targets)
            .map(|(start, target)| start >= target)
            .collect();
        let (progress_tx, progress) = watch::channel(Progress {
            next_offsets: starts.clone(),
            all_caught_up: caught_up.iter().all(|c| *c),
            caught_up,
            ..Progress::default()
        });
        let shared = Arc::new(Shared {
            topic: topic.to_owned(),
            fold: RwLock::new(fold),
            stop: AtomicBool::new(false),
        });
        let reader = Reader {
            consumer,
            client_config,
            blind_bound: stuck_after(config.session_timeout()),
            shared: Arc::clone(&shared),
            targets: targets.clone(),
            lag,
            started: Instant::now(),
        };
        info!(topic, ?start_at, ?starts, ?targets, "topic fold reading");
        thread::Builder::new()
            .name("topic-fold".to_owned())
            .spawn(move || {
                // Declared first, dropped last: `stopped` is published after the consumer
                // (inside `reader`) is closed, also if the fold panics.
                let progress = StoppedOnDrop(progress_tx);
                reader.run(&progress.0);
            })
            .map_err(Error::Thread)?;
        Ok(TopicFold {
            shared,
            progress,
            targets,
        })
    }

    /// The topic folded.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The partitions read: `0..partitions()`.
    pub fn partitions(&self) -> i32 {
        self.targets.len() as i32
    }

    /// Per partition: the high watermark noted at start, the fold's catch-up target.
    pub fn caught_up_targets(&self) -> &[i64] {
        &self.targets
    }

    /// Per partition: the offset the fold applies next; every record below it was applied.
    pub fn next_offsets(&self) -> Vec<i64> {
        self.progress.borrow().next_offsets.clone()
    }

    /// Whether every partition has been applied up to its high watermark noted at start.
    pub fn is_caught_up(&self) -> bool {
        self.progress.borrow().all_caught_up
    }

    /// Waits until the fold caught up ([`Error::FoldTimeout`] after `timeout`,
    /// [`Error::FoldStopped`] if the reader stopped first). Serve reads only after this.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let progress = self
            .wait_until(
                timeout,
                |progress| progress.all_caught_up,
                || format!("catch-up to high watermarks {:?}", self.targets),
            )
            .await?;
        if progress.all_caught_up {
            Ok(())
        } else {
            Err(self.stopped_error())
        }
    }

    /// Waits until the record at `offset` of `partition` (as a producer learned them) has been
    /// applied — or passed, if nothing visible is there. [`Error::UnknownPartition`] for a
    /// partition this fold does not read.
    pub async fn wait_for(&self, partition: i32, offset: i64, timeout: Duration) -> Result<()> {
        let index = usize::try_from(partition)
            .ok()
            .filter(|index| *index < self.targets.len())
            .ok_or_else(|| Error::UnknownPartition {
                topic: self.shared.topic.clone(),
                partition,
            })?;
        let applied = |progress: &Progress| {
            progress
                .next_offsets
                .get(index)
                .is_some_and(|next| *next > offset)
        };
        let progress = self
            .wait_until(timeout, applied, || {
                format!("offset {offset} of partition {partition}")
            })
            .await?;
        if applied(&progress) {
            Ok(())
        } else {
            Err(self.stopped_error())
        }
    }

    /// Waits until `reached` holds or the reader stopped, and returns the progress then.
    async fn wait_until(
        &self,
        timeout: Duration,
        reached: impl Fn(&Progress) -> bool,
        waiting_for: impl FnOnce() -> String,
    ) -> Result<Progress> {
        let mut progress = self.progress.clone();
        let waited = tokio::time::timeout(
            timeout,
            progress.wait_for(|progress| reached(progress) || progress.stopped),
        )
        .await;
        match waited {
            // Cloned at once: the borrow must not outlive this statement.
            Ok(Ok(progress)) => Ok(progress.clone()),
            // The sender is gone only once the reader thread exited.
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => {
                let progress = self.progress.borrow().clone();
                Err(Error::FoldTimeout {
                    topic: self.shared.topic.clone(),
                    waiting_for: waiting_for(),
                    timeout,
                    next_offsets: progress.next_offsets,
                    last_error: progress.last_error,
                })
            }
        }
    }

    fn stopped_error(&self) -> Error {
        Error::FoldStopped {
            topic: self.shared.topic.clone(),
        }
    }

    /// Runs `f` on the value under a read lock. Keep `f` short and never await inside it: the
    /// reader waits for the lock to apply the next record.
    pub fn read<R>(&self, f: impl FnOnce(&F) -> R) -> R {
        // A panic inside the fold poisons the lock; the reader has stopped by then (waiters are
        // told), and the value is still the best answer there is.
        f(&self
            .shared
            .fold
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the value under the write lock, for what the caller knows before the log
    /// tells it (a delivery it just queued). The same rules as [`TopicFold::read`] apply.
    pub fn write<R>(&self, f: impl FnOnce(&mut F) -> R) -> R {
        f(&mut self
            .shared
            .fold
            .write()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// Asks the reader thread to stop; it exits within one poll interval (100 ms), closing its
    /// consumer. Waiters then get [`Error::FoldStopped`]; the value stays readable as it was.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    /// Waits until the reader thread has exited (after [`TopicFold::shutdown`], or a failure).
    pub async fn stopped(&self) {
        let mut progress = self.progress.clone();
        // An error means the sender is gone, which also means the reader exited.
        let _ = progress.wait_for(|progress| progress.stopped).await;
    }
}

impl<F: RecordFold> Drop for TopicFold<F> {
    fn drop(&mut self) {
        // Not joined: that would block the dropping (possibly async) thread for up to a poll.
        self.shutdown();
    }
}

/// The number of partitions of `topic`; [`Error::TopicMissing`] if it does not exist.
fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| Error::Request {
            operation: "metadata request",
            source,
        })?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len());
    match partitions {
        None | Some(0) => Err(Error::TopicMissing {
            topic: topic.to_owned(),
        }),
        Some(partitions) => Ok(partitions),
    }
}

/// Per partition, the first offset whose record is no older than `window`, or the high
/// watermark where there is none.
fn starts_since<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    window: Duration,
    watermarks: &[(i64, i64)],
    timeout: Duration,
) -> Result<Vec<i64>> {
    let since = SystemTime::now()
        .checked_sub(window)
        .and_then(|since| since.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    let mut query = TopicPartitionList::new();
    for partition in 0..watermarks.len() as i32 {
        query
            .add_partition_offset(topic, partition, Offset::Offset(since))
            .map_err(|source| Error::Request {
                operation: "offsets for times",
                source,
            })?;
    }
    // Per-partition errors are checked inside the retry: a partition whose leader is still
    // settling answers with one.
    crate::client::retry_transient(timeout, "offsets for times", || {
        let answer = consumer.offsets_for_times(query.clone(), timeout)?;
        let mut starts = Vec::with_capacity(watermarks.len());
        for (partition, (low, high)) in watermarks.iter().enumerate() {
            let element = answer
                .find_partition(topic, partition as i32)
                .ok_or(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition))?;
            element.error()?;
            let start = match element.offset() {
                // Kept within the watermarks noted: the answer may follow a retention run
                // that moved the log start.
                Offset::Offset(offset) => offset.max(*low).min(*high),
                // No record that new: start at the end noted, so nothing after it is missed.
                _ => *high,
            };
            starts.push(start);
        }
        Ok(starts)
    })
}

/// Publishes `stopped` when dropped, i.e. when the reader thread ends for any reason.
struct StoppedOnDrop(watch::Sender<Progress>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.send_modify(|progress| progress.stopped = true);
    }
}

/// The reader thread's state.
struct Reader<F> {
    consumer: BaseConsumer<FoldContext>,
    /// What a replacement consumer is made from.
    client_config: ClientConfig,
    /// How long the consumer may know no broker before it is replaced.
    blind_bound: Duration,
    shared: Arc<Shared<F>>,
    targets: Vec<i64>,
    /// The fold's own lag gauge, if it has one.
    lag: Option<Arc<LagGauge>>,
    started: Instant,
}

impl<F: RecordFold> Reader<F> {
    fn run(mut self, progress: &watch::Sender<Progress>) {
        let topic = self.shared.topic.clone();
        let topic = topic.as_str();
        while !self.shared.stop.load(Ordering::Relaxed) {
            match self.consumer.poll(POLL_INTERVAL) {
                // A consumer that knows no broker hands out nothing: looked at only then, not
                // per record.
                None => self.renew_if_blind(progress),
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    {
                        // Held for the fold only, never while publishing or logging.
                        let mut fold = self
                            .shared
                            .fold
                            .write()
                            .unwrap_or_else(PoisonError::into_inner);
                        fold.apply(partition, offset, message.key(), message.payload());
                    }
                    self.advance(progress, partition, offset + 1, false);
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    // At the end, the position may be past offsets that held nothing visible
                    // (transaction markers): move there, so waits on them end.
                    if let Some(position) = self.position(partition) {
                        self.advance(progress, partition, position, true);
                    }
                }
                Some(Err(error)) => {
                    // Transient (a broker restart, a leader election): librdkafka retries on
                    // its own; the reader reports it and keeps polling.
                    warn!(topic, %error, "topic fold: consumer error");
                    progress.send_modify(|progress| progress.last_error = Some(error.to_string()));
                    self.renew_if_blind(progress);
                }
            }
        }
        info!(topic, "topic fold stopped");
    }

    /// Replaces a consumer that has known no broker too long with one assigned where the fold
    /// stands (see [`renew_blind_reader`]).
    fn renew_if_blind(&mut self, progress: &watch::Sender<Progress>) {
        let blind_for = self.consumer.context().brokers.blind_for();
        if blind_for.is_none_or(|blind_for| blind_for < self.blind_bound) {
            return;
        }
        let context = self.consumer.context().renewed();
        let reader = context.lag_group.clone();
        let next_offsets = progress.borrow().next_offsets.clone();
        let (client_config, topic) = (&self.client_config, &self.shared.topic);
        renew_blind_reader(
            &mut self.consumer,
            blind_for,
            self.blind_bound,
            &reader,
            || {
                let consumer: BaseConsumer<FoldContext> =
                    client_config.create_with_context(context)?;
                let mut assignment = TopicPartitionList::new();
                for (partition, next) in next_offsets.iter().enumerate() {
                    assignment.add_partition_offset(
                        topic,
                        partition as i32,
                        Offset::Offset(*next),
                    )?;
                }
                consumer.assign(&assignment)?;
                Ok(consumer)
            },
        );
    }

    /// The consumer's position in `partition`, if it has a concrete one.
    fn position(&self, partition: i32) -> Option<i64> {
        let positions = self.consumer.position().ok()?;
        let element = positions.find_partition(&self.shared.topic, partition)?;
        match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    /// Publishes that everything below `next_offset` of `partition` was applied (`at_end`: and
    /// that the partition has nothing more for now).
    fn advance(
        &self,
        progress: &watch::Sender<Progress>,
        partition: i32,
        next_offset: i64,
        at_end: bool,
    ) {
        let Some(index) = usize::try_from(partition)
            .ok()
            .filter(|index| *index < self.targets.len())
        else {
            return;
        };
        let target = self.targets[index];
        let mut newly_caught_up = false;
        progress.send_if_modified(|progress| {
            let mut modified = false;
            if let Some(next) = progress.next_offsets.get_mut(index)
                && next_offset > *next
            {
                *next = next_offset;
                modified = true;
            }
            let reached = at_end || next_offset >= target;
            if let Some(caught_up) = progress.caught_up.get_mut(index)
                && !*caught_up
                && reached
            {
                *caught_up = true;
                modified = true;
                if !progress.all_caught_up && progress.caught_up.iter().all(|c| *c) {
                    progress.all_caught_up = true;
                    newly_caught_up = true;
                }
            }
            modified
        });
        if let Some(lag) = &self.lag {
            let next_offset = progress.borrow().next_offsets[index];
            lag.update(partition, None, Some(next_offset));
        }
        if newly_caught_up {
            info!(
                topic = %self.shared.topic,
                targets = ?self.targets,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "topic fold caught up"
            );
        }
    }
}

/// Logs and counts a record a fold cannot use. `reason` is `undecodable` (not the record the
/// topic carries) or `incomplete` (decoded, but without what identifies it).
fn invalid_record(
    fold: &'static str,
    reason: &'static str,
    partition: i32,
    offset: i64,
    error: &str,
) {
    metrics::counter!(FOLD_RECORDS_INVALID_TOTAL, "fold" => fold, "reason" => reason).increment(1);
    warn!(
        fold,
        reason, partition, offset, error, "record skipped by a topic fold"
    );
}

/// Publishes the size of a fold and counts what its bound evicted since the last record.
fn record_size(fold: &'static str, entries: usize, evicted_before: u64, evicted_after: u64) {
    metrics::gauge!(FOLD_ENTRIES, "fold" => fold).set(entries as f64);
    if evicted_after > evicted_before {
        metrics::counter!(FOLD_ENTRIES_EVICTED_TOTAL, "fold" => fold)
            .increment(evicted_after - evicted_before);
    }
}

/// `dispatch.attempts` (value `AttemptRecord`, key = subscription id) folded into a
/// [`DeliveryHistory`]. Metrics are labelled `fold="attempts"`.
#[derive(Debug)]
pub struct AttemptFold(pub DeliveryHistory);

impl AttemptFold {
    /// The metrics label of this fold.
    pub const LABEL: &'static str = "attempts";
}

impl RecordFold for AttemptFold {
    fn apply(&mut self, partition: i32, offset: i64, _key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(payload) = payload else {
            invalid_record(
                Self::LABEL,
                "incomplete",
                partition,
                offset,
                "the record has no value",
            );
            return;
        };
        let record = match AttemptRecord::decode(payload) {
            Ok(record) => record,
            Err(error) => {
                let error = format!("not a protobuf AttemptRecord: {error}");
                invalid_record(Self::LABEL, "undecodable", partition, offset, &error);
                return;
            }
        };
        if record.delivery_id.is_empty() {
            invalid_record(
                Self::LABEL,
                "incomplete",
                partition,
                offset,
                "the record has no delivery id",
            );
            return;
        }
        let evicted = self.0.evicted_total();
        self.0.apply(record);
        record_size(Self::LABEL, self.0.len(), evicted, self.0.evicted_total());
    }
}

/// `dispatch.dlq` (key = delivery id, value `DeadLetter`, tombstone = replayed or discarded)
/// folded into a [`DeadLetterTable`]. Metrics are labelled `fold="dead_letters"`.
#[derive(Debug)]
pub struct DeadLetterFold(pub DeadLetterTable);

impl DeadLetterFold {
    /// The metrics label of this fold.
    pub const LABEL: &'static str = "dead_letters";
}

impl RecordFold for DeadLetterFold {
    fn apply(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(delivery_id) = key.and_then(|key| std::str::from_utf8(key).ok()) else {
            invalid_record(
                Self::LABEL,
                "undecodable",
                partition,
                offset,
                "the key is missing or not UTF-8",
            );
            return;
        };
        let value = match payload.map(DeadLetter::decode).transpose() {
            Ok(value) => value,
            Err(error) => {
                // The entry (if any) is left as it was: a broken record is no reason to forget
                // a dead letter that can still be replayed.
                let error = format!("not a protobuf DeadLetter: {error}");
                invalid_record(Self::LABEL, "undecodable", partition, offset, &error);
                return;
            }
        };
        if value.as_ref().is_some_and(|dead| dead.task.is_none()) {
            // Applied all the same: as the key's latest value it removes the entry, as
            // compaction will for every later reader.
            invalid_record(
                Self::LABEL,
                "incomplete",
                partition,
                offset,
                "the dead letter has no task",
            );
        }
        let evicted = self.0.evicted_total();
        self.0.apply(delivery_id, value);
        record_size(Self::LABEL, self.0.len(), evicted, self.0.evicted_total());
    }
}

#[cfg(test)]
mod tests {
    use dispatch_core::dead_letters::DeadLetterFilter;
    use dispatch_core::history::DeliveryState;
    use dispatch_proto::dispatch::v1::next_action::{Action, Done};
    use dispatch_proto::dispatch::v1::{AttemptOutcome, DeliveryTask, NextAction};

    use super::*;
    use crate::test_recorder::TestRecorder;

    fn attempt(delivery: &str, attempt: u32) -> Vec<u8> {
        AttemptRecord {
            delivery_id: delivery.into(),
            event_id: "evt_1".into(),
            subscription_id: "sub_1".into(),
            attempt,
            outcome: AttemptOutcome::Success as i32,
            next_action: Some(NextAction {
                action: Some(Action::Done(Done {})),
            }),
            ..AttemptRecord::default()
        }
        .encode_to_vec()
    }

    fn dead_letter(delivery: &str, with_task: bool) -> Vec<u8> {
        DeadLetter {
            task: with_task.then(|| DeliveryTask {
                delivery_id: delivery.into(),
                account_id: "acc_1".into(),
                ..DeliveryTask::default()
            }),
            reason: "retries exhausted".into(),
            ..DeadLetter::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn the_attempt_fold_decodes_counts_garbage_and_carries_on() {
        let recorder = TestRecorder::default();
        let mut fold = AttemptFold(DeliveryHistory::new(1));
        metrics::with_local_recorder(&recorder, || {
            fold.apply(0, 0, Some(b"sub_1"), Some(&attempt("dlv_1", 1)));
            // `t` is field 14 with the invalid wire type 4.
            fold.apply(0, 1, Some(b"sub_1"), Some(b"this is not protobuf"));
            fold.apply(0, 2, Some(b"sub_1"), None);
            fold.apply(
                0,
                3,
                Some(b"sub_1"),
                Some(&AttemptRecord::default().encode_to_vec()),
            );
            fold.apply(1, 0, Some(b"sub_1"), Some(&attempt("dlv_2", 1)));
        });
        assert_eq!(
            recorder
                .counter("dispatch_fold_records_invalid_total{fold=attempts,reason=undecodable}"),
            1
        );
        assert_eq!(
            recorder
                .counter("dispatch_fold_records_invalid_total{fold=attempts,reason=incomplete}"),
            2
        );
        assert_eq!(
            recorder.counter("dispatch_fold_entries_evicted_total{fold=attempts}"),
            1
        );
        assert_eq!(
            recorder.gauge("dispatch_fold_entries{fold=attempts}"),
            Some(1.0)
        );
        let status = fold
            .0
            .delivery("dlv_2")
            .expect("the record after the garbage");
        assert_eq!(status.state, DeliveryState::Succeeded);
    }

    #[test]
    fn the_dead_letter_fold_applies_values_and_tombstones_by_key() {
        let recorder = TestRecorder::default();
        let mut fold = DeadLetterFold(DeadLetterTable::new(10));
        metrics::with_local_recorder(&recorder, || {
            fold.apply(0, 0, Some(b"dlv_1"), Some(&dead_letter("dlv_1", true)));
            fold.apply(0, 1, Some(b"dlv_2"), Some(&dead_letter("dlv_2", true)));
            fold.apply(0, 2, Some(b"dlv_3"), Some(&dead_letter("dlv_3", true)));
            fold.apply(0, 3, Some(b"dlv_1"), None);
            // Garbage leaves dlv_2 alone; a letter without a task removes dlv_3.
            fold.apply(0, 4, Some(b"dlv_2"), Some(b"this is not protobuf"));
            fold.apply(0, 5, Some(b"dlv_3"), Some(&dead_letter("dlv_3", false)));
            fold.apply(0, 6, None, None);
            fold.apply(0, 7, Some(&[0xff]), None);
        });
        assert!(fold.0.get("dlv_1").is_none());
        assert!(fold.0.get("dlv_2").is_some());
        assert!(fold.0.get("dlv_3").is_none());
        assert_eq!(fold.0.list(&DeadLetterFilter::default(), 10).len(), 1);
        assert_eq!(
            recorder.counter(
                "dispatch_fold_records_invalid_total{fold=dead_letters,reason=undecodable}"
            ),
            3
        );
        assert_eq!(
            recorder.counter(
                "dispatch_fold_records_invalid_total{fold=dead_letters,reason=incomplete}"
            ),
            1
        );
        assert_eq!(
            recorder.gauge("dispatch_fold_entries{fold=dead_letters}"),
            Some(1.0)
        );
    }

    #[test]
    fn the_lag_gauge_is_the_watermarks_minus_the_next_offsets_never_negative() {
        let recorder = TestRecorder::default();
        let lag = LagGauge::new("dispatch_view_lag_records");
        metrics::with_local_recorder(&recorder, || {
            lag.update(0, Some(10), Some(0));
            lag.update(0, None, Some(4));
            assert_eq!(recorder.gauge("dispatch_view_lag_records{}"), Some(6.0));
            lag.update(0, None, Some(12));
            assert_eq!(recorder.gauge("dispatch_view_lag_records{}"), Some(0.0));
            // Partitions add up; a newer watermark from the statistics counts at once.
            lag.update(1, Some(5), Some(2));
            assert_eq!(recorder.gauge("dispatch_view_lag_records{}"), Some(3.0));
            lag.update(0, Some(20), None);
            assert_eq!(recorder.gauge("dispatch_view_lag_records{}"), Some(11.0));
        });
    }

    #[test]
    fn a_topic_fold_is_send_and_sync() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<TopicFold<AttemptFold>>();
        shareable::<TopicFold<DeadLetterFold>>();
    }
}
