//! The dead letters table: a fold of the compacted `dispatch.dlq` topic (key = delivery id, a
//! tombstone = replayed or discarded) into the entries the admin API lists and replays.
//!
//! The fold mirrors what compaction keeps: the latest value of each key. A value without a task
//! cannot be replayed (nor attributed to an account), so it removes the key like a tombstone:
//! it is the key's latest value, and once compaction ran it is all a new reader would see.
//!
//! # Bounds
//! At most `max_entries` letters are held (the topic's 7-day retention bounds them in practice;
//! this bounds a burst). When a new one makes too many, the one with the oldest `dead_at` is
//! dropped: it is the one retention deletes first.

use std::collections::{BTreeSet, HashMap};

use dispatch_proto::dispatch::v1::DeadLetter;
use dispatch_proto::wkt::Timestamp;

/// Which dead letters to list; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this account's.
    pub account_id: Option<String>,
    /// Only deliveries to this subscription.
    pub subscription_id: Option<String>,
    /// Only events of this exact type.
    pub event_type: Option<String>,
}

impl DeadLetterFilter {
    /// Whether `dead` passes the filter.
    pub fn matches(&self, dead: &DeadLetter) -> bool {
        let Some(task) = dead.task.as_ref() else {
            return false;
        };
        let wanted = |filter: &Option<String>, value: &str| {
            filter.as_deref().is_none_or(|wanted| wanted == value)
        };
        wanted(&self.account_id, &task.account_id)
            && wanted(&self.subscription_id, &task.subscription_id)
            && wanted(&self.event_type, &task.event_type)
    }
}

/// The live dead letters by delivery id, bounded (see the module documentation).
#[derive(Debug, Clone)]
pub struct DeadLetterTable {
    max_entries: usize,
    entries: HashMap<String, DeadLetter>,
    /// `(dead_at, delivery id)` of every entry: oldest first.
    by_dead_at: BTreeSet<(Option<Timestamp>, String)>,
    evicted: u64,
}

impl DeadLetterTable {
    /// An empty table holding at most `max_entries` letters (at least one).
    pub fn new(max_entries: usize) -> Self {
        DeadLetterTable {
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            by_dead_at: BTreeSet::new(),
            evicted: 0,
        }
    }

    /// Folds one record: `Some` (with a task) puts the letter under `delivery_id`, a tombstone
    /// (or a letter without a task) removes it.
    pub fn apply(&mut self, delivery_id: &str, value: Option<DeadLetter>) {
        if let Some(old) = self.entries.remove(delivery_id) {
            self.by_dead_at
                .remove(&(old.dead_at, delivery_id.to_owned()));
        }
        let Some(dead) = value.filter(|dead| dead.task.is_some()) else {
            return;
        };
        self.by_dead_at
            .insert((dead.dead_at, delivery_id.to_owned()));
        self.entries.insert(delivery_id.to_owned(), dead);
        while self.entries.len() > self.max_entries {
            let Some((_, oldest)) = self.by_dead_at.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.evicted += 1;
        }
    }

    /// The letter of a delivery, if held.
    pub fn get(&self, delivery_id: &str) -> Option<&DeadLetter> {
        self.entries.get(delivery_id)
    }

    /// Up to `limit` letters passing `filter`, newest `dead_at` first (ties by delivery id,
    /// descending, so the order is stable).
    pub fn list(&self, filter: &DeadLetterFilter, limit: usize) -> Vec<&DeadLetter> {
        self.by_dead_at
            .iter()
            .rev()
            .filter_map(|(_, delivery_id)| self.entries.get(delivery_id))
            .filter(|dead| filter.matches(dead))
            .take(limit)
            .collect()
    }

