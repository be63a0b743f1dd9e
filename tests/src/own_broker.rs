//! A broker of a test's own, started through `deploy/kafka/kafka.sh` on a port of its own, for
//! tests that pause, freeze or kill it: doing that to the shared broker (19092) would stall every
//! other test running beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A single broker on `port`, stopped when dropped (also when the test fails half-way, paused
/// or not: `kafka.sh stop` resumes a paused broker first).
#[derive(Debug)]
pub struct OwnBroker {
    script: PathBuf,
    env: Vec<(&'static str, String)>,
    port: u16,
}

impl OwnBroker {
    /// Starts a fresh broker on `port` with its data under `run_dir`. Panics if it does not
    /// start: the test cannot say anything without it.
    pub fn start(port: u16, run_dir: &Path) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/kafka.sh");
        let mut env = vec![
            ("KAFKA_PORT", port.to_string()),
            ("KAFKA_RUN_DIR", run_dir.display().to_string()),
        ];
        // The download cache is shared with the main broker: nothing is fetched twice.
        if let Ok(cache) = std::env::var("KAFKA_CACHE_DIR") {
            env.push(("KAFKA_CACHE_DIR", cache));
        }
        let broker = OwnBroker { script, env, port };
        // A broker left over by an earlier, killed run of the test would hold the port.
        broker.run(&["stop"]);
        assert!(broker.run(&["start"]), "kafka.sh start on port {port}");
        broker
    }

    /// The bootstrap servers of this broker.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kafka.sh pause 1`: SIGSTOP, the broker keeps its connections but answers nothing.
    pub fn pause(&self) {
        assert!(self.run(&["pause", "1"]), "kafka.sh pause 1");
    }

    /// `kafka.sh resume 1`: SIGCONT.
    pub fn resume(&self) {
        assert!(self.run(&["resume", "1"]), "kafka.sh resume 1");
    }

    fn run(&self, args: &[&str]) -> bool {
        Command::new(&self.script)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.run(&["stop"]);
    }
}
