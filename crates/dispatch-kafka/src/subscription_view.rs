//! The subscriptions every role works from: an in-memory [`SubscriptionTable`] folded from the
//! compacted `dispatch.subscriptions` topic, read from the beginning and kept current.
//!
//! # Reading
//! The view is a [`TopicFold`] of the topic's single partition, from its first offset: the
//! fold's reader thread, with no consumer group (every process needs every record, and nothing
//! is committed because the table is rebuilt on every start), reading only committed records
//! (`isolation.level=read_committed`, so a writer's aborted transaction never reaches a table),
//! and replacing a consumer that has known no broker too long. What is the view's own is the
//! fold of subscription records into a [`SubscriptionTable`] and the outcome of each recent
//! record.
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
//! by `reason`; as for every topic fold, the lag on `dispatch_kafka_consumer_lag_records` too
//! (`group="reader:dispatch.subscriptions"`). A process is expected to run one view; several (as
//! in tests) share the gauges.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use dispatch_core::subscriptions::{FoldOutcome, Rejection, SubscriptionTable};
use dispatch_proto::dispatch::v1::Subscription;
use dispatch_proto::prost::Message as _;
use dispatch_telemetry::names::{VIEW_LAG_RECORDS, VIEW_REJECTED_TOTAL, VIEW_SUBSCRIPTIONS};
use tracing::{debug, warn};

use crate::topic_fold::{FoldOptions, RecordFold, StartAt, TopicFold};
use crate::topics::TopicNames;
use crate::{Error, KafkaConfig, Result};

/// How many recent records' outcomes [`SubscriptionView::wait_for_offset`] can report. At a few
/// hundred bytes each this is a few megabytes at most, and it covers every write made while a
/// request waits for its own.
pub const RECENT_OUTCOMES: usize = 10_000;

/// The only partition of `dispatch.subscriptions`.
const PARTITION: i32 = 0;

/// The subscription records folded into a [`SubscriptionTable`], with the outcome of each of
/// the last [`RECENT_OUTCOMES`] records.
#[derive(Debug)]
struct SubscriptionFold {
    topic: String,
    table: SubscriptionTable,
    /// `(offset, outcome)` of the last [`RECENT_OUTCOMES`] records, oldest first; offsets only
    /// grow, so it is sorted.
    recent: VecDeque<(i64, FoldOutcome)>,
}

impl SubscriptionFold {
    fn new(topic: String) -> Self {
        SubscriptionFold {
            topic,
            table: SubscriptionTable::new(),
            recent: VecDeque::new(),
        }
    }

