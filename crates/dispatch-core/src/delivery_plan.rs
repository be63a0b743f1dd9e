//! What a delivery leads to once it was attempted (or could not be): the decision after an
//! attempt, the attempt record, and the records that carry the delivery on — the retry task on
//! its tier, the dead letter, the deferred task — as functions of their inputs. The sender
//! performs the plan (writes what it says, in one place); nothing here does I/O.
//!
//! Before an attempt, [`crate::admission`] decides whether a due task is queued, deferred,
//! skipped, dead-lettered or spent as not sent; after one, [`after_attempt`] decides the rest.
//! Together they are the sender's whole policy: the engine gathers facts and performs.
//!
//! # One attempt, one plan
//! [`after_attempt`] takes the task as it was attempted and what the attempt came to
//! ([`AttemptFacts`]), and returns the attempt record for `dispatch.attempts` and the
//! [`Next`] step: delivered, again at once, parked on a tier, or dead (with the subscription
//! disabled after `410 Gone`). The task that goes on carries the attempt's summary, so a dead
//! letter shows every attempt, not-sent ones included.

use std::time::{Duration, SystemTime};

use dispatch_proto::dispatch::v1::next_action::{Action, Dead, Done, Retry};
use dispatch_proto::dispatch::v1::{
    AttemptOutcome, AttemptRecord, AttemptSummary, DeadLetter, DeliveryTask, NextAction,
};
use rand::Rng;

use crate::admission::{DeferralPlan, plan_deferral};
use crate::outcome::Classified;
use crate::retry::{DeadReason, RetryDecision, RetrySchedule};
use crate::timestamp;

/// What happens after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delivered (`2xx`): the delivery is done.
    Delivered,
    /// The next attempt is due at once (a `0s` step of the schedule).
    RetryNow { next_attempt: u32 },
    /// The next attempt waits on the retry tier named `tier` until `not_before`.
    RetryLater {
        next_attempt: u32,
        tier: String,
        not_before: SystemTime,
    },
    /// Dead-lettered with `reason`; `disable`: the endpoint asked for no more (`410 Gone`), so
    /// its subscription is disabled.
    Dead { reason: String, disable: bool },
}

/// Decides what follows a failed or successful attempt of `task` at `now`: delivered, the next
/// attempt now or on a tier (the schedule, `Retry-After` within bounds), or dead — permanently
/// failing, attempts exhausted, or older than `retry.max_total_age` since its first attempt.
pub fn decide<R: Rng + ?Sized>(
    schedule: &RetrySchedule,
    task: &DeliveryTask,
    classified: &Classified,
    now: SystemTime,
    rng: &mut R,
) -> Decision {
    let Some(failure) = &classified.failure else {
        return Decision::Delivered;
    };
    let dead = |reason: DeadReason| Decision::Dead {
        disable: reason.disables_subscription(),
        reason: format!("{reason} (last attempt: {})", classified.description()),
    };
    let first = task
        .first_attempt_at
        .as_ref()
        .and_then(timestamp::to_system_time)
        .unwrap_or(now);
    if let Some(reason) = schedule.expired(first, now) {
        return dead(reason);
    }
    match schedule.decide(task.attempt, failure, now, rng) {
        RetryDecision::RetryNow { next_attempt } => Decision::RetryNow { next_attempt },
        RetryDecision::RetryLater {
            next_attempt,
            tier,
            not_before,
        } => Decision::RetryLater {
            next_attempt,
            tier: tier.name().to_owned(),
            not_before,
        },
        RetryDecision::Dead { reason } => dead(reason),
    }
}

/// The `next_action` an attempt record carries for `decision` (an immediate retry is due `now`).
#[must_use]
pub fn next_action(decision: &Decision, now: SystemTime) -> NextAction {
    let action = match decision {
        Decision::Delivered => Action::Done(Done {}),
        Decision::RetryNow { next_attempt } => Action::Retry(Retry {
            at: Some(timestamp::from_system_time(now)),
            tier: String::new(),
            next_attempt: *next_attempt,
        }),
        Decision::RetryLater {
            next_attempt,
            tier,
            not_before,
        } => Action::Retry(Retry {
            at: Some(timestamp::from_system_time(*not_before)),
            tier: tier.clone(),
            next_attempt: *next_attempt,
        }),
        Decision::Dead { reason, .. } => Action::Dead(Dead {
            reason: reason.clone(),
        }),
    };
    NextAction {
        action: Some(action),
    }
}

