//! The fan-out benchmark: 1,000 subscriptions across 100 accounts, fan-out 3, 1 KiB events.
//! The input is written before the clock starts, so the figure is the fan-out's own rate, not
//! the publisher's.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use dispatch_core::catalog::Family;
use dispatch_fanout::{Fanout, FanoutConfig};
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_proto::dispatch::v1::Subscription;
use dispatch_proto::events::v1::event::Payload;
use dispatch_proto::events::v1::{Event, ImageGenerationStarted};
use dispatch_proto::prost::Message as _;
use dispatch_proto::wkt::Timestamp;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

const ACCOUNTS: usize = 100;
const SUBSCRIPTIONS_PER_ACCOUNT: usize = 10;
const MATCHING_PER_ACCOUNT: usize = 3;

/// Flags of `fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Events to fan out.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Partitions of each domain topic (the fan-out's parallelism ceiling).
    #[arg(long, default_value_t = 6)]
    domain_partitions: i32,
    /// Partitions of dispatch.deliveries.
    #[arg(long, default_value_t = 12)]
    delivery_partitions: i32,
    /// Most input records per transaction.
    #[arg(long, default_value_t = 1000)]
    batch_max_records: usize,
    /// Longest batch collection time, in milliseconds.
    #[arg(long, default_value_t = 100)]
    batch_max_ms: u64,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    out_dir: std::path::PathBuf,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct FanoutResult {
    scenario: &'static str,
    started_at_unix: u64,
    events: usize,
    delivery_tasks: usize,
    subscriptions: usize,
    accounts: usize,
    event_bytes: usize,
    domain_partitions: i32,
    delivery_partitions: i32,
    batch_max_records: usize,
    batch_max_ms: u64,
    elapsed_seconds: f64,
    events_per_second: f64,
    delivery_tasks_per_second: f64,
    process_cpu_seconds: f64,
    machine_cores: usize,
}

fn event(index: usize, prompt: &str) -> Event {
    Event {
        id: format!("evt_bench_{index:09}"),
        r#type: "image.generation.started".into(),
        account_id: format!("acc_{:03}", index % ACCOUNTS),
        occurred_at: Some(Timestamp {
            seconds: 1_795_730_400,
            nanos: 0,
        }),
        region: "eu-west".into(),
        attributes: [("client_id".to_owned(), "cli_bench".to_owned())].into(),
        payload: Some(Payload::ImageGenerationStarted(ImageGenerationStarted {
            generation_id: format!("gen_{index}"),
            project_id: "prj_bench".into(),
            model: "posternity-image-3".into(),
            prompt: prompt.to_owned(),
            image_count: 4,
        })),
    }
}

/// Ten subscriptions per account; exactly three match `image.generation.started` events of
/// client `cli_bench` (by exact name, by pattern, by pattern and filter); the other seven want
/// other families or other clients, so the index has real work to skip.
fn subscriptions() -> Vec<Subscription> {
    let mut subscriptions = Vec::new();
    for account in 0..ACCOUNTS {
        for slot in 0..SUBSCRIPTIONS_PER_ACCOUNT {
            let (patterns, filter): (Vec<&str>, Option<&str>) = match slot {
                0 => (vec!["image.generation.started"], None),
                1 => (vec!["image.*.*"], None),
                2 => (vec!["image.**"], Some("cli_bench")),
                3 => (vec!["image.**"], Some("cli_other")),
                4 => (vec!["video.**"], None),
                5 => (vec!["studio.campaign.*"], None),
                6 => (vec!["map.**", "operation.failed"], None),
                7 => (vec!["image.generation.completed"], None),
                8 => (vec!["studio.**"], Some("cli_bench")),
                _ => (vec!["image.generation.failed", "video.processing.*"], None),
            };
            subscriptions.push(Subscription {
                id: format!("sub_{account:03}_{slot}"),
                account_id: format!("acc_{account:03}"),
                url: format!("https://hooks.example/{account}/{slot}"),
                event_types: patterns.into_iter().map(str::to_owned).collect(),
                filter: filter
                    .map(|client| {
                        [(
                            "client_id".to_owned(),
                            dispatch_proto::dispatch::v1::AttributeValues {
                                values: vec![client.to_owned()],
                            },
                        )]
                        .into()
                    })
                    .unwrap_or_default(),
                enabled: true,
                version: 1,
                ..Subscription::default()
            });
        }
    }
    subscriptions
}

