//! The retry schedule: after a failed attempt, retry at once, park the delivery on a delay tier
//! until later, or give up (dead-letter it). Also the deferral of a task without spending an
//! attempt, the deadline that bounds a delivery's total age, and the human duration strings
//! (`"1m"`, `"1h30m"`, `"500ms"`) that configuration files and tier names use.
//!
//! # The schedule
//! A schedule is the list of delays *between* attempts. Attempt 1 is made at once and is not in
//! the list; after attempt `n` fails, attempt `n + 1` waits `delays[n - 1]`; when the list is
//! exhausted the delivery is dead. The default `[0s, 1m, 5m, 15m, 1h]` therefore means six
//! attempts: at once, an immediate retry, then after 1 minute, 5 minutes, 15 minutes and 1 hour.
//! An empty list means no retries at all.
//!
//! A delay of zero is an immediate retry, made by the sender without going through Kafka. Every
//! distinct non-zero delay is a [`RetryTier`]: one delay topic `dispatch.retry.<name>`, whose
//! consumer holds each record until its `not_before`. Because all records of a tier were appended
//! with (roughly) the same delay, they become due in append order, which is what lets that
//! consumer hold only the head of each partition.
//!
//! # Jitter
//! Retries of many deliveries that failed together (an endpoint's outage) would otherwise come
//! back together. Each delay is stretched by a random factor `1 + u × jitter`, `u` uniform in
//! `[0, 1)`: never shorter than the tier's delay, at most `jitter` longer.
//!
//! # `Retry-After`
//! Whether to retry is decided by [`crate::outcome`]; this module decides when. A `Retry-After`
//! the endpoint sent is honoured within bounds: never sooner than the schedule's delay, and never
//! more than `max_retry_after` (a hostile or broken endpoint must not park a delivery for a year).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::outcome::{FailureClass, PermanentReason};

/// The longest delay a schedule, a deferral or a `Retry-After` cap may have. A tier topic must
/// keep its records longer than its delay, and a retry due in more than a month is a
/// misconfiguration rather than a schedule.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The most retries a schedule may have (so attempt numbers always fit a `u32`).
pub const MAX_RETRIES: usize = 1000;

/// The default delays between attempts: an immediate retry, then 1 min, 5 min, 15 min, 1 h.
pub const DEFAULT_DELAYS: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(60 * 60),
];

/// The default jitter: delays are stretched by up to 10 %.
pub const DEFAULT_JITTER: f64 = 0.1;

/// The default upper bound on how long a `Retry-After` may push a retry: 1 hour.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// The default deadline of a delivery: 48 hours after its first attempt it is dead, however many
/// attempts it has left (deferrals spend none, so without a deadline they could go on forever).
pub const DEFAULT_MAX_TOTAL_AGE: Duration = Duration::from_secs(48 * 60 * 60);

/// A configured retry schedule, validated. Build it from a [`RetryConfig`] (or deserialize it
/// directly: deserialization validates), or take the [`Default`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RetryConfig")]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    tiers: Vec<RetryTier>,
    jitter: f64,
    max_retry_after: Duration,
    max_total_age: Duration,
}

/// The configuration of a [`RetrySchedule`], as written in configuration files. Durations are
/// strings with units (`"0s"`, `"30s"`, `"1m"`, `"1h30m"`, `"500ms"`), so the field names carry
/// none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// The delays between consecutive attempts: after attempt `n` fails, attempt `n + 1` waits
    /// `delays[n - 1]`. `0s` is an immediate retry; every distinct non-zero delay is a delay
    /// tier with its own topic. Empty = no retries. Default `["0s", "1m", "5m", "15m", "1h"]`.
    pub delays: Vec<HumanDuration>,
    /// How much each delay may be stretched at random, a fraction in `[0, 1)`. Default `0.1`.
    pub jitter: f64,
    /// The longest a `Retry-After` answer may push a retry beyond the scheduled delay.
    /// Default `"1h"`.
    pub max_retry_after: HumanDuration,
    /// How long after its first attempt a delivery is given up, retries and deferrals included.
    /// Default `"48h"`.
    pub max_total_age: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            delays: DEFAULT_DELAYS.iter().copied().map(HumanDuration).collect(),
            jitter: DEFAULT_JITTER,
            max_retry_after: HumanDuration(DEFAULT_MAX_RETRY_AFTER),
            max_total_age: HumanDuration(DEFAULT_MAX_TOTAL_AGE),
        }
    }
}

/// Why a [`RetryConfig`] is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryConfigError {
    /// The jitter is not a fraction in `[0, 1)`.
    #[error("retry jitter must be a fraction at least 0 and below 1, got {0}")]
    JitterOutOfRange(f64),
    /// One delay of the schedule is longer than [`MAX_DELAY`].
    #[error(
        "retry delay #{index} ({delay}) is longer than the maximum of {max}",
        delay = HumanDuration(*delay),
        max = HumanDuration(MAX_DELAY)
    )]
    DelayTooLong {
        /// 1-based position in the list.
        index: usize,
        /// The delay.
        delay: Duration,
    },
    /// The schedule has more than [`MAX_RETRIES`] delays.
    #[error("a retry schedule may have at most {MAX_RETRIES} delays, got {0}")]
    TooManyDelays(usize),
    /// `max_retry_after` is longer than [`MAX_DELAY`].
    #[error(
        "max_retry_after ({max_retry_after}) is longer than the maximum of {max}",
        max_retry_after = HumanDuration(*.0),
        max = HumanDuration(MAX_DELAY)
    )]
    MaxRetryAfterTooLong(Duration),
    /// `max_total_age` is zero: every delivery would be dead before its first retry.
    #[error("max_total_age must be longer than zero")]
    ZeroMaxTotalAge,
}

