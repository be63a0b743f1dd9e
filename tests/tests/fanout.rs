//! The fan-out against the real broker: matching by type pattern, attribute filter and account;
//! disabled and deleted subscriptions get nothing; a subscription created after the view caught
//! up starts receiving; bad input is quarantined with its reason and nothing stalls; an event
//! whose task is too large for its topic is quarantined as `too_large` and the partition flows
//! on; a rewind that fails after an aborted transaction never lets a commit step over records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use dispatch_core::{catalog, ids, render};
use dispatch_e2e::{
    group_committed_total, kafka_config, payload, read_expecting, read_topic, unique_prefix,
};
use dispatch_fanout::fanout::InjectedFaults;
use dispatch_fanout::{Fanout, FanoutConfig};
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_proto::dispatch::v1::{AttributeValues, DeliveryTask, Subscription};
use dispatch_proto::events::v1::Event;
use dispatch_proto::prost::Message as _;
use dispatch_proto::wkt::Timestamp;
use rdkafka::Message as _;
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::{CancellationToken, DropGuard};

const WAIT: Duration = Duration::from_secs(30);

async fn create_topics(config: &KafkaConfig) {
    let settings = TopicSettings {
        domain_partitions: 2,
        delivery_partitions: 2,
        attempts_partitions: 1,
        dlq_partitions: 1,
        invalid_partitions: 1,
        ..TopicSettings::default()
    };
    let specs = topic_specs(
        &TopicNames::new(&config.topic_prefix),
        &settings,
        &["1m".to_owned()],
    );
    TopicAdmin::new(config)
        .expect("admin")
        .ensure_topics(&specs)
        .await
        .expect("topics");
}

fn subscription(
    id: &str,
    account: &str,
    patterns: &[&str],
    filter: &[(&str, &[&str])],
) -> Subscription {
    Subscription {
        id: id.to_owned(),
        account_id: account.to_owned(),
        url: format!("https://hooks.example/{id}"),
        event_types: patterns.iter().map(|p| (*p).to_owned()).collect(),
        filter: filter
            .iter()
            .map(|(key, values)| {
                (
                    (*key).to_owned(),
                    AttributeValues {
                        values: values.iter().map(|v| (*v).to_owned()).collect(),
                    },
                )
            })
            .collect(),
        enabled: true,
        version: 1,
        ..Subscription::default()
    }
}

fn event(id: &str, event_type: &str, account: &str, client: &str) -> Event {
    Event {
        id: id.to_owned(),
        r#type: event_type.to_owned(),
        account_id: account.to_owned(),
        occurred_at: Some(Timestamp {
            seconds: 1_795_730_400,
            nanos: 5_000_000,
        }),
        region: "eu-west".to_owned(),
        attributes: [("client_id".to_owned(), client.to_owned())].into(),
        payload: Some(
            catalog::lookup(event_type)
                .expect("known type")
                .example_payload()
                .expect("example"),
        ),
    }
}

/// A running fan-out and the way to stop it (dropped, it stops the fan-out too).
struct RunningFanout {
    stop: Option<DropGuard>,
    task: tokio::task::JoinHandle<dispatch_fanout::Result<()>>,
}

impl RunningFanout {
    async fn start(config: &KafkaConfig, view: Arc<SubscriptionView>) -> Self {
        Self::start_with(config, view, 1000, Arc::default()).await
    }

    /// A fan-out committing at most `batch_max_records` per transaction, meeting `faults`.
    async fn start_with(
        config: &KafkaConfig,
        view: Arc<SubscriptionView>,
        batch_max_records: usize,
        faults: Arc<InjectedFaults>,
    ) -> Self {
        let kafka = config.clone();
        let fanout_config = FanoutConfig {
            group_id: format!("{}fanout", config.topic_prefix),
            transactional_id: Some(format!("{}fanout-1", config.topic_prefix)),
            batch_max_ms: 20,
            batch_max_records,
            ..FanoutConfig::default()
        };
        let mut fanout = tokio::task::spawn_blocking(move || {
            Fanout::build(&kafka, fanout_config, Vec::<String>::new(), view)
        })
        .await
        .expect("build thread")
        .expect("fan-out builds");
        fanout.inject_faults(faults);
        let stop = CancellationToken::new();
        let task = tokio::spawn(fanout.run(stop.clone()));
        RunningFanout {
            stop: Some(stop.drop_guard()),
            task,
        }
    }

