//! This machine's limits — raw hyper requests/s on loopback and raw produce→consume messages/s
//! through the broker — so benchmark results can be stated as a fraction of them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::topics::{TopicSettings, TopicSpec};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use rand::distr::Alphanumeric;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Concurrent keep-alive connections of the HTTP measurement in [`measure`].
pub const HTTP_CONNECTIONS: usize = 64;
/// Size of every HTTP request body and every Kafka record value.
pub const PAYLOAD_BYTES: usize = 1024;

/// Room beyond the measured duration for the last requests to finish and the connections to
/// close; a request still open after it means the server hangs.
const HTTP_GRACE: Duration = Duration::from_secs(10);
/// Distinct record keys, like the accounts of the system's events: they spread the records over
/// the partitions.
const KAFKA_KEYS: usize = 1000;
/// Deliveries awaited at most at once; far below librdkafka's queue
/// (`queue.buffering.max.messages`), so the producer is never refused for a full queue in normal
/// operation, and memory stays bounded whatever the message count.
const MAX_IN_FLIGHT: usize = 50_000;
/// Random characters the record values are cut from. Larger than lz4's 64 KiB window, and values
/// are cut at a stride that does not repeat within it, so compression gains next to nothing, as
/// for distinct real events.
const PAYLOAD_POOL_BYTES: usize = 1 << 20;
/// How often the consumer checks for the end and the stop flag while nothing arrives.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The machine's limits, as measured by [`measure`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    /// Raw hyper HTTP/1.1 client→server requests per second on loopback (small POST ~1 KiB
    /// body, 200 OK), many keep-alive connections in parallel.
    pub http_requests_per_second: f64,
    /// Raw produce→consume messages per second through the broker (1 KiB messages, acks=all,
    /// idempotent producer as the system uses), measured from the first produce to the last
    /// message consumed.
    pub kafka_messages_per_second: f64,
    /// How long the HTTP measurement ran, in seconds.
    pub http_seconds: f64,
    /// How many messages the Kafka measurement sent through the broker.
    pub kafka_messages: usize,
}

/// Measures both limits, HTTP first, and prints one line for each to stderr. The Kafka topic
/// gets the partition count of the system's domain topics.
pub async fn measure(
    config: &KafkaConfig,
    prefix: &str,
    http_duration: Duration,
    kafka_messages: usize,
) -> anyhow::Result<Limits> {
    let http_requests_per_second = http_limit(http_duration, HTTP_CONNECTIONS).await?;
    eprintln!(
        "baseline: HTTP/1.1 on loopback: {http_requests_per_second:.0} requests/s \
         ({HTTP_CONNECTIONS} keep-alive connections for {:.1} s, 1 KiB POSTs, client and server \
         in this process)",
        http_duration.as_secs_f64()
    );
    let partitions = TopicSettings::default().domain_partitions;
    let kafka_messages_per_second = kafka_limit(config, prefix, kafka_messages, partitions).await?;
    eprintln!(
        "baseline: Kafka produce→consume: {kafka_messages_per_second:.0} messages/s \
         ({kafka_messages} × 1 KiB, {partitions} partitions, acks=all, idempotent, lz4)"
    );
    Ok(Limits {
        http_requests_per_second,
        kafka_messages_per_second,
        http_seconds: http_duration.as_secs_f64(),
        kafka_messages,
    })
}

/// HTTP limit: a hyper server (hyper 1 + hyper-util, http1, one tokio task per connection) on
/// 127.0.0.1:0 and a hyper client (a raw http1 handshake per connection) sending `connections`
/// concurrent streams of POSTs for `duration`. Returns completed requests per second.
pub async fn http_limit(duration: Duration, connections: usize) -> anyhow::Result<f64> {
    let run = http_run(duration, connections).await?;
    ensure!(
        run.handled == run.completed,
        "HTTP baseline: the server answered {} requests but the clients completed {}",
        run.handled,
        run.completed
    );
    Ok(run.completed as f64 / run.elapsed.as_secs_f64())
}

/// What one HTTP measurement saw on both sides.
#[derive(Debug)]
struct HttpRun {
    /// Requests the clients completed with a 200 and a read body.
    completed: u64,
    /// Requests the server answered with a 200.
    handled: u64,
    /// From the first request to the end of the last.
    elapsed: Duration,
}

