//! The subscriptions every role works from: an in-memory [`SubscriptionTable`] folded from the
//! compacted `dispatch.subscriptions` topic, read from the beginning and kept current.
//!
//! # Reading
//! The view reads the topic's single partition from its first offset with no consumer group:
//! every process needs every record, so partitions must not be shared out, and nothing is
//! committed because the table is rebuilt from the start on every start. librdkafka still wants a
//! `group.id` in its configuration; a fixed one is set and never joined (the partition is
//! assigned by hand). Only committed records are read (`isolation.level=read_committed`), so a
//! writer's aborted transaction never reaches a table.
//!
//! The reader is a dedicated thread polling a `BaseConsumer`, not a tokio task: `poll` blocks,
//! the fold runs under a `std::sync::RwLock`, and neither should occupy an async worker. A thread
//! also keeps the view independent of which runtime (if any) the caller uses; the tokio side is
//! only a `watch` channel the thread publishes its progress to, which needs no runtime to send.
//!
//! # Readiness and read-your-writes
//! [`SubscriptionView::start`] notes the partition's high watermark before reading: the view is
//! caught up once it has applied every record below it (or reached the end of the partition,
//! which also covers records below the watermark that are not visible: compacted, aborted, or
//! transaction markers). A process must not serve before [`SubscriptionView::wait_caught_up`]
//! returned: a half-read table would miss subscriptions.
//!
//! A writer learns the offset of its record ([`crate::subscription_writer::SubscriptionWriter`])
//! and [`SubscriptionView::wait_for_offset`] waits until the view applied it, answering what the
//! fold did with it — accepted, or rejected as stale because another write came first. The view
//! remembers the outcomes of the last [`RECENT_OUTCOMES`] records, which is far more than records
//! written while one request waits; an older offset answers [`Error::OutcomeUnknown`].
//!
//! # Bad records
//! A record whose key is not UTF-8 or whose value is not a protobuf `Subscription` is logged and
//! counted (`reason="undecodable"`), and the view moves on: one bad record must not stop every
//! role from starting. Records the fold refuses are counted by their rejection's reason.
//!
//! # Metrics
//! Gauges [`VIEW_SUBSCRIPTIONS`] and [`VIEW_LAG_RECORDS`] (high watermark − next offset, the
//! watermark taken from librdkafka's statistics every second), counter [`VIEW_REJECTED_TOTAL`]
//! by `reason`. A process is expected to run one view; several (as in tests) share the gauges.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use dispatch_core::subscriptions::{FoldOutcome, Rejection, SubscriptionTable};
use dispatch_proto::dispatch::v1::Subscription;
use dispatch_proto::prost::Message as _;
use dispatch_telemetry::names::{VIEW_LAG_RECORDS, VIEW_REJECTED_TOTAL, VIEW_SUBSCRIPTIONS};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::group_health::{BrokerWatch, renew_blind_reader, stuck_after};
use crate::topics::TopicNames;
use crate::{Error, KafkaConfig, Result};

/// How many recent records' outcomes [`SubscriptionView::wait_for_offset`] can report. At a few
/// hundred bytes each this is a few megabytes at most, and it covers every write made while a
/// request waits for its own.
pub const RECENT_OUTCOMES: usize = 10_000;

/// The only partition of `dispatch.subscriptions`.
const PARTITION: i32 = 0;
/// The longest a poll blocks: how late the reader notices a shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often librdkafka reports statistics, and so how fresh the lag gauge's watermark is.
const STATISTICS_INTERVAL_MS: &str = "1000";
/// Required by librdkafka's configuration, never joined: the partition is assigned by hand.
const UNUSED_GROUP_ID: &str = "dispatch-subscription-view";

/// What the reader thread publishes after every record.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// The offset after the last record applied (or passed, at the end of the partition).
    next_offset: i64,
    /// Every record below the high watermark seen at start was applied.
    caught_up: bool,
    /// The reader has exited; nothing will change any more.
    stopped: bool,
    /// The consumer's most recent error, for the timeout message.
    last_error: Option<String>,
}

