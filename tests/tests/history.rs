//! The admin API's read models against the real broker: a `TopicFold` over `dispatch.attempts`
//! catches up with records on every partition and follows new ones (read-your-writes through
//! `wait_for`), starts at a time when asked to, and survives records it cannot decode; the
//! `TaskProducer` writes tasks keyed as the fan-out does and tombstones that remove dead letters
//! from a `DeadLetterFold`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_core::dead_letters::{DeadLetterFilter, DeadLetterTable};
use dispatch_core::delivery;
use dispatch_core::history::{DeliveryHistory, DeliveryState};
use dispatch_core::timestamp;
use dispatch_e2e::{kafka_config, read_topic, unique_prefix};
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::task_producer::TaskProducer;
use dispatch_kafka::topic_fold::{AttemptFold, DeadLetterFold, StartAt, TopicFold};
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_kafka::{Error, KafkaConfig};
use dispatch_proto::dispatch::v1::next_action::{Action, Dead, Done, Retry};
use dispatch_proto::dispatch::v1::{
    AttemptOutcome, AttemptRecord, DeadLetter, DeliveryTask, NextAction, Subscription,
};
use dispatch_proto::prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Upper bound of every wait; a healthy local broker needs well under a second.
const WAIT: Duration = Duration::from_secs(30);
/// Partitions of the attempts and DLQ topics here: several, so that the fold must read them all.
const PARTITIONS: i32 = 3;

/// Creates this test's attempts, DLQ and deliveries topics (`PARTITIONS` partitions each) and
/// returns the Kafka settings for them.
async fn topics(name: &str) -> KafkaConfig {
    let prefix = unique_prefix(name);
    let config = kafka_config(&prefix);
    let names = TopicNames::new(&prefix);
    let settings = TopicSettings {
        domain_partitions: 1,
        delivery_partitions: PARTITIONS,
        attempts_partitions: PARTITIONS,
        dlq_partitions: PARTITIONS,
        invalid_partitions: 1,
        ..TopicSettings::default()
    };
    let wanted = [names.attempts(), names.dlq(), names.deliveries()];
    let specs: Vec<_> = topic_specs(&names, &settings, &[])
        .into_iter()
        .filter(|spec| wanted.contains(&spec.name))
        .collect();
    assert_eq!(specs.len(), wanted.len());
    let report = TopicAdmin::new(&config)
        .expect("admin client")
        .ensure_topics(&specs)
        .await
        .expect("create the topics");
    assert_eq!(report.created.len(), wanted.len(), "{report:?}");
    config
}

fn attempts_topic(config: &KafkaConfig) -> String {
    TopicNames::new(config.topic_prefix.clone()).attempts()
}

fn dlq_topic(config: &KafkaConfig) -> String {
    TopicNames::new(config.topic_prefix.clone()).dlq()
}

fn next(action: Action) -> Option<NextAction> {
    Some(NextAction {
        action: Some(action),
    })
}

/// Attempt `attempt` of the delivery of `event` to `subscription`, with the given ending.
fn attempt(event: &str, subscription: &str, attempt: u32, action: Action) -> AttemptRecord {
    let success = matches!(action, Action::Done(_));
    AttemptRecord {
        delivery_id: format!("dlv_{event}_{subscription}"),
        event_id: event.to_owned(),
        subscription_id: subscription.to_owned(),
        account_id: "acc_1".to_owned(),
        event_type: "image.generation.completed".to_owned(),
        attempt,
        started_at: Some(timestamp::from_system_time(SystemTime::now())),
        outcome: if success {
            AttemptOutcome::Success
        } else {
            AttemptOutcome::HttpStatus
        } as i32,
        status_code: if success { 200 } else { 503 },
        next_action: next(action),
        ..AttemptRecord::default()
    }
}

fn retry() -> Action {
    Action::Retry(Retry {
        at: None,
        tier: "1m".to_owned(),
        next_attempt: 0,
    })
}

fn done() -> Action {
    Action::Done(Done {})
}

fn dead() -> Action {
    Action::Dead(Dead {
        reason: "retries exhausted".to_owned(),
    })
}

/// Writes raw bytes to one partition, as the sender (or a broken producer) would, optionally
/// with a record timestamp in Unix milliseconds; returns the offset.
async fn write(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: Option<&[u8]>,
    timestamp_ms: Option<i64>,
) -> i64 {
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key(key);
    if let Some(value) = value {
        record = record.payload(value);
    }
    if let Some(timestamp_ms) = timestamp_ms {
        record = record.timestamp(timestamp_ms);
    }
    producer
        .send(record, Timeout::Never)
        .await
        .map_err(|(error, _)| error)
        .expect("record acknowledged")
        .offset
}