/// Stops the server's accept loop, and with it every connection task, when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_run(duration: Duration, connections: usize) -> anyhow::Result<HttpRun> {
    ensure!(
        connections > 0,
        "the HTTP baseline needs at least one connection"
    );
    ensure!(
        !duration.is_zero(),
        "the HTTP baseline needs a positive duration"
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the baseline HTTP server")?;
    let addr = listener.local_addr()?;
    let handled = Arc::new(AtomicU64::new(0));
    let _server = AbortOnDrop(tokio::spawn(serve(listener, Arc::clone(&handled))));

    // Connect everything first, so the measured time holds requests only.
    let mut connecting = JoinSet::new();
    for _ in 0..connections {
        connecting.spawn(connect(addr));
    }
    let mut clients = Vec::with_capacity(connections);
    while let Some(client) = connecting.join_next().await {
        clients.push(client??);
    }

    let body = Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
    let started = Instant::now();
    let deadline = started + duration;
    let mut streams = JoinSet::new();
    for (sender, connection) in clients {
        streams.spawn(post_until(sender, connection, addr, body.clone(), deadline));
    }
    let completed = tokio::time::timeout(duration + HTTP_GRACE, async {
        let mut completed = 0;
        while let Some(stream) = streams.join_next().await {
            completed += stream??;
        }
        anyhow::Ok(completed)
    })
    .await
    .map_err(|_| anyhow!("HTTP baseline: requests still open {HTTP_GRACE:?} after the end"))??;
    let elapsed = started.elapsed();
    Ok(HttpRun {
        completed,
        handled: handled.load(Ordering::Relaxed),
        elapsed,
    })
}

/// The server: answers every POST whose body has the expected size with 200 and counts it.
async fn serve(listener: TcpListener, handled: Arc<AtomicU64>) {
    // Owned here, so aborting this task aborts the connection tasks too.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "baseline HTTP server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handled = Arc::clone(&handled);
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let handled = Arc::clone(&handled);
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let status = if body.len() == PAYLOAD_BYTES {
                        handled.fetch_add(1, Ordering::Relaxed);
                        StatusCode::OK
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    *response.status_mut() = status;
                    Ok::<_, hyper::Error>(response)
                }
            });
            let _ = server_http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One client connection: its request handle and the task driving it.
async fn connect(addr: SocketAddr) -> anyhow::Result<(Sender, JoinHandle<()>)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the baseline HTTP server at {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake with the baseline server")?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, connection))
}

/// Sends POSTs one after another on one connection until `deadline`; returns how many completed.
async fn post_until(
    mut sender: Sender,
    connection: JoinHandle<()>,
    addr: SocketAddr,
    body: Bytes,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let host = addr.to_string();
    let mut completed = 0;
    while Instant::now() < deadline {
        sender.ready().await.context("baseline HTTP connection")?;
        let request = Request::post("/baseline")
            .header(HOST, &host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))?;
        let response = sender
            .send_request(request)
            .await
            .context("baseline HTTP request")?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .context("reading a baseline HTTP response")?;
        ensure!(
            status == StatusCode::OK,
            "the baseline HTTP server answered {status}"
        );
        completed += 1;
    }
    // Without its sender, the connection closes once idle, which it is now.
    drop(sender);
    let _ = connection.await;
    Ok(completed)
}

/// Kafka limit: creates a fresh topic `<prefix>baseline` with `partitions` partitions (replicated
/// as the broker's default), produces `messages` 1 KiB records flat out with the system's reliable
/// producer ([`KafkaConfig::reliable_producer`]: idempotent, `acks=all`, lz4), and consumes them
/// with a consumer started before producing. Returns messages/s from the first send to the last
/// receive. Deletes the topic at the end (best effort); fails if the topic already exists.
pub async fn kafka_limit(
    config: &KafkaConfig,
    prefix: &str,
    messages: usize,
    partitions: i32,
) -> anyhow::Result<f64> {
    ensure!(
        messages > 0,
        "the Kafka baseline needs at least one message"
    );
    ensure!(
        partitions > 0,
        "the Kafka baseline needs at least one partition"
    );
    let topic = format!("{prefix}baseline");
    ensure!(
        topic.len() <= 249
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
        "{topic:?} is not a valid topic name (A-Z a-z 0-9 . _ -, at most 249 characters)"
    );

    let admin = TopicAdmin::new(config)?;
    ensure!(
        !admin.topic_shapes().await?.contains_key(&topic),
        "topic {topic} already exists (left by an interrupted run?); the baseline needs a fresh one"
    );
    let spec = TopicSpec {
        name: topic.clone(),
        partitions,
        // The broker's default replication factor.
        replication_factor: -1,
        configs: Default::default(),
    };
    let report = admin.ensure_topics(&[spec]).await?;
    ensure!(
        report.created.contains(&topic),
        "topic {topic} was created by someone else meanwhile; the baseline needs a fresh one"
    );

    let result = produce_and_consume(config, &topic, messages, partitions).await;
    delete_topic(config, &topic).await;
    result
}

