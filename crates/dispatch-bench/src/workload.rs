//! The workload: 200 subscriptions over 50 accounts (four each) on the receiver fleet, 1 KiB
//! image events that each match exactly three of their account's subscriptions, and a publisher
//! that writes them to the domain topic at a fixed rate or flat out, remembering which events
//! the broker acknowledged (only those are owed to receivers). Optionally a fraction of garbage
//! records, which the fan-out must quarantine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatch_core::catalog::Family;
use dispatch_core::signing::SigningSecret;
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::TopicNames;
use dispatch_proto::dispatch::v1::{AttributeValues, SigningSecret as SecretRecord, Subscription};
use dispatch_proto::events::v1::event::Payload;
use dispatch_proto::events::v1::{Asset, Event, ImageGenerationCompleted, ImageGenerationStarted};
use dispatch_proto::prost::Message as _;
use dispatch_proto::wkt::Timestamp;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Mutex;

/// Accounts of the workload.
pub const ACCOUNTS: usize = 50;
/// Subscriptions per account.
pub const PER_ACCOUNT: usize = 4;
/// Subscriptions (and receiver endpoints) in all.
pub const ENDPOINTS: usize = ACCOUNTS * PER_ACCOUNT;
/// Subscriptions each event matches.
pub const FAN_OUT: usize = 3;
/// Size of the prompt that makes an event's protobuf about 1 KiB.
const PROMPT_BYTES: usize = 900;

/// Subscription id of endpoint `endpoint`.
pub fn subscription_id(endpoint: usize) -> String {
    format!("sub_{endpoint:03}")
}

/// The endpoint of a subscription id written by [`subscription_id`].
pub fn endpoint_of(subscription_id: &str) -> Option<usize> {
    subscription_id.strip_prefix("sub_")?.parse().ok()
}

/// Event id of event `seq` of run `run`.
pub fn event_id(run: &str, seq: u64) -> String {
    format!("evt_{run}_{seq:010}")
}

/// The sequence number in an event id written by [`event_id`].
pub fn seq_of(event_id: &str) -> Option<u64> {
    event_id.rsplit('_').next()?.parse().ok()
}

/// The endpoints event `seq` is owed to. Even events are `image.generation.started` (slots 0,
/// 1, 2 of their account), odd ones `image.generation.completed` (slots 1, 2, 3), so every
/// endpoint receives and each event fans out to three.
pub fn endpoints_of(seq: u64) -> [usize; FAN_OUT] {
    let account = (seq as usize) % ACCOUNTS;
    let base = account * PER_ACCOUNT;
    if seq.is_multiple_of(2) {
        [base, base + 1, base + 2]
    } else {
        [base + 1, base + 2, base + 3]
    }
}

/// Accounts a burst's events belong to (see [`burst_seqs`]): ten, whose first three
/// subscriptions all match `image.generation.started`, so a burst reaches 30 endpoints and
/// fans out to three of them per event.
pub const BURST_ACCOUNTS: usize = 10;

/// Sequence numbers of a burst of `count` events, none below `from`. Only even numbers (so
/// every event is `image.generation.started`) of the first [`BURST_ACCOUNTS`] even accounts, in
/// turn: the sequence number alone still says where an event is owed ([`endpoints_of`]), so
/// the ledger and the receivers need nothing else.
pub fn burst_seqs(from: u64, count: usize) -> Vec<u64> {
    let block = ACCOUNTS as u64;
    let first = from.div_ceil(block) * block;
    (0..count as u64)
        .map(|i| {
            let round = i / BURST_ACCOUNTS as u64;
            let account = 2 * (i % BURST_ACCOUNTS as u64);
            first + round * block + account
        })
        .collect()
}

/// The endpoints a burst reaches, ascending.
pub fn burst_endpoints() -> Vec<usize> {
    let mut endpoints: Vec<usize> = burst_seqs(0, BURST_ACCOUNTS)
        .into_iter()
        .flat_map(endpoints_of)
        .collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    endpoints
}

