//! Test events and delivery status: a test event is a `webhook.test` delivery task on the topic
//! the fan-out would use, `pending` at once; attempt records the sender writes become the
//! delivery's status and the subscription's attempts; another account sees none of it.

use std::time::SystemTime;

use axum::http::StatusCode;
use dispatch_core::timestamp::from_system_time;
use dispatch_proto::dispatch::v1::next_action::{Action, Done, Retry};
use dispatch_proto::dispatch::v1::{AttemptOutcome, AttemptRecord, DeliveryTask, NextAction};
use serde_json::{Value, json};

use crate::support::{ACCOUNT_A, Harness, LANE, TOKEN_A, TOKEN_B, TOKEN_OPS, id_of};

fn record(
    task: &DeliveryTask,
    attempt: u32,
    outcome: AttemptOutcome,
    status: u32,
    next: Action,
) -> AttemptRecord {
    AttemptRecord {
        delivery_id: task.delivery_id.clone(),
        event_id: task.event_id.clone(),
        subscription_id: task.subscription_id.clone(),
        account_id: task.account_id.clone(),
        event_type: task.event_type.clone(),
        attempt,
        started_at: Some(from_system_time(SystemTime::now())),
        duration_ms: 12,
        outcome: outcome as i32,
        status_code: status,
        response_excerpt: if status == 503 {
            "busy".into()
        } else {
            String::new()
        },
        error: String::new(),
        next_action: Some(NextAction { action: Some(next) }),
        replay_of: task.replay_of.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_is_delivered_through_the_engine_and_its_status_followed() {
    let api = Harness::start("test_event").await;
    let id = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let reply = api
        .post_empty(&format!("/v1/subscriptions/{id}/test"), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let queued = reply.json();
    let delivery_id = queued["delivery_id"]
        .as_str()
        .expect("delivery id")
        .to_owned();
    let event_id = queued["event_id"].as_str().expect("event id").to_owned();
    assert!(delivery_id.starts_with("dlv_") && event_id.starts_with("evt_"));

    // Pending at once, before the sender wrote anything.
    let reply = api
        .get(&format!("/v1/deliveries/{delivery_id}"), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let status = reply.json();
    assert_eq!(status["status"], "pending");
    assert_eq!(status["event_type"], "webhook.test");
    assert_eq!(status["subscription_id"], id.as_str());
    assert_eq!(status["attempts"], json!([]));

    // The task the delivery engine reads: on dispatch.deliveries, keyed by the subscription,
    // with a valid webhook.test body naming the subscription.
    let tasks = api.tasks_on(&api.names.deliveries(), 1).await;
    assert_eq!(tasks.len(), 1);
    let (key, task) = &tasks[0];
    assert_eq!(key, &id);
    assert_eq!(task.delivery_id, delivery_id);
    assert_eq!(task.event_id, event_id);
    assert_eq!(task.event_type, "webhook.test");
    assert_eq!(task.account_id, ACCOUNT_A);
    assert_eq!(task.attempt, 1);
    assert!(task.replay_of.is_empty());
    let body: Value = serde_json::from_slice(&task.body).expect("JSON body");
    assert_eq!(body["id"], event_id.as_str());
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["account_id"], ACCOUNT_A);
    assert_eq!(body["data"]["subscription_id"], id.as_str());
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // The sender's attempt records: a 503 and a retry, then a success.
    let retry = Action::Retry(Retry {
        at: Some(from_system_time(SystemTime::now())),
        tier: String::new(),
        next_attempt: 2,
    });
    api.attempt(&record(task, 1, AttemptOutcome::HttpStatus, 503, retry))
        .await;
    let reply = api
        .poll(&format!("/v1/deliveries/{delivery_id}"), TOKEN_A, |r| {
            r.json()["status"] == "retrying"
        })
        .await;
    assert_eq!(reply.json()["status"], "retrying", "{}", reply.text);
    api.attempt(&record(
        task,
        2,
        AttemptOutcome::Success,
        204,
        Action::Done(Done {}),
    ))
    .await;
    let reply = api
        .poll(&format!("/v1/deliveries/{delivery_id}"), TOKEN_A, |r| {
            r.json()["status"] == "succeeded"
        })
        .await;
    let status = reply.json();
    assert_eq!(status["status"], "succeeded", "{}", reply.text);
    let attempts = status["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["outcome"], "http_status");
    assert_eq!(attempts[0]["status_code"], 503);
    assert_eq!(attempts[0]["response_excerpt"], "busy");
    assert_eq!(attempts[0]["next"], "retry");
    assert_eq!(attempts[1]["outcome"], "success");
    assert_eq!(attempts[1]["next"], "done");
    assert_eq!(attempts[1]["duration_ms"], 12);

    // The subscription's attempts, newest first, filtered and paged.
    let path = format!("/v1/subscriptions/{id}/attempts");
    let page = api.get(&path, TOKEN_A).await.json();
    let numbers: Vec<u64> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|a| a["attempt"].as_u64())
        .collect();
    assert_eq!(numbers, [2, 1]);
    assert_eq!(page["has_more"], false);
    let page = api.get(&format!("{path}?limit=1"), TOKEN_A).await.json();
    assert_eq!(page["data"][0]["attempt"], 2);
    assert_eq!(page["has_more"], true);
    let page = api
        .get(&format!("{path}?outcome=http_status"), TOKEN_A)
        .await
        .json();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["data"][0]["status_code"], 503);
    let page = api
        .get(&format!("{path}?outcome=timeout"), TOKEN_A)
        .await
        .json();
    assert_eq!(page["data"], json!([]));
    api.get(&format!("{path}?outcome=exploded"), TOKEN_A)
        .await
        .assert_error(400, "invalid_query", Some("outcome"));
    api.get(&format!("{path}?limit=1000"), TOKEN_A)
        .await
        .assert_error(400, "invalid_query", Some("limit"));

    // The event's deliveries.
    let reply = api
        .get(&format!("/v1/events/{event_id}/deliveries"), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let deliveries = reply.json();
    assert_eq!(deliveries["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(deliveries["data"][0]["delivery_id"], delivery_id.as_str());
    assert_eq!(deliveries["data"][0]["status"], "succeeded");

    // Another account sees none of it; an operator sees all of it.
    for path in [
        format!("/v1/deliveries/{delivery_id}"),
        format!("/v1/events/{event_id}/deliveries"),
        format!("/v1/subscriptions/{id}/attempts"),
    ] {
        api.get(&path, TOKEN_B)
            .await
            .assert_error(404, "not_found", None);
        assert_eq!(
            api.get(&path, TOKEN_OPS).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    api.get("/v1/deliveries/dlv_unknown", TOKEN_A)
        .await
        .assert_error(404, "not_found", None);
    api.get("/v1/events/evt_unknown/deliveries", TOKEN_A)
        .await
        .assert_error(404, "not_found", None);

    // A deleted subscription's attempts stay readable by its account.
    assert_eq!(
        api.delete(&format!("/v1/subscriptions/{id}"), TOKEN_A)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let page = api
        .get(&format!("/v1/subscriptions/{id}/attempts"), TOKEN_A)
        .await;
    assert_eq!(
        page.json()["data"].as_array().map(Vec::len),
        Some(2),
        "{}",
        page.text
    );
    api.get(&format!("/v1/subscriptions/{id}/attempts"), TOKEN_B)
        .await
        .assert_error(404, "not_found", None);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laned_subscriptions_test_event_goes_to_its_lane() {
    let api = Harness::start("test_lane").await;
    let id = id_of(&api.subscribe(TOKEN_A, json!({"lane": LANE})).await);
    let reply = api
        .post_empty(&format!("/v1/subscriptions/{id}/test"), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let delivery_id = reply.json()["delivery_id"].as_str().expect("id").to_owned();
    let on_lane = api.tasks_on(&api.names.lane(LANE), 1).await;
    assert_eq!(on_lane.len(), 1);
    assert_eq!(on_lane[0].1.delivery_id, delivery_id);
    assert_eq!(on_lane[0].1.event_type, "webhook.test");
    api.post_empty("/v1/subscriptions/sub_missing/test", TOKEN_A)
        .await
        .assert_error(404, "not_found", None);
    api.stop().await;
}
