//! Classifies what one HTTP attempt saw (a status, a timeout, a refused connection …) as success,
//! a retryable failure, `410 Gone` or a permanent failure. Parses `Retry-After`.
//!
//! This is the one place that decides *whether* a failed attempt may be retried; [`crate::retry`]
//! only decides *when*. The rules follow the Standard Webhooks recommendations, like Svix and
//! Stripe do:
//!
//! - `2xx` is success, everything else is a failure.
//! - `3xx` is a retryable failure: redirects are not followed (a redirect could point the request
//!   at an address the SSRF guard would refuse), the customer should update the URL instead.
//! - `410 Gone` means the endpoint does not want webhooks any more: no retry, the subscription
//!   gets disabled.
//! - `429` and `503` are retryable and their `Retry-After` is honoured (within the bounds that
//!   [`crate::retry`] sets). Other statuses' `Retry-After` is ignored, as the design says.
//! - Every other `4xx` and `5xx` is retryable: a `404` or `500` is often a deployment in progress
//!   on the receiver's side, and webhook platforms retry every non-`2xx` answer.
//! - Timeouts, connect errors and TLS errors are retryable.
//! - An attempt not sent because the endpoint's circuit breaker was open when it fell due is a
//!   retryable failure: it spends its attempt, so the delivery keeps to the retry schedule and
//!   reaches the DLQ after its last attempt like any other, instead of waiting (unbounded by the
//!   schedule) for the circuit to close. The breaker protects the endpoint and our permits; the
//!   schedule is the promise to the customer.
//! - A blocked address (SSRF guard) or an invalid URL is permanent: retrying cannot succeed until
//!   someone changes the subscription or the sender's configuration, so the delivery is
//!   dead-lettered at once and can be replayed from the DLQ after the fix.

use std::fmt;
use std::time::{Duration, SystemTime};

use dispatch_proto::dispatch::v1::AttemptOutcome;

/// What the HTTP layer saw when it made one attempt. The HTTP client builds it; nothing here
/// does I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The endpoint answered with a status (any status: `2xx` included).
    Response {
        /// The HTTP status code.
        status: u16,
        /// The raw `Retry-After` header value, if the response had one.
        retry_after: Option<String>,
    },
    /// The whole request did not finish within the timeout.
    Timeout,
    /// DNS resolution, TCP connect or the connection itself failed (reset, closed early).
    Connect {
        /// What went wrong, for humans.
        message: String,
    },
    /// The TLS handshake failed (certificate not trusted, expired, wrong host, …).
    Tls {
        /// What went wrong, for humans.
        message: String,
    },
    /// The endpoint resolved to an address the SSRF guard refuses.
    BlockedAddress {
        /// Which address was refused and why, for humans.
        message: String,
    },
    /// The URL cannot be requested at all (bad scheme, bad host, `http://` where not allowed).
    InvalidUrl {
        /// What is wrong with the URL, for humans.
        message: String,
    },
    /// Nothing was sent: the endpoint's circuit breaker was open when the attempt fell due.
    CircuitOpen,
}

/// Why a failed attempt must not be retried, apart from `410 Gone` (which has its own class
/// because it disables the subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermanentReason {
    /// The endpoint resolved to an address the SSRF guard refuses. Retrying cannot help until the
    /// customer changes the URL or an operator allow-lists the address.
    BlockedAddress,
    /// The URL cannot be requested at all.
    InvalidUrl,
}

impl fmt::Display for PermanentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BlockedAddress => "the endpoint resolves to an address that is not allowed",
            Self::InvalidUrl => "the endpoint URL cannot be requested",
        })
    }
}

/// How a failed attempt is to be treated. Success has no failure class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Try again later, following the retry schedule.
    Retryable {
        /// How long the endpoint asked us to wait (`Retry-After` of a `429` or `503`).
        /// [`crate::retry`] honours it within its bounds.
        retry_after: Option<Duration>,
    },
    /// `410 Gone`: the endpoint does not want webhooks any more. No retry; the subscription is
    /// to be disabled.
    Gone,
    /// Retrying cannot succeed until the configuration changes.
    Permanent {
        /// Why.
        reason: PermanentReason,
    },
}

impl FailureClass {
    /// Whether the schedule may retry this failure.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }
}

