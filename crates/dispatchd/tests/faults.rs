//! Short versions of the fault suite (`make faults` runs the full one): real `dispatchd`
//! processes on the real broker under load, something bad done to them, and the ledger check
//! at the end — every (event, subscription) the broker acknowledged reached its receiver or is
//! in the DLQ. Three scenarios: a sender killed with SIGKILL and restarted; endpoints down for
//! their whole schedule, dead-lettered with every attempt, then bulk-replayed through the admin
//! API; 1 % garbage records on the domain topic, every one quarantined.

use std::path::Path;

use dispatch_bench::faults::{Fault, FaultResult, Load, run_one};
use dispatch_bench::harness::Environment;
use dispatch_e2e::bootstrap;

/// A light load: enough records to spread over every partition and cross the fault.
const LOAD: Load = Load {
    rate: 60,
    seconds: 6,
};

async fn run(fault: Fault) -> FaultResult {
    let env = Environment::with_dispatchd(&bootstrap(), Path::new(env!("CARGO_BIN_EXE_dispatchd")));
    let result = run_one(&env, fault, LOAD)
        .await
        .unwrap_or_else(|e| panic!("{} could not run: {e:#}", fault.name()));
    println!("{}", result.line());
    assert!(result.passed(), "{}", result.line());
    // The load really crossed the system: something was owed and it all arrived.
    assert!(result.verdict.expected >= 3 * 300, "{}", result.line());
    assert_eq!(
        result.verdict.delivered,
        result.verdict.expected,
        "{}",
        result.line()
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_load_loses_nothing() {
    run(Fault::KillSender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_fill_the_dlq_and_a_bulk_replay_delivers_everything() {
    let result = run(Fault::EndpointDown).await;
    assert!(
        result
            .checks
            .iter()
            .any(|c| c.contains("dead-lettered after 4 attempts")),
        "{}",
        result.line()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_domain_topic_is_quarantined_and_the_rest_delivered() {
    let result = run(Fault::Garbage).await;
    assert!(
        result
            .checks
            .iter()
            .any(|c| c.starts_with("garbage published")),
        "{}",
        result.line()
    );
}

/// Issue 12 item 7: a sender, then a fan-out, killed with SIGKILL under load and restarted at
/// once (static group membership: the restarted process takes its partitions back). Deliveries
/// resume — the load goes on after each restart and every owed pair arrives — nothing is lost,
/// and after each kill a delivery arrives again within the 5 s window the scenario watches
/// (a third of the load). That is a recovery property, not a speed figure: with dynamic
/// membership the partitions wait for the broker to expire the dead member (the session,
/// 10 s; 45 s before issue 12), and the window stays silent. The gap itself is printed; `make
/// faults` reports it as a figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_and_a_fanout_killed_and_restarted_at_once_resume_and_lose_nothing() {
    let env = Environment::with_dispatchd(&bootstrap(), Path::new(env!("CARGO_BIN_EXE_dispatchd")));
    let load = Load {
        rate: LOAD.rate,
        seconds: 15,
    };
    let result = run_one(&env, Fault::KillRestart, load)
        .await
        .unwrap_or_else(|e| panic!("kill-restart could not run: {e:#}"));
    println!("{}", result.line());
    assert!(result.verdict.passed(), "{}", result.line());
    assert!(result.verdict.expected >= 3 * 300, "{}", result.line());
    assert_eq!(
        result.verdict.delivered,
        result.verdict.expected,
        "{}",
        result.line()
    );
    // A restart whose silence reached the window (or 10 s) is reported among the failures.
    let resumed = result
        .checks
        .iter()
        .filter(|line| line.contains("killed and restarted at once (static membership"))
        .count();
    assert_eq!(resumed, 2, "{}", result.line());
    assert!(
        !result
            .failures
            .iter()
            .any(|f| f.contains("exited on its own")),
        "{}",
        result.line()
    );
}