    /// Decodes, folds and remembers one record, and counts what happened.
    fn apply_record(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> FoldOutcome {
        let (outcome, subscription_id) = match decode(key, value) {
            Ok((key, value)) => (self.table.apply(&key, value), key),
            Err(rejection) => {
                let key = key.map(String::from_utf8_lossy).unwrap_or_default();
                (FoldOutcome::Rejected(rejection), key.into_owned())
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
        metrics::gauge!(VIEW_SUBSCRIPTIONS).set(self.table.len() as f64);

        if self.recent.len() >= RECENT_OUTCOMES {
            self.recent.pop_front();
        }
        self.recent.push_back((offset, outcome.clone()));
        outcome
    }

    fn outcome_at(&self, offset: i64) -> Option<FoldOutcome> {
        self.recent
            .binary_search_by_key(&offset, |(offset, _)| *offset)
            .ok()
            .and_then(|index| self.recent.get(index))
            .map(|(_, outcome)| outcome.clone())
    }
}

impl RecordFold for SubscriptionFold {
    fn apply(&mut self, _partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        self.apply_record(offset, key, payload);
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

/// The view's errors for a wait on its fold: [`Error::ViewTimeout`] and [`Error::ViewStopped`].
fn view_error(error: Error) -> Error {
    match error {
        Error::FoldTimeout {
            waiting_for,
            timeout,
            next_offsets,
            last_error,
            ..
        } => Error::ViewTimeout {
            waiting_for,
            timeout,
            next_offset: next_offsets.first().copied().unwrap_or_default(),
            last_error,
        },
        Error::FoldStopped { .. } => Error::ViewStopped,
        other => other,
    }
}

/// The in-memory subscriptions table, kept current from `dispatch.subscriptions` by a
/// background thread (see the module documentation). Share it behind an `Arc`; dropping it (or
/// [`SubscriptionView::shutdown`]) stops the thread.
pub struct SubscriptionView {
    fold: TopicFold<SubscriptionFold>,
}

impl fmt::Debug for SubscriptionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionView")
            .field("fold", &self.fold)
            .finish()
    }
}

impl SubscriptionView {
    /// Checks the topic (it must exist with exactly one partition), notes its high watermark
    /// as the catch-up target, and starts reading it from the beginning on a thread of its own.
    ///
    /// This blocks for a few metadata round trips, each bounded by `request_timeout_ms`: call
    /// it while the process starts, or through `spawn_blocking`.
    pub fn start(config: &KafkaConfig) -> Result<Self> {
        let topic = TopicNames::new(config.topic_prefix.clone()).subscriptions();
        metrics::gauge!(VIEW_SUBSCRIPTIONS).set(0.0);
        let fold = TopicFold::start_with(
            config,
            &topic,
            StartAt::Beginning,
            SubscriptionFold::new(topic.clone()),
            FoldOptions {
                lag_gauge: Some(VIEW_LAG_RECORDS),
            },
        )?;
        // Refused with its reader started: dropping the fold stops it at once.
        match fold.partitions() {
            1 => Ok(SubscriptionView { fold }),
            partitions => Err(Error::SubscriptionPartitions {
                topic,
                partitions: partitions as usize,
            }),
        }
    }

    /// The topic this view reads.
    pub fn topic(&self) -> &str {
        self.fold.topic()
    }

    /// The high watermark noted at start: the view is caught up once it applied everything below.
    pub fn caught_up_target(&self) -> i64 {
        self.fold.caught_up_targets()[PARTITION as usize]
    }

    /// The offset the view applies next: every record below it is in the table.
    pub fn next_offset(&self) -> i64 {
        self.fold.next_offsets()[PARTITION as usize]
    }

    /// Whether every record below the start's high watermark has been applied.
    pub fn is_caught_up(&self) -> bool {
        self.fold.is_caught_up()
    }

    /// Waits until the view caught up ([`Error::ViewTimeout`] after `timeout`,
    /// [`Error::ViewStopped`] if the reader stopped before). A process is ready only after this.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        self.fold.wait_caught_up(timeout).await.map_err(view_error)
    }

    /// Waits until the record at `offset` (as returned by the writer) was applied, and returns
    /// what the fold did with it. [`Error::OutcomeUnknown`] if the view passed the offset but
    /// holds no outcome for it (older than the last [`RECENT_OUTCOMES`] records, or no visible
    /// record there).
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> Result<FoldOutcome> {
        self.fold
            .wait_for(PARTITION, offset, timeout)
            .await
            .map_err(view_error)?;
        self.fold
            .read(|fold| fold.outcome_at(offset))
            .ok_or(Error::OutcomeUnknown { offset })
    }

    /// Runs `f` on the table under a read lock. Keep `f` short and never await inside it: the
    /// reader waits for the lock to apply the next record.
    pub fn read<R>(&self, f: impl FnOnce(&SubscriptionTable) -> R) -> R {
        self.fold.read(|fold| f(&fold.table))
    }

    /// Asks the reader thread to stop; it exits within one poll interval (100 ms), closing its
    /// consumer. Waiters then get [`Error::ViewStopped`]; the table stays readable as it was.
    pub fn shutdown(&self) {
        self.fold.shutdown();
    }

    /// Waits until the reader thread has exited (after [`SubscriptionView::shutdown`], or a
    /// failure).
    pub async fn stopped(&self) {
        self.fold.stopped().await;
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

    fn fold() -> SubscriptionFold {
        SubscriptionFold::new("t.dispatch.subscriptions".to_owned())
    }

    #[test]
    fn records_are_decoded_folded_remembered_and_counted() {
        let recorder = TestRecorder::default();
        let mut fold = fold();
        metrics::with_local_recorder(&recorder, || {
            let v1 = subscription("sub_1", 1, "https://first");
            let v2a = subscription("sub_1", 2, "https://a");
            let v2b = subscription("sub_1", 2, "https://b");
            assert_eq!(
                fold.apply_record(0, Some(b"sub_1"), Some(&v1)),
                FoldOutcome::Created { version: 1 }
            );
            assert_eq!(
                fold.apply_record(1, Some(b"sub_1"), Some(&v2a)),
                FoldOutcome::Updated { version: 2 }
            );
            assert_eq!(
                fold.apply_record(2, Some(b"sub_1"), Some(&v2b)).reason(),
                Some("stale_version")
            );
            // Text is not a protobuf Subscription: `t` is field 14 with the invalid wire type 4.
            let garbage = fold.apply_record(3, Some(b"sub_2"), Some(b"this is not protobuf"));
            assert_eq!(garbage.reason(), Some("undecodable"), "{garbage:?}");
            let bad_key = fold.apply_record(4, Some(&[0xff, 0xfe]), Some(&v1));
            assert_eq!(bad_key.reason(), Some("undecodable"));
            assert_eq!(
                fold.apply_record(6, Some(b"sub_1"), None),
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
            fold.outcome_at(1),
            Some(FoldOutcome::Updated { version: 2 })
        );
        assert_eq!(
            fold.outcome_at(2).as_ref().and_then(FoldOutcome::reason),
            Some("stale_version")
        );
        // No record at offset 5 (a gap left by compaction or a transaction marker).
        assert_eq!(fold.outcome_at(5), None);
        assert_eq!(fold.outcome_at(6), Some(FoldOutcome::Deleted));
        assert!(fold.table.is_empty());
    }

    #[test]
    fn only_the_most_recent_outcomes_are_kept() {
        let mut fold = fold();
        let total = RECENT_OUTCOMES as i64 + 5;
        for offset in 0..total {
            fold.apply_record(offset, Some(b"sub_1"), None);
        }
        assert_eq!(fold.recent.len(), RECENT_OUTCOMES);
        assert_eq!(fold.outcome_at(4), None);
        assert_eq!(fold.outcome_at(5), Some(FoldOutcome::Ignored));
        assert_eq!(fold.outcome_at(total - 1), Some(FoldOutcome::Ignored));
        assert_eq!(fold.outcome_at(total), None);
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
