//! The fan-out loop: read domain events in consumer group `dispatch-fanout`, and in one Kafka
//! transaction per batch produce every delivery task and every quarantined record together with
//! the input offsets. A batch is either entirely in Kafka (tasks visible to `read_committed`
//! readers, offsets committed) or not at all, so a crash at any point yields each
//! (event, subscription) pair exactly once.
//!
//! [`Fanout::run`] runs the loop on a dedicated OS thread: every transactional librdkafka call
//! blocks (a commit waits for the brokers), and blocking belongs off the async workers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::client::is_fatal;
use dispatch_kafka::group_health::{
    BrokerWatch, GroupWatch, Rejoins, Stall, group_stuck, is_fenced_member, retire, stuck_after,
};
use dispatch_kafka::quarantine::{self, QuarantineInfo};
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::topics::TopicNames;
use dispatch_proto::prost::Message as _;
use dispatch_telemetry::names;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::plan::{self, PlannedDelivery, Quarantine};
use crate::txn::{self, ErrorTraits as TxnErrorTraits, TxnAction, TxnCall};
use crate::{Error, Result};

/// The `[fanout]` configuration table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Consumer group of the fan-out processes.
    pub group_id: String,
    /// This process's `transactional.id`: unique per instance and stable across its restarts
    /// (a restarted instance fences its previous incarnation and aborts what it left open).
    /// Default `dispatch-fanout-<HOSTNAME>`, which is the pod name on Kubernetes.
    pub transactional_id: Option<String>,
    /// Domain topics to read (without the prefix). Default: every family's
    /// `posternity.events.<family>`.
    pub domain_topics: Vec<String>,
    /// Or a regular expression of domain topics (without the prefix), instead of the list.
    pub domain_topic_pattern: Option<String>,
    /// Most input records in one transaction.
    pub batch_max_records: usize,
    /// Longest time a batch collects records before it is committed, in milliseconds. A batch
    /// is committed earlier as soon as the consumer has no more records at hand (5 ms after its
    /// first record at the soonest), so light traffic never waits for it: it bounds a batch
    /// under heavy traffic.
    pub batch_max_ms: u64,
    /// `transaction.timeout.ms` of the producer.
    pub transaction_timeout_ms: u64,
    /// How long a transactional call that librdkafka answers with a *retriable* error (a commit
    /// that timed out while a broker was unreachable) is made again before the process exits
    /// non-zero for its supervisor to restart it, in milliseconds.
    pub transaction_retry_max_ms: u64,
    /// The `max.message.bytes` assumed for the deliveries, lane and invalid topics when the
    /// broker does not tell it at start (describe configs refused): a delivery task larger than
    /// its topic's limit is never produced, its event is quarantined as `too_large`. Kafka's
    /// default is 1048588.
    pub fallback_max_message_bytes: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            group_id: "dispatch-fanout".to_owned(),
            transactional_id: None,
            domain_topics: dispatch_core::catalog::Family::PUBLISHED
                .iter()
                .filter_map(|family| family.domain_topic())
                .collect(),
            domain_topic_pattern: None,
            batch_max_records: 1000,
            batch_max_ms: 100,
            transaction_timeout_ms: 60_000,
            transaction_retry_max_ms: 60_000,
            fallback_max_message_bytes: 1_048_588,
        }
    }
}

impl FanoutConfig {
    /// Checks the settings before any I/O, naming the first bad key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.group_id.trim().is_empty() {
            return Err("fanout.group_id: must not be empty".to_owned());
        }
        if self
            .transactional_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err("fanout.transactional_id: must not be empty when set".to_owned());
        }
        if self.domain_topics.is_empty() && self.domain_topic_pattern.is_none() {
            return Err(
                "fanout.domain_topics: name at least one topic (or set domain_topic_pattern)"
                    .to_owned(),
            );
        }
        if let Some(pattern) = &self.domain_topic_pattern {
            regex::Regex::new(pattern).map_err(|e| format!("fanout.domain_topic_pattern: {e}"))?;
        }
        if !(1..=100_000).contains(&self.batch_max_records) {
            return Err(format!(
                "fanout.batch_max_records: must be between 1 and 100000, got {}",
                self.batch_max_records
            ));
        }
        if !(1..=10_000).contains(&self.batch_max_ms) {
            return Err(format!(
                "fanout.batch_max_ms: must be between 1 and 10000, got {}",
                self.batch_max_ms
            ));
        }
        if self.transaction_timeout_ms < 1_000 {
            return Err("fanout.transaction_timeout_ms: must be at least 1000".to_owned());
        }
        if self.transaction_retry_max_ms < 1_000 {
            return Err("fanout.transaction_retry_max_ms: must be at least 1000".to_owned());
        }
        if !(MIN_MAX_MESSAGE_BYTES..=MAX_MAX_MESSAGE_BYTES)
            .contains(&self.fallback_max_message_bytes)
        {
            return Err(format!(
                "fanout.fallback_max_message_bytes: must be between {MIN_MAX_MESSAGE_BYTES} and {MAX_MAX_MESSAGE_BYTES}, got {}",
                self.fallback_max_message_bytes
            ));
        }
        Ok(())
    }

    /// The transactional id this process uses.
    pub fn effective_transactional_id(&self) -> String {
        self.transactional_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
            format!("dispatch-fanout-{host}")
        })
    }
}

/// Sees rebalances: a revoke invalidates the batch being collected (the next owner re-reads it
/// from the committed offsets).
#[derive(Debug, Default)]
struct FanoutContext {
    rebalanced: AtomicBool,
    /// The group handler's state, to notice one that lost its coordinator for good.
    watch: GroupWatch,
    group: String,
    topic_prefix: String,
}

impl ClientContext for FanoutContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.watch.observe(&statistics);
        dispatch_kafka::lag::record_consumer_lag(
            &self.group,
            &self.topic_prefix,
            dispatch_kafka::lag::LagBasis::Position,
            &statistics,
        );
    }
}

impl ConsumerContext for FanoutContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            info!(partitions = partitions.count(), "partitions revoked");
            self.rebalanced.store(true, Ordering::SeqCst);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            info!(partitions = partitions.count(), "partitions assigned");
        }
    }
}