    async fn stop(mut self) {
        // Dropping the guard cancels the token.
        drop(self.stop.take());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("fan-out stops in time")
            .expect("fan-out task")
            .expect("fan-out ends cleanly");
    }
}

/// Produces a record as is and returns where it landed.
async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: Option<&[u8]>,
) -> (i32, i64) {
    let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
    if let Some(value) = value {
        record = record.payload(value);
    }
    let delivery = producer
        .send(record, Timeout::After(WAIT))
        .await
        .expect("produce");
    (delivery.partition, delivery.offset)
}

/// Every delivery task, by event. Waits up to `timeout` for `expected` tasks, then gives extra
/// ones a few seconds to show up: the callers assert on the exact count.
fn tasks_by_event(
    config: &KafkaConfig,
    expected: usize,
    timeout: Duration,
) -> BTreeMap<String, Vec<DeliveryTask>> {
    let topic = TopicNames::new(&config.topic_prefix).deliveries();
    let records = read_expecting(config, &topic, expected, timeout, Duration::from_secs(3));
    let mut by_event: BTreeMap<String, Vec<DeliveryTask>> = BTreeMap::new();
    for record in records {
        let task = DeliveryTask::decode(payload(&record)).expect("a DeliveryTask");
        assert_eq!(
            record.key(),
            Some(task.subscription_id.as_bytes()),
            "keyed by subscription"
        );
        by_event
            .entry(task.event_id.clone())
            .or_default()
            .push(task);
    }
    for tasks in by_event.values_mut() {
        tasks.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
    }
    by_event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_reaches_exactly_the_matching_subscriptions() {
    let prefix = unique_prefix("fanout-match");
    let config = kafka_config(&prefix);
    create_topics(&config).await;
    let writer = SubscriptionWriter::new(&config).expect("writer");

    // Five live candidates for an image.generation.completed event of acc_1 / cli_acme:
    let by_pattern = subscription("sub_a", "acc_1", &["image.*.completed"], &[]);
    let by_filter = subscription(
        "sub_b",
        "acc_1",
        &["image.generation.completed"],
        &[("client_id", &["cli_acme", "cli_x"])],
    );
    let everything = subscription("sub_c", "acc_1", &["**"], &[]);
    let other_account = subscription("sub_d", "acc_2", &["image.**"], &[]);
    let other_client = subscription(
        "sub_e",
        "acc_1",
        &["image.*"],
        &[("client_id", &["cli_other"])],
    );
    // ... and two that must get nothing although their patterns match:
    let mut disabled = subscription("sub_f", "acc_1", &["**"], &[]);
    disabled.enabled = false;
    let deleted = subscription("sub_g", "acc_1", &["**"], &[]);
    for subscription in [
        &by_pattern,
        &by_filter,
        &everything,
        &other_account,
        &other_client,
        &disabled,
        &deleted,
    ] {
        writer.put(subscription).await.expect("write subscription");
    }
    writer.delete("sub_g").await.expect("delete subscription");

    let view = Arc::new(SubscriptionView::start(&config).expect("view"));
    view.wait_caught_up(WAIT).await.expect("view catches up");
    let fanout = RunningFanout::start(&config, Arc::clone(&view)).await;

    let publisher = dispatch_kafka::publish::EventPublisher::new(&config).expect("publisher");
    let first = event(
        "evt_first",
        "image.generation.completed",
        "acc_1",
        "cli_acme",
    );
    publisher
        .publish(&dispatch_core::event_input::PublishableEvent {
            event: first.clone(),
            family: catalog::Family::Image,
        })
        .await
        .expect("publish");

    let by_event = tasks_by_event(&config, 3, Duration::from_secs(15));
    assert_eq!(by_event.len(), 1);
    let tasks = &by_event["evt_first"];
    let subscribers: Vec<_> = tasks.iter().map(|t| t.subscription_id.as_str()).collect();
    assert_eq!(subscribers, ["sub_a", "sub_b", "sub_c"]);
    let body = render::render(&first).expect("renders");
    for task in tasks {
        assert_eq!(
            task.delivery_id,
            ids::delivery_id("evt_first", &task.subscription_id)
        );
        assert_eq!(task.body, body);
        assert_eq!(task.attempt, 1);
        assert_eq!(task.account_id, "acc_1");
        assert_eq!(task.event_type, "image.generation.completed");
        assert_eq!(task.occurred_at, first.occurred_at);
    }

    // A subscription created now, with the view running, receives the next event.
    let late = subscription("sub_h", "acc_1", &["image.generation.*"], &[]);
    let offset = writer.put(&late).await.expect("write late subscription");
    view.wait_for_offset(offset, WAIT)
        .await
        .expect("view applied it");
    let second = event(
        "evt_second",
        "image.generation.completed",
        "acc_1",
        "cli_nobody",
    );
    publisher
        .publish(&dispatch_core::event_input::PublishableEvent {
            event: second,
            family: catalog::Family::Image,
        })
        .await
        .expect("publish");
    let by_event = tasks_by_event(&config, 6, Duration::from_secs(15));
    assert_eq!(by_event.len(), 2);
    let subscribers: Vec<_> = by_event["evt_second"]
        .iter()
        .map(|t| t.subscription_id.as_str())
        .collect();
    assert_eq!(subscribers, ["sub_a", "sub_c", "sub_h"]);
    assert_eq!(by_event.values().map(Vec::len).sum::<usize>(), 6);

    fanout.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_quarantined_with_its_reason_and_the_rest_flows() {
    let prefix = unique_prefix("fanout-bad");
    let config = kafka_config(&prefix);
    create_topics(&config).await;
    let names = TopicNames::new(&prefix);
    SubscriptionWriter::new(&config)
        .expect("writer")
        .put(&subscription("sub_all", "acc_1", &["**"], &[]))
        .await
        .expect("subscription");
    let view = Arc::new(SubscriptionView::start(&config).expect("view"));
    view.wait_caught_up(WAIT).await.expect("view catches up");
    let fanout = RunningFanout::start(&config, Arc::clone(&view)).await;

    let producer: FutureProducer = config.client_config().create().expect("producer");
    let topic = names.domain(catalog::Family::Studio).expect("studio topic");
    let valid = |id: &str| event(id, "studio.batch.progress", "acc_1", "cli_acme");
    let mut unknown_type = valid("evt_unknown");
    unknown_type.r#type = "studio.exploded".into();
    let mut mismatch = valid("evt_mismatch");
    mismatch.r#type = "studio.campaign.completed".into();
    let mut no_id = valid("");
    no_id.id.clear();
    let mut no_account = valid("evt_no_account");
    no_account.account_id.clear();
    let test_event = event("evt_test", "webhook.test", "acc_1", "cli_acme");
    let garbage: Vec<(Option<Vec<u8>>, &str)> = vec![
        (None, "undecodable"),
        (
            Some(b"\x08\x96\x01\xff\xff\xff\xff".to_vec()),
            "undecodable",
        ),
        (Some(unknown_type.encode_to_vec()), "unknown_type"),
        (Some(mismatch.encode_to_vec()), "payload_mismatch"),
        (Some(no_id.encode_to_vec()), "missing_id"),
        (Some(no_account.encode_to_vec()), "missing_account"),
        (Some(test_event.encode_to_vec()), "not_publishable"),
    ];
    // Valid events before and after the garbage, on the same partition (same key): the second
    // one is delivered only if the garbage did not stall the partition.
    produce_raw(
        &producer,
        &topic,
        "acc_1",
        Some(&valid("evt_v1").encode_to_vec()),
    )
    .await;
    let mut positions = Vec::new();
    for (value, _) in &garbage {
        positions.push(produce_raw(&producer, &topic, "acc_1", value.as_deref()).await);
    }
    produce_raw(
        &producer,
        &topic,
        "acc_1",
        Some(&valid("evt_v2").encode_to_vec()),
    )
    .await;

    let by_event = tasks_by_event(&config, 2, Duration::from_secs(20));
    assert_eq!(by_event.keys().collect::<Vec<_>>(), ["evt_v1", "evt_v2"]);

    let invalid = read_topic(
        &config,
        &names.invalid(),
        garbage.len() + 1,
        Duration::from_secs(10),
    );
    assert_eq!(
        invalid.len(),
        garbage.len(),
        "every bad record, nothing else"
    );
    for ((record, (value, reason)), (partition, offset)) in
        invalid.iter().zip(&garbage).zip(&positions)
    {
        let headers = record.headers().expect("error headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("header {name} missing"))
        };
        assert_eq!(header("dispatch-error-reason"), *reason);
        assert!(!header("dispatch-error").is_empty());
        assert_eq!(header("dispatch-source-topic"), topic);
        assert_eq!(header("dispatch-source-partition"), partition.to_string());
        assert_eq!(header("dispatch-source-offset"), offset.to_string());
        assert_eq!(
            record.payload().map(<[u8]>::to_vec),
            value.clone(),
            "original bytes kept"
        );
        assert_eq!(record.key(), Some(&b"acc_1"[..]), "original key kept");
    }
    fanout.stop().await;
}

/// The header `name` of a record, as text.
fn header(record: &rdkafka::message::OwnedMessage, name: &str) -> String {
    record
        .headers()
        .and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .unwrap_or_else(|| panic!("header {name} missing"))
}

/// The user-visible failure of issue 12: one event whose webhook body renders to ~1.2 MB (a
/// 600,000-newline string field, each newline escaped to 2 bytes in JSON) made the fan-out abort
/// and re-read its batch forever, and none of the 200 events after it was fanned out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_to_fan_out_is_quarantined_and_the_partition_flows_on() {
    const BEFORE: usize = 20;
    const AFTER: usize = 200;
    let prefix = unique_prefix("fanout-poison");
    let config = kafka_config(&prefix);
    create_topics(&config).await;
    let names = TopicNames::new(&prefix);
    SubscriptionWriter::new(&config)
        .expect("writer")
        .put(&subscription("sub_all", "acc_1", &["**"], &[]))
        .await
        .expect("subscription");
    let view = Arc::new(SubscriptionView::start(&config).expect("view"));
    view.wait_caught_up(WAIT).await.expect("view catches up");
    let fanout = RunningFanout::start(&config, Arc::clone(&view)).await;

    let event_type = "image.generation.completed";
    let kind = catalog::lookup(event_type).expect("known type");
    let mut poison = event("evt_poison", event_type, "acc_1", "cli_acme");
    poison.payload = Some(
        kind.payload
            .payload_from_json(serde_json::json!({
                "generation_id": "gen_1",
                "project_id": "prj_1",
                "model": "\n".repeat(600_000),
                "images": [],
                "duration_ms": "1"
            }))
            .expect("payload"),
    );
    let body = render::render(&poison).expect("the poison event is valid");
    assert!(body.len() > 1_200_000, "renders to {} bytes", body.len());

    let producer: FutureProducer = config
        .client_config()
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer");
    let topic = names.domain(catalog::Family::Image).expect("image topic");
    let normal = |index: usize| event(&format!("evt_{index:03}"), event_type, "acc_1", "cli_acme");
    // One key: one partition, in this order.
    for index in 0..BEFORE {
        produce_raw(
            &producer,
            &topic,
            "acc_1",
            Some(&normal(index).encode_to_vec()),
        )
        .await;
    }
    let poison_bytes = poison.encode_to_vec();
    let (poison_partition, poison_offset) =
        produce_raw(&producer, &topic, "acc_1", Some(&poison_bytes)).await;
    for index in BEFORE..BEFORE + AFTER {
        produce_raw(
            &producer,
            &topic,
            "acc_1",
            Some(&normal(index).encode_to_vec()),
        )
        .await;
    }

    let by_event = tasks_by_event(&config, BEFORE + AFTER, Duration::from_secs(60));
    assert!(!by_event.contains_key("evt_poison"));
    assert_eq!(
        by_event.len(),
        BEFORE + AFTER,
        "every normal event, before and after the poison one, is fanned out"
    );
    assert!(
        by_event.values().all(|tasks| tasks.len() == 1),
        "exactly once"
    );

    let invalid = read_expecting(
        &config,
        &names.invalid(),
        1,
        Duration::from_secs(20),
        Duration::from_secs(2),
    );
    assert_eq!(invalid.len(), 1, "the poison event, nothing else");
    let record = &invalid[0];
    assert_eq!(header(record, "dispatch-error-reason"), "too_large");
    let error = header(record, "dispatch-error");
    assert!(
        error.contains("bytes") && error.contains("max.message.bytes"),
        "names the size and the limit: {error}"
    );
    assert_eq!(header(record, "dispatch-source-topic"), topic);
    assert_eq!(
        header(record, "dispatch-source-partition"),
        poison_partition.to_string()
    );
    assert_eq!(
        header(record, "dispatch-source-offset"),
        poison_offset.to_string()
    );
    assert_eq!(
        record.payload(),
        Some(&poison_bytes[..]),
        "the original event, whole (it fits the invalid topic)"
    );
    fanout.stop().await;
}

/// Forced through the test seam: a transaction aborts, then the rewind's seek fails. Consuming
/// on from the consumer's position would let the next commit step over the aborted batch's
/// records; they must all still be fanned out, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rewind_never_lets_a_commit_step_over_the_aborted_records() {
    let faults = InjectedFaults::default();
    faults.aborted_transactions.store(1, SeqCst);
    faults.failed_seeks.store(1_000, SeqCst);
    let faults = fan_out_exactly_once_despite("fanout-seek", faults).await;
    assert_eq!(
        faults.aborted_transactions.load(SeqCst),
        0,
        "the seam aborted a transaction"
    );
    assert!(
        faults.failed_seeks.load(SeqCst) < 1_000,
        "the seam failed the rewind"
    );
}

