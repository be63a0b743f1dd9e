//! The delivery engine against the real broker and real HTTP receivers on 127.0.0.1: signed
//! delivery and its attempt record; the whole retry schedule (in seconds) ending in the DLQ;
//! 410 Gone disabling the subscription; no head-of-line blocking on a shared partition; HTTPS
//! with a private CA, trusted only when configured; a held retry-tier record surviving a
//! second sender joining and leaving the group; attempt records capped to fit a small topic;
//! a write to a missing topic retried, counted and shown in readiness until the topic exists; a
//! failed seek after a hold never letting the commit pass the records it dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use dispatch_core::retry::{HumanDuration, RetryConfig, RetrySchedule};
use dispatch_core::signing::{self, ReceivedHeaders, SigningSecret};
use dispatch_core::{catalog, ids, render, timestamp};
use dispatch_e2e::receiver::{Receiver, Script};
use dispatch_e2e::tls::TestPki;
use dispatch_e2e::{
    group_committed_total, kafka_config, payload, read_expecting, read_topic, unique_prefix,
};
use dispatch_http::{HttpConfig, WebhookClient};
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::outbox::{HEADER_TRUNCATED, Outbox, TRUNCATION_MARK, Writer};
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, TopicSpec, topic_specs};
use dispatch_proto::dispatch::v1::next_action::Action;
use dispatch_proto::dispatch::v1::{
    AttemptOutcome, AttemptRecord, DeadLetter, DeliveryTask, SigningSecret as SecretRecord,
    Subscription,
};
use dispatch_proto::events::v1::Event;
use dispatch_proto::prost::Message as _;
use dispatch_proto::wkt::Timestamp;
use dispatch_sender::attempt::AttemptContext;
use dispatch_sender::config::SenderConfig;
use dispatch_sender::engine::{Engine, InjectedFaults};
use dispatch_telemetry::{Health, PrometheusHandle};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A running sender on its own topics, and what the test needs around it.
struct Harness {
    config: KafkaConfig,
    names: TopicNames,
    writer: SubscriptionWriter,
    view: Arc<SubscriptionView>,
    producer: FutureProducer,
    /// What [`Self::spawn_engine`] builds another sender of the same group from.
    http: HttpConfig,
    schedule: RetrySchedule,
    /// The sender configuration of every engine the harness starts (its group id is set).
    sender: SenderConfig,
    group_id: String,
    /// Readiness of the senders started (their `sender_writes` components).
    health: Health,
    /// The first sender's test seam: seeks and pauses of a hold still to fail.
    faults: Arc<InjectedFaults>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<dispatch_sender::Result<()>>>,
}

impl Harness {
    /// Topics (one delivery partition, so every subscription shares it), a view, and a sender
    /// with the given delays between attempts and HTTP timeout.
    async fn start(name: &str, delays_secs: &[u64], http_timeout: Duration) -> Self {
        Self::start_with_http(name, delays_secs, |http| {
            http.timeout_ms = http_timeout.as_millis() as u64;
            http.connect_timeout_ms = http.timeout_ms;
        })
        .await
    }

    /// As [`Self::start`], with the HTTP settings adjusted by `tweak` (defaults: 5 s timeout,
    /// `http://` and 127.0.0.1 allowed).
    async fn start_with_http(
        name: &str,
        delays_secs: &[u64],
        tweak: impl FnOnce(&mut HttpConfig),
    ) -> Self {
        Self::start_full(name, delays_secs, tweak, |_| {}, |_| {}).await
    }

    /// As [`Self::start_with_http`], with the sender's configuration adjusted by
    /// `tweak_sender` too (defaults, a 3 s drain).
    async fn start_configured(
        name: &str,
        delays_secs: &[u64],
        tweak: impl FnOnce(&mut HttpConfig),
        tweak_sender: impl FnOnce(&mut SenderConfig),
    ) -> Self {
        Self::start_full(name, delays_secs, tweak, tweak_sender, |_| {}).await
    }

    /// As [`Self::start_with_http`], with the topic specs adjusted by `tweak_topics` before they
    /// are created (a small `max.message.bytes`, a topic left out).
    async fn start_with_topics(
        name: &str,
        delays_secs: &[u64],
        tweak: impl FnOnce(&mut HttpConfig),
        tweak_topics: impl FnOnce(&mut Vec<TopicSpec>),
    ) -> Self {
        Self::start_full(name, delays_secs, tweak, |_| {}, tweak_topics).await
    }

    /// The harness with the HTTP client, the sender's configuration and the topic specs each
    /// adjusted before start.
    async fn start_full(
        name: &str,
        delays_secs: &[u64],
        tweak: impl FnOnce(&mut HttpConfig),
        tweak_sender: impl FnOnce(&mut SenderConfig),
        tweak_topics: impl FnOnce(&mut Vec<TopicSpec>),
    ) -> Self {
        let prefix = unique_prefix(name);
        let config = kafka_config(&prefix);
        let names = TopicNames::new(&prefix);
        let retry = RetryConfig {
            delays: delays_secs
                .iter()
                .map(|s| HumanDuration(Duration::from_secs(*s)))
                .collect(),
            jitter: 0.0,
            ..RetryConfig::default()
        };
        let schedule = RetrySchedule::new(retry).expect("valid schedule");
        let tiers: Vec<String> = schedule
            .tiers()
            .iter()
            .map(|t| t.name().to_owned())
            .collect();
        let settings = TopicSettings {
            domain_partitions: 1,
            delivery_partitions: 1,
            attempts_partitions: 1,
            dlq_partitions: 1,
            invalid_partitions: 1,
            ..TopicSettings::default()
        };
        let mut specs = topic_specs(&names, &settings, &tiers);
        tweak_topics(&mut specs);
        TopicAdmin::new(&config)
            .expect("admin")
            .ensure_topics(&specs)
            .await
            .expect("topics");
        let view = Arc::new(SubscriptionView::start(&config).expect("view"));
        view.wait_caught_up(WAIT).await.expect("view caught up");
        let mut http = HttpConfig {
            timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            allow_http: true,
            allow_addresses: vec!["127.0.0.1/32".to_owned()],
            ..HttpConfig::default()
        };
        tweak(&mut http);
        let mut sender = SenderConfig {
            group_id: format!("{prefix}sender"),
            // Stopping the harness need not wait for hanging requests.
            drain_timeout_ms: 3_000,
            ..SenderConfig::default()
        };
        tweak_sender(&mut sender);
        sender.validate().expect("valid sender configuration");
        let mut harness = Harness {
            writer: SubscriptionWriter::new(&config).expect("writer"),
            producer: config.reliable_producer().expect("producer"),
            config,
            names,
            view,
            http,
            schedule,
            sender,
            group_id: format!("{prefix}sender"),
            health: Health::new(),
            faults: Arc::default(),
            stop: CancellationToken::new(),
            task: None,
        };
        let engine = harness.build_engine();
        harness.faults = engine.injected_faults();
        let (stop, task) = harness.spawn(engine);
        harness.stop = stop;
        harness.task = Some(task);
        harness
    }

