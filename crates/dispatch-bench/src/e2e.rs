//! `dispatch-bench e2e`: the whole system as real processes on the local broker — a
//! `dispatchd fanout` and a `dispatchd sender`, the receiver fleet, a publisher of 1 KiB events
//! fanning out to three of 200 subscriptions. Scenarios:
//!
//! - `baseline`: the machine's limits on the same run (raw hyper requests/s on loopback, raw
//!   produce→consume messages/s through the broker).
//! - `throughput`: flat out for a fixed window → deliveries/s sustained, CPU seconds and peak
//!   RSS of each `dispatchd` process.
//! - `latency`: fixed event rates → event-to-delivery latency p50/p90/p99/p99.9 at the receivers,
//!   from each event's `occurred_at` (same clock).
//! - `head-of-line`: the first rate again with 10 % of the endpoints hanging until the HTTP
//!   timeout → the healthy endpoints' throughput and p99 beside the `latency` run.
//! - `burst`: a batch of events published all at once to 30 endpoints → publish time, time to
//!   the last delivery, publish-to-arrival latency, the sender's deferrals to the retry tier
//!   (`crate::burst`); received by the fleet or, with `--nginx`, by nginx.
//!
//! Every scenario starts from fresh topics and processes, and ends with the ledger check (lost
//! must be 0; `burst` counts what never arrived itself). The report goes to
//! `bench/results/e2e-<time>.json`.
//!
//! The system's shape (`--shape`): the bench's own (default) is the above, with its own
//! configuration — fan-out batches of 20 ms, retry `0s,1s,2s`, HTTP timeout 5 s, 12 delivery
//! partitions. `--shape dev` is what a user trying the product runs: ONE `dispatchd all` on
//! `deploy/dev/dispatchd.toml` (`--dev-config`) as the file has it, its topics made by
//! `dispatchd topics ensure` from it, only what isolates and reaches the run overridden
//! ([`crate::system::USER_CONFIG_OVERRIDES`]); scenarios `throughput`, `latency` (at 200 and
//! 1,000 events/s by default) and `burst`.
//!
//! Receivers (`--nginx`): `throughput`, `latency` and `burst` are received by the bench's fleet
//! or by nginx, a receiver that is not ours; with nginx, latency runs from each event's publish
//! time (its `occurred_at`) to its arrival in nginx's access log, over every owed pair
//! (`crate::receiver`). `head-of-line` needs endpoints that hang: always the fleet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::baseline::{self, Limits};
use crate::burst::{self, BurstResult, BurstSettings};
use crate::fleet::Mode;
use crate::harness::{Environment, Harness};
use crate::ledger::{self, Verdict};
use crate::receiver::{self, Receiver, ReceiverKind};
use crate::system::{ProcessUsage, Role, SystemSettings, USER_CONFIG_OVERRIDES};
use crate::workload::{self, Pace};

/// The configuration a user trying the product runs (`make run`), relative to the repository.
pub const DEV_CONFIG: &str = "deploy/dev/dispatchd.toml";

/// Which system is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// `dispatchd fanout` and `dispatchd sender` processes on the bench's own configuration.
    Bench,
    /// One `dispatchd all` on a user's configuration file (`--dev-config`) as it is.
    Dev,
}

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Which {
    /// The machine's limits.
    Baseline,
    /// Flat out.
    Throughput,
    /// Fixed rates.
    Latency,
    /// Fixed rate with 10 % hanging endpoints.
    HeadOfLine,
    /// A burst published all at once.
    Burst,
}