/// Forced through the test seam: a transaction's commit stays retriable past
/// `fanout.transaction_retry_max_ms`, its tasks produced and its offsets not sent — a producer
/// that only a new one replaces (found for real in the broker-loss scenario as a fatal sequence
/// desynchronisation). The fan-out replaces its producer and consumer in-process instead of
/// exiting: the new producer aborts the open transaction, the new consumer re-reads the batch,
/// and every task exists exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_failed_for_good_is_replaced_and_nothing_is_doubled() {
    let faults = InjectedFaults::default();
    faults.stuck_transactions.store(1, SeqCst);
    let faults = fan_out_exactly_once_despite("fanout-stuck", faults).await;
    assert_eq!(
        faults.stuck_transactions.load(SeqCst),
        0,
        "the seam failed a transaction"
    );
}

/// Forced through the test seam: a `send_offsets_to_transaction` call never returns, as
/// librdkafka 2.12 leaves it after a stalled broker resumed (librdkafka#5301; seen in a thread
/// dump of the broker-pause test). The call's deadline gives up on it, the fan-out replaces its
/// producer (fencing the hung one, aborting its transaction) and consumer, and every task
/// exists exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_call_that_never_returns_is_abandoned_and_nothing_is_doubled() {
    let faults = InjectedFaults::default();
    faults.hung_calls.store(1, SeqCst);
    let faults = fan_out_exactly_once_despite("fanout-hung", faults).await;
    assert_eq!(faults.hung_calls.load(SeqCst), 0, "the seam hung a call");
}

