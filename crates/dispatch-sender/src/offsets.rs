//! Which offsets of an assigned partition are taken and not yet finished, and so what may be
//! stored for commit: the lowest unfinished offset.
//!
//! # Why the lowest unfinished offset
//! Records of one partition finish out of order (different endpoints proceed independently, see
//! design section 6), but a Kafka commit is a single position: "everything below this is done".
//! Committing the lowest unfinished offset is the only position that never skips unfinished work;
//! whatever above it had already finished is read again by the next owner after a crash or
//! rebalance — a duplicate, never a loss.
//!
//! # Gaps
//! Offsets arrive increasing but not contiguous: compaction removes records and transaction
//! markers take offsets no consumer ever sees. The tracker therefore never assumes `offset + 1`
//! exists; with nothing unfinished the position is the last taken offset + 1, which is what
//! librdkafka itself commits after consuming that record.
//!
//! # Window
//! [`OffsetTracker::uncommitted_window`] counts the taken-but-unfinished offsets; that count is
//! what the engine limits (pausing or deferring when it is over). The span from the commit
//! position to the last taken offset ([`OffsetTracker::uncommitted_span`]) is *not* used for the
//! limit: one slow record (a request hanging up to its 30 s timeout) pins the low end of the span
//! while every record above it finishes, so a span limit would stop a whole partition behind one
//! bad endpoint — exactly the head-of-line blocking the sender must avoid. The span is still
//! worth a gauge: it bounds how many records a crash would redeliver.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Why an offset could not be taken or finished. Each is a bug in the caller or a late
/// completion after a revoke; none changes the tracker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// `take` of an offset not above the last one taken: offsets of one partition arrive
    /// increasing, so this is a redelivery (a stale fetch after a seek) that must not be
    /// processed twice.
    #[error("offset {offset} taken after {last}: offsets of a partition must increase")]
    NotIncreasing {
        /// The offset offered.
        offset: i64,
        /// The last offset taken.
        last: i64,
    },
    /// `finish` of an offset that is not in flight: never taken, or finished already.
    #[error("offset {offset} is not in flight")]
    NotInFlight {
        /// The offset offered.
        offset: i64,
    },
    /// `take` or `finish` on a partition that is not assigned (any more): typically a
    /// completion arriving after the partition was revoked, whose offset the next owner reads
    /// again anyway.
    #[error("partition {topic}[{partition}] is not assigned")]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
}

/// Taken and finished offsets of one partition.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Taken and not finished. Ordered, so the lowest is the commit position; a set rather than
    /// a ring of flags because gaps make positions in a ring meaningless.
    unfinished: BTreeSet<i64>,
    /// The last offset taken, `None` before the first.
    last_taken: Option<i64>,
}

impl OffsetTracker {
    /// A tracker that has taken nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was handed to processing. Offsets must increase (gaps are fine);
    /// an offset at or below the last one taken is refused and changes nothing.
    pub fn take(&mut self, offset: i64) -> Result<(), OffsetError> {
        if let Some(last) = self.last_taken
            && offset <= last
        {
            return Err(OffsetError::NotIncreasing { offset, last });
        }
        self.unfinished.insert(offset);
        self.last_taken = Some(offset);
        Ok(())
    }

    /// Records that everything `offset` led to is safely in Kafka. Returns the new commit
    /// position if finishing moved it (the engine then stores it), `None` if an earlier offset
    /// is still unfinished.
    pub fn finish(&mut self, offset: i64) -> Result<Option<i64>, OffsetError> {
        let before = self.commit_position();
        if !self.unfinished.remove(&offset) {
            return Err(OffsetError::NotInFlight { offset });
        }
        let after = self.commit_position();
        Ok(if after > before { after } else { None })
    }

    /// The position to commit: the lowest unfinished offset, or the last taken + 1 when nothing
    /// is unfinished; `None` before anything was taken (nothing of ours to commit).
    pub fn commit_position(&self) -> Option<i64> {
        match self.unfinished.first() {
            Some(&lowest) => Some(lowest),
            None => self.last_taken.map(|last| last + 1),
        }
    }

