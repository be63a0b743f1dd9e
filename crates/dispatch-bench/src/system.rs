//! The system under test as real processes: a `dispatchd` configuration for one run (its own
//! topic prefix on the given broker), its topics, and `dispatchd fanout|sender|api|all`
//! processes that can be started, killed with SIGKILL, stopped with SIGTERM, and measured (CPU
//! seconds and peak RSS from /proc) while they run.
//!
//! The configuration is the bench's own, written for the run, or a user's file run as it is
//! ([`SystemSettings::user_config`]): then only what isolates and reaches the run is
//! overridden, through the `DISPATCH_*` variables a user would set ([`USER_CONFIG_OVERRIDES`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::topics::{SAFE_MIN_INSYNC_REPLICAS, SAFE_REPLICATION_FACTOR, TopicNames};
use serde::Serialize;

/// How a run's `dispatchd` processes are configured.
#[derive(Debug, Clone)]
pub struct SystemSettings {
    /// Bootstrap servers of the broker (or cluster).
    pub bootstrap: String,
    /// Topic and group prefix of this run (unique per run).
    pub prefix: String,
    /// Partitions of each domain topic.
    pub domain_partitions: i32,
    /// Partitions of `dispatch.deliveries`.
    pub delivery_partitions: i32,
    /// Replication factor of every topic (3 on the three-broker cluster).
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic, when set.
    pub min_insync_replicas: Option<i32>,
    /// The retry schedule, as `DISPATCH_RETRY_SCHEDULE` takes it (`0s,1s,2s`).
    pub retry_schedule: String,
    /// The sender's HTTP timeout, in milliseconds.
    pub http_timeout_ms: u64,
    /// The circuit breaker's first cool-down, in milliseconds.
    pub cool_down_ms: u64,
    /// Consecutive failures that open an endpoint's circuit.
    pub failure_threshold: u32,
    /// Most records per fan-out transaction.
    pub fanout_batch_max_records: usize,
    /// Longest fan-out batch collection time, in milliseconds.
    pub fanout_batch_max_ms: u64,
    /// The sender's drain timeout on revoke and SIGTERM, in milliseconds.
    pub drain_timeout_ms: u64,
    /// The admin API's operator token (the API role serves only this one).
    pub api_token: String,
    /// Static group membership: each process gets `kafka.instance_id` `bench-<instance>`, the
    /// same again when it is restarted (off: dynamic membership, as before it existed).
    pub static_membership: bool,
    /// A user's configuration file (`deploy/dev/dispatchd.toml`) run as it is instead of the
    /// bench's own: every setting above but `bootstrap` and `prefix` is then the file's, and
    /// only [`USER_CONFIG_OVERRIDES`] are overridden. `None`: the bench's configuration.
    pub user_config: Option<PathBuf>,
}

/// What a run on a user's configuration file overrides, as `DISPATCH_*` environment variables
/// (the way the file's own comments tell a user to): the broker, a topic prefix and consumer
/// groups of the run's own (isolation from other runs and from a `make run` on the same
/// broker), a transactional id of its own (the file's would fence, or be fenced by, another
/// fan-out using it), and free ports for the admin API and `/metrics`. Nothing that changes how
/// the system behaves.
pub const USER_CONFIG_OVERRIDES: [&str; 7] = [
    "DISPATCH_KAFKA__BOOTSTRAP_SERVERS",
    "DISPATCH_KAFKA__TOPIC_PREFIX",
    "DISPATCH_FANOUT__GROUP_ID",
    "DISPATCH_SENDER__GROUP_ID",
    "DISPATCH_FANOUT__TRANSACTIONAL_ID",
    "DISPATCH_API__LISTEN",
    "DISPATCH_METRICS__LISTEN",
];

/// How long a process run on a user's file gets to drain on SIGTERM before it is killed: the
/// file's `sender.drain_timeout_ms` is not read; the product's default is 25 s.
const USER_CONFIG_STOP_TIMEOUT: Duration = Duration::from_secs(60);

