//! One outbox for every Kafka write of every role — the sender's attempt records, retry tasks,
//! dead letters and quarantined records, the admin API's subscription records, replays, test
//! events and dead-letter tombstones, `dispatchd publish`'s events: one producer path, one
//! place that classifies produce errors ([`classify`]), one retry policy, capping, readiness and
//! the replacement of a producer that knows no broker.
//!
//! # Two ways to write
//! - [`Outbox::write`] retries until Kafka acknowledges the record, never dropping it: for the
//!   sender, whose caller finishes a delivery's source offset only after the write returned, so
//!   a write that cannot succeed *pins* its partition's commit position behind it. That is the
//!   safe direction — a stuck write delays, it never loses — and the reason it must be visible
//!   rather than silent: each failure is counted, and a `/readyz` component
//!   ([`Outbox::report_readiness`]) is not ready while any write keeps failing.
//! - [`Outbox::try_write`] is bounded for callers that answer someone (an API request, a CLI):
//!   it gives up with the classified error ([`WriteError`]) once an operator is needed, capping
//!   cannot help, or the `kafka.request_timeout_ms` it may take has passed.
//!
//! Both return where the record landed ([`Written`]): the admin API waits for its subscription
//! view to apply that offset.
//!
//! # What is fixed from here
//! `message too large` learns the topic's `max.message.bytes` (or, failing that, halves the
//! budget) and caps the record's unbounded fields ([`Cappable`]) — response excerpt, error
//! strings, attempt summaries — never a webhook body, which a replay needs whole; an
//! `invalid record` is capped to the minimum once. A capped record says so in its
//! [`HEADER_TRUNCATED`] header. What needs an operator (a missing topic, a denied ACL) or passes
//! by itself (timeouts, leader changes) is retried with exponential backoff.
//!
//! # The producer
//! Idempotent and `acks=all` ([`KafkaConfig::watched_reliable_producer`]). A task checks every
//! second whether it still knows a broker: librdkafka 2.12 can leave a producer knowing none
//! after a stalled broker resumed (librdkafka#5301), and then every write fails until the
//! process restarts (a broker-freeze test run: 840 of 940 webhooks undelivered while the
//! sender's writes waited). After the stuck bound the producer is replaced, and what waited in
//! the old one is purged so its writes are made again through the new one.
//!
//! # Metrics
//! Per [`Writer`]: the sender's failures and replacements under
//! `dispatch_sender_produce_failures_total{topic,reason}` and
//! `dispatch_sender_producer_replaced_total`, the admin API's under `dispatch_api_…`; a one-shot
//! tool (`dispatchd publish`) exports none and is told through its errors.
//!
//! # Not here
//! The fan-out's transactional producer (`dispatch-fanout`): a transaction commits its tasks
//! together with the consumed offsets, or aborts them all — a different protocol, with its own
//! fencing and abort handling, that a record-at-a-time outbox must not hide.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use dispatch_proto::dispatch::v1::next_action::Action;
use dispatch_proto::dispatch::v1::{AttemptRecord, AttemptSummary, DeadLetter, DeliveryTask};
use dispatch_proto::prost::Message;
use dispatch_telemetry::{ReadinessFlag, names};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::KafkaConfig;
use crate::admin::TopicAdmin;
use crate::client::WatchedProducer;
use crate::group_health::{retire, stuck_after};
use crate::topics::TopicNames;

/// Header on a record that was capped to fit its topic: the fields that were cut, comma
/// separated (`response_excerpt,error`, `value` for a quarantined record's bytes).
pub const HEADER_TRUNCATED: &str = "dispatch-truncated";

/// Appended to a string that was cut, so a reader sees it is not the whole text.
pub const TRUNCATION_MARK: &str = " …[truncated]";

/// The budget before anything was learned about a topic: librdkafka's own `message.max.bytes`
/// default, which it enforces before sending.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// What a record needs besides its value under the topic's `max.message.bytes` (which limits
/// the whole record batch): batch and record headers, the key (an id) and our headers.
const RECORD_OVERHEAD_BYTES: usize = 512;

/// The smallest value budget capping goes down to; below it only ids and numbers are left.
const MIN_VALUE_BUDGET_BYTES: usize = 256;

/// Longest error string kept per attempt summary when a task or dead letter is capped.
const CAPPED_SUMMARY_ERROR_BYTES: usize = 200;

/// First pause before a failed write is tried again; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between tries of a failing write.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the producer is checked for knowing no broker.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What a produce error means for the record that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceErrorClass {
    /// Larger than the topic or the client accepts: cap it and produce it again.
    TooLarge,
    /// The broker refuses its contents: cap it to the minimum and produce it again.
    Rejected,
    /// Fails until an operator acts (missing topic, denied ACL, broker policy, a fatal
    /// producer state): retried with backoff, visible meanwhile.
    NeedsOperator,
    /// Passes by itself (timeouts, leader elections, a full queue): retried with backoff.
    Transient,
}

/// A classified produce error: what to do, and the bounded `reason` label it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceFailure {
    /// What to do about it.
    pub class: ProduceErrorClass,
    /// The bounded `reason` label the failure is counted under.
    pub reason: &'static str,
}

