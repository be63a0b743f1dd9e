//! `dispatch-bench faults`: the fault suite. Each scenario runs the system as real processes
//! under load, does something bad to it, and ends with the ledger check: every (event,
//! subscription) the broker acknowledged reached its receiver at least once or is in the DLQ;
//! lost must be 0 (duplicates are counted, at-least-once allows them).
//!
//! - `kill-sender`, `kill-fanout`: SIGKILL of the process mid-load, restarted 2 s later.
//! - `broker-restart`: the single broker restarted mid-load (`kafka.sh restart 1`).
//! - `kill-restart`: SIGKILL of the sender, restarted at once; later the same for the fan-out.
//!   Reports each one's gap: the longest time with no new delivery at any receiver after the
//!   kill (target ≤ 10 s: static group membership gives the restarted process its partitions
//!   back without waiting for the broker to expire the dead one).
//! - `broker-freeze`: a broker of its own frozen (SIGSTOP) for `--freeze-seconds` mid-load and
//!   thawed; reports the seconds from the thaw to the first subscription write through the
//!   admin API that succeeds (target ≤ 10 s).
//! - `broker-loss`: a three-broker cluster of its own (replication 3, `min.insync.replicas=2`),
//!   one broker killed mid-load and left down.
//! - `broker-pause`: a single broker of its own paused (SIGSTOP) mid-load for longer than the
//!   request timeout, then resumed; the fan-out must go on by itself.
//! - `poison-event`: mid-load, one event whose webhook body renders to ~1.2 MB (over the
//!   deliveries topic's `max.message.bytes`) → in `dispatch.invalid`, every other event
//!   delivered.
//! - `endpoint-down`: eight endpoints answer 503 for their whole (short) schedule, circuit
//!   breaker on → each of their deliveries in the DLQ after exactly `max_attempts` attempts
//!   (sent, or recorded as not sent while the circuit was open) → the endpoints come
//!   back → bulk replay through the admin API → all delivered, DLQ empty of them.
//! - `scale-out-in`: a second sender joins mid-load, then the first leaves (SIGTERM).
//! - `garbage`: 1 % of the domain topic's records are not events → every one in
//!   `dispatch.invalid`, every real event delivered.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hyper::Method;
use serde::Serialize;

use crate::fleet::Mode;
use crate::harness::{Environment, Harness};
use crate::ledger::{self, Verdict};
use crate::system::{Role, SystemSettings};
use crate::workload::{self, Pace};

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL of the sender mid-load, then a restart.
    KillSender,
    /// SIGKILL of the fan-out mid-load, then a restart.
    KillFanout,
    /// SIGKILL of the sender, then of the fan-out, each restarted at once; the gaps measured.
    KillRestart,
    /// A broker of its own frozen (SIGSTOP) mid-load, then thawed; time to the first write.
    BrokerFreeze,
    /// The single broker restarted mid-load.
    BrokerRestart,
    /// One of three brokers lost mid-load.
    BrokerLoss,
    /// A broker of its own paused longer than the request timeout mid-load, then resumed.
    BrokerPause,
    /// One event too large to fan out among the load.
    PoisonEvent,
    /// Endpoints down for their whole schedule, DLQ, bulk replay.
    EndpointDown,
    /// A second sender joins, then the first leaves.
    ScaleOutIn,
    /// 1 % garbage records on the domain topic.
    Garbage,
}

impl Fault {
    /// Every scenario, in the order `make faults` runs them.
    pub const ALL: [Fault; 11] = [
        Fault::KillSender,
        Fault::KillFanout,
        Fault::KillRestart,
        Fault::ScaleOutIn,
        Fault::Garbage,
        Fault::EndpointDown,
        Fault::BrokerRestart,
        Fault::BrokerLoss,
        Fault::BrokerPause,
        Fault::BrokerFreeze,
        Fault::PoisonEvent,
    ];

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillSender => "kill-sender",
            Fault::KillFanout => "kill-fanout",
            Fault::BrokerRestart => "broker-restart",
            Fault::KillRestart => "kill-restart",
            Fault::BrokerFreeze => "broker-freeze",
            Fault::BrokerLoss => "broker-loss",
            Fault::BrokerPause => "broker-pause",
            Fault::PoisonEvent => "poison-event",
            Fault::EndpointDown => "endpoint-down",
            Fault::ScaleOutIn => "scale-out-in",
            Fault::Garbage => "garbage",
        }
    }
}

/// How long and how hard each scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Events per second.
    pub rate: u64,
    /// Publishing time.
    pub seconds: u64,
}

