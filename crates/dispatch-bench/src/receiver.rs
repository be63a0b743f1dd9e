//! Who receives a run's webhooks: the bench's fleet (its ledger; signatures checked), or nginx
//! (`--nginx`), a receiver that is not ours, whose access log says what arrived when. One
//! interface over both for the scenarios that can use either (`throughput`, `latency`,
//! `burst`): how many arrived so far, what arrived of a set of (event, endpoint) pairs and when,
//! waiting for them, and the ledger check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::fleet::Fleet;
use crate::harness::{Environment, Harness};
use crate::ledger::{self, Verdict};
use crate::nginx::{Arrival, Nginx};
use crate::system::{ProcessUsage, SystemSettings};

/// Who received the webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiverKind {
    /// The bench's hyper receivers.
    Bench,
    /// nginx answering `return 200`.
    Nginx,
}

impl ReceiverKind {
    /// The bench's own (results leave the field out then, as before nginx could receive).
    pub fn is_bench(&self) -> bool {
        *self == ReceiverKind::Bench
    }

    /// `bench` or `nginx`.
    pub fn name(self) -> &'static str {
        match self {
            ReceiverKind::Bench => "bench",
            ReceiverKind::Nginx => "nginx",
        }
    }
}

/// Where a run's webhooks go. Cheap to clone: the publisher's flat-out pacing counts with it.
#[derive(Debug, Clone)]
pub enum Receiver {
    /// The bench's fleet.
    Bench(Arc<Fleet>),
    /// nginx; stopped when the last clone is dropped.
    Nginx(Arc<Mutex<Nginx>>),
}

fn lock(nginx: &Mutex<Nginx>) -> MutexGuard<'_, Nginx> {
    // A panic while reading the log leaves nothing half-updated that matters to a count.
    nginx.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fresh run of `scenario` ([`Harness::prepare_for`]) whose subscriptions point at nginx
/// (started first, `listeners` ports, files under the work directory) when `nginx`, else at
/// the fleet's `listeners` listeners.
pub async fn prepare(
    env: &Environment,
    scenario: &str,
    listeners: usize,
    nginx: bool,
    adjust: impl FnOnce(&mut SystemSettings),
) -> anyhow::Result<(Harness, Receiver)> {
    let nginx = if nginx {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let dir = env.work_dir.join(format!("{scenario}-nginx-{stamp}"));
        Some(Nginx::start(listeners, &dir).await?)
    } else {
        None
    };
    let urls = nginx.as_ref().map(Nginx::urls);
    // With nginx receiving, the fleet only idles: one listener is enough.
    let fleet_listeners = if nginx.is_some() { 1 } else { listeners };
    let harness =
        Harness::prepare_for(env, scenario, fleet_listeners, urls.as_deref(), adjust).await?;
    let receiver = match nginx {
        Some(nginx) => Receiver::Nginx(Arc::new(Mutex::new(nginx))),
        None => Receiver::Bench(harness.fleet.clone()),
    };
    Ok((harness, receiver))
}

impl Receiver {
    /// Which one.
    pub fn kind(&self) -> ReceiverKind {
        match self {
            Receiver::Bench(_) => ReceiverKind::Bench,
            Receiver::Nginx(_) => ReceiverKind::Nginx,
        }
    }

    /// Webhooks accepted so far, duplicates included: cheap, for polling.
    pub fn accepted(&self) -> anyhow::Result<u64> {
        match self {
            Receiver::Bench(fleet) => Ok(fleet.accepted()),
            Receiver::Nginx(nginx) => lock(nginx).answered(),
        }
    }

    /// [`Receiver::accepted`] as the publisher's flat-out pacing wants it (0 when nginx's log
    /// cannot be read: the publisher then waits, and the run shows it).
    pub fn counter(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let receiver = self.clone();
        move || receiver.accepted().unwrap_or(0)
    }

    /// What arrived of `pairs`. The fleet keeps latencies rather than arrival times: its
    /// arrival is the event's `occurred_at` (from `occurred_us`, 0 when unknown) plus that.
    pub fn arrivals(
        &self,
        pairs: &[(u64, usize)],
        occurred_us: &HashMap<u64, u64>,
    ) -> anyhow::Result<Vec<Option<Arrival>>> {
        match self {
            Receiver::Bench(fleet) => Ok(fleet
                .receptions(pairs)
                .into_iter()
                .zip(pairs)
                .map(|(reception, (seq, _))| {
                    reception.map(|r| Arrival {
                        count: r.count,
                        first_unix_us: occurred_us.get(seq).copied().unwrap_or(0) + r.latency_us,
                    })
                })
                .collect()),
            Receiver::Nginx(nginx) => lock(nginx).arrivals(pairs),
        }
    }

    /// How many of `pairs` have not arrived.
    pub fn missing(&self, pairs: &[(u64, usize)]) -> anyhow::Result<usize> {
        match self {
            Receiver::Bench(fleet) => Ok(fleet.missing(pairs)),
            Receiver::Nginx(nginx) => Ok(lock(nginx)
                .arrivals(pairs)?
                .iter()
                .filter(|a| a.is_none())
                .count()),
        }
    }

    /// nginx's CPU seconds and peak RSS (the fleet is the bench process's).
    pub fn usage(&self) -> Option<ProcessUsage> {
        match self {
            Receiver::Bench(_) => None,
            Receiver::Nginx(nginx) => lock(nginx).usage(),
        }
    }

    /// Waits until `pairs` all arrived or `timeout` passed; how many are still missing. The
    /// count of accepted webhooks (beyond `accepted_before`) gates the full check, which for
    /// the fleet locks its ledger.
    pub async fn wait_for(
        &self,
        pairs: &[(u64, usize)],
        accepted_before: u64,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut last_full_check: Option<Instant> = None;
        loop {
            let accepted = self.accepted()?.saturating_sub(accepted_before);
            let expired = Instant::now() > deadline;
            let due = last_full_check.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if expired || (accepted >= pairs.len() as u64 && due) {
                last_full_check = Some(Instant::now());
                let missing = self.missing(pairs)?;
                if missing == 0 || expired {
                    return Ok(missing);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ledger at the end of a run: waits until every pair owed by what `harness`
    /// published arrived or was dead-lettered (reading the DLQ only once arrivals stop
    /// growing), or `timeout` passed. The fleet's is [`Harness::settle`]; nginx's counts what
    /// its access log shows, and checks no signature.
    pub async fn settle(&self, harness: &Harness, timeout: Duration) -> anyhow::Result<Verdict> {
        let nginx = match self {
            Receiver::Bench(_) => return harness.settle(timeout).await,
            Receiver::Nginx(nginx) => nginx,
        };
        let deadline = Instant::now() + timeout;
        let mut last_accepted = u64::MAX;
        loop {
            let acked = harness.publisher.published().await.acked;
            let missing = self.missing(&ledger::owed_pairs(&acked))?;
            let accepted = self.accepted()?;
            let quiet = accepted == last_accepted;
            last_accepted = accepted;
            if missing == 0 || quiet || Instant::now() > deadline {
                let dead = ledger::dead_letters(&harness.kafka, &harness.names.dlq())?;
                let verdict = {
                    let mut nginx = lock(nginx);
                    // Reads the log to its end first.
                    nginx.answered()?;
                    ledger::check_unsigned(&acked, |visit| nginx.for_each(visit), &dead)
                };
                if verdict.lost == 0 || Instant::now() > deadline {
                    return Ok(verdict);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
