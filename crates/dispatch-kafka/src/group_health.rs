//! Whether a group consumer has lost its group for good, and when it may be replaced.
//!
//! Two ways librdkafka leaves a consumer that never fetches again after a broker stall longer
//! than the session (frozen, paused, cut off), both seen in `dispatchd all` under load with a
//! 45 s SIGSTOP of the broker (issue 12, item 7):
//! - **Fenced static membership.** The session timed out, the consumer rejoined, and a request
//!   it had sent under its old member id was answered `FENCED_INSTANCE_ID`, which librdkafka
//!   makes a fatal consumer error (librdkafka#3437). See [`is_fenced_member`].
//! - **A group handler that never finds its coordinator again.** After the lost assignment,
//!   the handler stayed in `query-coord` ("no broker available for coordinator query") for as
//!   long as the test watched (95 s), while other clients of the same process talked to the same
//!   broker (librdkafka#3082 describes the same). [`GroupWatch`] notices it from the statistics.
//!
//! Either way a fresh consumer with the same configuration (and the same `group.instance.id`)
//! takes the membership back: what the old one had not committed is read again (at least
//! once). The roles decide when; [`Rejoins`] bounds how often a fenced consumer may be
//! replaced, because a second process with the same instance id fences too, and replacing the
//! consumer would fence that one in turn.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use dispatch_telemetry::names::KAFKA_CONSUMER_REJOINS_TOTAL;

/// Whether `error` says this consumer's static group membership was taken over
/// (`FENCED_INSTANCE_ID`).
pub fn is_fenced_member(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId)
}

/// A fenced consumer is replaced this often at most within [`REJOIN_WINDOW`].
pub const MAX_REJOINS: usize = 3;
/// The window [`MAX_REJOINS`] counts in.
pub const REJOIN_WINDOW: Duration = Duration::from_secs(300);

/// When a fenced static member may replace its consumer (see the module documentation).
#[derive(Debug, Default)]
pub struct Rejoins {
    recent: VecDeque<Instant>,
}

impl Rejoins {
    /// A consumer of `group` (static member `instance`) was fenced with `error`: `Ok` (logged
    /// and counted) when it may be replaced now, the error back when the budget is spent.
    pub fn fenced(
        &mut self,
        error: KafkaError,
        group: &str,
        instance: &str,
    ) -> Result<(), KafkaError> {
        if !self.allow(Instant::now()) {
            tracing::error!(%error, instance, "static membership fenced again and again: another process uses this kafka.instance_id; exiting");
            return Err(error);
        }
        tracing::warn!(%error, instance, "static membership fenced (a broker stall outlasted the session): rejoining with a fresh consumer");
        count_rejoin(group, RejoinReason::Fenced);
        Ok(())
    }

    /// Whether a rejoin at `now` stays within the budget; counts it if so.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= REJOIN_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= MAX_REJOINS {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Why a consumer is being replaced, for the rejoin counter's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RejoinReason {
    /// Its static membership was fenced.
    Fenced,
    /// Its group handler was away from its coordinator for too long.
    GroupStuck,
}

impl RejoinReason {
    fn label(self) -> &'static str {
        match self {
            RejoinReason::Fenced => "fenced",
            RejoinReason::GroupStuck => "group_stuck",
        }
    }
}

/// A consumer of `group` whose handler has been away from its coordinator for `away` is about
/// to be replaced: logged and counted.
pub fn group_stuck(group: &str, away: Duration) {
    tracing::warn!(
        group,
        away_s = away.as_secs(),
        "the consumer group handler has been away from its coordinator or out of a settled membership too long: rejoining with a fresh consumer"
    );
    count_rejoin(group, RejoinReason::GroupStuck);
}

/// Counts a consumer of group `group` about to be replaced.
fn count_rejoin(group: &str, reason: RejoinReason) {
    metrics::counter!(
        KAFKA_CONSUMER_REJOINS_TOTAL,
        "group" => group.to_owned(),
        "reason" => reason.label(),
    )
    .increment(1);
}

/// How long a group handler may be away from its coordinator (any state but `up`) before the
/// consumer is replaced: twice the session, at least 20 s — a coordinator moving to another
/// broker takes well under that, and a broker that is really down for longer only costs a new
/// consumer every so often.
pub fn stuck_after(session_timeout: Duration) -> Duration {
    (session_timeout * 2).max(Duration::from_secs(20))
}

/// Follows the consumer group handler's state from librdkafka's statistics (feed it from the
/// client context's `stats` callback, see `crate::lag::statistics_interval`): how long it has
/// been away from its coordinator (`cgrp.state` not `up`) or out of a settled membership
/// (`cgrp.join_state` not `steady`: joining, syncing, waiting for a revoke to complete).
#[derive(Debug, Default)]
pub struct GroupWatch {
    state: Mutex<WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    /// Since when the handler has not been `up`, as of the last statistics.
    away_since: Option<Instant>,
    /// Since when its join state has not been `steady` (first seen so; statistics give no age
    /// for the join state).
    unsettled_since: Option<Instant>,
}

