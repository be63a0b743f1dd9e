//! The whole system end to end: a real `dispatchd all` process on the real broker, driven only
//! through its admin API and `dispatchd publish`, delivering to real receivers on 127.0.0.1.
//! Subscriptions created through the API receive the published events with signatures that
//! verify; the attempts API shows them; a failing endpoint's deliveries reach the DLQ API with
//! their attempts; a bulk replay delivers them once the endpoint is back; after a secret
//! rotation every webhook carries both signatures, each verifying with its own secret; SIGTERM
//! stops the process cleanly.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use dispatch_core::signing::{self, ReceivedHeaders, SigningSecret};
use dispatch_e2e::receiver::{Received, Receiver, Script};
use dispatch_e2e::{
    KillOnDrop, bootstrap, free_port, http_get, terminate_cleanly, try_http, unique_prefix,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "e2e-token";
const ACCOUNT: &str = "acc_e2e";

/// The admin API of the process under test.
struct Api {
    port: u16,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = format!("Bearer {TOKEN}");
        let body = body.map(Value::to_string).unwrap_or_default();
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let (status, text) = try_http(self.port, method, path, &headers, body.as_bytes())
            .await
            .expect("the admin API answers");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, json)
    }

    async fn subscribe(&self, url: &str) -> (String, SigningSecret) {
        let (status, created) = self
            .call(
                "POST",
                "/v1/subscriptions",
                Some(&json!({"url": url, "event_types": ["image.**"], "description": "e2e"})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let secret = SigningSecret::parse(created["secret"].as_str().expect("secret"))
            .expect("a whsec_ secret");
        (created["id"].as_str().expect("id").to_owned(), secret)
    }

    /// GETs `path` until `done` accepts the answer or [`WAIT`] passed.
    async fn poll(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.call("GET", path, None).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never got there: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn dispatchd(config_file: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dispatchd"));
    command
        .arg("--config")
        .arg(config_file)
        .env_remove("DISPATCH_CONFIG")
        // The short schedule, the way the README's quick start sets it.
        .env("DISPATCH_RETRY_SCHEDULE", "0s,1s");
    command
}

fn publish(config_file: &std::path::Path, generation: &str) -> String {
    let event = json!({
        "type": "image.generation.started",
        "account_id": ACCOUNT,
        "data": {"generation_id": generation}
    });
    let output = dispatchd(config_file)
        .args(["publish", &event.to_string()])
        .output()
        .expect("dispatchd publish runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let published: Value = serde_json::from_slice(&output.stdout).expect("publish prints JSON");
    published["id"].as_str().expect("event id").to_owned()
}

fn verifies(request: &Received, secret: &SigningSecret) -> bool {
    let headers =
        ReceivedHeaders::from_lookup(|name| request.headers.get(name).map(String::as_str));
    signing::verify(
        secret,
        &headers,
        &request.body,
        SystemTime::now(),
        signing::DEFAULT_TOLERANCE,
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publish_deliver_fail_dead_letter_replay_rotate() {
    let prefix = unique_prefix("system");
    let dir = std::env::temp_dir().join(format!("dispatchd-system-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let config_file = dir.join("dispatchd.toml");
    let log = dir.join("all.log");
    let (api_port, metrics_port) = (free_port(), free_port());
    let mut file = std::fs::File::create(&config_file).expect("config file");
    write!(
        file,
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"
[topics]
domain_partitions = 1
delivery_partitions = 2
attempts_partitions = 1
dlq_partitions = 1
invalid_partitions = 1
allow_unsafe_durability = true
[retry]
jitter = 0.0
[fanout]
group_id = "{prefix}fanout"
transactional_id = "{prefix}fanout-1"
batch_max_ms = 20
[sender]
group_id = "{prefix}sender"
drain_timeout_ms = 3000
[sender.endpoint]
# The failing endpoint opens its circuit; a short cool-down lets the replay through in seconds.
cool_down_ms = 1000
max_cool_down_ms = 2000
[http]
timeout_ms = 5000
connect_timeout_ms = 5000
allow_http = true
allow_addresses = ["127.0.0.1/32"]
[metrics]
listen = "127.0.0.1:{metrics_port}"
[api]
listen = "127.0.0.1:{api_port}"
[[api.tokens]]
token = "{TOKEN}"
account_id = "{ACCOUNT}"
"#,
        bootstrap = bootstrap(),
    )
    .expect("write config");
    drop(file);

    let ensured = dispatchd(&config_file)
        .args(["topics", "ensure", "--strict"])
        .output()
        .expect("topics ensure runs");
    assert!(
        ensured.status.success(),
        "{}",
        String::from_utf8_lossy(&ensured.stderr)
    );
    let mut child = dispatchd(&config_file)
        .arg("all")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .map(KillOnDrop)
        .expect("dispatchd all starts");
    let (status, body) = http_get(metrics_port, "/readyz").await;
    assert_eq!(status, 200, "{body}; see {}", log.display());
    let api = Api { port: api_port };

    // Two subscriptions to one receiver: one healthy, one failing.
    let receiver = Receiver::start().await;
    receiver.script("/fail", Script::status(503));
    let (ok_id, ok_secret) = api.subscribe(&receiver.url("/ok")).await;
    let (fail_id, fail_secret) = api.subscribe(&receiver.url("/fail")).await;

    // Published events arrive signed; the attempts API shows them.
    let events: Vec<String> = (0..3)
        .map(|n| publish(&config_file, &format!("gen_{n}")))
        .collect();
    let received = receiver.wait_for("/ok", 3, WAIT).await;
    assert_eq!(received.len(), 3, "see {}", log.display());
    for request in &received {
        assert!(verifies(request, &ok_secret), "{request:?}");
        assert!(events.contains(&request.headers["webhook-id"]));
    }
    let attempts = api
        .poll(&format!("/v1/subscriptions/{ok_id}/attempts"), |body| {
            body["data"].as_array().is_some_and(|a| a.len() == 3)
        })
        .await;
    for attempt in attempts["data"].as_array().expect("list") {
        assert_eq!(attempt["outcome"], "success", "{attempt}");
        assert_eq!(attempt["status_code"], 200, "{attempt}");
    }

    // The failing endpoint: attempt 1, the immediate retry, the 1 s tier — then the DLQ.
    let dead = api
        .poll(&format!("/v1/dlq?subscription_id={fail_id}"), |body| {
            body["data"].as_array().is_some_and(|a| a.len() == 3)
        })
        .await;
    for letter in dead["data"].as_array().expect("list") {
        assert_eq!(
            letter["attempts"].as_array().map(Vec::len),
            Some(3),
            "{letter}"
        );
    }
    assert_eq!(receiver.received("/fail").len(), 9);
    let deliveries = api
        .poll(&format!("/v1/events/{}/deliveries", events[0]), |body| {
            body["data"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    let statuses: Vec<&str> = deliveries["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert!(
        statuses.contains(&"succeeded") && statuses.contains(&"dead"),
        "{deliveries}"
    );

    // The endpoint recovers; a bulk replay delivers every dead letter and empties the DLQ.
    receiver.script("/fail", Script::status(200));
    let (status, replayed) = api
        .call(
            "POST",
            "/v1/dlq/replay",
            Some(&json!({"subscription_id": fail_id})),
        )
        .await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["count"], 3, "{replayed}");
    let after = receiver.wait_for("/fail", 12, WAIT).await;
    assert_eq!(after.len(), 12);
    let mut replayed_events: Vec<&str> = after[9..]
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    replayed_events.sort_unstable();
    let mut expected: Vec<&str> = events.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(replayed_events, expected, "each dead event exactly once");
    assert!(after[9..].iter().all(|r| verifies(r, &fail_secret)));
    let (_, dlq) = api
        .call("GET", &format!("/v1/dlq?subscription_id={fail_id}"), None)
        .await;
    assert_eq!(dlq["data"].as_array().map(Vec::len), Some(0), "{dlq}");

    // Rotation: both secrets sign until the old one expires.
    let (status, rotated) = api
        .call(
            "POST",
            &format!("/v1/subscriptions/{ok_id}/secret/rotate"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret =
        SigningSecret::parse(rotated["secret"].as_str().expect("secret")).expect("whsec_");
    let rotated_event = publish(&config_file, "gen_rotated");
    let received = receiver.wait_for("/ok", 4, WAIT).await;
    let request = received
        .iter()
        .find(|r| r.headers["webhook-id"] == rotated_event)
        .expect("the event after rotation arrived");
    assert_eq!(
        request.headers["webhook-signature"].split(' ').count(),
        2,
        "{:?}",
        request.headers
    );
    assert!(verifies(request, &new_secret), "the new secret verifies");
    assert!(
        verifies(request, &ok_secret),
        "the old secret still verifies"
    );

    // One process, every role's lag on one gauge: both consumer groups and the API's readers.
    let (_, metrics) = http_get(metrics_port, "/metrics").await;
    for group in [
        format!("{prefix}fanout"),
        format!("{prefix}sender"),
        "reader:dispatch.attempts".to_owned(),
        "reader:dispatch.dlq".to_owned(),
    ] {
        let line = format!("dispatch_kafka_consumer_lag_records{{group=\"{group}\"");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }

    terminate_cleanly(&mut [&mut child], &log).await;
    let _ = std::fs::remove_dir_all(&dir);
}