/// Flags of `e2e`.
#[derive(Debug, Args)]
pub struct E2eArgs {
    /// The system measured: the bench's own configuration (`dispatchd fanout` + `dispatchd
    /// sender`), or `dev`: one `dispatchd all` on the dev configuration file as a user has it.
    #[arg(long, value_enum, default_value = "bench")]
    shape: Shape,
    /// The configuration file of `--shape dev` [default: deploy/dev/dispatchd.toml].
    #[arg(long)]
    dev_config: Option<PathBuf>,
    /// Scenarios to run (by default all; with `--shape dev` throughput, latency, burst).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Which>,
    /// Short runs for a smoke test (the whole set in under two minutes).
    #[arg(long)]
    quick: bool,
    /// Event rates of `latency`, per second (head-of-line uses the first) [default: 1000,5000;
    /// with `--shape dev` 200,1000].
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u64>,
    /// Measurement window of each scenario, in seconds (default 30, quick 10).
    #[arg(long)]
    seconds: Option<u64>,
    /// Sender processes (the consumer group's members); `--shape dev` runs one `all`.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Partitions of dispatch.deliveries [default: 12]; `--shape dev` has the file's.
    #[arg(long)]
    delivery_partitions: Option<i32>,
    /// Receiver listeners (host:port pairs); the 200 endpoints are spread over them. One per
    /// endpoint by default, as if every subscription were a different customer's host.
    #[arg(long, default_value_t = workload::ENDPOINTS)]
    receivers: usize,
    /// The `dispatchd` binary (default: next to this one).
    #[arg(long)]
    dispatchd: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Events of `burst` (default 60,000, quick 6,000); each is owed 3 deliveries.
    #[arg(long)]
    burst_events: Option<usize>,
    /// Longest wait of `burst` for its last delivery, in seconds from the first publish.
    #[arg(long, default_value_t = 300)]
    burst_wait_seconds: u64,
    /// `throughput`, `latency` and `burst` are received by nginx (on PATH; `make bench-deps`
    /// installs it) instead of the bench's receivers. `head-of-line` always uses the bench's.
    #[arg(long)]
    nginx: bool,
}

/// Partitions of `dispatch.deliveries` in the bench's shape, unless `--delivery-partitions`.
const DELIVERY_PARTITIONS: i32 = 12;

impl E2eArgs {
    /// The user's configuration file of `--shape dev`; `None` for the bench's.
    fn user_config(&self) -> Option<PathBuf> {
        (self.shape == Shape::Dev).then(|| {
            self.dev_config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEV_CONFIG))
        })
    }

    /// Applies the shape to a run's settings.
    fn configure(&self, settings: &mut SystemSettings) {
        settings.delivery_partitions = self.delivery_partitions.unwrap_or(DELIVERY_PARTITIONS);
        settings.user_config = self.user_config();
    }

    /// Refuses flags the shape cannot honour, before anything runs.
    fn check(&self, chosen: &[Which]) -> anyhow::Result<()> {
        match self.shape {
            Shape::Bench => anyhow::ensure!(
                self.dev_config.is_none(),
                "--dev-config is the configuration of --shape dev"
            ),
            Shape::Dev => {
                anyhow::ensure!(
                    !chosen.contains(&Which::HeadOfLine),
                    "--shape dev runs throughput, latency and burst: head-of-line's hanging \
                     endpoints are measured against the bench's 5 s HTTP timeout and 1 s retry tier"
                );
                anyhow::ensure!(
                    self.senders == 1,
                    "--shape dev runs one `dispatchd all`: --senders does not apply"
                );
                anyhow::ensure!(
                    self.delivery_partitions.is_none(),
                    "--shape dev has the configuration file's partitions: --delivery-partitions \
                     does not apply"
                );
                if let Some(file) = self.user_config() {
                    anyhow::ensure!(
                        file.is_file(),
                        "no configuration file {} (--dev-config)",
                        file.display()
                    );
                }
            }
        }
        Ok(())
    }
}

