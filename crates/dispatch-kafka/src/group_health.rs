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

use std::collections::{BTreeMap, VecDeque};
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
    /// One of its assigned partitions stayed out of the `active` fetch state for too long.
    PartitionStuck,
    /// It knew no broker of the cluster for too long (see [`BrokerWatch`]).
    NoBroker,
}

impl RejoinReason {
    fn label(self) -> &'static str {
        match self {
            RejoinReason::Fenced => "fenced",
            RejoinReason::GroupStuck => "group_stuck",
            RejoinReason::PartitionStuck => "partition_stuck",
            RejoinReason::NoBroker => "no_broker",
        }
    }
}

/// A consumer of `group` that has not been fetching for the stall's duration is about to be
/// replaced: logged and counted.
pub fn group_stuck(group: &str, stall: &Stall) {
    let away_s = stall.duration.as_secs();
    match &stall.cause {
        StallCause::Group => {
            tracing::warn!(
                group,
                away_s,
                "the consumer group handler has been away from its coordinator or out of a settled membership too long: rejoining with a fresh consumer"
            );
            count_rejoin(group, RejoinReason::GroupStuck);
        }
        StallCause::Partition {
            topic,
            partition,
            fetch_state,
        } => {
            tracing::warn!(
                group,
                away_s,
                topic,
                partition,
                fetch_state,
                "an assigned partition has not been fetched from too long: rejoining with a fresh consumer"
            );
            count_rejoin(group, RejoinReason::PartitionStuck);
        }
        StallCause::NoBroker => {
            tracing::warn!(
                group,
                away_s,
                "the consumer has known no broker of the cluster too long (librdkafka dropped them all): rejoining with a fresh consumer"
            );
            count_rejoin(group, RejoinReason::NoBroker);
        }
    }
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

/// What keeps a consumer from fetching, and since how long ([`GroupWatch::stall`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// How long it has been so.
    pub duration: Duration,
    pub cause: StallCause,
}

/// Why a consumer is not fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StallCause {
    /// The group handler is away from its coordinator or out of a settled membership.
    Group,
    /// An assigned partition is out of the `active` fetch state (still looking up its offset,
    /// validating its leader epoch, …).
    Partition {
        topic: String,
        partition: i32,
        fetch_state: String,
    },
    /// The client knows no broker of the cluster any more (see [`BrokerWatch`]).
    NoBroker,
}

/// Whether a client still knows a broker of the cluster, from librdkafka's statistics.
///
/// librdkafka (since 2.10) removes every broker a Metadata response does not list. A KRaft
/// broker that was just resumed after a stall, still fenced by its controller, answers
/// Metadata with no broker at all; the client then drops every broker it had learned and,
/// with only its bootstrap address left, may never learn them again ("no usable brokers",
/// librdkafka#5301): its transactions, group and fetches wait forever. Seen in the fault
/// suite's `broker-freeze` (the fan-out's commit stayed unfinished for a minute after the
/// thaw) and `broker-pause`. A fresh client bootstraps and learns the brokers again.
#[derive(Debug, Default)]
pub struct BrokerWatch {
    blind_since: Mutex<Option<Instant>>,
}

impl BrokerWatch {
    /// Notes from one statistics report whether the client knows a broker it learned from
    /// the cluster (bootstrap, internal and coordinator entries do not count).
    pub fn observe(&self, statistics: &Statistics) {
        let knows_one = statistics
            .brokers
            .values()
            .any(|broker| broker.source == "learned");
        let mut since = self
            .blind_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *since = if knows_one {
            None
        } else {
            Some(since.unwrap_or_else(Instant::now))
        };
    }

    /// How long the client has known no broker of the cluster, if it knows none.
    pub fn blind_for(&self) -> Option<Duration> {
        self.blind_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|since| since.elapsed())
    }
}

