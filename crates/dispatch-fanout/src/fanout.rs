//! The fan-out loop: read domain events in consumer group `dispatch-fanout`, and in one Kafka
//! transaction per batch produce every delivery task and every quarantined record together with
//! the input offsets. A batch is either entirely in Kafka (tasks visible to `read_committed`
//! readers, offsets committed) or not at all, so a crash at any point yields each
//! (event, subscription) pair exactly once.
//!
//! The loop runs on a dedicated OS thread: every transactional librdkafka call blocks (a commit
//! waits for the brokers), and blocking belongs off the async workers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use dispatch_kafka::KafkaConfig;
use dispatch_kafka::quarantine::{self, QuarantineInfo};
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::topics::TopicNames;
use dispatch_proto::prost::Message as _;
use dispatch_telemetry::names;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tracing::{debug, error, info, warn};

use crate::plan::{self, PlannedDelivery, Quarantine};
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
    /// Longest time a batch collects records before it is committed, in milliseconds.
    pub batch_max_ms: u64,
    /// `transaction.timeout.ms` of the producer.
    pub transaction_timeout_ms: u64,
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
    group: String,
    topic_prefix: String,
}

impl ClientContext for FanoutContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
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

/// A ready fan-out: clients created, transactions initialised, subscribed.
pub struct Fanout {
    consumer: BaseConsumer<FanoutContext>,
    producer: ThreadedProducer<DefaultProducerContext>,
    view: Arc<SubscriptionView>,
    names: TopicNames,
    lanes: BTreeSet<String>,
    config: FanoutConfig,
    request_timeout: Duration,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Counts of one committed batch (returned for tests and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BatchCounts {
    records: usize,
    deliveries: usize,
    quarantined: usize,
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
        let producer: ThreadedProducer<DefaultProducerContext> = kafka
            .client_config()
            .set("transactional.id", config.effective_transactional_id())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            // Right after a commit the coordinator may answer the next transaction's
            // AddPartitionsToTxn / AddOffsetsToTxn with CONCURRENT_TRANSACTIONS until the
            // markers are written; librdkafka retries after retry.backoff.ms (100 ms by default).
            .set("retry.backoff.ms", "10")
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout_ms.to_string(),
            )
            .create()
            .map_err(Error::Kafka)?;
        let request_timeout = kafka.request_timeout();
        producer
            .init_transactions(request_timeout)
            .map_err(Error::Kafka)?;

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
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(Error::Kafka)?;
        info!(topics = ?subscription, transactional_id = %config.effective_transactional_id(), "fan-out subscribed");

        Ok(Fanout {
            consumer,
            producer,
            view,
            names,
            lanes: lanes.into_iter().collect(),
            config,
            request_timeout,
        })
    }

    /// Runs until `stop` is set, then finishes the open transaction and leaves the group.
    /// Blocking: run it on its own thread. Returns an error only for what a restart must fix
    /// (a fenced producer, a fatal client error).
    pub fn run_blocking(self, stop: &AtomicBool) -> Result<()> {
        let batch_wait = Duration::from_millis(self.config.batch_max_ms);
        while !stop.load(Ordering::SeqCst) {
            let batch = self.collect_batch(batch_wait, stop)?;
            if batch.is_empty() {
                continue;
            }
            match self.process_batch(&batch) {
                Ok(counts) => debug!(?counts, "batch committed"),
                Err(TransactionFailure::Fatal(error)) => {
                    error!(%error, "fan-out transaction failed fatally; exiting");
                    return Err(Error::Kafka(error));
                }
                Err(TransactionFailure::Retry(error)) => {
                    warn!(%error, records = batch.len(), "fan-out transaction failed; aborting, the batch will be read again");
                    self.abort();
                    self.rewind(&batch);
                }
            }
        }
        info!("fan-out stopping; leaving the group");
        Ok(())
    }