    /// How many letters are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no letter is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many letters were dropped to stay within the bound, since creation.
    pub fn evicted_total(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use dispatch_proto::dispatch::v1::DeliveryTask;

    use super::*;

    fn letter(
        delivery: &str,
        account: &str,
        subscription: &str,
        kind: &str,
        at: i64,
    ) -> DeadLetter {
        DeadLetter {
            task: Some(DeliveryTask {
                delivery_id: delivery.into(),
                account_id: account.into(),
                subscription_id: subscription.into(),
                event_type: kind.into(),
                ..DeliveryTask::default()
            }),
            attempts: Vec::new(),
            reason: "retries exhausted".into(),
            dead_at: Some(Timestamp {
                seconds: at,
                nanos: 0,
            }),
        }
    }

    fn put(table: &mut DeadLetterTable, dead: DeadLetter) {
        let id = dead.task.as_ref().expect("task").delivery_id.clone();
        table.apply(&id, Some(dead));
    }

    fn ids(letters: &[&DeadLetter]) -> Vec<String> {
        letters
            .iter()
            .filter_map(|d| d.task.as_ref())
            .map(|t| t.delivery_id.clone())
            .collect()
    }

    fn table() -> DeadLetterTable {
        let mut table = DeadLetterTable::new(100);
        put(
            &mut table,
            letter("dlv_1", "acc_a", "sub_1", "image.generation.failed", 10),
        );
        put(
            &mut table,
            letter("dlv_2", "acc_a", "sub_2", "map.gallery.updated", 30),
        );
        put(
            &mut table,
            letter("dlv_3", "acc_b", "sub_3", "image.generation.failed", 20),
        );
        put(
            &mut table,
            letter("dlv_4", "acc_a", "sub_1", "map.gallery.updated", 40),
        );
        table
    }

    #[test]
    fn lists_newest_first_through_every_filter() {
        let table = table();
        let all = DeadLetterFilter::default();
        assert_eq!(
            ids(&table.list(&all, 10)),
            ["dlv_4", "dlv_2", "dlv_3", "dlv_1"]
        );
        assert_eq!(ids(&table.list(&all, 2)), ["dlv_4", "dlv_2"]);
        let account = DeadLetterFilter {
            account_id: Some("acc_a".into()),
            ..DeadLetterFilter::default()
        };
        assert_eq!(ids(&table.list(&account, 10)), ["dlv_4", "dlv_2", "dlv_1"]);
        let subscription = DeadLetterFilter {
            subscription_id: Some("sub_1".into()),
            ..account.clone()
        };
        assert_eq!(ids(&table.list(&subscription, 10)), ["dlv_4", "dlv_1"]);
        let kind = DeadLetterFilter {
            event_type: Some("image.generation.failed".into()),
            ..DeadLetterFilter::default()
        };
        assert_eq!(ids(&table.list(&kind, 10)), ["dlv_3", "dlv_1"]);
        let nobody = DeadLetterFilter {
            account_id: Some("acc_z".into()),
            ..DeadLetterFilter::default()
        };
        assert!(table.list(&nobody, 10).is_empty());
    }

    #[test]
    fn a_tombstone_removes_and_a_newer_value_replaces() {
        let mut table = table();
        table.apply("dlv_2", None);
        assert!(table.get("dlv_2").is_none());
        assert_eq!(table.len(), 3);
        table.apply("dlv_2", None);
        table.apply("dlv_unknown", None);
        assert_eq!(table.len(), 3, "tombstones of absent keys change nothing");

        // Dead again after a replay of its own, later: moves to the front.
        put(
            &mut table,
            letter("dlv_1", "acc_a", "sub_1", "image.generation.failed", 50),
        );
        assert_eq!(
            ids(&table.list(&DeadLetterFilter::default(), 10)),
            ["dlv_1", "dlv_4", "dlv_3"]
        );
        assert_eq!(table.by_dead_at.len(), table.len());

        // Re-reading the same record changes nothing.
        put(
            &mut table,
            letter("dlv_1", "acc_a", "sub_1", "image.generation.failed", 50),
        );
        assert_eq!(table.len(), 3);
        assert_eq!(table.by_dead_at.len(), 3);
    }

    #[test]
    fn a_letter_without_a_task_removes_its_key() {
        let mut table = table();
        table.apply(
            "dlv_3",
            Some(DeadLetter {
                task: None,
                ..DeadLetter::default()
            }),
        );
        assert!(table.get("dlv_3").is_none());
        assert_eq!(table.by_dead_at.len(), table.len());
        assert!(!DeadLetterFilter::default().matches(&DeadLetter::default()));
    }

    #[test]
    fn the_oldest_letter_is_dropped_past_the_bound() {
        let mut table = DeadLetterTable::new(2);
        put(&mut table, letter("dlv_1", "acc_a", "sub_1", "t", 10));
        put(&mut table, letter("dlv_2", "acc_a", "sub_1", "t", 30));
        put(&mut table, letter("dlv_3", "acc_a", "sub_1", "t", 20));
        assert_eq!(table.len(), 2);
        assert_eq!(table.evicted_total(), 1);
        assert!(table.get("dlv_1").is_none());
        // Older than everything held: it is itself the one dropped.
        put(&mut table, letter("dlv_0", "acc_a", "sub_1", "t", 5));
        assert!(table.get("dlv_0").is_none());
        assert_eq!(
            ids(&table.list(&DeadLetterFilter::default(), 10)),
            ["dlv_2", "dlv_3"]
        );
        assert_eq!(table.evicted_total(), 2);
        assert_eq!(table.by_dead_at.len(), table.len());
    }
}
