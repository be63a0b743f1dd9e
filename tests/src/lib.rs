//! Support for tests that run against the real Kafka broker started by `deploy/kafka/kafka.sh`
//! (`make test` starts one when none is running): where the broker is, unique topic prefixes,
//! and bounded reads of what landed in a topic.
//!
//! No test talks to a mock: if no broker answers, the tests fail and say how to start one.

pub mod fanout_fixture;
pub mod own_broker;
pub mod receiver;
pub mod tls;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatch_kafka::KafkaConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};

/// The broker's bootstrap servers: `KAFKA_BOOTSTRAP` (exported by `deploy/kafka/with-kafka.sh`),
/// else the local script's default port.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

/// A topic prefix no other test (or earlier run) uses: `t.<name>.<pid>.<counter>.<millis>.`.
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "t.{name}.{}.{}.{millis}.",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kafka settings for a test: the broker, its own prefix, short timeouts.
pub fn kafka_config(prefix: &str) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: bootstrap(),
        topic_prefix: prefix.to_owned(),
        request_timeout_ms: 15_000,
        ..KafkaConfig::default()
    }
}

/// The test reader's librdkafka context: keeps the last statistics report (to tell a reader
/// that stopped fetching from one that has nothing to read) and, with
/// `TEST_READER_RDKAFKA_DEBUG` set (e.g. `consumer,fetch,topic`), prints librdkafka's own log
/// to the test's stderr.
#[derive(Debug, Default)]
pub struct ReaderContext {
    last_statistics: std::sync::Mutex<Option<rdkafka::statistics::Statistics>>,
}

impl rdkafka::ClientContext for ReaderContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        eprintln!("reader librdkafka {level:?} {fac}: {message}");
    }

    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        *self
            .last_statistics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

impl ReaderContext {
    /// The partitions of `topic` that hold committed records past what was handed to the
    /// reader, as of the last statistics, each with its librdkafka fetch state.
    fn readable_but_unread(&self, topic: &str) -> Vec<String> {
        let statistics = self
            .last_statistics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(partitions) = statistics
            .as_ref()
            .and_then(|statistics| statistics.topics.get(topic))
            .map(|topic| &topic.partitions)
        else {
            return Vec::new();
        };
        partitions
            .values()
            .filter(|p| p.partition >= 0 && p.ls_offset > p.app_offset.max(p.lo_offset))
            .map(|p| {
                format!(
                    "{topic}/{}: fetch state {}, handed out up to {}, stable up to {}, fetched up to {}, {} queued, {} dropped as outdated",
                    p.partition,
                    p.fetch_state,
                    p.app_offset,
                    p.ls_offset,
                    p.next_offset,
                    p.fetchq_cnt,
                    p.rx_ver_drops
                )
            })
            .collect()
    }
}

/// A consumer outside any group (partitions are assigned by hand), reading committed data only.
fn reader(config: &KafkaConfig) -> BaseConsumer<ReaderContext> {
    let mut client = config.client_config();
    client
        .set("group.id", "dispatch-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "1000");
    if let Ok(debug) = std::env::var("TEST_READER_RDKAFKA_DEBUG") {
        client.set("debug", debug);
    }
    client
        .create_with_context(ReaderContext::default())
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a consumer for {}: {e}",
                config.bootstrap_servers
            )
        })
}

fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> i32 {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .unwrap_or_else(|e| {
            panic!(
                "no Kafka broker answers at {} ({e}); start one with `make kafka-up`",
                bootstrap()
            )
        });
    metadata
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0)
}

/// A reader assigned every partition of `topic` from the beginning.
fn reader_of(config: &KafkaConfig, topic: &str) -> BaseConsumer<ReaderContext> {
    let consumer = reader(config);
    let partitions = partition_count(&consumer, topic);
    assert!(partitions > 0, "topic {topic} does not exist");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap_or_else(|e| panic!("cannot assign {topic}/{partition}: {e}"));
    }
    consumer
        .assign(&assignment)
        .unwrap_or_else(|e| panic!("cannot assign {topic}: {e}"));
    consumer
}

