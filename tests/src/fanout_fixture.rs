//! What the fan-out process tests (`fanout_crash`, `fanout_broker_pause`) share: map topics with
//! a few `map.**` subscribers, numbered map events, and the exactly-once tally of the tasks read
//! back.

use std::collections::BTreeMap;

use dispatch_core::catalog::{self, Family};
use dispatch_core::event_input::PublishableEvent;
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_proto::dispatch::v1::{DeliveryTask, Subscription};
use dispatch_proto::events::v1::Event;
use dispatch_proto::events::v1::event::Payload;
use dispatch_proto::prost::Message as _;
use dispatch_proto::wkt::Timestamp;
use rdkafka::message::OwnedMessage;

use crate::payload;

/// Creates the topics under `config`'s prefix (three domain and delivery partitions) and puts
/// `subscribers` subscriptions `sub_0…` of `account` to `map.**`. Returns the topic names.
pub async fn map_topics_with_subscribers(
    config: &KafkaConfig,
    account: &str,
    subscribers: usize,
) -> TopicNames {
    let names = TopicNames::new(&config.topic_prefix);
    let settings = TopicSettings {
        domain_partitions: 3,
        delivery_partitions: 3,
        attempts_partitions: 1,
        dlq_partitions: 1,
        invalid_partitions: 1,
        ..TopicSettings::default()
    };
    TopicAdmin::new(config)
        .expect("admin")
        .ensure_topics(&topic_specs(&names, &settings, &["1m".to_owned()]))
        .await
        .expect("topics");
    let writer = SubscriptionWriter::new(config).expect("writer");
    for index in 0..subscribers {
        writer
            .put(&Subscription {
                id: format!("sub_{index}"),
                account_id: account.into(),
                url: "https://hooks.example/fanout".into(),
                event_types: vec!["map.**".into()],
                enabled: true,
                version: 1,
                ..Subscription::default()
            })
            .await
            .expect("subscription");
    }
    names
}

/// Map events `evt_00000…` of `account`, all alike but for their id.
#[derive(Debug, Clone)]
pub struct MapEvents {
    account: String,
    payload: Payload,
}

impl MapEvents {
    /// The events of `account`, with the catalog's example `map.region.progress` payload.
    pub fn of(account: &str) -> Self {
        let payload = catalog::lookup("map.region.progress")
            .expect("known")
            .example_payload()
            .expect("example");
        MapEvents {
            account: account.to_owned(),
            payload,
        }
    }

    /// Event number `index`.
    pub fn event(&self, index: usize) -> PublishableEvent {
        PublishableEvent {
            event: Event {
                id: format!("evt_{index:05}"),
                r#type: "map.region.progress".into(),
                account_id: self.account.clone(),
                occurred_at: Some(Timestamp {
                    seconds: 1_795_730_400,
                    nanos: 0,
                }),
                region: String::new(),
                attributes: Default::default(),
                payload: Some(self.payload.clone()),
            },
            family: Family::Map,
        }
    }
}

/// How the delivery tasks read back cover `events` × `subscribers` (event `evt_{i:05}`,
/// subscription `sub_{j}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTally {
    /// Pairs with no task.
    pub missing: usize,
    /// Pairs with more than one task.
    pub duplicated: usize,
    /// Records read.
    pub records: usize,
}

impl TaskTally {
    /// Tallies the `DeliveryTask` records read.
    pub fn of(records: &[OwnedMessage], events: usize, subscribers: usize) -> Self {
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for record in records {
            let task = DeliveryTask::decode(payload(record)).expect("a DeliveryTask");
            *seen
                .entry((task.event_id, task.subscription_id))
                .or_default() += 1;
        }
        let mut missing = 0;
        for event in 0..events {
            for subscriber in 0..subscribers {
                let pair = (format!("evt_{event:05}"), format!("sub_{subscriber}"));
                if !seen.contains_key(&pair) {
                    missing += 1;
                }
            }
        }
        TaskTally {
            missing,
            duplicated: seen.values().filter(|&&count| count > 1).count(),
            records: records.len(),
        }
    }

    /// What a run that lost and doubled nothing reads.
    pub fn exact(events: usize, subscribers: usize) -> Self {
        TaskTally {
            missing: 0,
            duplicated: 0,
            records: events * subscribers,
        }
    }
}
