//! `dispatch-bench`: measures the system against the real local broker. Each scenario prints a
//! summary and writes a JSON result under `bench/results/`.
//!
//! - `fanout`: pre-fills the domain topics with 1 KiB events of 100 accounts, 1,000
//!   subscriptions (10 per account, 3 of which match each event), then runs the fan-out flat out
//!   and times it from start until the group's committed offsets reach the end of the input.
//! - `sender`: delivery tasks at a fixed rate to 200 endpoints on a local receiver, optionally
//!   with a fraction of them hanging; healthy deliveries/s and produce-to-receive latency.

mod fanout;
mod sender;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's allocator: a profile of the sender flat out spent ~17 % of its
/// samples in glibc malloc/free (per-delivery records, tasks, requests). Used by the in-process sender and fan-out benches.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bench's own log (RUST_LOG overrides): warnings, but not librdkafka's complaints about a
/// broker the fault suite took down on purpose; the scenarios report what matters.
const DEFAULT_LOG: &str = "warn,rdkafka=off,librdkafka=off";

/// Benchmarks against the local broker (start it with `make kafka-up`).
#[derive(Debug, Parser)]
#[command(name = "dispatch-bench")]
struct Cli {
    /// Bootstrap servers of the broker.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:19092")]
    bootstrap_servers: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Fan-out throughput: events/s and delivery tasks/s.
    Fanout(fanout::FanoutArgs),
    /// Sender: healthy endpoints' deliveries/s and latency, optionally with hanging endpoints.
    Sender(sender::SenderArgs),
    /// The whole system as processes: baseline, throughput, latency, head-of-line, burst.
    E2e(dispatch_bench::e2e::E2eArgs),
    /// The fault suite: each scenario ends with a ledger check (lost must be 0).
    Faults(dispatch_bench::faults::FaultArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Fanout(args) => fanout::run(&cli.bootstrap_servers, &args).await,
        Scenario::Sender(args) => sender::run(&cli.bootstrap_servers, &args).await,
        Scenario::E2e(args) => dispatch_bench::e2e::run(&cli.bootstrap_servers, &args).await,
        Scenario::Faults(args) => dispatch_bench::faults::run(&cli.bootstrap_servers, &args).await,
    }
}
