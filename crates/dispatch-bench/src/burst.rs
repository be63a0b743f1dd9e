//! `burst` of `dispatch-bench e2e`: how a pipeline really uses the product — a batch finishes
//! and its events are published all at once, with the roles running. The burst's events
//! (`image.generation.started` of ten accounts) reach 30 endpoints, three per event, so each
//! endpoint is owed a tenth of the events at once: far more than the sender's per-endpoint
//! `max_backlog`, which a healthy endpoint's burst must queue past, paced by back-pressure, not
//! go round the first retry tier (the deferrals are reported to show it does not). Figures:
//! how long publishing took, the time from the first publish to the last delivery and the
//! deliveries/s over it, publish-to-arrival latency, what never arrived within a bounded wait,
//! the deliveries the sender deferred (from its `/metrics`, by reason) and each process's CPU.
//!
//! The receiver is the bench's own fleet, or nginx (`--nginx`): a receiver that is not ours,
//! whose access log says what arrived when.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::e2e::{self, Percentiles};
use crate::harness::Environment;
use crate::ledger;
use crate::receiver::{self, ReceiverKind};
use crate::system::{ProcessUsage, Role, System};
use crate::workload;

/// The sender's deferral counter, label `reason`
/// (`dispatch_telemetry::names::SENDER_DEFERRED_TOTAL`): read from `/metrics` as any scraper
/// would, so the bench does not link the catalogue.
const SENDER_DEFERRED_TOTAL: &str = "dispatch_sender_deferred_total";

/// How the burst runs.
#[derive(Debug, Clone)]
pub struct BurstSettings {
    /// Events in the burst.
    pub events: usize,
    /// nginx receives instead of the bench's fleet.
    pub nginx: bool,
    /// Longest wait for the last delivery, counted from the first publish.
    pub wait: Duration,
    /// Sender processes.
    pub senders: usize,
    /// Partitions of dispatch.deliveries.
    pub delivery_partitions: i32,
    /// Receiver listeners (host:port pairs) the 200 endpoints are spread over.
    pub receivers: usize,
    /// A user's configuration file run as one `dispatchd all` (`--shape dev`); `None`: the
    /// bench's own, `senders` senders and a fan-out.
    pub user_config: Option<std::path::PathBuf>,
}

/// `burst`'s figures.
#[derive(Debug, Clone, Serialize)]
pub struct BurstResult {
    /// Who received.
    pub receiver: ReceiverKind,
    /// Events published.
    pub events: usize,
    /// Events the broker refused (owed to nobody).
    pub events_failed: u64,
    /// Endpoints the burst reaches.
    pub endpoints: usize,
    /// (event, endpoint) deliveries owed.
    pub owed: usize,
    /// From the first event handed to the producer until the last one was, seconds.
    pub enqueue_seconds: f64,
    /// From the first event handed to the producer until the broker acknowledged the last,
    /// seconds: how long publishing took.
    pub publish_seconds: f64,
    /// Owed deliveries that arrived within the wait.
    pub delivered: usize,
    /// Owed deliveries that had not arrived when the wait ended.
    pub not_arrived: usize,
    /// Of those, in the dead-letter queue (read only when some had not arrived).
    pub dead_lettered: Option<usize>,
    /// Extra arrivals of deliveries that had arrived already.
    pub duplicates: u64,
    /// From the first publish to the last delivery's (first) arrival, seconds.
    pub time_to_last_delivery_seconds: f64,
    /// Delivered ÷ that time.
    pub deliveries_per_second: f64,
    /// From each event's publish time (`occurred_at`) to its delivery's first arrival;
    /// deliveries that never arrived count as not reached.
    pub latency: Percentiles,
    /// Deliveries the sender deferred to the first retry tier during the burst, by reason
    /// (`dispatch_sender_deferred_total`); absent when `/metrics` could not be read.
    pub deferred: Option<BTreeMap<String, u64>>,
    /// Their sum.
    pub deferred_total: Option<u64>,
    /// The span the CPU figures cover: from just before the first publish until the wait saw
    /// the last delivery (at most 100 ms after it arrived) or gave up, seconds.
    pub cpu_span_seconds: f64,
    /// CPU seconds of each process over that span, and its peak RSS (the broker's and nginx's
    /// too, when they run).
    pub processes: Vec<ProcessUsage>,
    /// CPU seconds of the bench process itself (publisher and, without nginx, receivers).
    pub bench_process_cpu_seconds: f64,
}

