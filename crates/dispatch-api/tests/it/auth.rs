//! Bearer tokens and account isolation: no token, a wrong token, another account's ids (404,
//! never 403), listings that show only what the caller may see, and operators who see all.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{
    ACCOUNT_A, ACCOUNT_B, Call, Harness, TOKEN_A, TOKEN_B, TOKEN_OPS, URL, id_of,
};

/// Every `/v1` route, with ids that need not exist: authentication comes first.
const V1_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/sub_x"),
    ("PATCH", "/v1/subscriptions/sub_x"),
    ("DELETE", "/v1/subscriptions/sub_x"),
    ("POST", "/v1/subscriptions/sub_x/secret/rotate"),
    ("GET", "/v1/subscriptions/sub_x/secret"),
    ("POST", "/v1/subscriptions/sub_x/test"),
    ("GET", "/v1/subscriptions/sub_x/attempts"),
    ("GET", "/v1/deliveries/dlv_x"),
    ("GET", "/v1/events/evt_x/deliveries"),
    ("GET", "/v1/dlq"),
    ("POST", "/v1/dlq/replay"),
    ("POST", "/v1/dlq/dlv_x/replay"),
    ("DELETE", "/v1/dlq/dlv_x"),
    ("GET", "/v1/event-types"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_wants_a_valid_bearer_token() {
    let api = Harness::start("tokens").await;
    for (method, path) in V1_ROUTES {
        let method: Method = method.parse().expect("method");
        for call in [
            Call::new(method.clone(), *path),
            Call::new(method.clone(), *path).token("not-a-token"),
            Call::new(method.clone(), *path).header("authorization", format!("Basic {TOKEN_A}")),
            Call::new(method.clone(), *path).header("authorization", TOKEN_A),
        ] {
            let reply = api.send(call.json(&json!({}))).await;
            reply.assert_error(401, "unauthorized", None);
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer"),
                "{method} {path}"
            );
            assert!(!reply.text.contains(TOKEN_A), "{}", reply.text);
        }
    }
    // The routes without a token.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let reply = api.send(Call::new(Method::GET, path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }
    let reply = api.get("/v1/event-types", TOKEN_B).await;
    assert_eq!(reply.status, StatusCode::OK);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_never_sees_or_touches_another_accounts_subscriptions() {
    let api = Harness::start("isolation").await;
    let a = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    let b = id_of(&api.subscribe(TOKEN_B, json!({})).await);
    // Operators create for any account they name.
    let by_operator = api
        .subscribe(TOKEN_OPS, json!({"account_id": ACCOUNT_A}))
        .await;
    assert_eq!(by_operator["account_id"], ACCOUNT_A);

    // B's token on A's subscription: 404 everywhere, as for an id that does not exist.
    let path = format!("/v1/subscriptions/{a}");
    for reply in [
        api.get(&path, TOKEN_B).await,
        api.patch(&path, TOKEN_B, &json!({"url": URL})).await,
        api.delete(&path, TOKEN_B).await,
        api.post_empty(&format!("{path}/secret/rotate"), TOKEN_B)
            .await,
        api.get(&format!("{path}/secret"), TOKEN_B).await,
        api.post_empty(&format!("{path}/test"), TOKEN_B).await,
        api.get(&format!("{path}/attempts"), TOKEN_B).await,
    ] {
        reply.assert_error(404, "not_found", None);
        assert!(!reply.text.contains("whsec_"), "{}", reply.text);
    }
    let missing = api.get("/v1/subscriptions/sub_missing", TOKEN_B).await;
    assert_eq!(
        missing.json()["error"]["code"],
        api.get(&path, TOKEN_B).await.json()["error"]["code"]
    );
    // A's subscription is untouched.
    let read = api.get(&path, TOKEN_A).await.json();
    assert_eq!(read["version"], 1);

    // Listings show only the caller's; asking for another account shows nothing.
    let ids = |reply: crate::support::Reply| -> Vec<String> {
        reply.json()["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect()
    };
    let of_a = ids(api.get("/v1/subscriptions", TOKEN_A).await);
    assert_eq!(of_a.len(), 2);
    assert!(of_a.contains(&a) && !of_a.contains(&b));
    assert_eq!(
        ids(api.get("/v1/subscriptions", TOKEN_B).await),
        [b.as_str()]
    );
    assert!(
        ids(api
            .get(
                &format!("/v1/subscriptions?account_id={ACCOUNT_A}"),
                TOKEN_B
            )
            .await)
        .is_empty()
    );
    // Operators see every account, or the one they name.
    let all = ids(api.get("/v1/subscriptions", TOKEN_OPS).await);
    assert_eq!(all.len(), 3);
    assert_eq!(
        ids(api
            .get(
                &format!("/v1/subscriptions?account_id={ACCOUNT_B}"),
                TOKEN_OPS
            )
            .await),
        [b.as_str()]
    );
    let reply = api.get(&path, TOKEN_OPS).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = api
        .patch(&path, TOKEN_OPS, &json!({"description": "by ops"}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["account_id"], ACCOUNT_A);
    api.stop().await;
}
