//! The subscription view against the real broker: it catches up with what was written before it
//! started, follows creates, updates and deletes afterwards (read-your-writes through
//! `wait_for_offset`), resolves two updates on the same base version as "first in the log wins"
//! in every instance, and survives records it cannot decode.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::subscriptions::{FoldOutcome, Rejection};
use dispatch_e2e::{kafka_config, unique_prefix};
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_kafka::{Error, KafkaConfig};
use dispatch_proto::dispatch::v1::{AttributeValues, Subscription};
use dispatch_proto::prost::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

/// Upper bound of every wait; a healthy local broker needs well under a second.
const WAIT: Duration = Duration::from_secs(30);

/// Creates this test's `dispatch.subscriptions` (and only it: the other topics of the design are
/// not needed here) and returns the Kafka settings for it.
async fn subscriptions_topic(name: &str) -> KafkaConfig {
    let prefix = unique_prefix(name);
    let config = kafka_config(&prefix);
    let names = TopicNames::new(&prefix);
    let settings = TopicSettings {
        domain_partitions: 1,
        delivery_partitions: 1,
        attempts_partitions: 1,
        dlq_partitions: 1,
        invalid_partitions: 1,
        ..TopicSettings::default()
    };
    let specs: Vec<_> = topic_specs(&names, &settings, &[])
        .into_iter()
        .filter(|spec| spec.name == names.subscriptions())
        .collect();
    assert_eq!(specs.len(), 1);
    let report = TopicAdmin::new(&config)
        .expect("admin client")
        .ensure_topics(&specs)
        .await
        .expect("create dispatch.subscriptions");
    assert_eq!(report.created, [names.subscriptions()]);
    config
}

fn subscription(id: &str, account: &str, version: u64, patterns: &[&str]) -> Subscription {
    Subscription {
        id: id.to_owned(),
        account_id: account.to_owned(),
        url: format!("https://{id}.example.com/hooks/v{version}"),
        event_types: patterns.iter().map(|p| (*p).to_owned()).collect(),
        enabled: true,
        version,
        ..Subscription::default()
    }
}

fn with_url(mut subscription: Subscription, url: &str) -> Subscription {
    subscription.url = url.to_owned();
    subscription
}

/// Writes raw bytes under `key` to partition 0, as a foreign or broken producer would.
async fn write_raw(config: &KafkaConfig, key: &[u8], value: &[u8]) -> i64 {
    let producer = config.reliable_producer().expect("producer");
    let topic = TopicNames::new(config.topic_prefix.clone()).subscriptions();
    let record = FutureRecord::to(&topic)
        .partition(0)
        .key(key)
        .payload(value);
    producer
        .send(record, Timeout::Never)
        .await
        .map_err(|(error, _)| error)
        .expect("raw record acknowledged")
        .offset
}

async fn start_caught_up(config: &KafkaConfig) -> SubscriptionView {
    let view = SubscriptionView::start(config).expect("view starts");
    view.wait_caught_up(WAIT).await.expect("view catches up");
    assert!(view.is_caught_up());
    view
}

fn ids_of(view: &SubscriptionView) -> Vec<String> {
    view.read(|table| table.iter().map(|s| s.id.clone()).collect())
}

fn matching(
    view: &SubscriptionView,
    account: &str,
    event_type: &str,
    attributes: &[(&str, &str)],
) -> Vec<String> {
    let attributes: HashMap<String, String> = attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    view.read(|table| {
        table
            .matching(account, event_type, &attributes)
            .into_iter()
            .map(|s| s.id.clone())
            .collect()
    })
}

fn url_in(view: &SubscriptionView, id: &str) -> Option<String> {
    view.read(|table| table.get(id).map(|s| s.url.clone()))
}