impl GroupWatch {
    /// Notes the group handler's state from one statistics report.
    pub fn observe(&self, statistics: &Statistics) {
        let Some(group) = &statistics.cgrp else {
            return;
        };
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.away_since = (group.state != "up").then(|| {
            let age = Duration::from_millis(u64::try_from(group.stateage).unwrap_or(0));
            now.checked_sub(age).unwrap_or(now)
        });
        state.unsettled_since = if group.join_state == "steady" {
            None
        } else {
            Some(state.unsettled_since.unwrap_or(now))
        };
    }

    /// How long the handler has been away from its coordinator or out of a settled membership,
    /// whichever is longer, if it is.
    pub fn away_for(&self) -> Option<Duration> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        [state.away_since, state.unsettled_since]
            .into_iter()
            .flatten()
            .min()
            .map(|since| since.elapsed())
    }
}

/// Drops a replaced consumer on a thread of its own: closing a consumer that cannot reach its
/// coordinator may block for a long time (librdkafka#3740), and must hold up neither the role's
/// loop nor an async worker. A consumer shared with tasks still running (`Arc`) is dropped once
/// they let go of it.
pub fn retire<T: Send + Sync + 'static>(consumer: std::sync::Arc<T>) {
    let spawned = std::thread::Builder::new()
        .name("retired-consumer".to_owned())
        .spawn(move || {
            let mut shared = consumer;
            loop {
                match std::sync::Arc::try_unwrap(shared) {
                    Ok(consumer) => {
                        drop(consumer);
                        tracing::debug!("replaced consumer closed");
                        return;
                    }
                    Err(still_shared) => {
                        shared = still_shared;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
    if let Err(error) = spawned {
        // Without a thread the consumer is dropped wherever its last holder lets go.
        tracing::warn!(%error, "no thread to close the replaced consumer on");
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::ConsumerGroup;

    use super::*;

    fn statistics(state: &str, stateage: i64) -> Statistics {
        joining(state, stateage, "steady")
    }

    fn joining(state: &str, stateage: i64, join_state: &str) -> Statistics {
        Statistics {
            cgrp: Some(ConsumerGroup {
                state: state.to_owned(),
                stateage,
                join_state: join_state.to_owned(),
                ..ConsumerGroup::default()
            }),
            ..Statistics::default()
        }
    }

    #[test]
    fn rejoins_are_bounded_within_the_window() {
        let mut rejoins = Rejoins::default();
        let start = Instant::now();
        for n in 0..MAX_REJOINS {
            assert!(
                rejoins.allow(start + Duration::from_secs(n as u64)),
                "rejoin {n}"
            );
        }
        // Another process with the same instance id fences at once, again and again.
        assert!(!rejoins.allow(start + Duration::from_secs(10)));
        // Once the first ones are older than the window, a stall may be recovered from again.
        assert!(rejoins.allow(start + REJOIN_WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn the_watch_counts_time_away_from_the_coordinator_only() {
        let watch = GroupWatch::default();
        assert_eq!(watch.away_for(), None, "nothing known yet");
        watch.observe(&statistics("up", 60_000));
        assert_eq!(watch.away_for(), None);
        watch.observe(&statistics("query-coord", 25_000));
        let away = watch.away_for().expect("away");
        assert!(away >= Duration::from_secs(25), "{away:?}");
        watch.observe(&statistics("up", 10));
        assert_eq!(watch.away_for(), None, "back in its group");
        // A report without a group (not a group consumer) changes nothing.
        watch.observe(&statistics("query-coord", 1_000));
        watch.observe(&Statistics::default());
        assert!(watch.away_for().is_some());
    }

    #[test]
    fn the_watch_counts_time_out_of_a_settled_membership_from_when_it_was_first_seen() {
        let watch = GroupWatch::default();
        watch.observe(&joining("up", 60_000, "wait-join"));
        let first = watch.away_for().expect("unsettled");
        std::thread::sleep(Duration::from_millis(20));
        watch.observe(&joining("up", 60_020, "wait-sync"));
        let later = watch.away_for().expect("still unsettled");
        assert!(
            later > first,
            "counted from the first report: {first:?} then {later:?}"
        );
        watch.observe(&joining("up", 60_040, "steady"));
        assert_eq!(watch.away_for(), None, "settled");
    }

    #[test]
    fn the_stuck_bound_is_twice_the_session_and_at_least_twenty_seconds() {
        assert_eq!(
            stuck_after(Duration::from_secs(10)),
            Duration::from_secs(20)
        );
        assert_eq!(
            stuck_after(Duration::from_secs(45)),
            Duration::from_secs(90)
        );
        assert_eq!(stuck_after(Duration::from_secs(6)), Duration::from_secs(20));
    }
}
