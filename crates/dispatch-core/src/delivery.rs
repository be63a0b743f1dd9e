//! Building `DeliveryTask` records: the fan-out's first task of an (event, subscription) pair,
//! the admin API's replay of a dead letter, and the `webhook.test` event the API sends.
//!
//! Every producer of tasks builds them here, so the sender sees one shape whoever wrote the
//! record: attempt 1, no attempts carried, no deferrals, the body rendered once.

use std::time::SystemTime;

use dispatch_proto::dispatch::v1::{DeadLetter, DeliveryTask, Subscription};
use dispatch_proto::events::v1::event::Payload;
use dispatch_proto::events::v1::{Event, WebhookTest};
use rand::RngCore;

use crate::{ids, timestamp};

/// The event type of [`test_event`].
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// The `message` of a test event's payload.
pub const TEST_EVENT_MESSAGE: &str = "Hello from Posternity Dispatch. This is a test event.";

/// The first task of `event` for `subscription`, carrying `body` (the event rendered by
/// [`crate::render::render`]). The delivery id is the deterministic
/// [`ids::delivery_id`] of the pair, so a re-run of the fan-out yields the same task.
pub fn new_task(
    event: &Event,
    body: Vec<u8>,
    subscription: &Subscription,
    now: SystemTime,
) -> DeliveryTask {
    DeliveryTask {
        delivery_id: ids::delivery_id(&event.id, &subscription.id),
        event_id: event.id.clone(),
        event_type: event.r#type.clone(),
        subscription_id: subscription.id.clone(),
        account_id: event.account_id.clone(),
        attempt: 1,
        not_before: None,
        first_attempt_at: None,
        body,
        occurred_at: event.occurred_at,
        replay_of: String::new(),
        deferrals: 0,
        created_at: Some(timestamp::from_system_time(now)),
        attempts: Vec::new(),
    }
}

/// A new attempt series for a dead delivery: a fresh delivery id (the dead one keeps its own
/// attempts and DLQ entry; sharing the id would mix the two series up in the delivery log),
/// `replay_of` naming the dead delivery, attempt 1 with a clean slate (no attempts carried, no
/// deferrals, no due time, no first attempt: the retry schedule and its deadline start over),
/// and the same event, body, subscription and account. Receivers see the same `webhook-id` (the
/// event id), so one that already processed the event can recognise the replay.
///
/// A dead letter without a task cannot be replayed; the result then names no event and must not
/// be sent. [`crate::dead_letters::DeadLetterTable`] never holds such a letter.
pub fn replay_task(dead: &DeadLetter, now: SystemTime, rng: &mut impl RngCore) -> DeliveryTask {
    let dead_task = dead.task.clone().unwrap_or_default();
    DeliveryTask {
        delivery_id: ids::new_delivery_id(now, rng),
        replay_of: dead_task.delivery_id,
        attempt: 1,
        not_before: None,
        first_attempt_at: None,
        deferrals: 0,
        created_at: Some(timestamp::from_system_time(now)),
        attempts: Vec::new(),
        event_id: dead_task.event_id,
        event_type: dead_task.event_type,
        subscription_id: dead_task.subscription_id,
        account_id: dead_task.account_id,
        body: dead_task.body,
        occurred_at: dead_task.occurred_at,
    }
}

/// A new `webhook.test` event of `account_id`, occurring `now`, with a fresh event id. Its
/// payload names no subscription; [`test_event_for`] fills that in.
pub fn test_event(account_id: &str, now: SystemTime, rng: &mut impl RngCore) -> Event {
    Event {
        id: ids::new_event_id(now, rng),
        r#type: TEST_EVENT_TYPE.to_owned(),
        account_id: account_id.to_owned(),
        occurred_at: Some(timestamp::from_system_time(now)),
        region: String::new(),
        attributes: Default::default(),
        payload: Some(Payload::WebhookTest(WebhookTest {
            subscription_id: String::new(),
            message: TEST_EVENT_MESSAGE.to_owned(),
        })),
    }
}

