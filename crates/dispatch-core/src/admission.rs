//! What the sender does with a delivery task that fell due, before any request is made: a pure
//! decision from what is known about its subscription and its endpoint at that moment. The
//! sender's engine gathers the facts and performs the [`Admission`]; the decision after an
//! attempt is [`crate::retry::RetrySchedule::decide`], and a deferral's own fate is
//! [`plan_deferral`].

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::retry::RetrySchedule;

/// The subscription a task was made for, as the sender's table has it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState<'a> {
    /// Deleted since the task was made.
    Deleted,
    /// Disabled, with the reason it was disabled for.
    Disabled {
        reason: &'a str,
    },
    Enabled,
}

/// Room in the endpoint's in-memory queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// The queue takes another task.
    Room,
    /// The queue holds its limit (`sender.endpoint.max_backlog`). `drains_in_time`: at the pace
    /// the endpoint itself answers, a backlog of that limit goes within
    /// `sender.endpoint.max_queue_wait_ms` (see [`drains_in_time`]) — a healthy endpoint under
    /// a burst, which back-pressure paces however long its queue grows.
    /// Otherwise a slow or hanging endpoint, whose deliveries would hold its partition's
    /// uncommitted window (and so every other endpoint of that partition) for a long time.
    Full { drains_in_time: bool },
}

/// What is known when a task falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionFacts<'a> {
    pub subscription: SubscriptionState<'a>,
    /// The endpoint's circuit is open (the breaker keeps requests off it).
    pub circuit_open: bool,
    pub backlog: Backlog,
    /// A first retry tier exists to park a task on.
    pub can_defer: bool,
}

/// What becomes of a task that fell due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not attempted; an attempt record with outcome `SKIPPED` says why (`reason`).
    Skip { reason: &'static str },
    /// Not attempted; kept in the DLQ, replayable once the subscription is enabled again.
    DeadLetter { reason: String },
    /// Not sent because the circuit is open; recorded as such (outcome `CIRCUIT_OPEN`) and the
    /// delivery moves along its schedule like after a failed attempt: the schedule is the
    /// promise, an open circuit does not stretch it.
    NotSent,
    /// Queued on its endpoint.
    Queue,
    /// Queued on its endpoint past the backlog limit: the endpoint drains in time (a burst is
    /// paced by back-pressure — the partition's uncommitted window pauses the fetch — never
    /// parked on a retry tier), or there is no tier to park it on and dropping it would lose it.
    /// The partition's uncommitted window bounds the memory either way.
    QueuePastBacklog,
    /// Parked on the first retry tier without spending an attempt (`reason`, a metric label).
    Defer { reason: &'static str },
}

/// The `reason` of a skipped task whose subscription was deleted.
pub const SKIP_DELETED: &str = "deleted";
/// The `reason` of a task deferred because its endpoint's queue was full and drains too slowly.
pub const DEFER_SLOW: &str = "slow_endpoint";

/// Whether `waiting` deliveries leave within `max_wait` at `drain_rate` (deliveries per second
/// the endpoint completed lately). An endpoint whose rate is not measured yet is given the
/// benefit of the doubt: it is measured within a second of being busy. One that completed
/// nothing while busy (hanging) does not drain.
#[must_use]
pub fn drains_in_time(waiting: usize, drain_rate: Option<f64>, max_wait: Duration) -> bool {
    match drain_rate {
        None => true,
        Some(rate) if rate <= 0.0 || !rate.is_finite() => false,
        Some(rate) => waiting as f64 / rate <= max_wait.as_secs_f64(),
    }
}

/// Decides what becomes of a task that fell due (see [`Admission`]). In this order: a deleted
/// subscription is skipped, a disabled one dead-lettered, an open circuit spends the attempt,
/// then the task is queued if its endpoint has room or drains in time (paced, not parked),
/// deferred if its endpoint is slow.
#[must_use]
pub fn admit(facts: &AdmissionFacts<'_>) -> Admission {
    match facts.subscription {
        SubscriptionState::Deleted => {
            return Admission::Skip {
                reason: SKIP_DELETED,
            };
        }
        SubscriptionState::Disabled { reason } => {
            return Admission::DeadLetter {
                reason: format!("subscription disabled: {reason}"),
            };
        }
        SubscriptionState::Enabled => {}
    }
    if facts.circuit_open {
        return Admission::NotSent;
    }
    match (facts.backlog, facts.can_defer) {
        (Backlog::Room, _) => Admission::Queue,
        (
            Backlog::Full {
                drains_in_time: false,
            },
            true,
        ) => Admission::Defer { reason: DEFER_SLOW },
        (Backlog::Full { .. }, _) => Admission::QueuePastBacklog,
    }
}

/// What a deferred task becomes when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeferralPlan {
    /// Older than `retry.max_total_age`: dead-lettered with this reason.
    DeadLetter { reason: String },
    /// Written to the first tier, not to be attempted before `not_before`; its deferral count
    /// becomes `deferrals`.
    Park {
        not_before: SystemTime,
        deferrals: u32,
    },
}