/// `name{reason="…"} value` lines of a Prometheus text exposition, summed by reason.
fn counter_by_reason(exposition: &str, name: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once('}') {
                Some(split) => split,
                None => continue,
            },
            // Another metric whose name starts with this one's, or a comment.
            None if !rest.starts_with(' ') => continue,
            None => ("", rest),
        };
        let reason = labels
            .split(',')
            .find_map(|label| label.trim().strip_prefix("reason=\""))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        let Some(value) = value
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *counts.entry(reason).or_insert(0) += value as u64;
    }
    counts
}

/// The deferral counter of every running sender, summed by reason.
async fn deferred_now(system: &mut System) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut total = BTreeMap::new();
    for port in system.metrics_ports(Role::Sender) {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let (status, body) = crate::client::get(&url).await?;
        anyhow::ensure!(status == 200, "{url} answered {status}");
        for (reason, count) in counter_by_reason(&body, SENDER_DEFERRED_TOTAL) {
            *total.entry(reason).or_insert(0) += count;
        }
    }
    Ok(total)
}

/// Runs the burst: fresh topics and processes, a warm-up, then the burst and its wait.
pub async fn run(env: &Environment, settings: &BurstSettings) -> anyhow::Result<BurstResult> {
    let (mut harness, receiver) =
        receiver::prepare(env, "burst", settings.receivers, settings.nginx, |s| {
            s.delivery_partitions = settings.delivery_partitions;
            s.user_config.clone_from(&settings.user_config);
        })
        .await?;
    e2e::start_roles(&mut harness, settings.senders).await?;

    // Warm-up, as in the other scenarios (the first traffic after a broker start is much
    // slower), waited for at whichever receiver this run uses.
    e2e::warm_up(&harness, &receiver).await?;

    let deferred_before = deferred_now(&mut harness.system).await;
    let before = e2e::usage_with(&mut harness, &receiver);
    let self_before = crate::system::own_cpu_seconds();
    let accepted_before = receiver.accepted()?;
    let started = Instant::now();
    let burst = harness.publisher.publish_burst(settings.events).await;
    let owed = ledger::owed_pairs(&burst.acked);
    let occurred_us: HashMap<u64, u64> = burst.events.iter().copied().collect();
    let wait_left = settings.wait.saturating_sub(started.elapsed());
    let not_arrived = receiver.wait_for(&owed, accepted_before, wait_left).await?;
    let cpu_span = started.elapsed().as_secs_f64();
    let processes = e2e::window_usage(&before, &e2e::usage_with(&mut harness, &receiver));
    let bench_cpu = crate::system::own_cpu_seconds() - self_before;
    let deferred = match (deferred_before, deferred_now(&mut harness.system).await) {
        (Ok(before), Ok(after)) => Some(
            after
                .into_iter()
                .map(|(reason, count)| {
                    let earlier = before.get(&reason).copied().unwrap_or(0);
                    (reason, count.saturating_sub(earlier))
                })
                .filter(|&(_, count)| count > 0)
                .collect::<BTreeMap<_, _>>(),
        ),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("burst: reading the sender's deferrals: {error:#}");
            None
        }
    };

    let arrivals = receiver.arrivals(&owed, &occurred_us)?;
    let mut latencies = Vec::with_capacity(owed.len());
    let mut last_arrival_us = burst.started_unix_us;
    let mut duplicates = 0u64;
    for (arrival, (seq, _)) in arrivals.iter().zip(&owed) {
        match arrival {
            Some(arrival) => {
                let published = occurred_us.get(seq).copied().unwrap_or(0);
                latencies.push(arrival.first_unix_us.saturating_sub(published));
                last_arrival_us = last_arrival_us.max(arrival.first_unix_us);
                duplicates += u64::from(arrival.count.saturating_sub(1));
            }
            // Slower than anything measured: a percentile it decides reads as not reached.
            None => latencies.push(u64::MAX),
        }
    }
    let dead_lettered = if not_arrived > 0 {
        let dead = ledger::dead_letters(&harness.kafka, &harness.names.dlq())?;
        Some(
            owed.iter()
                .zip(&arrivals)
                .filter(|(pair, arrival)| arrival.is_none() && dead.contains_key(pair))
                .count(),
        )
    } else {
        None
    };
    let kind = receiver.kind();
    harness.finish(false).await;
    // nginx stops here (dropped), after the senders: none of their requests meets a closed port.
    drop(receiver);

    let delivered = owed.len() - not_arrived;
    let to_last = last_arrival_us.saturating_sub(burst.started_unix_us) as f64 / 1e6;
    Ok(BurstResult {
        receiver: kind,
        events: burst.events.len(),
        events_failed: burst.failed,
        endpoints: workload::burst_endpoints().len(),
        owed: owed.len(),
        enqueue_seconds: burst.enqueued.as_secs_f64(),
        publish_seconds: burst.acknowledged.as_secs_f64(),
        delivered,
        not_arrived,
        dead_lettered,
        duplicates,
        time_to_last_delivery_seconds: to_last,
        deliveries_per_second: if to_last > 0.0 {
            delivered as f64 / to_last
        } else {
            0.0
        },
        latency: Percentiles::of(latencies),
        deferred_total: deferred.as_ref().map(|d| d.values().sum()),
        deferred,
        cpu_span_seconds: cpu_span,
        processes,
        bench_process_cpu_seconds: bench_cpu,
    })
}