/// Classifies a produce error — the one place that decides what a failed write does next.
pub fn classify(error: &KafkaError) -> ProduceFailure {
    use ProduceErrorClass::{NeedsOperator, Rejected, TooLarge, Transient};
    use RDKafkaErrorCode as Code;
    let (class, reason) = match error.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::MessageBatchTooLarge) => {
            (TooLarge, "message_too_large")
        }
        Some(
            Code::InvalidRecord
            | Code::InvalidMessage
            | Code::InvalidMessageSize
            | Code::BadMessage
            | Code::InvalidArgument,
        ) => (Rejected, "invalid_record"),
        Some(
            Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::Authentication,
        ) => (NeedsOperator, "authorization"),
        Some(Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition) => {
            (NeedsOperator, "unknown_topic")
        }
        Some(Code::PolicyViolation | Code::InvalidRequiredAcks | Code::UnsupportedVersion) => {
            (NeedsOperator, "refused_by_broker")
        }
        Some(Code::Fatal | Code::Fenced | Code::InvalidProducerEpoch) => (NeedsOperator, "fatal"),
        Some(Code::MessageTimedOut | Code::RequestTimedOut | Code::OperationTimedOut) => {
            (Transient, "timed_out")
        }
        Some(Code::QueueFull) => (Transient, "queue_full"),
        Some(
            Code::NotEnoughReplicas | Code::NotEnoughReplicasAfterAppend | Code::ISRInsufficient,
        ) => (Transient, "not_enough_replicas"),
        Some(
            Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::AllBrokersDown
            | Code::BrokerTransportFailure
            | Code::KafkaStorageError,
        ) => (Transient, "broker_unavailable"),
        _ => (Transient, "other"),
    };
    ProduceFailure { class, reason }
}

/// The value budget for a topic whose `max.message.bytes` is `topic_limit_bytes`, after a record
/// of `failed_len_bytes` was refused as too large: the topic's limit less the overhead if that
/// is below what failed, else half of what failed (the limit is then elsewhere: the client's
/// `message.max.bytes`, a broker default). Never below [`MIN_VALUE_BUDGET_BYTES`]; `None` when
/// it would not shrink (capping cannot help any more).
pub fn next_budget(
    topic_limit_bytes: Option<usize>,
    failed_len_bytes: usize,
    current_budget_bytes: usize,
) -> Option<usize> {
    let from_limit = topic_limit_bytes
        .map(|limit| limit.saturating_sub(RECORD_OVERHEAD_BYTES))
        .filter(|budget| *budget < failed_len_bytes);
    let next = from_limit
        .unwrap_or(failed_len_bytes / 2)
        .min(current_budget_bytes)
        .max(MIN_VALUE_BUDGET_BYTES);
    (next < failed_len_bytes && next < current_budget_bytes).then_some(next)
}

/// Cuts `text` to at most `max_bytes` (on a character boundary), marked with
/// [`TRUNCATION_MARK`] (emptied when not even the mark fits); false when it already fit.
fn cut(text: &mut String, max_bytes: usize) -> bool {
    if text.len() <= max_bytes {
        return false;
    }
    if max_bytes < TRUNCATION_MARK.len() {
        text.clear();
        return true;
    }
    let mut end = max_bytes.saturating_sub(TRUNCATION_MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATION_MARK);
    true
}

/// Cuts `text` so that a record now `len` bytes long loses at least `excess` bytes, if it can.
fn cut_by(text: &mut String, excess: usize) -> bool {
    cut(
        text,
        text.len().saturating_sub(excess + TRUNCATION_MARK.len()),
    )
}

/// Error strings of attempt summaries cut short, then every summary but the first and the last
/// dropped (the full history is in `dispatch.attempts`).
fn cap_summaries(
    summaries: &mut Vec<AttemptSummary>,
    fits: impl Fn(&[AttemptSummary]) -> bool,
    cut_fields: &mut Vec<&'static str>,
) {
    if fits(summaries) {
        return;
    }
    let mut any = false;
    for summary in summaries.iter_mut() {
        any |= cut(&mut summary.error, CAPPED_SUMMARY_ERROR_BYTES);
    }
    if any {
        cut_fields.push("attempt_errors");
    }
    if !fits(summaries) && summaries.len() > 2 {
        let last = summaries.pop();
        summaries.truncate(1);
        summaries.extend(last);
        cut_fields.push("attempt_summaries");
    }
}

/// A record whose unbounded fields can be cut to fit a topic.
pub trait Cappable: Message + Clone {
    /// Cuts unbounded fields until the encoded record is at most `budget_bytes` (or nothing is
    /// left to cut); returns the names of the fields cut, empty when it already fit.
    fn cap_to(&mut self, budget_bytes: usize) -> Vec<&'static str>;
}

impl Cappable for AttemptRecord {
    fn cap_to(&mut self, budget_bytes: usize) -> Vec<&'static str> {
        let mut cut_fields = Vec::new();
        let excess = |record: &AttemptRecord| record.encoded_len().saturating_sub(budget_bytes);
        let over = excess(self);
        if over > 0 && cut_by(&mut self.response_excerpt, over) {
            cut_fields.push("response_excerpt");
        }
        let over = excess(self);
        if over > 0 && cut_by(&mut self.error, over) {
            cut_fields.push("error");
        }
        let over = excess(self);
        if over > 0
            && let Some(Action::Dead(dead)) = self
                .next_action
                .as_mut()
                .and_then(|next| next.action.as_mut())
            && cut_by(&mut dead.reason, over)
        {
            cut_fields.push("dead_reason");
        }
        cut_fields
    }
}

impl Cappable for DeliveryTask {
    fn cap_to(&mut self, budget_bytes: usize) -> Vec<&'static str> {
        // The body is never cut: the next attempt (or a replay) sends it.
        let mut cut_fields = Vec::new();
        let others = self.encoded_len() - summaries_len(&self.attempts);
        cap_summaries(
            &mut self.attempts,
            |summaries| others + summaries_len(summaries) <= budget_bytes,
            &mut cut_fields,
        );
        cut_fields
    }
}

