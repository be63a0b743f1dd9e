//! The gate of one retry-tier partition: a record is delivered only once its `not_before` has
//! come; an early head is held, its partition paused, and resumed when it is due.
//!
//! # Why only the head
//! Records of one tier arrive in due order: the same delay added to times that increase as they
//! are appended. So when the head is not due, nothing behind it is, and holding the head holds
//! the partition correctly. Two things bend the order a little, and the gate accepts both: jitter
//! on tier delays, and a `Retry-After` longer than the tier's delay (capped by configuration).
//! A record behind such a head waits for it — at most the jitter or the cap — rather than
//! overtaking it.
//!
//! # The librdkafka trap, and the sequence
//! Pausing a partition stops *fetching*, but messages librdkafka fetched before the pause are
//! still handed over by later polls. They must not be processed early, and must not be skipped
//! either: the engine drops them and later seeks the partition back so they are read again.
//! 1. [`DueGate::offer`] of an early record → [`GateDecision::HoldAndPause`]: the engine keeps
//!    the record (it has taken its offset, so the commit position stays at or below it), pauses
//!    the partition and sets a timer for `until`.
//! 2. Every record of that partition polled meanwhile → [`GateDecision::DropRefetched`]: the
//!    engine drops it without taking its offset.
//! 3. At `until`, [`DueGate::on_due`] → [`Released`]: the engine delivers the held record,
//!    `seek`s the partition to `seek_to` (held offset + 1: the dropped records are read again),
//!    then resumes it. Pause before seek, seek before resume: a seek on a fetching partition
//!    races the fetcher.
//! 4. After a seek, librdkafka discards what it had fetched, but should a stale message below
//!    `seek_to` still arrive, it is dropped too: it is the held record or one before it, both
//!    already handled.
//!
//! # Rebalance
//! On revoke the gate forgets the held record ([`DueGate::on_revoke`]): it was taken but not
//! finished, so the commit position is at or below it and the next owner reads it again and
//! holds it until the same `not_before` — a rebalance delays nothing. On assign the engine starts
//! a new gate and must make sure the partition is *resumed*: librdkafka keeps a partition's
//! paused flag across a revoke and re-assign in the same consumer.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// What the engine does with a record offered to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    /// Due: deliver it now.
    Deliver,
    /// Early: keep the record, pause the partition, wake at `until` and call
    /// [`DueGate::on_due`].
    HoldAndPause {
        /// When the held record is due.
        until: Instant,
    },
    /// Fetched before the pause took effect (or stale after a seek): drop it without taking
    /// its offset; the seek at release reads it again.
    DropRefetched,
}

/// The held record is due: deliver it, seek, resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// The held record's offset (the engine delivers the record it kept).
    pub offset: i64,
    /// Where to seek the partition before resuming: `offset + 1`.
    pub seek_to: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Records pass through; offsets below `read_from` are stale (already handled).
    Open { read_from: Option<i64> },
    /// A record is held; the partition is paused.
    Holding { offset: i64, until: Instant },
}

/// The due-time gate of one retry-tier partition.
#[derive(Debug, Clone)]
pub struct DueGate {
    state: State,
}

impl Default for DueGate {
    fn default() -> Self {
        Self::new()
    }
}

impl DueGate {
    /// A gate for a newly assigned partition: nothing held.
    pub fn new() -> Self {
        Self {
            state: State::Open { read_from: None },
        }
    }

    /// Decides what happens to the record at `offset`, due at `not_before`, polled at `now`.
    pub fn offer(&mut self, offset: i64, not_before: Instant, now: Instant) -> GateDecision {
        match self.state {
            State::Holding { .. } => GateDecision::DropRefetched,
            State::Open {
                read_from: Some(read_from),
            } if offset < read_from => GateDecision::DropRefetched,
            State::Open { .. } if not_before <= now => {
                self.state = State::Open {
                    read_from: Some(offset + 1),
                };
                GateDecision::Deliver
            }
            State::Open { .. } => {
                self.state = State::Holding {
                    offset,
                    until: not_before,
                };
                GateDecision::HoldAndPause { until: not_before }
            }
        }
    }

    /// At `now`: if the held record is due, releases it (the partition is to be sought and
    /// resumed). `None` if nothing is held or it is not due yet (a timer that fired early).
    pub fn on_due(&mut self, now: Instant) -> Option<Released> {
        match self.state {
            State::Holding { offset, until } if until <= now => {
                self.state = State::Open {
                    read_from: Some(offset + 1),
                };
                Some(Released {
                    offset,
                    seek_to: offset + 1,
                })
            }
            _ => None,
        }
    }

    /// The partition was revoked: forgets the held record and returns its offset (not
    /// delivered; the next owner reads it again).
    pub fn on_revoke(&mut self) -> Option<i64> {
        let held = self.held_offset();
        *self = Self::new();
        held
    }