    /// Taken-but-unfinished offsets: the number the engine's window limit applies to (see the
    /// module documentation for why not the span).
    pub fn uncommitted_window(&self) -> usize {
        self.unfinished.len()
    }

    /// Records in processing — by definition the same number as
    /// [`uncommitted_window`](Self::uncommitted_window); named for the in-flight gauge.
    pub fn in_flight(&self) -> usize {
        self.unfinished.len()
    }

    /// Offsets from the commit position to the last taken, finished or not: an upper bound on
    /// what a crash now would make the next owner read again (gaps included, so it may
    /// overcount). 0 when nothing is unfinished.
    pub fn uncommitted_span(&self) -> u64 {
        match (self.unfinished.first(), self.last_taken) {
            (Some(&lowest), Some(last)) => last.abs_diff(lowest) + 1,
            _ => 0,
        }
    }

    /// The last offset taken, if any.
    pub fn last_taken(&self) -> Option<i64> {
        self.last_taken
    }

    /// Whether nothing taken is unfinished (a revoke need not wait for this partition).
    pub fn is_idle(&self) -> bool {
        self.unfinished.is_empty()
    }
}

/// The [`OffsetTracker`]s of every partition this process owns, keyed by topic and partition.
///
/// Lookups take `&str`, so finishing a record allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct PartitionOffsets {
    topics: HashMap<String, BTreeMap<i32, OffsetTracker>>,
}

impl PartitionOffsets {
    /// No partitions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a newly assigned partition. Returns `false` (and keeps the existing
    /// tracker, with its in-flight offsets) if the partition was assigned already: replacing it
    /// would turn the completions of work in flight into [`OffsetError::NotInFlight`].
    pub fn assign(&mut self, topic: &str, partition: i32) -> bool {
        let partitions = self.topics.entry(topic.to_owned()).or_default();
        if partitions.contains_key(&partition) {
            return false;
        }
        partitions.insert(partition, OffsetTracker::new());
        true
    }

    /// Stops tracking a revoked partition. Returns the final position to commit (`None` if it
    /// was not assigned or nothing was taken). Unfinished offsets stay uncommitted: the next
    /// owner reads them again. Completions that arrive later get
    /// [`OffsetError::NotAssigned`].
    pub fn revoke(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let partitions = self.topics.get_mut(topic)?;
        let tracker = partitions.remove(&partition)?;
        if partitions.is_empty() {
            self.topics.remove(topic);
        }
        tracker.commit_position()
    }

    /// Stops tracking every partition (shutdown, or a lost assignment) and returns each final
    /// position to commit, sorted by topic and partition.
    pub fn revoke_all(&mut self) -> Vec<(String, i32, i64)> {
        let mut positions: Vec<(String, i32, i64)> = self
            .topics
            .drain()
            .flat_map(|(topic, partitions)| {
                partitions
                    .into_iter()
                    .filter_map(move |(partition, tracker)| {
                        Some((topic.clone(), partition, tracker.commit_position()?))
                    })
            })
            .collect();
        positions.sort();
        positions
    }

    /// [`OffsetTracker::take`] on an assigned partition.
    pub fn take(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), OffsetError> {
        self.tracker_mut(topic, partition)?.take(offset)
    }