impl SystemSettings {
    /// Defaults for a run on the local broker under `prefix`.
    pub fn new(bootstrap: &str, prefix: &str) -> Self {
        SystemSettings {
            bootstrap: bootstrap.to_owned(),
            prefix: prefix.to_owned(),
            domain_partitions: 6,
            delivery_partitions: 12,
            replication_factor: 1,
            min_insync_replicas: None,
            retry_schedule: "0s,1s,2s".to_owned(),
            http_timeout_ms: 5_000,
            cool_down_ms: 1_000,
            failure_threshold: 5,
            fanout_batch_max_records: 1_000,
            fanout_batch_max_ms: 20,
            drain_timeout_ms: 3_000,
            api_token: "bench-operator-token".to_owned(),
            static_membership: true,
            user_config: None,
        }
    }

    /// The Kafka client configuration the bench itself uses for this run.
    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            topic_prefix: self.prefix.clone(),
            ..KafkaConfig::default()
        }
    }

    /// The run's topic names.
    pub fn names(&self) -> TopicNames {
        TopicNames::new(&self.prefix)
    }

    fn toml(&self, api_port: u16) -> String {
        let min_isr = self
            .min_insync_replicas
            .map(|n| format!("min_insync_replicas = {n}\n"))
            .unwrap_or_default();
        format!(
            r#"# Written by dispatch-bench for one run.
[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"
[topics]
domain_partitions = {domain}
delivery_partitions = {delivery}
attempts_partitions = 6
dlq_partitions = 3
invalid_partitions = 1
replication_factor = {rf}
allow_unsafe_durability = {unsafe_durability}
{min_isr}[retry]
jitter = 0.0
[fanout]
group_id = "{prefix}fanout"
transactional_id = "{prefix}fanout-0"
batch_max_records = {batch_records}
batch_max_ms = {batch_ms}
[sender]
group_id = "{prefix}sender"
drain_timeout_ms = {drain}
[sender.endpoint]
failure_threshold = {threshold}
cool_down_ms = {cool}
max_cool_down_ms = {max_cool}
[http]
timeout_ms = {timeout}
connect_timeout_ms = {timeout}
allow_http = true
allow_addresses = ["127.0.0.1/32"]
[api]
listen = "127.0.0.1:{api_port}"
[[api.tokens]]
token = "{token}"
"#,
            bootstrap = self.bootstrap,
            prefix = self.prefix,
            domain = self.domain_partitions,
            delivery = self.delivery_partitions,
            rf = self.replication_factor,
            // The single local broker; the fault suite's three-broker runs are safe anyway.
            unsafe_durability = self.replication_factor < SAFE_REPLICATION_FACTOR
                || self
                    .min_insync_replicas
                    .is_none_or(|n| n < SAFE_MIN_INSYNC_REPLICAS),
            batch_records = self.fanout_batch_max_records,
            batch_ms = self.fanout_batch_max_ms,
            drain = self.drain_timeout_ms,
            cool = self.cool_down_ms,
            threshold = self.failure_threshold,
            max_cool = self.cool_down_ms * 2,
            timeout = self.http_timeout_ms,
            token = self.api_token,
        )
    }
}

/// A role the bench runs as its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `dispatchd fanout`.
    Fanout,
    /// `dispatchd sender`.
    Sender,
    /// `dispatchd api`.
    Api,
    /// `dispatchd all`: the three roles in one process.
    All,
}

impl Role {
    fn command(self) -> &'static str {
        match self {
            Role::Fanout => "fanout",
            Role::Sender => "sender",
            Role::Api => "api",
            Role::All => "all",
        }
    }

    /// Whether a process of this role runs `role` (itself, or as part of `all`).
    pub fn runs(self, role: Role) -> bool {
        self == role || self == Role::All
    }
}

/// CPU time and peak memory of one process, read from /proc while it runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessUsage {
    /// `role-instance`, e.g. `sender-1`.
    pub process: String,
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Peak resident set size (VmHWM), in MiB.
    pub peak_rss_mib: f64,
}

