//! Crash safety of the sender: with thousands of deliveries flowing to a real receiver, `kill -9`
//! a real `dispatchd sender`, restart it and let a second sender join mid-load: every delivery
//! reaches the receiver at least once; duplicates are counted and bounded by the window of
//! uncommitted records. The surviving process serves `/readyz` and the sender's metrics, and
//! exits 0 on SIGTERM.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dispatch_core::signing::SigningSecret;
use dispatch_core::timestamp;
use dispatch_e2e::receiver::{Receiver, Script};
use dispatch_e2e::{
    bootstrap, free_port, http_get, kafka_config, spawn_role, terminate_cleanly, unique_prefix,
};
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_proto::dispatch::v1::{DeliveryTask, SigningSecret as SecretRecord, Subscription};
use dispatch_proto::prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// The binary under test.
const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

const SUBSCRIPTIONS: usize = 5;
const PER_SUBSCRIPTION: usize = 400;
const PARTITIONS: i32 = 3;
const WINDOW: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_restart_and_scale_out_lose_no_delivery() {
    let prefix = unique_prefix("sender-crash");
    let config = kafka_config(&prefix);
    let names = TopicNames::new(&prefix);
    let settings = TopicSettings {
        domain_partitions: 1,
        delivery_partitions: PARTITIONS,
        attempts_partitions: 1,
        dlq_partitions: 1,
        invalid_partitions: 1,
        ..TopicSettings::default()
    };
    TopicAdmin::new(&config)
        .expect("admin")
        .ensure_topics(&topic_specs(&names, &settings, &["1s".to_owned()]))
        .await
        .expect("topics");

    let receiver = Receiver::start().await;
    let writer = SubscriptionWriter::new(&config).expect("writer");
    for index in 0..SUBSCRIPTIONS {
        let path = format!("/s{index}");
        // A little latency so attempts are in flight when the process dies.
        receiver.script(
            &path,
            Script::Respond {
                status: 200,
                headers: Vec::new(),
                delay: Duration::from_millis(5),
            },
        );
        writer
            .put(&Subscription {
                id: format!("sub_{index}"),
                account_id: "acc_crash".into(),
                url: receiver.url(&path),
                event_types: vec!["**".into()],
                secrets: vec![SecretRecord {
                    secret: SigningSecret::generate(&mut rand::rng())
                        .as_str()
                        .to_owned(),
                    created_at: None,
                    expires_at: None,
                }],
                enabled: true,
                version: 1,
                ..Subscription::default()
            })
            .await
            .expect("subscription");
    }

    let dir = std::env::temp_dir().join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_file = dir.join("dispatchd.toml");
    let log = dir.join("sender.log");
    let mut file = std::fs::File::create(&config_file).expect("config file");
    write!(
        file,
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"
[kafka.librdkafka]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[retry]
delays = ["0s", "1s"]
jitter = 0.0
[sender]
group_id = "{prefix}sender"
max_uncommitted_per_partition = {WINDOW}
drain_timeout_ms = 3000
[http]
timeout_ms = 5000
connect_timeout_ms = 5000
allow_http = true
allow_addresses = ["127.0.0.1/32"]
[metrics]
listen = "127.0.0.1:0"
"#,
        bootstrap = bootstrap(),
    )
    .expect("write config");
    drop(file);

    // Every delivery task, produced up front.
    let producer: FutureProducer = config.reliable_producer().expect("producer");
    let producer = Arc::new(producer);
    let mut expected = Vec::new();
    let mut sends = Vec::new();
    for index in 0..SUBSCRIPTIONS * PER_SUBSCRIPTION {
        let subscription_id = format!("sub_{}", index % SUBSCRIPTIONS);
        let task = DeliveryTask {
            delivery_id: format!("dlv_{index:05}"),
            event_id: format!("evt_{index:05}"),
            event_type: "webhook.test".into(),
            subscription_id: subscription_id.clone(),
            account_id: "acc_crash".into(),
            attempt: 1,
            body: format!("{{\"n\":{index}}}").into_bytes(),
            occurred_at: Some(timestamp::from_system_time(SystemTime::now())),
            ..DeliveryTask::default()
        };
        expected.push(task.event_id.clone());
        let producer = Arc::clone(&producer);
        let topic = names.deliveries();
        sends.push(tokio::spawn(async move {
            let value = task.encode_to_vec();
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&subscription_id)
                        .payload(&value),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
                .expect("produce a task");
        }));
    }
    for send in sends {
        send.await.expect("produced");
    }

    let received_ids = |receiver: &Receiver| -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for index in 0..SUBSCRIPTIONS {
            for request in receiver.received(&format!("/s{index}")) {
                *counts
                    .entry(request.headers["webhook-id"].clone())
                    .or_insert(0) += 1;
            }
        }
        counts
    };

    // Kill the first sender hard once a good part has arrived.
    let mut first = spawn_role(DISPATCHD, "sender", &config_file, &log, free_port());
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while received_ids(&receiver).len() < expected.len() / 4 {
        assert!(
            Instant::now() < deadline,
            "the sender never got going; see {}",
            log.display()
        );
        assert!(
            first.try_wait().expect("status").is_none(),
            "sender exited early; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    let at_kill = received_ids(&receiver).len();
    let rate_per_second = at_kill as f64 / started.elapsed().as_secs_f64();
    assert!(
        at_kill < expected.len(),
        "the sender finished before it was killed; the test proves nothing"
    );

    // Restart it, and let a second sender join while the rest flows.
    let mut restarted = spawn_role(DISPATCHD, "sender", &config_file, &log, free_port());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second_metrics = free_port();
    let mut second = spawn_role(DISPATCHD, "sender", &config_file, &log, second_metrics);

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let received = received_ids(&receiver);
        if expected.iter().all(|id| received.contains_key(id)) {
            break;
        }
        let missing = expected
            .iter()
            .filter(|id| !received.contains_key(*id))
            .count();
        assert!(
            Instant::now() < deadline,
            "{missing} deliveries never arrived; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The process that joined mid-load is ready and its metrics moved. Lag comes from
    // librdkafka's statistics, emitted once per statistics interval: a fast run can get here
    // before the first one, so the metrics are read until every line is there (or 30 s).
    let (status, body) = http_get(second_metrics, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let wanted = [
        "dispatch_sender_attempts_total{outcome=\"success\"}",
        "dispatch_sender_attempt_duration_seconds_count",
        "dispatch_sender_event_to_delivery_seconds_count",
        "dispatch_sender_in_flight_requests",
        "dispatch_view_subscriptions 5",
        "dispatch_kafka_consumer_lag_records{group=",
    ];
    let metrics_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, metrics) = http_get(second_metrics, "/metrics").await;
        assert_eq!(status, 200);
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|line| !metrics.contains(line))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < metrics_deadline,
            "{missing:?} missing from:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // SIGTERM: the survivors drain, commit and exit 0.
    terminate_cleanly(&mut [&mut restarted, &mut second], &log).await;

    let received = received_ids(&receiver);
    let duplicates: usize = received.values().map(|count| count - 1).sum();
    eprintln!(
        "sender crash: {} deliveries, {} received before the kill, lost 0, duplicates {duplicates}",
        expected.len(),
        at_kill
    );
    // Redone after the crash: what was taken since the last commit — each partition's window,
    // the requests in flight (5 endpoints × 8) and what finished within one auto-commit
    // interval (1 s) — once for the kill and once for the scale-out's rebalance.
    let per_event =
        PARTITIONS as usize * WINDOW + SUBSCRIPTIONS * 8 + rate_per_second.ceil() as usize;
    let bound = 2 * per_event;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than the bound {bound}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