#[tokio::test]
async fn a_view_catches_up_then_follows_creates_and_deletes() {
    let config = subscriptions_topic("view-follow").await;
    let writer = SubscriptionWriter::new(&config).expect("writer");

    // Written before the view exists.
    let mut eu_studio = subscription("sub_a2", "acc_a", 1, &["studio.**"]);
    eu_studio.filter = [(
        "region".to_owned(),
        AttributeValues {
            values: vec!["eu-west".into()],
        },
    )]
    .into();
    let mut disabled = subscription("sub_a3", "acc_a", 1, &["**"]);
    disabled.enabled = false;
    disabled.disabled_reason = "endpoint answered 410 Gone".into();
    let before = [
        subscription("sub_a1", "acc_a", 1, &["image.**"]),
        eu_studio,
        disabled,
        subscription("sub_b1", "acc_b", 1, &["**"]),
        with_url(
            subscription("sub_a1", "acc_a", 2, &["image.**"]),
            "https://a1.example.com/moved",
        ),
    ];
    let mut last = -1;
    for record in &before {
        last = writer.put(record).await.expect("put");
    }
    assert_eq!(last, 4, "one partition, offsets 0..=4");

    let view = start_caught_up(&config).await;
    assert_eq!(view.caught_up_target(), 5);
    assert!(view.next_offset() >= 5);
    assert_eq!(ids_of(&view), ["sub_a1", "sub_a2", "sub_a3", "sub_b1"]);
    assert_eq!(
        url_in(&view, "sub_a1").as_deref(),
        Some("https://a1.example.com/moved")
    );
    assert_eq!(view.read(|t| t.get("sub_a1").map(|s| s.version)), Some(2));
    let acc_a: Vec<String> = view.read(|t| t.for_account("acc_a").map(|s| s.id.clone()).collect());
    assert_eq!(acc_a, ["sub_a1", "sub_a2", "sub_a3"]);

    // Matching through the view: by pattern, filter and account; disabled never matches.
    assert_eq!(
        matching(&view, "acc_a", "image.generation.completed", &[]),
        ["sub_a1"]
    );
    assert_eq!(
        matching(
            &view,
            "acc_a",
            "studio.campaign.completed",
            &[("region", "eu-west")]
        ),
        ["sub_a2"]
    );
    assert!(matching(&view, "acc_a", "studio.campaign.completed", &[]).is_empty());
    assert_eq!(
        matching(&view, "acc_b", "map.region.completed", &[]),
        ["sub_b1"]
    );

    // Written after the view caught up: read-your-writes through the offset.
    let offset = writer
        .put(&subscription("sub_a4", "acc_a", 1, &["image.generation.*"]))
        .await
        .expect("put sub_a4");
    assert_eq!(
        view.wait_for_offset(offset, WAIT).await.expect("applied"),
        FoldOutcome::Created { version: 1 }
    );
    assert_eq!(
        matching(&view, "acc_a", "image.generation.completed", &[]),
        ["sub_a1", "sub_a4"]
    );

    // A tombstone removes it from the records and from matching.
    let offset = writer.delete("sub_a1").await.expect("delete");
    assert_eq!(
        view.wait_for_offset(offset, WAIT).await.expect("applied"),
        FoldOutcome::Deleted
    );
    assert_eq!(url_in(&view, "sub_a1"), None);
    assert_eq!(
        matching(&view, "acc_a", "image.generation.completed", &[]),
        ["sub_a4"]
    );
    let offset = writer.delete("sub_a1").await.expect("delete again");
    assert_eq!(
        view.wait_for_offset(offset, WAIT).await.expect("applied"),
        FoldOutcome::Ignored
    );
    assert_eq!(ids_of(&view), ["sub_a2", "sub_a3", "sub_a4", "sub_b1"]);

    // The writer refuses what every view would refuse, before writing anything.
    let refused = writer
        .put(&subscription("sub_a5", "acc_a", 0, &["image.**"]))
        .await
        .expect_err("version 0");
    assert!(
        matches!(
            refused,
            Error::InvalidSubscription(Rejection::VersionZero { .. })
        ),
        "{refused}"
    );

    // A wait for an offset nobody wrote ends at its timeout, not never.
    let beyond = view.next_offset() + 100;
    let timed_out = view
        .wait_for_offset(beyond, Duration::from_millis(300))
        .await
        .expect_err("nothing there");
    assert!(
        matches!(timed_out, Error::ViewTimeout { .. }),
        "{timed_out}"
    );

    view.shutdown();
    tokio::time::timeout(WAIT, view.stopped())
        .await
        .expect("the reader stops");
    let stopped = view
        .wait_for_offset(beyond, WAIT)
        .await
        .expect_err("stopped");
    assert!(matches!(stopped, Error::ViewStopped), "{stopped}");
    // The table stays readable after the reader stopped.
    assert_eq!(ids_of(&view).len(), 4);
}