/// Latency percentiles, in milliseconds; infinite (JSON `null`) when that share of the pairs
/// had not arrived by the end of the wait.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `micros` (`u64::MAX`: never arrived).
    pub(crate) fn of(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        let at = |fraction: f64| {
            if micros.is_empty() {
                return f64::NAN;
            }
            let index = ((micros.len() as f64 - 1.0) * fraction).round() as usize;
            match micros[index.min(micros.len() - 1)] {
                u64::MAX => f64::INFINITY,
                value => value as f64 / 1000.0,
            }
        };
        Percentiles {
            samples: micros.len(),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

/// `throughput`'s figures.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    /// Who received (absent: the bench's fleet).
    #[serde(skip_serializing_if = "ReceiverKind::is_bench")]
    pub receiver: ReceiverKind,
    /// Measurement window, seconds (after a warm-up).
    pub window_seconds: f64,
    /// Webhooks accepted by the receivers per second in the window (duplicates included).
    pub deliveries_per_second: f64,
    /// The same as events per second (÷ fan-out 3).
    pub events_per_second: f64,
    /// deliveries/s ÷ the raw HTTP limit.
    pub fraction_of_http_limit: Option<f64>,
    /// deliveries/s ÷ the raw Kafka produce→consume limit.
    pub fraction_of_kafka_limit: Option<f64>,
    /// CPU seconds of each process in the window, and its peak RSS (the local broker's too,
    /// when `kafka.sh` started it).
    pub processes: Vec<ProcessUsage>,
    /// CPU seconds of the bench process itself (publisher and receivers) in the window.
    pub bench_process_cpu_seconds: f64,
    /// The ledger after the run drained.
    pub verdict: Verdict,
}

/// A fixed-rate run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RateResult {
    /// Who received (absent: the bench's fleet).
    #[serde(skip_serializing_if = "ReceiverKind::is_bench")]
    pub receiver: ReceiverKind,
    /// Events published per second.
    pub events_per_second: u64,
    /// Fraction of endpoints hanging.
    pub hanging_fraction: f64,
    /// Publishing time, seconds.
    pub seconds: f64,
    /// The pairs owed to every endpoint that does not hang in this run.
    pub healthy: Figures,
    /// The same figures on the 180 endpoints that never hang in `head-of-line`, in every run.
    pub comparable: Figures,
    /// CPU seconds of each process over the run, and its peak RSS (nginx's too, when it
    /// received).
    pub processes: Vec<ProcessUsage>,
    /// The ledger (the hanging endpoints' pairs count as missing until their retries end).
    pub verdict: Option<Verdict>,
}

/// Delivery figures of a set of (event, endpoint) pairs.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Pairs owed.
    pub owed: usize,
    /// Delivered by the end of the wait.
    pub delivered: usize,
    /// Delivered by the end of publishing + 5 s, per second of publishing.
    pub deliveries_per_second: f64,
    /// Event-to-delivery latency (first arrival); pairs never delivered count as not reached.
    pub latency: Percentiles,
}

/// Deliveries that arrived by this moment count towards deliveries/s: the end of publishing +
/// 5 s, on the fleet's clock and on the wall clock (nginx's log).
#[derive(Debug, Clone, Copy)]
struct InTimeBy {
    fleet: Duration,
    unix_us: u64,
}

