//! Subscriptions CRUD: read-your-writes, versions and `If-Match`, concurrent changes, paging,
//! re-enabling after 410, and every 4xx a subscription write can answer.

use axum::http::{Method, StatusCode};
use dispatch_proto::dispatch::v1::Subscription;
use serde_json::json;

use crate::support::{ACCOUNT_A, Call, Harness, LANE, TOKEN_A, TOKEN_OPS, URL, WAIT, id_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_change_delete_with_read_your_writes() {
    let api = Harness::start("crud").await;
    let reply = api
        .post(
            "/v1/subscriptions",
            TOKEN_A,
            &json!({
                "url": URL,
                "event_types": ["image.generation.completed", "studio.**"],
                "filter": {"region": ["eu-west"]},
                "description": "orders",
                "headers": {"X-Tenant": "acme"},
                "lane": LANE,
                "rate_limit_per_second": 5,
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let created = reply.json();
    let id = id_of(&created);
    assert!(id.starts_with("sub_"), "{id}");
    assert!(
        created["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    assert_eq!(reply.header("etag"), Some("\"1\""));
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/subscriptions/{id}").as_str())
    );
    assert_eq!(created["account_id"], ACCOUNT_A);
    assert_eq!(created["version"], 1);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["headers"], json!({"x-tenant": "acme"}));
    assert_eq!(created["lane"], LANE);
    assert!(
        created["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // Read-your-writes: the very next request sees it, without its secret.
    let reply = api.get(&format!("/v1/subscriptions/{id}"), TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let read = reply.json();
    assert!(!reply.text.contains("whsec_"), "{}", reply.text);
    assert_eq!(read["url"], URL);
    assert_eq!(read["filter"], json!({"region": ["eu-west"]}));
    let listed = api.get("/v1/subscriptions", TOKEN_A).await;
    assert_eq!(listed.json()["data"][0]["id"], id.as_str());
    assert!(!listed.text.contains("whsec_"));
    // And the record in Kafka is what every role reads.
    let record: Subscription = api
        .view
        .read(|table| table.get(&id).cloned())
        .expect("in the view");
    assert_eq!(record.version, 1);
    assert_eq!(record.secrets.len(), 1);
    assert_eq!(record.rate_limit_per_second, 5);

    // A change bumps the version and is visible at once.
    let path = format!("/v1/subscriptions/{id}");
    let reply = api
        .send(
            Call::new(Method::PATCH, &path)
                .token(TOKEN_A)
                .header("if-match", "\"1\"")
                .json(&json!({"url": "http://127.0.0.1:10/new", "description": ""})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("\"2\""));
    assert_eq!(reply.json()["version"], 2);
    assert_eq!(reply.json()["description"], "");
    assert_eq!(
        reply.json()["event_types"],
        json!(["image.generation.completed", "studio.**"])
    );
    let read = api.get(&path, TOKEN_A).await.json();
    assert_eq!(read["url"], "http://127.0.0.1:10/new");
    assert_eq!(read["version"], 2);

    // A stale If-Match is a conflict, and changes nothing.
    let reply = api
        .send(
            Call::new(Method::PATCH, &path)
                .token(TOKEN_A)
                .header("if-match", "\"1\"")
                .json(&json!({"url": "http://127.0.0.1:11/stale"})),
        )
        .await;
    reply.assert_error(409, "version_conflict", None);
    assert_eq!(api.get(&path, TOKEN_A).await.json()["version"], 2);
    // A malformed one is a bad request.
    let reply = api
        .send(
            Call::new(Method::PATCH, &path)
                .token(TOKEN_A)
                .header("if-match", "two")
                .json(&json!({})),
        )
        .await;
    reply.assert_error(400, "invalid_header", Some("If-Match"));

    // Disabling and enabling again.
    let reply = api.patch(&path, TOKEN_A, &json!({"enabled": false})).await;
    assert_eq!(reply.json()["enabled"], false, "{}", reply.text);
    assert_eq!(
        reply.json()["disabled_reason"],
        "disabled through the admin API"
    );
    api.post_empty(&format!("{path}/test"), TOKEN_A)
        .await
        .assert_error(409, "subscription_disabled", None);
    let reply = api.patch(&path, TOKEN_A, &json!({"enabled": true})).await;
    assert_eq!(reply.json()["enabled"], true);
    assert!(reply.json().get("disabled_reason").is_none());
    assert_eq!(reply.json()["version"], 4);
    // A change that changes nothing writes nothing.
    let reply = api.patch(&path, TOKEN_A, &json!({"enabled": true})).await;
    assert_eq!(reply.json()["version"], 4);

    // Delete: 204, then gone for reads, writes and the view.
    let reply = api
        .send(
            Call::new(Method::DELETE, &path)
                .token(TOKEN_A)
                .header("if-match", "3"),
        )
        .await;
    reply.assert_error(409, "version_conflict", None);
    let reply = api.delete(&path, TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert!(reply.text.is_empty());
    api.get(&path, TOKEN_A)
        .await
        .assert_error(404, "not_found", None);
    api.delete(&path, TOKEN_A)
        .await
        .assert_error(404, "not_found", None);
    api.patch(&path, TOKEN_A, &json!({"enabled": false}))
        .await
        .assert_error(404, "not_found", None);
    assert!(api.view.read(|table| table.get(&id).is_none()));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_disabled_after_410_is_re_enabled_by_patch() {
    let api = Harness::start("reenable").await;
    let id = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    // What the sender writes when the endpoint answers 410 Gone.
    let mut record = api
        .view
        .read(|table| table.get(&id).cloned())
        .expect("in the view");
    record.enabled = false;
    record.disabled_reason = "endpoint answered 410 Gone".to_owned();
    record.version = 2;
    let offset = api.writer.put(&record).await.expect("written");
    api.view
        .wait_for_offset(offset, WAIT)
        .await
        .expect("applied");

    let path = format!("/v1/subscriptions/{id}");
    let read = api.get(&path, TOKEN_A).await.json();
    assert_eq!(read["enabled"], false);
    assert_eq!(read["disabled_reason"], "endpoint answered 410 Gone");
    let reply = api
        .send(
            Call::new(Method::PATCH, &path)
                .token(TOKEN_A)
                .header("if-match", "\"2\"")
                .json(&json!({"enabled": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["enabled"], true);
    assert_eq!(reply.json()["version"], 3);
    let record = api
        .view
        .read(|table| table.get(&id).cloned())
        .expect("in the view");
    assert!(record.enabled);
    assert!(record.disabled_reason.is_empty());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_on_the_same_version_one_wins_one_conflicts() {
    let api = Harness::start("race").await;
    let id = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let path = format!("/v1/subscriptions/{id}");
    let patch = |url: &'static str| {
        api.send(
            Call::new(Method::PATCH, &path)
                .token(TOKEN_A)
                .header("if-match", "\"1\"")
                .json(&json!({"url": url})),
        )
    };
    let (first, second) = tokio::join!(
        patch("http://127.0.0.1:21/first"),
        patch("http://127.0.0.1:22/second")
    );
    let mut statuses = [first.status.as_u16(), second.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", first.text, second.text);
    let (winner, loser) = if first.status == StatusCode::OK {
        (first, second)
    } else {
        (second, first)
    };
    loser.assert_error(409, "version_conflict", None);
    assert_eq!(winner.json()["version"], 2);

    // The winner holds, at the version its ETag names (the loser's re-assertion of the winner is
    // a duplicate, not a new version).
    let read = api.get(&path, TOKEN_A).await;
    assert_eq!(read.json()["url"], winner.json()["url"]);
    assert_eq!(read.header("etag"), Some("\"2\""));
    // And the last record of the key in the log is the winner: what compaction keeps, and so
    // what a view built later sees, even if the loser's record reached the log.
    let last = api.last_record(&id).await.expect("a record of the key");
    assert_eq!(last.version, 2);
    assert_eq!(Some(last.url.as_str()), winner.json()["url"].as_str());
    // Without If-Match, racing changes are both applied, one on top of the other.
    let harness = &api;
    let path_ref = &path;
    let patch = |description: &'static str| async move {
        harness
            .patch(path_ref, TOKEN_A, &json!({"description": description}))
            .await
    };
    let (first, second) = tokio::join!(patch("one"), patch("two"));
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    let mut versions = [
        first.json()["version"].as_u64().unwrap_or_default(),
        second.json()["version"].as_u64().unwrap_or_default(),
    ];
    versions.sort_unstable();
    assert_eq!(versions, [3, 4]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_by_id() {
    let api = Harness::start("paging").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(&api.subscribe(TOKEN_A, json!({})).await));
    }
    ids.sort();
    let page = api.get("/v1/subscriptions?limit=2", TOKEN_A).await.json();
    let listed: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["next_after"], ids[1].as_str());
    let page = api
        .get(
            &format!("/v1/subscriptions?limit=2&after={}", ids[1]),
            TOKEN_A,
        )
        .await
        .json();
    assert_eq!(page["data"][0]["id"], ids[2].as_str());
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["has_more"], false);
    assert!(page.get("next_after").is_none());

    api.get("/v1/subscriptions?limit=0", TOKEN_A)
        .await
        .assert_error(400, "invalid_query", Some("limit"));
    api.get("/v1/subscriptions?limit=101", TOKEN_A)
        .await
        .assert_error(400, "invalid_query", Some("limit"));
    api.get("/v1/subscriptions?limt=5", TOKEN_A)
        .await
        .assert_error(400, "unknown_parameter", Some("limt"));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_subscriptions_are_refused_naming_the_field() {
    let api = Harness::start("invalid").await;
    let harness = &api;
    let create = |body: serde_json::Value| async move {
        harness.post("/v1/subscriptions", TOKEN_A, &body).await
    };
    let good = || json!({"url": URL, "event_types": ["**"]});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = good();
        body[key] = value;
        body
    };

    // 400: values the API will not accept.
    let cases = [
        (
            with("url", json!("ftp://example.com/")),
            "invalid_url",
            "url",
        ),
        (with("url", json!("example.com/hook")), "invalid_url", "url"),
        (
            with("url", json!("https://user:pw@example.com/")),
            "invalid_url",
            "url",
        ),
        (
            with("url", json!("https://10.1.2.3/hook")),
            "blocked_url",
            "url",
        ),
        (
            with("url", json!("https://169.254.169.254/latest")),
            "blocked_url",
            "url",
        ),
        (
            with("url", json!("http://[::1]:8080/")),
            "blocked_url",
            "url",
        ),
        (
            with("event_types", json!([])),
            "invalid_event_type",
            "event_types",
        ),
        (
            with(
                "event_types",
                json!(["image.**", "image.generation.complete"]),
            ),
            "unknown_event_type",
            "event_types[1]",
        ),
        (
            with("event_types", json!(["audio.*"])),
            "unknown_event_type",
            "event_types[0]",
        ),
        (
            with("event_types", json!(["image.gen*"])),
            "invalid_event_type",
            "event_types[0]",
        ),
        (
            with("event_types", json!(["studio.**.done"])),
            "invalid_event_type",
            "event_types[0]",
        ),
        (
            with("headers", json!({"webhook-signature": "v1,forged"})),
            "reserved_header",
            "headers.webhook-signature",
        ),
        (
            with("headers", json!({"Posternity-Attempt": "1"})),
            "reserved_header",
            "headers.Posternity-Attempt",
        ),
        (
            with("headers", json!({"x-ok": "line\nbreak"})),
            "invalid_header",
            "headers.x-ok",
        ),
        (with("lane", json!("nope")), "unknown_lane", "lane"),
        (
            with("filter", json!({"region": []})),
            "invalid_filter",
            "filter.region",
        ),
        (
            with("account_id", json!("acc_b")),
            "invalid_account",
            "account_id",
        ),
    ];
    for (body, code, field) in cases {
        create(body).await.assert_error(400, code, Some(field));
    }
    // An operator must say whose subscription it is.
    api.post("/v1/subscriptions", TOKEN_OPS, &good())
        .await
        .assert_error(400, "invalid_account", Some("account_id"));

    // 422: JSON of another shape.
    create(with("url", json!(7)))
        .await
        .assert_error(422, "invalid_body", Some("url"));
    create(with("event_types", json!(["**", 3])))
        .await
        .assert_error(422, "invalid_body", Some("event_types[1]"));
    create(with("rate_limit_per_second", json!(-1)))
        .await
        .assert_error(422, "invalid_body", Some("rate_limit_per_second"));
    let reply = create(with("secret", json!("whsec_mine"))).await;
    reply.assert_error(422, "invalid_body", None);
    assert!(reply.text.contains("secret"), "{}", reply.text);
    let reply = create(json!({"event_types": ["**"]})).await;
    reply.assert_error(422, "invalid_body", None);
    assert!(reply.text.contains("url"), "{}", reply.text);

    // 400: not JSON; 415: not declared JSON; 413: too large.
    api.send(
        Call::new(Method::POST, "/v1/subscriptions")
            .token(TOKEN_A)
            .raw("{\"url\": ", Some("application/json")),
    )
    .await
    .assert_error(400, "invalid_json", None);
    api.send(
        Call::new(Method::POST, "/v1/subscriptions")
            .token(TOKEN_A)
            .raw(good().to_string(), None),
    )
    .await
    .assert_error(415, "unsupported_media_type", None);
    api.send(
        Call::new(Method::POST, "/v1/subscriptions")
            .token(TOKEN_A)
            .raw(good().to_string(), Some("text/plain")),
    )
    .await
    .assert_error(415, "unsupported_media_type", None);
    let huge = with("description", json!("x".repeat(8 * 1024)));
    create(huge).await.assert_error(413, "body_too_large", None);

    // The same rules hold for changes.
    let id = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let path = format!("/v1/subscriptions/{id}");
    api.patch(&path, TOKEN_A, &json!({"url": "https://10.0.0.1/"}))
        .await
        .assert_error(400, "blocked_url", Some("url"));
    api.patch(&path, TOKEN_A, &json!({"event_types": ["map.nothing"]}))
        .await
        .assert_error(400, "unknown_event_type", Some("event_types[0]"));
    api.patch(
        &path,
        TOKEN_A,
        &json!({"headers": {"content-type": "text/xml"}}),
    )
    .await
    .assert_error(400, "reserved_header", Some("headers.content-type"));
    api.patch(&path, TOKEN_A, &json!({"lane": "other"}))
        .await
        .assert_error(400, "unknown_lane", Some("lane"));
    api.patch(&path, TOKEN_A, &json!({"account_id": "acc_b"}))
        .await
        .assert_error(422, "invalid_body", None);
    api.patch(&path, TOKEN_A, &json!({"version": 9}))
        .await
        .assert_error(422, "invalid_body", None);
    // Nothing of it was written.
    assert_eq!(api.get(&path, TOKEN_A).await.json()["version"], 1);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_refusals_name_the_rule_not_the_resolved_addresses() {
    // The production rules: no allow-list, so `localhost` is refused for what it resolves to.
    let api = Harness::start_with_http("ssrf", |_| {}, dispatch_http::HttpConfig::default()).await;
    let body = json!({"url": "https://localhost:8443/hook", "event_types": ["**"]});
    let refused = api.post("/v1/subscriptions", TOKEN_A, &body).await;
    refused.assert_error(400, "blocked_url", Some("url"));
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        message,
        "the endpoint localhost resolves to a loopback address, which is not allowed"
    );
    assert!(
        !message.contains("127.0.0.1") && !message.contains("::1"),
        "{message}"
    );
    // A literal address is named: the customer wrote it.
    let body = json!({"url": "https://10.1.2.3/hook", "event_types": ["**"]});
    let refused = api.post("/v1/subscriptions", TOKEN_A, &body).await;
    refused.assert_error(400, "blocked_url", Some("url"));
    assert_eq!(
        refused.json()["error"]["message"],
        "the endpoint address 10.1.2.3 is not allowed: private (RFC 1918)"
    );
    api.stop().await;
}
