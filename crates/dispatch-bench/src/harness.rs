//! One end-to-end run put together: the `dispatchd` processes ([`System`]), the receiver fleet,
//! the 200 subscriptions written before any role starts, and a publisher running in the
//! background. Scenarios (benchmarks and faults) are written against this.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatch_kafka::KafkaConfig;
use dispatch_kafka::topics::TopicNames;
use tokio::task::JoinHandle;

use crate::fleet::Fleet;
use crate::ledger::{self, Verdict};
use crate::system::{System, SystemSettings};
use crate::workload::{self, Pace, Publisher};

/// Where the harness finds `dispatchd`, the broker, and puts its files.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The `dispatchd` binary.
    pub dispatchd: PathBuf,
    /// Bootstrap servers of the broker.
    pub bootstrap: String,
    /// Configuration files and process logs go under here.
    pub work_dir: PathBuf,
}

impl Environment {
    /// `dispatchd` next to the running executable (both built by the same cargo profile), the
    /// given broker, logs under the system's temporary directory.
    pub fn beside_current_exe(bootstrap: &str) -> Self {
        let dispatchd = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("dispatchd")))
            .unwrap_or_else(|| PathBuf::from("dispatchd"));
        Environment {
            dispatchd,
            bootstrap: bootstrap.to_owned(),
            work_dir: std::env::temp_dir().join("dispatch-bench"),
        }
    }

    /// The same with an explicit `dispatchd`.
    pub fn with_dispatchd(bootstrap: &str, dispatchd: &Path) -> Self {
        Environment {
            dispatchd: dispatchd.to_owned(),
            ..Self::beside_current_exe(bootstrap)
        }
    }
}

/// A run in progress.
pub struct Harness {
    /// The processes.
    pub system: System,
    /// The receivers.
    pub fleet: Arc<Fleet>,
    /// The publisher.
    pub publisher: Arc<Publisher>,
    /// The run's Kafka configuration (its prefix).
    pub kafka: KafkaConfig,
    /// The run's topics.
    pub names: TopicNames,
    stop_publishing: Arc<AtomicBool>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("system", &self.system)
            .field("fleet", &self.fleet)
            .field("prefix", &self.kafka.topic_prefix)
            .finish_non_exhaustive()
    }
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Harness {
    /// Creates the topics of a fresh run named after `scenario`, starts the fleet (`servers`
    /// listeners) and writes the subscriptions. `adjust` changes the settings first. No role
    /// runs yet.
    pub async fn prepare(
        env: &Environment,
        scenario: &str,
        servers: usize,
        adjust: impl FnOnce(&mut SystemSettings),
    ) -> anyhow::Result<Self> {
        Self::prepare_for(env, scenario, servers, None, adjust).await
    }

    /// [`Harness::prepare`] with the subscriptions pointing at `endpoint_urls` (one per
    /// endpoint) instead of the fleet's: a receiver that is not the bench's (the fleet still
    /// runs, and sees nothing).
    pub async fn prepare_for(
        env: &Environment,
        scenario: &str,
        servers: usize,
        endpoint_urls: Option<&[String]>,
        adjust: impl FnOnce(&mut SystemSettings),
    ) -> anyhow::Result<Self> {
        let stamp = unix_millis();
        let prefix = format!("bench.{scenario}.{stamp}.");
        let mut settings = SystemSettings::new(&env.bootstrap, &prefix);
        adjust(&mut settings);
        let kafka = settings.kafka();
        let names = settings.names();
        let dir = env.work_dir.join(format!("{scenario}-{stamp}"));
        let system = System::create(&env.dispatchd, &dir, settings)?;
        let fleet = Arc::new(Fleet::start(servers, 50).await?);
        let urls = match endpoint_urls {
            Some(urls) => urls.to_vec(),
            None => fleet.urls(),
        };
        anyhow::ensure!(
            urls.len() == workload::ENDPOINTS,
            "{} endpoint URLs for {} endpoints",
            urls.len(),
            workload::ENDPOINTS
        );
        let subscriptions = workload::subscriptions(&urls);
        for (endpoint, (_, secret)) in subscriptions.iter().enumerate() {
            fleet.set_secret(endpoint, secret.clone());
        }
        workload::write_subscriptions(&kafka, &subscriptions).await?;
        let run = format!("{scenario}{stamp}").replace(['-', '_', '.'], "");
        let publisher = Arc::new(Publisher::new(&kafka, &names, &run)?);
        Ok(Harness {
            system,
            fleet,
            publisher,
            kafka,
            names,
            stop_publishing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Publishes at `pace` for `duration` (or until [`Harness::stop_publishing`]) in the
    /// background, one garbage record in `garbage_one_in` (0: none).
    pub fn publish(&self, pace: Pace, duration: Duration, garbage_one_in: u64) -> JoinHandle<()> {
        let fleet = self.fleet.clone();
        self.publish_counted(pace, duration, garbage_one_in, move || fleet.accepted())
    }

    /// [`Harness::publish`] with `delivered` (webhooks accepted so far) pacing
    /// [`Pace::FlatOut`] instead of the fleet's count: for a receiver that is not the fleet.
    pub fn publish_counted(
        &self,
        pace: Pace,
        duration: Duration,
        garbage_one_in: u64,
        delivered: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        self.stop_publishing.store(false, Ordering::Relaxed);
        let publisher = self.publisher.clone();
        let stop = self.stop_publishing.clone();
        tokio::spawn(async move {
            publisher
                .run(pace, duration, garbage_one_in, &delivered, &stop)
                .await;
        })
    }

    /// Stops a background publisher at its next tick.
    pub fn stop_publishing(&self) {
        self.stop_publishing.store(true, Ordering::Relaxed);
    }

    /// Waits until every acknowledged event reached all its receivers, or `timeout` passed;
    /// returns how many owed pairs are still missing.
    pub async fn wait_delivered(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let acked = self.publisher.published().await.acked;
            let missing = ledger::missing(&acked, &self.fleet);
            if missing == 0 || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until every owed pair was received or dead-lettered (checking the DLQ only once
    /// receptions stop growing), or `timeout` passed; then the ledger's verdict.
    pub async fn settle(&self, timeout: Duration) -> anyhow::Result<Verdict> {
        let deadline = Instant::now() + timeout;
        let mut last_accepted = u64::MAX;
        loop {
            let acked = self.publisher.published().await.acked;
            let missing = ledger::missing(&acked, &self.fleet);
            let accepted = self.fleet.accepted();
            let quiet = accepted == last_accepted;
            last_accepted = accepted;
            if missing == 0 || quiet || Instant::now() > deadline {
                let dead = ledger::dead_letters(&self.kafka, &self.names.dlq())?;
                let verdict = ledger::check(&acked, &self.fleet, &dead);
                if verdict.lost == 0 || Instant::now() > deadline {
                    return Ok(verdict);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Stops every process; then deletes the run's topics unless `keep_topics` (a failed run
    /// keeps them for inspection). A broker that collects every run's topics gets slower.
    pub async fn finish(&mut self, keep_topics: bool) {
        self.system.stop_all().await;
        if keep_topics {
            return;
        }
        let prefix = &self.kafka.topic_prefix;
        let deleted = match crate::topics::with_prefix(&self.kafka, prefix) {
            Ok(topics) => crate::topics::delete(&self.kafka, &topics).await,
            Err(error) => Err(error),
        };
        if let Err(error) = deleted {
            eprintln!("deleting the topics of {prefix}: {error:#}");
        }
    }
}