impl Figures {
    fn of(
        harness: &Harness,
        receiver: &Receiver,
        pairs: &[(u64, usize)],
        occurred_us: &HashMap<u64, u64>,
        grace: InTimeBy,
        seconds: f64,
    ) -> anyhow::Result<Self> {
        let mut in_time = 0usize;
        let mut delivered = 0;
        let mut latencies = Vec::with_capacity(pairs.len());
        match receiver {
            Receiver::Bench(_) => {
                for reception in harness.fleet.receptions(pairs) {
                    match reception {
                        Some(reception) => {
                            delivered += 1;
                            latencies.push(reception.latency_us);
                            if reception.first_at <= grace.fleet {
                                in_time += 1;
                            }
                        }
                        // Not there by the end of the wait: slower than anything measured, so
                        // it counts in the percentiles as never (a percentile it decides reads
                        // as not reached).
                        None => latencies.push(u64::MAX),
                    }
                }
            }
            Receiver::Nginx(_) => {
                // From the event's publish time to its first arrival in nginx's access log.
                for (arrival, (seq, _)) in receiver.arrivals(pairs, occurred_us)?.iter().zip(pairs)
                {
                    match arrival {
                        Some(arrival) => {
                            let published = occurred_us
                                .get(seq)
                                .copied()
                                .ok_or_else(|| anyhow::anyhow!("no publish time of event {seq}"))?;
                            delivered += 1;
                            latencies.push(arrival.first_unix_us.saturating_sub(published));
                            if arrival.first_unix_us <= grace.unix_us {
                                in_time += 1;
                            }
                        }
                        None => latencies.push(u64::MAX),
                    }
                }
            }
        }
        Ok(Figures {
            owed: pairs.len(),
            delivered,
            deliveries_per_second: in_time as f64 / seconds,
            latency: Percentiles::of(latencies),
        })
    }
}

/// Fraction of the endpoints that hang in `head-of-line`.
const HEAD_OF_LINE_HANGING: f64 = 0.1;

/// `head-of-line` beside its reference.
#[derive(Debug, Clone, Serialize)]
pub struct HeadOfLineResult {
    /// With hanging endpoints.
    pub with_hangs: RateResult,
    /// Without (the `latency` run at the same rate).
    pub without_hangs: RateResult,
    /// Deliveries/s to the 180 never-hanging endpoints, with hangs ÷ without.
    pub throughput_kept: f64,
    /// Their p99, with hangs ÷ without.
    pub p99_ratio: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `e2e`.
    pub bench: &'static str,
    /// Unix seconds at start.
    pub started_at_unix: u64,
    /// `git rev-parse HEAD` (with `-dirty` when the tree has changes).
    pub commit: String,
    /// The command line.
    pub command: String,
    /// Cores, kernel, CPU model.
    pub machine: String,
    /// Quick mode.
    pub quick: bool,
    /// The user's shape (`--shape dev`); absent for the bench's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_shape: Option<UserShape>,
    /// Sender processes.
    pub senders: usize,
    /// `baseline`.
    pub baseline: Option<Limits>,
    /// `throughput`.
    pub throughput: Option<ThroughputResult>,
    /// `latency`, one per rate.
    pub latency: Vec<RateResult>,
    /// `head-of-line`.
    pub head_of_line: Option<HeadOfLineResult>,
    /// `burst`.
    pub burst: Option<BurstResult>,
}

/// How `--shape dev` ran the system.
#[derive(Debug, Clone, Serialize)]
pub struct UserShape {
    /// The configuration file, as given.
    pub config: String,
    /// The one process of every scenario.
    pub process: &'static str,
    /// What the bench overrode in it, as `DISPATCH_*` environment variables.
    pub overrides: Vec<&'static str>,
}

/// `git rev-parse --short HEAD`, `-dirty` when tracked files changed.
pub fn commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = run(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

/// A one-line description of the machine.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, Linux {}", kernel.trim())
}

/// Usage of the `dispatchd` processes and of the local brokers `kafka.sh` started.
pub(crate) fn usage_now(harness: &mut Harness) -> Vec<ProcessUsage> {
    let mut usage = harness.system.usage();
    usage.extend(crate::system::broker_usage());
    usage
}

/// [`usage_now`] and the receiver's (nginx's), when it is a process of its own.
pub(crate) fn usage_with(harness: &mut Harness, receiver: &Receiver) -> Vec<ProcessUsage> {
    let mut usage = usage_now(harness);
    usage.extend(receiver.usage());
    usage
}

pub(crate) fn window_usage(before: &[ProcessUsage], after: &[ProcessUsage]) -> Vec<ProcessUsage> {
    after
        .iter()
        .map(|now| {
            let start = before
                .iter()
                .find(|b| b.process == now.process)
                .map_or(0.0, |b| b.cpu_seconds);
            ProcessUsage {
                process: now.process.clone(),
                cpu_seconds: now.cpu_seconds - start,
                peak_rss_mib: now.peak_rss_mib,
            }
        })
        .collect()
}