/// How long a reader short of what it expects may hand out nothing before it is replaced.
/// librdkafka can leave a consumer started right after a broker stall not fetching for good,
/// or knowing no broker at all (seen in the broker-pause test: every task committed, the
/// reader handed out none of them for four minutes); that is a fault of the test's reader, not
/// of what it reads. Replacing a reader that simply has nothing new costs one re-read.
const READER_STALL: Duration = Duration::from_secs(20);

/// Every record of `topic` (all partitions, from the beginning), reading until `expected`
/// records arrived or `timeout` passed — whichever comes first. Callers assert on the count, so
/// a shortfall fails the test instead of hanging it.
pub fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let mut consumer = reader_of(config, topic);
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut progress_at = Instant::now();
    while records.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                records.push(message.detach());
                progress_at = Instant::now();
            }
            // A broker just resumed or restarted (the fault tests) answers a fresh connection
            // late: librdkafka reports that and retries by itself.
            Some(Err(e)) if is_transient_read_error(&e) => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        if progress_at.elapsed() >= READER_STALL {
            // Replaced whatever its statistics say: a reader that dropped every broker
            // (librdkafka#5301, after a broker stall) reports no partition at all.
            let unread = consumer.context().readable_but_unread(topic);
            eprintln!(
                "the test reader of {topic} handed out nothing for {} s with {} of {expected} records read; reading again with a fresh reader (committed records it had not handed out: {})",
                READER_STALL.as_secs(),
                records.len(),
                if unread.is_empty() {
                    "none known".to_owned()
                } else {
                    unread.join("; ")
                }
            );
            consumer = reader_of(config, topic);
            records.clear();
            progress_at = Instant::now();
        }
    }
    if records.len() < expected {
        // Say where the reader stood, partition by partition, against what the broker holds
        // (asked through a fresh client: this one may know no broker any more).
        let position = consumer.position().ok();
        let fresh = reader(config);
        for partition in 0..partition_count(&fresh, topic) {
            let at = position
                .as_ref()
                .and_then(|list| list.find_partition(topic, partition))
                .map(|element| element.offset());
            let watermarks = fresh.fetch_watermarks(topic, partition, Duration::from_secs(5));
            eprintln!(
                "reader short of {expected} records ({} read): {topic}/{partition} at {at:?}, watermarks {watermarks:?}",
                records.len()
            );
        }
    }
    records
}

/// Consumer errors that librdkafka recovers from by itself.
fn is_transient_read_error(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(Code::AllBrokersDown | Code::BrokerTransportFailure | Code::RequestTimedOut)
    )
}

/// Reads `topic` until `expected` records arrived (waiting up to `timeout`), then keeps reading
/// for `settle` to catch records beyond the expected count. Callers assert the exact count.
pub fn read_expecting(
    config: &KafkaConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<OwnedMessage> {
    let records = read_topic(config, topic, expected, timeout);
    if records.len() < expected {
        return records;
    }
    read_topic(config, topic, expected + 1, settle)
}

/// The sum over `topic`'s partitions of the offsets consumer group `group` committed.
pub fn group_committed_total(config: &KafkaConfig, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = config
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // read_committed would make the offset fetch wait for open transactions to end
        // (require_stable); the last committed offsets are what we want.
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap_or_else(|e| panic!("consumer of group {group}: {e}"));
    let partitions = partition_count(&consumer, topic);
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("committed offsets of {group}: {e}"));
    committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum()
}