/// One delay tier: a distinct non-zero delay of the schedule and its compact name, the suffix of
/// its topic `dispatch.retry.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RetryTier {
    delay: Duration,
    name: String,
}

impl RetryTier {
    /// The tier of a delay, named by [`format_duration`] (`60s` → `1m`, `90s` → `1m30s`,
    /// `500ms` → `500ms`). Names use only digits and lowercase letters, so they are valid in
    /// topic names.
    #[must_use]
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            name: format_duration(delay),
        }
    }

    /// The tier's delay.
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The tier's name, e.g. `1m`, `1h30m`: the suffix of its topic.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RetryTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retry at once, without going through a delay tier.
    RetryNow {
        /// The 1-based number of the next attempt.
        next_attempt: u32,
    },
    /// Park the task on a delay tier until `not_before`.
    RetryLater {
        /// The 1-based number of the next attempt.
        next_attempt: u32,
        /// The tier whose topic the task goes to.
        tier: RetryTier,
        /// Not to be attempted before this time (scheduled delay, `Retry-After` and jitter
        /// included).
        not_before: SystemTime,
    },
    /// Give up: the delivery goes to the dead-letter queue.
    Dead {
        /// Why.
        reason: DeadReason,
    },
}

/// Where to park a deferred task (see [`RetrySchedule::defer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    /// The tier whose topic the task goes to: the schedule's first (shortest) tier.
    pub tier: RetryTier,
    /// Not to be attempted before this time.
    pub not_before: SystemTime,
}

/// Why a delivery was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The endpoint answered `410 Gone`; the subscription is to be disabled.
    Gone,
    /// The failure cannot go away by retrying (see [`PermanentReason`]).
    Permanent(PermanentReason),
    /// Every attempt of the schedule failed.
    AttemptsExhausted {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The delivery is older than `max_total_age`.
    MaxAgeExceeded {
        /// How long ago its first attempt was.
        age: Duration,
        /// The configured maximum.
        max: Duration,
    },
}

impl DeadReason {
    /// Whether the subscription is to be disabled because of this (only `410 Gone`).
    #[must_use]
    pub fn disables_subscription(&self) -> bool {
        matches!(self, Self::Gone)
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gone => f.write_str("endpoint answered 410 Gone"),
            Self::Permanent(reason) => reason.fmt(f),
            Self::AttemptsExhausted { attempts: 1 } => {
                f.write_str("the attempt failed and the schedule has no retries")
            }
            Self::AttemptsExhausted { attempts } => write!(f, "all {attempts} attempts failed"),
            Self::MaxAgeExceeded { age, max } => write!(
                f,
                "not delivered {} after the first attempt, the maximum is {}",
                HumanDuration(Duration::from_secs(age.as_secs())),
                HumanDuration(*max),
            ),
        }
    }
}

impl Default for RetrySchedule {
    /// The default schedule: attempt 1 at once, then an immediate retry, then 1 min, 5 min,
    /// 15 min, 1 h; 10 % jitter; `Retry-After` capped at 1 h; 48 h deadline.
    fn default() -> Self {
        Self::from_valid(RetryConfig::default())
    }
}

impl TryFrom<RetryConfig> for RetrySchedule {
    type Error = RetryConfigError;

    fn try_from(config: RetryConfig) -> Result<Self, Self::Error> {
        Self::new(config)
    }
}

impl RetrySchedule {
    /// Validates a configuration: jitter in `[0, 1)`, no delay (nor `max_retry_after`) above
    /// [`MAX_DELAY`], at most [`MAX_RETRIES`] delays, a non-zero `max_total_age`.
    /// Delays need not increase; an empty list (no retries) is valid.
    pub fn new(config: RetryConfig) -> Result<Self, RetryConfigError> {
        if !(0.0..1.0).contains(&config.jitter) {
            return Err(RetryConfigError::JitterOutOfRange(config.jitter));
        }
        if config.delays.len() > MAX_RETRIES {
            return Err(RetryConfigError::TooManyDelays(config.delays.len()));
        }
        if let Some((index, delay)) = config
            .delays
            .iter()
            .enumerate()
            .find(|(_, delay)| delay.0 > MAX_DELAY)
        {
            return Err(RetryConfigError::DelayTooLong {
                index: index + 1,
                delay: delay.0,
            });
        }
        if config.max_retry_after.0 > MAX_DELAY {
            return Err(RetryConfigError::MaxRetryAfterTooLong(
                config.max_retry_after.0,
            ));
        }
        if config.max_total_age.0.is_zero() {
            return Err(RetryConfigError::ZeroMaxTotalAge);
        }
        Ok(Self::from_valid(config))
    }

    /// A schedule with these delays and the default jitter, `Retry-After` cap and deadline.
    pub fn with_delays(
        delays: impl IntoIterator<Item = Duration>,
    ) -> Result<Self, RetryConfigError> {
        Self::new(RetryConfig {
            delays: delays.into_iter().map(HumanDuration).collect(),
            ..RetryConfig::default()
        })
    }

    fn from_valid(config: RetryConfig) -> Self {
        let delays: Vec<Duration> = config.delays.iter().map(|delay| delay.0).collect();
        let mut tier_delays: Vec<Duration> = delays
            .iter()
            .copied()
            .filter(|delay| !delay.is_zero())
            .collect();
        tier_delays.sort_unstable();
        tier_delays.dedup();
        Self {
            tiers: tier_delays.into_iter().map(RetryTier::new).collect(),
            delays,
            jitter: config.jitter,
            max_retry_after: config.max_retry_after.0,
            max_total_age: config.max_total_age.0,
        }
    }

