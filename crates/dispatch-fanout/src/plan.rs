//! What one domain record becomes: quarantine (with the reason), or one delivery task per
//! matched subscription (possibly none). No I/O here: the loop in
//! [`crate::fanout`] produces what the plan says inside its transaction.

use std::collections::BTreeSet;
use std::time::SystemTime;

use dispatch_core::{delivery, render};
use dispatch_kafka::topics::TopicNames;
use dispatch_proto::dispatch::v1::{DeliveryTask, Subscription};
use dispatch_proto::events::v1::Event;
use dispatch_proto::prost::Message;

/// Why a record was quarantined: a short reason (a bounded set, used as a metric label and a
/// header) and a message naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// `undecodable`, `not_publishable` or one of `InvalidEvent::reason`.
    pub reason: &'static str,
    /// A sentence for the people who inspect `dispatch.invalid`.
    pub message: String,
}

/// One task and the topic it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedDelivery {
    /// `dispatch.deliveries` or the subscription's lane topic.
    pub topic: String,
    /// The task (key = its subscription id).
    pub task: DeliveryTask,
}

/// Decodes and validates a record's value. `Err` says why it must be quarantined.
pub fn decode(payload: Option<&[u8]>) -> Result<(Event, &'static str), Quarantine> {
    let bytes = payload.ok_or_else(|| Quarantine {
        reason: "undecodable",
        message: "the record has no value".to_owned(),
    })?;
    let event = Event::decode(bytes).map_err(|e| Quarantine {
        reason: "undecodable",
        message: format!("not a posternity.events.v1.Event: {e}"),
    })?;
    let event_type = render::validate(&event).map_err(|e| Quarantine {
        reason: e.reason(),
        message: e.to_string(),
    })?;
    if event_type.family.domain_topic().is_none() {
        return Err(Quarantine {
            reason: "not_publishable",
            message: format!(
                "field `type`: {:?} is sent only by the admin API's test endpoint, never through a domain topic",
                event.r#type
            ),
        });
    }
    Ok((event, event_type.name))
}

/// Builds the delivery tasks of a valid event for the subscriptions that matched it. The body is
/// rendered once and shared by every task. `lanes` are the lane topics that exist: a
/// subscription naming another lane is delivered through the shared topic rather than stalling
/// the partition on a topic that is not there.
pub fn deliveries(
    event: &Event,
    matched: &[&Subscription],
    names: &TopicNames,
    lanes: &BTreeSet<String>,
    now: SystemTime,
) -> Result<Vec<PlannedDelivery>, Quarantine> {
    let body = render::render(event).map_err(|e| Quarantine {
        reason: e.reason(),
        message: e.to_string(),
    })?;
    Ok(matched
        .iter()
        .map(|subscription| {
            let topic = if subscription.lane.is_empty() || !lanes.contains(&subscription.lane) {
                names.deliveries()
            } else {
                names.lane(&subscription.lane)
            };
            PlannedDelivery {
                topic,
                task: delivery::new_task(event, body.clone(), subscription, now),
            }
        })
        .collect())
}

/// Why an event whose delivery task would be `size_bytes` long is quarantined instead of fanned
/// out to `topic`, which accepts records of at most `limit_bytes` (its `max.message.bytes`).
pub fn too_large_message(
    subscription_id: &str,
    size_bytes: usize,
    topic: &str,
    limit_bytes: usize,
) -> String {
    format!(
        "its delivery task for subscription {subscription_id} would be {size_bytes} bytes \
         (record overhead included), over the {limit_bytes} bytes {topic} accepts \
         (max.message.bytes): the rendered webhook body is too large to deliver"
    )
}

#[cfg(test)]
mod tests {
    use dispatch_core::{catalog, ids};
    use dispatch_proto::wkt::Timestamp;

    use super::*;

    fn event(event_type: &str) -> Event {
        Event {
            id: "evt_1".into(),
            r#type: event_type.into(),
            account_id: "acc_1".into(),
            occurred_at: Some(Timestamp {
                seconds: 1_795_730_400,
                nanos: 0,
            }),
            region: String::new(),
            attributes: Default::default(),
            payload: Some(
                catalog::lookup(event_type)
                    .expect("known type")
                    .example_payload()
                    .expect("example"),
            ),
        }
    }

    #[test]
    fn a_too_large_task_is_explained_with_its_size_and_the_limit() {
        let message = too_large_message("sub_a", 1_200_345, "p.dispatch.deliveries", 1_048_588);
        assert!(message.contains("sub_a"), "{message}");
        assert!(message.contains("1200345 bytes"), "{message}");
        assert!(
            message.contains("1048588 bytes p.dispatch.deliveries"),
            "{message}"
        );
    }

    #[test]
    fn garbage_is_quarantined_with_a_reason() {
        assert_eq!(decode(None).expect_err("null").reason, "undecodable");
        assert_eq!(
            decode(Some(b"\xff\xff\xff")).expect_err("bytes").reason,
            "undecodable"
        );
        let mut no_account = event("map.gallery.updated");
        no_account.account_id.clear();
        assert_eq!(
            decode(Some(&no_account.encode_to_vec()))
                .expect_err("no account")
                .reason,
            "missing_account"
        );
        let test_event = event("webhook.test");
        assert_eq!(
            decode(Some(&test_event.encode_to_vec()))
                .expect_err("test events are not published")
                .reason,
            "not_publishable"
        );
        let good = event("map.gallery.updated");
        assert_eq!(
            decode(Some(&good.encode_to_vec())).expect("valid").1,
            "map.gallery.updated"
        );
    }

    #[test]
    fn one_task_per_match_with_deterministic_ids_and_lanes() {
        let names = TopicNames::new("p.");
        let lanes: BTreeSet<String> = ["acme".to_owned()].into();
        let shared = Subscription {
            id: "sub_a".into(),
            ..Subscription::default()
        };
        let laned = Subscription {
            id: "sub_b".into(),
            lane: "acme".into(),
            ..Subscription::default()
        };
        let unknown_lane = Subscription {
            id: "sub_c".into(),
            lane: "gone".into(),
            ..Subscription::default()
        };
        let event = event("studio.batch.progress");
        let planned = deliveries(
            &event,
            &[&shared, &laned, &unknown_lane],
            &names,
            &lanes,
            SystemTime::UNIX_EPOCH,
        )
        .expect("valid");
        let topics: Vec<_> = planned.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "p.dispatch.deliveries",
                "p.dispatch.deliveries.acme",
                "p.dispatch.deliveries"
            ]
        );
        let body = render::render(&event).expect("renders");
        for (planned, subscription) in planned.iter().zip(["sub_a", "sub_b", "sub_c"]) {
            assert_eq!(planned.task.subscription_id, subscription);
            assert_eq!(
                planned.task.delivery_id,
                ids::delivery_id("evt_1", subscription)
            );
            assert_eq!(planned.task.attempt, 1);
            assert_eq!(planned.task.body, body);
            assert_eq!(planned.task.occurred_at, event.occurred_at);
        }
    }
}