/// The smallest `max.message.bytes` the fan-out works with (a task must fit next to its body).
const MIN_MAX_MESSAGE_BYTES: usize = 4_096;
/// The largest: librdkafka's own ceiling of `message.max.bytes` is 1,000,000,000; a webhook body
/// of more than 100 MB is not one to deliver.
const MAX_MAX_MESSAGE_BYTES: usize = 100_000_000;
/// librdkafka's default `message.max.bytes` and `batch.size`: kept when the topics allow more.
const LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Longest one attempt of a transactional call blocks. A retriable timeout only means "make the
/// same call again", so shorter attempts cost nothing and let the loop look at the stop flag
/// (the recorded broker-loss failure saw no exit within 13 s of SIGTERM).
const CALL_ATTEMPT_MAX: Duration = Duration::from_secs(5);
/// How much longer than its own timeout a transactional call may take before it is given up
/// as hung (librdkafka#5301). librdkafka reports a timed-out request a few seconds late under
/// load (a send_offsets attempt of 5 s answered "timed out after 12095 ms"), which must not
/// count as hung.
const CALL_HANG_GRACE: Duration = Duration::from_secs(15);
/// The transactional producer's `statistics.interval.ms` (its BrokerWatch).
const PRODUCER_STATISTICS_INTERVAL_MS: &str = "1000";
/// How long a batch collects after its first record before it may be committed because the
/// consumer ran dry: without it, flat-out traffic became many tiny transactions whose broker
/// cost grew the tail of healthy deliveries when other endpoints hung (docs/benchmarks.md,
/// "Head-of-line"). Bounded by `fanout.batch_max_ms`.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// Longest an empty batch is waited for before the loop looks at the group's health again.
const IDLE_RETURN: Duration = Duration::from_secs(1);
/// Pause before another new producer is tried, after one could not initialise transactions.
const FRESH_PRODUCER_BACKOFF: Duration = Duration::from_secs(1);
/// Pause between two attempts of a retried call.
const CALL_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Seeks tried for one partition before its position is considered lost.
const SEEK_ATTEMPTS: u32 = 3;
/// Reason of an event whose delivery task exceeds its topic's `max.message.bytes`.
const REASON_TOO_LARGE: &str = "too_large";
/// Reason of an event whose task the brokers refused for good for another reason.
const REASON_UNPRODUCIBLE: &str = "unproducible";
/// Delivery-report tag of a quarantine record (the others carry their input record's index).
const QUARANTINE_TAG: usize = 1;

/// The `max.message.bytes` of the topics the fan-out writes, as the broker told it at start.
#[derive(Debug, Clone)]
struct TopicLimits {
    by_topic: BTreeMap<String, usize>,
    fallback: usize,
}

impl TopicLimits {
    fn of(&self, topic: &str) -> usize {
        self.by_topic.get(topic).copied().unwrap_or(self.fallback)
    }

    fn all(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_topic
            .values()
            .copied()
            .chain(std::iter::once(self.fallback))
    }

    /// Asks the broker for each topic's `max.message.bytes`; a topic it does not answer for
    /// gets `fallback` (logged). Blocking.
    fn read(kafka: &KafkaConfig, topics: &[String], fallback: usize) -> Self {
        let mut limits = TopicLimits {
            by_topic: BTreeMap::new(),
            fallback,
        };
        // describe_configs is asynchronous; `build` is called from a blocking context.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                warn!(%error, fallback, "cannot read max.message.bytes; assuming fanout.fallback_max_message_bytes");
                return limits;
            }
        };
        let admin = match TopicAdmin::new(kafka) {
            Ok(admin) => admin,
            Err(error) => {
                warn!(%error, fallback, "cannot read max.message.bytes; assuming fanout.fallback_max_message_bytes");
                return limits;
            }
        };
        for topic in topics {
            let limit = runtime
                .block_on(admin.topic_configs(topic))
                .map_err(|e| e.to_string())
                .and_then(|configs| {
                    configs
                        .get("max.message.bytes")
                        .and_then(|value| value.as_deref())
                        .and_then(|value| value.parse::<usize>().ok())
                        .ok_or_else(|| "no max.message.bytes in its configs".to_owned())
                });
            match limit {
                Ok(limit) => {
                    limits.by_topic.insert(topic.clone(), limit);
                }
                Err(error) => {
                    warn!(%error, topic, fallback, "cannot read max.message.bytes; assuming fanout.fallback_max_message_bytes");
                }
            }
        }
        info!(limits = ?limits.by_topic, "topic record limits (max.message.bytes)");
        limits
    }
}

/// A task the brokers refused for good, from a delivery report.
#[derive(Debug)]
struct Refusal {
    /// The delivery-report tag: `2 × batch index`, plus [`QUARANTINE_TAG`] for a quarantine
    /// record.
    tag: usize,
    topic: String,
    error: KafkaError,
}

/// The transactional producer's context: delivery reports (served on the producer's own thread)
/// note the records the brokers refused for good, so that the input record behind one is
/// quarantined when its batch is read again instead of aborting the batch forever.
#[derive(Debug, Default)]
struct FanoutProducerContext {
    refusals: Mutex<Vec<Refusal>>,
    /// Whether the producer still knows a broker (see [`BrokerWatch`]): one that dropped them
    /// all never finishes a transactional call, which then only looks retriable.
    brokers: BrokerWatch,
}

impl ClientContext for FanoutProducerContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.brokers.observe(&statistics);
    }
}

impl ProducerContext for FanoutProducerContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        if let Err((error, message)) = result
            && error
                .rdkafka_error_code()
                .is_some_and(txn::is_permanent_record_error)
        {
            self.refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Refusal {
                    tag,
                    topic: message.topic().to_owned(),
                    error: error.clone(),
                });
        }
    }
}

/// An input record that must be quarantined when it is read again (its tasks cannot be
/// produced), keyed by (topic, partition, offset).
#[derive(Debug, Clone)]
struct Poisoned {
    quarantine: Quarantine,
    /// False when even the quarantine record with the value was refused: write it without.
    keep_value: bool,
}

/// Faults a test makes the fan-out meet (feature `fault-injection`, enabled by the integration
/// tests only; no configuration reaches it).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
pub struct InjectedFaults {
    /// This many transactions are aborted after producing their tasks, before their offsets
    /// are sent.
    pub aborted_transactions: std::sync::atomic::AtomicU32,
    /// This many seeks fail.
    pub failed_seeks: std::sync::atomic::AtomicU32,
    /// This many transactions end as if their commit had stayed retriable past
    /// `fanout.transaction_retry_max_ms` (tasks produced, offsets not sent): a producer that
    /// only a new one replaces.
    pub stuck_transactions: std::sync::atomic::AtomicU32,
    /// This many `send_offsets_to_transaction` calls never return, as librdkafka#5301 leaves
    /// them: the call's deadline must give up on them and replace the producer.
    pub hung_calls: std::sync::atomic::AtomicU32,
}

