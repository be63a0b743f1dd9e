//! The sender benchmark: delivery tasks for 200 endpoints on local receivers, delivered by the
//! same engine `dispatchd sender` runs (in the bench process). Two figures per run: deliveries/s
//! to the healthy endpoints, and their latency from the moment a task was produced to the moment
//! the receiver got it. With `--hang-fraction 0.1`, 10 % of the endpoints never answer (each
//! request ends at the HTTP timeout): the healthy endpoints' figures beside a run without hangs
//! show whether a slow endpoint holds up the others. With `--rate 0` every task is in the topic
//! before the sender starts, and the figure is how fast it drains them: its ceiling on this
//! machine (latencies then include the time a task waited in the topic and mean little).
//!
//! Tenant fairness (issue 12, item 6): with `--tenants`, the hanging endpoints are account A's
//! and the others account B's; A's subscriptions ask for `--hanging-max-in-flight` requests
//! each (the operator's cap by default), far more than the sender's permits. The healthy figure
//! is then B's throughput with A hanging; `--tenants --hanging-idle` gives A no tasks at all: B
//! alone (A's slots still pass in time, so B is offered the same rate). `make bench-fairness`
//! runs both at 2000 tasks/s; B's deliveries/s with A hanging over B alone is the figure (the
//! goal is ≥ 90 %).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use dispatch_core::retry::{HumanDuration, RetryConfig, RetrySchedule};
use dispatch_core::signing::SigningSecret;
use dispatch_http::{HttpConfig, WebhookClient};
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::outbox::{Outbox, Writer};
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_proto::dispatch::v1::{DeliveryTask, SigningSecret as SecretRecord, Subscription};
use dispatch_proto::prost::Message as _;
use dispatch_sender::attempt::AttemptContext;
use dispatch_sender::config::SenderConfig;
use dispatch_sender::engine::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const ENDPOINTS: usize = 200;