/// State shared by the view's handle, its reader thread and the consumer's statistics callback.
#[derive(Debug)]
struct Shared {
    topic: String,
    table: RwLock<SubscriptionTable>,
    /// `(offset, outcome)` of the last [`RECENT_OUTCOMES`] records, oldest first; offsets only
    /// grow, so it is sorted.
    recent: Mutex<VecDeque<(i64, FoldOutcome)>>,
    stop: AtomicBool,
    /// For the lag gauge: the newest high watermark known, and the next offset to apply.
    high_watermark: AtomicI64,
    next_offset: AtomicI64,
}

impl Shared {
    fn new(topic: String, low_watermark: i64, high_watermark: i64) -> Self {
        Shared {
            topic,
            table: RwLock::new(SubscriptionTable::new()),
            recent: Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
            high_watermark: AtomicI64::new(high_watermark),
            next_offset: AtomicI64::new(low_watermark),
        }
    }

    /// Decodes, folds and remembers one record, and counts what happened.
    fn apply_record(&self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> FoldOutcome {
        let (outcome, size, subscription_id) = match decode(key, value) {
            Ok((key, value)) => {
                // The lock is held for the fold only, never across an await (there is none
                // here) nor while logging.
                let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
                let outcome = table.apply(&key, value);
                (outcome, table.len(), key)
            }
            Err(rejection) => {
                let size = self.read_table(SubscriptionTable::len);
                let key = key.map(String::from_utf8_lossy).unwrap_or_default();
                (FoldOutcome::Rejected(rejection), size, key.into_owned())
            }
        };
        match &outcome {
            FoldOutcome::Rejected(rejection) => {
                let reason = rejection.reason();
                metrics::counter!(VIEW_REJECTED_TOTAL, "reason" => reason).increment(1);
                warn!(topic = %self.topic, offset, subscription_id, reason, error = %rejection, "subscription record rejected");
            }
            outcome => {
                debug!(topic = %self.topic, offset, subscription_id, ?outcome, "subscription record applied");
            }
        }
        metrics::gauge!(VIEW_SUBSCRIPTIONS).set(size as f64);

        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() >= RECENT_OUTCOMES {
            recent.pop_front();
        }
        recent.push_back((offset, outcome.clone()));
        outcome
    }

    fn outcome_at(&self, offset: i64) -> Option<FoldOutcome> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .binary_search_by_key(&offset, |(offset, _)| *offset)
            .ok()
            .and_then(|index| recent.get(index))
            .map(|(_, outcome)| outcome.clone())
    }