    /// The delays between attempts, as configured.
    #[must_use]
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How many attempts a delivery gets: the first one plus one per delay.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        // `new` bounds the list to MAX_RETRIES, so this cannot saturate.
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The distinct non-zero delays as tiers, shortest first: one delay topic each.
    #[must_use]
    pub fn tiers(&self) -> &[RetryTier] {
        &self.tiers
    }

    /// The tier with this name (the suffix of a `dispatch.retry.<name>` topic), if any.
    #[must_use]
    pub fn tier_named(&self, name: &str) -> Option<&RetryTier> {
        self.tiers.iter().find(|tier| tier.name == name)
    }

    /// The jitter fraction.
    #[must_use]
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The longest a `Retry-After` may push a retry.
    #[must_use]
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// How long after its first attempt a delivery is given up.
    #[must_use]
    pub fn max_total_age(&self) -> Duration {
        self.max_total_age
    }

    /// What to do after attempt `failed_attempt` (1-based; 0 is treated as 1) failed with
    /// `failure`. A success is not a failure: do not call this for one.
    ///
    /// - `Gone` and `Permanent` failures are dead at once.
    /// - When the schedule is exhausted the delivery is dead.
    /// - Otherwise the wanted delay is the scheduled one, or the endpoint's `Retry-After` capped
    ///   at `max_retry_after` if that is longer. Zero means [`RetryDecision::RetryNow`].
    ///   Otherwise the task goes to the shortest tier whose delay is at least the wanted delay
    ///   (the longest tier when the wanted delay exceeds every tier), with
    ///   `not_before = now + wanted × jitter factor`. The scheduled delay is itself a tier, so
    ///   without a `Retry-After` the task lands exactly on its scheduled tier.
    ///   A schedule without any tier (only zero delays) cannot park anything, so it retries at
    ///   once even if the endpoint asked to wait.
    ///
    /// Why the shortest tier at least as long, not the longest tier at most as long: a tier's
    /// consumer holds the head record of a partition until it is due, so a record due later
    /// than its tier's delay would hold back every record behind it — other endpoints' too.
    /// On a tier at least as long as the wanted delay a record is due no later than the records
    /// appended after it, so it delays nobody; it may itself wait behind earlier, later-due
    /// records by less than the tier's delay minus the wanted delay. Only past the longest tier
    /// (a `max_retry_after` longer than it) can a record hold others back: keep
    /// `max_retry_after` at or below the longest tier.
    ///
    /// The deadline (`max_total_age`) is checked separately, by [`Self::expired`].
    pub fn decide<R: Rng + ?Sized>(
        &self,
        failed_attempt: u32,
        failure: &FailureClass,
        now: SystemTime,
        rng: &mut R,
    ) -> RetryDecision {
        let retry_after = match failure {
            FailureClass::Gone => {
                return RetryDecision::Dead {
                    reason: DeadReason::Gone,
                };
            }
            FailureClass::Permanent { reason } => {
                return RetryDecision::Dead {
                    reason: DeadReason::Permanent(*reason),
                };
            }
            FailureClass::Retryable { retry_after } => *retry_after,
        };
        let failed_attempt = failed_attempt.max(1);
        let scheduled = usize::try_from(failed_attempt - 1)
            .ok()
            .and_then(|index| self.delays.get(index).copied());
        let Some(scheduled) = scheduled else {
            return RetryDecision::Dead {
                reason: DeadReason::AttemptsExhausted {
                    attempts: failed_attempt,
                },
            };
        };
        let next_attempt = failed_attempt.saturating_add(1);
        let asked = retry_after.map_or(Duration::ZERO, |asked| asked.min(self.max_retry_after));
        let wanted = scheduled.max(asked);
        if wanted.is_zero() {
            return RetryDecision::RetryNow { next_attempt };
        }
        let tier = self
            .tiers
            .iter()
            .find(|tier| tier.delay >= wanted)
            .or_else(|| self.tiers.last());
        match tier {
            Some(tier) => RetryDecision::RetryLater {
                next_attempt,
                tier: tier.clone(),
                not_before: later(now, self.jittered(wanted, rng)),
            },
            None => RetryDecision::RetryNow { next_attempt },
        }
    }

    /// Where to park a task that cannot be attempted now (its endpoint's backlog is full, its
    /// circuit is open) without spending an attempt: the first (shortest) tier, due after that
    /// tier's delay with jitter. `None` when the schedule has no tier: there is no delay topic
    /// to park it on, and the caller has to keep it or give up on it.
    ///
    /// Deferrals spend no attempt, so check [`Self::expired`] first: the deadline is what stops
    /// a delivery from being deferred forever.
    pub fn defer<R: Rng + ?Sized>(&self, now: SystemTime, rng: &mut R) -> Option<Deferral> {
        let tier = self.tiers.first()?;
        Some(Deferral {
            tier: tier.clone(),
            not_before: later(now, self.jittered(tier.delay, rng)),
        })
    }

    /// Whether a delivery first attempted (or first deferred) at `first_seen` has outlived
    /// `max_total_age` at `now`; if so, the reason to dead-letter it. A `first_seen` in the
    /// future (clocks of different hosts) counts as age zero.
    #[must_use]
    pub fn expired(&self, first_seen: SystemTime, now: SystemTime) -> Option<DeadReason> {
        let age = now.duration_since(first_seen).ok()?;
        (age > self.max_total_age).then_some(DeadReason::MaxAgeExceeded {
            age,
            max: self.max_total_age,
        })
    }