/// Flags of `sender`.
#[derive(Debug, Args)]
pub struct SenderArgs {
    /// Delivery tasks to produce.
    #[arg(long, default_value_t = 30_000)]
    tasks: usize,
    /// Tasks produced per second while the sender runs (spread over the run); 0 produces every
    /// task before the sender starts (flat out: how fast it drains a backlog).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Fraction of the endpoints that never answer.
    #[arg(long, default_value_t = 0.0)]
    hang_fraction: f64,
    /// The hanging endpoints are account A's, the others account B's (see the module docs).
    #[arg(long)]
    tenants: bool,
    /// `max_in_flight` of the hanging endpoints' subscriptions (0 = the sender's default).
    #[arg(long, default_value_t = 64)]
    hanging_max_in_flight: u32,
    /// Produce no tasks for the hanging endpoints: the healthy ones alone, for comparison.
    #[arg(long)]
    hanging_idle: bool,
    /// HTTP timeout of the sender, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    http_timeout_ms: u64,
    /// Partitions of dispatch.deliveries.
    #[arg(long, default_value_t = 12)]
    delivery_partitions: i32,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    out_dir: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct SenderResult {
    scenario: &'static str,
    started_at_unix: u64,
    tasks: usize,
    rate_per_second: u64,
    endpoints: usize,
    hanging_endpoints: usize,
    tenants: bool,
    hanging_idle: bool,
    hanging_max_in_flight: u32,
    healthy_tasks: usize,
    healthy_delivered: usize,
    elapsed_seconds: f64,
    healthy_deliveries_per_second: f64,
    latency_p50_ms: f64,
    latency_p90_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    process_cpu_seconds: f64,
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One receiver for every endpoint: `/h/<n>` hangs, anything else answers 200 at once and
/// reports the latency carried in the body (`{"sent_ns":…}`).
async fn start_receiver(
    latencies: mpsc::UnboundedSender<u128>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let latencies = latencies.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let latencies = latencies.clone();
                    async move {
                        if request.uri().path().starts_with("/h/") {
                            std::future::pending::<()>().await;
                        }
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let received = unix_nanos();
                        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body)
                            && let Some(sent) = value["sent_ns"]
                                .as_str()
                                .and_then(|s| s.parse::<u128>().ok())
                        {
                            let _ = latencies.send(received.saturating_sub(sent));
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The account of an endpoint: one shared account, or with `tenants` A for the hanging ones
/// and B for the healthy ones.
fn account_of(tenants: bool, hangs: bool) -> &'static str {
    match (tenants, hangs) {
        (false, _) => "acc_bench",
        (true, true) => "acc_a",
        (true, false) => "acc_b",
    }
}

fn percentile(sorted: &[u128], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1e6
}

/// Runs the scenario and writes its result.
pub async fn run(bootstrap: &str, args: &SenderArgs) -> anyhow::Result<()> {
    let started_at_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let prefix = format!("bench.sender.{started_at_unix}.");
    let config = KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        topic_prefix: prefix.clone(),
        ..KafkaConfig::default()
    };
    let names = TopicNames::new(&prefix);
    let schedule = RetrySchedule::new(RetryConfig {
        delays: vec![HumanDuration(Duration::from_secs(60))],
        jitter: 0.0,
        ..RetryConfig::default()
    })?;
    let settings = TopicSettings {
        domain_partitions: 1,
        delivery_partitions: args.delivery_partitions,
        attempts_partitions: 6,
        dlq_partitions: 1,
        invalid_partitions: 1,
        ..TopicSettings::default()
    };
    TopicAdmin::new(&config)?
        .ensure_topics(&topic_specs(&names, &settings, &["1m".to_owned()]))
        .await?;

    let (latency_tx, mut latency_rx) = mpsc::unbounded_channel();
    let addr = start_receiver(latency_tx).await?;
    let hanging = ((ENDPOINTS as f64) * args.hang_fraction).round() as usize;
    let writer = SubscriptionWriter::new(&config)?;
    for index in 0..ENDPOINTS {
        let path = if index < hanging {
            format!("/h/{index}")
        } else {
            format!("/e/{index}")
        };
        let hangs = index < hanging;
        writer
            .put(&Subscription {
                id: format!("sub_{index:03}"),
                account_id: account_of(args.tenants, hangs).into(),
                max_in_flight: if hangs && args.tenants {
                    args.hanging_max_in_flight
                } else {
                    0
                },
                url: format!("http://{addr}{path}"),
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
            .await?;
    }
    let view = Arc::new(SubscriptionView::start(&config)?);
    view.wait_caught_up(Duration::from_secs(60)).await?;
    let http = HttpConfig {
        timeout_ms: args.http_timeout_ms,
        connect_timeout_ms: args.http_timeout_ms.min(10_000),
        allow_http: true,
        allow_addresses: vec!["127.0.0.1/32".to_owned()],
        ..HttpConfig::default()
    };
    let outbox = Outbox::new(&config, Writer::Sender)?;
    let ctx = AttemptContext {
        client: WebhookClient::new(&http)?,
        schedule,
        subscriptions: Arc::new(SubscriptionWriter::with_outbox(outbox.clone())),
        outbox,
        names: names.clone(),
    };
    let sender_config = SenderConfig {
        group_id: format!("{prefix}sender"),
        drain_timeout_ms: 1_000,
        ..SenderConfig::default()
    };
    let stop = CancellationToken::new();

    // Produce at the given rate; each body carries its produce time.
    let producer: FutureProducer = config
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?;
    let healthy_tasks = (0..args.tasks).filter(|i| i % ENDPOINTS >= hanging).count();
    let tenants = args.tenants;
    let hanging_idle = args.hanging_idle;
    let topic = names.deliveries();
    let tasks = args.tasks;
    let rate = args.rate;
    let producer_task = {
        tokio::spawn(async move {
            let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
            let mut next = tokio::time::Instant::now();
            let mut pending = Vec::new();
            for index in 0..tasks {
                if let Some(interval) = interval {
                    next += interval;
                    tokio::time::sleep_until(next).await;
                }
                // Idle A's slots still pass in time, so B is offered the same rate either way.
                let hangs = index % ENDPOINTS < hanging;
                if hangs && hanging_idle {
                    continue;
                }
                let subscription_id = format!("sub_{:03}", index % ENDPOINTS);
                let task = DeliveryTask {
                    delivery_id: format!("dlv_{index:07}"),
                    event_id: format!("evt_{index:07}"),
                    event_type: "webhook.test".into(),
                    subscription_id: subscription_id.clone(),
                    account_id: account_of(tenants, hangs).into(),
                    attempt: 1,
                    body: format!("{{\"sent_ns\":\"{}\"}}", unix_nanos()).into_bytes(),
                    ..DeliveryTask::default()
                };
                let producer = producer.clone();
                let topic = topic.clone();
                pending.push(tokio::spawn(async move {
                    let value = task.encode_to_vec();
                    let _ = producer
                        .send(
                            FutureRecord::to(&topic)
                                .key(&subscription_id)
                                .payload(&value),
                            Timeout::Never,
                        )
                        .await;
                }));
            }
            for handle in pending {
                let _ = handle.await;
            }
        })
    };
    let producer_task = if rate == 0 {
        // Flat out: the whole backlog is in the topic before the sender starts.
        producer_task.await.context("producer")?;
        eprintln!("{tasks} tasks produced; starting the sender");
        None
    } else {
        Some(producer_task)
    };
    let cpu_before = dispatch_bench::system::own_cpu_seconds();
    let started = Instant::now();
    let engine = Engine::build(&config, sender_config, &[], ctx, view)?;
    let running = tokio::spawn(engine.run(stop.clone()));

    let mut latencies = Vec::with_capacity(healthy_tasks);
    let deadline = Instant::now() + Duration::from_secs(tasks as u64 / rate.max(100) + 120);
    while latencies.len() < healthy_tasks && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), latency_rx.recv()).await {
            Ok(Some(latency)) => latencies.push(latency),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = dispatch_bench::system::own_cpu_seconds() - cpu_before;
    if let Some(producer_task) = producer_task {
        producer_task.await.context("producer")?;
    }
    stop.cancel();
    let _ = running.await;

    latencies.sort_unstable();
    let result = SenderResult {
        scenario: "sender",
        started_at_unix,
        tasks,
        rate_per_second: rate,
        endpoints: ENDPOINTS,
        hanging_endpoints: hanging,
        tenants,
        hanging_idle,
        hanging_max_in_flight: args.hanging_max_in_flight,
        healthy_tasks,
        healthy_delivered: latencies.len(),
        elapsed_seconds: elapsed,
        healthy_deliveries_per_second: latencies.len() as f64 / elapsed,
        latency_p50_ms: percentile(&latencies, 0.50),
        latency_p90_ms: percentile(&latencies, 0.90),
        latency_p99_ms: percentile(&latencies, 0.99),
        latency_max_ms: percentile(&latencies, 1.0),
        process_cpu_seconds: cpu,
    };
    println!(
        "sender{}: {} tasks {}, {} of {} endpoints hanging{}: healthy {}/{} delivered, {:.0} deliveries/s, latency p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms, {:.1} CPU s",
        if tenants {
            " (tenants: hanging = account A, healthy = account B)"
        } else {
            ""
        },
        result.tasks,
        if rate == 0 {
            "flat out (backlog produced first)".to_owned()
        } else {
            format!("at {rate}/s")
        },
        result.hanging_endpoints,
        result.endpoints,
        if hanging_idle {
            " (idle: no tasks)"
        } else {
            ""
        },
        result.healthy_delivered,
        result.healthy_tasks,
        result.healthy_deliveries_per_second,
        result.latency_p50_ms,
        result.latency_p90_ms,
        result.latency_p99_ms,
        result.latency_max_ms,
        result.process_cpu_seconds
    );
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join(format!("sender-{started_at_unix}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
    eprintln!("result written to {}", path.display());
    Ok(())
}