    fn read_table<R>(&self, f: impl FnOnce(&SubscriptionTable) -> R) -> R {
        // A panic inside the fold poisons the lock; the reader has stopped by then (waiters are
        // told), and the table is still the best answer there is for readers.
        f(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set_next_offset(&self, next_offset: i64) {
        self.next_offset.store(next_offset, Ordering::Relaxed);
        self.record_lag();
    }

    fn record_lag(&self) {
        let lag =
            self.high_watermark.load(Ordering::Relaxed) - self.next_offset.load(Ordering::Relaxed);
        // The watermark is refreshed once a second, so the reader can be ahead of it.
        metrics::gauge!(VIEW_LAG_RECORDS).set(lag.max(0) as f64);
    }
}

/// A record's key and value → the fold's input, or why it cannot be read.
fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(String, Option<Subscription>), Rejection> {
    let undecodable = |error: String| Rejection::Undecodable { error };
    let key = key.ok_or_else(|| undecodable("the record has no key".to_owned()))?;
    let key = std::str::from_utf8(key)
        .map_err(|e| undecodable(format!("the key is not UTF-8: {e}")))?
        .to_owned();
    let value = value
        .map(Subscription::decode)
        .transpose()
        .map_err(|e| undecodable(format!("the value is not a protobuf Subscription: {e}")))?;
    Ok((key, value))
}

/// The consumer's context: takes the partition's high watermark from librdkafka's statistics,
/// so the lag gauge needs no requests of its own.
struct ViewContext {
    shared: Arc<Shared>,
    /// Whether the client still knows a broker (see [`renew_blind_reader`]).
    brokers: BrokerWatch,
}

impl ClientContext for ViewContext {
    /// The end of the partition is how the view learns it caught up, not a failure; librdkafka
    /// also reports it as a client-level error, which would otherwise be logged as one.
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!(reason, "subscription view reached the end of its partition");
        } else {
            tracing::error!(%error, reason, "librdkafka error in the subscription view");
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
        let high_watermark = statistics
            .topics
            .get(&self.shared.topic)
            .and_then(|topic| topic.partitions.get(&PARTITION))
            .map(|partition| partition.hi_offset);
        // librdkafka reports -1 until it has fetched once.
        if let Some(high_watermark) = high_watermark.filter(|offset| *offset >= 0) {
            self.shared
                .high_watermark
                .store(high_watermark, Ordering::Relaxed);
            self.shared.record_lag();
        }
    }
}

impl ConsumerContext for ViewContext {}

/// The in-memory subscriptions table, kept current from `dispatch.subscriptions` by a
/// background thread (see the module documentation). Share it behind an `Arc`; dropping it (or
/// [`SubscriptionView::shutdown`]) stops the thread.
pub struct SubscriptionView {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    target: i64,
}

impl fmt::Debug for SubscriptionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let progress = self.progress.borrow();
        f.debug_struct("SubscriptionView")
            .field("topic", &self.shared.topic)
            .field("target", &self.target)
            .field("next_offset", &progress.next_offset)
            .field("caught_up", &progress.caught_up)
            .field("stopped", &progress.stopped)
            .finish_non_exhaustive()
    }
}