/// One attempt's result, classified: the outcome recorded in the attempt log, and — when it
/// failed — how the failure is to be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The outcome to record in `AttemptRecord.outcome`.
    pub outcome: AttemptOutcome,
    /// The HTTP status, when a response was received (`AttemptRecord.status_code`, 0 when none).
    pub status: Option<u16>,
    /// `None` on success; otherwise how the failure is to be treated.
    pub failure: Option<FailureClass>,
    description: String,
}

impl Classified {
    /// Whether the attempt delivered the webhook (`2xx`).
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.failure.is_none()
    }

    /// A short sentence for humans, for the attempt record and the dead letter
    /// (e.g. `HTTP 503, Retry-After 120s`, `timed out`, `TLS error: certificate expired`).
    #[must_use]
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// The bounded name of an outcome: the `outcome` label of the sender's metrics and the
/// outcome's name in the admin API. The one place these names are spelled.
#[must_use]
pub fn label(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Success => "success",
        AttemptOutcome::HttpStatus => "http_status",
        AttemptOutcome::Timeout => "timeout",
        AttemptOutcome::ConnectError => "connect_error",
        AttemptOutcome::TlsError => "tls_error",
        AttemptOutcome::BlockedAddress => "blocked_address",
        AttemptOutcome::Gone => "gone",
        AttemptOutcome::InvalidUrl => "invalid_url",
        AttemptOutcome::Skipped => "skipped",
        AttemptOutcome::CircuitOpen => "circuit_open",
        AttemptOutcome::Unspecified => "unspecified",
    }
}

impl AttemptResult {
    /// Classifies this result; `now` is needed to turn an HTTP-date `Retry-After` into a delay.
    #[must_use]
    pub fn classify(&self, now: SystemTime) -> Classified {
        classify(self, now)
    }
}

/// Classifies one attempt's result; see the module documentation for the rules.
/// `now` is needed to turn an HTTP-date `Retry-After` into a delay.
#[must_use]
pub fn classify(result: &AttemptResult, now: SystemTime) -> Classified {
    match result {
        AttemptResult::Response {
            status,
            retry_after,
        } => classify_status(*status, retry_after.as_deref(), now),
        AttemptResult::Timeout => without_response(
            AttemptOutcome::Timeout,
            FailureClass::Retryable { retry_after: None },
            "timed out before the endpoint answered".to_owned(),
        ),
        AttemptResult::Connect { message } => without_response(
            AttemptOutcome::ConnectError,
            FailureClass::Retryable { retry_after: None },
            format!("connect error: {message}"),
        ),
        AttemptResult::Tls { message } => without_response(
            AttemptOutcome::TlsError,
            FailureClass::Retryable { retry_after: None },
            format!("TLS error: {message}"),
        ),
        AttemptResult::BlockedAddress { message } => without_response(
            AttemptOutcome::BlockedAddress,
            FailureClass::Permanent {
                reason: PermanentReason::BlockedAddress,
            },
            format!("blocked address: {message}"),
        ),
        AttemptResult::InvalidUrl { message } => without_response(
            AttemptOutcome::InvalidUrl,
            FailureClass::Permanent {
                reason: PermanentReason::InvalidUrl,
            },
            format!("invalid URL: {message}"),
        ),
        AttemptResult::CircuitOpen => without_response(
            AttemptOutcome::CircuitOpen,
            FailureClass::Retryable { retry_after: None },
            "not sent: circuit open (recent attempts to this endpoint failed)".to_owned(),
        ),
    }
}

fn without_response(
    outcome: AttemptOutcome,
    failure: FailureClass,
    description: String,
) -> Classified {
    Classified {
        outcome,
        status: None,
        failure: Some(failure),
        description,
    }
}

fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Classified {
    let (outcome, failure, description) = match status {
        200..=299 => (AttemptOutcome::Success, None, format!("HTTP {status}")),
        300..=399 => (
            AttemptOutcome::HttpStatus,
            Some(FailureClass::Retryable { retry_after: None }),
            format!("HTTP {status}: redirects are not followed, update the endpoint URL instead"),
        ),
        410 => (
            AttemptOutcome::Gone,
            Some(FailureClass::Gone),
            "HTTP 410 Gone: the endpoint no longer accepts webhooks".to_owned(),
        ),
        429 | 503 => {
            let retry_after = retry_after.and_then(|value| parse_retry_after(value, now));
            let description = match retry_after {
                Some(delay) => format!("HTTP {status}, Retry-After {}s", delay.as_secs()),
                None => format!("HTTP {status}"),
            };
            (
                AttemptOutcome::HttpStatus,
                Some(FailureClass::Retryable { retry_after }),
                description,
            )
        }
        _ => (
            AttemptOutcome::HttpStatus,
            Some(FailureClass::Retryable { retry_after: None }),
            format!("HTTP {status}"),
        ),
    };
    Classified {
        outcome,
        status: Some(status),
        failure,
        description,
    }
}

/// Parses a `Retry-After` header value (RFC 9110 §10.2.3) into how long to wait from `now`.
///
/// Accepts delay-seconds (a non-negative integer; values too large for a `u64` saturate, the
/// retry policy caps them anyway) and an HTTP-date (IMF-fixdate and the obsolete RFC 850 and
/// asctime formats). A date in the past means "now": `Duration::ZERO`. Anything else — a
/// negative or fractional number, garbage, an empty value — is `None`: a malformed header is
/// ignored, not an error, and the schedule applies as if it were absent.
#[must_use]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|byte| byte.is_ascii_digit()) {
        // Only digits, so the only possible parse error is overflow.
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// 2015-10-21T07:28:00Z, the date of RFC 9110's examples.
    fn rfc_example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    fn response(status: u16, retry_after: Option<&str>) -> AttemptResult {
        AttemptResult::Response {
            status,
            retry_after: retry_after.map(str::to_owned),
        }
    }

    fn retryable(retry_after: Option<Duration>) -> Option<FailureClass> {
        Some(FailureClass::Retryable { retry_after })
    }

    #[test]
    fn every_2xx_is_success() {
        for status in [200, 201, 202, 204, 299] {
            let classified = response(status, None).classify(rfc_example_time());
            assert_eq!(classified.outcome, AttemptOutcome::Success, "{status}");
            assert_eq!(classified.failure, None, "{status}");
            assert_eq!(classified.status, Some(status));
            assert!(classified.is_success());
            assert_eq!(classified.description(), format!("HTTP {status}"));
        }
    }

    #[test]
    fn statuses_are_classified_by_the_table() {
        let now = rfc_example_time();
        let cases: &[(u16, Option<&str>, AttemptOutcome, Option<FailureClass>)] = &[
            (199, None, AttemptOutcome::HttpStatus, retryable(None)),
            (300, None, AttemptOutcome::HttpStatus, retryable(None)),
            (301, None, AttemptOutcome::HttpStatus, retryable(None)),
            (308, None, AttemptOutcome::HttpStatus, retryable(None)),
            (400, None, AttemptOutcome::HttpStatus, retryable(None)),
            (401, None, AttemptOutcome::HttpStatus, retryable(None)),
            (404, None, AttemptOutcome::HttpStatus, retryable(None)),
            (409, None, AttemptOutcome::HttpStatus, retryable(None)),
            (410, None, AttemptOutcome::Gone, Some(FailureClass::Gone)),
            // 410 ignores Retry-After: it is not retried at all.
            (
                410,
                Some("60"),
                AttemptOutcome::Gone,
                Some(FailureClass::Gone),
            ),
            (
                429,
                Some("120"),
                AttemptOutcome::HttpStatus,
                retryable(Some(Duration::from_secs(120))),
            ),
            (429, None, AttemptOutcome::HttpStatus, retryable(None)),
            (
                429,
                Some("soon"),
                AttemptOutcome::HttpStatus,
                retryable(None),
            ),
            (500, None, AttemptOutcome::HttpStatus, retryable(None)),
            // Retry-After is honoured on 429 and 503 only.
            (
                500,
                Some("120"),
                AttemptOutcome::HttpStatus,
                retryable(None),
            ),
            (502, None, AttemptOutcome::HttpStatus, retryable(None)),
            (
                503,
                Some("Wed, 21 Oct 2015 07:30:00 GMT"),
                AttemptOutcome::HttpStatus,
                retryable(Some(Duration::from_secs(120))),
            ),
            (504, None, AttemptOutcome::HttpStatus, retryable(None)),
            (599, None, AttemptOutcome::HttpStatus, retryable(None)),
        ];
        for (status, retry_after, outcome, failure) in cases {
            let classified = response(*status, *retry_after).classify(now);
            assert_eq!(classified.outcome, *outcome, "status {status}");
            assert_eq!(classified.failure, *failure, "status {status}");
            assert_eq!(classified.status, Some(*status), "status {status}");
            assert!(!classified.is_success(), "status {status}");
        }
    }

    #[test]
    fn errors_without_a_response_are_classified() {
        let now = rfc_example_time();
        let message = || "boom".to_owned();
        let cases = [
            (
                AttemptResult::Timeout,
                AttemptOutcome::Timeout,
                retryable(None),
                "timed out before the endpoint answered",
            ),
            (
                AttemptResult::Connect { message: message() },
                AttemptOutcome::ConnectError,
                retryable(None),
                "connect error: boom",
            ),
            (
                AttemptResult::Tls { message: message() },
                AttemptOutcome::TlsError,
                retryable(None),
                "TLS error: boom",
            ),
            (
                AttemptResult::BlockedAddress { message: message() },
                AttemptOutcome::BlockedAddress,
                Some(FailureClass::Permanent {
                    reason: PermanentReason::BlockedAddress,
                }),
                "blocked address: boom",
            ),
            (
                AttemptResult::InvalidUrl { message: message() },
                AttemptOutcome::InvalidUrl,
                Some(FailureClass::Permanent {
                    reason: PermanentReason::InvalidUrl,
                }),
                "invalid URL: boom",
            ),
            (
                AttemptResult::CircuitOpen,
                AttemptOutcome::CircuitOpen,
                retryable(None),
                "not sent: circuit open (recent attempts to this endpoint failed)",
            ),
        ];
        for (result, outcome, failure, description) in cases {
            let classified = classify(&result, now);
            assert_eq!(classified.outcome, outcome, "{result:?}");
            assert_eq!(classified.failure, failure, "{result:?}");
            assert_eq!(classified.status, None, "{result:?}");
            assert_eq!(classified.to_string(), description);
        }
    }

    #[test]
    fn descriptions_say_what_happened() {
        let now = rfc_example_time();
        assert_eq!(
            response(301, None).classify(now).description(),
            "HTTP 301: redirects are not followed, update the endpoint URL instead"
        );
        assert_eq!(
            response(410, None).classify(now).description(),
            "HTTP 410 Gone: the endpoint no longer accepts webhooks"
        );
        assert_eq!(
            response(429, Some("30")).classify(now).description(),
            "HTTP 429, Retry-After 30s"
        );
        assert_eq!(
            response(503, Some("garbage")).classify(now).description(),
            "HTTP 503"
        );
        assert_eq!(response(500, None).classify(now).description(), "HTTP 500");
    }

    #[test]
    fn only_retryable_failures_are_retryable() {
        assert!(FailureClass::Retryable { retry_after: None }.is_retryable());
        assert!(!FailureClass::Gone.is_retryable());
        assert!(
            !FailureClass::Permanent {
                reason: PermanentReason::InvalidUrl
            }
            .is_retryable()
        );
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = rfc_example_time();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("007", now), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_huge_numbers_saturate_without_panicking() {
        let now = rfc_example_time();
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_dates_in_every_format_httpdate_accepts() {
        let now = rfc_example_time();
        let two_minutes = Some(Duration::from_secs(120));
        // IMF-fixdate, RFC 850 and asctime, all 2015-10-21T07:30:00Z.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            two_minutes
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:30:00 GMT", now),
            two_minutes
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:30:00 2015", now),
            two_minutes
        );
    }

    #[test]
    fn retry_after_date_in_the_past_means_now() {
        let now = rfc_example_time();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        let now = rfc_example_time();
        for value in [
            "",
            "   ",
            "-1",
            "-120",
            "+5",
            "1.5",
            "1e3",
            "12s",
            "soon",
            "0x10",
            // A date with a wrong weekday or zone is not an HTTP-date.
            "Thu, 21 Oct 2015 07:30:00 GMT",
            "Wed, 21 Oct 2015 07:30:00 CET",
            "2015-10-21T07:30:00Z",
        ] {
            assert_eq!(parse_retry_after(value, now), None, "{value:?}");
        }
    }
}