/// Follows a group consumer's state from librdkafka's statistics (feed it from the client
/// context's `stats` callback, see `crate::lag::statistics_interval`) and says how long it has
/// not been able to fetch ([`GroupWatch::stall`]): its group handler away from its coordinator
/// (`cgrp.state` not `up`) or out of a settled membership (`cgrp.join_state` not `steady`:
/// joining, syncing, waiting for a revoke to complete), or one of its assigned partitions out
/// of the `active` fetch state, or the client knowing no broker at all ([`BrokerWatch`]). The
/// partition rule is for the librdkafka failure class of a partition
/// left in `offset-query` or `validate-epoch-wait` after a leader change or a broker stall
/// (librdkafka#4492, #4620), which only a new consumer gets out of.
#[derive(Debug, Default)]
pub struct GroupWatch {
    state: Mutex<WatchState>,
    brokers: BrokerWatch,
}

#[derive(Debug, Default)]
struct WatchState {
    /// Since when the handler has not been `up`, as of the last statistics.
    away_since: Option<Instant>,
    /// Since when its join state has not been `steady` (first seen so; statistics give no age
    /// for the join state).
    unsettled_since: Option<Instant>,
    /// Assigned partitions not `active`, with their fetch state and since when they were first
    /// seen so.
    not_fetching: BTreeMap<(String, i32), (String, Instant)>,
    /// Assigned partitions holding records past what was handed to the application, with the
    /// position they were first seen at and since when it has not moved.
    waiting: BTreeMap<(String, i32), Waiting>,
}

/// An assigned partition whose position has not moved while records wait past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Where the application stands (`app_offset`).
    pub position: i64,
    /// The last stable offset: records up to it can be read.
    pub stable: i64,
    /// librdkafka's fetch state.
    pub fetch_state: String,
    /// Fetched records dropped as outdated (`rx_ver_drops`).
    pub dropped_as_outdated: u64,
    /// Since when the position has not moved.
    pub since: Instant,
}

/// The fetch state of an assigned partition that fetches (librdkafka's `rd_kafka_fetch_states`).
const FETCHING: &str = "active";

impl GroupWatch {
    /// Notes the consumer's state from one statistics report.
    pub fn observe(&self, statistics: &Statistics) {
        let Some(group) = &statistics.cgrp else {
            return;
        };
        self.brokers.observe(statistics);
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
        // Only partitions of a settled assignment count: while the group rebalances, stopped
        // and starting partitions are expected (and counted by `unsettled_since`).
        let mut not_fetching = BTreeMap::new();
        let mut waiting = BTreeMap::new();
        if group.state == "up" && group.join_state == "steady" {
            for (name, topic) in &statistics.topics {
                for partition in topic.partitions.values() {
                    // `desired`: in the application's assignment; -1 is librdkafka's
                    // unassigned-partition bucket.
                    if partition.partition < 0 || !partition.desired {
                        continue;
                    }
                    let position = partition.app_offset.max(partition.lo_offset);
                    if partition.ls_offset > position {
                        let key = (name.clone(), partition.partition);
                        let since = state
                            .waiting
                            .get(&key)
                            .filter(|seen| seen.position == position)
                            .map_or(now, |seen| seen.since);
                        waiting.insert(
                            key,
                            Waiting {
                                position,
                                stable: partition.ls_offset,
                                fetch_state: partition.fetch_state.clone(),
                                dropped_as_outdated: partition.rx_ver_drops,
                                since,
                            },
                        );
                    }
                    if partition.fetch_state == FETCHING {
                        continue;
                    }
                    let key = (name.clone(), partition.partition);
                    // Counted from the first report out of `active`, whichever states it
                    // went through since (librdkafka#4620 cycles offset-query/offset-wait).
                    let since = state
                        .not_fetching
                        .get(&key)
                        .map_or(now, |(_, since)| *since);
                    not_fetching.insert(key, (partition.fetch_state.clone(), since));
                }
            }
        }
        state.not_fetching = not_fetching;
        state.waiting = waiting;
    }