    /// Polls until the batch is full, `wait` passed since its first record, or `stop`.
    /// A rebalance during collection drops the partial batch: its partitions may have a new
    /// owner, which reads them again from the committed offsets.
    fn collect_batch<'a>(
        &'a self,
        wait: Duration,
        stop: &AtomicBool,
    ) -> Result<Vec<BorrowedMessage<'a>>> {
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        self.consumer
            .context()
            .rebalanced
            .store(false, Ordering::SeqCst);
        while batch.len() < self.config.batch_max_records && !stop.load(Ordering::SeqCst) {
            let timeout = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(100),
            };
            if deadline.is_some() && timeout.is_zero() {
                break;
            }
            match self.consumer.poll(timeout) {
                Some(Ok(message)) => {
                    metrics::counter!(names::FANOUT_EVENTS_CONSUMED_TOTAL, "topic" => self.topic_label(message.topic())).increment(1);
                    deadline.get_or_insert_with(|| Instant::now() + wait);
                    batch.push(message);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) if is_fatal(&error) => return Err(Error::Kafka(error)),
                Some(Err(error)) => warn!(%error, "consumer error"),
                None => {}
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
                deadline = None;
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

    fn process_batch(
        &self,
        batch: &[BorrowedMessage<'_>],
    ) -> Result<BatchCounts, TransactionFailure> {
        let started = Instant::now();
        self.producer
            .begin_transaction()
            .map_err(TransactionFailure::classify)?;
        let mut counts = BatchCounts {
            records: batch.len(),
            ..BatchCounts::default()
        };
        let mut invalid_reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut produced_by_family: BTreeMap<String, u64> = BTreeMap::new();
        let mut unmatched = 0u64;
        let now = SystemTime::now();
        for message in batch {
            match self.plan_record(message, now) {
                Ok(deliveries) => {
                    if deliveries.is_empty() {
                        unmatched += 1;
                    }
                    for delivery in deliveries {
                        let family = delivery
                            .task
                            .event_type
                            .split('.')
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let value = delivery.task.encode_to_vec();
                        self.send(
                            BaseRecord::to(&delivery.topic)
                                .key(delivery.task.subscription_id.as_bytes())
                                .payload(&value),
                        )?;
                        *produced_by_family.entry(family).or_default() += 1;
                        counts.deliveries += 1;
                    }
                }
                Err(quarantine) => {
                    self.quarantine(message, &quarantine)?;
                    *invalid_reasons.entry(quarantine.reason).or_default() += 1;
                    counts.quarantined += 1;
                }
            }
        }

        let offsets = next_offsets(batch);
        // Without group metadata (no current generation) the offsets cannot join the
        // transaction; abort and read the batch again once the group settled.
        let group = self
            .consumer
            .group_metadata()
            .ok_or(TransactionFailure::Retry(KafkaError::MessageConsumption(
                RDKafkaErrorCode::Fail,
            )))?;
        let commit_started = Instant::now();
        self.producer
            .send_offsets_to_transaction(&offsets, &group, self.request_timeout)
            .map_err(TransactionFailure::classify)?;
        let offsets_sent = commit_started.elapsed();
        self.wait_until_delivered();
        self.producer
            .commit_transaction(self.request_timeout)
            .map_err(TransactionFailure::classify)?;
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
        Ok(counts)
    }

    /// Waits until every produced record is acknowledged, polling briefly. rust-rdkafka's
    /// `commit_transaction` flushes first, and its flush sleeps in 100 ms polls while the
    /// producer's own thread serves the delivery reports — a fixed 100 ms per transaction that
    /// dominated small batches (measured: docs/benchmarks.md). With nothing outstanding its
    /// flush returns at once.
    fn wait_until_delivered(&self) {
        let deadline = Instant::now() + self.request_timeout;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
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

    /// The original record, untouched, to `dispatch.invalid`, with headers naming the error and
    /// where the record came from.
    fn quarantine(
        &self,
        message: &BorrowedMessage<'_>,
        quarantine: &Quarantine,
    ) -> Result<(), TransactionFailure> {
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
        let mut record = BaseRecord::<[u8], [u8]>::to(&invalid_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.send(record)
    }

    /// Enqueues a record in the open transaction, waiting while the local queue is full.
    fn send<'r>(&self, mut record: BaseRecord<'r, [u8], [u8]>) -> Result<(), TransactionFailure> {
        // A queue that stays full means the brokers are not taking records (a leader lost,
        // acks=all waiting for replicas): waiting longer than a request would not help, and
        // an unbounded wait here would never look at the stop flag. Abort and read the batch
        // again instead. (The clock is read only once the queue is full: this runs per record.)
        let mut deadline = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + self.request_timeout);
                    if Instant::now() > deadline {
                        warn!("producer queue full for a whole request timeout");
                        return Err(TransactionFailure::Retry(KafkaError::MessageProduction(
                            RDKafkaErrorCode::QueueFull,
                        )));
                    }
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(TransactionFailure::classify(error)),
            }
        }
    }

    fn abort(&self) {
        metrics::counter!(names::FANOUT_TRANSACTIONS_TOTAL, "result" => "abort").increment(1);
        if let Err(error) = self.producer.abort_transaction(self.request_timeout) {
            warn!(%error, "abort_transaction failed");
        }
    }

    /// After an abort: read the batch again from its first offset in each partition (everything
    /// before it is committed: our own transactions committed it).
    fn rewind(&self, batch: &[BorrowedMessage<'_>]) {
        let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for message in batch {
            first
                .entry((message.topic().to_owned(), message.partition()))
                .and_modify(|offset| *offset = (*offset).min(message.offset()))
                .or_insert(message.offset());
        }
        for ((topic, partition), offset) in first {
            if let Err(error) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                self.request_timeout,
            ) {
                // The partition may have been revoked meanwhile; its next owner starts from the
                // committed offset, which is what we wanted anyway.
                warn!(%error, topic, partition, offset, "rewind failed");
            }
        }
    }
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

fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::Fenced)
        ),
    }
}

/// How a transaction failed: retry the batch after an abort, or stop the process.
#[derive(Debug)]
enum TransactionFailure {
    Retry(KafkaError),
    Fatal(KafkaError),
}

impl TransactionFailure {
    fn classify(error: KafkaError) -> Self {
        if is_fatal(&error) {
            TransactionFailure::Fatal(error)
        } else {
            TransactionFailure::Retry(error)
        }
    }
}
