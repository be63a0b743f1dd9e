//! Crash safety of the fan-out: with thousands of events flowing, `kill -9` a real `dispatchd
//! fanout` process, start it again, and read `dispatch.deliveries` with
//! `isolation.level=read_committed`: every (event, subscription) pair appears exactly once.

use std::io::Write as _;
use std::time::{Duration, Instant};

use dispatch_core::catalog::Family;
use dispatch_e2e::fanout_fixture::{MapEvents, TaskTally, map_topics_with_subscribers};
use dispatch_e2e::{
    bootstrap, free_port, group_committed_total, http_get, join_all, kafka_config, read_expecting,
    record_count, spawn_role, terminate_cleanly, unique_prefix,
};
use dispatch_kafka::publish::EventPublisher;

/// The binary under test.
const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

const EVENTS: usize = 3000;
const SUBSCRIBERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_yields_every_pair_exactly_once() {
    let prefix = unique_prefix("fanout-crash");
    let config = kafka_config(&prefix);
    let names = map_topics_with_subscribers(&config, "acc_crash", SUBSCRIBERS).await;

    let dir = std::env::temp_dir().join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_file = dir.join("dispatchd.toml");
    let log = dir.join("fanout.log");
    let mut file = std::fs::File::create(&config_file).expect("config file");
    write!(
        file,
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"
[kafka.librdkafka]
# The killed member must leave the group quickly so the restarted one gets the partitions.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"statistics.interval.ms" = "500"
[fanout]
group_id = "{prefix}fanout"
transactional_id = "{prefix}fanout-1"
batch_max_records = 200
batch_max_ms = 20
[metrics]
listen = "127.0.0.1:0"
"#,
        bootstrap = bootstrap(),
    )
    .expect("write config");
    drop(file);

    let mut child = spawn_role(DISPATCHD, "fanout", &config_file, &log, 0);

    // Publish in the background, paced, while the fan-out runs.
    let publisher = EventPublisher::new(&config).expect("publisher");
    let events = MapEvents::of("acc_crash");
    let publishing = tokio::spawn(async move {
        for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(100) {
            let sends = chunk.iter().map(|index| {
                let event = events.event(*index);
                let publisher = publisher.clone();
                async move {
                    publisher.publish(&event).await.expect("publish");
                }
            });
            join_all(sends).await;
            // Paced (about 1,000 events/s): flat out, publishing and the fan-out could both be
            // done before the loop below notices a third of the work, and the kill would find
            // nothing left to recover.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // Kill it hard once a good part of the work is in flight (uncommitted records count too).
    let deliveries = names.deliveries();
    let deadline = Instant::now() + Duration::from_secs(120);
    while record_count(&config, &deliveries) < (EVENTS * SUBSCRIBERS / 3) as i64 {
        assert!(
            Instant::now() < deadline,
            "the fan-out never got going; see {}",
            log.display()
        );
        assert!(
            child.try_wait().expect("child status").is_none(),
            "fan-out exited early; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    // The restarted process must have work left: the killed one did not get to the end.
    let image_topic = names.domain(Family::Map).expect("map topic");
    let done_at_kill = group_committed_total(&config, &format!("{prefix}fanout"), &image_topic);
    assert!(
        done_at_kill < EVENTS as i64,
        "the fan-out finished before it was killed ({done_at_kill} events); the test proves nothing"
    );

    let metrics_port = free_port();
    let mut child = spawn_role(DISPATCHD, "fanout", &config_file, &log, metrics_port);
    publishing.await.expect("publisher finished");

    // Everything, exactly once, as a read_committed consumer sees it; reading on a few seconds
    // past the expected count catches extra records.
    let expected = EVENTS * SUBSCRIBERS;
    let records = tokio::task::spawn_blocking(move || {
        read_expecting(
            &config,
            &deliveries,
            expected,
            Duration::from_secs(180),
            Duration::from_secs(5),
        )
    })
    .await
    .expect("reader");

    // The restarted process serves its telemetry: ready, and the metrics moved.
    let (status, body) = http_get(metrics_port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = http_get(metrics_port, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "dispatch_view_subscriptions 3",
        "dispatch_fanout_deliveries_produced_total{family=\"map\"}",
        "dispatch_fanout_transactions_total{result=\"commit\"}",
        "dispatch_fanout_commit_duration_seconds_count",
        "dispatch_kafka_consumer_lag_records{group=",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // Everything is consumed, so the restarted process reports (almost) no lag: at most the
    // transaction marker after the last record of a partition. librdkafka's own consumer_lag
    // would not do here — it measures from the committed offset fetched at assignment, which
    // transactional commits never update — so the fan-out measures from its position.
    let fanout_group = format!("dispatch_kafka_consumer_lag_records{{group=\"{prefix}fanout\"");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(metrics_port, "/metrics").await;
        let lags: Vec<f64> = metrics
            .lines()
            .filter(|line| line.starts_with(&fanout_group))
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        if !lags.is_empty() && lags.iter().all(|lag| *lag <= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fan-out's lag never came down to its position: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // SIGTERM: the process finishes its transaction, leaves the group and exits 0.
    terminate_cleanly(&mut [&mut child], &log).await;

    assert_eq!(
        TaskTally::of(&records, EVENTS, SUBSCRIBERS),
        TaskTally::exact(EVENTS, SUBSCRIBERS),
        "tasks read with read_committed; see {}",
        log.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