    /// Assigned partitions whose position has not moved for at least `for_at_least` while
    /// records wait past it. Not a stall by itself — a role may hold a partition on purpose
    /// (the sender pauses partitions) or be busy elsewhere — but what a consumer that fetches
    /// and hands nothing out looks like; the fan-out, which never pauses, logs it.
    pub fn waiting_longer_than(&self, for_at_least: Duration) -> Vec<((String, i32), Waiting)> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.since.elapsed() >= for_at_least)
            .map(|(key, waiting)| (key.clone(), waiting.clone()))
            .collect()
    }

    /// How long the consumer has not been able to fetch, and why, if it has not: the longest
    /// of its group handler's absence and its partitions' (see [`GroupWatch`]).
    pub fn stall(&self) -> Option<Stall> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let group = [state.away_since, state.unsettled_since]
            .into_iter()
            .flatten()
            .min()
            .map(|since| (since, StallCause::Group));
        let partition = state
            .not_fetching
            .iter()
            .min_by_key(|(_, (_, since))| *since)
            .map(|((topic, partition), (fetch_state, since))| {
                (
                    *since,
                    StallCause::Partition {
                        topic: topic.clone(),
                        partition: *partition,
                        fetch_state: fetch_state.clone(),
                    },
                )
            });
        let blind = self
            .brokers
            .blind_for()
            .and_then(|blind| Instant::now().checked_sub(blind))
            .map(|since| (since, StallCause::NoBroker));
        [group, partition, blind]
            .into_iter()
            .flatten()
            .min_by_key(|(since, _)| *since)
            .map(|(since, cause)| Stall {
                duration: since.elapsed(),
                cause,
            })
    }
}

