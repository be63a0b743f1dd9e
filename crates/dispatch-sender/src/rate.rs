//! A per-endpoint rate limit driven by the caller's clock: GCRA, the algorithm `governor` uses,
//! in a form that can say *when* the next request may go without spending it.
//!
//! # Why not `governor` directly
//! The engine's scheduler needs two things from a limiter: "may one go now?" (spending a cell)
//! and "when could the next one go?" (for its timer, without spending anything —
//! [`EndpointQueue::ready_at`](crate::endpoint::EndpointQueue::ready_at)). `governor` 0.10
//! only answers by spending: `check()` consumes a cell when it succeeds, and its negative
//! outcome is the only way to learn the earliest time. It also reads the time from its own clock
//! inside `check()`, so feeding it an explicit `now` (as every state machine of this crate takes,
//! so tests need no runtime) needs a fake clock with interior mutability. The algorithm itself is
//! a dozen lines; a test checks this implementation against `governor` decision by decision.
//!
//! # Semantics
//! `per_second` cells are emitted evenly, one every `1 s / per_second` (rounded up to the
//! nanosecond, so the limit is never exceeded by rounding), and up to `burst` may go back to
//! back after a quiet period. Over any interval of length `d`, at most
//! `burst + d × per_second` requests pass.

use std::time::Duration;

use tokio::time::Instant;

/// A generic cell rate limit: `per_second` requests per second with bursts of `burst`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: u32,
    burst: u32,
    /// Time between two cells at the sustained rate.
    interval: Duration,
    /// How far ahead of `now` the theoretical arrival time may run: `interval × (burst − 1)`.
    tolerance: Duration,
    /// Theoretical arrival time of the next cell; `None` before the first (a full burst).
    tat: Option<Instant>,
}

impl RateLimit {
    /// The burst used when none is given: a tenth of a second's worth, at least one. Small, so
    /// an endpoint never sees much more than its rate within any short window, but not 1, so a
    /// momentary scheduling delay does not lose a cell for good.
    pub fn default_burst(per_second: u32) -> u32 {
        (per_second / 10).max(1)
    }