impl SubscriptionView {
    /// Checks the topic (it must exist with exactly one partition), notes its high watermark
    /// as the catch-up target, and starts reading it from the beginning on a thread of its own.
    ///
    /// This blocks for two metadata round trips, each bounded by `request_timeout_ms`: call it
    /// while the process starts, or through `spawn_blocking`.
    pub fn start(config: &KafkaConfig) -> Result<Self> {
        let topic = TopicNames::new(config.topic_prefix.clone()).subscriptions();
        let timeout = config.request_timeout();

        // The context needs the shared state before the watermarks are known; they are filled
        // in below, before the reader starts.
        let shared = Arc::new(Shared::new(topic.clone(), 0, 0));
        let mut client_config = config.client_config();
        client_config
            .set("group.id", UNUSED_GROUP_ID)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            // The end of the partition is how the view knows it is caught up when the last
            // offsets below the target hold nothing it can see.
            .set("enable.partition.eof", "true")
            // If the log start moves past the reader, the earliest record left is next.
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        let consumer: BaseConsumer<ViewContext> = client_config
            .create_with_context(ViewContext {
                shared: Arc::clone(&shared),
                brokers: BrokerWatch::default(),
            })
            .map_err(Error::Client)?;

        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
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
            None | Some(0) => return Err(Error::TopicMissing { topic }),
            Some(1) => {}
            Some(partitions) => return Err(Error::SubscriptionPartitions { topic, partitions }),
        }
        // Right after a broker start or a topic creation the partition's leader may still be
        // settling; such answers are retried until the request timeout.
        let (low, high) = crate::client::retry_transient(timeout, "fetch watermarks", || {
            consumer.fetch_watermarks(&topic, PARTITION, timeout)
        })?;
        shared.high_watermark.store(high, Ordering::Relaxed);
        shared.set_next_offset(low);
        metrics::gauge!(VIEW_SUBSCRIPTIONS).set(0.0);

        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, PARTITION, Offset::Beginning)
            .map_err(|source| Error::Request {
                operation: "assign",
                source,
            })?;
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Request {
                operation: "assign",
                source,
            })?;

        let (progress_tx, progress) = watch::channel(Progress {
            next_offset: low,
            // An empty partition: nothing to wait for.
            caught_up: low >= high,
            ..Progress::default()
        });
        let reader = Reader {
            consumer,
            client_config,
            blind_bound: stuck_after(config.session_timeout()),
            shared: Arc::clone(&shared),
            target: high,
            started: Instant::now(),
        };
        info!(topic, low, high, "subscription view reading");
        thread::Builder::new()
            .name("subscription-view".to_owned())
            .spawn(move || {
                // Declared first, dropped last: `stopped` is published after the consumer
                // (inside `reader`) is closed, also if the fold panics.
                let progress = StoppedOnDrop(progress_tx);
                reader.run(&progress.0);
            })
            .map_err(Error::Thread)?;
        Ok(SubscriptionView {
            shared,
            progress,
            target: high,
        })
    }

    /// The topic this view reads.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The high watermark noted at start: the view is caught up once it applied everything below.
    pub fn caught_up_target(&self) -> i64 {
        self.target
    }

    /// The offset the view applies next: every record below it is in the table.
    pub fn next_offset(&self) -> i64 {
        self.progress.borrow().next_offset
    }

    /// Whether every record below the start's high watermark has been applied.
    pub fn is_caught_up(&self) -> bool {
        self.progress.borrow().caught_up
    }

    /// Waits until the view caught up ([`Error::ViewTimeout`] after `timeout`,
    /// [`Error::ViewStopped`] if the reader stopped before). A process is ready only after this.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let progress = self
            .wait_for(
                timeout,
                |progress| progress.caught_up,
                || format!("catch-up to offset {}", self.target),
            )
            .await?;
        if progress.caught_up {
            Ok(())
        } else {
            Err(Error::ViewStopped)
        }
    }

    /// Waits until the record at `offset` (as returned by the writer) was applied, and returns
    /// what the fold did with it. [`Error::OutcomeUnknown`] if the view passed the offset but
    /// holds no outcome for it (older than the last [`RECENT_OUTCOMES`] records, or no visible
    /// record there).
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> Result<FoldOutcome> {
        let progress = self
            .wait_for(
                timeout,
                |progress| progress.next_offset > offset,
                || format!("offset {offset}"),
            )
            .await?;
        if progress.next_offset <= offset {
            return Err(Error::ViewStopped);
        }
        self.shared
            .outcome_at(offset)
            .ok_or(Error::OutcomeUnknown { offset })
    }

    /// Waits until `reached` holds or the reader stopped, and returns the progress then.
    async fn wait_for(
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
            Ok(Err(_)) => Err(Error::ViewStopped),
            Err(_) => {
                let progress = self.progress.borrow().clone();
                Err(Error::ViewTimeout {
                    waiting_for: waiting_for(),
                    timeout,
                    next_offset: progress.next_offset,
                    last_error: progress.last_error,
                })
            }
        }
    }

    /// Runs `f` on the table under a read lock. Keep `f` short and never await inside it: the
    /// reader waits for the lock to apply the next record.
    pub fn read<R>(&self, f: impl FnOnce(&SubscriptionTable) -> R) -> R {
        self.shared.read_table(f)
    }

    /// Asks the reader thread to stop; it exits within one poll interval (100 ms), closing its
    /// consumer. Waiters then get [`Error::ViewStopped`]; the table stays readable as it was.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    /// Waits until the reader thread has exited (after [`SubscriptionView::shutdown`], or a
    /// failure).
    pub async fn stopped(&self) {
        let mut progress = self.progress.clone();
        // An error means the sender is gone, which also means the reader exited.
        let _ = progress.wait_for(|progress| progress.stopped).await;
    }
}

impl Drop for SubscriptionView {
    fn drop(&mut self) {
        // Not joined: that would block the dropping (possibly async) thread for up to a poll.
        self.shutdown();
    }
}

/// Publishes `stopped` when dropped, i.e. when the reader thread ends for any reason.
struct StoppedOnDrop(watch::Sender<Progress>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.send_modify(|progress| progress.stopped = true);
    }
}