/// The fate of a task being deferred at `now`, first attempted (or first deferred) at
/// `first_seen` and deferred `deferrals` times before. `None` when the schedule has no tier
/// (then nothing is deferred: see [`admit`]).
pub fn plan_deferral<R: Rng + ?Sized>(
    schedule: &RetrySchedule,
    first_seen: SystemTime,
    deferrals: u32,
    now: SystemTime,
    rng: &mut R,
) -> Option<DeferralPlan> {
    if let Some(dead) = schedule.expired(first_seen, now) {
        return Some(DeferralPlan::DeadLetter {
            reason: format!("{dead} (deferred {deferrals} times)"),
        });
    }
    let deferral = schedule.defer(now, rng)?;
    Some(DeferralPlan::Park {
        not_before: deferral.not_before,
        deferrals: deferrals + 1,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::retry::{HumanDuration, RetryConfig};

    fn facts(subscription: SubscriptionState<'_>) -> AdmissionFacts<'_> {
        AdmissionFacts {
            subscription,
            circuit_open: false,
            backlog: Backlog::Room,
            can_defer: true,
        }
    }

    #[test]
    fn a_deleted_subscription_is_skipped_whatever_its_endpoint() {
        for circuit_open in [false, true] {
            for backlog in BACKLOGS {
                let admission = admit(&AdmissionFacts {
                    circuit_open,
                    backlog,
                    ..facts(SubscriptionState::Deleted)
                });
                assert_eq!(admission, Admission::Skip { reason: "deleted" });
            }
        }
    }

    #[test]
    fn a_disabled_subscription_is_dead_lettered_with_its_reason() {
        let admission = admit(&AdmissionFacts {
            circuit_open: true,
            ..facts(SubscriptionState::Disabled {
                reason: "endpoint answered 410 Gone",
            })
        });
        assert_eq!(
            admission,
            Admission::DeadLetter {
                reason: "subscription disabled: endpoint answered 410 Gone".to_owned()
            }
        );
    }

    #[test]
    fn an_open_circuit_spends_the_attempt_even_with_room_or_a_tier() {
        for backlog in BACKLOGS {
            for can_defer in [false, true] {
                let admission = admit(&AdmissionFacts {
                    circuit_open: true,
                    backlog,
                    can_defer,
                    ..facts(SubscriptionState::Enabled)
                });
                assert_eq!(admission, Admission::NotSent);
            }
        }
    }

    const BACKLOGS: [Backlog; 3] = [
        Backlog::Room,
        Backlog::Full {
            drains_in_time: true,
        },
        Backlog::Full {
            drains_in_time: false,
        },
    ];

    #[test]
    fn room_queues_a_slow_endpoints_full_backlog_defers_or_without_a_tier_keeps_it() {
        assert_eq!(admit(&facts(SubscriptionState::Enabled)), Admission::Queue);
        let slow = AdmissionFacts {
            backlog: Backlog::Full {
                drains_in_time: false,
            },
            ..facts(SubscriptionState::Enabled)
        };
        assert_eq!(
            admit(&slow),
            Admission::Defer {
                reason: "slow_endpoint"
            }
        );
        assert_eq!(
            admit(&AdmissionFacts {
                can_defer: false,
                ..slow
            }),
            Admission::QueuePastBacklog
        );
    }

    #[test]
    fn a_burst_to_an_endpoint_that_keeps_up_is_paced_never_deferred() {
        for can_defer in [false, true] {
            let admission = admit(&AdmissionFacts {
                backlog: Backlog::Full {
                    drains_in_time: true,
                },
                can_defer,
                ..facts(SubscriptionState::Enabled)
            });
            assert_eq!(admission, Admission::QueuePastBacklog);
        }
    }

    #[test]
    fn draining_in_time_compares_the_wait_at_the_measured_rate() {
        let max_wait = Duration::from_secs(10);
        assert!(drains_in_time(1_000, None, max_wait), "not measured yet");
        assert!(drains_in_time(1_000, Some(100.0), max_wait), "exactly 10 s");
        assert!(!drains_in_time(1_001, Some(100.0), max_wait));
        assert!(drains_in_time(60_000, Some(8_000.0), max_wait), "a burst");
        assert!(!drains_in_time(1_000, Some(4.0), max_wait), "2 s a request");
        assert!(!drains_in_time(1, Some(0.0), max_wait), "hanging");
        assert!(!drains_in_time(1, Some(f64::NAN), max_wait));
    }

    fn schedule(max_total_age: Duration) -> RetrySchedule {
        let delays = [0, 60, 300].map(|s| HumanDuration(Duration::from_secs(s)));
        RetrySchedule::new(RetryConfig {
            delays: delays.to_vec(),
            jitter: 0.0,
            max_total_age: HumanDuration(max_total_age),
            ..RetryConfig::default()
        })
        .expect("valid schedule")
    }

    #[test]
    fn a_deferral_parks_on_the_first_tier_and_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let plan = plan_deferral(
            &schedule(Duration::from_secs(48 * 3600)),
            now,
            2,
            now,
            &mut StdRng::seed_from_u64(7),
        );
        assert_eq!(
            plan,
            Some(DeferralPlan::Park {
                not_before: now + Duration::from_secs(60),
                deferrals: 3,
            })
        );
    }

    #[test]
    fn a_deferral_past_the_maximum_age_is_a_dead_letter_naming_the_deferrals() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first_seen = now - Duration::from_secs(3 * 3600);
        let plan = plan_deferral(
            &schedule(Duration::from_secs(2 * 3600)),
            first_seen,
            5,
            now,
            &mut StdRng::seed_from_u64(7),
        );
        let Some(DeferralPlan::DeadLetter { reason }) = plan else {
            panic!("expected a dead letter, got {plan:?}");
        };
        assert!(reason.ends_with("(deferred 5 times)"), "{reason}");
    }
}