    /// Starts a sender engine of the harness's group (the first, or another one joining it);
    /// cancel the token to stop it.
    fn spawn_engine(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<dispatch_sender::Result<()>>,
    ) {
        self.spawn(self.build_engine())
    }

    /// Runs `engine` until the returned token is cancelled.
    fn spawn(
        &self,
        engine: Engine,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<dispatch_sender::Result<()>>,
    ) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(engine.run(stop.clone()));
        (stop, task)
    }

    /// A sender engine of the harness's group, its writes reporting to the harness's health.
    fn build_engine(&self) -> Engine {
        let outbox = Outbox::new(&self.config, Writer::Sender).expect("producer");
        outbox.report_readiness(self.health.component(dispatch_sender::READINESS_COMPONENT));
        let ctx = AttemptContext {
            client: WebhookClient::new(&self.http).expect("client"),
            schedule: self.schedule.clone(),
            outbox,
            names: self.names.clone(),
            subscriptions: Arc::new(SubscriptionWriter::new(&self.config).expect("writer")),
        };
        let sender_config = SenderConfig {
            group_id: self.group_id.clone(),
            ..self.sender.clone()
        };
        Engine::build(
            &self.config,
            sender_config,
            &[],
            ctx,
            Arc::clone(&self.view),
        )
        .expect("engine")
    }

    /// Writes a subscription to `url` with a fresh secret and waits until the view has it.
    async fn subscribe(&self, id: &str, url: &str) -> SigningSecret {
        self.subscribe_with(id, url, |_| {}).await
    }

    /// As [`Self::subscribe`], with the subscription adjusted by `tweak` first.
    async fn subscribe_with(
        &self,
        id: &str,
        url: &str,
        tweak: impl FnOnce(&mut Subscription),
    ) -> SigningSecret {
        let secret = SigningSecret::generate(&mut rand::rng());
        let subscription = Subscription {
            id: id.to_owned(),
            account_id: "acc_1".into(),
            url: url.to_owned(),
            event_types: vec!["**".into()],
            secrets: vec![SecretRecord {
                secret: secret.as_str().to_owned(),
                created_at: None,
                expires_at: None,
            }],
            enabled: true,
            version: 1,
            ..Subscription::default()
        };
        let mut subscription = subscription;
        tweak(&mut subscription);
        let offset = self.writer.put(&subscription).await.expect("subscription");
        self.view
            .wait_for_offset(offset, WAIT)
            .await
            .expect("view has it");
        secret
    }

    /// Produces a delivery task of a fresh event for `subscription_id`; returns the task.
    async fn deliver(&self, subscription_id: &str, event_id: &str) -> DeliveryTask {
        self.deliver_to(&self.names.deliveries(), subscription_id, event_id, |_| {})
            .await
    }

    /// As [`Self::deliver`], for a subscription of `account_id`.
    async fn deliver_for(
        &self,
        account_id: &str,
        subscription_id: &str,
        event_id: &str,
    ) -> DeliveryTask {
        let account_id = account_id.to_owned();
        self.deliver_to(
            &self.names.deliveries(),
            subscription_id,
            event_id,
            |task| {
                task.account_id = account_id;
            },
        )
        .await
    }

    /// As [`Self::deliver`], to `topic` and with the task adjusted by `tweak`.
    async fn deliver_to(
        &self,
        topic: &str,
        subscription_id: &str,
        event_id: &str,
        tweak: impl FnOnce(&mut DeliveryTask),
    ) -> DeliveryTask {
        let task = Self::task_for(subscription_id, event_id, tweak);
        let value = task.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(topic).key(subscription_id).payload(&value),
                Timeout::After(WAIT),
            )
            .await
            .expect("produce the task");
        task
    }

    /// A delivery task of a fresh event for `subscription_id`, adjusted by `tweak`.
    fn task_for(
        subscription_id: &str,
        event_id: &str,
        tweak: impl FnOnce(&mut DeliveryTask),
    ) -> DeliveryTask {
        let event = Event {
            id: event_id.to_owned(),
            r#type: "studio.review.requested".into(),
            account_id: "acc_1".into(),
            occurred_at: Some(timestamp::from_system_time(SystemTime::now())),
            region: String::new(),
            attributes: Default::default(),
            payload: Some(
                catalog::lookup("studio.review.requested")
                    .expect("known")
                    .example_payload()
                    .expect("example"),
            ),
        };
        let task = DeliveryTask {
            delivery_id: ids::delivery_id(event_id, subscription_id),
            event_id: event_id.to_owned(),
            event_type: event.r#type.clone(),
            subscription_id: subscription_id.to_owned(),
            account_id: "acc_1".into(),
            attempt: 1,
            body: render::render(&event).expect("renders"),
            occurred_at: event.occurred_at,
            created_at: Some(Timestamp::default()),
            ..DeliveryTask::default()
        };
        let mut task = task;
        tweak(&mut task);
        task
    }

    fn read<T: dispatch_proto::prost::Message + Default>(
        &self,
        topic: &str,
        expected: usize,
    ) -> Vec<T> {
        read_expecting(&self.config, topic, expected, WAIT, Duration::from_secs(2))
            .iter()
            .map(|record| T::decode(payload(record)).expect("decodes"))
            .collect()
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("sender stops in time")
                .expect("sender task")
                .expect("sender ends cleanly");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_is_one_signed_attempt_and_a_success_record() {
    let harness = Harness::start("sender-ok", &[0, 1], Duration::from_secs(5)).await;
    let receiver = Receiver::start().await;
    let secret = harness.subscribe("sub_ok", &receiver.url("/ok")).await;
    let task = harness.deliver("sub_ok", "evt_ok").await;

    let received = receiver.wait_for("/ok", 1, WAIT).await;
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.body.as_ref(), task.body.as_slice());
    assert_eq!(request.headers["webhook-id"], "evt_ok");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["posternity-delivery-id"], task.delivery_id);
    assert_eq!(request.headers["posternity-attempt"], "1");
    let headers =
        ReceivedHeaders::from_lookup(|name| request.headers.get(name).map(String::as_str));
    signing::verify(
        &secret,
        &headers,
        &request.body,
        SystemTime::now(),
        signing::DEFAULT_TOLERANCE,
    )
    .expect("the signature verifies with the subscription's secret");

    let attempts: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 1);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Success as i32);
    assert_eq!(attempts[0].status_code, 200);
    assert!(matches!(
        attempts[0]
            .next_action
            .as_ref()
            .and_then(|a| a.action.as_ref()),
        Some(Action::Done(_))
    ));
    // Nothing more arrives.
    assert_eq!(
        receiver
            .wait_for("/ok", 2, Duration::from_secs(2))
            .await
            .len(),
        1
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_500_runs_the_whole_schedule_then_dead_letters() {
    let delays = [0, 1, 2, 3, 4];
    let harness = Harness::start("sender-500", &delays, Duration::from_secs(5)).await;
    let receiver = Receiver::start().await;
    receiver.script("/fail", Script::status(500));
    harness.subscribe("sub_fail", &receiver.url("/fail")).await;
    harness.deliver("sub_fail", "evt_fail").await;

    let received = receiver.wait_for("/fail", 6, WAIT).await;
    assert_eq!(received.len(), 6, "attempt 1 + 5 retries");
    for (index, delay) in delays.iter().enumerate() {
        let gap = received[index + 1].at.duration_since(received[index].at);
        let expected = Duration::from_secs(*delay);
        // Never early; late by at most the polling and produce/consume round trips (generous: CI
        // runs several broker tests at once on two cores).
        assert!(
            gap + Duration::from_millis(50) >= expected
                && gap <= expected + Duration::from_millis(2000),
            "gap before attempt {} was {gap:?}, expected about {expected:?}",
            index + 2
        );
    }
    for (index, request) in received.iter().enumerate() {
        assert_eq!(
            request.headers["posternity-attempt"],
            (index + 1).to_string()
        );
        assert_eq!(
            request.headers["webhook-id"], "evt_fail",
            "the same id on every retry"
        );
    }

    let attempts: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 6);
    assert_eq!(attempts.len(), 6);
    assert!(attempts.iter().all(|a| a.status_code == 500));
    assert!(matches!(
        attempts[5]
            .next_action
            .as_ref()
            .and_then(|a| a.action.as_ref()),
        Some(Action::Dead(_))
    ));
    let letters: Vec<DeadLetter> = harness.read(&harness.names.dlq(), 1);
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attempts.len(),
        6,
        "the dead letter holds every attempt"
    );
    assert_eq!(
        letters[0].task.as_ref().map(|t| t.delivery_id.clone()),
        Some(ids::delivery_id("evt_fail", "sub_fail"))
    );
    // Nothing after the dead letter.
    assert_eq!(
        receiver
            .wait_for("/fail", 7, Duration::from_secs(3))
            .await
            .len(),
        6
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_without_retrying() {
    let harness = Harness::start("sender-410", &[0, 1], Duration::from_secs(5)).await;
    let receiver = Receiver::start().await;
    receiver.script("/gone", Script::status(410));
    harness.subscribe("sub_gone", &receiver.url("/gone")).await;
    harness.deliver("sub_gone", "evt_gone").await;

    let letters: Vec<DeadLetter> = harness.read(&harness.names.dlq(), 1);
    assert_eq!(letters.len(), 1);
    assert_eq!(receiver.received("/gone").len(), 1, "no retry after 410");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let state = harness.view.read(|table| {
            table
                .get("sub_gone")
                .map(|s| (s.enabled, s.disabled_reason.clone()))
        });
        if let Some((false, reason)) = state {
            assert!(
                reason.contains("410") || reason.to_lowercase().contains("gone"),
                "{reason}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "subscription never disabled: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_hold_up_its_partition() {
    // One delivery partition: both subscriptions share it.
    let harness = Harness::start("sender-hol", &[0, 1], Duration::from_secs(20)).await;
    let receiver = Receiver::start().await;
    receiver.script("/slow", Script::Hang);
    harness.subscribe("sub_slow", &receiver.url("/slow")).await;
    harness.subscribe("sub_fast", &receiver.url("/fast")).await;
    for index in 0..10 {
        harness
            .deliver("sub_slow", &format!("evt_slow_{index}"))
            .await;
        harness
            .deliver("sub_fast", &format!("evt_fast_{index}"))
            .await;
    }
    // All fast deliveries arrive while every slow request is still hanging (its timeout is
    // 20 s, the wait below at most 10 s).
    let fast = receiver
        .wait_for("/fast", 10, Duration::from_secs(10))
        .await;
    assert_eq!(fast.len(), 10, "the healthy endpoint was held up");
    let slow = receiver.received("/slow");
    assert!(
        !slow.is_empty() && slow.len() <= 8,
        "slow endpoint: {} requests (max_in_flight 8)",
        slow.len()
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_delivery_records_are_quarantined_and_the_partition_flows() {
    let harness = Harness::start("sender-bad", &[0, 1], Duration::from_secs(5)).await;
    let receiver = Receiver::start().await;
    harness.subscribe("sub_ok", &receiver.url("/ok")).await;
    let garbage = b"\xff\xff\xff not a task".to_vec();
    harness
        .producer
        .send(
            FutureRecord::to(&harness.names.deliveries())
                .key("sub_ok")
                .payload(&garbage),
            Timeout::After(WAIT),
        )
        .await
        .expect("produce garbage");
    harness.deliver("sub_ok", "evt_after_garbage").await;

    let received = receiver.wait_for("/ok", 1, WAIT).await;
    assert_eq!(
        received.len(),
        1,
        "the record after the garbage was delivered"
    );
    assert_eq!(received[0].headers["webhook-id"], "evt_after_garbage");
    let invalid = read_expecting(
        &harness.config,
        &harness.names.invalid(),
        1,
        WAIT,
        Duration::from_secs(2),
    );
    assert_eq!(invalid.len(), 1);
    assert_eq!(
        rdkafka::Message::payload(&invalid[0]),
        Some(garbage.as_slice()),
        "original bytes kept"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_1_delivers_one_at_a_time_in_order() {
    let harness = Harness::start("sender-order", &[0, 1], Duration::from_secs(5)).await;
    let receiver = Receiver::start().await;
    receiver.script(
        "/ordered",
        Script::Respond {
            status: 200,
            headers: Vec::new(),
            delay: Duration::from_millis(30),
        },
    );
    harness
        .subscribe_with("sub_ordered", &receiver.url("/ordered"), |s| {
            s.max_in_flight = 1
        })
        .await;
    for index in 0..12 {
        harness
            .deliver("sub_ordered", &format!("evt_{index:02}"))
            .await;
    }
    let received = receiver.wait_for("/ordered", 12, WAIT).await;
    assert_eq!(received.len(), 12);
    assert!(
        received.iter().all(|r| r.concurrent == 1),
        "two requests overlapped"
    );
    let order: Vec<&str> = received
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    let expected: Vec<String> = (0..12).map(|i| format!("evt_{i:02}")).collect();
    assert_eq!(order, expected);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_20_per_second_is_respected() {
    let harness = Harness::start("sender-rate", &[0, 1], Duration::from_secs(5)).await;
    let receiver = Receiver::start().await;
    harness
        .subscribe_with("sub_rate", &receiver.url("/rate"), |s| {
            s.rate_limit_per_second = 20
        })
        .await;
    for index in 0..50 {
        harness
            .deliver("sub_rate", &format!("evt_rate_{index}"))
            .await;
    }
    let received = receiver.wait_for("/rate", 50, WAIT).await;
    assert_eq!(received.len(), 50);
    // In any one-second window at most 20 plus the small burst (2 at 20/s) arrive.
    for (index, first) in received.iter().enumerate() {
        let within = received[index..]
            .iter()
            .take_while(|r| r.at.duration_since(first.at) < Duration::from_secs(1))
            .count();
        assert!(
            within <= 22,
            "{within} requests within one second from request {index}"
        );
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_a_hanging_endpoint_times_out() {
    let harness =
        Harness::start("sender-retry-after", &[0, 1, 1], Duration::from_millis(800)).await;
    let receiver = Receiver::start().await;
    receiver.script(
        "/busy",
        Script::Respond {
            status: 503,
            headers: vec![("retry-after".to_owned(), "3".to_owned())],
            delay: Duration::ZERO,
        },
    );
    receiver.script("/hang", Script::Hang);
    harness.subscribe("sub_busy", &receiver.url("/busy")).await;
    harness.subscribe("sub_hang", &receiver.url("/hang")).await;
    harness.deliver("sub_busy", "evt_busy").await;
    harness.deliver("sub_hang", "evt_hang").await;

    // Attempt 2 would be immediate by the schedule; Retry-After: 3 pushes it to at least 3 s.
    let busy = receiver.wait_for("/busy", 2, WAIT).await;
    assert_eq!(busy.len(), 2);
    let gap = busy[1].at.duration_since(busy[0].at);
    assert!(
        gap >= Duration::from_millis(2950),
        "retried after {gap:?} despite Retry-After: 3"
    );

    // The hanging endpoint's attempt ends as a timeout at the configured 800 ms.
    let attempts: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 3);
    let timeout = attempts
        .iter()
        .find(|a| a.subscription_id == "sub_hang")
        .expect("an attempt record of the hanging endpoint");
    assert_eq!(timeout.outcome, AttemptOutcome::Timeout as i32);
    assert!(
        timeout.duration_ms >= 800 && timeout.duration_ms < 5_000,
        "{timeout:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_endpoint_is_blocked_without_a_connection() {
    // A sender whose allow-list is empty: 127.0.0.1 is refused by the SSRF guard.
    let harness =
        Harness::start_with_http("sender-ssrf", &[0], |http| http.allow_addresses.clear()).await;
    let receiver = Receiver::start().await;
    harness
        .subscribe("sub_local", &receiver.url("/inside"))
        .await;
    harness.deliver("sub_local", "evt_ssrf").await;

    let attempts: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 1);
    assert_eq!(attempts.len(), 1, "blocked at once, no retry");
    assert_eq!(attempts[0].outcome, AttemptOutcome::BlockedAddress as i32);
    let letters: Vec<DeadLetter> = harness.read(&harness.names.dlq(), 1);
    assert_eq!(letters.len(), 1);
    assert_eq!(receiver.connections(), 0, "the receiver saw no connection");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_private_ca_configured_delivers_over_http2() {
    let pki = TestPki::new();
    let ca_file = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(ca_file.path(), &pki.ca_pem).expect("write the CA");
    let harness = Harness::start_with_http("sender-https-ca", &[0], |http| {
        // https only: the HTTPS path must not depend on allow_http.
        http.allow_http = false;
        http.extra_ca_file = Some(ca_file.path().to_owned());
    })
    .await;
    let receiver = Receiver::start_tls(Arc::clone(&pki.server_config)).await;
    let url = receiver.url("/tls");
    assert!(url.starts_with("https://localhost:"), "{url}");
    let secret = harness.subscribe("sub_tls", &url).await;
    let task = harness.deliver("sub_tls", "evt_tls").await;

    let received = receiver.wait_for("/tls", 1, WAIT).await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].version,
        hyper::Version::HTTP_2,
        "ALPN offers h2"
    );
    assert_eq!(received[0].body.as_ref(), task.body.as_slice());
    let headers =
        ReceivedHeaders::from_lookup(|name| received[0].headers.get(name).map(String::as_str));
    signing::verify(
        &secret,
        &headers,
        &received[0].body,
        SystemTime::now(),
        signing::DEFAULT_TOLERANCE,
    )
    .expect("the signature verifies");
    let attempts: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 1);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Success as i32);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_the_private_ca_is_a_tls_failure_and_dead_letters() {
    let pki = TestPki::new();
    let harness =
        Harness::start_with_http("sender-https-noca", &[0], |http| http.allow_http = false).await;
    let receiver = Receiver::start_tls(Arc::clone(&pki.server_config)).await;
    harness
        .subscribe("sub_untrusted", &receiver.url("/untrusted"))
        .await;
    harness.deliver("sub_untrusted", "evt_untrusted").await;

    // Attempt 1 and the immediate retry both fail the handshake; then the DLQ.
    let attempts: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 2);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(
            attempt.outcome,
            AttemptOutcome::TlsError as i32,
            "{attempt:?}"
        );
        assert!(attempt.error.contains("UnknownIssuer"), "{attempt:?}");
    }
    let letters: Vec<DeadLetter> = harness.read(&harness.names.dlq(), 1);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts.len(), 2);
    assert!(receiver.connections() >= 1, "the handshake was tried");
    assert!(
        receiver.received("/untrusted").is_empty(),
        "nothing was sent over an untrusted connection"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_tier_record_survives_a_sender_joining_and_leaving() {
    // One tier of 20 s; the record is produced straight onto it, due 12 s from now.
    let harness = Harness::start("sender-hold-rebalance", &[20], Duration::from_secs(5)).await;
    let receiver = Receiver::start().await;
    harness.subscribe("sub_held", &receiver.url("/held")).await;
    let due = SystemTime::now() + Duration::from_secs(12);
    let tier = harness.names.retry_tier("20s");
    harness
        .deliver_to(&tier, "sub_held", "evt_held", |task| {
            task.attempt = 2;
            task.not_before = Some(timestamp::from_system_time(due));
        })
        .await;

    // While the first sender holds it (its partition paused), a second one joins the group and
    // then leaves it: two rebalances. Whoever owns the partition at the due time delivers it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (second_stop, second) = harness.spawn_engine();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        receiver.received("/held").is_empty(),
        "delivered before its not_before"
    );
    second_stop.cancel();
    tokio::time::timeout(WAIT, second)
        .await
        .expect("second sender stops in time")
        .expect("second sender task")
        .expect("second sender ends cleanly");

    let received = receiver.wait_for("/held", 1, WAIT).await;
    assert_eq!(
        received.len(),
        1,
        "the held record is delivered once, not lost"
    );
    assert!(SystemTime::now() >= due, "delivered before its not_before");
    assert_eq!(received[0].headers["posternity-attempt"], "2");
    assert_eq!(
        receiver
            .wait_for("/held", 2, Duration::from_secs(2))
            .await
            .len(),
        1,
        "nothing more arrives"
    );
    harness.stop().await;
}

/// The process's Prometheus recorder (installed once per test binary), to read counters from.
fn metrics() -> PrometheusHandle {
    dispatch_telemetry::install_recorder().expect("recorder")
}

/// The sum of `dispatch_sender_produce_failures_total` for `topic` (without prefix), by reason.
fn produce_failures(handle: &PrometheusHandle, topic: &str) -> BTreeMap<String, u64> {
    let topic_label = format!("topic=\"{topic}\"");
    let mut by_reason = BTreeMap::new();
    for line in handle.render().lines() {
        let Some(rest) = line.strip_prefix("dispatch_sender_produce_failures_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.split(',').any(|label| label == topic_label) {
            continue;
        }
        let reason = labels
            .split(',')
            .find_map(|label| label.strip_prefix("reason=\""))
            .map(|reason| reason.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        *by_reason.entry(reason).or_default() += value.trim().parse::<u64>().unwrap_or(0);
    }
    by_reason
}

/// Polls `check` every 100 ms until it is true or `timeout` passed; whether it became true.
async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `len` random letters and digits: an excerpt lz4 cannot shrink under the topic's limit.
fn incompressible(len: usize) -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_record_over_the_topics_limit_is_capped_and_the_delivery_moves_on() {
    let handle = metrics();
    // dispatch.attempts takes at most 2,000 bytes a batch; the endpoint answers every request
    // with a 3,500-byte body, all of which fits the excerpt (4 KiB by default).
    let harness = Harness::start_with_topics(
        "sender-capped",
        &[0, 1],
        |_| {},
        |specs| {
            let attempts = specs
                .iter_mut()
                .find(|spec| spec.name.ends_with("dispatch.attempts"))
                .expect("attempts topic spec");
            attempts
                .configs
                .insert("max.message.bytes".to_owned(), "2000".to_owned());
        },
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.script(
        "/big",
        Script::Body {
            status: 200,
            body: incompressible(3_500),
        },
    );
    harness.subscribe("sub_big", &receiver.url("/big")).await;
    let before = produce_failures(&handle, "dispatch.attempts");
    // One after the other, so that only the first meets the limit unprepared.
    harness.deliver("sub_big", "evt_big_1").await;
    let first = read_topic(&harness.config, &harness.names.attempts(), 1, WAIT);
    assert_eq!(
        first.len(),
        1,
        "the first attempt record is written, capped: {:?} {:?}",
        produce_failures(&handle, "dispatch.attempts"),
        harness.health.report()
    );
    harness.deliver("sub_big", "evt_big_2").await;

    let received = receiver.wait_for("/big", 2, WAIT).await;
    assert_eq!(received.len(), 2);
    let records = read_expecting(
        &harness.config,
        &harness.names.attempts(),
        2,
        WAIT,
        Duration::from_secs(2),
    );
    assert_eq!(
        records.len(),
        2,
        "one attempt record per delivery, each written once"
    );
    for record in &records {
        let attempt = AttemptRecord::decode(payload(record)).expect("decodes");
        assert_eq!(attempt.outcome, AttemptOutcome::Success as i32);
        assert!(
            attempt.response_excerpt.len() < 2_000
                && attempt.response_excerpt.ends_with(TRUNCATION_MARK),
            "excerpt capped and marked: {} bytes",
            attempt.response_excerpt.len()
        );
        let truncated = record.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == HEADER_TRUNCATED)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        });
        assert_eq!(truncated.as_deref(), Some("response_excerpt"));
    }
    // The first record was refused once and capped; the second was capped before it was sent.
    let after = produce_failures(&handle, "dispatch.attempts");
    assert_eq!(
        after.get("message_too_large").copied().unwrap_or(0)
            - before.get("message_too_large").copied().unwrap_or(0),
        1,
        "one refusal counted: {after:?}"
    );
    // The deliveries' offsets are finished: the commit reaches both.
    let deliveries = harness.names.deliveries();
    assert!(
        eventually(WAIT, || {
            group_committed_total(&harness.config, &harness.group_id, &deliveries) == 2
        })
        .await,
        "both delivery offsets committed"
    );
    assert_eq!(
        receiver
            .wait_for("/big", 3, Duration::from_secs(2))
            .await
            .len(),
        2,
        "no delivery was repeated"
    );
    assert!(harness.health.is_ready(), "{:?}", harness.health.report());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_missing_topic_is_retried_counted_and_shown_until_the_topic_exists() {
    let handle = metrics();
    // dispatch.attempts is left out: every attempt record fails until it is created.
    let mut attempts_spec = None;
    let harness = Harness::start_with_topics(
        "sender-no-attempts",
        &[0, 1],
        |_| {},
        |specs| {
            let index = specs
                .iter()
                .position(|spec| spec.name.ends_with("dispatch.attempts"))
                .expect("attempts topic spec");
            attempts_spec = Some(specs.remove(index));
        },
    )
    .await;
    let attempts_spec = attempts_spec.expect("removed");
    let receiver = Receiver::start().await;
    harness
        .subscribe("sub_pinned", &receiver.url("/pinned"))
        .await;
    let before_reasons = produce_failures(&handle, "dispatch.attempts");
    let before: u64 = before_reasons.values().sum();
    harness.deliver("sub_pinned", "evt_pinned").await;
    assert_eq!(receiver.wait_for("/pinned", 1, WAIT).await.len(), 1);

    // The write keeps failing: counted, and the sender's writes are not ready, naming the topic.
    let component = dispatch_sender::READINESS_COMPONENT;
    assert!(
        eventually(Duration::from_secs(60), || {
            let failures: u64 = produce_failures(&handle, "dispatch.attempts")
                .values()
                .sum();
            let report = harness.health.report();
            let reason = report.components[component]
                .reason
                .clone()
                .unwrap_or_default();
            failures > before && !report.ready && reason.contains("dispatch.attempts")
        })
        .await,
        "failures counted and readiness down: {:?} {:?}",
        produce_failures(&handle, "dispatch.attempts"),
        harness.health.report()
    );
    // Under its own reason (or as a timeout, which is how librdkafka may report it); the
    // topic label has no prefix, so other tests of this binary count under it too.
    let missing_topic = |reasons: &BTreeMap<String, u64>| -> u64 {
        ["unknown_topic", "timed_out"]
            .iter()
            .map(|reason| reasons.get(*reason).copied().unwrap_or(0))
            .sum()
    };
    let reasons = produce_failures(&handle, "dispatch.attempts");
    assert!(
        missing_topic(&reasons) > missing_topic(&before_reasons),
        "a missing topic is counted as such: {reasons:?}"
    );
    // Nothing is given up meanwhile: the delivery's offset stays unfinished.
    let deliveries = harness.names.deliveries();
    assert_eq!(
        group_committed_total(&harness.config, &harness.group_id, &deliveries),
        0,
        "the commit does not pass a delivery whose attempt record is not written"
    );

    // The operator creates the topic: the record goes in, readiness and the commit follow.
    TopicAdmin::new(&harness.config)
        .expect("admin")
        .ensure_topics(std::slice::from_ref(&attempts_spec))
        .await
        .expect("create the attempts topic");
    assert!(
        eventually(Duration::from_secs(60), || harness.health.is_ready()).await,
        "ready again once the write went through: {:?}",
        harness.health.report()
    );
    let attempts: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 1);
    assert_eq!(attempts.len(), 1, "the attempt record is written once");
    assert_eq!(attempts[0].outcome, AttemptOutcome::Success as i32);
    assert!(
        eventually(WAIT, || {
            group_committed_total(&harness.config, &harness.group_id, &deliveries) == 1
        })
        .await,
        "the delivery's offset is committed after its record is in"
    );
    assert_eq!(
        receiver.received("/pinned").len(),
        1,
        "the webhook was not sent again: only the write was retried"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_seek_after_a_hold_never_lets_the_commit_pass_dropped_records() {
    // One tier of 20 s. Ten records land on it in one batch, all due 4 s from now: the sender
    // holds the first. Its pause fails (test seam), so the nine after it are handed over and
    // dropped, to be read again after the seek that ends the hold — and the first three of
    // those seeks fail too. (With a working pause librdkafka itself discards what it had
    // fetched, and the hole does not show.)
    let harness = Harness::start("sender-seek-fails", &[20], Duration::from_secs(5)).await;
    harness.faults.pause_failures.store(1, Ordering::SeqCst);
    harness.faults.seek_failures.store(3, Ordering::SeqCst);
    let receiver = Receiver::start().await;
    harness.subscribe("sub_seek", &receiver.url("/seek")).await;
    let tier = harness.names.retry_tier("20s");
    let due = SystemTime::now() + Duration::from_secs(4);
    let tier_task = |n: usize, not_before: SystemTime| {
        Harness::task_for("sub_seek", &format!("evt_seek_{n}"), |task| {
            task.attempt = 2;
            task.not_before = Some(timestamp::from_system_time(not_before));
        })
        .encode_to_vec()
    };
    // Enqueued together (no await in between), they share one produce batch and one fetch.
    let values: Vec<Vec<u8>> = (0..10).map(|n| tier_task(n, due)).collect();
    let sends: Vec<_> = values
        .iter()
        .map(|value| {
            harness
                .producer
                .send_result(FutureRecord::to(&tier).key("sub_seek").payload(value))
                .map_err(|(error, _)| error)
                .expect("enqueue")
        })
        .collect();
    for send in sends {
        send.await.expect("delivery report").expect("produced");
    }

    // Once the held record went out, one more record that is due at once follows the ten.
    // (How many of the nine behind it arrived by the time this looks is a race — they are due
    // too and follow within milliseconds — so only the held one's arrival is waited for.)
    let first = receiver.wait_for("/seek", 1, WAIT).await;
    assert!(
        first
            .iter()
            .any(|request| request.headers["webhook-id"] == "evt_seek_0"),
        "the held record goes out first or with the ones behind it"
    );
    harness
        .deliver_to(&tier, "sub_seek", "evt_seek_10", |task| {
            task.attempt = 2;
            task.not_before = Some(timestamp::from_system_time(SystemTime::now()));
        })
        .await;

    // Until every record arrived, the committed offset never passes one that did not.
    let delivered = |receiver: &Receiver| -> BTreeSet<usize> {
        receiver
            .received("/seek")
            .iter()
            .filter_map(|request| {
                request.headers["webhook-id"]
                    .strip_prefix("evt_seek_")?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Committed first: a record is committed only after it arrived, so whatever the commit
        // covers at this read has arrived by the next one (read the other way round, deliveries
        // made between the two reads look like a commit passing them).
        let committed = group_committed_total(&harness.config, &harness.group_id, &tier);
        let arrived = delivered(&receiver);
        let first_missing = (0..=10).find(|n| !arrived.contains(n)).unwrap_or(11);
        assert!(
            committed <= first_missing as i64,
            "committed offset {committed} passes record {first_missing}, not delivered yet (delivered: {arrived:?})"
        );
        if first_missing == 11 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never delivered: delivered only {arrived:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        (
            harness.faults.pause_failures.load(Ordering::SeqCst),
            harness.faults.seek_failures.load(Ordering::SeqCst)
        ),
        (0, 0),
        "the injected failures were all met"
    );
    assert!(
        eventually(WAIT, || group_committed_total(
            &harness.config,
            &harness.group_id,
            &tier
        ) == 11)
        .await,
        "everything committed in the end"
    );
    assert_eq!(
        receiver
            .wait_for("/seek", 12, Duration::from_secs(2))
            .await
            .len(),
        11,
        "each record delivered once"
    );
    harness.stop().await;
}

/// Outcome of a decoded attempt record.
fn outcome_of(record: &AttemptRecord) -> AttemptOutcome {
    AttemptOutcome::try_from(record.outcome).unwrap_or(AttemptOutcome::Unspecified)
}

/// Issue 12, item 8: the retry schedule holds while the circuit is open. Before the fix, open
/// circuits deferred deliveries through the first tier without spending attempts, and none of
/// 9 deliveries was dead-lettered after 90 s; now each is a dead letter with the schedule's six
/// attempt records, the ones that fell due while the circuit was open recorded as not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_spends_the_schedule_and_every_delivery_dead_letters() {
    let delays = [0, 1, 2, 3, 4];
    let harness = Harness::start_configured(
        "sender-circuit",
        &delays,
        |_| {},
        |sender| {
            sender.endpoint.failure_threshold = 2;
            // Longer than the whole test: once open, the circuit stays open.
            sender.endpoint.cool_down_ms = 600_000;
            sender.endpoint.max_cool_down_ms = 600_000;
        },
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.script("/dead", Script::status(500));
    harness.subscribe("sub_dead", &receiver.url("/dead")).await;
    let deliveries = 9;
    for index in 0..deliveries {
        harness
            .deliver("sub_dead", &format!("evt_dead_{index}"))
            .await;
    }
    let attempts_each = delays.len() + 1;
    // Generous: the schedule itself takes 10 s; polled, not timed.
    let letters: Vec<DeadLetter> = read_expecting(
        &harness.config,
        &harness.names.dlq(),
        deliveries,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .iter()
    .map(|record| DeadLetter::decode(payload(record)).expect("decodes"))
    .collect();
    assert_eq!(
        letters.len(),
        deliveries,
        "every delivery to the dead endpoint is a dead letter"
    );
    for letter in &letters {
        assert_eq!(
            letter.attempts.len(),
            attempts_each,
            "the dead letter holds the schedule's attempts: {letter:?}"
        );
        let numbers: Vec<u32> = letter.attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, (1..=attempts_each as u32).collect::<Vec<_>>());
        assert!(
            letter.reason.contains("all 6 attempts failed"),
            "{}",
            letter.reason
        );
    }
    let records: Vec<AttemptRecord> =
        harness.read(&harness.names.attempts(), deliveries * attempts_each);
    assert_eq!(records.len(), deliveries * attempts_each);
    let not_sent = records
        .iter()
        .filter(|r| outcome_of(r) == AttemptOutcome::CircuitOpen)
        .count();
    let sent = records
        .iter()
        .filter(|r| outcome_of(r) == AttemptOutcome::HttpStatus)
        .count();
    assert_eq!(not_sent + sent, records.len());
    assert!(not_sent > 0, "the circuit opened");
    assert_eq!(
        receiver.received("/dead").len(),
        sent,
        "nothing is sent while the circuit is open"
    );
    for record in records
        .iter()
        .filter(|r| outcome_of(r) == AttemptOutcome::CircuitOpen)
    {
        assert_eq!(record.status_code, 0);
        assert!(record.error.contains("circuit open"), "{}", record.error);
    }
    harness.stop().await;
}

/// Issue 13, item 6: a burst to an endpoint that keeps up waits in memory past its backlog,
/// paced by back-pressure; before, everything past `max_backlog` was parked on the first tier
/// (here 20 s) with reason `backlog`, and a pipeline's burst took minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_an_endpoint_that_keeps_up_is_paced_not_deferred() {
    let harness = Harness::start_configured(
        "sender-burst",
        &[20],
        |_| {},
        |sender| {
            sender.endpoint.max_backlog = 5;
        },
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.script(
        "/steady",
        Script::Respond {
            status: 200,
            headers: Vec::new(),
            delay: Duration::from_millis(5),
        },
    );
    harness
        .subscribe_with("sub_burst", &receiver.url("/steady"), |s| {
            s.max_in_flight = 1
        })
        .await;
    let deliveries = 200;
    for index in 0..deliveries {
        harness
            .deliver("sub_burst", &format!("evt_burst_{index}"))
            .await;
    }
    // One request at a time of ~5 ms: 200 take a few seconds, well inside the 20 s tier.
    let received = receiver
        .wait_for("/steady", deliveries, Duration::from_secs(15))
        .await;
    assert_eq!(received.len(), deliveries, "every delivery arrives");
    assert_eq!(
        dispatch_e2e::record_count(&harness.config, &harness.names.retry_tier("20s")),
        0,
        "nothing was parked on the tier"
    );
    harness.stop().await;
}

/// Issue 13, item 6: what is still deferred — a hanging endpoint's deliveries past its backlog,
/// once a second busy without an answer measured its pace (so it cannot fill its partition's
/// uncommitted window and hold up the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoints_deliveries_past_its_backlog_are_deferred() {
    let harness = Harness::start_configured(
        "sender-slow",
        &[20],
        |http| {
            http.timeout_ms = 20_000;
        },
        |sender| {
            sender.endpoint.max_backlog = 5;
        },
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.script("/hang", Script::Hang);
    harness
        .subscribe_with("sub_hang", &receiver.url("/hang"), |s| s.max_in_flight = 1)
        .await;
    harness.deliver("sub_hang", "evt_hang_first").await;
    receiver.wait_for("/hang", 1, WAIT).await;
    // A second busy without a completion: its pace is measured as 0.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for index in 0..10 {
        // Made now (the harness's tasks say 1970, which a deferral dead-letters as too old).
        harness
            .deliver_to(
                &harness.names.deliveries(),
                "sub_hang",
                &format!("evt_hang_{index}"),
                |task| task.created_at = Some(timestamp::from_system_time(SystemTime::now())),
            )
            .await;
    }
    // Five fill the backlog behind the one in flight; the other five are parked.
    let tier = harness.names.retry_tier("20s");
    let deadline = std::time::Instant::now() + WAIT;
    while dispatch_e2e::record_count(&harness.config, &tier) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "deliveries past a hanging endpoint's backlog were not deferred"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dispatch_e2e::record_count(&harness.config, &tier), 5);
    assert_eq!(receiver.received("/hang").len(), 1, "max_in_flight 1");
    harness.stop().await;
}

/// Issue 12, item 5: with no delay tier to defer to, a full backlog keeps the task in memory;
/// before the fix it was dropped and its offset never finished (so nothing after it was ever
/// committed either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_without_tiers_loses_nothing() {
    let harness = Harness::start_configured(
        "sender-notier",
        &[],
        |_| {},
        |sender| {
            sender.endpoint.max_backlog = 1;
        },
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.script(
        "/slow",
        Script::Respond {
            status: 200,
            headers: Vec::new(),
            delay: Duration::from_millis(300),
        },
    );
    harness
        .subscribe_with("sub_notier", &receiver.url("/slow"), |s| {
            s.max_in_flight = 1
        })
        .await;
    let deliveries = 6;
    for index in 0..deliveries {
        harness
            .deliver("sub_notier", &format!("evt_notier_{index}"))
            .await;
    }
    let received = receiver.wait_for("/slow", deliveries, WAIT).await;
    assert_eq!(received.len(), deliveries, "every delivery arrives");
    // And every offset is finished: the committed position reaches the end.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let committed = dispatch_e2e::group_committed_total(
            &harness.config,
            &harness.group_id,
            &harness.names.deliveries(),
        );
        if committed == deliveries as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed {committed} of {deliveries}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness.stop().await;
}

/// Issue 12, item 5: a task whose subscription is deleted while it waits in its endpoint's
/// queue ends with an attempt record `SKIPPED` (before the fix it left none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_deleted_while_queued_leaves_a_skipped_record() {
    let harness = Harness::start("sender-deleted", &[], Duration::from_secs(8)).await;
    let receiver = Receiver::start().await;
    receiver.script("/hang", Script::Hang);
    harness
        .subscribe_with("sub_deleted", &receiver.url("/hang"), |s| {
            s.max_in_flight = 1
        })
        .await;
    let first = harness.deliver("sub_deleted", "evt_first").await;
    let queued = harness.deliver("sub_deleted", "evt_queued").await;
    // The first hangs (until the 8 s timeout); the second waits in the queue behind it.
    receiver.wait_for("/hang", 1, WAIT).await;
    let offset = harness.writer.delete("sub_deleted").await.expect("delete");
    harness
        .view
        .wait_for_offset(offset, WAIT)
        .await
        .expect("view has the deletion");
    let records: Vec<AttemptRecord> = harness.read(&harness.names.attempts(), 2);
    assert_eq!(records.len(), 2, "{records:?}");
    let skipped = records
        .iter()
        .find(|r| r.delivery_id == queued.delivery_id)
        .expect("the queued delivery has a record");
    assert_eq!(outcome_of(skipped), AttemptOutcome::Skipped);
    assert!(skipped.error.contains("deleted"), "{}", skipped.error);
    assert!(matches!(
        skipped.next_action.as_ref().and_then(|a| a.action.as_ref()),
        Some(Action::Done(_))
    ));
    let timed_out = records
        .iter()
        .find(|r| r.delivery_id == first.delivery_id)
        .expect("the first delivery has a record");
    assert_eq!(outcome_of(timed_out), AttemptOutcome::Timeout);
    assert_eq!(
        receiver.received("/hang").len(),
        1,
        "the queued one was not sent"
    );
    harness.stop().await;
}

/// Issue 12, item 6: account A's 50 hanging endpoints, each at its `max_in_flight`, want more
/// requests than the sender has permits; account B's healthy deliveries still all arrive while
/// A's requests hang (before the fix, A held every permit until its requests timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_hanging_endpoints_does_not_starve_another() {
    let harness = Harness::start_configured(
        "sender-fair",
        &[60],
        |http| {
            // Longer than the test: A's requests hang for its whole length.
            http.timeout_ms = 120_000;
        },
        |sender| {
            sender.max_concurrent_requests = 40;
            sender.drain_timeout_ms = 1_000;
        },
    )
    .await;
    let receiver = Receiver::start().await;
    let hanging_endpoints = 50;
    let a_max_in_flight = 4;
    for endpoint in 0..hanging_endpoints {
        let path = format!("/a/{endpoint}");
        receiver.script(&path, Script::Hang);
        harness
            .subscribe_with(&format!("sub_a_{endpoint}"), &receiver.url(&path), |s| {
                s.account_id = "acc_a".into();
                s.max_in_flight = a_max_in_flight;
            })
            .await;
    }
    for endpoint in 0..4 {
        harness
            .subscribe_with(
                &format!("sub_b_{endpoint}"),
                &receiver.url(&format!("/b/{endpoint}")),
                |s| s.account_id = "acc_b".into(),
            )
            .await;
    }
    // A first: every one of its endpoints at its maximum, 200 requests wanted for 40 permits.
    for endpoint in 0..hanging_endpoints {
        for index in 0..a_max_in_flight {
            harness
                .deliver_for(
                    "acc_a",
                    &format!("sub_a_{endpoint}"),
                    &format!("evt_a_{endpoint}_{index}"),
                )
                .await;
        }
    }
    let per_b_endpoint = 25;
    for index in 0..per_b_endpoint {
        for endpoint in 0..4 {
            harness
                .deliver_for(
                    "acc_b",
                    &format!("sub_b_{endpoint}"),
                    &format!("evt_b_{endpoint}_{index}"),
                )
                .await;
        }
    }
    for endpoint in 0..4 {
        let path = format!("/b/{endpoint}");
        let received = receiver.wait_for(&path, per_b_endpoint, WAIT).await;
        assert_eq!(
            received.len(),
            per_b_endpoint,
            "account B's endpoint {endpoint} was starved by account A"
        );
    }
    let a_hanging: usize = (0..hanging_endpoints)
        .map(|endpoint| receiver.received(&format!("/a/{endpoint}")).len())
        .sum();
    assert!(
        a_hanging <= 20,
        "account A holds at most its share (50 % of 40 permits), held {a_hanging}"
    );
    harness.stop().await;
}
