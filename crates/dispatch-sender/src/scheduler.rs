//! Which queued delivery starts next: one queue per endpoint (so endpoints of one partition never
//! wait for each other), the process's request permits, each account's share of them, and
//! round-robin turns between accounts and, within an account, between its endpoints.
//!
//! The engine queues admitted tasks here, asks for the attempts that may start now
//! ([`Scheduler::next_attempts`]) and reports each one's end ([`Scheduler::completed`]); the
//! queues' own limits (in-flight, rate, circuit breaker) live in [`crate::endpoint`].
//!
//! # Bounded work per turn
//! Only endpoints that may be able to start something are looked at: `dirty` (touched since the
//! last turn), `waiting` (holding queued tasks: their rate limit or circuit may lift) and, per
//! account at its share, `capped` (released when one of the account's requests completes).
//! Idle queues are dropped once a second ([`SWEEP_INTERVAL`]), so the map is bounded by recent
//! activity, not by every subscription ever seen.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::admission::{self, Backlog};
use dispatch_proto::dispatch::v1::Subscription;
use dispatch_telemetry::names;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::attempt::DeliveryEnd;
use crate::circuit::CircuitTransition;
use crate::config::SenderConfig;
use crate::endpoint::{EndpointLimits, EndpointQueue};
use crate::partitions::{PartitionKey, Pending};

/// How often idle endpoint queues are looked for and dropped (and the open-circuits gauge set).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One endpoint's queue and the account it belongs to (for the per-account share of permits).
#[derive(Debug)]
struct Endpoint {
    account_id: String,
    queue: EndpointQueue<Pending>,
}

/// An attempt that may start now, holding one of the process's permits.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) subscription_id: String,
    pub(crate) account_id: String,
    pub(crate) pending: Pending,
}

/// How an attempt ended, reported back by its task.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) subscription_id: String,
    pub(crate) account_id: String,
    /// `None`: not attempted after all (the subscription was deleted while it was queued).
    pub(crate) end: Option<DeliveryEnd>,
}

/// What the engine needs to know of an enabled subscription's endpoint to admit a task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointFacts {
    pub(crate) circuit_open: bool,
    pub(crate) backlog: Backlog,
}

/// Logs and counts a circuit breaker's transition.
fn circuit_moved(completion: &Completion, transition: CircuitTransition, now: Instant) {
    let subscription_id = &completion.subscription_id;
    let account_id = &completion.account_id;
    let to = match transition {
        CircuitTransition::Opened { until, cool_down } => {
            warn!(
                subscription_id,
                account_id,
                cool_down_ms = cool_down.as_millis() as u64,
                probe_in_ms = until.saturating_duration_since(now).as_millis() as u64,
                "circuit opened: consecutive failures reached the threshold"
            );
            "open"
        }
        CircuitTransition::Reopened { until, cool_down } => {
            warn!(
                subscription_id,
                account_id,
                cool_down_ms = cool_down.as_millis() as u64,
                probe_in_ms = until.saturating_duration_since(now).as_millis() as u64,
                "circuit reopened: the probe failed"
            );
            "reopen"
        }
        CircuitTransition::Closed => {
            info!(
                subscription_id,
                account_id, "circuit closed: the probe succeeded"
            );
            "closed"
        }
    };
    metrics::counter!(names::SENDER_CIRCUIT_TRANSITIONS_TOTAL, "to" => to).increment(1);
}

/// The endpoint queues and the permits (see the module documentation).
#[derive(Debug)]
pub(crate) struct Scheduler {
    config: SenderConfig,
    endpoints: HashMap<String, Endpoint>,
    /// Endpoints that may be able to start an attempt now.
    dirty: HashSet<String>,
    /// Endpoints with deliveries waiting in their queue: what the wake-up and rate/circuit
    /// scans look at instead of every endpoint.
    waiting: HashSet<String>,
    /// Requests in flight per account (entries at zero are removed).
    account_in_flight: HashMap<String, usize>,
    /// Endpoints with work whose account is at its share, by account: released into `dirty`
    /// when one of the account's requests completes, not rescanned on every turn.
    capped: HashMap<String, HashSet<String>>,
    /// Turns the order accounts are served in, so none is always first.
    rotation: usize,
    /// When [`Scheduler::sweep_idle`] last ran.
    last_sweep: Instant,
    semaphore: Arc<Semaphore>,
}

impl Scheduler {
    pub(crate) fn new(config: SenderConfig) -> Self {
        Scheduler {
            semaphore: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            config,
            endpoints: HashMap::new(),
            dirty: HashSet::new(),
            waiting: HashSet::new(),
            account_in_flight: HashMap::new(),
            capped: HashMap::new(),
            rotation: 0,
            last_sweep: Instant::now(),
        }
    }