#[cfg(feature = "fault-injection")]
fn take_one(counter: &std::sync::atomic::AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

/// A ready fan-out: clients created, transactions initialised, subscribed.
pub struct Fanout {
    consumer: BaseConsumer<FanoutContext>,
    /// Shared with the thread each transactional call runs on (see [`call_with_deadline`]).
    producer: Arc<TxnProducer>,
    view: Arc<SubscriptionView>,
    names: TopicNames,
    lanes: BTreeSet<String>,
    config: FanoutConfig,
    kafka: KafkaConfig,
    subscription: Vec<String>,
    request_timeout: Duration,
    limits: TopicLimits,
    /// The producer's `message.max.bytes` and `batch.size`, from `limits`.
    message_max_bytes: usize,
    batch_size: usize,
    poisoned: Mutex<BTreeMap<(String, i32, i64), Poisoned>>,
    #[cfg(feature = "fault-injection")]
    faults: Arc<InjectedFaults>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The fan-out's transactional producer.
type TxnProducer = ThreadedProducer<FanoutProducerContext>;

/// Counts of one committed batch (returned for tests and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BatchCounts {
    records: usize,
    deliveries: usize,
    quarantined: usize,
}

/// Why a batch was not committed.
#[derive(Debug)]
enum BatchFailure {
    /// Abort the transaction and read the batch again.
    Abort(KafkaError),
    /// Only a restart can continue.
    Exit(Error),
    /// The stop flag was set while a call was being repeated.
    Stopped,
}

/// How consuming ended.
#[derive(Debug)]
enum Consumption {
    /// The stop flag was set.
    Stopped,
    /// A rewind failed: the consumer's position is past records that were not committed.
    PositionLost,
    /// The consumer's static membership was fenced (a fatal consumer error): it never fetches
    /// again. See [`dispatch_kafka::group_health`].
    Fenced(KafkaError),
    /// The consumer has not been able to fetch (its group handler away from its coordinator,
    /// or an assigned partition not fetching) for longer than [`stuck_after`]. See
    /// [`dispatch_kafka::group_health`].
    GroupStuck(Stall),
    /// The transactional producer failed in a way only a new producer fixes (see
    /// [`recoverable_with_new_clients`]).
    ProducerLost(Error),
}

/// What became of one input record in the open transaction.
enum RecordOutcome {
    Delivered(usize),
    Quarantined(&'static str),
}

impl Fanout {
    /// Creates the clients, initialises transactions (fencing any previous incarnation of the
    /// same transactional id) and subscribes to the domain topics. Blocking: call it from a
    /// blocking context.
    pub fn build(
        kafka: &KafkaConfig,
        config: FanoutConfig,
        lanes: impl IntoIterator<Item = String>,
        view: Arc<SubscriptionView>,
    ) -> Result<Self> {
        let names = TopicNames::new(kafka.topic_prefix.clone());
        let lanes: BTreeSet<String> = lanes.into_iter().collect();
        let mut written: Vec<String> = vec![names.deliveries(), names.invalid()];
        written.extend(lanes.iter().map(|lane| names.lane(lane)));
        let limits = TopicLimits::read(kafka, &written, config.fallback_max_message_bytes);
        // librdkafka refuses locally any record over its own message.max.bytes, and a batch
        // over a topic's max.message.bytes is refused whole by the broker: let one record be as
        // large as the largest topic allows, and a batch no larger than the smallest does.
        let largest = limits
            .all()
            .max()
            .unwrap_or(config.fallback_max_message_bytes);
        let smallest = limits
            .all()
            .min()
            .unwrap_or(config.fallback_max_message_bytes);
        let message_max_bytes =
            (largest + quarantine::RECORD_OVERHEAD_BYTES).max(LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES);
        let batch_size = smallest
            .saturating_sub(quarantine::RECORD_OVERHEAD_BYTES)
            .clamp(1, LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES);

        let producer = transactional_producer(kafka, &config, message_max_bytes, batch_size)?;
        let request_timeout = kafka.request_timeout();

        let subscription: Vec<String> = match &config.domain_topic_pattern {
            // librdkafka treats a topic starting with `^` as a regular expression.
            Some(pattern) => vec![format!(
                "^{}{}",
                regex::escape(&kafka.topic_prefix),
                pattern.trim_start_matches('^')
            )],
            None => config
                .domain_topics
                .iter()
                .map(|topic| format!("{}{topic}", kafka.topic_prefix))
                .collect(),
        };
        let consumer = subscribe(kafka, &config, &subscription)?;
        info!(topics = ?subscription, transactional_id = %config.effective_transactional_id(), "fan-out subscribed");

        Ok(Fanout {
            consumer,
            producer,
            view,
            names,
            lanes,
            config,
            kafka: kafka.clone(),
            subscription,
            request_timeout,
            limits,
            message_max_bytes,
            batch_size,
            poisoned: Mutex::new(BTreeMap::new()),
            #[cfg(feature = "fault-injection")]
            faults: Arc::default(),
        })
    }

    /// Test seam: makes this fan-out meet the given faults.
    #[cfg(feature = "fault-injection")]
    pub fn inject_faults(&mut self, faults: Arc<InjectedFaults>) {
        self.faults = faults;
    }

    /// Runs the loop on its own thread until `shutdown` is cancelled, then lets it finish the
    /// open transaction and leave the group. Returns early with the loop's error if it stops by
    /// itself: only for what a restart must fix (a fenced producer, a fatal client error, a
    /// call that stayed retriable past `fanout.transaction_retry_max_ms`).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let loop_stop = Arc::clone(&stop);
        let mut handle = tokio::task::spawn_blocking(move || self.run_blocking(&loop_stop));
        tokio::select! {
            biased;
            finished = &mut handle => {
                return finished.map_err(|e| Error::Thread(e.to_string()))?;
            }
            () = shutdown.cancelled() => {}
        }
        stop.store(true, Ordering::SeqCst);
        handle.await.map_err(|e| Error::Thread(e.to_string()))?
    }

    /// The loop of [`Fanout::run`]: runs until `stop` is set, then finishes the open
    /// transaction and leaves the group. Blocking: it has a thread of its own.
    fn run_blocking(mut self, stop: &AtomicBool) -> Result<()> {
        let mut rejoins = Rejoins::default();
        let mut restarts = Rejoins::default();
        loop {
            let consumption = match self.consume(stop) {
                Ok(consumption) => consumption,
                Err(error) if recoverable_with_new_clients(&error) => {
                    if !restarts.allow(Instant::now()) {
                        error!(%error, "the fan-out's producer failed for good again and again; exiting");
                        return Err(error);
                    }
                    Consumption::ProducerLost(error)
                }
                Err(error) => return Err(error),
            };
            match consumption {
                Consumption::Stopped => break,
                Consumption::PositionLost => {
                    // The consumer will hand out records after the ones it dropped; committing
                    // those would step over the dropped ones. A new consumer joins the group
                    // and starts every partition it is assigned at the committed offset.
                    warn!(
                        "a rewind failed: recreating the consumer to restart from the committed offsets"
                    );
                    metrics::counter!(names::FANOUT_CONSUMER_RECREATED_TOTAL).increment(1);
                }
                // No transaction is open in either case: the batch being collected is dropped
                // and read again from the committed offsets by the fresh consumer.
                Consumption::Fenced(error) => {
                    let instance = self.kafka.group_instance_id("fanout").unwrap_or_default();
                    rejoins
                        .fenced(error, &self.config.group_id, &instance)
                        .map_err(Error::Kafka)?;
                }
                Consumption::GroupStuck(stall) => group_stuck(&self.config.group_id, &stall),
                Consumption::ProducerLost(error) => {
                    // What a supervisor's restart would do, without taking the process down:
                    // a new producer under the same transactional.id fences the old one and
                    // aborts its open transaction; the new consumer below re-reads from the
                    // committed offsets.
                    warn!(%error, "the fan-out's producer failed for good: replacing it and the consumer");
                    metrics::counter!(names::FANOUT_PRODUCER_RECREATED_TOTAL).increment(1);
                    let Some(fresh) = self.fresh_producer(stop)? else {
                        break;
                    };
                    retire(std::mem::replace(&mut self.producer, fresh));
                }
            }
            let fresh = subscribe(&self.kafka, &self.config, &self.subscription)?;
            retire(Arc::new(std::mem::replace(&mut self.consumer, fresh)));
        }
        info!("fan-out stopping; leaving the group");
        Ok(())
    }

    /// A new transactional producer in place of one that failed for good. While the broker
    /// cannot initialise one yet (still stalled, its coordinator moving), it is tried again for
    /// up to `fanout.transaction_retry_max_ms`, the bound any retriable call gets; then the
    /// error ends the role. None once `stop` is set.
    fn fresh_producer(&self, stop: &AtomicBool) -> Result<Option<Arc<TxnProducer>>> {
        let give_up_at =
            Instant::now() + Duration::from_millis(self.config.transaction_retry_max_ms);
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            match transactional_producer(
                &self.kafka,
                &self.config,
                self.message_max_bytes,
                self.batch_size,
            ) {
                Ok(fresh) => return Ok(Some(fresh)),
                Err(error) if Instant::now() < give_up_at => {
                    warn!(%error, "the fan-out's new producer could not initialise transactions; trying again");
                    std::thread::sleep(FRESH_PRODUCER_BACKOFF);
                }
                Err(error) => {
                    error!(%error, "the fan-out's new producer could not initialise transactions within fanout.transaction_retry_max_ms; exiting");
                    return Err(error);
                }
            }
        }
    }

    /// Consumes batches until `stop` or until a rewind failed.
    fn consume(&self, stop: &AtomicBool) -> Result<Consumption> {
        let batch_wait = Duration::from_millis(self.config.batch_max_ms);
        let stuck_bound = stuck_after(self.kafka.session_timeout());
        // Partitions already reported as handing nothing out, at the position reported.
        let mut reported: BTreeSet<(String, i32, i64)> = BTreeSet::new();
        while !stop.load(Ordering::SeqCst) {
            if let Some(stall) = self.consumer.context().watch.stall()
                && stall.duration >= stuck_bound
            {
                return Ok(Consumption::GroupStuck(stall));
            }
            // Diagnosis only (see GroupWatch::waiting_longer_than): a consumer that fetches
            // and hands out nothing is the one stall the watch does not act on yet.
            for ((topic, partition), waiting) in self
                .consumer
                .context()
                .watch
                .waiting_longer_than(stuck_bound)
            {
                if reported.insert((topic.clone(), partition, waiting.position)) {
                    warn!(
                        topic,
                        partition,
                        position = waiting.position,
                        stable = waiting.stable,
                        fetch_state = %waiting.fetch_state,
                        dropped_as_outdated = waiting.dropped_as_outdated,
                        standing_s = waiting.since.elapsed().as_secs(),
                        "an assigned partition has handed out nothing while records wait"
                    );
                }
            }
            let batch = match self.collect_batch(batch_wait, stop) {
                Ok(batch) => batch,
                Err(Error::Kafka(error)) if is_fenced_member(&error) => {
                    return Ok(Consumption::Fenced(error));
                }
                Err(error) => return Err(error),
            };
            if batch.is_empty() {
                continue;
            }
            let error = match self.process_batch(&batch, stop) {
                Ok(counts) => {
                    debug!(?counts, "batch committed");
                    continue;
                }
                Err(BatchFailure::Stopped) => return Ok(Consumption::Stopped),
                Err(BatchFailure::Exit(error)) => {
                    error!(%error, "fan-out transaction failed in a way only new clients fix");
                    return Err(error);
                }
                Err(BatchFailure::Abort(error)) => error,
            };
            warn!(%error, records = batch.len(), "fan-out transaction failed; aborting, the batch will be read again");
            match self.abort(stop) {
                Ok(()) => {}
                Err(BatchFailure::Stopped) => return Ok(Consumption::Stopped),
                Err(BatchFailure::Exit(error)) => {
                    error!(%error, "abort_transaction failed; exiting");
                    return Err(error);
                }
                Err(BatchFailure::Abort(error)) => {
                    error!(%error, "abort_transaction failed; exiting");
                    return Err(Error::Kafka(error));
                }
            }
            self.note_refusals(&batch);
            if !self.rewind(&batch) {
                return Ok(Consumption::PositionLost);
            }
        }
        Ok(Consumption::Stopped)
    }

    /// Polls until the batch is full, `wait` passed since its first record, the consumer has
    /// nothing more at hand once the batch has begun, or `stop`.
    /// A rebalance during collection drops the partial batch: its partitions may have a new
    /// owner, which reads them again from the committed offsets.
    fn collect_batch<'a>(
        &'a self,
        wait: Duration,
        stop: &AtomicBool,
    ) -> Result<Vec<BorrowedMessage<'a>>> {
        let mut batch = Vec::new();
        // When the batch's first record came: it goes `wait` after it at the latest, and may go
        // once the consumer runs dry BATCH_LINGER after it.
        let mut first_at: Option<Instant> = None;
        // With nothing to read, return now and then: the caller's checks of the group's health
        // run between batches, and a consumer librdkafka left unable to fetch reads nothing,
        // ever (a broker-freeze run stayed in here for 4 minutes with its group lost).
        let idle_until = Instant::now() + IDLE_RETURN;
        self.consumer
            .context()
            .rebalanced
            .store(false, Ordering::SeqCst);
        while batch.len() < self.config.batch_max_records && !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let timeout = match first_at {
                Some(first) if now >= first + wait => break,
                // A batch under way takes what the consumer holds already, and during its
                // first BATCH_LINGER waits for more (see below).
                Some(first) => (first + BATCH_LINGER.min(wait)).saturating_duration_since(now),
                None if now >= idle_until => break,
                None => Duration::from_millis(100),
            };
            let mut ran_dry = false;
            match self.consumer.poll(timeout) {
                Some(Ok(message)) => {
                    metrics::counter!(names::FANOUT_EVENTS_CONSUMED_TOTAL, "topic" => self.topic_label(message.topic())).increment(1);
                    first_at.get_or_insert_with(Instant::now);
                    batch.push(message);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                // A fatal consumer error (`MessageConsumptionFatal`, e.g. fenced) leaves a
                // consumer that never fetches again: logging it and polling on would wedge.
                Some(Err(error)) if TxnErrorTraits::of(&error).fatal || is_fatal(&error) => {
                    return Err(Error::Kafka(error));
                }
                Some(Err(error)) => warn!(%error, "consumer error"),
                // Adaptive batching: a batch goes as soon as the consumer has nothing more at
                // hand (once BATCH_LINGER has passed since its first record), instead of
                // waiting out `batch_max_ms` that every event would pay. Light traffic is
                // committed within a few milliseconds; under heavy traffic records pile up while
                // the previous transaction commits, so batches grow by themselves, up to
                // `batch_max_records` or `batch_max_ms`.
                None => ran_dry = !batch.is_empty(),
            }
            if self
                .consumer
                .context()
                .rebalanced
                .swap(false, Ordering::SeqCst)
            {
                if !batch.is_empty() {
                    info!(
                        records = batch.len(),
                        "rebalance: dropping the uncommitted batch"
                    );
                }
                batch.clear();
                first_at = None;
            }
            // Looked at only now: a poll that found nothing may have run a rebalance first.
            if ran_dry && !batch.is_empty() {
                break;
            }
        }
        Ok(batch)
    }

    /// The domain topic without the prefix (a bounded label).
    fn topic_label(&self, topic: &str) -> String {
        topic
            .strip_prefix(self.names.prefix())
            .unwrap_or(topic)
            .to_owned()
    }

    /// Makes a transactional call, repeating it while librdkafka calls its error retriable
    /// (bounded by `fanout.transaction_retry_max_ms`), and turns any other error into what the
    /// loop does next ([`txn::decide`]). Each attempt runs on a thread of its own with a
    /// deadline (see [`call_with_deadline`]): one that never returns ends in a new producer.
    fn call<T: Send + 'static>(
        &self,
        call: TxnCall,
        stop: &AtomicBool,
        attempt: impl Fn(&TxnProducer, Duration) -> KafkaResult<T> + Send + Sync + 'static,
    ) -> Result<T, BatchFailure> {
        let started = Instant::now();
        let retry_max = Duration::from_millis(self.config.transaction_retry_max_ms);
        let attempt_timeout = self.request_timeout.min(CALL_ATTEMPT_MAX);
        let attempt = Arc::new(attempt);
        let stuck = |source: KafkaError| {
            Err(BatchFailure::Exit(Error::TransactionStuck {
                call: call.label(),
                waited_ms: started.elapsed().as_millis() as u64,
                source,
            }))
        };
        loop {
            // A producer that knows no broker (librdkafka#5301) fails its transactional calls
            // or waits for their replies without end: do not make the call, replace the
            // producer. The deadline below catches a call that was already under way.
            if self.producer.context().brokers.blind_for().is_some() {
                warn!(
                    call = call.label(),
                    "the fan-out's producer knows no broker any more (librdkafka dropped them all); not making the call"
                );
                return stuck(KafkaError::Flush(RDKafkaErrorCode::AllBrokersDown));
            }
            let this_attempt = Arc::clone(&attempt);
            #[cfg(feature = "fault-injection")]
            let hang = call == TxnCall::SendOffsets && take_one(&self.faults.hung_calls);
            let made = call_with_deadline(
                &self.producer,
                call.label(),
                attempt_timeout + CALL_HANG_GRACE,
                move |producer| {
                    #[cfg(feature = "fault-injection")]
                    if hang {
                        loop {
                            std::thread::park();
                        }
                    }
                    this_attempt(producer, attempt_timeout)
                },
            );
            let error = match made {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                // Hung (librdkafka#5301): a new producer follows; no thread: the role exits.
                Err(error) => {
                    error!(%error, call = call.label(), "a transactional call did not complete");
                    return Err(BatchFailure::Exit(error));
                }
            };
            match txn::decide(call, TxnErrorTraits::of(&error)) {
                TxnAction::RetrySameCall => {
                    if stop.load(Ordering::SeqCst) {
                        info!(call = call.label(), %error, "stopping while a transactional call is repeated; the next incarnation aborts what is open");
                        return Err(BatchFailure::Stopped);
                    }
                    if started.elapsed() >= retry_max {
                        return stuck(error);
                    }
                    warn!(call = call.label(), %error, "transactional call failed retriably; making it again");
                    metrics::counter!(names::FANOUT_TRANSACTION_RETRIES_TOTAL, "call" => call.label())
                        .increment(1);
                    std::thread::sleep(CALL_RETRY_BACKOFF);
                }
                TxnAction::AbortAndRewind | TxnAction::QuarantineRecord => {
                    return Err(BatchFailure::Abort(error));
                }
                TxnAction::Exit => return Err(BatchFailure::Exit(Error::Kafka(error))),
            }
        }
    }

    fn process_batch(
        &self,
        batch: &[BorrowedMessage<'_>],
        stop: &AtomicBool,
    ) -> Result<BatchCounts, BatchFailure> {
        let started = Instant::now();
        self.call(TxnCall::Begin, stop, |producer, _| {
            producer.begin_transaction()
        })?;
        let mut counts = BatchCounts {
            records: batch.len(),
            ..BatchCounts::default()
        };
        let mut invalid_reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut produced_by_family: BTreeMap<String, u64> = BTreeMap::new();
        let mut unmatched = 0u64;
        let now = SystemTime::now();
        for (index, message) in batch.iter().enumerate() {
            match self.fan_out_record(index, message, now, stop, &mut produced_by_family)? {
                RecordOutcome::Delivered(0) => unmatched += 1,
                RecordOutcome::Delivered(deliveries) => counts.deliveries += deliveries,
                RecordOutcome::Quarantined(reason) => {
                    *invalid_reasons.entry(reason).or_default() += 1;
                    counts.quarantined += 1;
                }
            }
        }

        #[cfg(feature = "fault-injection")]
        if take_one(&self.faults.aborted_transactions) {
            return Err(BatchFailure::Abort(KafkaError::MessageProduction(
                RDKafkaErrorCode::Fail,
            )));
        }
        #[cfg(feature = "fault-injection")]
        if take_one(&self.faults.stuck_transactions) {
            return Err(BatchFailure::Exit(Error::TransactionStuck {
                call: TxnCall::Commit.label(),
                waited_ms: self.config.transaction_retry_max_ms,
                source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
            }));
        }

        let offsets = next_offsets(batch);
        // Without group metadata (no current generation) the offsets cannot join the
        // transaction; abort and read the batch again once the group settled.
        let group = self.consumer.group_metadata().ok_or(BatchFailure::Abort(
            KafkaError::MessageConsumption(RDKafkaErrorCode::Fail),
        ))?;
        let commit_started = Instant::now();
        self.call(TxnCall::SendOffsets, stop, move |producer, timeout| {
            producer.send_offsets_to_transaction(&offsets, &group, timeout)
        })?;
        let offsets_sent = commit_started.elapsed();
        self.wait_until_delivered(stop);
        self.call(TxnCall::Commit, stop, |producer, timeout| {
            producer.commit_transaction(timeout)
        })?;
        debug!(
            produce_ms = (commit_started - started).as_millis() as u64,
            send_offsets_ms = offsets_sent.as_millis() as u64,
            commit_ms = (commit_started.elapsed() - offsets_sent).as_millis() as u64,
            "transaction phases"
        );
        metrics::histogram!(names::FANOUT_COMMIT_DURATION_SECONDS)
            .record(commit_started.elapsed().as_secs_f64());
        metrics::histogram!(names::FANOUT_BATCH_RECORDS).record(batch.len() as f64);
        metrics::counter!(names::FANOUT_TRANSACTIONS_TOTAL, "result" => "commit").increment(1);
        metrics::counter!(names::FANOUT_EVENTS_UNMATCHED_TOTAL).increment(unmatched);
        for (reason, count) in invalid_reasons {
            metrics::counter!(names::FANOUT_EVENTS_INVALID_TOTAL, "reason" => reason)
                .increment(count);
        }
        for (family, count) in produced_by_family {
            metrics::counter!(names::FANOUT_DELIVERIES_PRODUCED_TOTAL, "family" => family)
                .increment(count);
        }
        debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "transaction committed"
        );
        if counts.quarantined > 0 {
            // Quarantined for good now: forget them.
            let mut poisoned = self.poisoned.lock().unwrap_or_else(PoisonError::into_inner);
            for message in batch {
                poisoned.remove(&(
                    message.topic().to_owned(),
                    message.partition(),
                    message.offset(),
                ));
            }
        }
        Ok(counts)
    }

    /// Produces what one input record becomes into the open transaction: its delivery tasks,
    /// or its quarantine record.
    fn fan_out_record(
        &self,
        index: usize,
        message: &BorrowedMessage<'_>,
        now: SystemTime,
        stop: &AtomicBool,
        produced_by_family: &mut BTreeMap<String, u64>,
    ) -> Result<RecordOutcome, BatchFailure> {
        let position = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        let poisoned = self
            .poisoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&position)
            .cloned();
        let planned = match poisoned {
            Some(poisoned) => Err(poisoned),
            None => self
                .plan_record(message, now)
                .and_then(|deliveries| self.encode_within_limits(deliveries))
                .map_err(|quarantine| Poisoned {
                    quarantine,
                    keep_value: true,
                }),
        };
        let encoded = match planned {
            Ok(encoded) => encoded,
            Err(poisoned) => {
                self.quarantine(index, message, &poisoned, stop)?;
                return Ok(RecordOutcome::Quarantined(poisoned.quarantine.reason));
            }
        };
        let tag = index * 2;
        for (delivery, value) in &encoded {
            let record = BaseRecord::with_opaque_to(&delivery.topic, tag)
                .key(delivery.task.subscription_id.as_bytes())
                .payload(value.as_slice());
            if let Err(failure) = self.send(record, stop) {
                return Err(self.poison_if_refused(message, failure, true));
            }
            let family = delivery
                .task
                .event_type
                .split('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            *produced_by_family.entry(family).or_default() += 1;
        }
        Ok(RecordOutcome::Delivered(encoded.len()))
    }

    /// Encodes the tasks of one event, or says why the event must be quarantined: a task over
    /// its topic's `max.message.bytes` can never be produced (and none of its siblings is
    /// produced either: an event is fanned out whole or quarantined).
    fn encode_within_limits(
        &self,
        deliveries: Vec<PlannedDelivery>,
    ) -> Result<Vec<(PlannedDelivery, Vec<u8>)>, Quarantine> {
        deliveries
            .into_iter()
            .map(|delivery| {
                let value = delivery.task.encode_to_vec();
                let key = delivery.task.subscription_id.as_bytes();
                let size = quarantine::record_size(Some(key), Some(&value), None);
                let limit = self.limits.of(&delivery.topic);
                if size > limit {
                    return Err(Quarantine {
                        reason: REASON_TOO_LARGE,
                        message: plan::too_large_message(
                            &delivery.task.subscription_id,
                            size,
                            &delivery.topic,
                            limit,
                        ),
                    });
                }
                Ok((delivery, value))
            })
            .collect()
    }

    /// A send that failed because the record can never be produced poisons its input record
    /// (quarantined when the batch is read again); every send failure aborts the transaction.
    fn poison_if_refused(
        &self,
        message: &BorrowedMessage<'_>,
        failure: SendFailure,
        keep_value: bool,
    ) -> BatchFailure {
        match failure {
            SendFailure::Batch(failure) => failure,
            SendFailure::Refused(error) => {
                let quarantine = Quarantine {
                    reason: refusal_reason(&error),
                    message: format!("its record cannot be produced: {error}"),
                };
                self.poison(message, quarantine, keep_value);
                BatchFailure::Abort(error)
            }
        }
    }

    fn poison(&self, message: &BorrowedMessage<'_>, quarantine: Quarantine, keep_value: bool) {
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason = quarantine.reason,
            error = %quarantine.message,
            "a record can never be produced; it is quarantined when its batch is read again"
        );
        self.poisoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (
                    message.topic().to_owned(),
                    message.partition(),
                    message.offset(),
                ),
                Poisoned {
                    quarantine,
                    keep_value,
                },
            );
    }

    /// After an abort: the records the brokers refused for good (delivery reports) poison the
    /// input records they came from.
    fn note_refusals(&self, batch: &[BorrowedMessage<'_>]) {
        // The abort purged what was queued; wait for the purge's delivery reports to be served
        // by the producer's thread so that every refusal is noted.
        let deadline = Instant::now() + self.request_timeout;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let refusals = std::mem::take(
            &mut *self
                .producer
                .context()
                .refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for refusal in refusals {
            let Some(message) = batch.get(refusal.tag / 2) else {
                continue;
            };
            let keep_value = refusal.tag % 2 != QUARANTINE_TAG;
            let quarantine = Quarantine {
                reason: refusal_reason(&refusal.error),
                message: format!(
                    "the broker refused its record to {}: {}",
                    refusal.topic, refusal.error
                ),
            };
            self.poison(message, quarantine, keep_value);
        }
    }

    /// Waits until every produced record is acknowledged, polling briefly. rust-rdkafka's
    /// `commit_transaction` flushes first, and its flush sleeps in 100 ms polls while the
    /// producer's own thread serves the delivery reports — a fixed 100 ms per transaction that
    /// dominated small batches (measured: docs/benchmarks.md). With nothing outstanding its
    /// flush returns at once.
    fn wait_until_delivered(&self, stop: &AtomicBool) {
        let deadline = Instant::now() + self.request_timeout;
        while self.producer.in_flight_count() > 0
            && Instant::now() < deadline
            && !stop.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn plan_record(
        &self,
        message: &BorrowedMessage<'_>,
        now: SystemTime,
    ) -> Result<Vec<PlannedDelivery>, Quarantine> {
        let (event, _event_type) = plan::decode(message.payload())?;
        self.view.read(|table| {
            let matched = table.matching(&event.account_id, &event.r#type, &event.attributes);
            plan::deliveries(&event, &matched, &self.names, &self.lanes, now)
        })
    }

    /// The original record to `dispatch.invalid`, with headers naming the error and where the
    /// record came from; its value cut (and marked so) if the whole would not fit the topic.
    fn quarantine(
        &self,
        index: usize,
        message: &BorrowedMessage<'_>,
        poisoned: &Poisoned,
        stop: &AtomicBool,
    ) -> Result<(), BatchFailure> {
        let quarantine = &poisoned.quarantine;
        let headers = quarantine::headers(
            &QuarantineInfo {
                reason: quarantine.reason,
                error: &quarantine.message,
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
            },
            message.headers(),
        );
        warn!(
            reason = quarantine.reason,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error = %quarantine.message,
            "quarantined an invalid record"
        );
        let invalid_topic = self.names.invalid();
        let value = if poisoned.keep_value {
            message.payload()
        } else {
            None
        };
        let (value, headers) = quarantine::fit(
            message.key(),
            value,
            headers,
            self.limits.of(&invalid_topic),
        );
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(
            &invalid_topic,
            index * 2 + QUARANTINE_TAG,
        )
        .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.send(record, stop)
            .map_err(|failure| self.poison_if_refused(message, failure, false))
    }

    /// Enqueues a record in the open transaction, waiting while the local queue is full.
    fn send<'r>(
        &self,
        mut record: BaseRecord<'r, [u8], [u8], usize>,
        stop: &AtomicBool,
    ) -> Result<(), SendFailure> {
        // A queue that stays full means the brokers are not taking records (a leader lost,
        // acks=all waiting for replicas): waiting longer than a request would not help, and
        // an unbounded wait here would never look at the stop flag. Abort and read the batch
        // again instead. (The clock is read only once the queue is full: this runs per record.)
        let mut deadline = None;
        loop {
            let (error, returned) = match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err(failed) => failed,
            };
            match txn::decide(TxnCall::Produce, TxnErrorTraits::of(&error)) {
                TxnAction::RetrySameCall => {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + self.request_timeout);
                    if stop.load(Ordering::SeqCst) {
                        return Err(SendFailure::Batch(BatchFailure::Stopped));
                    }
                    if Instant::now() > deadline {
                        warn!(%error, "producer queue full for a whole request timeout");
                        return Err(SendFailure::Batch(BatchFailure::Abort(error)));
                    }
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                TxnAction::QuarantineRecord => return Err(SendFailure::Refused(error)),
                TxnAction::AbortAndRewind => {
                    return Err(SendFailure::Batch(BatchFailure::Abort(error)));
                }
                TxnAction::Exit => {
                    return Err(SendFailure::Batch(BatchFailure::Exit(Error::Kafka(error))));
                }
            }
        }
    }

    /// Aborts the open transaction, repeating the abort while it is retriable.
    fn abort(&self, stop: &AtomicBool) -> Result<(), BatchFailure> {
        metrics::counter!(names::FANOUT_TRANSACTIONS_TOTAL, "result" => "abort").increment(1);
        self.call(TxnCall::Abort, stop, |producer, timeout| {
            producer.abort_transaction(timeout)
        })
    }

    /// After an abort: read the batch again from its first offset in each partition (everything
    /// before it is committed: our own transactions committed it). False when a partition this
    /// consumer still owns could not be rewound: its position is then past records that were
    /// not committed, and consuming on would let a later commit step over them.
    fn rewind(&self, batch: &[BorrowedMessage<'_>]) -> bool {
        let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for message in batch {
            first
                .entry((message.topic().to_owned(), message.partition()))
                .and_modify(|offset| *offset = (*offset).min(message.offset()))
                .or_insert(message.offset());
        }
        for ((topic, partition), offset) in first {
            let mut attempts = 0;
            while let Err(error) = self.seek(&topic, partition, offset) {
                attempts += 1;
                if !self.owns(&topic, partition) {
                    // Revoked meanwhile: its next owner (maybe this consumer again) starts from
                    // the committed offset, which is what we wanted anyway.
                    info!(%error, topic, partition, offset, "rewind failed on a revoked partition");
                    break;
                }
                if attempts >= SEEK_ATTEMPTS {
                    error!(%error, topic, partition, offset, "rewind failed");
                    return false;
                }
                warn!(%error, topic, partition, offset, attempts, "rewind failed; trying again");
                std::thread::sleep(CALL_RETRY_BACKOFF);
            }
        }
        true
    }

    fn seek(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
        #[cfg(feature = "fault-injection")]
        if take_one(&self.faults.failed_seeks) {
            return Err(KafkaError::Seek("injected by the test seam".to_owned()));
        }
        self.consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            self.request_timeout,
        )
    }

    /// Whether the partition is in this consumer's assignment (assumed so when unknown).
    fn owns(&self, topic: &str, partition: i32) -> bool {
        self.consumer
            .assignment()
            .map(|assignment| assignment.find_partition(topic, partition).is_some())
            .unwrap_or(true)
    }
}

/// Why a record could not be enqueued.
#[derive(Debug)]
enum SendFailure {
    /// The transaction as a whole failed.
    Batch(BatchFailure),
    /// This record can never be produced.
    Refused(KafkaError),
}

fn refusal_reason(error: &KafkaError) -> &'static str {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge) => {
            REASON_TOO_LARGE
        }
        _ => REASON_UNPRODUCIBLE,
    }
}