    /// The offset of the held record, if one is held (the partition is paused).
    pub fn held_offset(&self) -> Option<i64> {
        match self.state {
            State::Holding { offset, .. } => Some(offset),
            State::Open { .. } => None,
        }
    }

    /// When the held record is due, for the engine's timer.
    pub fn hold_until(&self) -> Option<Instant> {
        match self.state {
            State::Holding { until, .. } => Some(until),
            State::Open { .. } => None,
        }
    }

    /// Whether a record is held (and the partition should be paused).
    pub fn is_holding(&self) -> bool {
        matches!(self.state, State::Holding { .. })
    }
}

/// Converts a record's wall-clock `not_before` into the monotonic clock of the engine's timers,
/// given one reading of both clocks (`wall_now`, `now`). Already due → `now`. Monotonic
/// instants are what timers and the gate compare; the wall clock is read once per poll so a
/// clock step cannot make a held record wait twice.
pub fn due_instant(not_before: SystemTime, wall_now: SystemTime, now: Instant) -> Instant {
    // A year bounds a corrupt far-future `not_before`, so the addition cannot overflow.
    const LONGEST_WAIT: Duration = Duration::from_secs(86_400 * 365);
    let wait = not_before
        .duration_since(wall_now)
        .unwrap_or(Duration::ZERO);
    now + wait.min(LONGEST_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn due_records_pass_and_early_ones_are_held() {
        let t0 = Instant::now();
        let mut gate = DueGate::new();
        assert_eq!(gate.offer(10, t0 - SEC, t0), GateDecision::Deliver);
        assert_eq!(gate.offer(11, t0, t0), GateDecision::Deliver);
        assert!(!gate.is_holding());
        assert_eq!(
            gate.offer(12, t0 + SEC * 5, t0),
            GateDecision::HoldAndPause {
                until: t0 + SEC * 5
            }
        );
        assert!(gate.is_holding());
        assert_eq!(gate.held_offset(), Some(12));
        assert_eq!(gate.hold_until(), Some(t0 + SEC * 5));
    }

    #[test]
    fn hold_drop_refetched_due_release_resume() {
        let t0 = Instant::now();
        let mut gate = DueGate::new();
        assert_eq!(
            gate.offer(40, t0 + SEC * 60, t0),
            GateDecision::HoldAndPause {
                until: t0 + SEC * 60
            }
        );
        // Fetched before the pause: dropped, however due they claim to be.
        for offset in 41..45 {
            assert_eq!(gate.offer(offset, t0, t0), GateDecision::DropRefetched);
        }
        // A timer that fires early releases nothing.
        assert_eq!(gate.on_due(t0 + SEC * 59), None);
        assert!(gate.is_holding());
        assert_eq!(
            gate.on_due(t0 + SEC * 60),
            Some(Released {
                offset: 40,
                seek_to: 41
            })
        );
        assert!(!gate.is_holding());
        assert_eq!(gate.on_due(t0 + SEC * 61), None, "released once");
        // Resumed from 41: the dropped records come again and pass (they are due by now).
        let t1 = t0 + SEC * 61;
        // A stale copy of the held record after the seek is dropped.
        assert_eq!(gate.offer(40, t0, t1), GateDecision::DropRefetched);
        for offset in 41..45 {
            assert_eq!(gate.offer(offset, t0 + SEC * 60, t1), GateDecision::Deliver);
        }
        // And the next early one is held again.
        assert_eq!(
            gate.offer(45, t1 + SEC, t1),
            GateDecision::HoldAndPause { until: t1 + SEC }
        );
    }

    #[test]
    fn revoke_forgets_the_held_record_and_a_new_owner_holds_it_again() {
        let t0 = Instant::now();
        let mut gate = DueGate::new();
        assert!(matches!(
            gate.offer(7, t0 + SEC * 10, t0),
            GateDecision::HoldAndPause { .. }
        ));
        assert_eq!(gate.on_revoke(), Some(7));
        assert!(!gate.is_holding());
        assert_eq!(gate.on_revoke(), None);
        // Re-assigned (here or elsewhere), the same record is read again and waits for the same
        // due time — the rebalance neither skips nor hastens it.
        let t1 = t0 + SEC * 3;
        assert_eq!(
            gate.offer(7, t0 + SEC * 10, t1),
            GateDecision::HoldAndPause {
                until: t0 + SEC * 10
            }
        );
        assert_eq!(
            gate.on_due(t0 + SEC * 10),
            Some(Released {
                offset: 7,
                seek_to: 8
            })
        );
    }

    #[test]
    fn wall_clock_due_times_become_instants() {
        let now = Instant::now();
        let wall_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            due_instant(wall_now + SEC * 90, wall_now, now),
            now + SEC * 90
        );
        assert_eq!(due_instant(wall_now - SEC * 90, wall_now, now), now);
        assert_eq!(due_instant(wall_now, wall_now, now), now);
    }
}
