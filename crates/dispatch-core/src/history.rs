//! Delivery history: a fold of the `dispatch.attempts` log into the status of each delivery
//! (its attempts and where it stands) and each subscription's recent attempts, in bounded memory.
//!
//! # States
//! A delivery's state is read from its latest attempt record (the highest attempt number; for
//! two records of the same attempt, the later one in the log), as the sender writes them:
//!
//! | latest record | state |
//! |---|---|
//! | none yet (queued by the API, [`DeliveryHistory::note_pending`]) | `pending` |
//! | next action `retry` | `retrying` |
//! | next action `dead` | `dead` |
//! | next action `done`, outcome `success` | `succeeded` |
//! | next action `done`, outcome `skipped` | `skipped` |
//!
//! `skipped` exists because the sender really ends deliveries that way: a task whose
//! subscription was deleted is not attempted, and its only record is outcome `SKIPPED` with next
//! action `done`. Records no sender writes are read conservatively: `done` after any other
//! failure is `skipped` (it ended, undelivered, with nothing left to do), and a record without a
//! next action is `succeeded`, `skipped` or `retrying` by its outcome (a failure whose sequel is
//! unknown is not reported as final).
//!
//! Not every end of a delivery leaves an attempt record: the sender dead-letters a deferred
//! task past its deadline, and a disabled subscription's tasks, straight into `dispatch.dlq`.
//! Such a delivery keeps the state its last attempt record gave it (`pending` if it had none);
//! the DLQ ([`crate::dead_letters`]) is where it shows.
//!
//! # Duplicates
//! A record read again (the same delivery and attempt, the same content) changes nothing, not
//! even which delivery counts as recently updated. A different record for an attempt already
//! held replaces it: the sender writes one only when it crashed before finishing the source
//! offset and made the attempt again, and the later outcome is the one that counted.
//!
//! # Bounds
//! At most `max_deliveries` deliveries are held. Adding one more evicts the delivery least
//! recently updated (by an attempt record that changed it, or by being noted as pending): its
//! status and every one of its attempts fall out, from every index. A record arriving later
//! for an evicted delivery starts it afresh with only the attempts seen from then on. Attempts
//! per delivery are bounded by the retry schedule, but a buggy or hostile log could carry any
//! number: at most [`MAX_ATTEMPTS_PER_DELIVERY`] are kept, the highest-numbered ones.
//!
//! The identifying fields of a delivery (event, subscription) are those of the first record or
//! task seen for it; the indexes stay keyed by them for as long as the delivery is held.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use dispatch_proto::dispatch::v1::next_action::Action;
use dispatch_proto::dispatch::v1::{AttemptOutcome, AttemptRecord, DeliveryTask};
use dispatch_proto::wkt::Timestamp;

/// The most attempt records kept per delivery; the default schedule makes six.
pub const MAX_ATTEMPTS_PER_DELIVERY: usize = 64;

/// Where a delivery stands, by its latest attempt record (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Queued, no attempt recorded yet.
    Pending,
    /// Delivered (2xx).
    Succeeded,
    /// An attempt failed and another is scheduled.
    Retrying,
    /// Every attempt failed (or the failure was permanent): the delivery is in the DLQ.
    Dead,
    /// Ended without an attempt: the subscription was deleted before the task was attempted.
    Skipped,
}