    /// `delay` stretched by `1 + u × jitter`, never shorter than `delay`.
    fn jittered<R: Rng + ?Sized>(&self, delay: Duration, rng: &mut R) -> Duration {
        if self.jitter <= 0.0 || delay.is_zero() {
            return delay;
        }
        let sample: f64 = rng.random();
        let factor = 1.0 + sample * self.jitter;
        // Float rounding could land a nanosecond short of `delay`; the max keeps the promise.
        Duration::try_from_secs_f64(delay.as_secs_f64() * factor)
            .map_or(delay, |stretched| stretched.max(delay))
    }
}

/// `now + delay`, saturating instead of panicking. Delays are bounded by [`MAX_DELAY`] (plus
/// jitter), so this only saturates for a `now` no real clock produces.
fn later(now: SystemTime, delay: Duration) -> SystemTime {
    let mut delay = delay;
    loop {
        if let Some(time) = now.checked_add(delay) {
            return time;
        }
        delay /= 2;
    }
}

/// A [`Duration`] written with units, as configuration files spell them: `"0s"`, `"500ms"`,
/// `"30s"`, `"1m"`, `"1h30m"`, `"2d"` (see [`parse_duration`]). Serializes back to the compact
/// form of [`format_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl From<Duration> for HumanDuration {
    fn from(duration: Duration) -> Self {
        Self(duration)
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Self {
        duration.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = DurationParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text).map(Self)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HumanDurationVisitor;

        impl serde::de::Visitor<'_> for HumanDurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration with units, such as \"30s\", \"5m\", \"1h30m\" or \"500ms\"",
                )
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(HumanDurationVisitor)
    }
}

/// Why a duration string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationParseError {
    /// Nothing to parse.
    #[error("empty duration: write a number with a unit, such as \"30s\" or \"5m\"")]
    Empty,
    /// A unit (or something else) where a number was expected.
    #[error("duration {text:?}: expected a number at {rest:?}")]
    MissingNumber {
        /// The whole input.
        text: String,
        /// The part that should have started with a number.
        rest: String,
    },
    /// A number without a unit.
    #[error("duration {text:?}: the number {number} has no unit; use d, h, m, s, ms, us or ns")]
    MissingUnit {
        /// The whole input.
        text: String,
        /// The number without a unit.
        number: String,
    },
    /// A unit that is not one of `d`, `h`, `m`, `s`, `ms`, `us`, `ns`.
    #[error("duration {text:?}: unknown unit {unit:?}; use d, h, m, s, ms, us or ns")]
    UnknownUnit {
        /// The whole input.
        text: String,
        /// The unknown unit.
        unit: String,
    },
    /// Units out of order or repeated (`30s1m`, `1m1m`).
    #[error(
        "duration {text:?}: unit {unit:?} is out of order; write units from largest to smallest, each once (e.g. \"1h30m\")"
    )]
    UnitOutOfOrder {
        /// The whole input.
        text: String,
        /// The misplaced unit.
        unit: String,
    },
    /// The duration does not fit a `Duration`.
    #[error("duration {text:?} is too large")]
    TooLarge {
        /// The whole input.
        text: String,
    },
}