/// Publishes 40 events into one partition, runs a fan-out (batches of 10) that meets `faults`,
/// and asserts that every event's task exists exactly once (`read_committed`), the offsets are
/// committed to the end and the fan-out is still running. Returns the faults, to check which
/// were met.
async fn fan_out_exactly_once_despite(name: &str, faults: InjectedFaults) -> Arc<InjectedFaults> {
    const EVENTS: usize = 40;
    let prefix = unique_prefix(name);
    let config = kafka_config(&prefix);
    create_topics(&config).await;
    let names = TopicNames::new(&prefix);
    SubscriptionWriter::new(&config)
        .expect("writer")
        .put(&subscription("sub_all", "acc_1", &["**"], &[]))
        .await
        .expect("subscription");
    let view = Arc::new(SubscriptionView::start(&config).expect("view"));
    view.wait_caught_up(WAIT).await.expect("view catches up");

    // The events wait in one partition before the fan-out starts: its first transaction holds
    // the first 10, and more follow it in the partition.
    let producer: FutureProducer = config.client_config().create().expect("producer");
    let topic = names.domain(catalog::Family::Studio).expect("studio topic");
    for index in 0..EVENTS {
        let event = event(
            &format!("evt_{index:03}"),
            "studio.batch.progress",
            "acc_1",
            "cli_acme",
        );
        produce_raw(&producer, &topic, "acc_1", Some(&event.encode_to_vec())).await;
    }

    let faults = Arc::new(faults);
    let fanout =
        RunningFanout::start_with(&config, Arc::clone(&view), 10, Arc::clone(&faults)).await;
    let by_event = tasks_by_event(&config, EVENTS, Duration::from_secs(60));
    let missing: Vec<String> = (0..EVENTS)
        .map(|index| format!("evt_{index:03}"))
        .filter(|id| !by_event.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "committed past records that were never fanned out: {missing:?}"
    );
    assert!(
        by_event.values().all(|tasks| tasks.len() == 1),
        "exactly once"
    );
    assert_eq!(by_event.len(), EVENTS);
    let group = format!("{prefix}fanout");
    let deadline = std::time::Instant::now() + WAIT;
    while group_committed_total(&config, &group, &topic) < EVENTS as i64 {
        assert!(
            std::time::Instant::now() < deadline,
            "offsets not committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !fanout.task.is_finished(),
        "the fan-out went on, it did not exit"
    );
    fanout.stop().await;
    faults
}