    /// [`OffsetTracker::finish`] on an assigned partition.
    pub fn finish(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Option<i64>, OffsetError> {
        self.tracker_mut(topic, partition)?.finish(offset)
    }

    /// The tracker of a partition, if assigned.
    pub fn get(&self, topic: &str, partition: i32) -> Option<&OffsetTracker> {
        self.topics.get(topic)?.get(&partition)
    }

    /// Every assigned partition with its tracker.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, &OffsetTracker)> {
        self.topics.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(&partition, tracker)| (topic.as_str(), partition, tracker))
        })
    }

    /// Number of assigned partitions.
    pub fn len(&self) -> usize {
        self.topics.values().map(BTreeMap::len).sum()
    }

    /// Whether no partition is assigned.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Whether no assigned partition has unfinished work (a revoke or shutdown can commit now).
    pub fn is_idle(&self) -> bool {
        self.iter().all(|(_, _, tracker)| tracker.is_idle())
    }

    fn tracker_mut(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<&mut OffsetTracker, OffsetError> {
        self.topics
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&partition))
            .ok_or_else(|| OffsetError::NotAssigned {
                topic: topic.to_owned(),
                partition,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker_with(offsets: &[i64]) -> OffsetTracker {
        let mut tracker = OffsetTracker::new();
        for &offset in offsets {
            tracker.take(offset).expect("offsets increase");
        }
        tracker
    }

    #[test]
    fn nothing_taken_has_no_position_and_is_idle() {
        let tracker = OffsetTracker::new();
        assert_eq!(tracker.commit_position(), None);
        assert_eq!(tracker.uncommitted_window(), 0);
        assert_eq!(tracker.uncommitted_span(), 0);
        assert!(tracker.is_idle());
    }

    #[test]
    fn in_order_finishes_advance_one_by_one() {
        let mut tracker = tracker_with(&[10, 11, 12]);
        assert_eq!(tracker.commit_position(), Some(10));
        assert_eq!(tracker.finish(10), Ok(Some(11)));
        assert_eq!(tracker.finish(11), Ok(Some(12)));
        assert_eq!(tracker.finish(12), Ok(Some(13)));
        assert!(tracker.is_idle());
        assert_eq!(tracker.commit_position(), Some(13));
    }

    #[test]
    fn out_of_order_finishes_hold_the_position_at_the_lowest_unfinished() {
        let mut tracker = tracker_with(&[0, 1, 2, 3, 4]);
        assert_eq!(tracker.finish(3), Ok(None));
        assert_eq!(tracker.finish(1), Ok(None));
        assert_eq!(tracker.finish(4), Ok(None));
        assert_eq!(tracker.commit_position(), Some(0));
        assert_eq!(tracker.uncommitted_window(), 2);
        assert_eq!(tracker.in_flight(), 2);
        assert_eq!(tracker.uncommitted_span(), 5);
        // Finishing the head jumps over everything finished above it.
        assert_eq!(tracker.finish(0), Ok(Some(2)));
        assert_eq!(tracker.uncommitted_span(), 3);
        assert_eq!(tracker.finish(2), Ok(Some(5)));
        assert!(tracker.is_idle());
        assert_eq!(tracker.uncommitted_span(), 0);
    }

    #[test]
    fn gaps_are_never_assumed_to_exist() {
        // 3..=6 were compacted away, 8 is a transaction marker.
        let mut tracker = tracker_with(&[2, 7, 9]);
        assert_eq!(tracker.finish(2), Ok(Some(7)));
        assert_eq!(tracker.finish(9), Ok(None));
        assert_eq!(tracker.finish(7), Ok(Some(10)));
        // After the last, the position is the last taken + 1 even across a later gap.
        tracker.take(15).expect("increasing");
        assert_eq!(tracker.commit_position(), Some(15));
        assert_eq!(tracker.finish(15), Ok(Some(16)));
    }

    #[test]
    fn the_window_counts_unfinished_offsets_not_the_span() {
        let mut tracker = tracker_with(&[100]);
        for offset in 101..200 {
            tracker.take(offset).expect("increasing");
            tracker.finish(offset).expect("in flight");
        }
        // One slow record pins the span, but only one record is unfinished.
        assert_eq!(tracker.uncommitted_window(), 1);
        assert_eq!(tracker.uncommitted_span(), 100);
        assert_eq!(tracker.commit_position(), Some(100));
    }

    #[test]
    fn finishing_an_unknown_offset_is_an_error_and_changes_nothing() {
        let mut tracker = tracker_with(&[5, 6]);
        assert_eq!(
            tracker.finish(42),
            Err(OffsetError::NotInFlight { offset: 42 })
        );
        assert_eq!(tracker.finish(5), Ok(Some(6)));
        // Twice is as unknown as never.
        assert_eq!(
            tracker.finish(5),
            Err(OffsetError::NotInFlight { offset: 5 })
        );
        assert_eq!(tracker.commit_position(), Some(6));
        assert_eq!(tracker.uncommitted_window(), 1);
    }

    #[test]
    fn taking_a_non_increasing_offset_is_refused() {
        let mut tracker = tracker_with(&[5, 6]);
        assert_eq!(
            tracker.take(6),
            Err(OffsetError::NotIncreasing { offset: 6, last: 6 })
        );
        assert_eq!(
            tracker.take(3),
            Err(OffsetError::NotIncreasing { offset: 3, last: 6 })
        );
        assert_eq!(tracker.uncommitted_window(), 2);
        assert_eq!(tracker.last_taken(), Some(6));
    }

    #[test]
    fn partitions_are_tracked_separately() {
        let mut offsets = PartitionOffsets::new();
        assert!(offsets.assign("dispatch.deliveries", 0));
        assert!(offsets.assign("dispatch.deliveries", 1));
        assert!(offsets.assign("dispatch.retry.1m", 0));
        assert_eq!(offsets.len(), 3);

        offsets.take("dispatch.deliveries", 0, 7).expect("assigned");
        offsets.take("dispatch.deliveries", 1, 3).expect("assigned");
        offsets.take("dispatch.retry.1m", 0, 50).expect("assigned");
        assert_eq!(offsets.finish("dispatch.deliveries", 1, 3), Ok(Some(4)));
        assert!(!offsets.is_idle());

        let tracker = offsets.get("dispatch.deliveries", 0).expect("assigned");
        assert_eq!(tracker.commit_position(), Some(7));
        assert_eq!(
            offsets.finish("dispatch.deliveries", 2, 0),
            Err(OffsetError::NotAssigned {
                topic: "dispatch.deliveries".into(),
                partition: 2
            })
        );
    }

    #[test]
    fn assigning_twice_keeps_the_work_in_flight() {
        let mut offsets = PartitionOffsets::new();
        assert!(offsets.assign("t", 0));
        offsets.take("t", 0, 1).expect("assigned");
        assert!(!offsets.assign("t", 0));
        assert_eq!(offsets.finish("t", 0, 1), Ok(Some(2)));
    }

    #[test]
    fn revoke_returns_the_final_position_and_forgets_the_partition() {
        let mut offsets = PartitionOffsets::new();
        offsets.assign("t", 0);
        offsets.assign("t", 1);
        for offset in 0..5 {
            offsets.take("t", 0, offset).expect("assigned");
        }
        offsets.finish("t", 0, 0).expect("in flight");
        offsets.finish("t", 0, 1).expect("in flight");
        offsets.finish("t", 0, 3).expect("in flight");

        // 2 did not finish before the deadline: the next owner starts there.
        assert_eq!(offsets.revoke("t", 0), Some(2));
        assert_eq!(offsets.len(), 1);
        // A late completion of revoked work is an error value, not a panic.
        assert!(matches!(
            offsets.finish("t", 0, 2),
            Err(OffsetError::NotAssigned { partition: 0, .. })
        ));
        // Nothing taken: nothing to commit. Unknown: nothing either.
        assert_eq!(offsets.revoke("t", 1), None);
        assert_eq!(offsets.revoke("t", 1), None);
        assert_eq!(offsets.revoke("other", 0), None);
        assert!(offsets.is_empty());

        // A partition assigned again starts afresh.
        assert!(offsets.assign("t", 0));
        assert_eq!(
            offsets.get("t", 0).expect("assigned").commit_position(),
            None
        );
    }

    #[test]
    fn revoke_all_returns_every_position_that_has_one() {
        let mut offsets = PartitionOffsets::new();
        offsets.assign("b", 1);
        offsets.assign("a", 0);
        offsets.assign("a", 3);
        offsets.take("b", 1, 10).expect("assigned");
        offsets.take("a", 0, 4).expect("assigned");
        offsets.finish("a", 0, 4).expect("in flight");
        assert_eq!(
            offsets.revoke_all(),
            vec![("a".to_owned(), 0, 5), ("b".to_owned(), 1, 10)]
        );
        assert!(offsets.is_empty());
        assert!(offsets.is_idle());
    }
}