#[tokio::test]
async fn the_first_of_two_updates_on_the_same_base_wins_in_every_view() {
    let config = subscriptions_topic("view-conflict").await;
    let writer = SubscriptionWriter::new(&config).expect("writer");
    let base = subscription("sub_1", "acc_1", 1, &["image.**"]);
    writer.put(&base).await.expect("v1");

    // One view follows the conflict live; another reads it later from the log.
    let live = start_caught_up(&config).await;
    let first_offset = writer
        .put(&Subscription {
            version: 2,
            ..with_url(base.clone(), "https://first.example.com")
        })
        .await
        .expect("first v2");
    let second_offset = writer
        .put(&Subscription {
            version: 2,
            ..with_url(base.clone(), "https://second.example.com")
        })
        .await
        .expect("second v2");
    assert!(second_offset > first_offset);
    let replayed = start_caught_up(&config).await;
    assert!(replayed.caught_up_target() > second_offset);

    for (name, view) in [("live", &live), ("replayed", &replayed)] {
        assert_eq!(
            view.wait_for_offset(first_offset, WAIT).await.expect(name),
            FoldOutcome::Updated { version: 2 },
            "{name}"
        );
        let outcome = view.wait_for_offset(second_offset, WAIT).await.expect(name);
        assert_eq!(
            outcome,
            FoldOutcome::Rejected(Rejection::StaleVersion {
                id: "sub_1".into(),
                current: 2,
                got: 2,
            }),
            "{name}"
        );
        assert_eq!(outcome.reason(), Some("stale_version"));
        assert_eq!(
            url_in(view, "sub_1").as_deref(),
            Some("https://first.example.com"),
            "{name}"
        );
    }

    // Re-asserting the winner (its record again at version + 1, as the admin API does after a
    // rejected write) makes it the last record of the key, and every view agrees on it.
    let winner = live
        .read(|table| table.get("sub_1").cloned())
        .expect("held");
    let reasserted = writer
        .put(&Subscription {
            version: winner.version + 1,
            ..winner
        })
        .await
        .expect("re-assert");
    for (name, view) in [("live", &live), ("replayed", &replayed)] {
        assert_eq!(
            view.wait_for_offset(reasserted, WAIT).await.expect(name),
            FoldOutcome::Updated { version: 3 },
            "{name}"
        );
        assert_eq!(
            url_in(view, "sub_1").as_deref(),
            Some("https://first.example.com")
        );
    }
}

#[tokio::test]
async fn undecodable_and_refused_records_are_skipped_and_the_view_goes_on() {
    let config = subscriptions_topic("view-garbage").await;
    let writer = SubscriptionWriter::new(&config).expect("writer");

    let garbage = write_raw(&config, b"sub_garbage", b"this is not protobuf").await;
    let mismatch = write_raw(
        &config,
        b"sub_x",
        &subscription("sub_y", "acc_1", 1, &["**"]).encode_to_vec(),
    )
    .await;
    let ok = writer
        .put(&subscription("sub_ok", "acc_1", 1, &["**"]))
        .await
        .expect("valid record");
    assert!(garbage < mismatch && mismatch < ok);

    let view = start_caught_up(&config).await;
    assert_eq!(ids_of(&view), ["sub_ok"]);
    let outcome = view.wait_for_offset(garbage, WAIT).await.expect("passed");
    assert_eq!(outcome.reason(), Some("undecodable"), "{outcome:?}");
    let outcome = view.wait_for_offset(mismatch, WAIT).await.expect("passed");
    assert_eq!(
        outcome,
        FoldOutcome::Rejected(Rejection::KeyMismatch {
            key: "sub_x".into(),
            id: "sub_y".into(),
        })
    );
    assert_eq!(
        view.wait_for_offset(ok, WAIT).await.expect("passed"),
        FoldOutcome::Created { version: 1 }
    );

    // Also after catching up: garbage, then a valid record that must still arrive.
    let garbage = write_raw(&config, b"sub_ok", &[0xff; 8]).await;
    let later = writer
        .put(&subscription("sub_later", "acc_1", 1, &["image.**"]))
        .await
        .expect("valid record");
    assert_eq!(
        view.wait_for_offset(later, WAIT).await.expect("applied"),
        FoldOutcome::Created { version: 1 }
    );
    assert_eq!(
        view.wait_for_offset(garbage, WAIT)
            .await
            .expect("passed")
            .reason(),
        Some("undecodable")
    );
    // The undecodable record under sub_ok's key did not touch it.
    assert_eq!(ids_of(&view), ["sub_later", "sub_ok"]);
    assert_eq!(
        matching(&view, "acc_1", "image.generation.completed", &[]),
        ["sub_later", "sub_ok"]
    );
}

#[tokio::test]
async fn a_view_refuses_to_start_without_its_topic() {
    let config = kafka_config(&unique_prefix("view-missing"));
    let error = SubscriptionView::start(&config).expect_err("no topic");
    assert!(matches!(error, Error::TopicMissing { .. }), "{error}");
}
