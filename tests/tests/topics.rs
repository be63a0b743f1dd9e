//! `topics ensure` against the real broker: creates every topic of the design with its configs,
//! changes nothing when run again, and reports a topic that drifted from its spec.

use dispatch_e2e::{kafka_config, unique_prefix};
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::topics::{TopicNames, TopicSettings, TopicSpec, topic_specs};

fn tiers() -> Vec<String> {
    ["1m", "5m", "15m", "1h"].map(String::from).to_vec()
}

async fn assert_live_matches(admin: &TopicAdmin, specs: &[TopicSpec]) {
    let shapes = admin.topic_shapes().await.expect("metadata");
    for spec in specs {
        let shape = shapes
            .get(&spec.name)
            .unwrap_or_else(|| panic!("{} missing", spec.name));
        assert_eq!(shape.partitions, spec.partitions, "{}", spec.name);
        let live = admin.topic_configs(&spec.name).await.expect("configs");
        for key in ["cleanup.policy", "retention.ms", "segment.ms"] {
            assert_eq!(
                live.get(key).cloned().flatten().as_deref(),
                Some(spec.configs[key].as_str()),
                "{}: {key}",
                spec.name
            );
        }
    }
}

#[tokio::test]
async fn ensure_creates_the_design_once_and_then_changes_nothing() {
    let prefix = unique_prefix("ensure");
    let config = kafka_config(&prefix);
    let settings = TopicSettings {
        delivery_partitions: 4,
        domain_partitions: 2,
        lanes: vec!["acme".into()],
        ..TopicSettings::default()
    };
    let specs = topic_specs(&TopicNames::new(&prefix), &settings, &tiers());
    assert_eq!(specs.len(), 15);
    let admin = TopicAdmin::new(&config).expect("admin client");

    let first = admin.ensure_topics(&specs).await.expect("first ensure");
    assert_eq!(first.created.len(), specs.len(), "{first:?}");
    assert!(first.drift.is_empty(), "{:?}", first.drift);
    assert_live_matches(&admin, &specs).await;

    let dlq = admin
        .topic_configs(&format!("{prefix}dispatch.dlq"))
        .await
        .expect("dlq configs");
    assert_eq!(dlq["cleanup.policy"].as_deref(), Some("compact,delete"));
    assert_eq!(dlq["retention.ms"].as_deref(), Some("604800000"));

    let second = admin.ensure_topics(&specs).await.expect("second ensure");
    assert!(second.created.is_empty(), "{second:?}");
    assert_eq!(second.existing.len(), specs.len());
    assert!(second.drift.is_empty(), "{:?}", second.drift);
    assert_live_matches(&admin, &specs).await;
}

#[tokio::test]
async fn ensure_reports_drift_and_leaves_the_topic_alone() {
    let prefix = unique_prefix("drift");
    let config = kafka_config(&prefix);
    let names = TopicNames::new(&prefix);
    let admin = TopicAdmin::new(&config).expect("admin client");

    // Someone created dispatch.invalid by hand: one partition, one hour of retention.
    let by_hand = TopicSpec {
        name: names.invalid(),
        partitions: 1,
        replication_factor: 1,
        configs: [("retention.ms".to_owned(), "3600000".to_owned())].into(),
    };
    admin
        .ensure_topics(&[by_hand])
        .await
        .expect("hand-made topic");

    let specs = topic_specs(&names, &TopicSettings::default(), &tiers());
    let report = admin.ensure_topics(&specs).await.expect("ensure");
    assert_eq!(report.created.len(), specs.len() - 1);
    let drifted: Vec<_> = report
        .drift
        .iter()
        .map(|d| (d.topic.as_str(), d.setting.as_str(), d.actual.as_str()))
        .collect();
    let invalid = names.invalid();
    assert!(
        drifted.contains(&(invalid.as_str(), "partitions", "1")),
        "{drifted:?}"
    );
    assert!(
        drifted.contains(&(invalid.as_str(), "retention.ms", "3600000")),
        "{drifted:?}"
    );
    assert!(
        drifted.iter().all(|(topic, _, _)| *topic == invalid),
        "{drifted:?}"
    );
    // Reported, not changed.
    let live = admin.topic_configs(&invalid).await.expect("configs");
    assert_eq!(live["retention.ms"].as_deref(), Some("3600000"));
}