/// An attempt record of `task` with its identifying fields filled in; the caller sets what the
/// attempt came to. Every attempt record is built from this one.
#[must_use]
pub fn record_for(task: &DeliveryTask) -> AttemptRecord {
    AttemptRecord {
        delivery_id: task.delivery_id.clone(),
        event_id: task.event_id.clone(),
        subscription_id: task.subscription_id.clone(),
        account_id: task.account_id.clone(),
        event_type: task.event_type.clone(),
        attempt: task.attempt,
        replay_of: task.replay_of.clone(),
        ..AttemptRecord::default()
    }
}

/// The attempt record of a task not attempted because its subscription was `reason` (deleted,
/// …): outcome `SKIPPED`, next action done, so its history ends visibly.
#[must_use]
pub fn skipped_record(task: &DeliveryTask, reason: &str, now: SystemTime) -> AttemptRecord {
    AttemptRecord {
        started_at: Some(timestamp::from_system_time(now)),
        outcome: AttemptOutcome::Skipped as i32,
        error: format!("not attempted: the subscription was {reason}"),
        next_action: Some(NextAction {
            action: Some(Action::Done(Done {})),
        }),
        ..record_for(task)
    }
}

/// `task`'s dead letter, dead at `at` for `reason`, carrying every attempt it made.
#[must_use]
pub fn dead_letter(task: &DeliveryTask, reason: String, at: SystemTime) -> DeadLetter {
    DeadLetter {
        task: Some(task.clone()),
        attempts: task.attempts.clone(),
        reason,
        dead_at: Some(timestamp::from_system_time(at)),
    }
}

/// What one attempt — sent, or not sent because the circuit was open — came to.
#[derive(Debug, Clone)]
pub struct AttemptFacts<'a> {
    /// When it started (for a not-sent attempt: when it fell due).
    pub started: SystemTime,
    /// How long the request took (zero when nothing was sent).
    pub duration: Duration,
    /// The result, classified ([`crate::outcome::classify`]).
    pub classified: &'a Classified,
    /// The start of the response body, when there was one.
    pub response_excerpt: String,
    /// When it finished: the decision's `now`.
    pub finished: SystemTime,
}

/// What comes after an attempt, besides its record.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Delivered: nothing more to write.
    Delivered,
    /// Attempt this task (attempt number advanced) again at once, once the record is written.
    AgainNow(DeliveryTask),
    /// Write this task to the retry tier `tier` (key: its subscription id).
    Park { tier: String, task: DeliveryTask },
    /// Write this dead letter (key: the delivery id); `disable` with this reason when the
    /// endpoint answered `410 Gone`.
    DeadLetter {
        letter: DeadLetter,
        disable: Option<String>,
    },
}

/// One attempt's plan: the attempt record (to `dispatch.attempts`, key: the subscription id) and
/// what follows.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptPlan {
    /// The attempt record.
    pub record: AttemptRecord,
    /// The decision the plan carries out (for metrics and logs).
    pub decision: Decision,
    /// What is written or done next.
    pub next: Next,
}