/// Flags of `faults`.
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Scenarios to run (all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Fault>,
    /// Events per second during each scenario.
    #[arg(long, default_value_t = 300)]
    rate: u64,
    /// Publishing time of each scenario, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The `dispatchd` binary (default: next to this one).
    #[arg(long)]
    dispatchd: Option<PathBuf>,
    /// `kafka.sh`, which restarts the broker and runs the three-broker cluster.
    #[arg(long, default_value = "deploy/kafka/kafka.sh")]
    kafka_sh: PathBuf,
    /// Base port of the three-broker cluster of `broker-loss` (and of the single broker of
    /// `broker-pause`).
    #[arg(long, default_value_t = 29092)]
    cluster_port: u16,
    /// Base port of the broker of its own that `broker-freeze` freezes (its controller takes
    /// the next port).
    #[arg(long, default_value_t = 29192)]
    freeze_port: u16,
    /// How long `broker-freeze` keeps the broker frozen, in seconds.
    #[arg(long, default_value_t = 45)]
    freeze_seconds: u64,
    /// Run the `dispatchd` processes without `kafka.instance_id` (dynamic group membership),
    /// to measure what static membership changes (with a `dispatchd` that predates it).
    #[arg(long)]
    dynamic_membership: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct FaultResult {
    /// The scenario.
    pub scenario: Fault,
    /// The ledger.
    pub verdict: Verdict,
    /// What else the scenario checked, and what it found.
    pub checks: Vec<String>,
    /// Checks that failed (the verdict's own aside).
    pub failures: Vec<String>,
    /// Seconds the scenario took.
    pub seconds: f64,
    /// Where the `dispatchd` processes' configuration and logs are.
    pub logs: String,
}

impl FaultResult {
    /// Ledger passed and every extra check held.
    pub fn passed(&self) -> bool {
        self.verdict.passed() && self.failures.is_empty()
    }

    /// The one-line verdict.
    pub fn line(&self) -> String {
        let mut line = self.verdict.line(self.scenario.name());
        if self.verdict.passed() && !self.failures.is_empty() {
            line = line.replacen("PASS", "FAIL", 1);
        }
        for check in &self.checks {
            line.push_str("; ");
            line.push_str(check);
        }
        for failure in &self.failures {
            line.push_str("; FAILED: ");
            line.push_str(failure);
        }
        if !self.passed() && !self.logs.is_empty() {
            line.push_str("; logs in ");
            line.push_str(&self.logs);
        }
        line
    }
}

/// The report of a `faults` run.
#[derive(Debug, Serialize)]
struct FaultReport {
    bench: &'static str,
    started_at_unix: u64,
    commit: String,
    machine: String,
    command: String,
    rate: u64,
    seconds: u64,
    results: Vec<FaultResult>,
}

/// Starts publishing at `load` in the background and returns a third of the way in, when the
/// scenario does its damage.
async fn begin_load(
    harness: &Harness,
    load: Load,
    garbage_one_in: u64,
) -> tokio::task::JoinHandle<()> {
    let publishing = harness.publish(
        Pace::Rate(load.rate),
        Duration::from_secs(load.seconds),
        garbage_one_in,
    );
    tokio::time::sleep(Duration::from_secs(load.seconds / 3)).await;
    publishing
}

/// Waits for the publisher, then for the system to settle; the ledger.
async fn finish_load(
    harness: &Harness,
    publishing: tokio::task::JoinHandle<()>,
) -> anyhow::Result<Verdict> {
    publishing.await.context("publisher")?;
    let published = harness.publisher.published().await;
    if published.failed > 0 {
        eprintln!(
            "{} events were refused by the broker for good (not owed)",
            published.failed
        );
    }
    // Long enough for a lost broker's partitions to move and for a transaction stuck on them
    // to time out (transaction.timeout.ms, 60 s) and be redone.
    harness.settle(Duration::from_secs(240)).await
}

fn kafka_sh(args: &FaultArgs, env: &[(&str, String)], command: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(&args.kafka_sh)
        .args(command)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .with_context(|| format!("running {}", args.kafka_sh.display()))?;
    if !status.success() {
        bail!("{} {} failed", args.kafka_sh.display(), command.join(" "));
    }
    Ok(())
}

/// A broker (or cluster) of a scenario's own, started through `kafka.sh` on its own port and
/// run directory: pausing or killing the shared one would stall everyone else's tests.
struct OwnBroker<'a> {
    args: &'a FaultArgs,
    env: [(&'static str, String); 2],
}

impl<'a> OwnBroker<'a> {
    /// Starts `nodes` brokers from `port` (nodes listen on `port`, `port + 2`, …) with their
    /// data under the temporary directory's `run_dir`, and returns them with `env` pointed at
    /// them.
    fn start(
        args: &'a FaultArgs,
        env: &Environment,
        port: u16,
        run_dir: &str,
        nodes: u16,
    ) -> anyhow::Result<(Self, Environment)> {
        let broker = OwnBroker {
            args,
            env: [
                ("KAFKA_PORT", port.to_string()),
                (
                    "KAFKA_RUN_DIR",
                    std::env::temp_dir().join(run_dir).display().to_string(),
                ),
            ],
        };
        broker.kafka_sh(&["start", "--nodes", &nodes.to_string()])?;
        let bootstrap = (0..nodes)
            .map(|n| format!("127.0.0.1:{}", port + 2 * n))
            .collect::<Vec<_>>()
            .join(",");
        let own = Environment {
            bootstrap,
            ..env.clone()
        };
        Ok((broker, own))
    }

    /// `kafka.sh pause|resume|kill N` on one node, from async code.
    fn signal(&self, command: &str, node: u16) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.kafka_sh(&[command, &node.to_string()]))
    }

    fn kafka_sh(&self, command: &[&str]) -> anyhow::Result<()> {
        kafka_sh(self.args, &self.env, command)
    }

    /// Stops every node; a failure is reported, not raised, so the scenario's outcome stands.
    fn stop(self, scenario: &str) {
        if let Err(error) = self.kafka_sh(&["stop"]) {
            eprintln!("stopping the broker of {scenario}: {error:#}");
        }
    }
}

