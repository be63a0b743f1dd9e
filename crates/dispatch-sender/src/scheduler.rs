//! Which queued delivery starts next: one queue per endpoint (so endpoints of one partition never
//! wait for each other), the process's request permits, each account's share of them, and
//! round-robin turns between accounts and, within an account, between its endpoints.
//!
//! The engine queues admitted tasks here, asks for the attempts that may start now
//! ([`Scheduler::next_attempts`]) and reports each one's end ([`Scheduler::completed`]); the
//! queues' own limits (in-flight, rate, circuit breaker) live in [`crate::endpoint`].
//!
//! # Bounded work per turn
//! Only endpoints that may be able to start something are looked at: the `dirty` ones, marked
//! when a task is queued, when one of their attempts completes, when a timer of theirs falls
//! due, or when their account drops below its share. An endpoint held back by time alone (its
//! rate limit, its circuit's cool-down) sets a timer when it is looked at; one held back by its
//! in-flight limit waits for a completion. Nothing walks every waiting endpoint per turn: the
//! once-a-second sweep does, as a safety net, and drops idle queues so the table is bounded by
//! recent activity, not by every subscription ever seen.
//!
//! Endpoints and accounts are slots in vectors, named by index: the hot path hashes a
//! subscription id once per queued task and never clones an id.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
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

/// How often idle endpoint queues are looked for and dropped, every waiting endpoint looked at
/// again, and the open-circuits gauge set.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// An endpoint's slot and the slot's generation: a slot is reused after its endpoint was dropped
/// as idle, and a timer set for the old one must not touch the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct EndpointId {
    slot: u32,
    generation: u32,
}

/// Which endpoint and account an attempt holds a place of (returned in its [`Completion`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    endpoint: EndpointId,
    account: u32,
}

/// One endpoint's queue and its bookkeeping.
#[derive(Debug)]
struct Endpoint {
    subscription_id: String,
    account: u32,
    queue: EndpointQueue<Pending>,
    /// In the dirty list.
    dirty: bool,
    /// In its account's capped list.
    capped: bool,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    endpoint: Option<Endpoint>,
}

/// One account's requests in flight and its endpoints waiting for its share.
#[derive(Debug)]
struct Account {
    id: String,
    in_flight: usize,
    /// Endpoints with work, looked at again when one of the account's requests completes.
    capped: Vec<EndpointId>,
}

/// An attempt that may start now, holding one of the process's permits.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) place: Place,
    pub(crate) pending: Pending,
}

/// How an attempt ended, reported back by its task.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) place: Place,
    /// `None`: not attempted after all (the subscription was deleted while it was queued).
    pub(crate) end: Option<DeliveryEnd>,
}

/// What the engine needs to know of an enabled subscription's endpoint to admit a task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointFacts {
    pub(crate) circuit_open: bool,
    pub(crate) backlog: Backlog,
}

/// The endpoint queues and the permits (see the module documentation).
#[derive(Debug)]
pub(crate) struct Scheduler {
    config: SenderConfig,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Subscription id → slot.
    index: HashMap<String, u32>,
    accounts: Vec<Account>,
    /// Account id → its index in `accounts` (accounts are few and kept).
    account_index: HashMap<String, u32>,
    /// Endpoints that may be able to start an attempt now.
    dirty: Vec<EndpointId>,
    /// When endpoints held back by time alone may go (stale entries only cause a look).
    timers: BinaryHeap<Reverse<(Instant, EndpointId)>>,
    /// Turns the order accounts are served in, so none is always first.
    rotation: usize,
    /// When [`Scheduler::sweep`] last ran.
    last_sweep: Instant,
    semaphore: Arc<Semaphore>,
}

impl Scheduler {
    pub(crate) fn new(config: SenderConfig) -> Self {
        Scheduler {
            semaphore: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            config,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            accounts: Vec::new(),
            account_index: HashMap::new(),
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            rotation: 0,
            last_sweep: Instant::now(),
        }
    }