/// Plans what attempt `facts` of `task` leads to: decides ([`decide`]), builds the attempt
/// record, appends the attempt's summary to the task, and hands the task on as the decision
/// says. `task.first_attempt_at` is set to this attempt's start if it had none.
pub fn after_attempt<R: Rng + ?Sized>(
    schedule: &RetrySchedule,
    mut task: DeliveryTask,
    facts: &AttemptFacts<'_>,
    rng: &mut R,
) -> AttemptPlan {
    if task.first_attempt_at.is_none() {
        task.first_attempt_at = Some(timestamp::from_system_time(facts.started));
    }
    let classified = facts.classified;
    let decision = decide(schedule, &task, classified, facts.finished, rng);
    let summary = AttemptSummary {
        attempt: task.attempt,
        started_at: Some(timestamp::from_system_time(facts.started)),
        duration_ms: u64::try_from(facts.duration.as_millis()).unwrap_or(u64::MAX),
        outcome: classified.outcome as i32,
        status_code: u32::from(classified.status.unwrap_or(0)),
        error: if classified.is_success() {
            String::new()
        } else {
            classified.description().to_owned()
        },
    };
    let record = AttemptRecord {
        started_at: summary.started_at,
        duration_ms: summary.duration_ms,
        outcome: summary.outcome,
        status_code: summary.status_code,
        response_excerpt: facts.response_excerpt.clone(),
        error: summary.error.clone(),
        next_action: Some(next_action(&decision, facts.finished)),
        ..record_for(&task)
    };
    // The task that goes on (a retry, a dead letter) carries every attempt, not-sent ones
    // included.
    task.attempts.push(summary);
    let next = match &decision {
        Decision::Delivered => Next::Delivered,
        Decision::RetryNow { next_attempt } => {
            task.attempt = *next_attempt;
            Next::AgainNow(task)
        }
        Decision::RetryLater {
            next_attempt,
            tier,
            not_before,
        } => {
            task.attempt = *next_attempt;
            task.not_before = Some(timestamp::from_system_time(*not_before));
            Next::Park {
                tier: tier.clone(),
                task,
            }
        }
        Decision::Dead { reason, disable } => Next::DeadLetter {
            letter: dead_letter(&task, reason.clone(), facts.finished),
            disable: disable.then(|| reason.clone()),
        },
    };
    AttemptPlan {
        record,
        decision,
        next,
    }
}

/// What a task parked without spending an attempt (its endpoint too slow for its backlog)
/// becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Deferred {
    /// Write this task to the first tier (key: its subscription id).
    Park(DeliveryTask),
    /// Past `retry.max_total_age` (or no tier to park on): write this dead letter.
    DeadLetter(DeadLetter),
}