/// The total number of records ever written to `topic` (sum of high watermarks). Transient
/// errors (a partition whose leader is still being elected) are retried for a few seconds.
pub fn record_count(config: &KafkaConfig, topic: &str) -> i64 {
    let consumer = reader(config);
    let partitions = partition_count(&consumer, topic);
    (0..partitions)
        .map(|partition| {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
                    Ok((low, high)) => break high - low,
                    Err(e) if Instant::now() >= deadline => {
                        panic!("watermarks of {topic}/{partition}: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .sum()
}

/// The payload of a record, which must have one.
pub fn payload(message: &OwnedMessage) -> &[u8] {
    message.payload().unwrap_or_else(|| {
        panic!(
            "record at {}/{} has no value",
            message.partition(),
            message.offset()
        )
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a child process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A minimal HTTP/1.1 GET against 127.0.0.1, retried until the server answers 200 (it may still
/// be starting) or 30 s passed. Returns status and body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((status, body)) = try_http(port, "GET", path, &[], b"").await
            && (status == 200 || Instant::now() >= deadline)
        {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "nothing answers on port {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines of the `/metrics` page on `port` whose series starts with `name` (a metric name,
/// or a name with the start of its labels).
pub async fn metric_lines(port: u16, name: &str) -> Vec<String> {
    let (_, metrics) = http_get(port, "/metrics").await;
    metrics
        .lines()
        .filter(|line| line.starts_with(name))
        .map(str::to_owned)
        .collect()
}

/// One HTTP/1.1 request against 127.0.0.1 (no retry); `None` when nothing accepts the
/// connection. Returns status and body.
pub async fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A child process (a `dispatchd` role under test) that is killed when dropped: a test that
/// fails half-way must not leave a role running and consuming from the shared broker.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl KillOnDrop {
    /// Appends every thread's backtrace of the running child to `out`, when `gdb` is installed:
    /// what a test that found a role stalled leaves behind, so that the stall can be explained
    /// after the child is gone. Does nothing (but say so) without gdb.
    pub fn dump_threads(&self, out: &std::path::Path) {
        let dumped = std::process::Command::new("gdb")
            .args([
                "-p",
                &self.0.id().to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .stdin(std::process::Stdio::null())
            .output();
        match dumped {
            Ok(output) => {
                let mut text = output.stdout;
                text.extend_from_slice(&output.stderr);
                let _ = std::fs::write(out, text);
                eprintln!("thread backtraces of the stalled role: {}", out.display());
            }
            Err(error) => eprintln!("no thread backtraces (gdb: {error})"),
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `dispatchd` (the binary at `binary`: a test crate passes its
/// `env!("CARGO_BIN_EXE_dispatchd")`) running `role` (`fanout`, `sender`, `api`, `all`) with
/// `config_file`, its metrics on `metrics_port`, its log appended to `log`.
pub fn spawn_role(
    binary: impl AsRef<std::path::Path>,
    role: &str,
    config_file: &std::path::Path,
    log: &std::path::Path,
    metrics_port: u16,
) -> KillOnDrop {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut command = std::process::Command::new(binary.as_ref());
    command
        .arg("--config")
        .arg(config_file)
        .arg(role)
        .env(
            "DISPATCH_METRICS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env(
            "RUST_LOG",
            std::env::var("TEST_ROLE_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    // Diagnosis knobs for a flaky run: TEST_ROLE_RDKAFKA_DEBUG=cgrp,eos with
    // TEST_ROLE_RUST_LOG=info,librdkafka=debug put librdkafka's own states into the log.
    if let Ok(debug) = std::env::var("TEST_ROLE_RDKAFKA_DEBUG") {
        command.env("DISPATCH_KAFKA__LIBRDKAFKA__DEBUG", debug);
    }
    command
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .map(KillOnDrop)
        .unwrap_or_else(|e| panic!("dispatchd {role} starts: {e}"))
}

/// Awaits all futures, run concurrently as tasks (a tiny `join_all`, to keep the test crates'
/// dependencies small).
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// Sends SIGTERM to each child, then waits (at most 30 s each) for every one to exit, asserting
/// a clean exit 0 — what a graceful drain must end in. `log` is named in the failure message.
pub async fn terminate_cleanly(children: &mut [&mut KillOnDrop], log: &std::path::Path) {
    for child in children.iter() {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {}", child.id());
    }
    for child in children.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(status) = child.try_wait().expect("child status") {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            exit.success(),
            "exit after SIGTERM: {exit}; see {}",
            log.display()
        );
    }
}