    fn endpoint_mut(&mut self, id: EndpointId) -> Option<&mut Endpoint> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.endpoint.as_mut()
    }

    fn mark_dirty(&mut self, id: EndpointId) {
        if let Some(endpoint) = self.endpoint_mut(id)
            && !endpoint.dirty
        {
            endpoint.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Whether `subscription`'s circuit is open and how its backlog stands (making its queue if
    /// absent, with the subscription's current limits).
    pub(crate) fn facts(&mut self, subscription: &Subscription, now: Instant) -> EndpointFacts {
        let max_queue_wait = self.config.endpoint.max_queue_wait();
        let id = self.endpoint_of(subscription);
        let Some(endpoint) = self.endpoint_mut(id) else {
            unreachable!("endpoint_of returns a live slot");
        };
        let queue = &mut endpoint.queue;
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
        // The queue `facts` made and updated (found again, not remade: this runs per delivery).
        let id = match self.index.get(&subscription.id) {
            Some(&slot) => EndpointId {
                slot,
                generation: self.slots[slot as usize].generation,
            },
            None => self.endpoint_of(subscription),
        };
        let Some(endpoint) = self.endpoint_mut(id) else {
            unreachable!("the index names live slots");
        };
        let queue = &mut endpoint.queue;
        if past {
            queue.push_past_backlog(pending);
        } else if let Err(overflow) = queue.push(pending) {
            queue.push_past_backlog(overflow.into_inner());
        }
        self.mark_dirty(id);
    }

    /// The slot of `subscription`'s endpoint, made if absent, with its current limits.
    fn endpoint_of(&mut self, subscription: &Subscription) -> EndpointId {
        let config = &self.config.endpoint;
        let limits = EndpointLimits::of(subscription);
        if let Some(&slot) = self.index.get(&subscription.id) {
            let slot_ref = &mut self.slots[slot as usize];
            if let Some(endpoint) = slot_ref.endpoint.as_mut() {
                endpoint.queue.set_limits(config, limits);
            }
            return EndpointId {
                slot,
                generation: slot_ref.generation,
            };
        }
        let account = self.account_of(&subscription.account_id);
        let endpoint = Endpoint {
            subscription_id: subscription.id.clone(),
            account,
            queue: EndpointQueue::new(&self.config.endpoint, limits),
            dirty: false,
            capped: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let slot_ref = &mut self.slots[slot as usize];
                slot_ref.endpoint = Some(endpoint);
                slot
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    endpoint: Some(endpoint),
                });
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 endpoints")
            }
        };
        self.index.insert(subscription.id.clone(), slot);
        EndpointId {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    fn account_of(&mut self, account_id: &str) -> u32 {
        if let Some(&account) = self.account_index.get(account_id) {
            return account;
        }
        let account = u32::try_from(self.accounts.len()).expect("fewer than 2^32 accounts");
        self.accounts.push(Account {
            id: account_id.to_owned(),
            in_flight: 0,
            capped: Vec::new(),
        });
        self.account_index.insert(account_id.to_owned(), account);
        account
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
        while let Some(Reverse((at, id))) = self.timers.peek().copied()
            && at <= now
        {
            self.timers.pop();
            self.mark_dirty(id);
        }
        let starts = self.start_dirty(now);
        // After the dirty ones were looked at: an endpoint still marked is kept this round.
        self.sweep(now);
        starts
    }

    /// The attempts the dirty endpoints may start now (see [`Self::next_attempts`]).
    fn start_dirty(&mut self, now: Instant) -> Vec<Start> {
        let mut starts = Vec::new();
        if self.dirty.is_empty() {
            return starts;
        }
        let mut by_account: BTreeMap<u32, VecDeque<EndpointId>> = BTreeMap::new();
        for id in std::mem::take(&mut self.dirty) {
            if let Some(endpoint) = self.endpoint_mut(id) {
                endpoint.dirty = false;
                by_account
                    .entry(endpoint.account)
                    .or_default()
                    .push_back(id);
            }
        }
        let mut turns: VecDeque<(u32, VecDeque<EndpointId>)> = by_account.into_iter().collect();
        if !turns.is_empty() {
            let rotate = self.rotation % turns.len();
            turns.rotate_left(rotate);
            self.rotation = self.rotation.wrapping_add(1);
        }
        let account_cap = self.config.max_requests_per_account();
        while let Some((account, mut ids)) = turns.pop_front() {
            let Some(id) = ids.pop_front() else {
                continue;
            };
            if self.accounts[account as usize].in_flight >= account_cap {
                // At its share: looked at again after one of its requests completes.
                for id in std::iter::once(id).chain(ids) {
                    if let Some(endpoint) = self.endpoint_mut(id)
                        && !endpoint.capped
                    {
                        endpoint.capped = true;
                        self.accounts[account as usize].capped.push(id);
                    }
                }
                continue;
            }
            let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() else {
                // Out of global capacity: everyone left looks again when an attempt completes.
                let rest: Vec<EndpointId> = std::iter::once(id)
                    .chain(ids)
                    .chain(turns.drain(..).flat_map(|(_, rest)| rest))
                    .collect();
                for id in rest {
                    self.mark_dirty(id);
                }
                break;
            };
            let Some(endpoint) = self.endpoint_mut(id) else {
                turns.push_back((account, ids));
                continue;
            };
            let Some(pending) = endpoint.queue.next_ready(now) else {
                // Nothing more may go from this endpoint now. Held back by time alone (rate
                // limit, cool-down): a timer looks again; by its in-flight limit: a completion.
                if let Some(at) = endpoint.queue.ready_at(now) {
                    self.timers.push(Reverse((at.max(now), id)));
                }
                if !ids.is_empty() {
                    turns.push_back((account, ids));
                }
                continue;
            };
            self.accounts[account as usize].in_flight += 1;
            starts.push(Start {
                permit,
                place: Place {
                    endpoint: id,
                    account,
                },
                pending,
            });
            // This endpoint may have more: to the back of its account's line, and the account
            // to the back of the accounts' line.
            ids.push_back(id);
            turns.push_back((account, ids));
        }
        starts
    }

    /// An attempt ended: its account's share and its endpoint's in-flight slot are free again.
    /// Returns what waited on the endpoint if its circuit opened: it falls due now, with the
    /// circuit open.
    pub(crate) fn completed(&mut self, completion: Completion, now: Instant) -> Vec<Pending> {
        let Place {
            endpoint: id,
            account,
        } = completion.place;
        if let Some(account) = self.accounts.get_mut(account as usize) {
            account.in_flight = account.in_flight.saturating_sub(1);
            // Below its share again: its waiting endpoints get their turn.
            let capped = std::mem::take(&mut account.capped);
            for capped_id in capped {
                if let Some(endpoint) = self.endpoint_mut(capped_id) {
                    endpoint.capped = false;
                }
                self.mark_dirty(capped_id);
            }
        }
        // The slot by hand, not `endpoint_mut`: the account's id is read while it is borrowed.
        let Some(endpoint) = self
            .slots
            .get_mut(id.slot as usize)
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.endpoint.as_mut())
        else {
            return Vec::new();
        };
        let queue = &mut endpoint.queue;
        let result = match completion.end {
            Some(DeliveryEnd::Delivered) => queue.complete(true, now),
            Some(DeliveryEnd::Failed) => queue.complete(false, now),
            None => queue.abandon().map(|()| None),
        };
        let opened = if queue.is_open(now) {
            queue.drain().collect()
        } else {
            Vec::new()
        };
        match result {
            Ok(Some(transition)) => {
                let account_id = self
                    .accounts
                    .get(account as usize)
                    .map_or("", |account| account.id.as_str());
                circuit_moved(&endpoint.subscription_id, account_id, transition, now);
            }
            Ok(None) => {}
            Err(_) => {
                debug!(subscription_id = %endpoint.subscription_id, "completion without an attempt in flight")
            }
        }
        self.mark_dirty(id);
        opened
    }

    /// When a timer of an endpoint falls due, or the sweep needs a turn. A stale timer only
    /// costs a look.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        // Out of global capacity a timer would wake the loop for nothing: a completion will.
        let timer = (self.semaphore.available_permits() > 0)
            .then(|| self.timers.peek().map(|Reverse((at, _))| *at))
            .flatten();
        // The sweep needs a turn now and then even when nothing else happens.
        let sweep = (!self.index.is_empty()).then_some(self.last_sweep + SWEEP_INTERVAL);
        timer.into_iter().chain(sweep).min()
    }

    /// Drops queued tasks of `revoked` partitions: their next owner reads them from the
    /// committed offset.
    pub(crate) fn forget(&mut self, revoked: &HashSet<PartitionKey>) {
        if revoked.is_empty() {
            return;
        }
        for slot in &mut self.slots {
            let Some(endpoint) = slot.endpoint.as_mut() else {
                continue;
            };
            let queue = &mut endpoint.queue;
            if queue.is_empty() {
                continue;
            }
            let kept: Vec<Pending> = queue
                .drain()
                .filter(|p| !revoked.contains(&(p.topic.clone(), p.partition)))
                .collect();
            for pending in kept {
                // It was in the queue a moment ago (possibly past the backlog).
                queue.push_past_backlog(pending);
            }
        }
    }

    /// Whether any attempt still holds a permit.
    pub(crate) fn any_running(&self) -> bool {
        self.semaphore.available_permits() < self.config.max_concurrent_requests
    }

    /// At most once per [`SWEEP_INTERVAL`], the one scan over every endpoint kept: drops idle
    /// queues (see [`EndpointQueue::is_evictable`]), marks every endpoint with waiting tasks
    /// dirty (a safety net: no wake-up is missed for longer than this), and sets the
    /// open-circuits and tracked-endpoints gauges.
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let failure_memory = self.config.endpoint.max_cool_down();
        let mut open = 0;
        let mut waiting = Vec::new();
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let Some(endpoint) = entry.endpoint.as_ref() else {
                continue;
            };
            // Dirty or capped ones are referenced from lists: they are kept this round.
            if !endpoint.dirty
                && !endpoint.capped
                && endpoint.queue.is_evictable(now, failure_memory)
            {
                self.index.remove(&endpoint.subscription_id);
                entry.endpoint = None;
                entry.generation = entry.generation.wrapping_add(1);
                self.free.push(slot as u32);
                continue;
            }
            if endpoint.queue.is_open(now) {
                open += 1;
            }
            if !endpoint.queue.is_empty() {
                waiting.push(EndpointId {
                    slot: slot as u32,
                    generation: entry.generation,
                });
            }
        }
        for id in waiting {
            self.mark_dirty(id);
        }
        if self.index.len() < self.index.capacity() / 4 {
            // A burst of endpoints is gone: give the memory back.
            self.index.shrink_to_fit();
        }
        metrics::gauge!(names::SENDER_OPEN_CIRCUITS).set(f64::from(open));
        metrics::gauge!(names::SENDER_TRACKED_ENDPOINTS).set(self.index.len() as f64);
    }
}

