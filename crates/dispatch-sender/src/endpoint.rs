//! One subscription's delivery state in this process: a bounded FIFO of deliveries waiting,
//! the requests in flight against `max_in_flight`, the rate limit and the circuit breaker.
//!
//! # One owner, no locks
//! Deliveries of a subscription are keyed to one partition, and a partition has one owner in the
//! consumer group, so each endpoint's state lives in exactly one process (and one task of it):
//! `max_in_flight` and `rate_limit_per_second` are enforced here with plain fields, no
//! coordination (design section 6).
//!
//! # How the engine uses a queue
//! - A delivery falls due: if [`EndpointQueue::is_open`], its attempt is recorded as not sent
//!   (outcome `CIRCUIT_OPEN`) and spent like a failed one, so the delivery moves along its retry
//!   schedule (next tier, or the DLQ after the last attempt) — see `crate::not_sent`; otherwise
//!   [`EndpointQueue::push`], and on [`Overflow`] defer the item it gives back to the first delay
//!   tier without spending an attempt (with no tier configured, keep it in memory with
//!   [`EndpointQueue::push_past_backlog`]: the partition's uncommitted window bounds it).
//! - The scheduler calls [`EndpointQueue::next_ready`] until it returns `None`, starts an attempt
//!   for each item, and sleeps until the earliest [`EndpointQueue::ready_at`] of its queues or
//!   the next completion.
//! - An attempt ends: [`EndpointQueue::complete`] with its verdict (or
//!   [`EndpointQueue::abandon`] when it never reached a verdict). A returned
//!   [`CircuitTransition::Opened`] or [`CircuitTransition::Reopened`] is the moment to
//!   [`EndpointQueue::drain`] the queue: each waiting delivery's attempt is recorded as not sent.
//! - Idle queues are dropped ([`EndpointQueue::is_evictable`]) so the engine's map holds only
//!   endpoints with something worth keeping: waiting or in-flight deliveries, an open circuit
//!   before its cool-down ends, recent failures, a rate limiter still recovering.
//! - Revoke or shutdown: [`EndpointQueue::drain`]; the offsets of drained items stay unfinished
//!   unless the engine defers them, so nothing is lost either way.
//!
//! `ready_at` and `next_ready` agree by construction: `next_ready(now)` releases an item exactly
//! when `ready_at(now)` is at or before `now`, so a scheduler that sleeps until `ready_at`
//! never spins and never misses.
//!
//! # Order
//! With `max_in_flight = 1` the queue releases strictly first in, first out, one at a time: the
//! next item goes only after the previous one completed. That keeps per-endpoint order while
//! nothing fails; a failed delivery retries through a delay tier while later ones proceed.

use std::collections::VecDeque;
use std::collections::vec_deque::Drain;
use std::time::Duration;

use dispatch_proto::dispatch::v1::Subscription;
use serde::Deserialize;
use tokio::time::Instant;

use crate::circuit::{CircuitBreaker, CircuitTransition};
use crate::rate::RateLimit;

/// Per-endpoint limits of the sender: the defaults for subscriptions that set none, and the
/// bounds that keep one endpoint from stalling its partition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// Concurrent requests to an endpoint whose subscription sets `max_in_flight = 0`.
    pub default_max_in_flight: u32,
    /// Requests per second to an endpoint whose subscription sets `rate_limit_per_second = 0`;
    /// 0 = no limit. Bursts are a tenth of a second's worth, at least 1.
    pub default_rate_limit_per_second: u32,
    /// Deliveries that may wait in memory for one endpoint (in-flight requests not counted)
    /// before its pace is looked at: more are deferred to the first delay tier without spending
    /// an attempt if the endpoint is slow (see `max_queue_wait_ms`); for one that keeps up, a
    /// burst is paced by back-pressure instead (the partition's uncommitted window).
    pub max_backlog: usize,
    /// How long a backlog of `max_backlog` may take to drain at the endpoint's own pace (what
    /// its request slots complete per second) before its further deliveries are deferred, in
    /// milliseconds. Longer would let one slow
    /// or hanging endpoint hold its partition's uncommitted window, and so the other endpoints
    /// of that partition.
    pub max_queue_wait_ms: u64,
    /// Consecutive failures that open an endpoint's circuit.
    pub failure_threshold: u32,
    /// How long an opened circuit stays open before one probe may go, in milliseconds.
    pub cool_down_ms: u64,
    /// Longest cool-down, in milliseconds: each failed probe doubles the cool-down up to this.
    /// Also how long an idle endpoint's failure count is remembered before its state is dropped.
    pub max_cool_down_ms: u64,
    /// Most concurrent requests to one endpoint, whatever its subscription sets through the API
    /// (`max_in_flight` above it is lowered to this).
    pub max_in_flight_cap: u32,
    /// Highest requests per second one endpoint may be allowed, whatever its subscription sets
    /// through the API (`rate_limit_per_second` above it is lowered to this); 0 = no cap.
    pub rate_limit_per_second_cap: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            default_max_in_flight: 8,
            default_rate_limit_per_second: 0,
            max_backlog: 1000,
            max_queue_wait_ms: 10_000,
            failure_threshold: 5,
            cool_down_ms: 30_000,
            max_cool_down_ms: 300_000,
            max_in_flight_cap: 64,
            rate_limit_per_second_cap: 0,
        }
    }
}