/// Units of duration strings, largest first, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("d", 24 * 60 * 60 * 1_000_000_000),
    ("h", 60 * 60 * 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses a duration written as numbers with units, largest unit first, each unit at most once:
/// `"0s"`, `"500ms"`, `"30s"`, `"1m"`, `"1m30s"`, `"1h30m"`, `"2d"`. Units are `d`, `h`, `m`,
/// `s`, `ms`, `us`, `ns`; a bare `"0"` is accepted too. Surrounding whitespace is ignored.
pub fn parse_duration(text: &str) -> Result<Duration, DurationParseError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationParseError::Empty);
    }
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = trimmed;
    let mut total_nanos: u128 = 0;
    // Index into UNITS of the next unit allowed: enforces largest-first, each once.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(DurationParseError::MissingNumber {
                text: text.to_owned(),
                rest: rest.to_owned(),
            });
        }
        let (number, after_number) = rest.split_at(digits_end);
        let unit_end = after_number
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after_number.len());
        if unit_end == 0 {
            return Err(DurationParseError::MissingUnit {
                text: text.to_owned(),
                number: number.to_owned(),
            });
        }
        let (unit, after_unit) = after_number.split_at(unit_end);
        let Some(unit_index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationParseError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        };
        if unit_index < next_unit {
            return Err(DurationParseError::UnitOutOfOrder {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
        next_unit = unit_index + 1;
        let too_large = || DurationParseError::TooLarge {
            text: text.to_owned(),
        };
        // A u128 holds any u64 count of days in nanoseconds, but not a longer digit string.
        let count: u128 = number.parse::<u64>().map_err(|_| too_large())?.into();
        total_nanos = count
            .checked_mul(UNITS[unit_index].1)
            .and_then(|nanos| total_nanos.checked_add(nanos))
            .ok_or_else(too_large)?;
        rest = after_unit;
    }
    let nanos_per_sec = 1_000_000_000;
    let secs =
        u64::try_from(total_nanos / nanos_per_sec).map_err(|_| DurationParseError::TooLarge {
            text: text.to_owned(),
        })?;
    let subsec_nanos = u32::try_from(total_nanos % nanos_per_sec).unwrap_or(0);
    Ok(Duration::new(secs, subsec_nanos))
}

/// Writes a duration compactly, with units from hours down and zero parts left out: `0s`,
/// `500ms`, `30s`, `1m`, `1m30s`, `1h`, `1h30m`, `48h`, `1s500ms`. Uses only digits and
/// lowercase letters (topic-safe), and [`parse_duration`] reads it back to the same value.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    parts
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, unit)| format!("{count}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + secs(1_800_000_000)
    }

    /// An RNG that always yields the same word: `0` samples u = 0, `u64::MAX` samples u just
    /// below 1, so tests can pin jitter to its bounds.
    struct ConstRng(u64);

    impl rand::RngCore for ConstRng {
        fn next_u32(&mut self) -> u32 {
            // Truncation is the point: the high half of the word.
            (self.0 >> 32) as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for (i, byte) in dst.iter_mut().enumerate() {
                *byte = self.0.to_le_bytes()[i % 8];
            }
        }
    }

    fn no_jitter() -> ConstRng {
        ConstRng(0)
    }

    fn max_jitter() -> ConstRng {
        ConstRng(u64::MAX)
    }

    fn retryable() -> FailureClass {
        FailureClass::Retryable { retry_after: None }
    }

    fn retry_after(delay: Duration) -> FailureClass {
        FailureClass::Retryable {
            retry_after: Some(delay),
        }
    }

    fn schedule(delays: &[u64], jitter: f64) -> RetrySchedule {
        RetrySchedule::new(RetryConfig {
            delays: delays.iter().map(|&s| HumanDuration(secs(s))).collect(),
            jitter,
            ..RetryConfig::default()
        })
        .expect("test schedules are valid")
    }

    fn later_on(tier: &str, next_attempt: u32, after: Duration) -> RetryDecision {
        RetryDecision::RetryLater {
            next_attempt,
            tier: RetryTier::new(parse_duration(tier).expect("test tier names parse")),
            not_before: t0() + after,
        }
    }

    /// Item 8 of issue 12: attempts that fall due while the circuit is open are classified as
    /// not sent and spend the schedule like failures, so a dead endpoint's delivery is dead
    /// after exactly `max_attempts`, never parked waiting for the circuit.
    #[test]
    fn circuit_open_attempts_spend_the_schedule_and_end_dead() {
        use crate::outcome::{AttemptResult, classify};
        use dispatch_proto::dispatch::v1::AttemptOutcome;

        let schedule = schedule(&[0, 1, 2, 3, 4], 0.0);
        let not_sent = classify(&AttemptResult::CircuitOpen, t0());
        assert_eq!(not_sent.outcome, AttemptOutcome::CircuitOpen);
        assert_eq!(not_sent.status, None);
        let failure = not_sent.failure.expect("not sent is a failure");
        assert!(failure.is_retryable());
        let decisions: Vec<RetryDecision> = (1..=schedule.max_attempts())
            .map(|attempt| schedule.decide(attempt, &failure, t0(), &mut no_jitter()))
            .collect();
        assert_eq!(
            decisions,
            vec![
                RetryDecision::RetryNow { next_attempt: 2 },
                later_on("1s", 3, secs(1)),
                later_on("2s", 4, secs(2)),
                later_on("3s", 5, secs(3)),
                later_on("4s", 6, secs(4)),
                RetryDecision::Dead {
                    reason: DeadReason::AttemptsExhausted { attempts: 6 }
                },
            ]
        );
    }

    #[test]
    fn default_schedule_step_by_step() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 6);
        assert_eq!(schedule.delays(), DEFAULT_DELAYS);
        let names: Vec<&str> = schedule.tiers().iter().map(RetryTier::name).collect();
        assert_eq!(names, ["1m", "5m", "15m", "1h"]);

        let mut rng = no_jitter();
        let decide =
            |attempt, rng: &mut ConstRng| schedule.decide(attempt, &retryable(), t0(), rng);
        assert_eq!(
            decide(1, &mut rng),
            RetryDecision::RetryNow { next_attempt: 2 }
        );
        assert_eq!(decide(2, &mut rng), later_on("1m", 3, secs(60)));
        assert_eq!(decide(3, &mut rng), later_on("5m", 4, secs(300)));
        assert_eq!(decide(4, &mut rng), later_on("15m", 5, secs(900)));
        assert_eq!(decide(5, &mut rng), later_on("1h", 6, secs(3600)));
        assert_eq!(
            decide(6, &mut rng),
            RetryDecision::Dead {
                reason: DeadReason::AttemptsExhausted { attempts: 6 }
            }
        );
        assert_eq!(
            decide(7, &mut rng),
            RetryDecision::Dead {
                reason: DeadReason::AttemptsExhausted { attempts: 7 }
            }
        );
    }

    #[test]
    fn default_config_matches_the_documented_defaults() {
        let schedule = RetrySchedule::default();
        assert!((schedule.jitter() - 0.1).abs() < f64::EPSILON);
        assert_eq!(schedule.max_retry_after(), secs(3600));
        assert_eq!(schedule.max_total_age(), secs(48 * 3600));
        assert_eq!(RetrySchedule::new(RetryConfig::default()), Ok(schedule));
    }

    #[test]
    fn attempt_zero_is_treated_as_the_first() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            schedule.decide(0, &retryable(), t0(), &mut no_jitter()),
            RetryDecision::RetryNow { next_attempt: 2 }
        );
    }

    #[test]
    fn custom_schedule_with_unordered_and_repeated_delays() {
        let schedule = schedule(&[30, 0, 90, 30, 5400], 0.0);
        assert_eq!(schedule.max_attempts(), 6);
        let names: Vec<&str> = schedule.tiers().iter().map(RetryTier::name).collect();
        assert_eq!(names, ["30s", "1m30s", "1h30m"]);
        let mut rng = no_jitter();
        let decide =
            |attempt, rng: &mut ConstRng| schedule.decide(attempt, &retryable(), t0(), rng);
        assert_eq!(decide(1, &mut rng), later_on("30s", 2, secs(30)));
        assert_eq!(
            decide(2, &mut rng),
            RetryDecision::RetryNow { next_attempt: 3 }
        );
        assert_eq!(decide(3, &mut rng), later_on("1m30s", 4, secs(90)));
        assert_eq!(decide(4, &mut rng), later_on("30s", 5, secs(30)));
        assert_eq!(decide(5, &mut rng), later_on("1h30m", 6, secs(5400)));
        assert!(matches!(
            decide(6, &mut rng),
            RetryDecision::Dead {
                reason: DeadReason::AttemptsExhausted { attempts: 6 }
            }
        ));
    }

    #[test]
    fn sub_second_schedules_for_tests() {
        let schedule =
            RetrySchedule::with_delays([Duration::from_millis(500), secs(1)]).expect("valid");
        let names: Vec<&str> = schedule.tiers().iter().map(RetryTier::name).collect();
        assert_eq!(names, ["500ms", "1s"]);
        assert_eq!(
            schedule.tier_named("500ms").map(RetryTier::delay),
            Some(Duration::from_millis(500))
        );
        assert_eq!(schedule.tier_named("2s"), None);
    }

    #[test]
    fn empty_schedule_is_dead_after_the_first_attempt() {
        let schedule = schedule(&[], 0.0);
        assert_eq!(schedule.max_attempts(), 1);
        assert!(schedule.tiers().is_empty());
        let decision = schedule.decide(1, &retryable(), t0(), &mut no_jitter());
        assert_eq!(
            decision,
            RetryDecision::Dead {
                reason: DeadReason::AttemptsExhausted { attempts: 1 }
            }
        );
        assert_eq!(
            DeadReason::AttemptsExhausted { attempts: 1 }.to_string(),
            "the attempt failed and the schedule has no retries"
        );
        assert_eq!(schedule.defer(t0(), &mut no_jitter()), None);
    }

    #[test]
    fn gone_and_permanent_failures_are_dead_at_once() {
        let schedule = RetrySchedule::default();
        let gone = schedule.decide(1, &FailureClass::Gone, t0(), &mut no_jitter());
        assert_eq!(
            gone,
            RetryDecision::Dead {
                reason: DeadReason::Gone
            }
        );
        for reason in [PermanentReason::BlockedAddress, PermanentReason::InvalidUrl] {
            let decision = schedule.decide(
                1,
                &FailureClass::Permanent { reason },
                t0(),
                &mut no_jitter(),
            );
            assert_eq!(
                decision,
                RetryDecision::Dead {
                    reason: DeadReason::Permanent(reason)
                }
            );
        }
        assert!(DeadReason::Gone.disables_subscription());
        assert!(!DeadReason::Permanent(PermanentReason::BlockedAddress).disables_subscription());
        assert!(!DeadReason::AttemptsExhausted { attempts: 6 }.disables_subscription());
        assert_eq!(DeadReason::Gone.to_string(), "endpoint answered 410 Gone");
        assert_eq!(
            DeadReason::AttemptsExhausted { attempts: 6 }.to_string(),
            "all 6 attempts failed"
        );
    }

    #[test]
    fn retry_after_shorter_than_the_scheduled_delay_is_ignored() {
        let schedule = RetrySchedule::default();
        let decision = schedule.decide(3, &retry_after(secs(10)), t0(), &mut no_jitter());
        assert_eq!(decision, later_on("5m", 4, secs(300)));
        // Zero (a date in the past) keeps an immediate retry immediate.
        let decision = schedule.decide(1, &retry_after(Duration::ZERO), t0(), &mut no_jitter());
        assert_eq!(decision, RetryDecision::RetryNow { next_attempt: 2 });
    }

    #[test]
    fn retry_after_within_bounds_moves_the_retry_onto_the_shortest_tier_at_least_as_long() {
        let schedule = RetrySchedule::default();
        let mut rng = no_jitter();
        // An immediate retry pushed to 2 minutes: tier 5m (the shortest ≥ 2m), due in 2m.
        let decision = schedule.decide(1, &retry_after(secs(120)), t0(), &mut rng);
        assert_eq!(decision, later_on("5m", 2, secs(120)));
        // Exactly a tier's delay.
        let decision = schedule.decide(1, &retry_after(secs(900)), t0(), &mut rng);
        assert_eq!(decision, later_on("15m", 2, secs(900)));
        // A 1m retry pushed to 20 minutes: tier 1h, due in 20m.
        let decision = schedule.decide(2, &retry_after(secs(1200)), t0(), &mut rng);
        assert_eq!(decision, later_on("1h", 3, secs(1200)));
        // Without Retry-After the scheduled tier is used as is.
        let decision = schedule.decide(3, &retryable(), t0(), &mut rng);
        assert_eq!(decision, later_on("5m", 4, secs(300)));
    }

    #[test]
    fn retry_after_below_every_tier_uses_the_shortest_tier() {
        let schedule = RetrySchedule::default();
        let decision = schedule.decide(1, &retry_after(secs(5)), t0(), &mut no_jitter());
        assert_eq!(decision, later_on("1m", 2, secs(5)));
    }

    #[test]
    fn retry_after_above_the_cap_is_capped() {
        let schedule = RetrySchedule::default();
        let decision = schedule.decide(1, &retry_after(secs(86_400)), t0(), &mut no_jitter());
        assert_eq!(decision, later_on("1h", 2, secs(3600)));
        let decision = schedule.decide(1, &retry_after(Duration::MAX), t0(), &mut no_jitter());
        assert_eq!(decision, later_on("1h", 2, secs(3600)));

        // A cap below the scheduled delay never shortens the schedule.
        let short_cap = RetrySchedule::new(RetryConfig {
            max_retry_after: HumanDuration(secs(30)),
            jitter: 0.0,
            ..RetryConfig::default()
        })
        .expect("valid");
        let decision = short_cap.decide(3, &retry_after(secs(3600)), t0(), &mut no_jitter());
        assert_eq!(decision, later_on("5m", 4, secs(300)));
        let decision = short_cap.decide(1, &retry_after(secs(3600)), t0(), &mut no_jitter());
        assert_eq!(decision, later_on("1m", 2, secs(30)));
    }

    #[test]
    fn a_schedule_without_tiers_retries_at_once_even_with_retry_after() {
        let schedule = schedule(&[0, 0], 0.5);
        assert!(schedule.tiers().is_empty());
        let decision = schedule.decide(1, &retry_after(secs(60)), t0(), &mut max_jitter());
        assert_eq!(decision, RetryDecision::RetryNow { next_attempt: 2 });
        assert_eq!(schedule.defer(t0(), &mut no_jitter()), None);
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let schedule = schedule(&[60, 3600], 0.25);
        let mut rng = StdRng::seed_from_u64(7);
        let mut lowest = Duration::MAX;
        let mut highest = Duration::ZERO;
        for _ in 0..2000 {
            let RetryDecision::RetryLater { not_before, .. } =
                schedule.decide(2, &retryable(), t0(), &mut rng)
            else {
                panic!("attempt 2 of this schedule retries on a tier");
            };
            let delay = not_before
                .duration_since(t0())
                .expect("not_before is after now");
            assert!(delay >= secs(3600), "{delay:?} is shorter than the tier");
            assert!(
                delay <= secs(4500),
                "{delay:?} is stretched by more than 25 %"
            );
            lowest = lowest.min(delay);
            highest = highest.max(delay);
        }
        // The samples spread over the range rather than sticking to one end.
        assert!(lowest < secs(3700), "{lowest:?}");
        assert!(highest > secs(4400), "{highest:?}");
    }

    #[test]
    fn jitter_extremes() {
        let schedule = schedule(&[60], 0.5);
        assert_eq!(
            schedule.decide(1, &retryable(), t0(), &mut no_jitter()),
            later_on("1m", 2, secs(60))
        );
        let RetryDecision::RetryLater { not_before, .. } =
            schedule.decide(1, &retryable(), t0(), &mut max_jitter())
        else {
            panic!("attempt 1 of this schedule retries on a tier");
        };
        let delay = not_before
            .duration_since(t0())
            .expect("not_before is after now");
        assert!(
            delay > Duration::from_millis(89_999) && delay <= secs(90),
            "{delay:?}"
        );
    }

    #[test]
    fn jitter_is_deterministic_for_a_seed() {
        let schedule = RetrySchedule::default();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (2..=5)
                .map(|attempt| schedule.decide(attempt, &retryable(), t0(), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn deferral_goes_to_the_first_tier_with_jitter() {
        let schedule = schedule(&[0, 300, 60], 0.5);
        let deferral = schedule.defer(t0(), &mut no_jitter()).expect("has tiers");
        assert_eq!(deferral.tier.name(), "1m");
        assert_eq!(deferral.not_before, t0() + secs(60));
        let deferral = schedule.defer(t0(), &mut max_jitter()).expect("has tiers");
        assert_eq!(deferral.tier.name(), "1m");
        let delay = deferral.not_before.duration_since(t0()).expect("later");
        assert!(delay >= secs(89) && delay <= secs(90), "{delay:?}");
    }

    #[test]
    fn deadline_on_total_age() {
        let schedule = RetrySchedule::default();
        let first_seen = t0();
        assert_eq!(schedule.expired(first_seen, first_seen), None);
        assert_eq!(
            schedule.expired(first_seen, first_seen + secs(48 * 3600)),
            None
        );
        let reason = schedule.expired(first_seen, first_seen + secs(48 * 3600 + 1));
        assert_eq!(
            reason,
            Some(DeadReason::MaxAgeExceeded {
                age: secs(48 * 3600 + 1),
                max: secs(48 * 3600),
            })
        );
        assert_eq!(
            reason.map(|reason| reason.to_string()).as_deref(),
            Some("not delivered 48h1s after the first attempt, the maximum is 48h")
        );
        // A first_seen in the future (clock skew) is not expired.
        assert_eq!(schedule.expired(first_seen + secs(10), first_seen), None);
    }

    #[test]
    fn invalid_configs_are_refused_with_a_reason() {
        let with = |config: RetryConfig| RetrySchedule::new(config).err();
        for jitter in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
            let error = with(RetryConfig {
                jitter,
                ..RetryConfig::default()
            });
            assert!(
                matches!(error, Some(RetryConfigError::JitterOutOfRange(_))),
                "{jitter}: {error:?}"
            );
        }
        let error = with(RetryConfig {
            delays: vec![HumanDuration(secs(60)), HumanDuration(MAX_DELAY + secs(1))],
            ..RetryConfig::default()
        });
        assert_eq!(
            error,
            Some(RetryConfigError::DelayTooLong {
                index: 2,
                delay: MAX_DELAY + secs(1)
            })
        );
        assert_eq!(
            error.map(|error| error.to_string()).as_deref(),
            Some("retry delay #2 (720h1s) is longer than the maximum of 720h")
        );
        assert_eq!(
            with(RetryConfig {
                delays: vec![HumanDuration(secs(1)); MAX_RETRIES + 1],
                ..RetryConfig::default()
            }),
            Some(RetryConfigError::TooManyDelays(MAX_RETRIES + 1))
        );
        assert_eq!(
            with(RetryConfig {
                max_retry_after: HumanDuration(MAX_DELAY * 2),
                ..RetryConfig::default()
            }),
            Some(RetryConfigError::MaxRetryAfterTooLong(MAX_DELAY * 2))
        );
        assert_eq!(
            with(RetryConfig {
                max_total_age: HumanDuration(Duration::ZERO),
                ..RetryConfig::default()
            }),
            Some(RetryConfigError::ZeroMaxTotalAge)
        );
        // Zero jitter and an empty schedule are fine.
        assert!(
            RetrySchedule::new(RetryConfig {
                delays: vec![],
                jitter: 0.0,
                ..RetryConfig::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn schedule_deserializes_from_human_strings_and_validates() {
        let schedule: RetrySchedule = serde_json::from_str(
            r#"{"delays": ["0s", "500ms", "1m30s"], "jitter": 0.0, "max_retry_after": "10m"}"#,
        )
        .expect("valid configuration");
        assert_eq!(
            schedule.delays(),
            [Duration::ZERO, Duration::from_millis(500), secs(90)]
        );
        assert_eq!(schedule.max_retry_after(), secs(600));
        assert_eq!(schedule.max_total_age(), DEFAULT_MAX_TOTAL_AGE);

        let defaults: RetrySchedule = serde_json::from_str("{}").expect("all fields default");
        assert_eq!(defaults, RetrySchedule::default());

        let error = serde_json::from_str::<RetrySchedule>(r#"{"jitter": 2.0}"#)
            .expect_err("jitter out of range");
        assert!(error.to_string().contains("jitter"), "{error}");
        let error = serde_json::from_str::<RetrySchedule>(r#"{"delays": ["1x"]}"#)
            .expect_err("unknown unit");
        assert!(error.to_string().contains("unknown unit"), "{error}");
        let error = serde_json::from_str::<RetrySchedule>(r#"{"delays": [60]}"#)
            .expect_err("a bare number has no unit");
        assert!(
            error.to_string().contains("a duration with units"),
            "{error}"
        );
        let error = serde_json::from_str::<RetrySchedule>(r#"{"delay": ["1m"]}"#)
            .expect_err("unknown field");
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    #[test]
    fn config_serializes_to_human_strings() {
        let json = serde_json::to_value(RetryConfig::default()).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "delays": ["0s", "1m", "5m", "15m", "1h"],
                "jitter": 0.1,
                "max_retry_after": "1h",
                "max_total_age": "48h",
            })
        );
    }

    #[test]
    fn tier_names_are_compact() {
        let cases = [
            (secs(60), "1m"),
            (secs(3600), "1h"),
            (secs(90), "1m30s"),
            (secs(5400), "1h30m"),
            (secs(30), "30s"),
            (secs(3661), "1h1m1s"),
            (secs(48 * 3600), "48h"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_micros(1), "1us"),
            (Duration::from_nanos(1_000_001), "1ms1ns"),
            (Duration::ZERO, "0s"),
        ];
        for (delay, name) in cases {
            assert_eq!(RetryTier::new(delay).name(), name);
            assert_eq!(format_duration(delay), name);
            assert_eq!(parse_duration(name), Ok(delay), "{name} reads back");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{name} is topic-safe"
            );
        }
    }

    #[test]
    fn durations_parse() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("30s", secs(30)),
            ("1m", secs(60)),
            ("5m", secs(300)),
            ("15m", secs(900)),
            ("1h", secs(3600)),
            ("1h30m", secs(5400)),
            ("1m30s", secs(90)),
            ("2d", secs(2 * 86_400)),
            ("1d1h1m1s1ms1us1ns", Duration::new(90_061, 1_001_001)),
            (" 90s ", secs(90)),
            ("90m", secs(5400)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
            assert_eq!(text.parse::<HumanDuration>(), Ok(HumanDuration(expected)));
        }
    }

    #[test]
    fn garbage_durations_are_refused_with_a_reason() {
        let error = |text: &str| parse_duration(text).expect_err(text).to_string();
        assert_eq!(
            error(""),
            "empty duration: write a number with a unit, such as \"30s\" or \"5m\""
        );
        assert_eq!(error("  "), error(""));
        assert_eq!(error("m"), "duration \"m\": expected a number at \"m\"");
        assert_eq!(
            error("-1s"),
            "duration \"-1s\": expected a number at \"-1s\""
        );
        assert_eq!(
            error("1.5s"),
            "duration \"1.5s\": the number 1 has no unit; use d, h, m, s, ms, us or ns"
        );
        assert_eq!(
            error("60"),
            "duration \"60\": the number 60 has no unit; use d, h, m, s, ms, us or ns"
        );
        assert_eq!(
            error("1m30"),
            "duration \"1m30\": the number 30 has no unit; use d, h, m, s, ms, us or ns"
        );
        assert_eq!(
            error("1x"),
            "duration \"1x\": unknown unit \"x\"; use d, h, m, s, ms, us or ns"
        );
        assert_eq!(
            error("5min"),
            "duration \"5min\": unknown unit \"min\"; use d, h, m, s, ms, us or ns"
        );
        assert_eq!(
            error("1H"),
            "duration \"1H\": unknown unit \"H\"; use d, h, m, s, ms, us or ns"
        );
        assert!(error("30s1m").contains("unit \"m\" is out of order"));
        assert!(error("1m1m").contains("unit \"m\" is out of order"));
        assert!(error("1m 30s").contains("expected a number at \" 30s\""));
        assert_eq!(
            error("99999999999999999999s"),
            "duration \"99999999999999999999s\" is too large"
        );
        assert_eq!(
            error("18446744073709551615d"),
            "duration \"18446744073709551615d\" is too large"
        );
    }
}
