//! The OpenAPI document against the routes the server really serves, and the routes without a
//! token: health, readiness, the event catalog.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::support::{Call, Harness, TOKEN_A, WAIT};

/// Every route of the issue, as `METHOD path`.
const EXPECTED: &[&str] = &[
    "DELETE /v1/dlq/{delivery_id}",
    "DELETE /v1/subscriptions/{id}",
    "GET /healthz",
    "GET /openapi.json",
    "GET /readyz",
    "GET /v1/deliveries/{delivery_id}",
    "GET /v1/dlq",
    "GET /v1/event-types",
    "GET /v1/events/{event_id}/deliveries",
    "GET /v1/subscriptions",
    "GET /v1/subscriptions/{id}",
    "GET /v1/subscriptions/{id}/attempts",
    "GET /v1/subscriptions/{id}/secret",
    "PATCH /v1/subscriptions/{id}",
    "POST /v1/dlq/replay",
    "POST /v1/dlq/{delivery_id}/replay",
    "POST /v1/subscriptions",
    "POST /v1/subscriptions/{id}/secret/rotate",
    "POST /v1/subscriptions/{id}/test",
];

const METHODS: [&str; 7] = ["get", "post", "patch", "put", "delete", "head", "options"];

/// The `METHOD path` pairs of a document.
fn operations(document: &Value) -> BTreeSet<String> {
    let paths = document["paths"].as_object().expect("paths");
    let mut found = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                found.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    found
}

/// Every `$ref` in a JSON value.
fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(reference)) => into.push(reference.clone()),
                    _ => collect_refs(inner, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, into)),
        _ => {}
    }
}

/// A concrete path for a template: ids that need not exist.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "sub_x")
        .replace("{delivery_id}", "dlv_x")
        .replace("{event_id}", "evt_x")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_exactly_the_routes_the_server_serves() {
    let api = Harness::start("openapi").await;
    let reply = api.send(Call::new(Method::GET, "/openapi.json")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let document = reply.json();
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "{}",
        document["openapi"]
    );
    assert_eq!(
        document,
        serde_json::to_value(dispatch_api::openapi()).expect("document")
    );

    // The document lists the routes of the issue, no more, no fewer.
    let listed = operations(&document);
    let expected: BTreeSet<String> = EXPECTED.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(listed, expected);

    // Every documented operation is served: the router answers it with a route of its own,
    // never its fallback for unknown paths or methods.
    for operation in &listed {
        let (method, template) = operation.split_once(' ').expect("METHOD path");
        let method: Method = method.parse().expect("method");
        let reply = api
            .send(
                Call::new(method.clone(), concrete(template))
                    .token(TOKEN_A)
                    .json(&serde_json::json!({})),
            )
            .await;
        assert_ne!(
            reply.code(),
            "route_not_found",
            "{operation}: {}",
            reply.text
        );
        assert_ne!(
            reply.code(),
            "method_not_allowed",
            "{operation}: {}",
            reply.text
        );
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{operation}");
    }
    // And what is not documented is not served: every other method on every documented path,
    // and paths that are not documented.
    for path in document["paths"].as_object().expect("paths").keys() {
        for method in METHODS {
            if document["paths"][path].get(method).is_some() || method == "head" {
                continue;
            }
            let method: Method = method.to_uppercase().parse().expect("method");
            let reply = api
                .send(Call::new(method.clone(), concrete(path)).token(TOKEN_A))
                .await;
            reply.assert_error(405, "method_not_allowed", None);
        }
    }
    for path in [
        "/",
        "/v1",
        "/v2/subscriptions",
        "/v1/subscriptions/sub_x/nothing",
        "/metrics",
    ] {
        api.send(Call::new(Method::GET, path).token(TOKEN_A))
            .await
            .assert_error(404, "route_not_found", None);
    }

    // Every operation says what it answers, and the /v1 ones that they need a token.
    let mut operation_ids = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            let operation_id = operation["operationId"].as_str().expect("an operationId");
            assert!(
                operation_ids.insert(operation_id.to_owned()),
                "operationId {operation_id} is used twice"
            );
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            assert!(operation["summary"].as_str().is_some(), "{method} {path}");
            if path.starts_with("/v1/") {
                assert_eq!(
                    operation["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{method} {path}"
                );
                assert!(
                    operation["responses"].get("401").is_some(),
                    "{method} {path}"
                );
            }
        }
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    for schema in [
        "ErrorBody",
        "SubscriptionIn",
        "SubscriptionOut",
        "DeadLetterOut",
    ] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }
    // Every reference resolves: the document is self-contained.
    let mut references = Vec::new();
    collect_refs(&document, &mut references);
    assert!(!references.is_empty());
    for reference in references {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {reference}"));
        assert!(
            document["components"]["schemas"][name].is_object(),
            "dangling reference {reference}"
        );
    }
    assert!(
        document["components"]["schemas"]["SubscriptionOut"]["properties"]
            .get("secret")
            .is_none(),
        "subscriptions are documented without their secret"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_the_event_catalog() {
    let api = Harness::start("health").await;
    let reply = api.send(Call::new(Method::GET, "/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text, "ok");
    let reply = api.send(Call::new(Method::GET, "/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let readiness = reply.json();
    assert_eq!(readiness["ready"], true);
    for component in ["subscription_view", "delivery_history", "dead_letters"] {
        assert_eq!(
            readiness["components"][component]["ready"], true,
            "{component}"
        );
    }

    let reply = api.get("/v1/event-types", TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let types = reply.json();
    let data = types["data"].as_array().expect("data");
    assert_eq!(data.len(), dispatch_core::catalog::CATALOG.len());
    let completed = data
        .iter()
        .find(|t| t["name"] == "image.generation.completed")
        .expect("listed");
    assert_eq!(completed["family"], "image");
    assert!(
        completed["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert!(completed["example"]["images"].is_array());
    assert!(data.iter().any(|t| t["name"] == "webhook.test"));
    assert!(data.iter().any(|t| t["progress"] == true));

    // The read models report to the process's health (what the metrics server's /readyz
    // serves), and report stopped once the API stopped.
    let mut api = api;
    let deadline = std::time::Instant::now() + WAIT;
    while !api.health.is_ready() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report = api.health.report();
    assert!(report.ready, "{report:?}");
    let names: Vec<&str> = report.components.keys().map(String::as_str).collect();
    assert_eq!(names, ["api_dead_letters", "api_delivery_history"]);
    api.stop_and_keep().await;
    let deadline = std::time::Instant::now() + WAIT;
    while api.health.is_ready() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report = api.health.report();
    assert!(!report.ready, "{report:?}");
    assert_eq!(
        report.components["api_delivery_history"].reason.as_deref(),
        Some("stopped")
    );
}