impl EndpointConfig {
    /// Checks the settings before any I/O. The error names the bad key relative to this table
    /// (`max_backlog: …`); the caller prefixes the table's path.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_max_in_flight == 0 {
            return Err("default_max_in_flight: must be at least 1".to_owned());
        }
        if self.max_in_flight_cap < self.default_max_in_flight {
            return Err(format!(
                "max_in_flight_cap: must be at least default_max_in_flight ({}), got {}",
                self.default_max_in_flight, self.max_in_flight_cap
            ));
        }
        if self.rate_limit_per_second_cap != 0
            && self.default_rate_limit_per_second > self.rate_limit_per_second_cap
        {
            return Err(format!(
                "rate_limit_per_second_cap: must be 0 (no cap) or at least \
                 default_rate_limit_per_second ({}), got {}",
                self.default_rate_limit_per_second, self.rate_limit_per_second_cap
            ));
        }
        if self.max_backlog == 0 {
            return Err("max_backlog: must be at least 1".to_owned());
        }
        if self.max_queue_wait_ms == 0 {
            return Err("max_queue_wait_ms: must be at least 1".to_owned());
        }
        if self.failure_threshold == 0 {
            return Err("failure_threshold: must be at least 1".to_owned());
        }
        if self.cool_down_ms == 0 {
            return Err("cool_down_ms: must be at least 1".to_owned());
        }
        if self.max_cool_down_ms < self.cool_down_ms {
            return Err(format!(
                "max_cool_down_ms: must be at least cool_down_ms ({}), got {}",
                self.cool_down_ms, self.max_cool_down_ms
            ));
        }
        Ok(())
    }

    /// How long a full backlog may take to drain (see `max_queue_wait_ms`).
    pub fn max_queue_wait(&self) -> Duration {
        Duration::from_millis(self.max_queue_wait_ms)
    }

    /// The base cool-down.
    pub fn cool_down(&self) -> Duration {
        Duration::from_millis(self.cool_down_ms)
    }

    /// The longest cool-down.
    pub fn max_cool_down(&self) -> Duration {
        Duration::from_millis(self.max_cool_down_ms)
    }

    /// A closed circuit breaker with these settings.
    pub fn circuit_breaker(&self) -> CircuitBreaker {
        CircuitBreaker::new(
            self.failure_threshold,
            self.cool_down(),
            self.max_cool_down(),
        )
    }

    /// The in-flight cap of a subscription: its own, or the default for 0; never above
    /// [`Self::max_in_flight_cap`] (tenants set it through the API, operators bound it).
    pub fn max_in_flight(&self, limits: EndpointLimits) -> u32 {
        let wanted = match limits.max_in_flight {
            0 => self.default_max_in_flight,
            own => own,
        };
        wanted.min(self.max_in_flight_cap).max(1)
    }

    /// The rate limit of a subscription: its own, or the default for 0; `None` for no limit.
    /// Never above [`Self::rate_limit_per_second_cap`] when that is set: a subscription
    /// asking for no limit gets the cap.
    pub fn rate_limit_per_second(&self, limits: EndpointLimits) -> Option<u32> {
        let wanted = match limits.rate_limit_per_second {
            0 => Some(self.default_rate_limit_per_second).filter(|&rate| rate > 0),
            own => Some(own),
        };
        match self.rate_limit_per_second_cap {
            0 => wanted,
            cap => Some(wanted.map_or(cap, |rate| rate.min(cap))),
        }
    }
}

/// A subscription's own limits, as written on it (0 = the sender's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointLimits {
    /// Concurrent requests; 0 = [`EndpointConfig::default_max_in_flight`].
    pub max_in_flight: u32,
    /// Requests per second; 0 = [`EndpointConfig::default_rate_limit_per_second`].
    pub rate_limit_per_second: u32,
}

impl EndpointLimits {
    /// The limits set on a subscription record.
    pub fn of(subscription: &Subscription) -> Self {
        Self {
            max_in_flight: subscription.max_in_flight,
            rate_limit_per_second: subscription.rate_limit_per_second,
        }
    }
}

/// A delivery refused by [`EndpointQueue::push`] because the backlog is full, given back so the
/// engine can defer it to the first delay tier without spending an attempt.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's backlog is full ({max_backlog} deliveries waiting)")]
pub struct Overflow<T> {
    /// The delivery that did not fit.
    pub item: T,
    /// The backlog limit it hit.
    pub max_backlog: usize,
}

impl<T> Overflow<T> {
    /// The delivery that did not fit.
    pub fn into_inner(self) -> T {
        self.item
    }
}

/// [`EndpointQueue::complete`] or [`EndpointQueue::abandon`] without a request in flight: a
/// bug in the caller's bookkeeping. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no request to this endpoint is in flight")]
pub struct NothingInFlight;

/// One endpoint's deliveries and limits. `T` is whatever the engine schedules (a decoded
/// delivery task with its source offset).
#[derive(Debug)]
pub struct EndpointQueue<T> {
    items: VecDeque<T>,
    max_backlog: usize,
    in_flight: u32,
    max_in_flight: u32,
    rate: Option<RateLimit>,
    circuit: CircuitBreaker,
    /// When the last attempt completed with a verdict: failures counted by a closed circuit are
    /// remembered this long after it (see [`Self::is_evictable`]).
    last_completed: Option<Instant>,
    /// How fast the endpoint completes requests while busy.
    drain: DrainMeter,
}