/// The 200 subscriptions, endpoint `n` at `urls[n]`, with fresh secrets.
pub fn subscriptions(urls: &[String]) -> Vec<(Subscription, SigningSecret)> {
    let mut rng = rand::rng();
    (0..ENDPOINTS)
        .map(|endpoint| {
            let account = endpoint / PER_ACCOUNT;
            let (patterns, filter): (&[&str], Option<&str>) = match endpoint % PER_ACCOUNT {
                0 => (&["image.generation.started"], None),
                1 => (&["image.*.*"], None),
                2 => (&["image.**"], Some("cli_bench")),
                _ => (&["image.generation.completed"], None),
            };
            let secret = SigningSecret::generate(&mut rng);
            let subscription = Subscription {
                id: subscription_id(endpoint),
                account_id: format!("acc_{account:03}"),
                url: urls[endpoint].clone(),
                event_types: patterns.iter().map(|p| (*p).to_owned()).collect(),
                filter: filter
                    .map(|client| {
                        [(
                            "client_id".to_owned(),
                            AttributeValues {
                                values: vec![client.to_owned()],
                            },
                        )]
                        .into()
                    })
                    .unwrap_or_default(),
                secrets: vec![SecretRecord {
                    secret: secret.as_str().to_owned(),
                    created_at: None,
                    expires_at: None,
                }],
                enabled: true,
                version: 1,
                ..Subscription::default()
            };
            (subscription, secret)
        })
        .collect()
}

/// Writes the subscriptions to the run's subscriptions topic.
pub async fn write_subscriptions(
    config: &KafkaConfig,
    subscriptions: &[(Subscription, SigningSecret)],
) -> anyhow::Result<()> {
    let writer = SubscriptionWriter::new(config)?;
    for (subscription, _) in subscriptions {
        writer.put(subscription).await?;
    }
    Ok(())
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn now_millis_timestamp() -> Timestamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Millisecond precision: the rendered body's `created_at` has no more, so the receiver's
    // latency is exact to the millisecond instead of biased by the truncation.
    Timestamp {
        seconds: now.as_secs() as i64,
        nanos: (now.subsec_millis() * 1_000_000) as i32,
    }
}

/// Event `seq` of run `run`, occurred now, about 1 KiB as protobuf.
pub fn event(run: &str, seq: u64, prompt: &str) -> Event {
    let payload = if seq.is_multiple_of(2) {
        Payload::ImageGenerationStarted(ImageGenerationStarted {
            generation_id: format!("gen_{seq}"),
            project_id: "prj_bench".into(),
            model: "posternity-image-3".into(),
            prompt: prompt.to_owned(),
            image_count: 4,
        })
    } else {
        Payload::ImageGenerationCompleted(ImageGenerationCompleted {
            generation_id: format!("gen_{seq}"),
            project_id: "prj_bench".into(),
            model: "posternity-image-3".into(),
            images: vec![Asset {
                url: format!("https://cdn.posternity.example/{prompt}"),
                ..Asset::default()
            }],
            duration_ms: 1234,
        })
    };
    Event {
        id: event_id(run, seq),
        r#type: if seq.is_multiple_of(2) {
            "image.generation.started"
        } else {
            "image.generation.completed"
        }
        .into(),
        account_id: format!("acc_{:03}", (seq as usize) % ACCOUNTS),
        occurred_at: Some(now_millis_timestamp()),
        region: "eu-west".into(),
        attributes: [("client_id".to_owned(), "cli_bench".to_owned())].into(),
        payload: Some(payload),
    }
}

/// How fast the publisher goes.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many events per second.
    Rate(u64),
    /// As fast as the broker takes them, but never more than `max_ahead` events beyond what
    /// `delivered / FAN_OUT` says the system finished (keeps pressure without a useless backlog).
    FlatOut {
        /// Most events published but not yet delivered.
        max_ahead: u64,
    },
}

/// What a publisher did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Sequence numbers of the events the broker acknowledged.
    pub acked: Vec<u64>,
    /// Events the broker refused for good (not owed to anyone).
    pub failed: u64,
    /// Garbage records acknowledged (owed to `dispatch.invalid`).
    pub garbage: u64,
}

/// What [`Publisher::publish_burst`] did.
#[derive(Debug, Clone, Default)]
pub struct BurstPublished {
    /// Each event's sequence number and its `occurred_at` (the moment it was handed to the
    /// producer), in Unix microseconds at millisecond precision, in publishing order.
    pub events: Vec<(u64, u64)>,
    /// Sequence numbers of the events the broker acknowledged.
    pub acked: Vec<u64>,
    /// Events the broker refused for good.
    pub failed: u64,
    /// Unix microseconds just before the first event was handed to the producer.
    pub started_unix_us: u64,
    /// From the first event handed to the producer until the last one was.
    pub enqueued: Duration,
    /// From the first event handed to the producer until the broker acknowledged the last.
    pub acknowledged: Duration,
}