/// Prints the figures.
pub fn print(result: &BurstResult) {
    let l = &result.latency;
    println!(
        "burst ({} receiver): {} events → {} deliveries to {} endpoints; published in {:.2} s (all handed to the producer in {:.2} s); last delivery {:.1} s after the first publish = {:.0} deliveries/s; latency from publish p50 {} p90 {} p99 {} p99.9 {} max {}; not arrived {}{}, duplicates {}",
        result.receiver.name(),
        result.events,
        result.owed,
        result.endpoints,
        result.publish_seconds,
        result.enqueue_seconds,
        result.time_to_last_delivery_seconds,
        result.deliveries_per_second,
        e2e::ms(l.p50_ms),
        e2e::ms(l.p90_ms),
        e2e::ms(l.p99_ms),
        e2e::ms(l.p999_ms),
        e2e::ms(l.max_ms),
        result.not_arrived,
        result
            .dead_lettered
            .map(|d| format!(" ({d} of them dead-lettered)"))
            .unwrap_or_default(),
        result.duplicates,
    );
    match &result.deferred {
        Some(deferred) if deferred.is_empty() => {
            println!("  deferred to the retry tier by the sender: none");
        }
        Some(deferred) => println!(
            "  deferred to the retry tier by the sender: {} ({})",
            result.deferred_total.unwrap_or(0),
            deferred
                .iter()
                .map(|(reason, count)| format!("{reason} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => println!("  deferred to the retry tier by the sender: unknown (no /metrics)"),
    }
    for process in &result.processes {
        println!(
            "  {}: {:.1} CPU s over {:.1} s ({:.0} % of a core), peak RSS {:.0} MiB",
            process.process,
            process.cpu_seconds,
            result.cpu_span_seconds,
            process.cpu_seconds / result.cpu_span_seconds * 100.0,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferrals_are_read_by_reason_from_an_exposition() {
        let text = "\
# HELP dispatch_sender_deferred_total Deliveries parked on the first tier.
# TYPE dispatch_sender_deferred_total counter
dispatch_sender_deferred_total{reason=\"backlog\"} 1234
dispatch_sender_deferred_total{reason=\"other\"} 5
dispatch_sender_deferred_total_extra{reason=\"backlog\"} 99
dispatch_sender_dead_lettered_total 7
";
        let counts = counter_by_reason(text, SENDER_DEFERRED_TOTAL);
        assert_eq!(
            counts,
            BTreeMap::from([("backlog".to_owned(), 1234), ("other".to_owned(), 5)])
        );
        assert!(counter_by_reason("", SENDER_DEFERRED_TOTAL).is_empty());
    }
}
