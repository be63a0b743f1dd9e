//! Measures the memory the sender's per-endpoint state takes after 200,000 subscriptions were
//! seen (issue 12, item 5): each gets one delivery that is queued, released and delivered, as
//! the engine does, and the engine's map either keeps every queue (the old behaviour) or drops
//! idle ones in a sweep, as `Engine::sweep_idle` does once a second.
//!
//! `cargo run --release -p dispatch-sender --example endpoint_rss -- keep|evict [count]`
//! prints the process's peak RSS (VmHWM) and the queues left. Run each mode in its own process:
//! the peak is per process.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_sender::endpoint::{EndpointConfig, EndpointLimits, EndpointQueue};
use tokio::time::Instant;

/// What the engine keeps per endpoint besides the queue: the account, for the per-account share.
struct Endpoint {
    _account_id: String,
    queue: EndpointQueue<u64>,
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "evict".to_owned());
    let evict = match mode.as_str() {
        "evict" => true,
        "keep" => false,
        other => panic!("mode must be keep or evict, got {other:?}"),
    };
    let count: u64 = args
        .next()
        .map(|n| n.parse().expect("count is a number"))
        .unwrap_or(200_000);
    let config = EndpointConfig::default();
    let memory = config.max_cool_down();
    let start_rss = status_kib("VmRSS:");
    let mut endpoints: HashMap<String, Endpoint> = HashMap::new();
    let now = Instant::now();
    for n in 0..count {
        let id = format!("sub_{n:020}");
        let endpoint = endpoints.entry(id).or_insert_with(|| Endpoint {
            _account_id: format!("acc_{:08}", n / 4),
            queue: EndpointQueue::new(&config, EndpointLimits::default()),
        });
        endpoint.queue.push(n).expect("an empty queue has room");
        let released = endpoint.queue.next_ready(now).expect("nothing in flight");
        assert_eq!(released, n);
        endpoint.queue.complete(true, now).expect("in flight");
        // The engine sweeps once a second; at thousands of deliveries a second that is every
        // few thousand endpoints.
        if evict && n % 2_000 == 1_999 {
            endpoints.retain(|_, e| !e.queue.is_evictable(now + Duration::from_secs(1), memory));
        }
    }
    println!(
        "mode {mode}: {count} subscriptions seen, {} endpoint queues kept, peak RSS {} KiB (start {} KiB, now {} KiB)",
        endpoints.len(),
        status_kib("VmHWM:"),
        start_rss,
        status_kib("VmRSS:"),
    );
}
