//! The dead-letter queue against dead letters produced to `dispatch.dlq` as the sender would:
//! listing and filters, account isolation, replay (a task with `replay_of` on the deliveries
//! topic, the letter gone from the next listing), filtered replay, and deletion.

use std::time::SystemTime;

use axum::http::{Method, StatusCode};
use dispatch_core::ids;
use dispatch_core::timestamp::from_system_time;
use dispatch_proto::dispatch::v1::{AttemptOutcome, AttemptSummary, DeliveryTask};
use dispatch_telemetry::names::API_DEAD_LETTERS_REPLAYED_TOTAL;
use serde_json::{Value, json};

use crate::support::{
    ACCOUNT_A, ACCOUNT_B, Call, Harness, LANE, Reply, TOKEN_A, TOKEN_B, TOKEN_OPS, id_of,
};

/// A task of a dead delivery of a fresh event to `subscription_id`.
fn dead_task(subscription_id: &str, account_id: &str, event_type: &str) -> DeliveryTask {
    let event_id = ids::new_event_id(SystemTime::now(), &mut rand::rng());
    DeliveryTask {
        delivery_id: ids::delivery_id(&event_id, subscription_id),
        event_id: event_id.clone(),
        event_type: event_type.to_owned(),
        subscription_id: subscription_id.to_owned(),
        account_id: account_id.to_owned(),
        attempt: 6,
        body: format!(r#"{{"id":"{event_id}","type":"{event_type}"}}"#).into_bytes(),
        occurred_at: Some(from_system_time(SystemTime::now())),
        attempts: vec![AttemptSummary {
            attempt: 6,
            outcome: AttemptOutcome::Timeout as i32,
            error: "timed out after 30 s".into(),
            ..AttemptSummary::default()
        }],
        ..DeliveryTask::default()
    }
}

fn delivery_ids(reply: &Reply) -> Vec<String> {
    reply.json()["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {}", reply.text))
        .iter()
        .filter_map(|d| d["delivery_id"].as_str().map(str::to_owned))
        .collect()
}