fn state(fold: &TopicFold<AttemptFold>, delivery_id: &str) -> Option<DeliveryState> {
    fold.read(|history| history.0.delivery(delivery_id).map(|status| status.state))
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn an_attempts_fold_catches_up_on_every_partition_and_follows_new_records() {
    let config = topics("history-catch-up").await;
    let topic = attempts_topic(&config);
    let producer = config.reliable_producer().expect("producer");

    // Three deliveries, one per partition, in different states; written before the fold starts.
    let written = [
        (0, attempt("evt_1", "sub_a", 1, retry())),
        (0, attempt("evt_1", "sub_a", 2, done())),
        (1, attempt("evt_2", "sub_b", 1, retry())),
        (2, attempt("evt_3", "sub_c", 1, retry())),
        (2, attempt("evt_3", "sub_c", 2, dead())),
    ];
    for (partition, record) in &written {
        let value = record.encode_to_vec();
        write(
            &producer,
            &topic,
            *partition,
            &record.subscription_id,
            Some(&value),
            None,
        )
        .await;
    }

    let fold = TopicFold::start(
        &config,
        &topic,
        StartAt::Beginning,
        AttemptFold(DeliveryHistory::new(1_000)),
    )
    .expect("fold starts");
    assert_eq!(fold.partitions(), PARTITIONS);
    fold.wait_caught_up(WAIT).await.expect("caught up");
    assert!(fold.is_caught_up());
    assert_eq!(fold.read(|history| history.0.len()), 3);
    assert_eq!(
        state(&fold, "dlv_evt_1_sub_a"),
        Some(DeliveryState::Succeeded)
    );
    assert_eq!(
        state(&fold, "dlv_evt_2_sub_b"),
        Some(DeliveryState::Retrying)
    );
    assert_eq!(state(&fold, "dlv_evt_3_sub_c"), Some(DeliveryState::Dead));
    let attempts = fold.read(|history| {
        history.0.delivery("dlv_evt_1_sub_a").map(|status| {
            status
                .attempts
                .iter()
                .map(|a| a.attempt)
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(attempts, Some(vec![1, 2]));

    // Read-your-writes: once `wait_for` returns, the record is in the value — checked right
    // away, with no retry that could hide a `wait_for` returning early.
    for round in 0..5 {
        let record = attempt("evt_2", "sub_b", 2 + round, retry());
        let value = record.encode_to_vec();
        let offset = write(&producer, &topic, 1, "sub_b", Some(&value), None).await;
        fold.wait_for(1, offset, WAIT).await.expect("applied");
        let latest = fold.read(|history| {
            history
                .0
                .delivery("dlv_evt_2_sub_b")
                .and_then(|status| status.attempts.last().map(|a| a.attempt))
        });
        assert_eq!(latest, Some(2 + round));
    }
    let value = attempt("evt_2", "sub_b", 7, done()).encode_to_vec();
    let offset = write(&producer, &topic, 1, "sub_b", Some(&value), None).await;
    fold.wait_for(1, offset, WAIT).await.expect("applied");
    assert_eq!(
        state(&fold, "dlv_evt_2_sub_b"),
        Some(DeliveryState::Succeeded)
    );

    // Nothing is written there yet: the wait times out instead of returning early.
    let not_yet = fold
        .wait_for(2, offset + 100, Duration::from_millis(300))
        .await
        .expect_err("not written");
    assert!(matches!(not_yet, Error::FoldTimeout { .. }), "{not_yet}");
    let unknown = fold
        .wait_for(PARTITIONS, 0, WAIT)
        .await
        .expect_err("no such partition");
    assert!(
        matches!(unknown, Error::UnknownPartition { partition, .. } if partition == PARTITIONS),
        "{unknown}"
    );

    fold.shutdown();
    tokio::time::timeout(WAIT, fold.stopped())
        .await
        .expect("reader stops");
    let stopped = fold
        .wait_for(0, offset + 100, WAIT)
        .await
        .expect_err("stopped");
    assert!(matches!(stopped, Error::FoldStopped { .. }), "{stopped}");
    // The value stays readable after the reader stopped.
    assert_eq!(fold.read(|history| history.0.len()), 3);
}

#[tokio::test]
async fn starting_since_a_time_skips_older_records() {
    let config = topics("history-since").await;
    let topic = attempts_topic(&config);
    let producer = config.reliable_producer().expect("producer");
    let two_hours_ago = unix_ms(SystemTime::now() - Duration::from_secs(2 * 60 * 60));
    let now = unix_ms(SystemTime::now());

    // Partition 0: an old record, then a recent one. Partition 1: only old records. Partition 2:
    // nothing at all.
    let old = attempt("evt_old", "sub_a", 1, done()).encode_to_vec();
    let recent = attempt("evt_new", "sub_a", 1, done()).encode_to_vec();
    let old_too = attempt("evt_old", "sub_b", 1, done()).encode_to_vec();
    write(
        &producer,
        &topic,
        0,
        "sub_a",
        Some(&old),
        Some(two_hours_ago),
    )
    .await;
    write(&producer, &topic, 0, "sub_a", Some(&recent), Some(now)).await;
    write(
        &producer,
        &topic,
        1,
        "sub_b",
        Some(&old_too),
        Some(two_hours_ago),
    )
    .await;
    write(
        &producer,
        &topic,
        1,
        "sub_b",
        Some(&old_too),
        Some(two_hours_ago + 1),
    )
    .await;

    let fold = TopicFold::start(
        &config,
        &topic,
        StartAt::Since(Duration::from_secs(60 * 60)),
        AttemptFold(DeliveryHistory::new(1_000)),
    )
    .expect("fold starts");
    fold.wait_caught_up(WAIT).await.expect("caught up");
    assert!(state(&fold, "dlv_evt_new_sub_a").is_some());
    assert!(
        state(&fold, "dlv_evt_old_sub_a").is_none(),
        "older than the window"
    );
    assert!(
        state(&fold, "dlv_evt_old_sub_b").is_none(),
        "older than the window"
    );
    assert_eq!(fold.read(|history| history.0.len()), 1);

    // A partition with nothing in the window started at its end: what comes next is read.
    let later = attempt("evt_later", "sub_b", 1, done()).encode_to_vec();
    let offset = write(&producer, &topic, 1, "sub_b", Some(&later), None).await;
    assert_eq!(offset, 2);
    fold.wait_for(1, offset, WAIT).await.expect("applied");
    assert!(state(&fold, "dlv_evt_later_sub_b").is_some());
    let empty = attempt("evt_first", "sub_c", 1, done()).encode_to_vec();
    let offset = write(&producer, &topic, 2, "sub_c", Some(&empty), None).await;
    fold.wait_for(2, offset, WAIT).await.expect("applied");
    assert!(state(&fold, "dlv_evt_first_sub_c").is_some());
    assert_eq!(fold.read(|history| history.0.len()), 3);
}

#[tokio::test]
async fn an_undecodable_record_does_not_stop_the_fold() {
    let config = topics("history-garbage").await;
    let topic = attempts_topic(&config);
    let producer = config.reliable_producer().expect("producer");
    let first = attempt("evt_1", "sub_a", 1, retry()).encode_to_vec();
    write(&producer, &topic, 0, "sub_a", Some(&first), None).await;
    // `t` is field 14 with the invalid wire type 4: not an AttemptRecord.
    write(
        &producer,
        &topic,
        0,
        "sub_a",
        Some(b"this is not protobuf"),
        None,
    )
    .await;
    write(&producer, &topic, 0, "sub_a", None, None).await;

    let fold = TopicFold::start(
        &config,
        &topic,
        StartAt::Beginning,
        AttemptFold(DeliveryHistory::new(1_000)),
    )
    .expect("fold starts");
    fold.wait_caught_up(WAIT)
        .await
        .expect("caught up past the garbage");
    assert_eq!(
        state(&fold, "dlv_evt_1_sub_a"),
        Some(DeliveryState::Retrying)
    );

    // After the garbage, more garbage and then a good record: the reader is still going.
    write(&producer, &topic, 0, "sub_a", Some(b"\xff\xff\xff"), None).await;
    let second = attempt("evt_1", "sub_a", 2, done()).encode_to_vec();
    let offset = write(&producer, &topic, 0, "sub_a", Some(&second), None).await;
    fold.wait_for(0, offset, WAIT).await.expect("applied");
    assert_eq!(
        state(&fold, "dlv_evt_1_sub_a"),
        Some(DeliveryState::Succeeded)
    );
}

#[tokio::test]
async fn a_missing_topic_is_refused() {
    let config = kafka_config(&unique_prefix("history-missing"));
    let error = TopicFold::start(
        &config,
        &attempts_topic(&config),
        StartAt::Beginning,
        AttemptFold(DeliveryHistory::new(10)),
    )
    .expect_err("no topic");
    assert!(matches!(error, Error::TopicMissing { .. }), "{error}");
}

fn subscription(id: &str) -> Subscription {
    Subscription {
        id: id.to_owned(),
        account_id: "acc_1".to_owned(),
        ..Subscription::default()
    }
}

/// A dead letter of a test event to `subscription`, as the sender writes one.
fn dead_letter(subscription: &Subscription, rng: &mut StdRng) -> DeadLetter {
    let now = SystemTime::now();
    let event = delivery::test_event_for(subscription, now, rng);
    let body = dispatch_core::render::render(&event).expect("renders");
    let mut task = delivery::new_task(&event, body, subscription, now);
    task.attempt = 6;
    DeadLetter {
        task: Some(task),
        attempts: Vec::new(),
        reason: "retries exhausted".to_owned(),
        dead_at: Some(timestamp::from_system_time(now)),
    }
}

fn delivery_id(dead: &DeadLetter) -> String {
    dead.task
        .as_ref()
        .map(|task| task.delivery_id.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_tombstone_removes_a_dead_letter_and_a_replay_goes_out_keyed_by_subscription() {
    let config = topics("history-dlq").await;
    let topic = dlq_topic(&config);
    let names = TopicNames::new(config.topic_prefix.clone());
    let producer = config.reliable_producer().expect("producer");
    let mut rng = StdRng::seed_from_u64(17);

    // Dead letters written as the sender writes them: keyed by delivery id, partition by hash.
    let letters: Vec<DeadLetter> = ["sub_a", "sub_b", "sub_c", "sub_d"]
        .iter()
        .map(|id| dead_letter(&subscription(id), &mut rng))
        .collect();
    for letter in &letters {
        let value = letter.encode_to_vec();
        let key = delivery_id(letter);
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Timeout::Never,
            )
            .await
            .map_err(|(error, _)| error)
            .expect("dead letter acknowledged");
    }

    let fold = TopicFold::start(
        &config,
        &topic,
        StartAt::Beginning,
        DeadLetterFold(DeadLetterTable::new(1_000)),
    )
    .expect("fold starts");
    fold.wait_caught_up(WAIT).await.expect("caught up");
    assert_eq!(fold.read(|table| table.0.len()), letters.len());

    let tasks = TaskProducer::new(&config).expect("task producer");
    let gone = delivery_id(&letters[1]);
    let (partition, offset) = tasks
        .tombstone_dead_letter(&gone)
        .await
        .expect("tombstone acknowledged");
    fold.wait_for(partition, offset, WAIT)
        .await
        .expect("tombstone applied");
    assert!(fold.read(|table| table.0.get(&gone).is_none()));
    let left = fold.read(|table| {
        table
            .0
            .list(&DeadLetterFilter::default(), 10)
            .into_iter()
            .map(delivery_id)
            .collect::<Vec<_>>()
    });
    assert_eq!(left.len(), letters.len() - 1);
    assert!(!left.contains(&gone));

    // Replay another one: a fresh delivery to the same subscription, on the partition its key
    // picks — the one every task of that subscription goes to.
    let replayed = fold
        .read(|table| table.0.get(&delivery_id(&letters[2])).cloned())
        .expect("held");
    let replay = delivery::replay_task(&replayed, SystemTime::now(), &mut rng);
    let deliveries = names.deliveries();
    let (replay_partition, _) = tasks
        .send_task(&deliveries, &replay)
        .await
        .expect("replay acknowledged");
    let fresh = letters[2].task.clone().expect("task");
    let (fresh_partition, _) = tasks
        .send_task(&deliveries, &fresh)
        .await
        .expect("task acknowledged");
    assert_eq!(
        replay_partition, fresh_partition,
        "same key, same partition"
    );

    let records = read_topic(&config, &deliveries, 2, WAIT);
    assert_eq!(records.len(), 2);
    let read: Vec<DeliveryTask> = records
        .iter()
        .map(|record| {
            assert_eq!(record.key(), Some(fresh.subscription_id.as_bytes()));
            assert_eq!(record.partition(), fresh_partition);
            DeliveryTask::decode(record.payload().expect("value")).expect("a task")
        })
        .collect();
    assert_eq!(read, [replay.clone(), fresh.clone()]);
    assert_eq!(read[0].replay_of, fresh.delivery_id);
    assert_ne!(read[0].delivery_id, fresh.delivery_id);
    assert_eq!(read[0].attempt, 1);
    assert_eq!(read[0].body, fresh.body);
}