impl Cappable for DeadLetter {
    fn cap_to(&mut self, budget_bytes: usize) -> Vec<&'static str> {
        // The task's body is never cut: a replay sends it. The reason is cut last: it is what
        // an operator reads first.
        let mut cut_fields = Vec::new();
        if self.encoded_len() <= budget_bytes {
            return cut_fields;
        }
        // The task's own summaries repeat the letter's.
        if let Some(task) = self.task.as_mut()
            && !task.attempts.is_empty()
        {
            task.attempts.clear();
            cut_fields.push("task_attempts");
        }
        let others = self.encoded_len() - summaries_len(&self.attempts);
        cap_summaries(
            &mut self.attempts,
            |summaries| others + summaries_len(summaries) <= budget_bytes,
            &mut cut_fields,
        );
        let excess = self.encoded_len().saturating_sub(budget_bytes);
        if excess > 0 && cut_by(&mut self.reason, excess) {
            cut_fields.push("reason");
        }
        cut_fields
    }
}

/// Encoded bytes of a repeated summaries field (tag and length prefix included).
fn summaries_len(summaries: &[AttemptSummary]) -> usize {
    summaries
        .iter()
        .map(|summary| {
            let len = summary.encoded_len();
            1 + dispatch_proto::prost::encoding::encoded_len_varint(len as u64) + len
        })
        .sum()
}

/// Cuts raw bytes (a quarantined record's value) to `budget_bytes`.
pub fn cap_bytes(value: &mut Vec<u8>, budget_bytes: usize) -> Vec<&'static str> {
    if value.len() <= budget_bytes {
        return Vec::new();
    }
    value.truncate(budget_bytes);
    vec!["value"]
}

/// Which role writes through an outbox: names its metrics and its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The sender: `dispatch_sender_produce_failures_total`,
    /// `dispatch_sender_producer_replaced_total`.
    Sender,
    /// The admin API: `dispatch_api_produce_failures_total`,
    /// `dispatch_api_producer_replaced_total`.
    Api,
    /// A one-shot tool (`dispatchd publish`, the benchmark's set-up, tests): no metrics
    /// endpoint to count on, so nothing is counted; its errors tell.
    Tool,
}

impl Writer {
    /// The name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Writer::Sender => "sender",
            Writer::Api => "api",
            Writer::Tool => "tool",
        }
    }

    fn failures_metric(self) -> Option<&'static str> {
        match self {
            Writer::Sender => Some(names::SENDER_PRODUCE_FAILURES_TOTAL),
            Writer::Api => Some(names::API_PRODUCE_FAILURES_TOTAL),
            Writer::Tool => None,
        }
    }

    fn replaced_metric(self) -> Option<&'static str> {
        match self {
            Writer::Sender => Some(names::SENDER_PRODUCER_REPLACED_TOTAL),
            Writer::Api => Some(names::API_PRODUCER_REPLACED_TOTAL),
            Writer::Tool => None,
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Its partition.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// A write [`Outbox::try_write`] gave up on; nothing may be assumed written.
#[derive(Debug, thiserror::Error)]
#[error("write to {topic} failed ({}): {source}", .failure.reason)]
pub struct WriteError {
    /// The topic (full name).
    pub topic: String,
    /// What the last error means.
    pub failure: ProduceFailure,
    /// The last error.
    #[source]
    pub source: KafkaError,
}

/// The encoded value for a budget, and the fields cut to get there.
type Encoded = (Option<Vec<u8>>, Vec<&'static str>);

/// A record's value, as the write loop needs it.
enum Value<'a> {
    /// A tombstone: no value at all.
    Tombstone,
    /// Bytes that go whole or not at all (an event, a subscription, an already encoded record).
    Whole(Vec<u8>),
    /// Raw bytes cut to the budget when too large (a quarantined record's value).
    Cuttable(&'a [u8]),
    /// A message capped to the budget ([`Cappable`]).
    Capped(Box<dyn Fn(usize) -> Encoded + Send + Sync + 'a>),
}

impl Value<'_> {
    fn cappable(&self) -> bool {
        matches!(self, Value::Cuttable(_) | Value::Capped(_))
    }

    fn encode(&self, budget_bytes: usize) -> Encoded {
        match self {
            Value::Tombstone => (None, Vec::new()),
            Value::Whole(bytes) => (Some(bytes.clone()), Vec::new()),
            Value::Cuttable(bytes) => {
                let mut bytes = bytes.to_vec();
                let cut_fields = cap_bytes(&mut bytes, budget_bytes);
                (Some(bytes), cut_fields)
            }
            Value::Capped(encode) => encode(budget_bytes),
        }
    }
}

/// One record for [`Outbox::write`] or [`Outbox::try_write`]: topic (full name), key, value,
/// and optionally headers and a partition (else the key's hash picks it).
pub struct OutboxRecord<'a> {
    topic: &'a str,
    key: Option<&'a [u8]>,
    partition: Option<i32>,
    headers: Option<OwnedHeaders>,
    value: Value<'a>,
}

impl std::fmt::Debug for OutboxRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRecord")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl<'a> OutboxRecord<'a> {
    fn new(topic: &'a str, key: Option<&'a [u8]>, value: Value<'a>) -> Self {
        OutboxRecord {
            topic,
            key,
            partition: None,
            headers: None,
            value,
        }
    }

    /// `record`, capped to fit the topic if it refuses it as too large (and marked).
    pub fn capped<K, R>(topic: &'a str, key: &'a K, record: R) -> Self
    where
        K: AsRef<[u8]> + ?Sized,
        R: Cappable + 'a,
    {
        let encode = move |budget_bytes: usize| {
            let mut capped = record.clone();
            let cut_fields = capped.cap_to(budget_bytes);
            (Some(capped.encode_to_vec()), cut_fields)
        };
        Self::new(topic, Some(key.as_ref()), Value::Capped(Box::new(encode)))
    }

    /// `value` whole: nothing of it may be cut (an event, a subscription, encoded bytes). A
    /// refusal as too large is not fixed from here.
    pub fn whole<K: AsRef<[u8]> + ?Sized>(topic: &'a str, key: &'a K, value: Vec<u8>) -> Self {
        Self::new(topic, Some(key.as_ref()), Value::Whole(value))
    }

    /// A tombstone for `key`: compaction removes the key, readers forget it.
    pub fn tombstone<K: AsRef<[u8]> + ?Sized>(topic: &'a str, key: &'a K) -> Self {
        Self::new(topic, Some(key.as_ref()), Value::Tombstone)
    }

    /// A quarantined record (its headers say why and where from): its value is cut to fit the
    /// topic if needed (an absent value is written empty).
    pub fn quarantined(
        topic: &'a str,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: OwnedHeaders,
    ) -> Self {
        let mut record = Self::new(topic, key, Value::Cuttable(value.unwrap_or_default()));
        record.headers = Some(headers);
        record
    }

    /// Writes to `partition` rather than where the key's hash would.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// A Kafka producer and what it learned about its writes: value budgets per topic, the writes
/// failing now, and the readiness component that shows them (see the module documentation).
/// Cheap to clone: clones share all of it.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<OutboxInner>,
}

