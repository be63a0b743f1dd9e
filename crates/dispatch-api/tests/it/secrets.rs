//! Signing secrets: returned by create, rotate and get-secret only; rotation keeps the old secret
//! signing until its expiry, so deliveries carry both signatures meanwhile.

use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use dispatch_core::request::live_secrets;
use dispatch_core::signing::{self, ReceivedHeaders, SigningSecret};
use dispatch_core::timestamp;
use serde_json::json;

use crate::support::{Call, Harness, TOKEN_A, id_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_both_secrets_live_the_old_one_until_it_expires() {
    let api = Harness::start_with("rotation", |config| {
        config.secret_rotation_overlap_secs = 3600;
    })
    .await;
    let created = api.subscribe(TOKEN_A, json!({})).await;
    let id = id_of(&created);
    let first = created["secret"].as_str().expect("secret").to_owned();
    let path = format!("/v1/subscriptions/{id}");

    let reply = api.get(&format!("{path}/secret"), TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let secret = reply.json();
    assert_eq!(secret["secret"], first.as_str());
    assert_eq!(secret["subscription_id"], id.as_str());
    assert_eq!(secret["secrets"].as_array().map(Vec::len), Some(1));

    let before = SystemTime::now();
    let reply = api
        .send(
            Call::new(Method::POST, format!("{path}/secret/rotate"))
                .token(TOKEN_A)
                .header("if-match", "\"1\""),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("\"2\""));
    let rotated = reply.json();
    let second = rotated["secret"].as_str().expect("secret").to_owned();
    assert!(second.starts_with("whsec_") && second != first);
    assert_eq!(rotated["version"], 2);
    let secrets = rotated["secrets"].as_array().expect("secrets");
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[0]["secret"], second.as_str());
    assert!(secrets[0].get("expires_at").is_none());
    assert_eq!(secrets[1]["secret"], first.as_str());
    let expires_at = secrets[1]["expires_at"].as_str().expect("an expiry");
    let expires_at = timestamp::to_system_time(
        &dispatch_proto::wkt::Timestamp::parse_rfc3339(expires_at).expect("RFC 3339"),
    )
    .expect("in range");
    let overlap = expires_at
        .duration_since(before)
        .expect("the expiry is in the future");
    assert!(
        overlap > Duration::from_secs(3590) && overlap < Duration::from_secs(3660),
        "{overlap:?}"
    );
    // The same from GET, and a stale rotation is refused.
    assert_eq!(
        api.get(&format!("{path}/secret"), TOKEN_A).await.json(),
        rotated
    );
    api.send(
        Call::new(Method::POST, format!("{path}/secret/rotate"))
            .token(TOKEN_A)
            .header("if-match", "\"1\""),
    )
    .await
    .assert_error(409, "version_conflict", None);

    // What the sender reads: both secrets sign, the new one first; a delivery made after the
    // expiry is signed by the new one only.
    let record = api
        .view
        .read(|table| table.get(&id).cloned())
        .expect("in the view");
    let live = live_secrets(&record, SystemTime::now());
    let parsed = |s: &str| SigningSecret::parse(s).expect("valid secret");
    assert_eq!(live, vec![parsed(&second), parsed(&first)]);
    assert_eq!(
        live_secrets(&record, expires_at + Duration::from_secs(1)),
        vec![parsed(&second)]
    );
    let signing_with: Vec<&SigningSecret> = live.iter().collect();
    let header = signing::signature_header(&signing_with, "evt_1", 1_800_000_000, b"{}");
    for secret in [&first, &second] {
        let received = ReceivedHeaders::from_lookup(|name| match name {
            signing::HEADER_ID => Some("evt_1"),
            signing::HEADER_TIMESTAMP => Some("1800000000"),
            signing::HEADER_SIGNATURE => Some(header.as_str()),
            _ => None,
        });
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        signing::verify(
            &parsed(secret),
            &received,
            b"{}",
            now,
            signing::DEFAULT_TOLERANCE,
        )
        .expect("each secret verifies its signature");
    }

    // Secrets appear in no other answer.
    for reply in [
        api.get(&path, TOKEN_A).await,
        api.get("/v1/subscriptions", TOKEN_A).await,
        api.patch(&path, TOKEN_A, &json!({"description": "x"}))
            .await,
    ] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert!(!reply.text.contains("whsec_"), "{}", reply.text);
    }
    api.stop().await;
}