    /// A limit of `per_second` requests per second with bursts of `burst` (at least 1; 0 is
    /// taken as 1). `None` when `per_second` is 0 — no limit.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let burst = burst.max(1);
        let interval = Duration::from_nanos(1_000_000_000_u64.div_ceil(u64::from(per_second)));
        Some(Self {
            per_second,
            burst,
            interval,
            tolerance: interval * (burst - 1),
            tat: None,
        })
    }

    /// A limit of `per_second` with [`default_burst`](Self::default_burst).
    pub fn per_second(per_second: u32) -> Option<Self> {
        Self::new(per_second, Self::default_burst(per_second))
    }

    /// Requests per second.
    pub fn rate(&self) -> u32 {
        self.per_second
    }

    /// Largest burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// When the next request may go: `now` if it may go now, a later instant otherwise.
    /// Spends nothing.
    pub fn ready_at(&self, now: Instant) -> Instant {
        match self.tat {
            Some(tat) if tat > now + self.tolerance => tat - self.tolerance,
            _ => now,
        }
    }

    /// Spends one cell if a request may go at `now`; otherwise returns when it could.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        let ready = self.ready_at(now);
        if ready > now {
            return Err(ready);
        }
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        self.tat = Some(tat + self.interval);
        Ok(())
    }

    /// Whether a full burst is available at `now` — the limiter holds no memory of recent
    /// requests, so forgetting it (and building a new one later) loses nothing.
    pub fn is_rested(&self, now: Instant) -> bool {
        self.tat.is_none_or(|tat| tat <= now)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};

    use super::*;

    #[test]
    fn zero_is_no_limit() {
        assert!(RateLimit::per_second(0).is_none());
    }

    #[test]
    fn default_burst_is_a_tenth_of_the_rate_and_at_least_one() {
        assert_eq!(RateLimit::default_burst(1), 1);
        assert_eq!(RateLimit::default_burst(9), 1);
        assert_eq!(RateLimit::default_burst(20), 2);
        assert_eq!(RateLimit::default_burst(1000), 100);
    }

    #[test]
    fn burst_then_even_spacing() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10, 3).expect("limited");
        for _ in 0..3 {
            assert_eq!(limit.try_acquire(t0), Ok(()));
        }
        // The fourth waits one interval (100 ms) after the burst's first cell.
        assert_eq!(limit.try_acquire(t0), Err(t0 + Duration::from_millis(100)));
        assert_eq!(limit.ready_at(t0), t0 + Duration::from_millis(100));
        // Asking did not spend anything.
        assert_eq!(limit.ready_at(t0), t0 + Duration::from_millis(100));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(limit.try_acquire(t1), Ok(()));
        assert_eq!(limit.try_acquire(t1), Err(t0 + Duration::from_millis(200)));
        assert!(!limit.is_rested(t1));
        // After a quiet period the burst is back, and not more than the burst.
        let t2 = t0 + Duration::from_secs(5);
        assert!(limit.is_rested(t2));
        for _ in 0..3 {
            assert_eq!(limit.try_acquire(t2), Ok(()));
        }
        assert!(limit.try_acquire(t2).is_err());
    }

    #[test]
    fn twenty_per_second_passes_at_most_rate_times_time_plus_burst() {
        let t0 = Instant::now();
        let mut limit = RateLimit::per_second(20).expect("limited");
        assert_eq!(limit.burst(), 2);
        let mut passed = Vec::new();
        // Poll every millisecond for three seconds, as greedily as a scheduler could.
        for ms in 0..3000 {
            let now = t0 + Duration::from_millis(ms);
            while limit.try_acquire(now).is_ok() {
                passed.push(ms);
            }
        }
        // 2 at once, then one every 50 ms.
        assert_eq!(passed.len(), 2 + 2999 / 50);
        // Every window of one second holds at most rate + burst.
        for (i, &start) in passed.iter().enumerate() {
            let in_window = passed[i..].iter().filter(|&&ms| ms < start + 1000).count();
            assert!(
                in_window <= 22,
                "{in_window} within a second from {start} ms"
            );
        }
        // And the sustained rate is the rate: 20 in the last full second.
        assert_eq!(
            passed
                .iter()
                .filter(|&&ms| (2000..3000).contains(&ms))
                .count(),
            20
        );
    }

    #[test]
    fn rounding_never_exceeds_the_rate() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(3, 1).expect("limited");
        // A scheduler that sleeps exactly until `ready_at`, to the nanosecond.
        let mut passed = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            limit.try_acquire(now).expect("ready_at said so");
            passed += 1;
            now = limit.ready_at(now);
        }
        // t0, t0 + 333_333_334 ns, t0 + 666_666_668 ns; truncating the interval to 333_333_333 ns
        // would let a fourth through at t0 + 999_999_999 ns.
        assert_eq!(passed, 3);
    }

    #[test]
    fn agrees_with_governor_decision_by_decision() {
        let rate = NonZeroU32::new(20).expect("non-zero");
        let burst = NonZeroU32::new(4).expect("non-zero");
        let clock = FakeRelativeClock::default();
        let governor = RateLimiter::direct_with_clock(
            Quota::per_second(rate).allow_burst(burst),
            clock.clone(),
        );
        let t0 = Instant::now();
        let mut ours = RateLimit::new(20, 4).expect("limited");

        // An irregular but deterministic arrival pattern: bursts, pauses, steady polling.
        let mut elapsed = Duration::ZERO;
        for i in 0_u64..2000 {
            let step = Duration::from_millis((i * 7919) % 23);
            clock.advance(step);
            elapsed += step;
            let now = t0 + elapsed;
            let theirs = governor.check().is_ok();
            let mine = ours.try_acquire(now).is_ok();
            assert_eq!(mine, theirs, "decision {i} at {elapsed:?}");
        }
    }
}