/// What the consumer got.
#[derive(Debug)]
struct Consumed {
    received: usize,
    last_received: Option<Instant>,
    last_error: Option<String>,
}

async fn produce_and_consume(
    config: &KafkaConfig,
    topic: &str,
    messages: usize,
    partitions: i32,
) -> anyhow::Result<f64> {
    let consume_limit = Duration::from_secs(60) + Duration::from_millis(messages as u64);
    let consumer: BaseConsumer = config
        .client_config()
        .set("group.id", topic)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // As the system's consumers read.
        .set("isolation.level", "read_committed")
        .create()
        .context("creating the baseline consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let consuming = {
        let stop = Arc::clone(&stop);
        let topic = topic.to_owned();
        let timeout = config.request_timeout();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Consumed> {
            // A round trip to the partition leader: the consumer is connected before the clock
            // starts. Right after the creation the leader may still refuse
            // (NotLeaderForPartition) for a moment.
            let deadline = Instant::now() + timeout;
            while let Err(error) = consumer.fetch_watermarks(&topic, 0, timeout) {
                if Instant::now() >= deadline {
                    return Err(anyhow!(error))
                        .with_context(|| format!("baseline consumer: watermarks of {topic}"));
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            let _ = ready_tx.send(());
            Ok(consume(&consumer, messages, consume_limit, &stop))
        })
    };
    if ready_rx.await.is_err() {
        return Err(consuming
            .await?
            .err()
            .unwrap_or_else(|| anyhow!("the baseline consumer stopped before it was ready")));
    }

    let produced = produce(config, topic, messages).await;
    if produced.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let consumed = consuming.await??;
    let first_sent = produced?;
    let Some(last_received) = consumed
        .last_received
        .filter(|_| consumed.received >= messages)
    else {
        bail!(
            "the baseline consumer received {} of {messages} messages of {topic} within {consume_limit:?}{}",
            consumed.received,
            consumed
                .last_error
                .map(|error| format!("; last consumer error: {error}"))
                .unwrap_or_default()
        );
    };
    let elapsed = last_received.saturating_duration_since(first_sent);
    Ok(messages as f64 / elapsed.as_secs_f64())
}

/// Polls until `expected` messages arrived, `limit` passed or `stop` is set.
fn consume(
    consumer: &BaseConsumer,
    expected: usize,
    limit: Duration,
    stop: &AtomicBool,
) -> Consumed {
    let deadline = Instant::now() + limit;
    let mut consumed = Consumed {
        received: 0,
        last_received: None,
        last_error: None,
    };
    while consumed.received < expected && !stop.load(Ordering::Relaxed) && Instant::now() < deadline
    {
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(_message)) => {
                consumed.received += 1;
                consumed.last_received = Some(Instant::now());
            }
            Some(Err(error)) => consumed.last_error = Some(error.to_string()),
            None => {}
        }
    }
    consumed
}