/// A consumer in the fan-out's group, subscribed to the domain topics.
/// Whether the fan-out may go on after `error` with a new producer and consumer — what a
/// restart would do — rather than exit (see [`txn::new_producer_recovers`]).
fn recoverable_with_new_clients(error: &Error) -> bool {
    match error {
        // A call that stayed retriable past `fanout.transaction_retry_max_ms`, or never
        // returned at all.
        Error::TransactionStuck { .. } | Error::TransactionHung { .. } => true,
        Error::Kafka(error @ KafkaError::Transaction(_)) => {
            txn::new_producer_recovers(TxnErrorTraits::of(error))
        }
        Error::Kafka(_) | Error::Thread(_) => false,
    }
}

/// The fan-out's transactional producer, its transactions initialised (which fences an
/// earlier producer with the same `transactional.id` and aborts what it left open).
fn transactional_producer(
    kafka: &KafkaConfig,
    config: &FanoutConfig,
    message_max_bytes: usize,
    batch_size: usize,
) -> Result<Arc<TxnProducer>> {
    let producer: TxnProducer = kafka
        .client_config()
        .set("transactional.id", config.effective_transactional_id())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.max.bytes", message_max_bytes.to_string())
        .set("batch.size", batch_size.to_string())
        // Right after a commit the coordinator may answer the next transaction's
        // AddPartitionsToTxn / AddOffsetsToTxn with CONCURRENT_TRANSACTIONS until the
        // markers are written; librdkafka retries after retry.backoff.ms (100 ms by default).
        .set("retry.backoff.ms", "10")
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout_ms.to_string(),
        )
        // For the context's BrokerWatch: often, since a transactional call made in the window
        // between losing every broker and the next report can hang (see `call`).
        .set("statistics.interval.ms", PRODUCER_STATISTICS_INTERVAL_MS)
        .create_with_context(FanoutProducerContext::default())
        .map_err(Error::Kafka)?;
    let producer = Arc::new(producer);
    let timeout = kafka.request_timeout();
    call_with_deadline(
        &producer,
        "init",
        timeout + CALL_HANG_GRACE,
        move |producer| producer.init_transactions(timeout),
    )?
    .map_err(Error::Kafka)?;
    Ok(producer)
}