/// Publishes the run's events to the image domain topic.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    run: String,
    prompt: String,
    next_seq: AtomicU64,
    published: Mutex<Published>,
    /// Each event's sequence number and `occurred_at` ([`occurred_at_us`]), in publishing order.
    occurred: std::sync::Mutex<Vec<(u64, u64)>>,
}

/// An event's `occurred_at` in Unix microseconds (millisecond precision: see
/// `now_millis_timestamp`), 0 when it has none.
fn occurred_at_us(event: &Event) -> u64 {
    event
        .occurred_at
        .as_ref()
        .map_or(0, |t| t.seconds as u64 * 1_000_000 + t.nanos as u64 / 1_000)
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("run", &self.run)
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for run `run` (event ids `evt_<run>_<seq>`).
    pub fn new(config: &KafkaConfig, names: &TopicNames, run: &str) -> anyhow::Result<Self> {
        let producer: FutureProducer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            // Rides through a broker restart: a record is retried for five minutes.
            .set("message.timeout.ms", "300000")
            .create()?;
        let topic = names
            .domain(Family::Image)
            .ok_or_else(|| anyhow::anyhow!("no image domain topic"))?;
        Ok(Publisher {
            producer,
            topic,
            run: run.to_owned(),
            prompt: "p".repeat(PROMPT_BYTES),
            next_seq: AtomicU64::new(0),
            published: Mutex::new(Published::default()),
            occurred: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// When each event handed to the producer so far occurred (its `occurred_at`, Unix
    /// microseconds): what latency at a receiver that measures none itself (nginx) is counted
    /// from.
    pub fn occurred_us(&self) -> HashMap<u64, u64> {
        self.occurred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    fn remember_occurred(&self, events: &mut Vec<(u64, u64)>) {
        self.occurred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(events);
    }

    /// Events handed to the producer so far (acknowledged or not).
    pub fn sent(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Publishes at `pace` until `duration` passed or `stop` is set; one in
    /// `garbage_one_in` records (0: none) is an undecodable record instead of an event.
    /// `delivered` (webhooks accepted so far) paces [`Pace::FlatOut`]. Waits for every
    /// acknowledgement.
    pub async fn run(
        &self,
        pace: Pace,
        duration: Duration,
        garbage_one_in: u64,
        delivered: &(dyn Fn() -> u64 + Send + Sync),
        stop: &AtomicBool,
    ) {
        let started = Instant::now();
        let first_seq = self.sent();
        let mut in_flight = FuturesUnordered::new();
        let mut garbage_serial = 0u64;
        let mut occurred = Vec::new();
        while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            let budget = match pace {
                Pace::Rate(rate) => {
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    due.saturating_sub(self.sent() - first_seq)
                }
                Pace::FlatOut { max_ahead } => {
                    let done = delivered() / FAN_OUT as u64;
                    (done + max_ahead).saturating_sub(self.sent()).min(2_000)
                }
            };
            for _ in 0..budget {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                let garbage = garbage_one_in > 0 && seq % garbage_one_in == garbage_one_in - 1;
                let (key, value) = if garbage {
                    garbage_serial += 1;
                    // Not protobuf of an Event: a wire type the decoder refuses.
                    (
                        format!("garbage-{garbage_serial}"),
                        format!("\u{7}not an event #{garbage_serial}").into_bytes(),
                    )
                } else {
                    let event = event(&self.run, seq, &self.prompt);
                    occurred.push((seq, occurred_at_us(&event)));
                    (event.account_id.clone(), event.encode_to_vec())
                };
                let producer = self.producer.clone();
                let topic = self.topic.clone();
                in_flight.push(async move {
                    let outcome = producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&value),
                            Timeout::Never,
                        )
                        .await;
                    (seq, garbage, outcome.is_ok())
                });
                // Bounded memory: wait for acknowledgements when too many are pending.
                while in_flight.len() >= 20_000 {
                    if let Some(done) = in_flight.next().await {
                        self.record(done).await;
                    }
                }
            }
            self.remember_occurred(&mut occurred);
            // Collect what finished meanwhile, then wait for the next tick.
            let tick = tokio::time::sleep(Duration::from_millis(5));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => self.record(done).await,
                    () = &mut tick => break,
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            self.record(done).await;
        }
    }

    /// Publishes a burst of `count` events ([`burst_seqs`]) as fast as the producer takes
    /// them, the way a pipeline that finished a batch does: every event goes into the
    /// producer's queue before any acknowledgement is awaited. Returns once the broker answered
    /// for each.
    pub async fn publish_burst(&self, count: usize) -> BurstPublished {
        let seqs = burst_seqs(self.sent(), count);
        if let Some(&last) = seqs.last() {
            // Later publishing continues after the burst, never reusing one of its numbers.
            self.next_seq.fetch_max(last + 1, Ordering::Relaxed);
        }
        let mut burst = BurstPublished {
            events: Vec::with_capacity(seqs.len()),
            started_unix_us: unix_micros(),
            ..BurstPublished::default()
        };
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(seqs.len());
        for &seq in &seqs {
            let event = event(&self.run, seq, &self.prompt);
            let occurred_us = occurred_at_us(&event);
            let value = event.encode_to_vec();
            let mut record = FutureRecord::to(&self.topic)
                .key(&event.account_id)
                .payload(&value);
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break Some(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The producer's queue is full: let its thread hand some to the broker.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => break None,
                }
            };
            burst.events.push((seq, occurred_us));
            deliveries.push((seq, delivery));
            if deliveries.len().is_multiple_of(1_000) {
                // The loop never waits otherwise; the bench's receivers share these threads.
                tokio::task::yield_now().await;
            }
        }
        burst.enqueued = started.elapsed();
        self.remember_occurred(&mut burst.events.clone());
        for (seq, delivery) in deliveries {
            let acked = match delivery {
                Some(delivery) => matches!(delivery.await, Ok(Ok(_))),
                None => false,
            };
            if acked {
                burst.acked.push(seq);
            } else {
                burst.failed += 1;
            }
        }
        burst.acknowledged = started.elapsed();
        // The harness's ledger and waits go by what was published, the burst included.
        let mut published = self.published.lock().await;
        published.acked.extend_from_slice(&burst.acked);
        published.failed += burst.failed;
        burst
    }

    async fn record(&self, (seq, garbage, acked): (u64, bool, bool)) {
        let mut published = self.published.lock().await;
        match (garbage, acked) {
            (true, true) => published.garbage += 1,
            (true, false) => {}
            (false, true) => published.acked.push(seq),
            (false, false) => published.failed += 1,
        }
    }

    /// What was published so far.
    pub async fn published(&self) -> Published {
        self.published.lock().await.clone()
    }
}

/// The URL of endpoint `endpoint` when the endpoints are spread over `listeners` (host:port) in
/// turn — the one layout the bench's fleet and nginx share.
pub fn endpoint_url(listeners: &[std::net::SocketAddr], endpoint: usize) -> String {
    format!(
        "http://{}/e/{endpoint}",
        listeners[endpoint % listeners.len()]
    )
}

/// Every endpoint's URL over `listeners`, in order (see [`endpoint_url`]).
pub fn endpoint_urls(listeners: &[std::net::SocketAddr]) -> Vec<String> {
    (0..ENDPOINTS)
        .map(|endpoint| endpoint_url(listeners, endpoint))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_reaches_thirty_endpoints_three_per_event_evenly() {
        let seqs = burst_seqs(7, 6_000);
        assert_eq!(seqs.len(), 6_000);
        assert!(seqs[0] >= 7, "{}", seqs[0]);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "ascending, no repeats"
        );
        let mut per_endpoint = [0usize; ENDPOINTS];
        for &seq in &seqs {
            assert!(
                seq.is_multiple_of(2),
                "{seq} is not image.generation.started"
            );
            for endpoint in endpoints_of(seq) {
                per_endpoint[endpoint] += 1;
            }
        }
        let reached: Vec<usize> = (0..ENDPOINTS).filter(|&e| per_endpoint[e] > 0).collect();
        assert_eq!(reached, burst_endpoints());
        assert_eq!(reached.len(), 30);
        assert!(
            reached
                .iter()
                .all(|&e| per_endpoint[e] == 6_000 * FAN_OUT / 30)
        );
    }

    #[test]
    fn every_burst_endpoint_subscribes_to_the_burst_type() {
        let urls: Vec<String> = (0..ENDPOINTS).map(|e| format!("http://x/e/{e}")).collect();
        let subscriptions = subscriptions(&urls);
        for endpoint in burst_endpoints() {
            let patterns = &subscriptions[endpoint].0.event_types;
            assert!(
                patterns
                    .iter()
                    .any(|p| ["image.generation.started", "image.*.*", "image.**"]
                        .contains(&p.as_str())),
                "{endpoint}: {patterns:?}"
            );
        }
    }
}