struct OutboxInner {
    writer: Writer,
    /// Replaced when librdkafka left it knowing no broker (see the module documentation); each
    /// write takes the current one.
    producer: RwLock<Arc<WatchedProducer>>,
    /// What a replacement producer is made from.
    kafka: KafkaConfig,
    /// Asks a topic's `max.message.bytes` after a record was refused as too large.
    admin: TopicAdmin,
    /// Value budgets learned per topic (full name).
    budgets: Mutex<HashMap<String, usize>>,
    failing: Mutex<FailingWrites>,
}

#[derive(Default)]
struct FailingWrites {
    next_id: u64,
    writes: BTreeMap<u64, FailingWrite>,
    readiness: Option<ReadinessFlag>,
}

struct FailingWrite {
    topic: String,
    error: String,
    since: Instant,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("writer", &self.inner.writer)
            .field("topic_prefix", &self.inner.kafka.topic_prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every write replaces whole entries; a panic elsewhere leaves nothing half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    /// The idempotent `acks=all` producer of `kafka` for `writer`, and an admin client to learn
    /// topic limits (no request is made yet). Inside a tokio runtime, a task watches the
    /// producer for knowing no broker until the last clone is dropped; outside one it is not
    /// watched (logged).
    pub fn new(kafka: &KafkaConfig, writer: Writer) -> crate::Result<Self> {
        let outbox = Outbox {
            inner: Arc::new(OutboxInner {
                writer,
                producer: RwLock::new(Arc::new(kafka.watched_reliable_producer()?)),
                kafka: kafka.clone(),
                admin: TopicAdmin::new(kafka)?,
                budgets: Mutex::new(HashMap::new()),
                failing: Mutex::new(FailingWrites::default()),
            }),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(watch_producer(
                    Arc::downgrade(&outbox.inner),
                    stuck_after(kafka.session_timeout()),
                ));
            }
            Err(_) => warn!(
                writer = writer.name(),
                "an outbox made outside a tokio runtime: its producer is not watched for knowing no broker"
            ),
        }
        Ok(outbox)
    }

    /// The role writing through this outbox.
    pub fn writer(&self) -> Writer {
        self.inner.writer
    }

    /// The topic names under the configured prefix.
    pub fn topic_names(&self) -> TopicNames {
        TopicNames::new(self.inner.kafka.topic_prefix.clone())
    }