/// The run's `dispatchd` processes: one `all` on a user's configuration, else a fan-out and
/// `senders` senders.
pub(crate) async fn start_roles(harness: &mut Harness, senders: usize) -> anyhow::Result<()> {
    if harness.system.runs_user_config() {
        harness.system.start(Role::All, 0).await?;
        return Ok(());
    }
    harness.system.start(Role::Fanout, 0).await?;
    for instance in 0..senders.max(1) {
        harness.system.start(Role::Sender, instance).await?;
    }
    Ok(())
}

/// Warms the broker and the processes: a few seconds of traffic nobody measures (the first
/// run after a broker start is much slower than the rest), waited for at the receiver.
pub(crate) async fn warm_up(harness: &Harness, receiver: &Receiver) -> anyhow::Result<()> {
    let accepted_before = receiver.accepted()?;
    let publishing = harness.publish(Pace::Rate(500), Duration::from_secs(3), 0);
    let _ = publishing.await;
    let pairs = ledger::owed_pairs(&harness.publisher.published().await.acked);
    let missing = receiver
        .wait_for(&pairs, accepted_before, Duration::from_secs(30))
        .await?;
    if missing > 0 {
        eprintln!("warm-up: {missing} deliveries still missing after 30 s; going on");
    }
    Ok(())
}

async fn throughput(
    env: &Environment,
    args: &E2eArgs,
    window: Duration,
    limits: Option<&Limits>,
) -> anyhow::Result<ThroughputResult> {
    let (mut harness, receiver) =
        receiver::prepare(env, "throughput", args.receivers, args.nginx, |s| {
            args.configure(s);
        })
        .await?;
    start_roles(&mut harness, args.senders).await?;
    warm_up(&harness, &receiver).await?;
    let publishing = harness.publish_counted(
        Pace::FlatOut { max_ahead: 10_000 },
        window + Duration::from_secs(120),
        0,
        receiver.counter(),
    );
    // Let the pipeline fill before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = usage_with(&mut harness, &receiver);
    let self_before = crate::system::own_cpu_seconds();
    let accepted_before = receiver.accepted()?;
    let started = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let accepted = receiver.accepted()? - accepted_before;
    let elapsed = started.elapsed().as_secs_f64();
    let processes = window_usage(&before, &usage_with(&mut harness, &receiver));
    let bench_cpu = crate::system::own_cpu_seconds() - self_before;
    harness.stop_publishing();
    let _ = publishing.await;
    let verdict = receiver.settle(&harness, Duration::from_secs(180)).await?;
    harness.finish(false).await;
    // nginx stops here (dropped), after the processes: none of their requests meets a closed
    // port.
    let kind = receiver.kind();
    drop(receiver);
    let deliveries_per_second = accepted as f64 / elapsed;
    Ok(ThroughputResult {
        receiver: kind,
        window_seconds: elapsed,
        deliveries_per_second,
        events_per_second: deliveries_per_second / workload::FAN_OUT as f64,
        fraction_of_http_limit: limits.map(|l| deliveries_per_second / l.http_requests_per_second),
        fraction_of_kafka_limit: limits
            .map(|l| deliveries_per_second / l.kafka_messages_per_second),
        processes,
        bench_process_cpu_seconds: bench_cpu,
        verdict,
    })
}

fn hangs(endpoint: usize, fraction: f64) -> bool {
    // Every k-th endpoint, so the hanging ones spread over accounts and partitions.
    fraction > 0.0 && endpoint.is_multiple_of(((1.0 / fraction).round() as usize).max(1))
}