/// The reader thread's state.
struct Reader {
    consumer: BaseConsumer<ViewContext>,
    /// What a replacement consumer is made from.
    client_config: ClientConfig,
    /// How long the consumer may know no broker before it is replaced.
    blind_bound: Duration,
    shared: Arc<Shared>,
    target: i64,
    started: Instant,
}

impl Reader {
    fn run(mut self, progress: &watch::Sender<Progress>) {
        let topic = self.shared.topic.clone();
        let topic = topic.as_str();
        while !self.shared.stop.load(Ordering::Relaxed) {
            match self.consumer.poll(POLL_INTERVAL) {
                // A consumer that knows no broker hands out nothing: looked at only then, not
                // per record.
                None => self.renew_if_blind(progress),
                Some(Ok(message)) => {
                    let offset = message.offset();
                    self.shared
                        .apply_record(offset, message.key(), message.payload());
                    self.advance(progress, offset + 1, false);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // At the end, the position may be past offsets that held nothing visible
                    // (transaction markers): move there, so waits on them end.
                    let position = self.position().unwrap_or(0);
                    self.advance(progress, position, true);
                }
                Some(Err(error)) => {
                    // Transient (a broker restart, a leader election): librdkafka retries on
                    // its own; the view reports it and keeps polling.
                    warn!(topic, %error, "subscription view: consumer error");
                    progress.send_modify(|progress| progress.last_error = Some(error.to_string()));
                    self.renew_if_blind(progress);
                }
            }
        }
        info!(topic, "subscription view stopped");
    }

    /// Replaces a consumer that has known no broker too long with one assigned where the view
    /// stands (see [`renew_blind_reader`]).
    fn renew_if_blind(&mut self, progress: &watch::Sender<Progress>) {
        let blind_for = self.consumer.context().brokers.blind_for();
        if blind_for.is_none_or(|blind_for| blind_for < self.blind_bound) {
            return;
        }
        let next_offset = progress.borrow().next_offset;
        let (client_config, shared) = (&self.client_config, &self.shared);
        renew_blind_reader(
            &mut self.consumer,
            blind_for,
            self.blind_bound,
            "reader:subscriptions",
            || {
                let consumer: BaseConsumer<ViewContext> =
                    client_config.create_with_context(ViewContext {
                        shared: Arc::clone(shared),
                        brokers: BrokerWatch::default(),
                    })?;
                let mut assignment = TopicPartitionList::new();
                assignment.add_partition_offset(
                    &shared.topic,
                    PARTITION,
                    Offset::Offset(next_offset),
                )?;
                consumer.assign(&assignment)?;
                Ok(consumer)
            },
        );
    }

