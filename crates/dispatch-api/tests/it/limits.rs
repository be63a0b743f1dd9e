//! What one caller may take of the API, against the real broker and over real sockets: the
//! per-token request rate (429 with `Retry-After`), the per-account quotas (refusals that name
//! the quota), and the two timeouts — a client that never finishes its headers is cut off, a
//! request that never finishes its body is answered 503.

use std::time::Instant;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ACCOUNT_A, Harness, TOKEN_A, TOKEN_B, TOKEN_OPS, WAIT, id_of};

/// Reads from `stream` until the peer closes the connection (or resets it), for at most
/// [`WAIT`]; returns what was read, or `None` when the connection was still open at the bound.
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_rate_limit_is_answered_429_with_retry_after() {
    let api = Harness::start_with("rate", |config| {
        config.rate_limit.requests_per_second_per_token = 1;
        config.rate_limit.burst_requests = 3;
    })
    .await;
    // A burst of 3 and one more a second: within a few requests one is refused, however slow
    // the machine (each request takes milliseconds).
    let mut refused = None;
    for _ in 0..20 {
        let reply = api.get("/v1/subscriptions", TOKEN_A).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let refused = refused.expect("a request past the rate limit is refused");
    refused.assert_error(429, "rate_limited", None);
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry_after >= 1, "{retry_after}");
    let message = refused.json()["error"]["message"].to_string();
    assert!(
        message.contains("api.rate_limit.requests_per_second_per_token"),
        "{message}"
    );
    assert!(
        !message.contains(TOKEN_A),
        "never repeat the token: {message}"
    );
    // Another token has a budget of its own; health checks have none.
    assert_eq!(
        api.get("/v1/subscriptions", TOKEN_B).await.status,
        StatusCode::OK
    );
    assert_eq!(api.get("/healthz", TOKEN_A).await.status, StatusCode::OK);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refusals_name_the_quota_and_its_limit() {
    let api = Harness::start_with("quotas", |config| {
        config.quotas.max_subscriptions_per_account = 2;
        config.quotas.test_events_per_minute_per_account = 1;
    })
    .await;
    let first = id_of(&api.subscribe(TOKEN_A, json!({})).await);
    api.subscribe(TOKEN_A, json!({})).await;

    let body = json!({"url": crate::support::URL, "event_types": ["**"]});
    let refused = api.post("/v1/subscriptions", TOKEN_A, &body).await;
    refused.assert_error(403, "quota_exceeded", None);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with(&format!(
            "account {ACCOUNT_A} has 2 subscriptions, the limit is 2 (api.quotas.max_subscriptions_per_account)"
        )),
        "{message}"
    );
    // An operator creating for the account meets the same quota; another account does not.
    let mut for_a = body.clone();
    for_a["account_id"] = Value::from(ACCOUNT_A);
    api.post("/v1/subscriptions", TOKEN_OPS, &for_a)
        .await
        .assert_error(403, "quota_exceeded", None);
    api.subscribe(TOKEN_B, json!({})).await;
    // Deleting one makes room again.
    let deleted = api
        .delete(&format!("/v1/subscriptions/{first}"), TOKEN_A)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let second = id_of(&api.subscribe(TOKEN_A, json!({})).await);

    // Test events: one a minute for the account.
    let path = format!("/v1/subscriptions/{second}/test");
    let sent = api.post_empty(&path, TOKEN_A).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    let refused = api.post_empty(&path, TOKEN_A).await;
    refused.assert_error(429, "quota_exceeded", None);
    assert!(
        refused
            .header("retry-after")
            .and_then(|value| value.parse::<u64>().ok())
            .is_some_and(|seconds| (1..=60).contains(&seconds)),
        "{:?}",
        refused.headers
    );
    let message = refused.json()["error"]["message"].to_string();
    assert!(
        message.contains("api.quotas.test_events_per_minute_per_account")
            && message.contains(ACCOUNT_A),
        "{message}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let api = Harness::start_with("slow-headers", |config| {
        config.header_read_timeout_ms = 500;
    })
    .await;
    let mut stream = TcpStream::connect(api.addr).await.expect("connect");
    // Half a request line, then nothing: the server must not wait for the rest forever.
    stream
        .write_all(b"GET /v1/subscrip")
        .await
        .expect("write half a request line");
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.is_some(),
        "the connection was still open after {WAIT:?}, with a header-read timeout of 500 ms"
    );
    // The server keeps serving everyone else.
    assert_eq!(
        api.get("/v1/subscriptions", TOKEN_A).await.status,
        StatusCode::OK
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlasts_the_request_timeout_is_answered_503() {
    let api = Harness::start_with("slow-body", |config| {
        config.write_timeout_ms = 200;
        config.request_timeout_ms = 1000;
    })
    .await;
    let mut stream = TcpStream::connect(api.addr).await.expect("connect");
    // Complete headers announcing a body of 100 bytes, then only one of them.
    let request = format!(
        "POST /v1/subscriptions HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN_A}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        api.addr
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the headers");
    let answer = read_until_closed(&mut stream)
        .await
        .expect("answered and closed within the bound");
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "expected a 503, got {answer:?}"
    );
    assert!(
        answer.contains(r#""code":"request_timeout""#) && answer.contains("api.request_timeout_ms"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Nothing was created.
    let listed = api.get("/v1/subscriptions", TOKEN_A).await;
    assert_eq!(listed.json()["data"], json!([]), "{}", listed.text);
    api.stop().await;
}
