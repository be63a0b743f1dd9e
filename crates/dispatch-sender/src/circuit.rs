//! The per-endpoint circuit breaker: after a run of consecutive failures, stop sending to an
//! endpoint for a cool-down, then let exactly one probe decide whether it is back.
//!
//! # States
//! - **Closed**: requests go; consecutive failures are counted, a success resets the count.
//!   The `failure_threshold`-th consecutive failure opens the circuit.
//! - **Open until T**: nothing goes; the engine defers the endpoint's deliveries to the first
//!   delay tier without spending an attempt. At T the next request is the probe.
//! - **Half-open**: exactly one probe is in flight. Its success closes the circuit (and resets
//!   the cool-down); its failure opens it again with the cool-down doubled, up to
//!   `max_cool_down`, so an endpoint that stays down costs one probe per `max_cool_down` rather
//!   than one per base cool-down.
//!
//! # Results that arrive while open
//! Requests started before the circuit opened may complete after it did. Their results do not
//! move an open circuit: one failure more says nothing new, and one success (a request that
//! squeezed through before the endpoint fell over) is weaker evidence than the probe. Only the
//! probe decides. The circuit cannot tell a probe's result from a straggler's on its own, so the
//! caller must send the probe only when nothing else to the endpoint is in flight —
//! [`EndpointQueue`](crate::endpoint::EndpointQueue) does.
//!
//! Time is passed in (`now`), never read, so the whole cycle is tested without a runtime.

use std::time::Duration;

use tokio::time::Instant;

/// Where a circuit is, for the "open circuits" gauge and for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests go.
    Closed,
    /// No request goes until the cool-down ends (it may have ended already: the probe has not
    /// been sent yet).
    Open,
    /// The probe is in flight; nothing else goes until it completes.
    HalfOpen,
}

/// A change of state worth a log line and a gauge update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitTransition {
    /// Closed → open after `failure_threshold` consecutive failures.
    Opened {
        /// When the probe may go.
        until: Instant,
        /// The cool-down that ends at `until`.
        cool_down: Duration,
    },
    /// Half-open → open: the probe failed; the cool-down has grown.
    Reopened {
        /// When the next probe may go.
        until: Instant,
        /// The cool-down that ends at `until`.
        cool_down: Duration,
    },
    /// Half-open → closed: the probe succeeded.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// One endpoint's circuit breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    base_cool_down: Duration,
    max_cool_down: Duration,
    /// The cool-down of the next opening: the base, doubled by each failed probe.
    cool_down: Duration,
    state: State,
}

impl CircuitBreaker {
    /// A closed circuit that opens after `failure_threshold` consecutive failures (0 is taken
    /// as 1) for `cool_down`, growing up to `max_cool_down` (at least `cool_down`).
    pub fn new(failure_threshold: u32, cool_down: Duration, max_cool_down: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            base_cool_down: cool_down,
            max_cool_down: max_cool_down.max(cool_down),
            cool_down,
            state: State::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        match self.state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether the endpoint's new deliveries should be deferred at `now`: open and the
    /// cool-down not over. Half-open is not "open" here: the probe is out, and a few deliveries
    /// may wait in the (bounded) queue for its verdict rather than take a trip through a tier.
    pub fn is_open(&self, now: Instant) -> bool {
        matches!(self.state, State::Open { until } if now < until)
    }

    /// When an open circuit lets its probe go; `None` unless open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Consecutive failures counted while closed (0 otherwise).
    pub fn consecutive_failures(&self) -> u32 {
        match self.state {
            State::Closed {
                consecutive_failures,
            } => consecutive_failures,
            _ => 0,
        }
    }

    /// Whether a request could go at `now` (spends nothing): closed, or open with the cool-down
    /// over (the request would be the probe), or half-open with the probe not yet sent.
    pub fn allows(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { probe_in_flight } => !probe_in_flight,
        }
    }