/// Makes one transactional call on a thread of its own and waits for it until `deadline`.
/// librdkafka 2.12 can leave such a call waiting without end whatever its timeout
/// (librdkafka#5301; a thread dump of a broker-pause failure showed the fan-out's thread in
/// `send_offsets_to_transaction` for minutes). A call that misses its deadline is abandoned,
/// thread and producer with it ([`Error::TransactionHung`]); the caller replaces the producer,
/// which fences the old one. A thread per call is a few per batch, each call a broker round
/// trip anyway.
fn call_with_deadline<T: Send + 'static>(
    producer: &Arc<TxnProducer>,
    call: &'static str,
    deadline: Duration,
    attempt: impl FnOnce(&TxnProducer) -> KafkaResult<T> + Send + 'static,
) -> Result<KafkaResult<T>> {
    let (returned, outcome) = std::sync::mpsc::sync_channel(1);
    let producer = Arc::clone(producer);
    std::thread::Builder::new()
        .name(format!("fanout-txn-{call}"))
        .spawn(move || {
            // The receiver is gone when the call was given up: nothing to tell then.
            let _ = returned.send(attempt(&producer));
        })
        .map_err(|error| Error::Thread(format!("no thread for the {call} call: {error}")))?;
    outcome
        .recv_timeout(deadline)
        .map_err(|_| Error::TransactionHung {
            call,
            deadline_ms: deadline.as_millis() as u64,
        })
}