/// The window the drain rate is measured over.
const DRAIN_WINDOW: Duration = Duration::from_secs(1);

/// The endpoint's own pace: completions per second of one request slot (the inverse of its
/// latency, by Little's law), measured over windows of [`DRAIN_WINDOW`] while requests were in
/// flight and smoothed (each new window weighs half). Per slot, not per endpoint: an endpoint
/// that waits for the sender's shared request permits (a burst to many endpoints) still
/// answers fast and must not look slow; one that answers slowly, or not at all, does.
#[derive(Debug)]
struct DrainMeter {
    window_started: Option<Instant>,
    /// When `in_flight` last changed (or was last looked at).
    last_change: Option<Instant>,
    completed: u32,
    /// Requests in flight integrated over the window's time.
    slot_seconds: f64,
    per_slot: Option<f64>,
}

impl DrainMeter {
    fn new() -> Self {
        DrainMeter {
            window_started: None,
            last_change: None,
            completed: 0,
            slot_seconds: 0.0,
            per_slot: None,
        }
    }

    /// Accounts the time since the last change at `in_flight` requests (the count that held
    /// until `now`; call before changing it), and closes the window once it lasted
    /// [`DRAIN_WINDOW`].
    fn advance(&mut self, now: Instant, in_flight: u32) {
        if let Some(last) = self.last_change {
            self.slot_seconds +=
                f64::from(in_flight) * now.saturating_duration_since(last).as_secs_f64();
        }
        self.last_change = Some(now);
        let started = *self.window_started.get_or_insert(now);
        if now.saturating_duration_since(started) < DRAIN_WINDOW {
            return;
        }
        if self.slot_seconds > 0.0 {
            let measured = f64::from(self.completed) / self.slot_seconds;
            self.per_slot = Some(match self.per_slot {
                Some(previous) => (previous + measured) / 2.0,
                None => measured,
            });
        }
        self.window_started = Some(now);
        self.completed = 0;
        self.slot_seconds = 0.0;
    }
}

impl<T> EndpointQueue<T> {
    /// An empty queue for a subscription with `limits`, a closed circuit, a full rate burst.
    pub fn new(config: &EndpointConfig, limits: EndpointLimits) -> Self {
        Self {
            items: VecDeque::new(),
            max_backlog: config.max_backlog.max(1),
            in_flight: 0,
            max_in_flight: config.max_in_flight(limits),
            rate: config
                .rate_limit_per_second(limits)
                .and_then(RateLimit::per_second),
            circuit: config.circuit_breaker(),
            last_completed: None,
            drain: DrainMeter::new(),
        }
    }

    /// Applies a subscription's changed limits. The queue, the requests in flight and the
    /// circuit are kept; a changed rate starts a fresh limiter. Lowering `max_in_flight` below
    /// the requests in flight lets nothing new go until enough complete.
    pub fn set_limits(&mut self, config: &EndpointConfig, limits: EndpointLimits) {
        self.max_in_flight = config.max_in_flight(limits);
        let rate = config.rate_limit_per_second(limits);
        if rate != self.rate.as_ref().map(RateLimit::rate) {
            self.rate = rate.and_then(RateLimit::per_second);
        }
    }