/// Logs and counts a circuit breaker's transition.
fn circuit_moved(
    subscription_id: &str,
    account_id: &str,
    transition: CircuitTransition,
    now: Instant,
) {
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

#[cfg(test)]
mod tests {
    use dispatch_proto::dispatch::v1::DeliveryTask;

    use super::*;

    fn config(max_concurrent_requests: usize, share_percent: u32) -> SenderConfig {
        SenderConfig {
            max_concurrent_requests,
            max_account_share_percent: share_percent,
            ..SenderConfig::default()
        }
    }

    fn subscription(id: &str, account: &str, rate_limit_per_second: u32) -> Subscription {
        Subscription {
            id: id.to_owned(),
            account_id: account.to_owned(),
            enabled: true,
            rate_limit_per_second,
            ..Subscription::default()
        }
    }

    fn pending(subscription: &Subscription, offset: i64) -> Pending {
        Pending {
            topic: "dispatch.deliveries".to_owned(),
            partition: 0,
            offset,
            task: DeliveryTask {
                subscription_id: subscription.id.clone(),
                account_id: subscription.account_id.clone(),
                ..DeliveryTask::default()
            },
        }
    }

    fn queue(scheduler: &mut Scheduler, subscription: &Subscription, tasks: i64, now: Instant) {
        for offset in 0..tasks {
            scheduler.facts(subscription, now);
            scheduler.enqueue(subscription, pending(subscription, offset), false);
        }
    }

    /// The attempt of `start` ended with `end` at `now`: its permit is returned and the
    /// scheduler told.
    fn finish(scheduler: &mut Scheduler, start: Start, end: DeliveryEnd, now: Instant) {
        drop(start.permit);
        scheduler.completed(
            Completion {
                place: start.place,
                end: Some(end),
            },
            now,
        );
    }

    fn accounts_of(starts: &[Start]) -> Vec<String> {
        starts
            .iter()
            .map(|start| start.pending.task.account_id.clone())
            .collect()
    }

    #[test]
    fn scarce_permits_go_round_robin_between_accounts() {
        let now = Instant::now();
        let mut scheduler = Scheduler::new(config(2, 100));
        let a = subscription("sub_a", "acc_a", 0);
        let b = subscription("sub_b", "acc_b", 0);
        queue(&mut scheduler, &a, 5, now);
        queue(&mut scheduler, &b, 5, now);
        let mut starts = scheduler.next_attempts(now);
        let mut accounts = accounts_of(&starts);
        accounts.sort();
        assert_eq!(
            accounts,
            ["acc_a", "acc_b"],
            "one each, not two of the first"
        );
        // A completion frees a permit for the other account's next turn.
        let first = starts.remove(0);
        finish(&mut scheduler, first, DeliveryEnd::Delivered, now);
        assert_eq!(
            scheduler.next_attempts(now).len(),
            1,
            "the freed permit is used"
        );
    }

    #[test]
    fn an_account_at_its_share_waits_for_one_of_its_own_completions() {
        let now = Instant::now();
        // 4 permits, 50 % each: an account may hold 2.
        let mut scheduler = Scheduler::new(config(4, 50));
        let a1 = subscription("sub_a1", "acc_a", 0);
        let a2 = subscription("sub_a2", "acc_a", 0);
        queue(&mut scheduler, &a1, 5, now);
        queue(&mut scheduler, &a2, 5, now);
        let mut starts = scheduler.next_attempts(now);
        assert_eq!(
            accounts_of(&starts),
            ["acc_a", "acc_a"],
            "capped at its share"
        );
        assert!(
            scheduler.next_attempts(now).is_empty(),
            "still at its share"
        );
        let done = starts.pop().expect("a start");
        finish(&mut scheduler, done, DeliveryEnd::Delivered, now);
        assert_eq!(
            scheduler.next_attempts(now).len(),
            1,
            "its completion lets one more go"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_held_back_by_its_rate_limit_wakes_by_timer_not_by_polling() {
        let now = Instant::now();
        let mut scheduler = Scheduler::new(config(16, 100));
        // 4 per second: the next slot is 250 ms away, well before the once-a-second sweep
        // (which would look at every waiting endpoint anyway).
        let limited = subscription("sub_rate", "acc_r", 4);
        queue(&mut scheduler, &limited, 3, now);
        let first = scheduler.next_attempts(now);
        assert_eq!(first.len(), 1, "one request per slot");
        let wake = scheduler.next_wakeup().expect("a timer for the next slot");
        assert!(
            wake > now && wake <= now + Duration::from_millis(250),
            "{:?}",
            wake - now
        );
        assert!(
            scheduler.next_attempts(now).is_empty(),
            "not before its slot"
        );
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(
            scheduler.next_attempts(Instant::now()).len(),
            1,
            "the timer made it look again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_endpoint_is_dropped_and_its_slot_reused_without_mixing_them_up() {
        let now = Instant::now();
        let mut scheduler = Scheduler::new(config(16, 100));
        let old = subscription("sub_old", "acc_o", 0);
        queue(&mut scheduler, &old, 1, now);
        let start = scheduler.next_attempts(now).pop().expect("a start");
        let old_place = start.place;
        finish(&mut scheduler, start, DeliveryEnd::Delivered, now);
        tokio::time::advance(SWEEP_INTERVAL * 2).await;
        assert!(scheduler.next_attempts(Instant::now()).is_empty());
        assert!(scheduler.index.is_empty(), "the idle queue was dropped");
        let new = subscription("sub_new", "acc_n", 0);
        queue(&mut scheduler, &new, 1, Instant::now());
        assert_eq!(scheduler.slots.len(), 1, "the slot is reused");
        // A completion of the old endpoint's generation does not touch the new one.
        let opened = scheduler.completed(
            Completion {
                place: old_place,
                end: Some(DeliveryEnd::Failed),
            },
            Instant::now(),
        );
        assert!(opened.is_empty());
        let starts = scheduler.next_attempts(Instant::now());
        assert_eq!(accounts_of(&starts), ["acc_n"]);
    }
}