/// Produces `messages` records as fast as the producer takes them and waits for every delivery.
/// Returns when the first was handed to the producer.
async fn produce(config: &KafkaConfig, topic: &str, messages: usize) -> anyhow::Result<Instant> {
    let producer: FutureProducer = config.reliable_producer()?;
    // Connected, with its producer id, before the clock starts.
    {
        let producer = producer.clone();
        let topic = topic.to_owned();
        let timeout = config.request_timeout();
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await?
        .context("baseline producer: metadata")?;
    }
    let pool: Vec<u8> = rand::rng()
        .sample_iter(Alphanumeric)
        .take(PAYLOAD_POOL_BYTES)
        .collect();
    let keys: Vec<String> = (0..KAFKA_KEYS)
        .map(|key| format!("account-{key}"))
        .collect();
    // A prime stride: consecutive values never overlap, and the pool wraps only after ~1 MiB.
    let stride = 1031;
    let offsets = PAYLOAD_POOL_BYTES - PAYLOAD_BYTES;

    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(MAX_IN_FLIGHT);
    let first_sent = Instant::now();
    for index in 0..messages {
        let offset = (index * stride) % offsets;
        let record = FutureRecord::to(topic)
            .key(&keys[index % KAFKA_KEYS])
            .payload(&pool[offset..offset + PAYLOAD_BYTES]);
        let mut record = Some(record);
        while let Some(next) = record.take() {
            if in_flight.len() >= MAX_IN_FLIGHT
                && let Some(oldest) = in_flight.pop_front()
            {
                delivered(oldest).await?;
            }
            match producer.send_result(next) {
                Ok(delivery) => in_flight.push_back(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), next)) => {
                    match in_flight.pop_front() {
                        Some(oldest) => delivered(oldest).await?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                    record = Some(next);
                }
                Err((error, _)) => bail!("baseline producer: {error}"),
            }
        }
        if index % 1024 == 1023 {
            // send_result never waits: let other tasks on this worker run.
            tokio::task::yield_now().await;
        }
    }
    for delivery in in_flight {
        delivered(delivery).await?;
    }
    Ok(first_sent)
}

/// Waits for one delivery report; its error if the record was not written.
async fn delivered(delivery: DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => bail!("baseline producer: delivery failed: {error}"),
        Err(_) => bail!("baseline producer: dropped before reporting a delivery"),
    }
}

/// Deletes the baseline topic; a failure is only logged.
async fn delete_topic(config: &KafkaConfig, topic: &str) {
    if let Err(error) = crate::topics::delete(config, &[topic.to_owned()]).await {
        tracing::warn!(topic, %error, "could not delete the baseline topic");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_server_answers_every_request_the_client_completes() {
        let run = http_run(Duration::from_millis(300), 8)
            .await
            .expect("HTTP baseline");
        assert!(run.completed > 0, "no request completed: {run:?}");
        assert_eq!(run.handled, run.completed, "{run:?}");
        assert!(run.elapsed >= Duration::from_millis(300), "{run:?}");
        let rate = http_limit(Duration::from_millis(100), 2)
            .await
            .expect("HTTP baseline");
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
    }

    #[tokio::test]
    async fn http_refuses_nonsense() {
        assert!(http_limit(Duration::ZERO, 4).await.is_err());
        assert!(http_limit(Duration::from_millis(10), 0).await.is_err());
    }

    fn broker_config() -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: std::env::var("KAFKA_BOOTSTRAP")
                .unwrap_or_else(|_| "127.0.0.1:19092".to_owned()),
            ..KafkaConfig::default()
        }
    }

    fn unique_prefix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        format!("test.baseline.{}.{nanos}.", std::process::id())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_moves_every_message_and_deletes_its_topic() {
        let config = broker_config();
        let prefix = unique_prefix();
        let rate = kafka_limit(&config, &prefix, 2_000, 3)
            .await
            .expect("Kafka baseline");
        assert!(rate.is_finite() && rate > 0.0, "{rate}");

        let topic = format!("{prefix}baseline");
        let admin = TopicAdmin::new(&config).expect("admin client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while admin
            .topic_shapes()
            .await
            .expect("metadata")
            .contains_key(&topic)
        {
            assert!(Instant::now() < deadline, "{topic} was not deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn kafka_refuses_an_existing_topic_and_bad_names() {
        let config = broker_config();
        assert!(kafka_limit(&config, "bad prefix ", 10, 1).await.is_err());
        assert!(kafka_limit(&config, "ok.", 0, 1).await.is_err());

        let prefix = unique_prefix();
        let topic = format!("{prefix}baseline");
        let admin = TopicAdmin::new(&config).expect("admin client");
        admin
            .ensure_topics(&[TopicSpec {
                name: topic.clone(),
                partitions: 1,
                replication_factor: -1,
                configs: Default::default(),
            }])
            .await
            .expect("create topic");
        let error = kafka_limit(&config, &prefix, 10, 1)
            .await
            .expect_err("the topic exists");
        assert!(error.to_string().contains("already exists"), "{error}");
        delete_topic(&config, &topic).await;
    }
}
