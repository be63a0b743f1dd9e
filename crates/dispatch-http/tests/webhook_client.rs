//! The webhook client against real receivers on 127.0.0.1: what arrives, what comes back, and
//! what is refused before any connection is made. Requests are what `dispatch_core::request`
//! builds from a delivery task and its subscription, as the sender sends them.

mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dispatch_core::outcome::AttemptResult;
use dispatch_core::request::{RequestError, webhook_request};
use dispatch_core::signing::{
    DEFAULT_TOLERANCE, NoSigningSecret, ReceivedHeaders, SigningSecret, verify,
};
use dispatch_e2e::tls::TestPki;
use dispatch_http::connector::GuardedConnector;
use dispatch_http::ssrf::{AddressGuard, ResolveError};
use dispatch_http::{AttemptResponse, Error, HttpConfig, WebhookClient, WebhookRequest};
use dispatch_proto::dispatch::v1::{DeliveryTask, SigningSecret as StoredSecret, Subscription};
use hyper::Version;
use support::{PATIENCE, Receiver, Recorded, Reply};

const BODY: &[u8] = br#"{"id":"evt_123","type":"image.generation.completed","data":{"n":1}}"#;
const EVENT_ID: &str = "evt_123";
const DELIVERY_ID: &str = "dlv_456";

/// A configuration that may reach the test receivers: `http://` allowed, 127.0.0.1 allow-listed.
fn local_config() -> HttpConfig {
    HttpConfig {
        allow_http: true,
        allow_addresses: vec!["127.0.0.1".to_owned()],
        ..HttpConfig::default()
    }
}

fn client(config: &HttpConfig) -> WebhookClient {
    WebhookClient::new(config).expect("a valid client configuration")
}

fn secret(byte: u8) -> SigningSecret {
    SigningSecret::from_bytes(&[byte; 32]).expect("a valid key")
}

fn no_headers() -> HashMap<String, String> {
    HashMap::new()
}

/// The task's attempt 3 to a subscription of `url` with `headers`, signed with `secrets`, as
/// the sender builds it at the current time.
fn request_to(
    url: &str,
    headers: &HashMap<String, String>,
    secrets: &[SigningSecret],
) -> Result<WebhookRequest, RequestError> {
    let task = DeliveryTask {
        event_id: EVENT_ID.to_owned(),
        delivery_id: DELIVERY_ID.to_owned(),
        attempt: 3,
        body: BODY.to_vec(),
        ..DeliveryTask::default()
    };
    let subscription = Subscription {
        url: url.to_owned(),
        headers: headers.clone(),
        secrets: secrets
            .iter()
            .map(|secret| StoredSecret {
                secret: secret.as_str().to_owned(),
                ..StoredSecret::default()
            })
            .collect(),
        ..Subscription::default()
    };
    let signed = webhook_request(&task, &subscription, SystemTime::now())?;
    Ok(WebhookRequest {
        url: signed.url,
        headers: signed.headers,
        body: signed.body,
    })
}

async fn send_to(
    client: &WebhookClient,
    url: &str,
    headers: &HashMap<String, String>,
    secrets: &[SigningSecret],
) -> AttemptResponse {
    let request = request_to(url, headers, secrets).expect("the request is sendable");
    tokio::time::timeout(PATIENCE * 3, client.send(request))
        .await
        .expect("send finishes")
        .expect("the request is usable")
}

async fn send(client: &WebhookClient, url: &str) -> AttemptResponse {
    send_to(client, url, &no_headers(), &[secret(1)]).await
}

fn url(addr: SocketAddr, scheme: &str, host: &str) -> String {
    format!(
        "{scheme}://{host}:{}/hooks/in?source=posternity",
        addr.port()
    )
}

fn verifies(recorded: &Recorded, secret: &SigningSecret) -> bool {
    let headers = ReceivedHeaders::from_lookup(|name| {
        recorded
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    });
    verify(
        secret,
        &headers,
        &recorded.body,
        SystemTime::now(),
        DEFAULT_TOLERANCE,
    )
    .is_ok()
}