/// For a reader outside any group (the subscription view, a topic fold): once its client has
/// known no broker for `bound` ([`BrokerWatch`], librdkafka#5301), a fresh consumer from
/// `fresh` — created and assigned where the old one stood — takes its place, and the old one is
/// retired. Logged and counted as a rejoin of group `reader` with reason `no_broker`. A fresh
/// consumer that cannot be made is logged; the old one stays until the next call.
pub fn renew_blind_reader<C>(
    consumer: &mut rdkafka::consumer::BaseConsumer<C>,
    blind_for: Option<Duration>,
    bound: Duration,
    reader: &str,
    fresh: impl FnOnce() -> Result<rdkafka::consumer::BaseConsumer<C>, KafkaError>,
) where
    C: rdkafka::consumer::ConsumerContext + 'static,
{
    let Some(blind_for) = blind_for.filter(|blind_for| *blind_for >= bound) else {
        return;
    };
    match fresh() {
        Ok(fresh) => {
            tracing::warn!(
                reader,
                blind_s = blind_for.as_secs(),
                "a reader has known no broker of the cluster too long (librdkafka#5301): reading on with a fresh consumer from where it stood"
            );
            count_rejoin(reader, RejoinReason::NoBroker);
            retire(std::sync::Arc::new(std::mem::replace(consumer, fresh)));
        }
        Err(error) => {
            tracing::warn!(reader, %error, "a reader knows no broker, and a fresh consumer could not be made; trying again later");
        }
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
    use rdkafka::consumer::Consumer;
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
            brokers: brokers(&[
                ("127.0.0.1:9092/bootstrap", "configured"),
                ("127.0.0.1:9092/1", "learned"),
            ]),
            ..Statistics::default()
        }
    }

    fn brokers(
        entries: &[(&str, &str)],
    ) -> std::collections::HashMap<String, rdkafka::statistics::Broker> {
        entries
            .iter()
            .map(|(name, source)| {
                let broker = rdkafka::statistics::Broker {
                    name: (*name).to_owned(),
                    source: (*source).to_owned(),
                    state: "UP".to_owned(),
                    ..Default::default()
                };
                ((*name).to_owned(), broker)
            })
            .collect()
    }

    /// A consumer context that tells consumers apart.
    struct Tagged(u32);
    impl rdkafka::ClientContext for Tagged {}
    impl rdkafka::consumer::ConsumerContext for Tagged {}

    fn tagged(tag: u32) -> rdkafka::consumer::BaseConsumer<Tagged> {
        // Creating a consumer connects to nothing yet: no broker is needed.
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "unused")
            .create_with_context(Tagged(tag))
            .expect("consumer")
    }

    #[test]
    fn a_reader_is_renewed_only_once_it_knew_no_broker_for_the_bound() {
        let bound = Duration::from_secs(20);
        let mut consumer = tagged(1);
        renew_blind_reader(&mut consumer, None, bound, "reader:t", || {
            panic!("not blind: no fresh consumer")
        });
        renew_blind_reader(
            &mut consumer,
            Some(Duration::from_secs(19)),
            bound,
            "reader:t",
            || panic!("not blind long enough: no fresh consumer"),
        );
        assert_eq!(consumer.context().0, 1);
        renew_blind_reader(&mut consumer, Some(bound), bound, "reader:t", || {
            Ok(tagged(2))
        });
        assert_eq!(consumer.context().0, 2, "replaced");
        renew_blind_reader(
            &mut consumer,
            Some(Duration::from_secs(60)),
            bound,
            "reader:t",
            || Err(KafkaError::ClientCreation("refused".to_owned())),
        );
        assert_eq!(
            consumer.context().0,
            2,
            "kept when no fresh one could be made"
        );
    }

    #[test]
    fn a_client_that_dropped_every_learned_broker_is_blind_from_when_first_seen() {
        let watch = GroupWatch::default();
        watch.observe(&statistics("up", 60_000));
        assert_eq!(watch.stall(), None, "knows broker 1");
        // librdkafka#5301: a Metadata response without brokers; only the bootstrap is left.
        let mut blind = statistics("up", 60_000);
        blind.brokers = brokers(&[
            ("127.0.0.1:9092/bootstrap", "configured"),
            (":0/internal", "internal"),
        ]);
        watch.observe(&blind);
        let first = watch.stall().expect("blind");
        assert_eq!(first.cause, StallCause::NoBroker);
        std::thread::sleep(Duration::from_millis(20));
        watch.observe(&blind);
        let later = watch.stall().expect("still blind");
        assert!(later.duration > first.duration, "{first:?} then {later:?}");
        watch.observe(&statistics("up", 60_000));
        assert_eq!(watch.stall(), None, "learned again");
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
        assert_eq!(
            watch.stall().map(|stall| stall.duration),
            None,
            "nothing known yet"
        );
        watch.observe(&statistics("up", 60_000));
        assert_eq!(watch.stall().map(|stall| stall.duration), None);
        watch.observe(&statistics("query-coord", 25_000));
        let away = watch.stall().map(|stall| stall.duration).expect("away");
        assert!(away >= Duration::from_secs(25), "{away:?}");
        watch.observe(&statistics("up", 10));
        assert_eq!(
            watch.stall().map(|stall| stall.duration),
            None,
            "back in its group"
        );
        // A report without a group (not a group consumer) changes nothing.
        watch.observe(&statistics("query-coord", 1_000));
        watch.observe(&Statistics::default());
        assert!(watch.stall().map(|stall| stall.duration).is_some());
    }

    #[test]
    fn the_watch_counts_time_out_of_a_settled_membership_from_when_it_was_first_seen() {
        let watch = GroupWatch::default();
        watch.observe(&joining("up", 60_000, "wait-join"));
        let first = watch
            .stall()
            .map(|stall| stall.duration)
            .expect("unsettled");
        std::thread::sleep(Duration::from_millis(20));
        watch.observe(&joining("up", 60_020, "wait-sync"));
        let later = watch
            .stall()
            .map(|stall| stall.duration)
            .expect("still unsettled");
        assert!(
            later > first,
            "counted from the first report: {first:?} then {later:?}"
        );
        watch.observe(&joining("up", 60_040, "steady"));
        assert_eq!(watch.stall().map(|stall| stall.duration), None, "settled");
    }

    fn with_partition(mut statistics: Statistics, fetch_state: &str, desired: bool) -> Statistics {
        let partition = rdkafka::statistics::Partition {
            partition: 2,
            desired,
            fetch_state: fetch_state.to_owned(),
            ..Default::default()
        };
        let topic = rdkafka::statistics::Topic {
            topic: "dispatch.deliveries".to_owned(),
            partitions: [(2, partition)].into_iter().collect(),
            ..Default::default()
        };
        statistics.topics = [("dispatch.deliveries".to_owned(), topic)]
            .into_iter()
            .collect();
        statistics
    }

    #[test]
    fn an_assigned_partition_out_of_the_active_fetch_state_is_a_stall_from_when_first_seen() {
        let watch = GroupWatch::default();
        watch.observe(&with_partition(statistics("up", 60_000), "active", true));
        assert_eq!(watch.stall(), None, "fetching");
        watch.observe(&with_partition(
            statistics("up", 60_000),
            "offset-query",
            true,
        ));
        let first = watch.stall().expect("not fetching");
        assert_eq!(
            first.cause,
            StallCause::Partition {
                topic: "dispatch.deliveries".to_owned(),
                partition: 2,
                fetch_state: "offset-query".to_owned(),
            }
        );
        std::thread::sleep(Duration::from_millis(20));
        // Cycling between the states that do not fetch does not restart the count.
        watch.observe(&with_partition(
            statistics("up", 60_020),
            "offset-wait",
            true,
        ));
        let later = watch.stall().expect("still not fetching");
        assert!(later.duration > first.duration, "{first:?} then {later:?}");
        watch.observe(&with_partition(statistics("up", 60_040), "active", true));
        assert_eq!(watch.stall(), None, "fetching again");
    }

    #[test]
    fn a_partition_whose_position_stands_while_records_wait_is_reported_not_stalled() {
        let watch = GroupWatch::default();
        let mut waiting = with_partition(statistics("up", 60_000), "active", true);
        if let Some(partition) = waiting
            .topics
            .get_mut("dispatch.deliveries")
            .and_then(|topic| topic.partitions.get_mut(&2))
        {
            partition.app_offset = 100;
            partition.ls_offset = 250;
            partition.rx_ver_drops = 7;
        }
        watch.observe(&waiting);
        assert_eq!(watch.stall(), None, "fetching, so not a stall");
        std::thread::sleep(Duration::from_millis(20));
        watch.observe(&waiting);
        let reported = watch.waiting_longer_than(Duration::from_millis(10));
        assert_eq!(reported.len(), 1, "{reported:?}");
        let (key, seen) = &reported[0];
        assert_eq!(key, &("dispatch.deliveries".to_owned(), 2));
        assert_eq!(
            (seen.position, seen.stable, seen.dropped_as_outdated),
            (100, 250, 7)
        );
        // The position moved: counted afresh.
        if let Some(partition) = waiting
            .topics
            .get_mut("dispatch.deliveries")
            .and_then(|topic| topic.partitions.get_mut(&2))
        {
            partition.app_offset = 150;
        }
        watch.observe(&waiting);
        assert!(
            watch
                .waiting_longer_than(Duration::from_millis(10))
                .is_empty()
        );
    }

    #[test]
    fn partitions_outside_the_assignment_or_a_settled_group_are_no_stall() {
        let watch = GroupWatch::default();
        // Known from metadata, not assigned to this consumer.
        watch.observe(&with_partition(statistics("up", 60_000), "none", false));
        assert_eq!(watch.stall(), None);
        // While rebalancing, the group's own state is what counts.
        watch.observe(&with_partition(
            joining("up", 60_000, "wait-sync"),
            "stopped",
            true,
        ));
        assert_eq!(
            watch.stall().map(|stall| stall.cause),
            Some(StallCause::Group)
        );
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