    /// Whether `subscription`'s circuit is open and how its backlog stands (making its queue if
    /// absent, with the subscription's current limits).
    pub(crate) fn facts(&mut self, subscription: &Subscription, now: Instant) -> EndpointFacts {
        let max_queue_wait = self.config.endpoint.max_queue_wait();
        let queue = &mut self.endpoint_of(subscription).queue;
        let backlog = if queue.is_full() {
            Backlog::Full {
                // Its backlog limit, not the queue: a burst makes any queue long, and only the
                // endpoint's own pace says whether it is slow.
                drains_in_time: admission::drains_in_time(
                    queue.max_backlog(),
                    queue.drain_rate(now),
                    max_queue_wait,
                ),
            }
        } else {
            Backlog::Room
        };
        EndpointFacts {
            circuit_open: queue.is_open(now),
            backlog,
        }
    }

    /// Appends an admitted task to its endpoint's queue (past the backlog limit when admission
    /// said so). A queue found full since the facts were read — not possible on the loop's one
    /// thread — keeps the task anyway: in memory it is not lost.
    pub(crate) fn enqueue(&mut self, subscription: &Subscription, pending: Pending, past: bool) {
        // The queue `facts` made and updated (looked up again, not remade: this runs per
        // delivery).
        let queue = match self.endpoints.get_mut(&subscription.id) {
            Some(endpoint) => &mut endpoint.queue,
            None => &mut self.endpoint_of(subscription).queue,
        };
        if past {
            queue.push_past_backlog(pending);
        } else if let Err(overflow) = queue.push(pending) {
            queue.push_past_backlog(overflow.into_inner());
        }
        self.waiting.insert(subscription.id.clone());
        self.dirty.insert(subscription.id.clone());
    }

    /// The queue of `subscription`'s endpoint, made if absent, with its current limits.
    fn endpoint_of(&mut self, subscription: &Subscription) -> &mut Endpoint {
        let config = &self.config.endpoint;
        let limits = EndpointLimits::of(subscription);
        let endpoint = self
            .endpoints
            .entry(subscription.id.clone())
            .or_insert_with(|| Endpoint {
                account_id: subscription.account_id.clone(),
                queue: EndpointQueue::new(config, limits),
            });
        endpoint.queue.set_limits(config, limits);
        endpoint
    }

    /// The attempts that may start now, within the global concurrency limit and each account's
    /// share of it; each holds a permit and counts against its account until
    /// [`Self::completed`].
    ///
    /// Fairness: one attempt at a time, round-robin between the accounts with work and, within
    /// an account, between its endpoints, so that when permits are scarce each account (and
    /// each endpoint of one) gets its turn; an account at its share
    /// ([`SenderConfig::max_requests_per_account`]) waits for one of its own requests to
    /// complete, so one tenant's hanging endpoints cannot hold every permit.
    pub(crate) fn next_attempts(&mut self, now: Instant) -> Vec<Start> {
        let mut starts = Vec::new();
        let mut by_account: BTreeMap<String, VecDeque<String>> = BTreeMap::new();
        for id in self.dirty.drain() {
            if let Some(endpoint) = self.endpoints.get(&id) {
                by_account
                    .entry(endpoint.account_id.clone())
                    .or_default()
                    .push_back(id);
            }
        }
        let mut turns: VecDeque<(String, VecDeque<String>)> = by_account.into_iter().collect();
        if !turns.is_empty() {
            let rotate = self.rotation % turns.len();
            turns.rotate_left(rotate);
            self.rotation = self.rotation.wrapping_add(1);
        }
        let account_cap = self.config.max_requests_per_account();
        while let Some((account_id, mut ids)) = turns.pop_front() {
            let Some(id) = ids.pop_front() else {
                continue;
            };
            let in_flight = self.account_in_flight.get(&account_id).copied();
            if in_flight.unwrap_or(0) >= account_cap {
                // At its share: looked at again after one of its requests completes.
                let capped = self.capped.entry(account_id).or_default();
                capped.insert(id);
                capped.extend(ids);
                continue;
            }
            let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() else {
                // Out of global capacity: everyone left looks again when an attempt completes.
                self.dirty.insert(id);
                self.dirty.extend(ids);
                for (_, rest) in turns.drain(..) {
                    self.dirty.extend(rest);
                }
                break;
            };
            let Some(endpoint) = self.endpoints.get_mut(&id) else {
                turns.push_back((account_id, ids));
                continue;
            };
            let Some(pending) = endpoint.queue.next_ready(now) else {
                // Nothing more may go from this endpoint now (its limits, or empty).
                if endpoint.queue.is_empty() {
                    self.waiting.remove(&id);
                }
                if !ids.is_empty() {
                    turns.push_back((account_id, ids));
                }
                continue;
            };
            if endpoint.queue.is_empty() {
                self.waiting.remove(&id);
            }
            *self
                .account_in_flight
                .entry(account_id.clone())
                .or_default() += 1;
            starts.push(Start {
                permit,
                subscription_id: id.clone(),
                account_id: account_id.clone(),
                pending,
            });
            // This endpoint may have more: to the back of its account's line, and the account
            // to the back of the accounts' line.
            ids.push_back(id);
            turns.push_back((account_id, ids));
        }
        self.sweep_idle(now);
        starts
    }