#[tokio::test]
async fn a_2xx_delivers_the_exact_body_and_signed_headers() {
    let mut receiver = Receiver::start(Reply::Status {
        status: 200,
        headers: Vec::new(),
        body: "thanks",
    })
    .await;
    let custom = HashMap::from([
        ("x-customer-token".to_owned(), "tok_abc".to_owned()),
        // A custom header may never override ours.
        ("Webhook-Id".to_owned(), "forged".to_owned()),
        ("posternity-attempt".to_owned(), "99".to_owned()),
        ("content-type".to_owned(), "text/plain".to_owned()),
    ]);
    let (current, previous, unrelated) = (secret(1), secret(2), secret(3));
    let before = dispatch_core::signing::unix_seconds(SystemTime::now());
    let response = send_to(
        &client(&local_config()),
        &url(receiver.addr, "http", "127.0.0.1"),
        &custom,
        &[current.clone(), previous.clone()],
    )
    .await;
    let after = dispatch_core::signing::unix_seconds(SystemTime::now());

    assert_eq!(
        response.result,
        AttemptResult::Response {
            status: 200,
            retry_after: None
        }
    );
    assert_eq!(response.response_excerpt, "thanks");

    let recorded = receiver.next_request().await;
    assert_eq!(recorded.method, hyper::Method::POST);
    assert_eq!(recorded.uri.path(), "/hooks/in");
    assert_eq!(recorded.uri.query(), Some("source=posternity"));
    assert_eq!(recorded.body.as_ref(), BODY);
    assert_eq!(recorded.header("content-type"), "application/json");
    assert_eq!(
        recorded.header("user-agent"),
        format!("Posternity-Webhooks/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(recorded.header("webhook-id"), EVENT_ID);
    assert_eq!(recorded.headers.get_all("webhook-id").iter().count(), 1);
    assert_eq!(recorded.header("posternity-delivery-id"), DELIVERY_ID);
    assert_eq!(recorded.header("posternity-attempt"), "3");
    assert_eq!(
        recorded
            .headers
            .get_all("posternity-attempt")
            .iter()
            .count(),
        1
    );
    assert_eq!(recorded.headers.get_all("content-type").iter().count(), 1);
    assert_eq!(recorded.header("x-customer-token"), "tok_abc");
    let timestamp: i64 = recorded
        .header("webhook-timestamp")
        .parse()
        .expect("integer seconds");
    assert!((before..=after).contains(&timestamp), "{timestamp}");

    // One signature per live secret, each verifying on its own.
    let signatures: Vec<&str> = recorded.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    assert!(verifies(&recorded, &current));
    assert!(verifies(&recorded, &previous));
    assert!(!verifies(&recorded, &unrelated));
}

#[tokio::test]
async fn retry_after_of_a_503_is_captured() {
    let receiver = Receiver::start(Reply::Status {
        status: 503,
        headers: vec![("retry-after", "7".to_owned())],
        body: "busy",
    })
    .await;
    let response = send(
        &client(&local_config()),
        &url(receiver.addr, "http", "127.0.0.1"),
    )
    .await;
    assert_eq!(
        response.result,
        AttemptResult::Response {
            status: 503,
            retry_after: Some("7".to_owned())
        }
    );
    assert_eq!(response.response_excerpt, "busy");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Receiver::start(Reply::status(200)).await;
    let redirecting = Receiver::start(Reply::Status {
        status: 302,
        headers: vec![("location", url(target.addr, "http", "127.0.0.1"))],
        body: "",
    })
    .await;
    let response = send(
        &client(&local_config()),
        &url(redirecting.addr, "http", "127.0.0.1"),
    )
    .await;
    assert_eq!(
        response.result,
        AttemptResult::Response {
            status: 302,
            retry_after: None
        }
    );
    target.assert_no_connection().await;
}

#[tokio::test]
async fn a_hanging_endpoint_times_out() {
    let mut receiver = Receiver::start(Reply::Hang).await;
    let config = HttpConfig {
        timeout_ms: 300,
        connect_timeout_ms: 300,
        ..local_config()
    };
    let response = send(&client(&config), &url(receiver.addr, "http", "127.0.0.1")).await;
    assert_eq!(response.result, AttemptResult::Timeout);
    assert_eq!(response.response_excerpt, "");
    // tokio's timeout never fires early; the upper bound is only there to catch "never".
    assert!(
        response.duration >= Duration::from_millis(300),
        "{response:?}"
    );
    assert!(response.duration < PATIENCE, "{response:?}");
    // The endpoint did get the request: the timeout is what ended it.
    receiver.next_request().await;
}

#[tokio::test]
async fn a_body_that_stalls_after_the_status_times_out() {
    let receiver = Receiver::start(Reply::StalledBody).await;
    let config = HttpConfig {
        timeout_ms: 300,
        connect_timeout_ms: 300,
        ..local_config()
    };
    let response = send(&client(&config), &url(receiver.addr, "http", "127.0.0.1")).await;
    // The timeout covers the body read too: a status alone does not end the attempt.
    assert_eq!(response.result, AttemptResult::Timeout);
    assert!(response.duration < PATIENCE, "{response:?}");
}

#[tokio::test]
async fn a_huge_body_is_read_only_up_to_the_cap() {
    let receiver = Receiver::start(Reply::Endless(256 * 1024 * 1024)).await;
    let config = HttpConfig {
        max_response_bytes: 1000,
        ..local_config()
    };
    let response = send(&client(&config), &url(receiver.addr, "http", "127.0.0.1")).await;
    assert_eq!(
        response.result,
        AttemptResult::Response {
            status: 200,
            retry_after: None
        }
    );
    assert_eq!(response.response_excerpt, "x".repeat(1000));
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    // Bind and release a port so that nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    let response = send(&client(&local_config()), &url(addr, "http", "127.0.0.1")).await;
    match &response.result {
        AttemptResult::Connect { message } => {
            assert!(message.to_lowercase().contains("refused"), "{message}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unresolvable_host_is_a_connect_error() {
    let config = HttpConfig::default();
    let response = send(&client(&config), "https://no-such-host.invalid/hooks").await;
    match &response.result {
        AttemptResult::Connect { message } => {
            assert!(
                message.starts_with("could not resolve no-such-host.invalid"),
                "{message}"
            );
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

fn https_config(pki: Option<&TestPki>) -> (HttpConfig, Option<tempfile::NamedTempFile>) {
    let ca_file = pki.map(|pki| {
        let mut file = tempfile::NamedTempFile::new().expect("temporary file");
        file.write_all(pki.ca_pem.as_bytes()).expect("write the CA");
        file
    });
    let config = HttpConfig {
        // https only: the HTTPS path must not depend on allow_http.
        allow_http: false,
        allow_addresses: vec!["127.0.0.1".to_owned()],
        extra_ca_file: ca_file.as_ref().map(|file| file.path().to_owned()),
        ..HttpConfig::default()
    };
    (config, ca_file)
}

#[tokio::test]
async fn https_works_with_the_test_ca_configured_and_negotiates_http2() {
    let pki = TestPki::new();
    let mut receiver = Receiver::start_with_tls(
        Reply::Status {
            status: 204,
            headers: Vec::new(),
            body: "",
        },
        Some(Arc::clone(&pki.server_config)),
    )
    .await;
    let (config, _ca_file) = https_config(Some(&pki));
    let response = send(&client(&config), &url(receiver.addr, "https", "localhost")).await;
    assert_eq!(
        response.result,
        AttemptResult::Response {
            status: 204,
            retry_after: None
        }
    );
    let recorded = receiver.next_request().await;
    assert_eq!(recorded.version, Version::HTTP_2, "ALPN offers h2");
    assert_eq!(recorded.body.as_ref(), BODY);
    assert!(verifies(&recorded, &secret(1)));
}

#[tokio::test]
async fn https_without_the_test_ca_is_a_tls_error() {
    let pki = TestPki::new();
    let receiver =
        Receiver::start_with_tls(Reply::status(200), Some(Arc::clone(&pki.server_config))).await;
    let (config, _) = https_config(None);
    let response = send(&client(&config), &url(receiver.addr, "https", "localhost")).await;
    match &response.result {
        AttemptResult::Tls { message } => {
            assert!(message.contains("UnknownIssuer"), "{message}");
        }
        other => panic!("expected Tls, got {other:?}"),
    }
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_a_tls_error() {
    let receiver = Receiver::start(Reply::status(200)).await;
    let (config, _) = https_config(None);
    let response = send(&client(&config), &url(receiver.addr, "https", "127.0.0.1")).await;
    assert!(
        matches!(response.result, AttemptResult::Tls { .. }),
        "{response:?}"
    );
}

#[tokio::test]
async fn a_missing_or_broken_ca_file_names_the_key() {
    let (mut config, _) = https_config(None);
    config.extra_ca_file = Some("/nonexistent/ca.pem".into());
    match WebhookClient::new(&config) {
        Err(Error::Config { key, message }) => {
            assert_eq!(key, "extra_ca_file");
            assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let mut empty = tempfile::NamedTempFile::new().expect("temporary file");
    empty.write_all(b"no certificates here\n").expect("write");
    config.extra_ca_file = Some(empty.path().to_owned());
    match WebhookClient::new(&config) {
        Err(Error::Config { key, message }) => {
            assert_eq!(key, "extra_ca_file");
            assert!(message.contains("no PEM certificate"), "{message}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_loopback_literal_is_blocked_without_a_connection() {
    let receiver = Receiver::start(Reply::status(200)).await;
    let config = HttpConfig {
        allow_http: true,
        ..HttpConfig::default()
    };
    let response = send(&client(&config), &url(receiver.addr, "http", "127.0.0.1")).await;
    assert_eq!(
        response.result,
        AttemptResult::BlockedAddress {
            message: "the endpoint address 127.0.0.1 is not allowed: loopback".to_owned()
        }
    );
    receiver.assert_no_connection().await;
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_blocked_without_a_connection() {
    let pki = TestPki::new();
    let receiver =
        Receiver::start_with_tls(Reply::status(200), Some(Arc::clone(&pki.server_config))).await;
    let (mut config, _ca_file) = https_config(Some(&pki));
    config.allow_addresses.clear();
    let response = send(&client(&config), &url(receiver.addr, "https", "localhost")).await;
    match &response.result {
        // The attempt record reaches the customer: the rule, not what the name resolved to.
        AttemptResult::BlockedAddress { message } => assert_eq!(
            message, "localhost resolves to a loopback address, which is not allowed",
            "{message}"
        ),
        other => panic!("expected BlockedAddress, got {other:?}"),
    }
    receiver.assert_no_connection().await;
}

#[tokio::test]
async fn the_connector_checks_literal_ips_itself() {
    // Beneath the URL check: a literal IP must not slip past the guard because HttpConnector
    // skips resolution for it.
    use tower_service::Service as _;

    let receiver = Receiver::start(Reply::status(200)).await;
    let mut connector = GuardedConnector::new(Arc::new(AddressGuard::default()), &local_config());
    for host in ["127.0.0.1".to_owned(), "[::ffff:127.0.0.1]".to_owned()] {
        let uri: hyper::Uri = format!("http://{host}:{}/", receiver.addr.port())
            .parse()
            .expect("valid URI");
        let error = connector.call(uri).await.expect_err("refused");
        let guard_error = error
            .downcast_ref::<ResolveError>()
            .unwrap_or_else(|| panic!("expected a guard error, got {error:?}"));
        assert!(
            matches!(guard_error, ResolveError::Blocked(_)),
            "{guard_error:?}"
        );
    }
    receiver.assert_no_connection().await;
}

#[tokio::test]
async fn http_is_refused_unless_allowed() {
    let receiver = Receiver::start(Reply::status(200)).await;
    let config = HttpConfig {
        allow_addresses: vec!["127.0.0.1".to_owned()],
        ..HttpConfig::default()
    };
    let response = send(&client(&config), &url(receiver.addr, "http", "127.0.0.1")).await;
    assert_eq!(
        response.result,
        AttemptResult::InvalidUrl {
            message: "http:// endpoints are not allowed; use https://".to_owned()
        }
    );
    receiver.assert_no_connection().await;
}

#[tokio::test]
async fn nothing_is_sent_without_a_live_secret() {
    let receiver = Receiver::start(Reply::status(200)).await;
    let target = url(receiver.addr, "http", "127.0.0.1");
    let error =
        request_to(&target, &no_headers(), &[]).expect_err("unsigned webhooks are never sent");
    assert_eq!(error, RequestError::NoSigningSecret(NoSigningSecret));
    receiver.assert_no_connection().await;
}

#[tokio::test]
async fn a_header_that_is_not_http_is_refused_without_a_connection() {
    let receiver = Receiver::start(Reply::status(200)).await;
    let target = url(receiver.addr, "http", "127.0.0.1");
    for (name, value) in [("x-token", "a\r\nx-injected: 1"), ("x token", "a")] {
        let request = WebhookRequest {
            url: target.clone(),
            headers: vec![(name.to_owned(), value.to_owned())],
            body: BODY.to_vec(),
        };
        let error = client(&local_config())
            .send(request)
            .await
            .expect_err("nothing is sent");
        assert!(
            matches!(&error, Error::InvalidHeader { name: named } if named == name),
            "{error:?}"
        );
        assert!(!error.to_string().contains("injected"), "{error}");
    }
    receiver.assert_no_connection().await;
}

#[tokio::test]
async fn a_plain_request_is_sent_as_given_with_the_client_user_agent_in_front() {
    let mut receiver = Receiver::start(Reply::status(202)).await;
    let target = url(receiver.addr, "http", "127.0.0.1");
    let headers = vec![
        ("x-first".to_owned(), "1".to_owned()),
        ("x-twice".to_owned(), "a".to_owned()),
        ("x-twice".to_owned(), "b".to_owned()),
    ];
    let request = WebhookRequest {
        url: target.clone(),
        headers: headers.clone(),
        body: b"not json".to_vec(),
    };
    let response = client(&local_config()).send(request).await.expect("sent");
    assert_eq!(
        response.result,
        AttemptResult::Response {
            status: 202,
            retry_after: None
        }
    );
    let recorded = receiver.next_request().await;
    assert_eq!(recorded.body.as_ref(), b"not json");
    let names: Vec<&str> = recorded
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| *name != "host" && *name != "content-length")
        .collect();
    assert_eq!(names, ["user-agent", "x-first", "x-twice"]);
    let twice: Vec<&[u8]> = recorded
        .headers
        .get_all("x-twice")
        .iter()
        .map(|value| value.as_bytes())
        .collect();
    assert_eq!(twice, [b"a", b"b"]);

    // A user-agent of the request replaces the client's.
    let request = WebhookRequest {
        url: target,
        headers: vec![("User-Agent".to_owned(), "custom/1".to_owned())],
        body: Vec::new(),
    };
    client(&local_config()).send(request).await.expect("sent");
    let recorded = receiver.next_request().await;
    assert_eq!(recorded.header("user-agent"), "custom/1");
    assert_eq!(recorded.headers.get_all("user-agent").iter().count(), 1);
}