    /// Whether `max_backlog` deliveries are waiting ([`EndpointQueue::push`] would give one
    /// back).
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.max_backlog
    }

    /// Appends a delivery, or gives it back if `max_backlog` deliveries are already waiting.
    pub fn push(&mut self, item: T) -> Result<(), Overflow<T>> {
        if self.is_full() {
            return Err(Overflow {
                item,
                max_backlog: self.max_backlog,
            });
        }
        self.items.push_back(item);
        Ok(())
    }

    /// Appends a delivery even if the backlog is full. Only for a delivery that has nowhere
    /// else to go (no delay tier to defer it to): dropping it would lose it and leave its
    /// offset unfinished for good. What bounds memory then is the partition's uncommitted
    /// window, which pauses the partition.
    pub fn push_past_backlog(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// When the head delivery could go: `Some(now)` if now, a later instant if only time stands
    /// in the way (rate limit, cool-down), `None` if nothing waits or only a completion can
    /// free the way (in-flight cap reached, probe in flight, or a probe due but stragglers
    /// still in flight — the probe must go alone so its verdict is its own).
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        if self.items.is_empty() || self.in_flight >= self.max_in_flight {
            return None;
        }
        let mut at = self.circuit.ready_at(now)?;
        if self.circuit.next_is_probe() && self.in_flight > 0 {
            return None;
        }
        if let Some(rate) = &self.rate {
            at = at.max(rate.ready_at(now));
        }
        Some(at)
    }

    /// Pops the head delivery if it may go at `now` (in-flight cap, rate limit and circuit all
    /// allow), counting it in flight; `None` otherwise.
    pub fn next_ready(&mut self, now: Instant) -> Option<T> {
        let at = self.ready_at(now)?;
        if at > now || !self.circuit.try_acquire(now) {
            return None;
        }
        if let Some(rate) = &mut self.rate {
            // Cannot be refused: `ready_at` just checked the limiter at this `now`.
            let _spent = rate.try_acquire(now);
        }
        let item = self.items.pop_front()?;
        self.drain.advance(now, self.in_flight);
        self.in_flight += 1;
        Some(item)
    }

    /// An attempt released by [`next_ready`](Self::next_ready) ended with a verdict on the
    /// endpoint (`success` = 2xx; any failure the circuit should count). Returns the circuit's
    /// transition, if any: on `Opened`/`Reopened` the engine defers what waits here.
    pub fn complete(
        &mut self,
        success: bool,
        now: Instant,
    ) -> Result<Option<CircuitTransition>, NothingInFlight> {
        if self.in_flight == 0 {
            return Err(NothingInFlight);
        }
        self.drain.advance(now, self.in_flight);
        self.in_flight -= 1;
        self.drain.completed += 1;
        self.last_completed = Some(now);
        Ok(if success {
            self.circuit.on_success()
        } else {
            self.circuit.on_failure(now)
        })
    }

    /// An attempt released by [`next_ready`](Self::next_ready) ended without a verdict on the
    /// endpoint (abandoned at a revoke deadline, or never sent): frees its slot without
    /// counting for or against the circuit.
    pub fn abandon(&mut self) -> Result<(), NothingInFlight> {
        if self.in_flight == 0 {
            return Err(NothingInFlight);
        }
        self.drain.advance(Instant::now(), self.in_flight);
        self.in_flight -= 1;
        self.circuit.on_abandoned();
        Ok(())
    }

    /// Removes every waiting delivery, oldest first (to defer them all, or at a revoke).
    /// Requests in flight are not affected.
    pub fn drain(&mut self) -> Drain<'_, T> {
        self.items.drain(..)
    }

    /// Deliveries per second the endpoint can take at its own pace: what one request slot
    /// completed per second lately, times `max_in_flight`, at most its rate limit (`None` until
    /// it has been busy for a second). What [`dispatch_core::admission::drains_in_time`] weighs
    /// a full backlog against. A hanging endpoint measures 0.
    pub fn drain_rate(&mut self, now: Instant) -> Option<f64> {
        self.drain.advance(now, self.in_flight);
        let per_slot = self.drain.per_slot?;
        let pace = per_slot * f64::from(self.max_in_flight);
        Some(match &self.rate {
            Some(rate) => pace.min(f64::from(rate.rate())),
            None => pace,
        })
    }

    /// Whether the circuit is open at `now`: new deliveries should be deferred.
    pub fn is_open(&self, now: Instant) -> bool {
        self.circuit.is_open(now)
    }

    /// The circuit breaker, for its state and the "open circuits" gauge.
    pub fn circuit(&self) -> &CircuitBreaker {
        &self.circuit
    }

    /// Deliveries waiting (not in flight).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no delivery is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The in-flight cap in force.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    /// The backlog limit.
    pub fn max_backlog(&self) -> usize {
        self.max_backlog
    }

    /// The rate limit in force, requests per second; `None` for no limit.
    pub fn rate_limit_per_second(&self) -> Option<u32> {
        self.rate.as_ref().map(RateLimit::rate)
    }

    /// Whether the engine may drop this queue at `now` (and build a fresh one when the next
    /// delivery comes): nothing waiting or in flight, the rate limiter rested, and the circuit
    /// either [pristine](Self::is_idle) or holding nothing that still matters — an open circuit
    /// is kept until its cool-down ends, and failures counted by a closed (or cooled-down)
    /// circuit are kept for `failure_memory` after the last completion, so a slowly failing
    /// endpoint still trips its breaker. This is what bounds the engine's endpoint map by the
    /// endpoints active recently rather than every subscription ever seen.
    pub fn is_evictable(&self, now: Instant, failure_memory: Duration) -> bool {
        if self.is_idle(now) {
            return true;
        }
        if !self.items.is_empty()
            || self.in_flight > 0
            || self.rate.as_ref().is_some_and(|rate| !rate.is_rested(now))
            || self.circuit.is_open(now)
        {
            return false;
        }
        self.last_completed
            .is_none_or(|at| now.saturating_duration_since(at) >= failure_memory)
    }

    /// Whether the queue holds nothing worth keeping at `now`: nothing waiting or in flight,
    /// the circuit closed with no failures counted, the rate limiter's full burst available.
    /// The engine may then drop it and build a fresh one when the next delivery comes.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.items.is_empty()
            && self.in_flight == 0
            && self.circuit.is_pristine()
            && self.rate.as_ref().is_none_or(|rate| rate.is_rested(now))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as ValueError, MapDeserializer};

    use super::*;
    use crate::circuit::CircuitState;

    const MS: Duration = Duration::from_millis(1);

    fn limits(max_in_flight: u32, rate_limit_per_second: u32) -> EndpointLimits {
        EndpointLimits {
            max_in_flight,
            rate_limit_per_second,
        }
    }

    fn queue(max_in_flight: u32, rate: u32) -> EndpointQueue<u32> {
        EndpointQueue::new(&EndpointConfig::default(), limits(max_in_flight, rate))
    }

    fn filled(mut queue: EndpointQueue<u32>, n: u32) -> EndpointQueue<u32> {
        for item in 0..n {
            queue.push(item).expect("below the backlog");
        }
        queue
    }

    /// Releases everything that may go at `now`.
    fn release_all(queue: &mut EndpointQueue<u32>, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| queue.next_ready(now)).collect()
    }

    #[test]
    fn config_defaults_are_the_documented_ones() {
        let config = EndpointConfig::default();
        assert_eq!(config.default_max_in_flight, 8);
        assert_eq!(config.default_rate_limit_per_second, 0);
        assert_eq!(config.max_backlog, 1000);
        assert_eq!(config.max_queue_wait(), Duration::from_secs(10));
        assert_eq!(config.failure_threshold, 5);
        assert_eq!(config.cool_down(), Duration::from_secs(30));
        assert_eq!(config.max_cool_down(), Duration::from_secs(300));
        assert_eq!(config.validate(), Ok(()));
    }

    fn parse(pairs: Vec<(&'static str, u64)>) -> Result<EndpointConfig, ValueError> {
        EndpointConfig::deserialize(MapDeserializer::new(
            pairs
                .into_iter()
                .map(|(key, value)| (key, value.into_deserializer())),
        ))
    }

    #[test]
    fn config_deserializes_with_defaults_and_refuses_unknown_keys() {
        let config = parse(vec![("max_backlog", 10), ("cool_down_ms", 500)]).expect("valid");
        assert_eq!(config.max_backlog, 10);
        assert_eq!(config.cool_down_ms, 500);
        assert_eq!(config.failure_threshold, 5);
        let error = parse(vec![("max_backlogs", 10)]).expect_err("unknown key");
        assert!(error.to_string().contains("max_backlogs"), "{error}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let bad = [
            EndpointConfig {
                default_max_in_flight: 0,
                ..EndpointConfig::default()
            },
            EndpointConfig {
                max_backlog: 0,
                ..EndpointConfig::default()
            },
            EndpointConfig {
                failure_threshold: 0,
                ..EndpointConfig::default()
            },
            EndpointConfig {
                cool_down_ms: 0,
                ..EndpointConfig::default()
            },
            EndpointConfig {
                max_cool_down_ms: 1000,
                ..EndpointConfig::default()
            },
            EndpointConfig {
                max_in_flight_cap: 4,
                ..EndpointConfig::default()
            },
            EndpointConfig {
                default_rate_limit_per_second: 100,
                rate_limit_per_second_cap: 10,
                ..EndpointConfig::default()
            },
        ];
        let keys = [
            "default_max_in_flight:",
            "max_backlog:",
            "failure_threshold:",
            "cool_down_ms:",
            "max_cool_down_ms:",
            "max_in_flight_cap:",
            "rate_limit_per_second_cap:",
        ];
        for (config, key) in bad.iter().zip(keys) {
            let error = config.validate().expect_err("invalid");
            assert!(error.starts_with(key), "{error}");
        }
    }

    #[test]
    fn limits_set_through_the_api_are_capped_by_the_operator() {
        let config = EndpointConfig {
            max_in_flight_cap: 16,
            rate_limit_per_second_cap: 100,
            ..EndpointConfig::default()
        };
        assert_eq!(config.max_in_flight(limits(1000, 0)), 16);
        assert_eq!(config.max_in_flight(limits(4, 0)), 4);
        assert_eq!(config.max_in_flight(limits(0, 0)), 8, "the default");
        assert_eq!(config.rate_limit_per_second(limits(0, 5000)), Some(100));
        assert_eq!(config.rate_limit_per_second(limits(0, 20)), Some(20));
        assert_eq!(
            config.rate_limit_per_second(limits(0, 0)),
            Some(100),
            "no limit asked, the cap applies"
        );
        let uncapped = EndpointConfig::default();
        assert_eq!(uncapped.rate_limit_per_second(limits(0, 0)), None);
        assert_eq!(uncapped.rate_limit_per_second(limits(0, 5000)), Some(5000));
        let queue = EndpointQueue::<u32>::new(&config, limits(1000, 5000));
        assert_eq!(queue.max_in_flight(), 16);
        assert_eq!(queue.rate_limit_per_second(), Some(100));
    }

    #[test]
    fn a_full_backlog_can_still_take_what_has_nowhere_else_to_go() {
        let config = EndpointConfig {
            max_backlog: 1,
            ..EndpointConfig::default()
        };
        let mut queue = EndpointQueue::new(&config, limits(1, 0));
        queue.push(1).expect("room");
        assert!(queue.push(2).is_err());
        queue.push_past_backlog(2);
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn eviction_keeps_open_circuits_and_recent_failures() {
        let memory = Duration::from_secs(300);
        let config = EndpointConfig {
            failure_threshold: 2,
            ..EndpointConfig::default()
        };
        let t0 = Instant::now();
        let mut queue: EndpointQueue<u32> = EndpointQueue::new(&config, limits(4, 0));
        assert!(queue.is_evictable(t0, memory), "fresh");
        queue.push(1).expect("room");
        assert!(!queue.is_evictable(t0, memory), "waiting");
        assert_eq!(queue.next_ready(t0), Some(1));
        assert!(!queue.is_evictable(t0, memory), "in flight");
        queue.complete(true, t0).expect("in flight");
        assert!(queue.is_evictable(t0, memory), "delivered, nothing to keep");

        // One failure: remembered for `memory`, then dropped.
        queue.push(2).expect("room");
        assert_eq!(queue.next_ready(t0), Some(2));
        queue.complete(false, t0).expect("in flight");
        assert!(!queue.is_evictable(t0 + memory / 2, memory));
        assert!(queue.is_evictable(t0 + memory, memory));

        // Open: kept until the cool-down ends.
        queue.push(3).expect("room");
        assert_eq!(queue.next_ready(t0), Some(3));
        queue.complete(false, t0).expect("in flight");
        assert!(queue.is_open(t0));
        let until = queue.circuit().open_until().expect("open");
        assert!(!queue.is_evictable(until - MS, Duration::ZERO));
        assert!(queue.is_evictable(until, Duration::ZERO));
    }

    #[test]
    fn zero_limits_take_the_defaults() {
        let config = EndpointConfig {
            default_rate_limit_per_second: 50,
            ..EndpointConfig::default()
        };
        assert_eq!(config.max_in_flight(limits(0, 0)), 8);
        assert_eq!(config.max_in_flight(limits(3, 0)), 3);
        assert_eq!(config.rate_limit_per_second(limits(0, 0)), Some(50));
        assert_eq!(config.rate_limit_per_second(limits(0, 7)), Some(7));
        // With no default rate, 0 means unlimited.
        let unlimited = EndpointConfig::default();
        assert_eq!(unlimited.rate_limit_per_second(limits(0, 0)), None);
        assert_eq!(queue(0, 0).max_in_flight(), 8);
        assert_eq!(queue(0, 0).rate_limit_per_second(), None);

        let subscription = Subscription {
            max_in_flight: 2,
            rate_limit_per_second: 20,
            ..Subscription::default()
        };
        assert_eq!(EndpointLimits::of(&subscription), limits(2, 20));
    }

    #[test]
    fn in_flight_one_releases_strictly_in_order_one_at_a_time() {
        let t0 = Instant::now();
        let mut queue = filled(queue(1, 0), 5);
        let mut released = Vec::new();
        for step in 0..5 {
            let now = t0 + MS * step;
            let batch = release_all(&mut queue, now);
            assert_eq!(batch.len(), 1, "one at a time");
            assert_eq!(queue.in_flight(), 1);
            assert_eq!(queue.ready_at(now), None, "waits for the completion");
            released.extend(batch);
            // Failures too: order is kept while the circuit stays closed.
            queue.complete(step % 2 == 0, now).expect("in flight");
        }
        assert_eq!(released, vec![0, 1, 2, 3, 4]);
        assert!(queue.is_empty());
        assert_eq!(queue.ready_at(t0), None);
    }

    #[test]
    fn the_in_flight_cap_holds_until_completions() {
        let t0 = Instant::now();
        let mut queue = filled(queue(3, 0), 10);
        assert_eq!(release_all(&mut queue, t0), vec![0, 1, 2]);
        assert_eq!(queue.in_flight(), 3);
        assert_eq!(queue.len(), 7);
        assert_eq!(queue.ready_at(t0), None);
        queue.complete(true, t0).expect("in flight");
        assert_eq!(queue.ready_at(t0), Some(t0));
        assert_eq!(release_all(&mut queue, t0), vec![3]);
        queue.complete(true, t0).expect("in flight");
        queue.abandon().expect("in flight");
        assert_eq!(release_all(&mut queue, t0), vec![4, 5]);
        assert_eq!(queue.in_flight(), 3);
    }

    #[test]
    fn completing_with_nothing_in_flight_is_an_error_value() {
        let t0 = Instant::now();
        let mut queue = queue(2, 0);
        assert_eq!(queue.complete(false, t0), Err(NothingInFlight));
        assert_eq!(queue.abandon(), Err(NothingInFlight));
        assert_eq!(queue.in_flight(), 0);
        assert_eq!(queue.circuit().consecutive_failures(), 0);
    }

    #[test]
    fn overflow_gives_the_item_back() {
        let config = EndpointConfig {
            max_backlog: 3,
            ..EndpointConfig::default()
        };
        let mut queue = EndpointQueue::new(&config, limits(1, 0));
        for item in 0..3 {
            queue.push(item).expect("below the backlog");
        }
        let overflow = queue.push(99).expect_err("full");
        assert_eq!(overflow.max_backlog, 3);
        assert_eq!(overflow.into_inner(), 99);
        assert_eq!(queue.len(), 3);
        // In-flight items do not count against the backlog.
        assert_eq!(queue.next_ready(Instant::now()), Some(0));
        queue.push(3).expect("room again");
        assert_eq!(queue.drain().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(queue.is_empty());
        assert_eq!(
            queue.in_flight(),
            1,
            "drain leaves requests in flight alone"
        );
    }

    #[test]
    fn twenty_per_second_releases_about_twenty_per_simulated_second() {
        let t0 = Instant::now();
        let mut queue = filled(queue(8, 20), 1000);
        let mut releases: Vec<Duration> = Vec::new();
        let mut now = t0;
        // A scheduler that sleeps exactly until `ready_at` and completes every request at once.
        while now < t0 + Duration::from_secs(3) {
            while let Some(_item) = queue.next_ready(now) {
                releases.push(now - t0);
                queue.complete(true, now).expect("in flight");
            }
            let next = queue
                .ready_at(now)
                .expect("items wait and nothing is in flight");
            assert!(next > now, "ready_at after a refusal lies in the future");
            now = next;
        }
        // The burst (2), then one every 50 ms.
        assert_eq!(&releases[..3], &[Duration::ZERO, Duration::ZERO, MS * 50]);
        for second in 1..3 {
            let window = Duration::from_secs(second)..Duration::from_secs(second + 1);
            let count = releases.iter().filter(|&&at| window.contains(&at)).count();
            assert_eq!(count, 20, "second {second}");
        }
        let first = releases
            .iter()
            .filter(|&&at| at < Duration::from_secs(1))
            .count();
        assert!(first <= 20 + 2, "{first} within the first second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_scheduler_sleeping_until_ready_at_keeps_the_rate_on_tokio_time() {
        let mut queue = filled(queue(8, 20), 42);
        let started = Instant::now();
        let mut released = 0;
        while let Some(at) = queue.ready_at(Instant::now()) {
            tokio::time::sleep_until(at).await;
            while queue.next_ready(Instant::now()).is_some() {
                released += 1;
                queue.complete(true, Instant::now()).expect("in flight");
            }
        }
        assert_eq!(released, 42);
        // Two at once, then forty at 50 ms intervals.
        assert_eq!(started.elapsed(), MS * 50 * 40);
    }

    #[test]
    fn ready_at_reports_what_stands_in_the_way() {
        let t0 = Instant::now();
        let mut queue = queue(2, 10);
        assert_eq!(queue.ready_at(t0), None, "nothing waits");
        for item in 0..4 {
            queue.push(item).expect("below the backlog");
        }
        assert_eq!(queue.ready_at(t0), Some(t0));
        // Burst 1 at 10/s: the second waits 100 ms.
        assert_eq!(queue.next_ready(t0), Some(0));
        assert_eq!(queue.ready_at(t0), Some(t0 + MS * 100));
        assert_eq!(queue.ready_at(t0 + MS * 40), Some(t0 + MS * 100));
        assert_eq!(queue.next_ready(t0 + MS * 99), None);
        assert_eq!(queue.next_ready(t0 + MS * 100), Some(1));
        // In-flight cap reached: only a completion helps.
        assert_eq!(queue.ready_at(t0 + Duration::from_secs(10)), None);
        queue.complete(true, t0 + MS * 150).expect("in flight");
        assert_eq!(queue.ready_at(t0 + MS * 150), Some(t0 + MS * 200));
    }

    #[test]
    fn circuit_cycle_through_the_queue() {
        let config = EndpointConfig {
            failure_threshold: 2,
            cool_down_ms: 1000,
            max_cool_down_ms: 4000,
            ..EndpointConfig::default()
        };
        let t0 = Instant::now();
        let mut queue = EndpointQueue::new(&config, limits(4, 0));
        for item in 0..10 {
            queue.push(item).expect("below the backlog");
        }
        assert_eq!(release_all(&mut queue, t0), vec![0, 1, 2, 3]);
        assert_eq!(queue.complete(false, t0), Ok(None));
        let opened = queue.complete(false, t0).expect("in flight");
        assert_eq!(
            opened,
            Some(CircuitTransition::Opened {
                until: t0 + MS * 1000,
                cool_down: MS * 1000
            })
        );
        assert!(queue.is_open(t0));
        assert_eq!(queue.circuit().state(), CircuitState::Open);
        assert_eq!(queue.next_ready(t0), None, "open: nothing goes");

        // The cool-down ends while two stragglers are in flight: the probe waits for them.
        let t1 = t0 + MS * 1000;
        assert!(!queue.is_open(t1));
        assert_eq!(queue.ready_at(t1), None);
        assert_eq!(queue.next_ready(t1), None);
        assert_eq!(
            queue.complete(true, t1),
            Ok(None),
            "a straggler decides nothing"
        );
        assert_eq!(queue.complete(false, t1), Ok(None));
        assert_eq!(queue.circuit().state(), CircuitState::Open);

        // Now the probe goes, alone.
        assert_eq!(queue.ready_at(t1), Some(t1));
        assert_eq!(release_all(&mut queue, t1), vec![4]);
        assert_eq!(queue.circuit().state(), CircuitState::HalfOpen);
        assert_eq!(queue.ready_at(t1 + Duration::from_secs(60)), None);
        // The probe fails: open again for twice as long.
        let reopened = queue.complete(false, t1).expect("in flight");
        assert_eq!(
            reopened,
            Some(CircuitTransition::Reopened {
                until: t1 + MS * 2000,
                cool_down: MS * 2000
            })
        );
        assert_eq!(queue.ready_at(t1), Some(t1 + MS * 2000));

        // The next probe succeeds: closed, and the cap is back to 4.
        let t2 = t1 + MS * 2000;
        assert_eq!(release_all(&mut queue, t2), vec![5]);
        assert_eq!(
            queue.complete(true, t2),
            Ok(Some(CircuitTransition::Closed))
        );
        assert_eq!(queue.circuit().state(), CircuitState::Closed);
        assert_eq!(release_all(&mut queue, t2), vec![6, 7, 8, 9]);
    }

    #[test]
    fn the_drain_rate_is_measured_while_busy_and_a_hanging_endpoint_measures_zero() {
        let start = Instant::now();
        let mut queue = filled(queue(4, 0), 1000);
        assert_eq!(queue.drain_rate(start), None, "never busy");
        // Every 10 ms for a second, the 4 in flight complete and 4 more go: 396 completions.
        for step in 0..100u32 {
            let now = start + 10 * MS * step;
            for _ in 0..queue.in_flight() {
                queue.complete(true, now).expect("in flight");
            }
            assert_eq!(release_all(&mut queue, now).len(), 4);
        }
        let mut now = start + 1000 * MS;
        let rate = queue.drain_rate(now).expect("measured");
        assert!((390.0..=400.0).contains(&rate), "{rate}");
        // Then it hangs: each second busy without a completion halves the rate.
        for _ in 0..12 {
            now += DRAIN_WINDOW;
            queue.drain_rate(now);
        }
        let rate = queue.drain_rate(now).expect("measured");
        assert!(rate < 0.5, "{rate}");
    }

    #[test]
    fn an_endpoint_waiting_for_shared_permits_is_paced_by_its_own_answers() {
        // Max 8 in flight, but the sender's permits let only one go at a time, and each is
        // answered in 1 ms: the endpoint itself could take 8,000 a second.
        let start = Instant::now();
        let mut queue = filled(queue(8, 0), 1000);
        let mut now = start;
        for _ in 0..500 {
            assert!(queue.next_ready(now).is_some());
            now += MS;
            queue.complete(true, now).expect("in flight");
            now += MS;
        }
        let pace = queue.drain_rate(now).expect("measured");
        assert!((7_900.0..=8_100.0).contains(&pace), "{pace}");
    }

    #[test]
    fn an_idle_second_says_nothing_about_the_endpoint() {
        let start = Instant::now();
        let mut queue = filled(queue(1, 0), 1);
        assert_eq!(queue.next_ready(start), Some(0));
        queue.complete(true, start + 500 * MS).expect("in flight");
        // One answer after half a second at one request in flight: 2 a second.
        let rate = queue
            .drain_rate(start + 1000 * MS)
            .expect("busy half of it");
        assert!((1.9..=2.1).contains(&rate), "{rate}");
        // Idle for a minute: the rate it had stands.
        assert_eq!(queue.drain_rate(start + 61_000 * MS), Some(rate));
    }

    #[test]
    fn idle_means_nothing_worth_keeping() {
        let t0 = Instant::now();
        let mut queue = queue(1, 10);
        assert!(queue.is_idle(t0));
        queue.push(1).expect("room");
        assert!(!queue.is_idle(t0));
        assert_eq!(queue.next_ready(t0), Some(1));
        assert!(!queue.is_idle(t0), "in flight");
        queue.complete(false, t0).expect("in flight");
        assert!(
            !queue.is_idle(t0 + Duration::from_secs(1)),
            "a failure counted"
        );
        queue.push(2).expect("room");
        let t1 = t0 + MS * 100;
        assert_eq!(queue.next_ready(t1), Some(2));
        queue.complete(true, t1).expect("in flight");
        assert!(!queue.is_idle(t1), "the limiter remembers the last request");
        assert!(queue.is_idle(t1 + MS * 100));
    }

    #[test]
    fn set_limits_keeps_the_queue_and_applies_the_new_caps() {
        let config = EndpointConfig::default();
        let t0 = Instant::now();
        let mut queue = filled(queue(4, 0), 6);
        assert_eq!(release_all(&mut queue, t0).len(), 4);
        queue.set_limits(&config, limits(2, 5));
        assert_eq!(queue.max_in_flight(), 2);
        assert_eq!(queue.rate_limit_per_second(), Some(5));
        assert_eq!(queue.len(), 2);
        queue.complete(true, t0).expect("in flight");
        queue.complete(true, t0).expect("in flight");
        assert_eq!(queue.ready_at(t0), None, "still 2 in flight, the new cap");
        queue.complete(true, t0).expect("in flight");
        assert_eq!(release_all(&mut queue, t0), vec![4]);
        assert_eq!(queue.ready_at(t0), None, "cap again");
    }

    #[test]
    fn ready_at_and_next_ready_always_agree() {
        let config = EndpointConfig {
            max_backlog: 20,
            failure_threshold: 3,
            cool_down_ms: 200,
            max_cool_down_ms: 1000,
            ..EndpointConfig::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut now = t0;
        let mut queue: EndpointQueue<u32> = EndpointQueue::new(&config, limits(3, 25));
        let mut next_item = 0;
        let mut released = Vec::new();
        for _ in 0..20_000 {
            match rng.random_range(0..10) {
                0..=2 => {
                    let _full = queue.push(next_item);
                    next_item += 1;
                }
                3..=4 if queue.in_flight() > 0 => {
                    let success = rng.random_bool(0.6);
                    queue.complete(success, now).expect("in flight");
                }
                5 => now += MS * rng.random_range(0..50),
                _ => {}
            }
            let ready_at = queue.ready_at(now);
            let in_flight = queue.in_flight();
            let released_now = queue.next_ready(now);
            assert_eq!(
                released_now.is_some(),
                ready_at.is_some_and(|at| at <= now),
                "ready_at {ready_at:?} at {:?}",
                now - t0
            );
            if let Some(item) = released_now {
                assert!(in_flight < queue.max_in_flight());
                released.push(item);
            }
        }
        // Pushed items come out in order (those refused by a full backlog never do).
        assert!(released.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(released.len() > 100, "the walk released {}", released.len());
    }
}