    /// An attempt ended: its account's share and its endpoint's in-flight slot are free again.
    /// Returns what waited on the endpoint if its circuit opened: it falls due now, with the
    /// circuit open.
    pub(crate) fn completed(&mut self, completion: Completion, now: Instant) -> Vec<Pending> {
        if let Some(in_flight) = self.account_in_flight.get_mut(&completion.account_id) {
            *in_flight = in_flight.saturating_sub(1);
            if *in_flight == 0 {
                self.account_in_flight.remove(&completion.account_id);
            }
        }
        // Below its share again: its waiting endpoints get their turn.
        if let Some(ids) = self.capped.remove(&completion.account_id) {
            self.dirty.extend(ids);
        }
        let Some(endpoint) = self.endpoints.get_mut(&completion.subscription_id) else {
            return Vec::new();
        };
        let queue = &mut endpoint.queue;
        let result = match completion.end {
            Some(DeliveryEnd::Delivered) => queue.complete(true, now),
            Some(DeliveryEnd::Failed) => queue.complete(false, now),
            None => queue.abandon().map(|()| None),
        };
        match result {
            Ok(Some(transition)) => circuit_moved(&completion, transition, now),
            Ok(None) => {}
            Err(_) => {
                debug!(subscription_id = %completion.subscription_id, "completion without an attempt in flight")
            }
        }
        let mut opened = Vec::new();
        if queue.is_open(now) {
            opened.extend(queue.drain());
            self.waiting.remove(&completion.subscription_id);
        }
        self.dirty.insert(completion.subscription_id);
        opened
    }

    /// Endpoints with waiting items whose limits may have lifted (rate limit, circuit).
    pub(crate) fn mark_waiting(&mut self) {
        self.dirty.extend(self.waiting.iter().cloned());
    }

    /// When an endpoint's queue may next start something (or the idle sweep needs a turn).
    pub(crate) fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        // Out of global capacity, an endpoint's ready time would wake the loop for nothing (a
        // busy spin while every permit hangs on slow endpoints): a completion wakes it instead.
        // The same holds for an account at its share.
        let capacity_left = self.semaphore.available_permits() > 0;
        let account_cap = self.config.max_requests_per_account();
        let endpoints = self
            .waiting
            .iter()
            .filter(|_| capacity_left)
            .filter_map(|id| self.endpoints.get(id))
            .filter(|endpoint| {
                self.account_in_flight
                    .get(&endpoint.account_id)
                    .copied()
                    .unwrap_or(0)
                    < account_cap
            })
            .filter_map(|endpoint| endpoint.queue.ready_at(now));
        // The idle sweep needs a turn now and then even when nothing else happens.
        let sweep = (!self.endpoints.is_empty()).then_some(self.last_sweep + SWEEP_INTERVAL);
        endpoints.chain(sweep).min()
    }

    /// Drops queued tasks of `revoked` partitions: their next owner reads them from the
    /// committed offset.
    pub(crate) fn forget(&mut self, revoked: &HashSet<PartitionKey>) {
        if revoked.is_empty() {
            return;
        }
        for id in self.waiting.iter() {
            let Some(endpoint) = self.endpoints.get_mut(id) else {
                continue;
            };
            let queue = &mut endpoint.queue;
            let kept: Vec<Pending> = queue
                .drain()
                .filter(|p| !revoked.contains(&(p.topic.clone(), p.partition)))
                .collect();
            for pending in kept {
                // It was in the queue a moment ago (possibly past the backlog).
                queue.push_past_backlog(pending);
            }
        }
        let endpoints = &self.endpoints;
        self.waiting
            .retain(|id| endpoints.get(id).is_some_and(|e| !e.queue.is_empty()));
    }

    /// Whether any attempt still holds a permit.
    pub(crate) fn any_running(&self) -> bool {
        self.semaphore.available_permits() < self.config.max_concurrent_requests
    }

    /// Drops idle endpoint queues (see [`EndpointQueue::is_evictable`]) and sets the
    /// open-circuits gauge, at most once per [`SWEEP_INTERVAL`]: the one scan over every
    /// endpoint kept, so the per-turn work does not grow with the endpoints seen.
    fn sweep_idle(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let failure_memory = self.config.endpoint.max_cool_down();
        let before = self.endpoints.len();
        self.endpoints
            .retain(|_, endpoint| !endpoint.queue.is_evictable(now, failure_memory));
        if self.endpoints.len() < before / 2 {
            // A burst of endpoints is gone: give the memory back.
            self.endpoints.shrink_to_fit();
            self.waiting.shrink_to_fit();
            self.dirty.shrink_to_fit();
        }
        let open = self
            .endpoints
            .values()
            .filter(|endpoint| endpoint.queue.is_open(now))
            .count();
        metrics::gauge!(names::SENDER_OPEN_CIRCUITS).set(open as f64);
        metrics::gauge!(names::SENDER_TRACKED_ENDPOINTS).set(self.endpoints.len() as f64);
    }
}
