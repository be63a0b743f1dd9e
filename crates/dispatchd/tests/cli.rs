//! The `dispatchd` binary against the real broker: `topics ensure` twice, `publish` → consume →
//! the decoded event equals what was sent, and bad `publish` input produces nothing.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dispatch_core::event_input::EventInput;
use dispatch_e2e::{bootstrap, kafka_config, payload, read_topic, record_count, unique_prefix};
use dispatch_proto::events::v1::Event;
use dispatch_proto::prost::Message;
use rdkafka::Message as _;

/// `dispatchd` on the test broker under `prefix`, with few partitions per topic: every test
/// creates the whole layout, and one broker carries all of them.
fn command(prefix: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dispatchd"));
    command
        .args(args)
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            prefix,
        ])
        .env_remove("DISPATCH_CONFIG")
        .env("DISPATCH_TOPICS__DOMAIN_PARTITIONS", "2")
        .env("DISPATCH_TOPICS__DELIVERY_PARTITIONS", "2")
        .env("DISPATCH_TOPICS__ATTEMPTS_PARTITIONS", "1")
        .env("DISPATCH_TOPICS__DLQ_PARTITIONS", "1")
        .env("DISPATCH_TOPICS__INVALID_PARTITIONS", "1")
        // One local broker: replication 1 must be allowed explicitly.
        .env("DISPATCH_TOPICS__ALLOW_UNSAFE_DURABILITY", "true")
        .env("RUST_LOG", "warn");
    command
}

fn dispatchd(prefix: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = command(prefix, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dispatchd starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("dispatchd finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ensure_topics(prefix: &str) -> String {
    let output = dispatchd(prefix, &["topics", "ensure", "--strict"], None);
    assert!(
        output.status.success(),
        "topics ensure failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[test]
fn topics_ensure_twice_creates_once_then_changes_nothing() {
    let prefix = unique_prefix("cli-ensure");
    let first = ensure_topics(&prefix);
    assert!(
        first.contains("14 topics: 14 created, 0 already existed, 0 drifted settings"),
        "{first}"
    );
    assert!(
        first.contains(&format!("created  {prefix}dispatch.retry.15m")),
        "{first}"
    );
    let second = ensure_topics(&prefix);
    assert!(
        second.contains("14 topics: 0 created, 14 already existed, 0 drifted settings"),
        "{second}"
    );
}

#[test]
fn topics_ensure_refuses_unsafe_durability_unless_allowed_and_says_how() {
    let prefix = unique_prefix("cli-durability");
    let output = command(&prefix, &["topics", "ensure"])
        .env_remove("DISPATCH_TOPICS__ALLOW_UNSAFE_DURABILITY")
        .output()
        .expect("dispatchd runs");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "topics.replication_factor is 1, below 3",
        "topics.min_insync_replicas is not set",
        "`replication_factor = 3` and `min_insync_replicas = 2` under [topics]",
        "`allow_unsafe_durability = true` under [topics]",
        "DISPATCH_TOPICS__ALLOW_UNSAFE_DURABILITY=true",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from {stderr}"
        );
    }
    assert_eq!(text(&output.stdout), "", "nothing was created");
    let admin = dispatch_kafka::admin::TopicAdmin::new(&kafka_config(&prefix)).expect("admin");
    let shapes = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(admin.topic_shapes())
        .expect("cluster metadata");
    assert!(
        !shapes.keys().any(|topic| topic.starts_with(&prefix)),
        "a refused ensure created topics: {:?}",
        shapes
            .keys()
            .filter(|topic| topic.starts_with(&prefix))
            .collect::<Vec<_>>()
    );
    // Allowed explicitly, the same settings create the topics.
    let allowed = ensure_topics(&prefix);
    assert!(allowed.contains("14 created"), "{allowed}");
}

#[test]
fn topics_ensure_strict_fails_on_drift() {
    let prefix = unique_prefix("cli-drift");
    ensure_topics(&prefix);
    // The same topics checked against a spec with more delivery partitions: drift.
    let output = command(&prefix, &["topics", "ensure", "--strict"])
        .env("DISPATCH_TOPICS__DELIVERY_PARTITIONS", "3")
        .env("RUST_LOG", "error")
        .output()
        .expect("dispatchd runs");
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "DRIFT    {prefix}dispatch.deliveries: partitions is 2 but the spec says 3"
        )),
        "{stdout}"
    );
}