/// A [`test_event`] for `subscription`: its account, and its id in the payload, so the receiver
/// can tell which of its endpoints' setups is being checked.
pub fn test_event_for(
    subscription: &Subscription,
    now: SystemTime,
    rng: &mut impl RngCore,
) -> Event {
    let mut event = test_event(&subscription.account_id, now, rng);
    if let Some(Payload::WebhookTest(test)) = event.payload.as_mut() {
        test.subscription_id = subscription.id.clone();
    }
    event
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use dispatch_proto::dispatch::v1::{AttemptOutcome, AttemptSummary};
    use dispatch_proto::wkt::Timestamp;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::{catalog, render};

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn subscription() -> Subscription {
        Subscription {
            id: "sub_1".into(),
            account_id: "acc_1".into(),
            ..Subscription::default()
        }
    }

    fn event() -> Event {
        Event {
            id: "evt_1".into(),
            r#type: "map.gallery.updated".into(),
            account_id: "acc_1".into(),
            occurred_at: Some(Timestamp {
                seconds: 1_795_730_400,
                nanos: 5,
            }),
            payload: Some(
                catalog::lookup("map.gallery.updated")
                    .expect("known")
                    .example_payload()
                    .expect("example"),
            ),
            ..Event::default()
        }
    }

    #[test]
    fn a_new_task_is_attempt_one_of_the_deterministic_delivery() {
        let event = event();
        let task = new_task(&event, b"{}".to_vec(), &subscription(), at(1_800_000_000));
        assert_eq!(
            task,
            DeliveryTask {
                delivery_id: ids::delivery_id("evt_1", "sub_1"),
                event_id: "evt_1".into(),
                event_type: "map.gallery.updated".into(),
                subscription_id: "sub_1".into(),
                account_id: "acc_1".into(),
                attempt: 1,
                body: b"{}".to_vec(),
                occurred_at: event.occurred_at,
                created_at: Some(Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 0
                }),
                ..DeliveryTask::default()
            }
        );
    }

    #[test]
    fn a_replay_is_a_fresh_series_of_the_same_event() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut dead_task = new_task(&event(), b"body".to_vec(), &subscription(), at(100));
        dead_task.attempt = 6;
        dead_task.deferrals = 2;
        dead_task.not_before = Some(timestamp::from_system_time(at(200)));
        dead_task.first_attempt_at = Some(timestamp::from_system_time(at(101)));
        dead_task.attempts = vec![AttemptSummary {
            attempt: 1,
            outcome: AttemptOutcome::Timeout as i32,
            ..AttemptSummary::default()
        }];
        let dead = DeadLetter {
            task: Some(dead_task.clone()),
            attempts: dead_task.attempts.clone(),
            reason: "retries exhausted".into(),
            dead_at: Some(timestamp::from_system_time(at(300))),
        };
        let now = at(1_000);
        let replay = replay_task(&dead, now, &mut rng);
        let again = replay_task(&dead, now, &mut rng);

        assert!(replay.delivery_id.starts_with("dlv_"));
        assert_ne!(replay.delivery_id, dead_task.delivery_id);
        assert_ne!(replay.delivery_id, again.delivery_id, "every replay is new");
        assert_eq!(
            replay,
            DeliveryTask {
                delivery_id: replay.delivery_id.clone(),
                replay_of: dead_task.delivery_id.clone(),
                attempt: 1,
                not_before: None,
                first_attempt_at: None,
                deferrals: 0,
                attempts: Vec::new(),
                created_at: Some(timestamp::from_system_time(now)),
                ..dead_task
            }
        );
    }

    #[test]
    fn a_test_event_is_valid_renders_and_names_its_subscription() {
        let mut rng = StdRng::seed_from_u64(5);
        let now = at(1_800_000_000);
        let event = test_event("acc_9", now, &mut rng);
        let event_type = render::validate(&event).expect("valid");
        assert_eq!(event_type.name, TEST_EVENT_TYPE);
        assert!(event.id.starts_with("evt_"));
        assert_eq!(event.account_id, "acc_9");
        assert_ne!(event.id, test_event("acc_9", now, &mut rng).id);

        let for_subscription = test_event_for(&subscription(), now, &mut rng);
        assert_eq!(for_subscription.account_id, "acc_1");
        let body = render::render(&for_subscription).expect("renders");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["type"], "webhook.test");
        assert_eq!(json["data"]["subscription_id"], "sub_1");
        assert_eq!(json["data"]["message"], TEST_EVENT_MESSAGE);
    }
}