    /// Whether the next request that goes would be the probe (so it must go alone).
    pub fn next_is_probe(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// When a request could go, seen from `now`: `Some(now)` if now, the end of the cool-down
    /// if open, `None` while the probe is in flight (only its completion changes that).
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Closed { .. } => Some(now),
            State::Open { until } => Some(until.max(now)),
            State::HalfOpen { probe_in_flight } => (!probe_in_flight).then_some(now),
        }
    }

    /// Lets one request go if [`allows`](Self::allows) says so; when that request is the probe,
    /// the circuit becomes half-open and refuses everything else until it completes.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if !self.allows(now) {
            return false;
        }
        if self.next_is_probe() {
            self.state = State::HalfOpen {
                probe_in_flight: true,
            };
        }
        true
    }

    /// A request succeeded. Closes a half-open circuit (the probe succeeded) and resets the
    /// cool-down; resets the failure count of a closed one; leaves an open one alone.
    pub fn on_success(&mut self) -> Option<CircuitTransition> {
        match self.state {
            State::Closed { .. } => {
                self.state = State::Closed {
                    consecutive_failures: 0,
                };
                None
            }
            State::Open { .. } => None,
            State::HalfOpen { .. } => {
                self.close();
                Some(CircuitTransition::Closed)
            }
        }
    }

    /// A request failed at `now`. Opens a closed circuit at the threshold; reopens a half-open
    /// one with a longer cool-down; leaves an open one alone.
    pub fn on_failure(&mut self, now: Instant) -> Option<CircuitTransition> {
        match self.state {
            State::Closed {
                consecutive_failures,
            } => {
                let consecutive_failures = consecutive_failures.saturating_add(1);
                if consecutive_failures < self.failure_threshold {
                    self.state = State::Closed {
                        consecutive_failures,
                    };
                    return None;
                }
                let until = now + self.cool_down;
                self.state = State::Open { until };
                Some(CircuitTransition::Opened {
                    until,
                    cool_down: self.cool_down,
                })
            }
            State::Open { .. } => None,
            State::HalfOpen { .. } => {
                self.cool_down = self.cool_down.saturating_mul(2).min(self.max_cool_down);
                let until = now + self.cool_down;
                self.state = State::Open { until };
                Some(CircuitTransition::Reopened {
                    until,
                    cool_down: self.cool_down,
                })
            }
        }
    }

    /// The probe ended without a verdict on the endpoint (abandoned at a revoke, or it never
    /// reached the endpoint): another probe may go. No effect in other states.
    pub fn on_abandoned(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// Whether the circuit carries no memory worth keeping: closed with no failures counted.
    pub fn is_pristine(&self) -> bool {
        self.state
            == State::Closed {
                consecutive_failures: 0,
            }
    }

    fn close(&mut self) {
        self.cool_down = self.base_cool_down;
        self.state = State::Closed {
            consecutive_failures: 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(30);
    const MAX_COOL_DOWN: Duration = Duration::from_secs(100);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(3, COOL_DOWN, MAX_COOL_DOWN)
    }

    /// Fails `n` requests at `now`, each acquired first; returns the last transition.
    fn fail(circuit: &mut CircuitBreaker, n: u32, now: Instant) -> Option<CircuitTransition> {
        let mut last = None;
        for _ in 0..n {
            assert!(circuit.try_acquire(now), "closed circuits let requests go");
            last = circuit.on_failure(now);
        }
        last
    }

    #[test]
    fn opens_at_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let mut circuit = breaker();
        assert_eq!(fail(&mut circuit, 2, t0), None);
        assert_eq!(circuit.consecutive_failures(), 2);
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert_eq!(
            fail(&mut circuit, 1, t0),
            Some(CircuitTransition::Opened {
                until: t0 + COOL_DOWN,
                cool_down: COOL_DOWN
            })
        );
        assert_eq!(circuit.state(), CircuitState::Open);
        assert!(circuit.is_open(t0));
        assert!(!circuit.allows(t0));
        assert!(!circuit.try_acquire(t0 + COOL_DOWN - Duration::from_millis(1)));
        assert_eq!(circuit.ready_at(t0), Some(t0 + COOL_DOWN));
        assert_eq!(circuit.open_until(), Some(t0 + COOL_DOWN));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut circuit = breaker();
        fail(&mut circuit, 2, t0);
        assert!(circuit.try_acquire(t0));
        assert_eq!(circuit.on_success(), None);
        assert_eq!(circuit.consecutive_failures(), 0);
        assert!(circuit.is_pristine());
        assert_eq!(fail(&mut circuit, 2, t0), None);
        assert_eq!(circuit.state(), CircuitState::Closed);
    }

    #[test]
    fn one_probe_after_the_cool_down_and_its_success_closes() {
        let t0 = Instant::now();
        let mut circuit = breaker();
        fail(&mut circuit, 3, t0);
        let t1 = t0 + COOL_DOWN;
        assert!(!circuit.is_open(t1), "the cool-down is over");
        assert!(circuit.allows(t1));
        assert!(circuit.next_is_probe());
        assert!(circuit.try_acquire(t1), "the probe");
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        // Exactly one probe, however long it takes.
        assert!(!circuit.allows(t1));
        assert!(!circuit.try_acquire(t1 + Duration::from_secs(3600)));
        assert_eq!(circuit.ready_at(t1), None);
        assert_eq!(circuit.on_success(), Some(CircuitTransition::Closed));
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert!(circuit.allows(t1));
        assert!(circuit.is_pristine());
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubling_cool_down_up_to_the_max() {
        let t0 = Instant::now();
        let mut circuit = breaker();
        fail(&mut circuit, 3, t0);
        let mut now = t0 + COOL_DOWN;
        for expected in [60, 100, 100] {
            assert!(circuit.try_acquire(now), "probe");
            let cool_down = Duration::from_secs(expected);
            assert_eq!(
                circuit.on_failure(now),
                Some(CircuitTransition::Reopened {
                    until: now + cool_down,
                    cool_down
                })
            );
            assert!(circuit.is_open(now + cool_down - Duration::from_millis(1)));
            now += cool_down;
        }
        // A successful probe resets the cool-down to the base for the next opening.
        assert!(circuit.try_acquire(now));
        assert_eq!(circuit.on_success(), Some(CircuitTransition::Closed));
        assert_eq!(
            fail(&mut circuit, 3, now),
            Some(CircuitTransition::Opened {
                until: now + COOL_DOWN,
                cool_down: COOL_DOWN
            })
        );
    }

    #[test]
    fn stragglers_do_not_move_an_open_circuit() {
        let t0 = Instant::now();
        let mut circuit = breaker();
        fail(&mut circuit, 3, t0);
        assert_eq!(circuit.on_success(), None);
        assert_eq!(circuit.on_failure(t0 + Duration::from_secs(10)), None);
        assert_eq!(circuit.open_until(), Some(t0 + COOL_DOWN));
    }

    #[test]
    fn an_abandoned_probe_lets_another_go() {
        let t0 = Instant::now();
        let mut circuit = breaker();
        fail(&mut circuit, 3, t0);
        let t1 = t0 + COOL_DOWN;
        assert!(circuit.try_acquire(t1));
        circuit.on_abandoned();
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        assert!(circuit.try_acquire(t1));
        assert!(!circuit.try_acquire(t1));
    }

    #[test]
    fn a_zero_threshold_means_one_and_max_is_at_least_the_base() {
        let t0 = Instant::now();
        let mut circuit = CircuitBreaker::new(0, COOL_DOWN, Duration::ZERO);
        assert!(matches!(
            fail(&mut circuit, 1, t0),
            Some(CircuitTransition::Opened { .. })
        ));
        assert!(circuit.try_acquire(t0 + COOL_DOWN));
        assert_eq!(
            circuit.on_failure(t0 + COOL_DOWN),
            Some(CircuitTransition::Reopened {
                until: t0 + COOL_DOWN * 2,
                cool_down: COOL_DOWN
            })
        );
    }
}