#[test]
fn published_event_is_consumed_exactly_as_sent() {
    let prefix = unique_prefix("cli-publish");
    ensure_topics(&prefix);
    let json = r#"{"type":"map.region.progress","account_id":"acc_demo","region":"eu-central",
        "occurred_at":"2026-11-26T22:00:00.250Z","attributes":{"client_id":"cli_acme"},
        "data":{"job_id":"mrj_4","region_code":"DE-BY","progress":{"sequence":"7","completed":40,"total":120}}}"#;
    let output = dispatchd(&prefix, &["publish", "-f", "-"], Some(json));
    assert!(
        output.status.success(),
        "publish failed: {}",
        text(&output.stderr)
    );
    let receipt: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON receipt on stdout");
    let topic = format!("{prefix}posternity.events.map");
    assert_eq!(receipt["topic"], topic.as_str());
    let event_id = receipt["id"].as_str().expect("id").to_owned();

    let config = kafka_config(&prefix);
    let records = read_topic(&config, &topic, 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key(), Some(&b"acc_demo"[..]), "keyed by account");
    assert_eq!(
        i64::from(record.partition()),
        receipt["partition"].as_i64().expect("partition")
    );
    let consumed = Event::decode(payload(record)).expect("an Event");

    let mut expected = EventInput::parse(json)
        .expect("valid input")
        .into_event(std::time::SystemTime::now(), &mut rand::rng())
        .expect("valid event")
        .event;
    expected.id = event_id;
    assert_eq!(consumed, expected);
}

#[test]
fn bad_publish_input_is_refused_and_nothing_is_produced() {
    let prefix = unique_prefix("cli-bad");
    ensure_topics(&prefix);
    let good = r#"{"type":"image.generation.started","account_id":"acc_demo","data":{"generation_id":"gen_1"}}"#;
    let cases = [
        (
            format!(r#"[{good},{{"type":"image.exploded","account_id":"a","data":{{}}}}]"#),
            "event #2: field `type`: unknown event type \"image.exploded\"",
        ),
        (
            format!(
                "{good}\n{{\"type\":\"image.generation.started\",\"account_id\":\"a\",\"data\":{{\"colour\":1}}}}"
            ),
            "line 2: field `data`",
        ),
        (
            format!("{good}\n{{\"type\": "),
            "line 2: malformed event JSON",
        ),
        (
            "{\"type\":\"image.generation.started\",\"data\":{}}".to_owned(),
            "missing field `account_id`",
        ),
    ];
    for (input, expected_error) in cases {
        let output = dispatchd(&prefix, &["publish"], Some(&input));
        assert_eq!(output.status.code(), Some(2), "{input}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected_error), "{input}\n{stderr}");
        assert!(stderr.contains("nothing was published"), "{stderr}");
        assert!(output.stdout.is_empty());
    }
    let config = kafka_config(&prefix);
    assert_eq!(
        record_count(&config, &format!("{prefix}posternity.events.image")),
        0
    );
}

#[test]
fn invalid_configuration_fails_before_any_io_naming_the_key() {
    // An unreachable broker: the error must come from validation, not from a connection.
    let output = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["topics", "ensure", "--bootstrap-servers", "127.0.0.1:1"])
        .env("DISPATCH_RETRY__JITTER", "1.5")
        .output()
        .expect("dispatchd runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("jitter"), "{stderr}");
}