impl DeliveryState {
    /// The state's name in the API: `pending`, `succeeded`, `retrying`, `dead` or `skipped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Dead => "dead",
            DeliveryState::Skipped => "skipped",
        }
    }

    /// Whether nothing more will happen to the delivery (no further attempt is scheduled).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            DeliveryState::Succeeded | DeliveryState::Dead | DeliveryState::Skipped
        )
    }

    /// The state an attempt record leaves its delivery in.
    pub fn of_record(record: &AttemptRecord) -> DeliveryState {
        let outcome = AttemptOutcome::try_from(record.outcome).ok();
        let by_outcome = |failure: DeliveryState| match outcome {
            Some(AttemptOutcome::Success) => DeliveryState::Succeeded,
            Some(AttemptOutcome::Skipped) => DeliveryState::Skipped,
            _ => failure,
        };
        match record
            .next_action
            .as_ref()
            .and_then(|next| next.action.as_ref())
        {
            Some(Action::Retry(_)) => DeliveryState::Retrying,
            Some(Action::Dead(_)) => DeliveryState::Dead,
            Some(Action::Done(_)) => by_outcome(DeliveryState::Skipped),
            None => by_outcome(DeliveryState::Retrying),
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery as the log tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryStatus {
    /// The delivery.
    pub delivery_id: String,
    /// The event delivered.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The subscription delivered to.
    pub subscription_id: String,
    /// The account of the event and subscription.
    pub account_id: String,
    /// The dead delivery this one replays; empty when it is not a replay.
    pub replay_of: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// The attempts recorded, ascending by attempt number (at most
    /// [`MAX_ATTEMPTS_PER_DELIVERY`], the latest ones).
    pub attempts: Vec<AttemptRecord>,
}

impl DeliveryStatus {
    fn pending(task: &DeliveryTask) -> Self {
        DeliveryStatus {
            delivery_id: task.delivery_id.clone(),
            event_id: task.event_id.clone(),
            event_type: task.event_type.clone(),
            subscription_id: task.subscription_id.clone(),
            account_id: task.account_id.clone(),
            replay_of: task.replay_of.clone(),
            state: DeliveryState::Pending,
            attempts: Vec::new(),
        }
    }

    fn from_record(record: &AttemptRecord) -> Self {
        DeliveryStatus {
            delivery_id: record.delivery_id.clone(),
            event_id: record.event_id.clone(),
            event_type: record.event_type.clone(),
            subscription_id: record.subscription_id.clone(),
            account_id: record.account_id.clone(),
            replay_of: record.replay_of.clone(),
            state: DeliveryState::Pending,
            attempts: Vec::new(),
        }
    }

    /// Fills descriptive fields an earlier, sparser record left empty. The identifying fields
    /// are not changed: the indexes are keyed by them.
    fn complete_from(&mut self, record: &AttemptRecord) {
        for (mine, theirs) in [
            (&mut self.event_type, &record.event_type),
            (&mut self.account_id, &record.account_id),
            (&mut self.replay_of, &record.replay_of),
        ] {
            if mine.is_empty() && !theirs.is_empty() {
                mine.clone_from(theirs);
            }
        }
    }
}

/// One attempt in a subscription's index: newest last, by start time, then delivery and attempt
/// so that keys are unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct AttemptKey {
    started_at: Option<Timestamp>,
    delivery_id: Arc<str>,
    attempt: u32,
}

impl AttemptKey {
    fn of(delivery_id: &Arc<str>, record: &AttemptRecord) -> Self {
        AttemptKey {
            started_at: record.started_at,
            delivery_id: Arc::clone(delivery_id),
            attempt: record.attempt,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    status: DeliveryStatus,
    /// The update sequence number of the last change, the key in `recency`.
    touched: u64,
}

/// The delivery log folded into statuses, bounded (see the module documentation).
#[derive(Debug, Clone)]
pub struct DeliveryHistory {
    max_deliveries: usize,
    entries: HashMap<Arc<str>, Entry>,
    /// Update sequence number → delivery; the first is the least recently updated.
    recency: BTreeMap<u64, Arc<str>>,
    /// Event id → its deliveries, in the order they were first seen.
    by_event: HashMap<String, Vec<Arc<str>>>,
    /// Subscription id → the attempts of its deliveries, oldest start first.
    by_subscription: HashMap<String, BTreeSet<AttemptKey>>,
    next_touch: u64,
    evicted: u64,
}

impl DeliveryHistory {
    /// An empty history holding at most `max_deliveries` deliveries (at least one).
    pub fn new(max_deliveries: usize) -> Self {
        DeliveryHistory {
            max_deliveries: max_deliveries.max(1),
            entries: HashMap::new(),
            recency: BTreeMap::new(),
            by_event: HashMap::new(),
            by_subscription: HashMap::new(),
            next_touch: 0,
            evicted: 0,
        }
    }

    /// The most deliveries held.
    pub fn max_deliveries(&self) -> usize {
        self.max_deliveries
    }

    /// Folds one record of `dispatch.attempts`. A record without a delivery id is ignored (it
    /// could not be found again); the caller decides whether to count it.
    pub fn apply(&mut self, record: AttemptRecord) {
        if record.delivery_id.is_empty() {
            return;
        }
        let id = match self.entries.get_key_value(record.delivery_id.as_str()) {
            Some((id, _)) => Arc::clone(id),
            None => self.insert(DeliveryStatus::from_record(&record)),
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let status = &mut entry.status;
        status.complete_from(&record);
        let index = status
            .attempts
            .binary_search_by_key(&record.attempt, |held| held.attempt);
        let subscription = self
            .by_subscription
            .entry(status.subscription_id.clone())
            .or_default();
        match index {
            Ok(index) => {
                let held = &mut status.attempts[index];
                if *held == record {
                    return;
                }
                subscription.remove(&AttemptKey::of(&id, held));
                subscription.insert(AttemptKey::of(&id, &record));
                *held = record;
            }
            Err(index) => {
                if status.attempts.len() >= MAX_ATTEMPTS_PER_DELIVERY && index == 0 {
                    // Older than every attempt kept of a delivery that is full: it would be
                    // the one dropped.
                    return;
                }
                subscription.insert(AttemptKey::of(&id, &record));
                status.attempts.insert(index, record);
                if status.attempts.len() > MAX_ATTEMPTS_PER_DELIVERY {
                    let dropped = status.attempts.remove(0);
                    subscription.remove(&AttemptKey::of(&id, &dropped));
                }
            }
        }
        if let Some(latest) = status.attempts.last() {
            status.state = DeliveryState::of_record(latest);
        }
        self.touch(&id);
    }

    /// Notes a delivery the caller just queued, so it shows as `pending` before its first
    /// attempt record arrives. A delivery already held is left as it is: its records know more.
    pub fn note_pending(&mut self, task: &DeliveryTask) {
        if task.delivery_id.is_empty() || self.entries.contains_key(task.delivery_id.as_str()) {
            return;
        }
        self.insert(DeliveryStatus::pending(task));
    }

    /// The status of a delivery, if held.
    pub fn delivery(&self, delivery_id: &str) -> Option<&DeliveryStatus> {
        self.entries.get(delivery_id).map(|entry| &entry.status)
    }

    /// The deliveries of an event held, in the order they were first seen.
    pub fn for_event(&self, event_id: &str) -> Vec<&DeliveryStatus> {
        self.by_event
            .get(event_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.delivery(id))
            .collect()
    }

    /// Up to `limit` attempts to a subscription, newest start first, optionally only those with
    /// `outcome`.
    pub fn attempts_for_subscription(
        &self,
        subscription_id: &str,
        outcome: Option<AttemptOutcome>,
        limit: usize,
    ) -> Vec<&AttemptRecord> {
        let Some(keys) = self.by_subscription.get(subscription_id) else {
            return Vec::new();
        };
        keys.iter()
            .rev()
            .filter_map(|key| {
                let attempts = &self.entries.get(&key.delivery_id)?.status.attempts;
                let index = attempts
                    .binary_search_by_key(&key.attempt, |held| held.attempt)
                    .ok()?;
                attempts.get(index)
            })
            .filter(|record| outcome.is_none_or(|outcome| record.outcome == outcome as i32))
            .take(limit)
            .collect()
    }

    /// How many deliveries are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no delivery is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many deliveries were evicted to stay within the bound, since creation.
    pub fn evicted_total(&self) -> u64 {
        self.evicted
    }

    /// Adds a new delivery (making room first) and returns its shared id.
    fn insert(&mut self, status: DeliveryStatus) -> Arc<str> {
        while self.entries.len() >= self.max_deliveries {
            if !self.evict_least_recent() {
                break;
            }
        }
        let id: Arc<str> = Arc::from(status.delivery_id.as_str());
        self.by_event
            .entry(status.event_id.clone())
            .or_default()
            .push(Arc::clone(&id));
        let touched = self.next_touch();
        self.recency.insert(touched, Arc::clone(&id));
        self.entries
            .insert(Arc::clone(&id), Entry { status, touched });
        id
    }

    fn next_touch(&mut self) -> u64 {
        let touch = self.next_touch;
        self.next_touch += 1;
        touch
    }

    /// Marks a delivery as the most recently updated.
    fn touch(&mut self, id: &Arc<str>) {
        let touched = self.next_touch();
        if let Some(entry) = self.entries.get_mut(id) {
            self.recency.remove(&entry.touched);
            entry.touched = touched;
            self.recency.insert(touched, Arc::clone(id));
        }
    }

    /// Removes the least recently updated delivery from every index; false when there is none.
    fn evict_least_recent(&mut self) -> bool {
        let Some((_, id)) = self.recency.pop_first() else {
            return false;
        };
        let Some(entry) = self.entries.remove(&id) else {
            return true;
        };
        let status = entry.status;
        if let Some(deliveries) = self.by_event.get_mut(&status.event_id) {
            deliveries.retain(|held| *held != id);
            if deliveries.is_empty() {
                self.by_event.remove(&status.event_id);
            }
        }
        if let Some(keys) = self.by_subscription.get_mut(&status.subscription_id) {
            for record in &status.attempts {
                keys.remove(&AttemptKey::of(&id, record));
            }
            if keys.is_empty() {
                self.by_subscription.remove(&status.subscription_id);
            }
        }
        self.evicted += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use dispatch_proto::dispatch::v1::NextAction;
    use dispatch_proto::dispatch::v1::next_action::{Dead, Done, Retry};

    use super::*;

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn action(action: Action) -> Option<NextAction> {
        Some(NextAction {
            action: Some(action),
        })
    }

    fn retry() -> Option<NextAction> {
        action(Action::Retry(Retry {
            at: ts(0),
            tier: "1m".into(),
            next_attempt: 0,
        }))
    }

    fn done() -> Option<NextAction> {
        action(Action::Done(Done {}))
    }

    fn dead() -> Option<NextAction> {
        action(Action::Dead(Dead {
            reason: "retries exhausted".into(),
        }))
    }

    /// An attempt of delivery `dlv_<event>_<subscription>` started at `started` seconds.
    fn record(
        event: &str,
        subscription: &str,
        attempt: u32,
        outcome: AttemptOutcome,
        next_action: Option<NextAction>,
        started: i64,
    ) -> AttemptRecord {
        AttemptRecord {
            delivery_id: format!("dlv_{event}_{subscription}"),
            event_id: event.into(),
            subscription_id: subscription.into(),
            account_id: "acc_1".into(),
            event_type: "image.generation.completed".into(),
            attempt,
            started_at: ts(started),
            outcome: outcome as i32,
            status_code: if outcome == AttemptOutcome::Success {
                200
            } else {
                500
            },
            next_action,
            ..AttemptRecord::default()
        }
    }

    fn failed(event: &str, subscription: &str, attempt: u32, started: i64) -> AttemptRecord {
        record(
            event,
            subscription,
            attempt,
            AttemptOutcome::HttpStatus,
            retry(),
            started,
        )
    }

    fn ok(event: &str, subscription: &str, attempt: u32, started: i64) -> AttemptRecord {
        record(
            event,
            subscription,
            attempt,
            AttemptOutcome::Success,
            done(),
            started,
        )
    }

    fn state(history: &DeliveryHistory, delivery_id: &str) -> Option<DeliveryState> {
        history.delivery(delivery_id).map(|status| status.state)
    }

    fn attempt_numbers(history: &DeliveryHistory, delivery_id: &str) -> Vec<u32> {
        history
            .delivery(delivery_id)
            .map(|status| status.attempts.iter().map(|a| a.attempt).collect())
            .unwrap_or_default()
    }

    /// Every index agrees with the entries: the invariant eviction must keep.
    fn assert_consistent(history: &DeliveryHistory) {
        assert_eq!(history.recency.len(), history.entries.len());
        for (touched, id) in &history.recency {
            assert_eq!(history.entries[id].touched, *touched);
        }
        let indexed: usize = history.by_event.values().map(Vec::len).sum();
        assert_eq!(indexed, history.entries.len());
        for (event, ids) in &history.by_event {
            assert!(!ids.is_empty());
            for id in ids {
                assert_eq!(&history.entries[id].status.event_id, event);
            }
        }
        let attempts: usize = history
            .entries
            .values()
            .map(|e| e.status.attempts.len())
            .sum();
        let keys: usize = history.by_subscription.values().map(BTreeSet::len).sum();
        assert_eq!(keys, attempts);
        for (subscription, keys) in &history.by_subscription {
            assert!(!keys.is_empty());
            for key in keys {
                let status = &history.entries[&key.delivery_id].status;
                assert_eq!(&status.subscription_id, subscription);
                assert!(status.attempts.iter().any(|a| a.attempt == key.attempt));
            }
        }
    }

    #[test]
    fn states_follow_the_next_action_of_the_latest_attempt() {
        let cases = [
            (AttemptOutcome::Success, done(), DeliveryState::Succeeded),
            (AttemptOutcome::Timeout, retry(), DeliveryState::Retrying),
            (AttemptOutcome::HttpStatus, dead(), DeliveryState::Dead),
            (AttemptOutcome::Gone, dead(), DeliveryState::Dead),
            (AttemptOutcome::Skipped, done(), DeliveryState::Skipped),
            // Not written by the sender: read conservatively.
            (AttemptOutcome::HttpStatus, done(), DeliveryState::Skipped),
            (AttemptOutcome::Success, None, DeliveryState::Succeeded),
            (AttemptOutcome::ConnectError, None, DeliveryState::Retrying),
        ];
        for (outcome, next, expected) in cases {
            let record = record("evt_1", "sub_1", 1, outcome, next.clone(), 10);
            assert_eq!(
                DeliveryState::of_record(&record),
                expected,
                "{outcome:?} {next:?}"
            );
        }

        let mut history = DeliveryHistory::new(10);
        history.apply(failed("evt_1", "sub_1", 1, 10));
        assert_eq!(
            state(&history, "dlv_evt_1_sub_1"),
            Some(DeliveryState::Retrying)
        );
        history.apply(failed("evt_1", "sub_1", 2, 11));
        history.apply(ok("evt_1", "sub_1", 3, 70));
        let status = history.delivery("dlv_evt_1_sub_1").expect("held");
        assert_eq!(status.state, DeliveryState::Succeeded);
        assert_eq!(status.state.as_str(), "succeeded");
        assert!(status.state.is_final());
        assert_eq!(attempt_numbers(&history, "dlv_evt_1_sub_1"), [1, 2, 3]);
        assert_eq!(status.event_id, "evt_1");
        assert_eq!(status.subscription_id, "sub_1");
        assert_eq!(status.account_id, "acc_1");
        assert_eq!(status.event_type, "image.generation.completed");

        let mut dead_record = failed("evt_2", "sub_1", 6, 100);
        dead_record.next_action = dead();
        history.apply(dead_record);
        assert_eq!(
            state(&history, "dlv_evt_2_sub_1"),
            Some(DeliveryState::Dead)
        );
        assert_consistent(&history);
    }

    #[test]
    fn the_highest_attempt_decides_even_when_records_arrive_out_of_order() {
        let mut history = DeliveryHistory::new(10);
        history.apply(ok("evt_1", "sub_1", 3, 70));
        history.apply(failed("evt_1", "sub_1", 1, 10));
        history.apply(failed("evt_1", "sub_1", 2, 11));
        assert_eq!(attempt_numbers(&history, "dlv_evt_1_sub_1"), [1, 2, 3]);
        assert_eq!(
            state(&history, "dlv_evt_1_sub_1"),
            Some(DeliveryState::Succeeded)
        );
    }

    #[test]
    fn a_re_read_record_changes_nothing_and_a_redone_attempt_replaces_its_record() {
        let mut history = DeliveryHistory::new(2);
        history.apply(failed("evt_1", "sub_1", 1, 10));
        history.apply(failed("evt_2", "sub_1", 1, 20));
        let before = history.clone();
        // A duplicate of the older delivery's record: not an update, so it stays the least
        // recently updated and is the one evicted next.
        history.apply(failed("evt_1", "sub_1", 1, 10));
        assert_eq!(history.entries.len(), before.entries.len());
        assert_eq!(history.recency, before.recency);
        assert_eq!(
            history.delivery("dlv_evt_1_sub_1"),
            before.delivery("dlv_evt_1_sub_1")
        );
        assert_eq!(
            history.attempts_for_subscription("sub_1", None, 10).len(),
            2
        );

        // The sender crashed after attempt 1 and made it again: the later outcome counts.
        history.apply(ok("evt_1", "sub_1", 1, 15));
        let status = history.delivery("dlv_evt_1_sub_1").expect("held");
        assert_eq!(status.attempts.len(), 1);
        assert_eq!(status.state, DeliveryState::Succeeded);
        assert_eq!(status.attempts[0].started_at, ts(15));
        let started: Vec<_> = history
            .attempts_for_subscription("sub_1", None, 10)
            .iter()
            .map(|a| a.started_at)
            .collect();
        assert_eq!(started, [ts(20), ts(15)]);
        assert_consistent(&history);
    }

    #[test]
    fn the_least_recently_updated_delivery_is_evicted_from_every_index() {
        let mut history = DeliveryHistory::new(2);
        history.apply(failed("evt_1", "sub_a", 1, 10));
        history.apply(failed("evt_2", "sub_b", 1, 20));
        // evt_1's delivery is updated, so evt_2's becomes the least recently updated.
        history.apply(failed("evt_1", "sub_a", 2, 30));
        history.apply(failed("evt_3", "sub_a", 1, 40));

        assert_eq!(history.len(), 2);
        assert_eq!(history.evicted_total(), 1);
        assert!(history.delivery("dlv_evt_2_sub_b").is_none());
        assert!(history.for_event("evt_2").is_empty());
        assert!(
            history
                .attempts_for_subscription("sub_b", None, 10)
                .is_empty()
        );
        assert!(!history.by_event.contains_key("evt_2"));
        assert!(!history.by_subscription.contains_key("sub_b"));
        assert_eq!(attempt_numbers(&history, "dlv_evt_1_sub_a"), [1, 2]);
        assert_consistent(&history);

        // A late record of the evicted delivery starts it afresh.
        history.apply(ok("evt_2", "sub_b", 2, 50));
        assert_eq!(attempt_numbers(&history, "dlv_evt_2_sub_b"), [2]);
        assert_eq!(history.evicted_total(), 2);
        assert!(
            history.delivery("dlv_evt_1_sub_a").is_none(),
            "evt_1's was now the least recent"
        );
        assert_consistent(&history);
    }

    #[test]
    fn a_delivery_evicted_with_attempts_leaves_no_attempt_behind() {
        let mut history = DeliveryHistory::new(1);
        for attempt in 1..=5 {
            history.apply(failed("evt_1", "sub_a", attempt, i64::from(attempt)));
        }
        history.apply(failed("evt_2", "sub_a", 1, 100));
        let left: Vec<_> = history
            .attempts_for_subscription("sub_a", None, 100)
            .iter()
            .map(|a| a.delivery_id.clone())
            .collect();
        assert_eq!(left, ["dlv_evt_2_sub_a"]);
        assert_consistent(&history);
        assert_eq!(DeliveryHistory::new(0).max_deliveries(), 1);
    }

    #[test]
    fn pending_deliveries_show_until_their_first_attempt() {
        let mut history = DeliveryHistory::new(10);
        let task = DeliveryTask {
            delivery_id: "dlv_replay".into(),
            event_id: "evt_1".into(),
            event_type: "webhook.test".into(),
            subscription_id: "sub_1".into(),
            account_id: "acc_1".into(),
            attempt: 1,
            replay_of: "dlv_dead".into(),
            ..DeliveryTask::default()
        };
        history.note_pending(&task);
        let status = history.delivery("dlv_replay").expect("pending");
        assert_eq!(status.state, DeliveryState::Pending);
        assert!(status.attempts.is_empty());
        assert_eq!(status.replay_of, "dlv_dead");
        assert_eq!(history.for_event("evt_1").len(), 1);

        let mut first = ok("evt_1", "sub_1", 1, 10);
        first.delivery_id = "dlv_replay".into();
        history.apply(first);
        assert_eq!(
            state(&history, "dlv_replay"),
            Some(DeliveryState::Succeeded)
        );
        // Noting it again (a retried API call) does not undo what the log said.
        history.note_pending(&task);
        assert_eq!(
            state(&history, "dlv_replay"),
            Some(DeliveryState::Succeeded)
        );
        assert_eq!(history.len(), 1);
        assert_consistent(&history);
    }

    #[test]
    fn a_sparse_first_record_is_completed_by_later_ones() {
        let mut history = DeliveryHistory::new(10);
        let mut sparse = failed("evt_1", "sub_1", 1, 10);
        sparse.account_id.clear();
        sparse.event_type.clear();
        history.apply(sparse);
        history.apply(failed("evt_1", "sub_1", 2, 11));
        let status = history.delivery("dlv_evt_1_sub_1").expect("held");
        assert_eq!(status.account_id, "acc_1");
        assert_eq!(status.event_type, "image.generation.completed");
        history.apply(AttemptRecord::default());
        assert_eq!(
            history.len(),
            1,
            "a record without a delivery id is ignored"
        );
    }

    #[test]
    fn attempts_per_delivery_are_capped_keeping_the_latest() {
        let mut history = DeliveryHistory::new(10);
        let total = MAX_ATTEMPTS_PER_DELIVERY as u32 + 10;
        for attempt in (1..=total).rev() {
            history.apply(failed("evt_1", "sub_1", attempt, i64::from(attempt)));
        }
        let numbers = attempt_numbers(&history, "dlv_evt_1_sub_1");
        assert_eq!(numbers.len(), MAX_ATTEMPTS_PER_DELIVERY);
        assert_eq!(numbers.first(), Some(&11));
        assert_eq!(numbers.last(), Some(&total));
        history.apply(failed("evt_1", "sub_1", total + 1, 1_000));
        let numbers = attempt_numbers(&history, "dlv_evt_1_sub_1");
        assert_eq!(numbers.len(), MAX_ATTEMPTS_PER_DELIVERY);
        assert_eq!(numbers.first(), Some(&12));
        assert_consistent(&history);
    }

    #[test]
    fn a_subscriptions_attempts_come_newest_first_filtered_and_limited() {
        let mut history = DeliveryHistory::new(10);
        history.apply(failed("evt_1", "sub_1", 1, 10));
        history.apply(ok("evt_1", "sub_1", 2, 11));
        history.apply(failed("evt_2", "sub_1", 1, 30));
        history.apply(ok("evt_3", "sub_1", 1, 20));
        history.apply(ok("evt_3", "sub_2", 1, 25));

        let all: Vec<_> = history
            .attempts_for_subscription("sub_1", None, 10)
            .iter()
            .map(|a| (a.event_id.clone(), a.attempt))
            .collect();
        assert_eq!(
            all,
            [
                ("evt_2".to_owned(), 1),
                ("evt_3".to_owned(), 1),
                ("evt_1".to_owned(), 2),
                ("evt_1".to_owned(), 1)
            ]
        );
        let successes: Vec<_> = history
            .attempts_for_subscription("sub_1", Some(AttemptOutcome::Success), 10)
            .iter()
            .map(|a| a.event_id.clone())
            .collect();
        assert_eq!(successes, ["evt_3", "evt_1"]);
        assert_eq!(
            history
                .attempts_for_subscription("sub_1", None, 1)
                .first()
                .map(|a| a.event_id.as_str()),
            Some("evt_2")
        );
        assert!(
            history
                .attempts_for_subscription("sub_9", None, 10)
                .is_empty()
        );

        let for_event: Vec<_> = history
            .for_event("evt_3")
            .iter()
            .map(|s| s.subscription_id.clone())
            .collect();
        assert_eq!(for_event, ["sub_1", "sub_2"]);
        assert_consistent(&history);
    }
}