/// Plans the deferral of `task` at `now`: its deferral count and due time, or its dead letter
/// when it is older than `retry.max_total_age` since it was first attempted (or, never
/// attempted, created).
pub fn defer<R: Rng + ?Sized>(
    schedule: &RetrySchedule,
    mut task: DeliveryTask,
    now: SystemTime,
    rng: &mut R,
) -> Deferred {
    let first_seen = task
        .first_attempt_at
        .as_ref()
        .or(task.created_at.as_ref())
        .and_then(timestamp::to_system_time)
        .unwrap_or(now);
    match plan_deferral(schedule, first_seen, task.deferrals, now, rng) {
        Some(DeferralPlan::Park {
            not_before,
            deferrals,
        }) => {
            task.deferrals = deferrals;
            task.not_before = Some(timestamp::from_system_time(not_before));
            Deferred::Park(task)
        }
        Some(DeferralPlan::DeadLetter { reason }) => {
            Deferred::DeadLetter(dead_letter(&task, reason, now))
        }
        None => Deferred::DeadLetter(dead_letter(
            &task,
            "no retry tier to defer to".to_owned(),
            now,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::outcome::AttemptResult;
    use crate::retry::{HumanDuration, RetryConfig};

    const T0: u64 = 1_800_000_000;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0 + seconds)
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// The default shape, shorter and without jitter: immediately, then 1 min, 5 min (four
    /// attempts).
    fn schedule() -> RetrySchedule {
        RetrySchedule::new(RetryConfig {
            delays: vec![
                HumanDuration(Duration::ZERO),
                HumanDuration(Duration::from_secs(60)),
                HumanDuration(Duration::from_secs(300)),
            ],
            jitter: 0.0,
            ..RetryConfig::default()
        })
        .expect("valid schedule")
    }

    fn task(attempt: u32) -> DeliveryTask {
        DeliveryTask {
            delivery_id: "dlv_1".to_owned(),
            event_id: "evt_1".to_owned(),
            event_type: "image.generated".to_owned(),
            subscription_id: "sub_1".to_owned(),
            account_id: "acc_1".to_owned(),
            attempt,
            body: b"{}".to_vec(),
            created_at: Some(timestamp::from_system_time(at(0))),
            ..DeliveryTask::default()
        }
    }

    fn status(code: u16, now: SystemTime) -> Classified {
        AttemptResult::Response {
            status: code,
            retry_after: None,
        }
        .classify(now)
    }

    fn facts(classified: &Classified, started: SystemTime) -> AttemptFacts<'_> {
        AttemptFacts {
            started,
            duration: Duration::from_millis(12),
            classified,
            response_excerpt: "ok".to_owned(),
            finished: started + Duration::from_millis(12),
        }
    }

    #[test]
    fn a_success_is_delivered_with_a_done_record_and_nothing_else_written() {
        let ok = status(200, at(10));
        let plan = after_attempt(&schedule(), task(1), &facts(&ok, at(10)), &mut rng());
        assert_eq!(plan.decision, Decision::Delivered);
        assert_eq!(plan.next, Next::Delivered);
        assert_eq!(plan.record.outcome, AttemptOutcome::Success as i32);
        assert_eq!(plan.record.status_code, 200);
        assert_eq!(plan.record.duration_ms, 12);
        assert_eq!(plan.record.error, "");
        assert_eq!(plan.record.response_excerpt, "ok");
        assert_eq!(plan.record.delivery_id, "dlv_1");
        assert_eq!(plan.record.attempt, 1);
        assert!(matches!(
            plan.record.next_action.and_then(|n| n.action),
            Some(Action::Done(_))
        ));
    }

    #[test]
    fn a_failure_with_a_zero_step_next_is_attempted_again_at_once_carrying_the_summary() {
        let failed = status(500, at(10));
        let plan = after_attempt(&schedule(), task(1), &facts(&failed, at(10)), &mut rng());
        assert_eq!(plan.decision, Decision::RetryNow { next_attempt: 2 });
        let Next::AgainNow(next) = plan.next else {
            panic!("expected an immediate retry, got {:?}", plan.next);
        };
        assert_eq!(next.attempt, 2);
        assert_eq!(next.attempts.len(), 1);
        assert_eq!(next.attempts[0].status_code, 500);
        assert_eq!(next.attempts[0].error, "HTTP 500");
        assert_eq!(
            next.first_attempt_at,
            Some(timestamp::from_system_time(at(10))),
            "the first attempt's start is kept for the deadline"
        );
        assert_eq!(plan.record.attempt, 1, "the record is of the attempt made");
        let Some(Action::Retry(retry)) = plan.record.next_action.and_then(|n| n.action) else {
            panic!("expected a retry action");
        };
        assert_eq!(retry.next_attempt, 2);
        assert_eq!(retry.tier, "");
    }

    #[test]
    fn a_failure_with_a_delayed_step_next_is_parked_on_its_tier_until_due() {
        let failed = status(503, at(10));
        let plan = after_attempt(&schedule(), task(2), &facts(&failed, at(10)), &mut rng());
        let finished = at(10) + Duration::from_millis(12);
        let due = finished + Duration::from_secs(60);
        assert_eq!(
            plan.decision,
            Decision::RetryLater {
                next_attempt: 3,
                tier: "1m".to_owned(),
                not_before: due,
            }
        );
        let Next::Park { tier, task } = plan.next else {
            panic!("expected a tier, got {:?}", plan.next);
        };
        assert_eq!(tier, "1m");
        assert_eq!(task.attempt, 3);
        assert_eq!(task.not_before, Some(timestamp::from_system_time(due)));
        assert_eq!(task.attempts.len(), 1);
    }

    #[test]
    fn the_last_attempt_failing_is_dead_lettered_with_every_attempt() {
        // Three delays: the fourth attempt is the last.
        let mut last = task(4);
        last.attempts = vec![AttemptSummary::default(); 3];
        let failed = status(500, at(400));
        let plan = after_attempt(&schedule(), last, &facts(&failed, at(400)), &mut rng());
        let Decision::Dead { reason, disable } = &plan.decision else {
            panic!("expected dead, got {:?}", plan.decision);
        };
        assert!(!disable);
        assert!(reason.contains("HTTP 500"), "{reason}");
        let Next::DeadLetter { letter, disable } = plan.next else {
            panic!("expected a dead letter");
        };
        assert_eq!(disable, None);
        assert_eq!(letter.attempts.len(), 4);
        assert_eq!(letter.reason, *reason);
        assert_eq!(letter.task.map(|t| t.delivery_id), Some("dlv_1".to_owned()));
    }

    #[test]
    fn gone_dead_letters_at_once_and_disables_the_subscription() {
        let gone = status(410, at(10));
        let plan = after_attempt(&schedule(), task(1), &facts(&gone, at(10)), &mut rng());
        let Next::DeadLetter { disable, .. } = plan.next else {
            panic!("expected a dead letter");
        };
        assert!(disable.is_some_and(|reason| reason.contains("410")));
    }

    #[test]
    fn a_delivery_past_its_total_age_is_dead_whatever_the_schedule_says() {
        let mut old = task(1);
        old.first_attempt_at = Some(timestamp::from_system_time(at(0)));
        let later = at(49 * 3600);
        let failed = status(500, later);
        let plan = after_attempt(&schedule(), old, &facts(&failed, later), &mut rng());
        assert!(
            matches!(&plan.decision, Decision::Dead { reason, disable: false } if reason.contains("HTTP 500")),
            "{:?}",
            plan.decision
        );
    }

    #[test]
    fn a_not_sent_attempt_spends_its_attempt_and_never_disables() {
        let open = AttemptResult::CircuitOpen.classify(at(10));
        let plan = after_attempt(
            &schedule(),
            task(2),
            &AttemptFacts {
                started: at(10),
                duration: Duration::ZERO,
                classified: &open,
                response_excerpt: String::new(),
                finished: at(10),
            },
            &mut rng(),
        );
        assert_eq!(plan.record.outcome, AttemptOutcome::CircuitOpen as i32);
        assert_eq!(plan.record.status_code, 0);
        assert!(matches!(plan.next, Next::Park { ref tier, .. } if tier == "1m"));
    }

    #[test]
    fn a_skipped_record_ends_the_history_with_its_reason() {
        let record = skipped_record(&task(1), "deleted", at(5));
        assert_eq!(record.outcome, AttemptOutcome::Skipped as i32);
        assert_eq!(record.error, "not attempted: the subscription was deleted");
        assert_eq!(record.subscription_id, "sub_1");
        assert!(matches!(
            record.next_action.and_then(|n| n.action),
            Some(Action::Done(_))
        ));
    }

    #[test]
    fn a_deferral_parks_on_the_first_tier_and_counts_itself() {
        let Deferred::Park(parked) = defer(&schedule(), task(1), at(10), &mut rng()) else {
            panic!("expected a park");
        };
        assert_eq!(parked.deferrals, 1);
        assert_eq!(parked.attempt, 1, "a deferral spends no attempt");
        assert_eq!(parked.not_before, Some(timestamp::from_system_time(at(70))));
    }

    #[test]
    fn a_deferral_of_an_expired_task_dead_letters_it() {
        let late = at(49 * 3600);
        let Deferred::DeadLetter(letter) = defer(&schedule(), task(1), late, &mut rng()) else {
            panic!("expected a dead letter");
        };
        assert!(
            letter.reason.contains("deferred 0 times"),
            "{}",
            letter.reason
        );
    }

    #[test]
    fn without_a_tier_a_deferral_dead_letters_rather_than_loses() {
        let immediate = RetrySchedule::new(RetryConfig {
            delays: vec![HumanDuration(Duration::ZERO)],
            ..RetryConfig::default()
        })
        .expect("valid schedule");
        let Deferred::DeadLetter(letter) = defer(&immediate, task(1), at(10), &mut rng()) else {
            panic!("expected a dead letter");
        };
        assert_eq!(letter.reason, "no retry tier to defer to");
    }
}