fn subscribe(
    kafka: &KafkaConfig,
    config: &FanoutConfig,
    subscription: &[String],
) -> Result<BaseConsumer<FanoutContext>> {
    let consumer: BaseConsumer<FanoutContext> = kafka
        // Static membership and the session timeout: see KafkaConfig::instance_id.
        .group_member_config(&config.group_id, "fanout")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Pipelines may publish transactionally; never fan out an aborted event.
        .set("isolation.level", "read_committed")
        .set(
            "statistics.interval.ms",
            dispatch_kafka::lag::statistics_interval(kafka),
        )
        .create_with_context(FanoutContext {
            group: config.group_id.clone(),
            topic_prefix: kafka.topic_prefix.clone(),
            ..FanoutContext::default()
        })
        .map_err(Error::Kafka)?;
    let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(Error::Kafka)?;
    Ok(consumer)
}

/// The offsets to commit: the next one after the last record of each partition.
fn next_offsets(batch: &[BorrowedMessage<'_>]) -> TopicPartitionList {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = next
            .entry((message.topic().to_owned(), message.partition()))
            .or_insert(0);
        *entry = (*entry).max(message.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        // Adding a partition to a fresh list cannot fail for a valid offset.
        let _ = list.add_partition_offset(&topic, partition, Offset::Offset(offset));
    }
    list
}