async fn prefill(config: &KafkaConfig, names: &TopicNames, events: usize) -> anyhow::Result<usize> {
    let producer: FutureProducer = config
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let topic = names.domain(Family::Image).context("image topic")?;
    let prompt: String = "a lighthouse at dawn, watercolor, soft light, ".repeat(21);
    let event_bytes = event(0, &prompt).encode_to_vec().len();
    let mut pending = Vec::with_capacity(10_000);
    for index in 0..events {
        let event = event(index, &prompt);
        let value = event.encode_to_vec();
        let key = event.account_id.clone();
        let producer = producer.clone();
        let topic = topic.clone();
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Timeout::Never,
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }));
        if pending.len() == 10_000 {
            for handle in pending.drain(..) {
                handle.await??;
            }
        }
    }
    for handle in pending {
        handle.await??;
    }
    Ok(event_bytes)
}

/// Sum of the group's committed offsets over the image topic's partitions.
fn committed_total(consumer: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum())
}

/// Runs the scenario and writes its result.
pub async fn run(bootstrap: &str, args: &FanoutArgs) -> anyhow::Result<()> {
    let started_at_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let prefix = format!("bench.fanout.{started_at_unix}.");
    let config = KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        topic_prefix: prefix.clone(),
        ..KafkaConfig::default()
    };
    let names = TopicNames::new(&prefix);
    let settings = TopicSettings {
        domain_partitions: args.domain_partitions,
        delivery_partitions: args.delivery_partitions,
        attempts_partitions: 1,
        dlq_partitions: 1,
        invalid_partitions: 1,
        ..TopicSettings::default()
    };
    TopicAdmin::new(&config)?
        .ensure_topics(&topic_specs(&names, &settings, &["1m".to_owned()]))
        .await?;

    eprintln!(
        "writing {} subscriptions ...",
        ACCOUNTS * SUBSCRIPTIONS_PER_ACCOUNT
    );
    let writer = SubscriptionWriter::new(&config)?;
    for subscription in subscriptions() {
        writer.put(&subscription).await?;
    }
    eprintln!("pre-filling {} events ...", args.events);
    let event_bytes = prefill(&config, &names, args.events).await?;

    let view = Arc::new(SubscriptionView::start(&config)?);
    view.wait_caught_up(Duration::from_secs(60)).await?;
    let fanout_config = FanoutConfig {
        group_id: format!("{prefix}fanout"),
        transactional_id: Some(format!("{prefix}fanout-1")),
        batch_max_records: args.batch_max_records,
        batch_max_ms: args.batch_max_ms,
        ..FanoutConfig::default()
    };
    let progress: BaseConsumer = config
        .client_config()
        .set("group.id", &fanout_config.group_id)
        .set("enable.auto.commit", "false")
        // read_committed would make the offset fetch wait for open transactions to end
        // (require_stable); the last committed offsets are what we want.
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let image_topic = names.domain(Family::Image).context("image topic")?;

    eprintln!("fanning out ...");
    let cpu_before = dispatch_bench::system::own_cpu_seconds();
    let started = Instant::now();
    let build_config = config.clone();
    let fanout = tokio::task::spawn_blocking(move || {
        Fanout::build(&build_config, fanout_config, Vec::<String>::new(), view)
    })
    .await??;
    let stop = CancellationToken::new();
    let running = tokio::spawn(fanout.run(stop.clone()));
    // An early return stops the fan-out too.
    let stop = stop.drop_guard();
    let target = args.events as i64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done = committed_total(&progress, &image_topic, args.domain_partitions)?;
        if done >= target {
            break;
        }
        if running.is_finished() || Instant::now() > deadline {
            bail!("the fan-out stopped at {done} of {target} events");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = dispatch_bench::system::own_cpu_seconds() - cpu_before;
    drop(stop);
    running.await??;

    let delivery_tasks = args.events * MATCHING_PER_ACCOUNT;
    let result = FanoutResult {
        scenario: "fanout",
        started_at_unix,
        events: args.events,
        delivery_tasks,
        subscriptions: ACCOUNTS * SUBSCRIPTIONS_PER_ACCOUNT,
        accounts: ACCOUNTS,
        event_bytes,
        domain_partitions: args.domain_partitions,
        delivery_partitions: args.delivery_partitions,
        batch_max_records: args.batch_max_records,
        batch_max_ms: args.batch_max_ms,
        elapsed_seconds: elapsed,
        events_per_second: args.events as f64 / elapsed,
        delivery_tasks_per_second: delivery_tasks as f64 / elapsed,
        process_cpu_seconds: cpu,
        machine_cores: std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(0),
    };
    println!(
        "fanout: {} events ({} B each) -> {} delivery tasks in {:.2} s: {:.0} events/s, {:.0} tasks/s, {:.1} CPU s (bench process, fan-out in-process), batch {} / {} ms",
        result.events,
        result.event_bytes,
        result.delivery_tasks,
        result.elapsed_seconds,
        result.events_per_second,
        result.delivery_tasks_per_second,
        result.process_cpu_seconds,
        result.batch_max_records,
        result.batch_max_ms
    );
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join(format!("fanout-{started_at_unix}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
    eprintln!("result written to {}", path.display());
    Ok(())
}