/// One `dispatchd` process of the run.
#[derive(Debug)]
pub struct RoleProcess {
    /// Which role.
    pub role: Role,
    /// Instance number (distinct transactional ids and metrics ports per instance).
    pub instance: usize,
    /// Port of its `/metrics`, `/healthz`, `/readyz`.
    pub metrics_port: u16,
    /// Its stderr.
    pub log: PathBuf,
    child: Option<Child>,
    last_usage: ProcessUsage,
}

impl RoleProcess {
    /// `role-instance`.
    pub fn name(&self) -> String {
        format!("{}-{}", self.role.command(), self.instance)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Reads its CPU and peak RSS now (the last reading stays once it exited).
    pub fn usage(&mut self) -> ProcessUsage {
        if let Some(pid) = self.pid()
            && let Some(usage) = read_usage(pid)
        {
            self.last_usage = ProcessUsage {
                process: self.name(),
                ..usage
            };
        }
        self.last_usage.clone()
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `getconf CLK_TCK`, asked once per process.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (utime + stime) and VmHWM of a running process.
pub fn read_usage(pid: u32) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, may contain spaces); utime and stime are
    // fields 14 and 15 of the line, 12 and 13 after the name.
    let rest = stat.rsplit(')').next()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    Some(ProcessUsage {
        process: String::new(),
        cpu_seconds: ticks / clock_ticks_per_second(),
        peak_rss_mib: hwm_kib / 1024.0,
    })
}

/// User + system CPU seconds of this process so far.
pub fn own_cpu_seconds() -> f64 {
    read_usage(std::process::id()).map_or(f64::NAN, |usage| usage.cpu_seconds)
}

/// Usage of the brokers `deploy/kafka/kafka.sh` runs (its pid files under `KAFKA_RUN_DIR`,
/// default `.run/kafka` of the current directory); none when it runs elsewhere.
pub fn broker_usage() -> Vec<ProcessUsage> {
    let run_dir = std::env::var("KAFKA_RUN_DIR").unwrap_or_else(|_| ".run/kafka".to_owned());
    let mut usage = Vec::new();
    for node in 1..=9 {
        let Ok(pid) = std::fs::read_to_string(format!("{run_dir}/node-{node}/pid")) else {
            continue;
        };
        if let Some(reading) = pid.trim().parse().ok().and_then(read_usage) {
            usage.push(ProcessUsage {
                process: format!("kafka-broker-{node}"),
                ..reading
            });
        }
    }
    usage
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for one test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The run: its configuration file and its processes.
#[derive(Debug)]
pub struct System {
    /// How it is configured.
    pub settings: SystemSettings,
    /// The `dispatchd` binary.
    pub dispatchd: PathBuf,
    /// Where its configuration and logs are.
    pub dir: PathBuf,
    /// Port of the admin API (when an API process runs).
    pub api_port: u16,
    config_file: PathBuf,
    processes: Vec<RoleProcess>,
}

impl System {
    /// Writes the configuration under `dir` (or takes the user's file) and creates the run's
    /// topics with `dispatchd topics ensure --strict`.
    pub fn create(dispatchd: &Path, dir: &Path, settings: SystemSettings) -> anyhow::Result<Self> {
        if !dispatchd.is_file() {
            bail!(
                "no dispatchd binary at {} (build it: cargo build --release -p dispatchd, or pass --dispatchd)",
                dispatchd.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let api_port = free_port();
        let config_file = match &settings.user_config {
            Some(file) => std::fs::canonicalize(file)
                .with_context(|| format!("no configuration file {}", file.display()))?,
            None => {
                let file = dir.join("dispatchd.toml");
                std::fs::File::create(&file)
                    .and_then(|mut out| out.write_all(settings.toml(api_port).as_bytes()))
                    .with_context(|| format!("writing {}", file.display()))?;
                file
            }
        };
        let system = System {
            settings,
            dispatchd: dispatchd.to_owned(),
            dir: dir.to_owned(),
            api_port,
            config_file,
            processes: Vec::new(),
        };
        let ensured = system
            .command()
            .args(["topics", "ensure", "--strict"])
            .output()
            .context("running dispatchd topics ensure")?;
        if !ensured.status.success() {
            bail!(
                "dispatchd topics ensure failed: {}",
                String::from_utf8_lossy(&ensured.stderr)
            );
        }
        Ok(system)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.dispatchd);
        command
            .arg("--config")
            .arg(&self.config_file)
            .env_remove("DISPATCH_CONFIG")
            .envs(self.overrides());
        command
    }

    /// The environment every `dispatchd` command of the run gets on top of its file (each
    /// process adds its `/metrics` port and transactional id).
    fn overrides(&self) -> Vec<(&'static str, String)> {
        let settings = &self.settings;
        if settings.user_config.is_none() {
            return vec![("DISPATCH_RETRY_SCHEDULE", settings.retry_schedule.clone())];
        }
        let prefix = &settings.prefix;
        vec![
            (
                "DISPATCH_KAFKA__BOOTSTRAP_SERVERS",
                settings.bootstrap.clone(),
            ),
            ("DISPATCH_KAFKA__TOPIC_PREFIX", prefix.clone()),
            (
                "DISPATCH_FANOUT__GROUP_ID",
                format!("{prefix}dispatch-fanout"),
            ),
            (
                "DISPATCH_SENDER__GROUP_ID",
                format!("{prefix}dispatch-sender"),
            ),
            (
                "DISPATCH_API__LISTEN",
                format!("127.0.0.1:{}", self.api_port),
            ),
        ]
    }

    /// Whether the processes run a user's configuration file as it is.
    pub fn runs_user_config(&self) -> bool {
        self.settings.user_config.is_some()
    }

    /// The configuration file the processes run.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// Starts `role` instance `instance` and waits until its `/readyz` answers 200.
    pub async fn start(&mut self, role: Role, instance: usize) -> anyhow::Result<usize> {
        let metrics_port = free_port();
        let log = self.dir.join(format!("{}-{instance}.log", role.command()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = self.command();
        command
            .arg(role.command())
            .env(
                "DISPATCH_METRICS__LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env(
                "DISPATCH_FANOUT__TRANSACTIONAL_ID",
                format!("{}fanout-{instance}", self.settings.prefix),
            )
            // Info by default: the log of a failed run must show what the roles did (a
            // broker-loss failure of 2026-12-03 left only warnings to go by).
            .env(
                "RUST_LOG",
                std::env::var("BENCH_DISPATCHD_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(log_file);
        // A user's file keeps its own `kafka.instance_id`: the run's consumer groups are its own.
        if self.settings.static_membership && self.settings.user_config.is_none() {
            // Distinct per instance (two senders on this one machine must not fence each
            // other), the same for a restarted instance.
            command.env("DISPATCH_KAFKA__INSTANCE_ID", format!("bench-{instance}"));
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.dispatchd.display()))?;
        let mut process = RoleProcess {
            role,
            instance,
            metrics_port,
            log: log.clone(),
            child: Some(child),
            last_usage: ProcessUsage::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if !process.is_running() {
                bail!(
                    "{} exited while starting; see {}",
                    process.name(),
                    log.display()
                );
            }
            if let Ok((200, _)) =
                crate::client::get(&format!("http://127.0.0.1:{metrics_port}/readyz")).await
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after 60 s; see {}",
                    process.name(),
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.processes.push(process);
        Ok(self.processes.len() - 1)
    }

    /// SIGKILL: the process gets no chance to drain or commit.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let process = &mut self.processes[index];
        process.usage();
        if let Some(mut child) = process.child.take() {
            child.kill().context("kill -9")?;
            child.wait().context("reaping the killed process")?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; errors when it exits non-zero or
    /// had to be killed.
    pub async fn terminate(&mut self, index: usize, timeout: Duration) -> anyhow::Result<()> {
        let process = &mut self.processes[index];
        process.usage();
        let name = process.name();
        let Some(mut child) = process.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("kill -TERM")?;
        if !status.success() {
            bail!("could not signal {name}");
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!("{name} exited with {status} after SIGTERM");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{name} still running {timeout:?} after SIGTERM (killed)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/metrics` ports of the running processes that run `role` (`all` included).
    pub fn metrics_ports(&mut self, role: Role) -> Vec<u16> {
        self.processes
            .iter_mut()
            .filter_map(|p| (p.role.runs(role) && p.is_running()).then_some(p.metrics_port))
            .collect()
    }

    /// Usage of every process started so far (killed ones: their last reading).
    pub fn usage(&mut self) -> Vec<ProcessUsage> {
        self.processes.iter_mut().map(RoleProcess::usage).collect()
    }

    /// Writes every running role's thread backtraces (gdb, when installed) next to its log as
    /// `<role>-threads.txt`: what a failed run leaves to explain a role that was alive and
    /// doing nothing. Returns the files written.
    pub fn dump_threads(&self) -> Vec<PathBuf> {
        let mut written = Vec::new();
        for process in &self.processes {
            let Some(pid) = process.pid() else { continue };
            let dumped = std::process::Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt",
                ])
                .stdin(Stdio::null())
                .output();
            let Ok(output) = dumped else {
                // No gdb here: nothing to keep.
                return written;
            };
            let file = self.dir.join(format!("{}-threads.txt", process.name()));
            let mut text = output.stdout;
            text.extend_from_slice(&output.stderr);
            if std::fs::write(&file, text).is_ok() {
                written.push(file);
            }
        }
        written
    }

    /// Names of processes that exited on their own (a crash the scenario did not cause).
    pub fn crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        for process in &mut self.processes {
            let exited = process
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                crashed.push(format!(
                    "{} (see {})",
                    process.name(),
                    process.log.display()
                ));
            }
        }
        crashed
    }

    /// Stops every process with SIGTERM (SIGKILL after the drain timeout).
    pub async fn stop_all(&mut self) {
        let timeout = if self.runs_user_config() {
            USER_CONFIG_STOP_TIMEOUT
        } else {
            Duration::from_millis(self.settings.drain_timeout_ms + 10_000)
        };
        for index in 0..self.processes.len() {
            if let Err(error) = self.terminate(index, timeout).await {
                eprintln!("stopping: {error:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(settings: SystemSettings) -> System {
        System {
            settings,
            dispatchd: PathBuf::from("dispatchd"),
            dir: PathBuf::from("/tmp/x"),
            api_port: 40_001,
            config_file: PathBuf::from("/tmp/x/dispatchd.toml"),
            processes: Vec::new(),
        }
    }

    #[test]
    fn a_user_file_is_overridden_only_in_what_isolates_and_reaches_the_run() {
        let mut settings = SystemSettings::new("127.0.0.1:23092", "bench.latency.1.");
        settings.user_config = Some(PathBuf::from("deploy/dev/dispatchd.toml"));
        let system = system(settings);
        let overrides = system.overrides();
        let mut names: Vec<&str> = overrides.iter().map(|(name, _)| *name).collect();
        // Each process adds these two when it starts.
        names.extend([
            "DISPATCH_FANOUT__TRANSACTIONAL_ID",
            "DISPATCH_METRICS__LISTEN",
        ]);
        names.sort_unstable();
        let mut documented = USER_CONFIG_OVERRIDES.to_vec();
        documented.sort_unstable();
        assert_eq!(names, documented);
        let value = |name: &str| {
            overrides
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            value("DISPATCH_KAFKA__TOPIC_PREFIX"),
            Some("bench.latency.1.")
        );
        assert_eq!(
            value("DISPATCH_SENDER__GROUP_ID"),
            Some("bench.latency.1.dispatch-sender")
        );
        assert_eq!(value("DISPATCH_API__LISTEN"), Some("127.0.0.1:40001"));
        // The file's retry schedule is the user's: not shortened.
        assert_eq!(value("DISPATCH_RETRY_SCHEDULE"), None);
    }

    #[test]
    fn the_bench_configuration_shortens_the_retry_schedule() {
        let system = system(SystemSettings::new("127.0.0.1:23092", "bench.x.1."));
        assert_eq!(
            system.overrides(),
            vec![("DISPATCH_RETRY_SCHEDULE", "0s,1s,2s".to_owned())]
        );
        assert!(Role::All.runs(Role::Sender) && !Role::Fanout.runs(Role::Sender));
    }
}