/// `rate` events/s for `seconds`; `hanging_fraction` of the endpoints hang (the fleet's only),
/// the webhooks go to nginx when `nginx`.
async fn at_rate(
    env: &Environment,
    args: &E2eArgs,
    rate: u64,
    seconds: Duration,
    hanging_fraction: f64,
    nginx: bool,
) -> anyhow::Result<RateResult> {
    let name = if hanging_fraction > 0.0 {
        "head-of-line"
    } else {
        "latency"
    };
    anyhow::ensure!(
        !(nginx && hanging_fraction > 0.0),
        "nginx cannot hang: hanging endpoints need the bench's receivers"
    );
    let (mut harness, receiver) = receiver::prepare(env, name, args.receivers, nginx, |s| {
        args.configure(s);
    })
    .await?;
    start_roles(&mut harness, args.senders).await?;
    warm_up(&harness, &receiver).await?;
    for endpoint in 0..workload::ENDPOINTS {
        if hangs(endpoint, hanging_fraction) {
            harness.fleet.set_mode(endpoint, Mode::Hang);
        }
    }
    let before = usage_with(&mut harness, &receiver);
    let first_seq = harness.publisher.sent();
    let start = harness.fleet.elapsed();
    let publishing = harness.publish(Pace::Rate(rate), seconds, 0);
    let _ = publishing.await;
    let publish_end = harness.fleet.elapsed();
    let publish_end_unix_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
    let acked: Vec<u64> = harness
        .publisher
        .published()
        .await
        .acked
        .into_iter()
        .filter(|&seq| seq >= first_seq)
        .collect();
    // Wait for the healthy pairs (the hanging ones take their whole schedule).
    let healthy: Vec<(u64, usize)> = ledger::owed_pairs(&acked)
        .into_iter()
        .filter(|&(_, e)| !hangs(e, hanging_fraction))
        .collect();
    let wait_until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let missing = receiver.missing(&healthy)?;
        if missing == 0 || std::time::Instant::now() > wait_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let processes = window_usage(&before, &usage_with(&mut harness, &receiver));
    let grace = InTimeBy {
        fleet: publish_end + Duration::from_secs(5),
        unix_us: publish_end_unix_us + 5_000_000,
    };
    let publish_seconds = (publish_end - start).as_secs_f64();
    // Only nginx needs the publish times (the fleet measures from the body's `created_at`).
    let occurred_us = match receiver.kind() {
        ReceiverKind::Bench => HashMap::new(),
        ReceiverKind::Nginx => harness.publisher.occurred_us(),
    };
    let healthy_figures = Figures::of(
        &harness,
        &receiver,
        &healthy,
        &occurred_us,
        grace,
        publish_seconds,
    )?;
    // The endpoints that hang in `head-of-line` excluded, hanging or not, so both runs are
    // measured on the same endpoints.
    let comparable_pairs: Vec<(u64, usize)> = healthy
        .iter()
        .copied()
        .filter(|&(_, e)| !hangs(e, HEAD_OF_LINE_HANGING))
        .collect();
    let comparable = Figures::of(
        &harness,
        &receiver,
        &comparable_pairs,
        &occurred_us,
        grace,
        publish_seconds,
    )?;
    let verdict = if hanging_fraction > 0.0 {
        // The hanging endpoints' pairs are still in their retry schedule; no full ledger.
        None
    } else {
        // A rate beyond the system's capacity leaves a backlog: the ledger waits for it.
        Some(receiver.settle(&harness, Duration::from_secs(600)).await?)
    };
    for endpoint in 0..workload::ENDPOINTS {
        harness.fleet.set_mode(endpoint, Mode::Accept);
    }
    harness.finish(false).await;
    let kind = receiver.kind();
    drop(receiver);
    Ok(RateResult {
        receiver: kind,
        events_per_second: rate,
        hanging_fraction,
        seconds: publish_seconds,
        healthy: healthy_figures,
        comparable,
        processes,
        verdict,
    })
}