    /// The consumer's position in the partition, if it has a concrete one.
    fn position(&self) -> Option<i64> {
        let positions = self.consumer.position().ok()?;
        let element = positions.find_partition(&self.shared.topic, PARTITION)?;
        match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    /// Publishes that everything below `next_offset` was applied (`at_end`: and that the
    /// partition has nothing more for now).
    fn advance(&self, progress: &watch::Sender<Progress>, next_offset: i64, at_end: bool) {
        let mut newly_caught_up = false;
        progress.send_if_modified(|progress| {
            let mut modified = false;
            if next_offset > progress.next_offset {
                progress.next_offset = next_offset;
                modified = true;
            }
            if !progress.caught_up && (at_end || progress.next_offset >= self.target) {
                progress.caught_up = true;
                newly_caught_up = true;
                modified = true;
            }
            modified
        });
        let next_offset = progress.borrow().next_offset;
        self.shared.set_next_offset(next_offset);
        if newly_caught_up {
            let subscriptions = self.shared.read_table(SubscriptionTable::len);
            info!(
                topic = %self.shared.topic,
                target = self.target,
                next_offset,
                subscriptions,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "subscription view caught up"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_recorder::TestRecorder;

    fn subscription(id: &str, version: u64, url: &str) -> Vec<u8> {
        Subscription {
            id: id.to_owned(),
            account_id: "acc_1".to_owned(),
            url: url.to_owned(),
            event_types: vec!["image.**".to_owned()],
            enabled: true,
            version,
            ..Subscription::default()
        }
        .encode_to_vec()
    }

    fn shared() -> Shared {
        Shared::new("t.dispatch.subscriptions".to_owned(), 0, 10)
    }

    #[test]
    fn records_are_decoded_folded_remembered_and_counted() {
        let recorder = TestRecorder::default();
        let shared = shared();
        metrics::with_local_recorder(&recorder, || {
            let v1 = subscription("sub_1", 1, "https://first");
            let v2a = subscription("sub_1", 2, "https://a");
            let v2b = subscription("sub_1", 2, "https://b");
            assert_eq!(
                shared.apply_record(0, Some(b"sub_1"), Some(&v1)),
                FoldOutcome::Created { version: 1 }
            );
            assert_eq!(
                shared.apply_record(1, Some(b"sub_1"), Some(&v2a)),
                FoldOutcome::Updated { version: 2 }
            );
            assert_eq!(
                shared.apply_record(2, Some(b"sub_1"), Some(&v2b)).reason(),
                Some("stale_version")
            );
            // Text is not a protobuf Subscription: `t` is field 14 with the invalid wire type 4.
            let garbage = shared.apply_record(3, Some(b"sub_2"), Some(b"this is not protobuf"));
            assert_eq!(garbage.reason(), Some("undecodable"), "{garbage:?}");
            let bad_key = shared.apply_record(4, Some(&[0xff, 0xfe]), Some(&v1));
            assert_eq!(bad_key.reason(), Some("undecodable"));
            assert_eq!(
                shared.apply_record(6, Some(b"sub_1"), None),
                FoldOutcome::Deleted
            );
        });
        assert_eq!(
            recorder.counter("dispatch_view_rejected_total{reason=stale_version}"),
            1
        );
        assert_eq!(
            recorder.counter("dispatch_view_rejected_total{reason=undecodable}"),
            2
        );
        assert_eq!(recorder.gauge("dispatch_view_subscriptions{}"), Some(0.0));
        assert_eq!(
            shared.outcome_at(1),
            Some(FoldOutcome::Updated { version: 2 })
        );
        assert_eq!(
            shared.outcome_at(2).as_ref().and_then(FoldOutcome::reason),
            Some("stale_version")
        );
        // No record at offset 5 (a gap left by compaction or a transaction marker).
        assert_eq!(shared.outcome_at(5), None);
        assert_eq!(shared.outcome_at(6), Some(FoldOutcome::Deleted));
        assert!(shared.read_table(SubscriptionTable::is_empty));
    }

    #[test]
    fn only_the_most_recent_outcomes_are_kept() {
        let shared = shared();
        let total = RECENT_OUTCOMES as i64 + 5;
        for offset in 0..total {
            shared.apply_record(offset, Some(b"sub_1"), None);
        }
        assert_eq!(shared.recent.lock().expect("lock").len(), RECENT_OUTCOMES);
        assert_eq!(shared.outcome_at(4), None);
        assert_eq!(shared.outcome_at(5), Some(FoldOutcome::Ignored));
        assert_eq!(shared.outcome_at(total - 1), Some(FoldOutcome::Ignored));
        assert_eq!(shared.outcome_at(total), None);
    }

    #[test]
    fn lag_is_the_watermark_minus_the_next_offset_never_negative() {
        let recorder = TestRecorder::default();
        let shared = shared();
        metrics::with_local_recorder(&recorder, || {
            shared.set_next_offset(4);
            assert_eq!(recorder.gauge("dispatch_view_lag_records{}"), Some(6.0));
            shared.set_next_offset(12);
            assert_eq!(recorder.gauge("dispatch_view_lag_records{}"), Some(0.0));
        });
    }

    #[test]
    fn decode_refuses_a_record_without_a_key() {
        let rejection = decode(None, Some(b"")).expect_err("no key");
        assert_eq!(rejection.reason(), "undecodable");
        // A null value is a tombstone, not an error.
        assert_eq!(
            decode(Some(b"sub_1"), None).expect("tombstone"),
            ("sub_1".to_owned(), None)
        );
    }
}