/// Runs one scenario against the broker of `env`.
pub async fn run_one(env: &Environment, fault: Fault, load: Load) -> anyhow::Result<FaultResult> {
    run_scenario(env, fault, load, None).await
}

async fn run_scenario(
    env: &Environment,
    fault: Fault,
    load: Load,
    args: Option<&FaultArgs>,
) -> anyhow::Result<FaultResult> {
    let started = std::time::Instant::now();
    let mut checks = Vec::new();
    let mut failures = Vec::new();
    let mut logs = String::new();
    let verdict = match fault {
        Fault::KillSender | Fault::KillFanout => {
            let (mut harness, fanout, sender) = pipeline(env, fault.name(), |_| {}).await?;
            let (victim, role) = if fault == Fault::KillSender {
                (sender, Role::Sender)
            } else {
                (fanout, Role::Fanout)
            };
            let publishing = begin_load(&harness, load, 0).await;
            harness.system.kill(victim)?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            harness.system.start(role, 0).await?;
            let verdict = finish_load(&harness, publishing).await?;
            checks.push(format!(
                "{} killed with SIGKILL and restarted",
                role_name(role)
            ));
            close(harness, &verdict, &mut failures, &mut logs).await;
            verdict
        }
        Fault::ScaleOutIn => {
            let (mut harness, _, first) = pipeline(env, fault.name(), |_| {}).await?;
            let publishing = begin_load(&harness, load, 0).await;
            harness.system.start(Role::Sender, 1).await?;
            tokio::time::sleep(Duration::from_secs(load.seconds / 3)).await;
            let drain = Duration::from_millis(harness.system.settings.drain_timeout_ms + 10_000);
            if let Err(error) = harness.system.terminate(first, drain).await {
                failures.push(format!("scale-in: {error:#}"));
            }
            let verdict = finish_load(&harness, publishing).await?;
            checks.push("sender-1 joined, then sender-0 left with SIGTERM".to_owned());
            close(harness, &verdict, &mut failures, &mut logs).await;
            verdict
        }
        Fault::Garbage => {
            let (harness, _, _) = pipeline(env, fault.name(), |_| {}).await?;
            let publishing = begin_load(&harness, load, 100).await;
            let verdict = finish_load(&harness, publishing).await?;
            let garbage = harness.publisher.published().await.garbage;
            let quarantined = crate::topics::read_topic(
                &harness.kafka,
                &harness.names.invalid(),
                Duration::from_secs(60),
                |_| {},
            )?;
            let line = format!("garbage published {garbage}, in dispatch.invalid {quarantined}");
            if quarantined as u64 == garbage && garbage > 0 {
                checks.push(line);
            } else {
                failures.push(line);
            }
            close(harness, &verdict, &mut failures, &mut logs).await;
            verdict
        }
        Fault::EndpointDown => {
            endpoint_down(env, load, &mut checks, &mut failures, &mut logs).await?
        }
        Fault::KillRestart => {
            let dynamic = args.is_some_and(|a| a.dynamic_membership);
            kill_restart(env, load, dynamic, &mut checks, &mut failures, &mut logs).await?
        }
        Fault::BrokerFreeze => {
            let Some(args) = args else {
                bail!("broker-freeze needs kafka.sh (run it through `dispatch-bench faults`)");
            };
            broker_freeze(env, load, args, &mut checks, &mut failures, &mut logs).await?
        }
        Fault::BrokerRestart => {
            let Some(args) = args else {
                bail!("broker-restart needs kafka.sh (run it through `dispatch-bench faults`)");
            };
            let (harness, _, _) = pipeline(env, fault.name(), |_| {}).await?;
            let publishing = begin_load(&harness, load, 0).await;
            tokio::task::block_in_place(|| kafka_sh(args, &[], &["restart", "1"]))?;
            let verdict = finish_load(&harness, publishing).await?;
            checks.push("broker restarted".to_owned());
            close(harness, &verdict, &mut failures, &mut logs).await;
            verdict
        }
        Fault::BrokerLoss => {
            let Some(args) = args else {
                bail!("broker-loss needs kafka.sh (run it through `dispatch-bench faults`)");
            };
            broker_loss(env, load, args, &mut checks, &mut failures, &mut logs).await?
        }
        Fault::BrokerPause => {
            let Some(args) = args else {
                bail!("broker-pause needs kafka.sh (run it through `dispatch-bench faults`)");
            };
            broker_pause(env, load, args, &mut checks, &mut failures, &mut logs).await?
        }
        Fault::PoisonEvent => {
            poison_event(env, load, &mut checks, &mut failures, &mut logs).await?
        }
    };
    Ok(FaultResult {
        scenario: fault,
        verdict,
        checks,
        failures,
        seconds: started.elapsed().as_secs_f64(),
        logs,
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Fanout => "fan-out",
        Role::Sender => "sender",
        Role::Api => "api",
        Role::All => "all",
    }
}

/// A fresh run of `scenario` with a fan-out and a sender running: the harness and the two
/// processes' indexes.
async fn pipeline(
    env: &Environment,
    scenario: &str,
    adjust: impl FnOnce(&mut SystemSettings),
) -> anyhow::Result<(Harness, usize, usize)> {
    let mut harness = Harness::prepare(env, scenario, 2, adjust).await?;
    let fanout = harness.system.start(Role::Fanout, 0).await?;
    let sender = harness.system.start(Role::Sender, 0).await?;
    Ok((harness, fanout, sender))
}

/// Ends a run: notes processes that exited on their own and where the logs are, stops every
/// process, and deletes the topics unless something failed.
async fn close(
    mut harness: Harness,
    verdict: &Verdict,
    failures: &mut Vec<String>,
    logs: &mut String,
) {
    for crashed in harness.system.crashed() {
        failures.push(format!("{crashed} exited on its own"));
    }
    *logs = harness.system.dir.display().to_string();
    let failed = !verdict.passed() || !failures.is_empty();
    if failed {
        // The roles are still running: keep what their threads are doing.
        let dumps = harness.system.dump_threads();
        if !dumps.is_empty() {
            eprintln!("thread backtraces of the roles: {dumps:?}");
        }
    }
    harness.finish(failed).await;
}

/// Endpoints of accounts 0 and 1 (eight) fail for their whole schedule.
fn down(endpoint: usize) -> bool {
    endpoint < 2 * workload::PER_ACCOUNT
}

async fn endpoint_down(
    env: &Environment,
    load: Load,
    checks: &mut Vec<String>,
    failures: &mut Vec<String>,
    logs: &mut String,
) -> anyhow::Result<Verdict> {
    // The circuit breaker is on (its default threshold): attempts that fall due while it is
    // open are recorded as not sent and spend the schedule, so every delivery still reaches the
    // DLQ after exactly `max_attempts` attempts (issue 12, item 8).
    let (mut harness, _, _) = pipeline(env, "endpoint-down", |s| {
        s.retry_schedule = "0s,1s,2s".to_owned();
    })
    .await?;
    harness.system.start(Role::Api, 0).await?;
    for endpoint in (0..workload::ENDPOINTS).filter(|&e| down(e)) {
        harness.fleet.set_mode(endpoint, Mode::Fail);
    }
    let publishing = begin_load(&harness, load, 0).await;
    let verdict = finish_load(&harness, publishing).await?;
    let acked = harness.publisher.published().await.acked;
    let owed_down: Vec<(u64, usize)> = ledger::owed_pairs(&acked)
        .into_iter()
        .filter(|&(_, e)| down(e))
        .collect();
    let dead = ledger::dead_letters(&harness.kafka, &harness.names.dlq())?;
    // The first attempt and one per delay of the schedule.
    let max_attempts = harness.system.settings.retry_schedule.split(',').count() + 1;
    let dead_right = owed_down
        .iter()
        .filter(|pair| dead.get(pair).is_some_and(|d| d.attempts == max_attempts))
        .count();
    let refused: u64 = (0..workload::ENDPOINTS)
        .filter(|&e| down(e))
        .map(|e| harness.fleet.refused(e))
        .sum();
    let line = format!(
        "{dead_right}/{} deliveries to the 8 down endpoints dead-lettered after {max_attempts} attempts ({refused} requests refused)",
        owed_down.len()
    );
    if dead_right == owed_down.len() && !owed_down.is_empty() {
        checks.push(line);
    } else {
        failures.push(line);
    }
    if !verdict.passed() {
        failures.push("ledger before the replay".to_owned());
    }
    // Back up; replay everything through the admin API, a batch at a time.
    for endpoint in 0..workload::ENDPOINTS {
        harness.fleet.set_mode(endpoint, Mode::Accept);
    }
    // The down endpoints' circuits are open for at most the longest cool-down (twice the
    // first, see system.rs): a delivery replayed before that would be recorded as not sent
    // and dead-lettered again. After it, the first replayed delivery is the probe that closes
    // the circuit.
    tokio::time::sleep(Duration::from_millis(
        2 * harness.system.settings.cool_down_ms + 500,
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/v1/dlq/replay", harness.system.api_port);
    let token = harness.system.settings.api_token.clone();
    let mut replayed = 0u64;
    for _ in 0..1000 {
        let (status, body) = crate::client::call(
            Method::POST,
            &url,
            Some(&token),
            Some(&serde_json::json!({})),
        )
        .await?;
        if status != 202 {
            bail!("POST /v1/dlq/replay answered {status}: {body}");
        }
        let count = serde_json::from_str::<serde_json::Value>(&body)?["count"]
            .as_u64()
            .unwrap_or(0);
        if count == 0 {
            break;
        }
        replayed += count;
    }
    let missing = harness.wait_delivered(Duration::from_secs(120)).await;
    let after = harness.settle(Duration::from_secs(30)).await?;
    let line = format!(
        "bulk replay queued {replayed}; afterwards delivered {}/{} owed, {} missing",
        after.delivered, after.expected, missing
    );
    if replayed as usize == owed_down.len() && missing == 0 && after.dead_lettered == 0 {
        checks.push(line);
    } else {
        failures.push(line);
    }
    close(harness, &after, failures, logs).await;
    Ok(after)
}

/// What a restarted process must not exceed: no delivery anywhere for longer than this after a
/// kill, no subscription write refused for longer than this after a broker thaw.
const RECOVERY_TARGET: Duration = Duration::from_secs(10);

/// The longest time in `[from, to]` (the fleet's clock) with no first arrival of any (event,
/// endpoint) at any receiver: the silence a kill or a stall caused.
fn longest_silence(fleet: &crate::fleet::Fleet, from: Duration, to: Duration) -> Duration {
    let mut arrivals = vec![from, to];
    fleet.for_each(|_, _, reception| {
        if reception.first_at > from && reception.first_at < to {
            arrivals.push(reception.first_at);
        }
    });
    arrivals.sort_unstable();
    arrivals
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default()
}

/// `kill-restart`: the sender, then the fan-out, killed with SIGKILL and restarted at once;
/// each gap (the longest silence at the receivers from the kill until the next third of the
/// load) reported, and held to [`RECOVERY_TARGET`].
async fn kill_restart(
    env: &Environment,
    load: Load,
    dynamic_membership: bool,
    checks: &mut Vec<String>,
    failures: &mut Vec<String>,
    logs: &mut String,
) -> anyhow::Result<Verdict> {
    let (mut harness, fanout, sender) = pipeline(env, "kill-restart", |s| {
        s.static_membership = !dynamic_membership;
    })
    .await?;
    let publishing = begin_load(&harness, load, 0).await;
    let third = Duration::from_secs(load.seconds / 3);
    let mut kills = Vec::new();
    for (victim, role) in [(sender, Role::Sender), (fanout, Role::Fanout)] {
        let killed_at = harness.fleet.elapsed();
        harness.system.kill(victim)?;
        harness.system.start(role, 0).await?;
        let restarted_in = harness.fleet.elapsed() - killed_at;
        tokio::time::sleep(third).await;
        kills.push((role, killed_at, restarted_in));
    }
    let verdict = finish_load(&harness, publishing).await?;
    let membership = if dynamic_membership {
        "dynamic"
    } else {
        "static"
    };
    for (role, killed_at, restarted_in) in kills {
        let gap = longest_silence(&harness.fleet, killed_at, killed_at + third);
        // A silence as long as the whole window is only a lower bound.
        let bound = if gap >= third { "at least " } else { "" };
        let line = format!(
            "{} killed and restarted at once ({membership} membership; ready again after {:.1} s): longest time with no delivery {bound}{:.1} s",
            role_name(role),
            restarted_in.as_secs_f64(),
            gap.as_secs_f64()
        );
        if gap <= RECOVERY_TARGET && gap < third {
            checks.push(line);
        } else {
            failures.push(format!("{line} (target {} s)", RECOVERY_TARGET.as_secs()));
        }
    }
    close(harness, &verdict, failures, logs).await;
    Ok(verdict)
}

/// How soon after a broker freeze deliveries must flow again: a consumer librdkafka leaves
/// stuck outside its group is replaced after twice the session (20 s with the default 10 s,
/// `dispatch_kafka::group_health::stuck_after`), then rejoins within seconds.
const FREEZE_DELIVERY_TARGET: Duration = Duration::from_secs(30);

/// `broker-freeze`: on a broker of its own, the broker frozen with SIGSTOP for
/// `--freeze-seconds` a third of the way into the load, then thawed; subscription writes
/// through the admin API are tried every 200 ms from the thaw until one succeeds, and the time
/// to it is reported (held to [`RECOVERY_TARGET`]), as is the time to the first delivery after
/// the thaw (held to [`FREEZE_DELIVERY_TARGET`]); then the ledger.
async fn broker_freeze(
    env: &Environment,
    load: Load,
    args: &FaultArgs,
    checks: &mut Vec<String>,
    failures: &mut Vec<String>,
    logs: &mut String,
) -> anyhow::Result<Verdict> {
    let (broker, own) = OwnBroker::start(
        args,
        env,
        args.freeze_port,
        "dispatch-bench-kafka-freeze",
        1,
    )?;
    let outcome = async {
        let (mut harness, _, _) = pipeline(&own, "broker-freeze", |_| {}).await?;
        harness.system.start(Role::Api, 0).await?;
        let url = format!(
            "http://127.0.0.1:{}/v1/subscriptions",
            harness.system.api_port
        );
        let token = harness.system.settings.api_token.clone();
        let write = |n: u32| {
            let url = url.clone();
            let token = token.clone();
            async move {
                // A type the workload never publishes: these subscriptions are owed nothing.
                let body = serde_json::json!({
                    "account_id": "acc_freeze",
                    "url": format!("http://127.0.0.1:9/freeze-{n}"),
                    "event_types": ["map.region.completed"],
                });
                crate::client::call(Method::POST, &url, Some(&token), Some(&body)).await
            }
        };
        let (status, body) = write(0).await?;
        if status != 201 {
            bail!("a subscription write before the freeze answered {status}: {body}");
        }
        let publishing = begin_load(&harness, load, 0).await;
        broker.signal("pause", 1)?;
        tokio::time::sleep(Duration::from_secs(args.freeze_seconds)).await;
        broker.signal("resume", 1)?;
        let thawed = std::time::Instant::now();
        let thawed_at = harness.fleet.elapsed();
        let mut last = String::new();
        let mut written_after = None;
        for n in 1.. {
            match write(n).await {
                Ok((201, _)) => {
                    written_after = Some(thawed.elapsed());
                    break;
                }
                Ok((status, body)) => last = format!("{status}: {body}"),
                Err(error) => last = format!("{error:#}"),
            }
            if thawed.elapsed() > Duration::from_secs(300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Printed at once: the figure must survive a failure of the ledger check below (the
        // first run of this scenario lost it to a metadata error right after the thaw).
        println!(
            "broker-freeze: first subscription write after the thaw: {}",
            written_after.map_or_else(
                || format!("none within 300 s (last: {last})"),
                |after| format!("{:.1} s", after.as_secs_f64())
            )
        );
        let verdict = finish_load(&harness, publishing).await?;
        // Deliveries resume once both roles' consumers are back in their groups: at once, or
        // after a consumer librdkafka left stuck was replaced (dispatch_kafka::group_health).
        let mut resumed_after: Option<Duration> = None;
        harness.fleet.for_each(|_, _, reception| {
            if reception.first_at > thawed_at {
                let after = reception.first_at - thawed_at;
                resumed_after = Some(resumed_after.map_or(after, |best| best.min(after)));
            }
        });
        let resumed = resumed_after.map_or_else(
            || "no delivery after the thaw".to_owned(),
            |after| format!("first delivery {:.1} s after the thaw", after.as_secs_f64()),
        );
        println!("broker-freeze: {resumed}");
        match resumed_after {
            Some(after) if after <= FREEZE_DELIVERY_TARGET => checks.push(format!(
                "broker frozen {} s; {resumed}",
                args.freeze_seconds
            )),
            _ => failures.push(format!(
                "broker frozen {} s; {resumed} (target {} s)",
                args.freeze_seconds,
                FREEZE_DELIVERY_TARGET.as_secs()
            )),
        }
        match written_after {
            Some(after) if after <= RECOVERY_TARGET => checks.push(format!(
                "broker frozen {} s; first subscription write succeeded {:.1} s after the thaw",
                args.freeze_seconds,
                after.as_secs_f64()
            )),
            Some(after) => failures.push(format!(
                "broker frozen {} s; first subscription write succeeded {:.1} s after the thaw (target {} s; last refusal {last})",
                args.freeze_seconds,
                after.as_secs_f64(),
                RECOVERY_TARGET.as_secs()
            )),
            None => failures.push(format!(
                "broker frozen {} s; no subscription write succeeded within 300 s of the thaw (last: {last})",
                args.freeze_seconds
            )),
        }
        close(harness, &verdict, failures, logs).await;
        anyhow::Ok(verdict)
    }
    .await;
    broker.stop("broker-freeze");
    outcome
}

async fn broker_loss(
    env: &Environment,
    load: Load,
    args: &FaultArgs,
    checks: &mut Vec<String>,
    failures: &mut Vec<String>,
    logs: &mut String,
) -> anyhow::Result<Verdict> {
    let (brokers, cluster) =
        OwnBroker::start(args, env, args.cluster_port, "dispatch-bench-kafka-3", 3)?;
    let outcome = async {
        let (harness, _, _) = pipeline(&cluster, "broker-loss", |s| {
            s.replication_factor = 3;
            s.min_insync_replicas = Some(2);
        })
        .await?;
        let publishing = begin_load(&harness, load, 0).await;
        brokers.signal("kill", 2)?;
        let verdict = finish_load(&harness, publishing).await?;
        checks.push("broker 2 of 3 killed with SIGKILL and left down".to_owned());
        close(harness, &verdict, failures, logs).await;
        anyhow::Ok(verdict)
    }
    .await;
    brokers.stop("broker-loss");
    outcome
}

/// Longer than the request timeout of every client of the run (`kafka.request_timeout_ms`,
/// 30 s by default), so that calls in flight at the pause time out while it lasts.
const BROKER_PAUSE: Duration = Duration::from_secs(35);

async fn broker_pause(
    env: &Environment,
    load: Load,
    args: &FaultArgs,
    checks: &mut Vec<String>,
    failures: &mut Vec<String>,
    logs: &mut String,
) -> anyhow::Result<Verdict> {
    let (broker, own) = OwnBroker::start(
        args,
        env,
        args.cluster_port,
        "dispatch-bench-kafka-pause",
        1,
    )?;
    let outcome = async {
        let (harness, _, _) = pipeline(&own, "broker-pause", |_| {}).await?;
        let publishing = begin_load(&harness, load, 0).await;
        broker.signal("pause", 1)?;
        tokio::time::sleep(BROKER_PAUSE).await;
        broker.signal("resume", 1)?;
        // The resumed node re-elects its partitions' leaders: the ledger's own reads do not
        // retry NOT_LEADER, so wait until every topic of the run has a leader again.
        wait_for_leaders(&harness).await?;
        let verdict = finish_load(&harness, publishing).await?;
        checks.push(format!(
            "broker paused (SIGSTOP) for {} s mid-load, then resumed",
            BROKER_PAUSE.as_secs()
        ));
        close(harness, &verdict, failures, logs).await;
        anyhow::Ok(verdict)
    }
    .await;
    // Stopped even when the scenario failed (kafka.sh stop resumes a paused broker first).
    broker.stop("broker-pause");
    outcome
}

/// Waits (up to 120 s) until every topic of the run lists a leader for each partition; a
/// failure says what the last look found.
async fn wait_for_leaders(harness: &Harness) -> anyhow::Result<()> {
    let admin = dispatch_kafka::admin::TopicAdmin::new(&harness.kafka)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let not_ready = match admin.topic_shapes().await {
            Ok(shapes) => {
                let of_run: Vec<&String> = shapes
                    .iter()
                    .filter(|(name, _)| name.starts_with(&harness.kafka.topic_prefix))
                    .filter(|(_, shape)| !shape.ready)
                    .map(|(name, _)| name)
                    .collect();
                if shapes
                    .keys()
                    .any(|name| name.starts_with(&harness.kafka.topic_prefix))
                {
                    (!of_run.is_empty())
                        .then(|| format!("without a leader or with an error: {of_run:?}"))
                } else {
                    Some("no topic of the run in the metadata".to_owned())
                }
            }
            Err(error) => Some(format!("metadata request failed: {error}")),
        };
        let Some(reason) = not_ready else {
            return Ok(());
        };
        if std::time::Instant::now() >= deadline {
            bail!("the resumed broker did not lead every partition within 120 s ({reason})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn poison_event(
    env: &Environment,
    load: Load,
    checks: &mut Vec<String>,
    failures: &mut Vec<String>,
    logs: &mut String,
) -> anyhow::Result<Verdict> {
    use dispatch_proto::prost::Message as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let (harness, _, _) = pipeline(env, "poison-event", |_| {}).await?;
    let publishing = begin_load(&harness, load, 0).await;
    // An event owed to three subscriptions like the others, whose prompt of 600,000 newlines
    // renders to ~1.2 MB of JSON (each newline escaped to two bytes): over the deliveries
    // topic's max.message.bytes. Its own run name keeps it out of the ledger.
    let seq = 1_000_000_000;
    let poison = workload::event("poison", seq, &"\n".repeat(600_000));
    let poison_id = poison.id.clone();
    let producer: FutureProducer = harness
        .kafka
        .client_config()
        .set("message.max.bytes", "2000000")
        .create()
        .context("poison producer")?;
    let topic = harness
        .names
        .domain(dispatch_core::catalog::Family::Image)
        .context("image topic")?;
    let value = poison.encode_to_vec();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&topic)
                .key(&poison.account_id)
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| anyhow::anyhow!("producing the poison event: {error}"))?;
    let verdict = finish_load(&harness, publishing).await?;
    let mut quarantined = 0;
    let mut poison_quarantined = 0;
    crate::topics::read_topic(
        &harness.kafka,
        &harness.names.invalid(),
        Duration::from_secs(30),
        |bytes| {
            quarantined += 1;
            if dispatch_proto::events::v1::Event::decode(bytes).is_ok_and(|e| e.id == poison_id) {
                poison_quarantined += 1;
            }
        },
    )?;
    let line = format!(
        "one ~1.2 MB event published mid-load; in dispatch.invalid: {poison_quarantined} of it, {quarantined} in all"
    );
    if poison_quarantined == 1 && quarantined == 1 {
        checks.push(line);
    } else {
        failures.push(line);
    }
    close(harness, &verdict, failures, logs).await;
    Ok(verdict)
}

/// Runs the chosen scenarios, prints a verdict line each, writes the report; fails when any
/// scenario failed.
pub async fn run(bootstrap: &str, args: &FaultArgs) -> anyhow::Result<()> {
    let env = match &args.dispatchd {
        Some(path) => Environment::with_dispatchd(bootstrap, path),
        None => Environment::beside_current_exe(bootstrap),
    };
    let chosen = if args.scenarios.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    let load = Load {
        rate: args.rate,
        seconds: args.seconds,
    };
    let started_at_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut results = Vec::new();
    for fault in chosen {
        println!(
            "{}: {} events/s for {} s ...",
            fault.name(),
            load.rate,
            load.seconds
        );
        let result = match run_scenario(&env, fault, load, Some(args)).await {
            Ok(result) => result,
            Err(error) => FaultResult {
                scenario: fault,
                verdict: Verdict::default(),
                checks: Vec::new(),
                failures: vec![format!("the scenario could not run: {error:#}")],
                seconds: 0.0,
                logs: String::new(),
            },
        };
        println!("{}", result.line());
        results.push(result);
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join(format!("faults-{started_at_unix}.json"));
    let report = FaultReport {
        bench: "faults",
        started_at_unix,
        commit: crate::e2e::commit(),
        machine: crate::e2e::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rate: args.rate,
        seconds: args.seconds,
        results,
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("report written to {}", path.display());
    if failed > 0 {
        bail!("{failed} fault scenario(s) failed");
    }
    Ok(())
}