/// ` (nginx)` after a scenario's name when nginx received; nothing for the fleet.
fn receiver_note(kind: ReceiverKind) -> &'static str {
    match kind {
        ReceiverKind::Bench => "",
        ReceiverKind::Nginx => " (nginx)",
    }
}

pub(crate) fn ms(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.1} ms")
    } else {
        "not reached".to_owned()
    }
}

fn print_rate(label: &str, result: &RateResult) {
    let healthy = &result.healthy;
    let l = &healthy.latency;
    println!(
        "{label} {}/s events: healthy {}/{} delivered, {:.0} healthy deliveries/s, latency p50 {} p90 {} p99 {} p99.9 {} max {}{}",
        result.events_per_second,
        healthy.delivered,
        healthy.owed,
        healthy.deliveries_per_second,
        ms(l.p50_ms),
        ms(l.p90_ms),
        ms(l.p99_ms),
        ms(l.p999_ms),
        ms(l.max_ms),
        result
            .verdict
            .as_ref()
            .map(|v| format!("; {}", v.line("ledger")))
            .unwrap_or_default()
    );
}

/// Runs the chosen scenarios and writes the report.
pub async fn run(bootstrap: &str, args: &E2eArgs) -> anyhow::Result<()> {
    let env = match &args.dispatchd {
        Some(path) => Environment::with_dispatchd(bootstrap, path),
        None => Environment::beside_current_exe(bootstrap),
    };
    let all: &[Which] = match args.shape {
        Shape::Bench => &[
            Which::Baseline,
            Which::Throughput,
            Which::Latency,
            Which::HeadOfLine,
            Which::Burst,
        ],
        Shape::Dev => &[Which::Throughput, Which::Latency, Which::Burst],
    };
    let chosen: Vec<Which> = if args.scenarios.is_empty() {
        all.to_vec()
    } else {
        args.scenarios.clone()
    };
    args.check(&chosen)?;
    let window = Duration::from_secs(args.seconds.unwrap_or(if args.quick { 10 } else { 30 }));
    let started_at_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut report = Report {
        bench: "e2e",
        started_at_unix,
        commit: commit(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        quick: args.quick,
        user_shape: args.user_config().map(|file| UserShape {
            config: file.display().to_string(),
            process: "dispatchd all",
            overrides: USER_CONFIG_OVERRIDES.to_vec(),
        }),
        senders: args.senders,
        baseline: None,
        throughput: None,
        latency: Vec::new(),
        head_of_line: None,
        burst: None,
    };
    match &report.user_shape {
        None => println!("e2e on {} at {}", report.machine, report.commit),
        Some(shape) => println!(
            "e2e, dev shape (one `dispatchd all` on {}, only {} overridden), on {} at {}",
            shape.config,
            shape.overrides.join(", "),
            report.machine,
            report.commit
        ),
    }
    if chosen.contains(&Which::Baseline) {
        let kafka = crate::system::SystemSettings::new(
            bootstrap,
            &format!("bench.baseline.{started_at_unix}."),
        )
        .kafka();
        let (http_seconds, messages) = if args.quick {
            (Duration::from_secs(3), 30_000)
        } else {
            (Duration::from_secs(10), 200_000)
        };
        let limits = baseline::measure(&kafka, &kafka.topic_prefix, http_seconds, messages).await?;
        println!(
            "baseline: raw HTTP {:.0} requests/s (hyper client→server on loopback), raw Kafka {:.0} messages/s (1 KiB, acks=all, produce→consume)",
            limits.http_requests_per_second, limits.kafka_messages_per_second
        );
        report.baseline = Some(limits);
    }
    if chosen.contains(&Which::Throughput) {
        let result = throughput(&env, args, window, report.baseline.as_ref()).await?;
        let fraction =
            |f: Option<f64>| f.map_or("n/a".to_owned(), |f| format!("{:.1} %", f * 100.0));
        println!(
            "throughput{}: {:.0} deliveries/s ({:.0} events/s) over {:.0} s = {} of the HTTP limit, {} of the Kafka limit; {}",
            receiver_note(result.receiver),
            result.deliveries_per_second,
            result.events_per_second,
            result.window_seconds,
            fraction(result.fraction_of_http_limit),
            fraction(result.fraction_of_kafka_limit),
            result.verdict.line("ledger"),
        );
        for process in &result.processes {
            println!(
                "  {}: {:.1} CPU s in the window ({:.0} % of a core), peak RSS {:.0} MiB",
                process.process,
                process.cpu_seconds,
                process.cpu_seconds / result.window_seconds * 100.0,
                process.peak_rss_mib
            );
        }
        println!(
            "  bench ({}): {:.1} CPU s",
            match result.receiver {
                ReceiverKind::Bench => "publisher + receivers",
                ReceiverKind::Nginx => "publisher",
            },
            result.bench_process_cpu_seconds
        );
        report.throughput = Some(result);
    }
    let rates: Vec<u64> = match (args.rates.is_empty(), args.shape) {
        (false, _) => args.rates.clone(),
        (true, Shape::Bench) => vec![1000, 5000],
        // Issue 13's rates for the user's shape: 600 and 3,000 deliveries/s.
        (true, Shape::Dev) => vec![200, 1000],
    };
    let rates: Vec<u64> = if args.quick {
        rates.into_iter().take(1).collect()
    } else {
        rates
    };
    if chosen.contains(&Which::Latency) {
        for &rate in &rates {
            let result = at_rate(&env, args, rate, window, 0.0, args.nginx).await?;
            print_rate(
                &format!("latency{}", receiver_note(result.receiver)),
                &result,
            );
            report.latency.push(result);
        }
    }
    if chosen.contains(&Which::HeadOfLine) {
        let rate = rates.first().copied().unwrap_or(1000);
        // The reference must be received as the hanging run is: by the fleet.
        let reference = report
            .latency
            .iter()
            .find(|r| r.events_per_second == rate && r.receiver.is_bench());
        let without = match reference {
            Some(result) => result.clone(),
            None => {
                let result = at_rate(&env, args, rate, window, 0.0, false).await?;
                print_rate("latency", &result);
                result
            }
        };
        let with = at_rate(&env, args, rate, window, HEAD_OF_LINE_HANGING, false).await?;
        print_rate("head-of-line (10 % hanging)", &with);
        // Both on the same 180 endpoints (the ones that never hang).
        let result = HeadOfLineResult {
            throughput_kept: with.comparable.deliveries_per_second
                / without.comparable.deliveries_per_second,
            p99_ratio: with.comparable.latency.p99_ms / without.comparable.latency.p99_ms,
            with_hangs: with,
            without_hangs: without,
        };
        println!(
            "head-of-line: healthy endpoints kept {:.1} % of their throughput, p99 {:.2}× the run without hangs",
            result.throughput_kept * 100.0,
            result.p99_ratio
        );
        report.head_of_line = Some(result);
    }
    if chosen.contains(&Which::Burst) {
        let settings = BurstSettings {
            events: args
                .burst_events
                .unwrap_or(if args.quick { 6_000 } else { 60_000 }),
            nginx: args.nginx,
            wait: Duration::from_secs(args.burst_wait_seconds),
            senders: args.senders,
            delivery_partitions: args.delivery_partitions.unwrap_or(DELIVERY_PARTITIONS),
            receivers: args.receivers,
            user_config: args.user_config(),
        };
        let result = burst::run(&env, &settings).await?;
        burst::print(&result);
        report.burst = Some(result);
    }
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join(format!(
        "e2e-{}{}{started_at_unix}.json",
        match args.shape {
            Shape::Bench => "",
            Shape::Dev => "dev-",
        },
        if args.quick { "quick-" } else { "" }
    ));
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("report written to {}", path.display());
    Ok(())
}