/// The replay counter as the process's Prometheus recorder renders it.
fn replayed(metrics: &dispatch_telemetry::PrometheusHandle) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{API_DEAD_LETTERS_REPLAYED_TOTAL} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_deleted_per_account() {
    let metrics = dispatch_telemetry::install_recorder().expect("recorder");
    let api = Harness::start("dlq").await;
    let sub_a = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let sub_a_laned = id_of(&api.subscribe(TOKEN_A, json!({"lane": LANE})).await);
    let sub_b = id_of(&api.subscribe(TOKEN_B, json!({})).await);
    let first = dead_task(&sub_a, ACCOUNT_A, "image.generation.completed");
    let second = dead_task(&sub_a, ACCOUNT_A, "map.region.completed");
    let laned = dead_task(&sub_a_laned, ACCOUNT_A, "image.generation.completed");
    let of_b = dead_task(&sub_b, ACCOUNT_B, "image.generation.completed");
    for task in [&first, &second, &laned, &of_b] {
        api.dead_letter(task, "retries exhausted").await;
    }
    let listed = api
        .poll("/v1/dlq", TOKEN_OPS, |r| delivery_ids(r).len() == 4)
        .await;
    assert_eq!(delivery_ids(&listed).len(), 4, "{}", listed.text);

    // Each account sees its own; filters narrow.
    let of_a = api.get("/v1/dlq", TOKEN_A).await;
    let mut ids_a = delivery_ids(&of_a);
    ids_a.sort();
    let mut expected = vec![
        first.delivery_id.clone(),
        second.delivery_id.clone(),
        laned.delivery_id.clone(),
    ];
    expected.sort();
    assert_eq!(ids_a, expected);
    let entry = of_a.json()["data"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|e| e["delivery_id"] == first.delivery_id.as_str())
                .cloned()
        })
        .expect("listed");
    assert_eq!(entry["reason"], "retries exhausted");
    assert_eq!(entry["subscription_id"], sub_a.as_str());
    assert_eq!(entry["event_type"], "image.generation.completed");
    assert_eq!(entry["attempts"][0]["outcome"], "timeout");
    assert!(entry["dead_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        delivery_ids(&api.get("/v1/dlq", TOKEN_B).await),
        [of_b.delivery_id.as_str()]
    );
    assert_eq!(
        delivery_ids(
            &api.get("/v1/dlq?event_type=map.region.completed", TOKEN_A)
                .await
        ),
        [second.delivery_id.as_str()]
    );
    assert_eq!(
        delivery_ids(
            &api.get(&format!("/v1/dlq?subscription_id={sub_a_laned}"), TOKEN_A)
                .await
        ),
        [laned.delivery_id.as_str()]
    );
    assert!(
        delivery_ids(
            &api.get(&format!("/v1/dlq?subscription_id={sub_a}"), TOKEN_B)
                .await
        )
        .is_empty()
    );
    assert!(
        delivery_ids(
            &api.get(&format!("/v1/dlq?account_id={ACCOUNT_A}"), TOKEN_B)
                .await
        )
        .is_empty()
    );
    assert_eq!(
        delivery_ids(
            &api.get(&format!("/v1/dlq?account_id={ACCOUNT_B}"), TOKEN_OPS)
                .await
        ),
        [of_b.delivery_id.as_str()]
    );
    let page = api.get("/v1/dlq?limit=2", TOKEN_A).await.json();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["has_more"], true);
    api.get("/v1/dlq?colour=red", TOKEN_A).await.assert_error(
        400,
        "unknown_parameter",
        Some("colour"),
    );

    // Another account can neither replay nor delete A's letters.
    let first_path = format!("/v1/dlq/{}", first.delivery_id);
    api.post_empty(&format!("{first_path}/replay"), TOKEN_B)
        .await
        .assert_error(404, "not_found", None);
    api.delete(&first_path, TOKEN_B)
        .await
        .assert_error(404, "not_found", None);
    api.get(&format!("/v1/deliveries/{}", first.delivery_id), TOKEN_B)
        .await
        .assert_error(404, "not_found", None);
    // A dead delivery the history does not know is answered from its dead letter.
    let reply = api
        .get(&format!("/v1/deliveries/{}", first.delivery_id), TOKEN_A)
        .await;
    assert_eq!(reply.json()["status"], "dead", "{}", reply.text);

    // Replay: a new delivery with replay_of, on the deliveries topic; the letter is gone.
    let replayed_before = replayed(&metrics);
    let reply = api
        .post_empty(&format!("{first_path}/replay"), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let replay = reply.json();
    assert_eq!(replay["replay_of"], first.delivery_id.as_str());
    let new_id = replay["delivery_id"].as_str().expect("new id").to_owned();
    assert_ne!(new_id, first.delivery_id);
    assert!(!delivery_ids(&api.get("/v1/dlq", TOKEN_A).await).contains(&first.delivery_id));
    let status = api
        .get(&format!("/v1/deliveries/{new_id}"), TOKEN_A)
        .await
        .json();
    assert_eq!(status["status"], "pending");
    assert_eq!(status["replay_of"], first.delivery_id.as_str());
    let tasks = api.tasks_on(&api.names.deliveries(), 1).await;
    assert_eq!(tasks.len(), 1);
    let (key, task) = &tasks[0];
    assert_eq!(key, &sub_a);
    assert_eq!(task.delivery_id, new_id);
    assert_eq!(task.replay_of, first.delivery_id);
    assert_eq!(task.event_id, first.event_id);
    assert_eq!(task.body, first.body);
    assert_eq!(task.attempt, 1);
    assert!(task.attempts.is_empty());
    assert!(replayed(&metrics) > replayed_before);
    // Requests are measured by route template, never by the path with its ids.
    let rendered = metrics.render();
    let measured = |route: &str, method: &str, class: &str| {
        rendered.lines().any(|line| {
            line.starts_with("dispatch_api_request_duration_seconds_count{")
                && line.contains(&format!("route=\"{route}\""))
                && line.contains(&format!("method=\"{method}\""))
                && line.contains(&format!("status_class=\"{class}\""))
        })
    };
    assert!(
        measured("/v1/dlq/{delivery_id}/replay", "POST", "2xx"),
        "{rendered}"
    );
    assert!(
        measured("/v1/dlq/{delivery_id}/replay", "POST", "4xx"),
        "{rendered}"
    );
    assert!(measured("/v1/dlq", "GET", "2xx"), "{rendered}");
    assert!(
        !rendered.contains(&first.delivery_id),
        "ids never become labels"
    );
    // Gone: a second replay or a delete finds nothing.
    api.post_empty(&format!("{first_path}/replay"), TOKEN_A)
        .await
        .assert_error(404, "not_found", None);
    api.delete(&first_path, TOKEN_A)
        .await
        .assert_error(404, "not_found", None);

    // A laned subscription's replay goes to its lane.
    let reply = api
        .post_empty(&format!("/v1/dlq/{}/replay", laned.delivery_id), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let on_lane = api.tasks_on(&api.names.lane(LANE), 1).await;
    assert_eq!(on_lane.len(), 1);
    assert_eq!(on_lane[0].1.replay_of, laned.delivery_id);

    // Delete discards without replaying.
    let reply = api
        .delete(&format!("/v1/dlq/{}", second.delivery_id), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert!(delivery_ids(&api.get("/v1/dlq", TOKEN_A).await).is_empty());
    assert_eq!(delivery_ids(&api.get("/v1/dlq", TOKEN_B).await).len(), 1);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_replay_replays_what_it_selects_and_skips_what_cannot_be_delivered() {
    let api = Harness::start("dlq_batch").await;
    let live = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let disabled = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let deleted = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let other = id_of(&api.subscribe(TOKEN_B, json!({})).await);
    let tasks = [
        dead_task(&live, ACCOUNT_A, "studio.review.requested"),
        dead_task(&live, ACCOUNT_A, "studio.review.requested"),
        dead_task(&live, ACCOUNT_A, "map.region.completed"),
        dead_task(&disabled, ACCOUNT_A, "studio.review.requested"),
        dead_task(&deleted, ACCOUNT_A, "studio.review.requested"),
        dead_task(&other, ACCOUNT_B, "studio.review.requested"),
    ];
    for task in &tasks {
        api.dead_letter(task, "retries exhausted").await;
    }
    api.poll("/v1/dlq", TOKEN_OPS, |r| {
        delivery_ids(r).len() == tasks.len()
    })
    .await;
    api.patch(
        &format!("/v1/subscriptions/{disabled}"),
        TOKEN_A,
        &json!({"enabled": false}),
    )
    .await;
    api.delete(&format!("/v1/subscriptions/{deleted}"), TOKEN_A)
        .await;

    // Single replays of letters whose subscription cannot receive them are refused.
    api.post_empty(&format!("/v1/dlq/{}/replay", tasks[3].delivery_id), TOKEN_A)
        .await
        .assert_error(409, "subscription_disabled", None);
    api.post_empty(&format!("/v1/dlq/{}/replay", tasks[4].delivery_id), TOKEN_A)
        .await
        .assert_error(409, "subscription_deleted", None);

    // A's filtered replay of one event type: A's letters only, the undeliverable ones skipped.
    let reply = api
        .post(
            "/v1/dlq/replay",
            TOKEN_A,
            &json!({"event_type": "studio.review.requested"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(
        reply.json(),
        json!({"count": 2, "skipped": 2, "has_more": false})
    );
    let left = delivery_ids(&api.get("/v1/dlq", TOKEN_A).await);
    let mut left_sorted = left.clone();
    left_sorted.sort();
    let mut expected = vec![
        tasks[2].delivery_id.clone(),
        tasks[3].delivery_id.clone(),
        tasks[4].delivery_id.clone(),
    ];
    expected.sort();
    assert_eq!(left_sorted, expected);
    let replays = api.tasks_on(&api.names.deliveries(), 2).await;
    let mut replay_of: Vec<String> = replays.iter().map(|(_, t)| t.replay_of.clone()).collect();
    replay_of.sort();
    let mut wanted = vec![tasks[0].delivery_id.clone(), tasks[1].delivery_id.clone()];
    wanted.sort();
    assert_eq!(replay_of, wanted);
    assert_eq!(delivery_ids(&api.get("/v1/dlq", TOKEN_B).await).len(), 1);

    // An account naming another account in the filter replays nothing.
    let reply = api
        .post("/v1/dlq/replay", TOKEN_B, &json!({"account_id": ACCOUNT_A}))
        .await;
    assert_eq!(reply.json()["count"], 0, "{}", reply.text);
    // Bodies are checked like any other.
    api.post("/v1/dlq/replay", TOKEN_A, &json!({"subscription": live}))
        .await
        .assert_error(422, "invalid_body", None);
    api.send(Call::new(Method::POST, "/v1/dlq/replay").token(TOKEN_A))
        .await
        .assert_error(415, "unsupported_media_type", None);
    // The undeliverable letters can still be deleted.
    let reply = api
        .delete(&format!("/v1/dlq/{}", tasks[4].delivery_id), TOKEN_A)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let _: Value = api.get("/v1/dlq", TOKEN_A).await.json();
    api.stop().await;
}