    /// The producer writes go through now.
    fn producer(&self) -> Arc<WatchedProducer> {
        Arc::clone(
            &self
                .inner
                .producer
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Reports through `flag` from now on: not ready while any write keeps failing, with a
    /// reason naming the topic and the error.
    pub fn report_readiness(&self, flag: ReadinessFlag) {
        let mut failing = lock(&self.inner.failing);
        failing.readiness = Some(flag);
        failing.update_readiness();
    }

    /// Topics with a write failing now, and the last error of each (for tests and logs).
    pub fn failing_topics(&self) -> BTreeMap<String, String> {
        lock(&self.inner.failing)
            .writes
            .values()
            .map(|write| (write.topic.clone(), write.error.clone()))
            .collect()
    }

    /// Produces `record` until Kafka acknowledges it, capped to fit if its topic refuses it as
    /// too large and it can be capped. Never gives up: a caller that must not lose the record
    /// holds what depends on it (a source offset) until this returns.
    pub async fn write(&self, record: OutboxRecord<'_>) -> Written {
        match self.produce(record, None).await {
            Ok(written) => written,
            // Without a deadline the loop returns only once acknowledged.
            Err(error) => unreachable!("a write without a deadline gave up: {error}"),
        }
    }

    /// Produces `record` as [`Outbox::write`] does, but gives up with the classified error
    /// when retrying cannot help by itself (an operator is needed, or the record is too large
    /// and cannot be capped further) or `kafka.request_timeout_ms` has passed — for callers
    /// that answer someone. On an error nothing may be assumed written.
    pub async fn try_write(&self, record: OutboxRecord<'_>) -> Result<Written, WriteError> {
        let deadline = Instant::now() + self.inner.kafka.request_timeout();
        self.produce(record, Some(deadline)).await
    }

    /// The produce loop behind every write: until acknowledged, or until it gives up as
    /// [`Outbox::try_write`] says when there is a `deadline`.
    async fn produce(
        &self,
        record: OutboxRecord<'_>,
        deadline: Option<Instant>,
    ) -> Result<Written, WriteError> {
        let OutboxRecord {
            topic,
            key,
            partition,
            headers,
            value,
        } = record;
        let cappable = value.cappable();
        let label = self.label(topic);
        let writer = self.inner.writer.name();
        let mut budget = self.budget(topic);
        let mut backoff = BACKOFF_START;
        let mut failing: Option<FailingGuard> = None;
        loop {
            let (payload, cut_fields) = value.encode(budget);
            let cut_list = cut_fields.join(",");
            let mut record_headers = headers.clone();
            if !cut_fields.is_empty() {
                record_headers = Some(record_headers.unwrap_or_default().insert(Header {
                    key: HEADER_TRUNCATED,
                    value: Some(cut_list.as_str()),
                }));
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(topic);
            if let Some(payload) = &payload {
                record = record.payload(payload);
            }
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            if let Some(record_headers) = record_headers {
                record = record.headers(record_headers);
            }
            // Timeout::Never only concerns waiting for room in the local queue; the producer's
            // `message.timeout.ms` bounds how long one delivery may take.
            let error = match self.producer().producer.send(record, Timeout::Never).await {
                Ok(delivery) => {
                    if !cut_fields.is_empty() {
                        info!(writer, topic, budget, cut = %cut_list, "record capped to fit its topic, then written");
                    }
                    return Ok(Written {
                        partition: delivery.partition,
                        offset: delivery.offset,
                    });
                }
                Err((error, _)) => error,
            };
            let failure = classify(&error);
            if let Some(metric) = self.inner.writer.failures_metric() {
                metrics::counter!(metric, "topic" => label.clone(), "reason" => failure.reason)
                    .increment(1);
            }
            let bytes = payload.as_ref().map_or(0, Vec::len);
            match failure.class {
                ProduceErrorClass::TooLarge if cappable => {
                    if let Some(smaller) = self.shrink_budget(topic, bytes, budget).await {
                        warn!(%error, writer, topic, bytes, budget = smaller, "record too large for its topic; capping it");
                        budget = smaller;
                        continue;
                    }
                }
                ProduceErrorClass::Rejected if cappable && budget > MIN_VALUE_BUDGET_BYTES => {
                    warn!(%error, writer, topic, "record refused by the broker; capping it to the minimum");
                    budget = MIN_VALUE_BUDGET_BYTES;
                    continue;
                }
                _ => {}
            }
            if let Some(deadline) = deadline {
                let passes_by_itself = failure.class == ProduceErrorClass::Transient;
                if !passes_by_itself || Instant::now() + backoff >= deadline {
                    warn!(%error, writer, topic, reason = failure.reason, "produce failed; giving up (the caller is told)");
                    return Err(WriteError {
                        topic: topic.to_owned(),
                        failure,
                        source: error,
                    });
                }
            }
            // Nothing to fix from here: wait and try again. A caller that must not lose the
            // record holds what depends on it meanwhile (the sender: its source offset).
            failing
                .get_or_insert_with(|| self.start_failing(topic))
                .failed(&error);
            warn!(%error, writer, topic, reason = failure.reason, retry_in_ms = backoff.as_millis() as u64, "produce failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The metric label of `topic`: its name without the prefix (bounded: our topics only).
    fn label(&self, topic: &str) -> String {
        topic
            .strip_prefix(&self.inner.kafka.topic_prefix)
            .unwrap_or(topic)
            .to_owned()
    }

    fn budget(&self, topic: &str) -> usize {
        lock(&self.inner.budgets)
            .get(topic)
            .copied()
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES - RECORD_OVERHEAD_BYTES)
    }

    /// A smaller budget for `topic` after `failed_len` bytes were refused as too large, learned
    /// from the topic's `max.message.bytes` when the broker tells it. Only a budget from the
    /// topic's limit is remembered for later writes: a halved one is about this record (one
    /// whose body alone is over the limit must not shrink every later record's budget).
    async fn shrink_budget(&self, topic: &str, failed_len: usize, budget: usize) -> Option<usize> {
        let limit = match self.inner.admin.topic_configs(topic).await {
            Ok(configs) => configs
                .get("max.message.bytes")
                .cloned()
                .flatten()
                .and_then(|value| value.parse::<usize>().ok()),
            Err(error) => {
                warn!(%error, topic, "cannot read the topic's max.message.bytes; halving the record budget instead");
                None
            }
        };
        let next = next_budget(limit, failed_len, budget)?;
        if limit.is_some_and(|limit| limit.saturating_sub(RECORD_OVERHEAD_BYTES) == next) {
            lock(&self.inner.budgets).insert(topic.to_owned(), next);
        }
        Some(next)
    }

    fn start_failing(&self, topic: &str) -> FailingGuard {
        let mut failing = lock(&self.inner.failing);
        failing.next_id += 1;
        let id = failing.next_id;
        failing.writes.insert(
            id,
            FailingWrite {
                topic: topic.to_owned(),
                error: String::new(),
                since: Instant::now(),
            },
        );
        FailingGuard {
            outbox: self.clone(),
            id,
        }
    }
}

impl FailingWrites {
    fn update_readiness(&self) {
        let Some(flag) = &self.readiness else {
            return;
        };
        let Some(oldest) = self.writes.values().min_by_key(|write| write.since) else {
            flag.set_ready(true);
            return;
        };
        let mut topics: Vec<&str> = self
            .writes
            .values()
            .map(|write| write.topic.as_str())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        flag.set_not_ready(format!(
            "{} write(s) failing, to {}; what depends on them waits (a sender's source offsets stay unfinished, its partitions pinned); oldest to {} for {} s: {}",
            self.writes.len(),
            topics.join(", "),
            oldest.topic,
            oldest.since.elapsed().as_secs(),
            oldest.error,
        ));
    }
}

/// Replaces the outbox's producer once it has known no broker for `bound`, until the outbox is
/// dropped (see the module documentation).
async fn watch_producer(outbox: Weak<OutboxInner>, bound: Duration) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(outbox) = outbox.upgrade() else {
            return;
        };
        let writer = outbox.writer.name();
        let current = Arc::clone(
            &outbox
                .producer
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let Some(blind_for) = current
            .brokers
            .blind_for()
            .filter(|blind_for| *blind_for >= bound)
        else {
            continue;
        };
        let fresh = match outbox.kafka.watched_reliable_producer() {
            Ok(fresh) => fresh,
            Err(error) => {
                warn!(%error, writer, "an outbox's producer knows no broker, and a new one could not be made; trying again");
                continue;
            }
        };
        *outbox
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        warn!(
            writer,
            blind_s = blind_for.as_secs(),
            "an outbox's producer has known no broker of the cluster too long (librdkafka#5301): replaced; its pending writes are made again through the new one"
        );
        if let Some(metric) = outbox.writer.replaced_metric() {
            metrics::counter!(metric).increment(1);
        }
        // Pending writes fail at once (purged) instead of after message.timeout.ms, and their
        // loops try again with the new producer.
        current
            .producer
            .purge(PurgeConfig::default().queue().inflight());
        retire(current);
    }
}

/// One write that is failing; dropping it (success, given up, or the task ended) clears it.
struct FailingGuard {
    outbox: Outbox,
    id: u64,
}

impl FailingGuard {
    fn failed(&self, error: &KafkaError) {
        let mut failing = lock(&self.outbox.inner.failing);
        if let Some(write) = failing.writes.get_mut(&self.id) {
            write.error = error.to_string();
        }
        failing.update_readiness();
    }
}

impl Drop for FailingGuard {
    fn drop(&mut self) {
        let mut failing = lock(&self.outbox.inner.failing);
        if let Some(write) = failing.writes.remove(&self.id) {
            info!(topic = %write.topic, failing_for_s = write.since.elapsed().as_secs(), "a failing write went through or was given up");
        }
        failing.update_readiness();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_recorder::TestRecorder;
    use dispatch_proto::dispatch::v1::NextAction;
    use dispatch_proto::dispatch::v1::next_action::Dead;

    fn production(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    /// A real librdkafka producer whose bootstrap address answers nothing never learns a
    /// broker: its statistics say so every second, as after librdkafka#5301.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_that_knows_no_broker_is_replaced_after_the_bound() {
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9".to_owned(),
            ..KafkaConfig::default()
        };
        let outbox = Outbox::new(&kafka, Writer::Sender).expect("outbox");
        let first = outbox.producer();
        // The outbox's own watch waits the stuck bound (at least 20 s); this one 2 s.
        tokio::spawn(watch_producer(
            Arc::downgrade(&outbox.inner),
            Duration::from_secs(2),
        ));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Arc::ptr_eq(&first, &outbox.producer()) {
            assert!(
                Instant::now() < deadline,
                "the producer was not replaced; blind for {:?}",
                first.brokers.blind_for()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            first.brokers.blind_for() >= Some(Duration::from_secs(2)),
            "replaced only once blind for the bound"
        );
    }

    /// An outbox on a bootstrap address that answers nothing, bounded by `request_timeout_ms`.
    fn outbox_without_broker(writer: Writer, request_timeout_ms: u64) -> Outbox {
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9".to_owned(),
            request_timeout_ms,
            ..KafkaConfig::default()
        };
        Outbox::new(&kafka, writer).expect("outbox")
    }

    /// librdkafka refuses a value over its `message.max.bytes` before sending: a value that
    /// must go whole cannot be helped, so a bounded write gives up at once, classified and
    /// counted, and leaves nothing failing behind.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bounded_write_that_cannot_be_helped_gives_up_at_once_with_the_classified_error() {
        let recorder = TestRecorder::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let outbox = outbox_without_broker(Writer::Api, 30_000);
        let started = Instant::now();
        let error = outbox
            .try_write(OutboxRecord::whole(
                "dispatch.deliveries",
                "sub_1",
                vec![b'x'; 2 * DEFAULT_MAX_RECORD_BYTES],
            ))
            .await
            .expect_err("too large, and nothing may be cut");
        assert_eq!(
            error.failure,
            ProduceFailure {
                class: ProduceErrorClass::TooLarge,
                reason: "message_too_large"
            }
        );
        assert_eq!(error.topic, "dispatch.deliveries");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not retried: {:?}",
            started.elapsed()
        );
        assert_eq!(
            recorder.counter(
                "dispatch_api_produce_failures_total{topic=dispatch.deliveries,reason=message_too_large}"
            ),
            1
        );
        assert!(outbox.failing_topics().is_empty());
    }

    /// A failure that passes by itself is retried only while the deadline allows: with no
    /// broker, the record times out in librdkafka (its `message.timeout.ms`, at least 5 s) and
    /// the bounded write gives up then, instead of retrying as an unbounded write would.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bounded_write_gives_up_on_a_passing_failure_once_its_deadline_passed() {
        let outbox = outbox_without_broker(Writer::Tool, 1_000);
        let started = Instant::now();
        let error = outbox
            .try_write(OutboxRecord::tombstone("dispatch.dlq", "dlv_1"))
            .await
            .expect_err("no broker");
        assert_eq!(error.failure.class, ProduceErrorClass::Transient);
        assert_eq!(error.failure.reason, "timed_out", "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "given up after one delivery timeout: {:?}",
            started.elapsed()
        );
        assert!(outbox.failing_topics().is_empty());
    }

    /// An unbounded write keeps the record and shows the topic as failing until it goes
    /// through; dropping the write (its task ended) clears it.
    #[tokio::test(flavor = "current_thread")]
    async fn an_unbounded_write_keeps_trying_and_shows_the_failing_topic() {
        let outbox = outbox_without_broker(Writer::Tool, 1_000);
        let write = outbox.write(OutboxRecord::whole(
            "dispatch.attempts",
            "sub_1",
            vec![b'x'; 2 * DEFAULT_MAX_RECORD_BYTES],
        ));
        let timed_out = tokio::time::timeout(Duration::from_secs(1), write).await;
        assert!(timed_out.is_err(), "never given up");
        // The write was dropped with the timeout: nothing is failing any more.
        assert!(outbox.failing_topics().is_empty());
        let write = outbox.write(OutboxRecord::whole(
            "dispatch.attempts",
            "sub_1",
            vec![b'x'; 2 * DEFAULT_MAX_RECORD_BYTES],
        ));
        tokio::pin!(write);
        let _ = tokio::time::timeout(Duration::from_millis(300), &mut write).await;
        let failing = outbox.failing_topics();
        assert_eq!(
            failing.keys().collect::<Vec<_>>(),
            ["dispatch.attempts"],
            "{failing:?}"
        );
        assert!(
            failing["dispatch.attempts"].contains("too large"),
            "{failing:?}"
        );
    }

    #[test]
    fn records_carry_their_value_as_the_write_needs_it() {
        let tombstone = OutboxRecord::tombstone("t", "k").partition(0);
        assert_eq!(tombstone.partition, Some(0));
        assert!(!tombstone.value.cappable());
        assert_eq!(tombstone.value.encode(10), (None, Vec::new()));
        let whole = OutboxRecord::whole("t", "k", vec![1; 100]);
        assert!(!whole.value.cappable());
        assert_eq!(whole.value.encode(10).0.map(|v| v.len()), Some(100));
        let quarantined =
            OutboxRecord::quarantined("t", None, Some(&[7u8; 100][..]), OwnedHeaders::new());
        assert!(quarantined.value.cappable());
        assert_eq!(
            quarantined.value.encode(10),
            (Some(vec![7; 10]), vec!["value"])
        );
        let record = record_with_excerpt(10_000);
        let capped = OutboxRecord::capped("t", "sub_1", record.clone());
        let (value, cut_fields) = capped.value.encode(2_000);
        assert_eq!(cut_fields, vec!["response_excerpt"]);
        assert!(value.expect("a value").len() <= 2_000);
        assert_eq!(
            capped.value.encode(1_000_000),
            (Some(record.encode_to_vec()), Vec::new()),
            "each budget starts from the record as given"
        );
    }

    #[test]
    fn size_errors_are_capped_invalid_records_rejected_the_rest_retried() {
        let class = |code| classify(&production(code));
        assert_eq!(
            class(RDKafkaErrorCode::MessageSizeTooLarge),
            ProduceFailure {
                class: ProduceErrorClass::TooLarge,
                reason: "message_too_large"
            }
        );
        assert_eq!(
            class(RDKafkaErrorCode::InvalidRecord).class,
            ProduceErrorClass::Rejected
        );
        assert_eq!(
            class(RDKafkaErrorCode::TopicAuthorizationFailed),
            ProduceFailure {
                class: ProduceErrorClass::NeedsOperator,
                reason: "authorization"
            }
        );
        assert_eq!(
            class(RDKafkaErrorCode::UnknownTopic).reason,
            "unknown_topic"
        );
        assert_eq!(
            class(RDKafkaErrorCode::UnknownTopicOrPartition).class,
            ProduceErrorClass::NeedsOperator
        );
        assert_eq!(
            class(RDKafkaErrorCode::MessageTimedOut),
            ProduceFailure {
                class: ProduceErrorClass::Transient,
                reason: "timed_out"
            }
        );
        assert_eq!(
            class(RDKafkaErrorCode::NotEnoughReplicas).reason,
            "not_enough_replicas"
        );
        assert_eq!(class(RDKafkaErrorCode::QueueFull).reason, "queue_full");
        // Anything not named is retried, under a bounded label.
        assert_eq!(
            classify(&KafkaError::Canceled),
            ProduceFailure {
                class: ProduceErrorClass::Transient,
                reason: "other"
            }
        );
    }

    #[test]
    fn the_budget_comes_from_the_topic_limit_else_halves_and_stops_shrinking() {
        // The topic says 2,000 bytes: the budget is that less the overhead.
        assert_eq!(next_budget(Some(2_000), 5_000, 999_488), Some(1_488));
        // The topic allows more than what failed (the client's limit refused it): halve.
        // The topic allows more than what was refused (a batch of several records was too
        // large, or a broker default applies): halve.
        assert_eq!(
            next_budget(Some(1_048_588), 900_000, 999_488),
            Some(450_000)
        );
        // A record that stayed over the budget (its body) cannot be helped by a smaller one
        // from the same limit.
        assert_eq!(next_budget(Some(1_048_588), 1_200_000, 999_488), None);
        assert_eq!(next_budget(None, 10_000, 999_488), Some(5_000));
        // Already at the floor: capping cannot help any more.
        assert_eq!(next_budget(Some(100), 256, 256), None);
        assert_eq!(next_budget(None, 300, 256), None);
    }

    fn record_with_excerpt(excerpt_bytes: usize) -> AttemptRecord {
        AttemptRecord {
            delivery_id: "dlv_1".into(),
            subscription_id: "sub_1".into(),
            response_excerpt: "é".repeat(excerpt_bytes / 2),
            error: "HTTP 500".into(),
            next_action: Some(NextAction {
                action: Some(Action::Dead(Dead {
                    reason: "x".repeat(300),
                })),
            }),
            ..AttemptRecord::default()
        }
    }

    #[test]
    fn an_attempt_record_is_capped_excerpt_first_and_marked() {
        let mut record = record_with_excerpt(10_000);
        assert_eq!(record.cap_to(20_000), Vec::<&str>::new(), "fits: untouched");
        let cut_fields = record.cap_to(2_000);
        assert_eq!(cut_fields, vec!["response_excerpt"]);
        assert!(record.encoded_len() <= 2_000, "{}", record.encoded_len());
        assert!(record.response_excerpt.ends_with(TRUNCATION_MARK));
        assert_eq!(record.error, "HTTP 500");
        // Below what the excerpt alone can give, the error and dead reason go too.
        let mut record = record_with_excerpt(10_000);
        let cut_fields = record.cap_to(200);
        assert_eq!(cut_fields, vec!["response_excerpt", "error", "dead_reason"]);
        assert!(record.encoded_len() <= 200, "{}", record.encoded_len());
        assert_eq!(record.delivery_id, "dlv_1", "ids are kept");
    }

    fn summary(error_bytes: usize) -> AttemptSummary {
        AttemptSummary {
            attempt: 1,
            error: "e".repeat(error_bytes),
            ..AttemptSummary::default()
        }
    }

    #[test]
    fn a_dead_letter_keeps_its_body_and_loses_summaries_to_fit() {
        let body = vec![b'{'; 3_000];
        let task = DeliveryTask {
            delivery_id: "dlv_1".into(),
            body: body.clone(),
            attempts: (0..6).map(|_| summary(1_000)).collect(),
            ..DeliveryTask::default()
        };
        let mut letter = DeadLetter {
            task: Some(task.clone()),
            attempts: task.attempts.clone(),
            reason: "r".repeat(2_000),
            dead_at: None,
        };
        let cut_fields = letter.cap_to(4_000);
        assert!(letter.encoded_len() <= 4_000, "{}", letter.encoded_len());
        assert_eq!(letter.task.as_ref().expect("task").body, body);
        assert_eq!(
            cut_fields,
            vec![
                "task_attempts",
                "attempt_errors",
                "attempt_summaries",
                "reason"
            ]
        );
        assert!(letter.reason.ends_with(TRUNCATION_MARK));
        assert!(
            letter.reason.len() > 200,
            "the reason is cut last, and only as needed"
        );

        let mut letter = DeadLetter {
            task: Some(task.clone()),
            attempts: (0..6).map(|_| summary(2_000)).collect(),
            reason: String::new(),
            dead_at: None,
        };
        let cut_fields = letter.cap_to(3_500);
        assert!(letter.encoded_len() <= 3_500, "{}", letter.encoded_len());
        assert_eq!(
            cut_fields,
            vec!["task_attempts", "attempt_errors", "attempt_summaries"]
        );
        assert_eq!(letter.attempts.len(), 2, "first and last attempts kept");
    }

    #[test]
    fn a_task_keeps_its_body_whatever_the_budget() {
        let mut task = DeliveryTask {
            body: vec![b'x'; 5_000],
            attempts: (0..3).map(|_| summary(1_000)).collect(),
            ..DeliveryTask::default()
        };
        let cut_fields = task.cap_to(100);
        assert_eq!(task.body.len(), 5_000);
        assert_eq!(cut_fields, vec!["attempt_errors", "attempt_summaries"]);
        assert_eq!(task.attempts.len(), 2);
    }

    #[test]
    fn quarantined_bytes_are_cut_to_the_budget() {
        let mut value = vec![7u8; 1_000];
        assert_eq!(cap_bytes(&mut value, 2_000), Vec::<&str>::new());
        assert_eq!(cap_bytes(&mut value, 300), vec!["value"]);
        assert_eq!(value.len(), 300);
    }

    #[test]
    fn cutting_respects_character_boundaries() {
        let mut text = "é".repeat(20);
        assert!(cut(&mut text, TRUNCATION_MARK.len() + 3));
        assert_eq!(text, format!("é{TRUNCATION_MARK}"));
    }
}
