//! What one caller may take of the API: a request rate per bearer token (429 `rate_limited`),
//! and per-account quotas — subscriptions (403 `quota_exceeded`) and test events per minute
//! (429 `quota_exceeded`). Each refusal names the limit and the configuration key that sets it,
//! so the customer knows what to ask for and the operator what to change.
//!
//! Rates are `governor`'s GCRA cells: no counter to reset, no timer task, and the time until a
//! request would pass is exact, which becomes `Retry-After`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};

use crate::config::{QuotaConfig, RateLimitConfig};
use crate::error::ApiError;

/// Past this many accounts remembered by the test-event limiter, the ones whose budget is full
/// again are forgotten (they would pass anyway): its memory stays bounded by recent senders.
const TEST_EVENT_ACCOUNTS_KEPT: usize = 10_000;

/// One rate budget per configured token, in the token table's order.
pub(crate) struct TokenRates {
    limiters: Vec<DefaultDirectRateLimiter>,
    config: RateLimitConfig,
}

impl std::fmt::Debug for TokenRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRates")
            .field("tokens", &self.limiters.len())
            .field("config", &self.config)
            .finish()
    }
}

fn non_zero(value: u32) -> NonZeroU32 {
    // `ApiConfig::validate` refuses zeros; 1 is the closest meaningful value if one slipped by.
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

/// Whole seconds until `refusal` would pass, rounded up and at least 1 (`Retry-After` has no
/// fractions, and 0 would invite an immediate retry that fails again).
fn retry_after_secs(
    refusal: &NotUntil<<DefaultClock as Clock>::Instant>,
    clock: &DefaultClock,
) -> u64 {
    let wait = refusal.wait_time_from(clock.now());
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

impl TokenRates {
    /// A fresh budget for each of `tokens` tokens.
    pub(crate) fn new(tokens: usize, config: &RateLimitConfig) -> Self {
        let quota = Quota::per_second(non_zero(config.requests_per_second_per_token))
            .allow_burst(non_zero(config.burst_requests));
        Self {
            limiters: (0..tokens).map(|_| RateLimiter::direct(quota)).collect(),
            config: config.clone(),
        }
    }

    /// Spends one request of token number `index`'s budget; 429 `rate_limited` when it is
    /// spent. `who` names the caller in the log (an account or "operator"), never the token.
    pub(crate) fn check(&self, index: usize, who: &str) -> Result<(), ApiError> {
        let Some(limiter) = self.limiters.get(index) else {
            return Ok(());
        };
        limiter.check().map_err(|refusal| {
            let retry_after = retry_after_secs(&refusal, limiter.clock());
            tracing::info!(
                caller = who,
                token_index = index,
                retry_after_secs = retry_after,
                "request rate limit reached"
            );
            ApiError::too_many_requests(
                "rate_limited",
                format!(
                    "this token made more than {} requests per second (bursts of up to {}) (api.rate_limit.requests_per_second_per_token, api.rate_limit.burst_requests); retry in {retry_after} s",
                    self.config.requests_per_second_per_token, self.config.burst_requests
                ),
                retry_after,
            )
        })
    }
}

/// The per-account quotas and the state they need.
pub(crate) struct AccountQuotas {
    config: QuotaConfig,
    test_events: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for AccountQuotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountQuotas")
            .field("config", &self.config)
            .field("test_event_accounts", &self.test_events.len())
            .finish()
    }
}

impl AccountQuotas {
    /// Quotas as configured, no account having used any.
    pub(crate) fn new(config: &QuotaConfig) -> Self {
        // `per_minute(n)`: a burst of n, refilled one every 60/n seconds — at most n in any
        // minute once the burst is spent.
        let quota = Quota::per_minute(non_zero(config.test_events_per_minute_per_account));
        Self {
            config: config.clone(),
            test_events: RateLimiter::keyed(quota),
        }
    }

    /// 403 `quota_exceeded` when `account_id`, which has `current` subscriptions, may not
    /// create another.
    pub(crate) fn check_new_subscription(
        &self,
        account_id: &str,
        current: usize,
    ) -> Result<(), ApiError> {
        let limit = self.config.max_subscriptions_per_account;
        if current < limit {
            return Ok(());
        }
        Err(ApiError::forbidden(
            "quota_exceeded",
            format!(
                "account {account_id} has {current} subscriptions, the limit is {limit} (api.quotas.max_subscriptions_per_account); delete one first or ask the operator to raise the limit"
            ),
        ))
    }

    /// Spends one of `account_id`'s test events of the current minute; 429 `quota_exceeded`
    /// with `Retry-After` when they are spent.
    pub(crate) fn spend_test_event(&self, account_id: &str) -> Result<(), ApiError> {
        let key = account_id.to_owned();
        let checked = self.test_events.check_key(&key);
        if self.test_events.len() > TEST_EVENT_ACCOUNTS_KEPT {
            self.test_events.retain_recent();
        }
        checked.map_err(|refusal| {
            let retry_after = retry_after_secs(&refusal, self.test_events.clock());
            ApiError::too_many_requests(
                "quota_exceeded",
                format!(
                    "account {account_id} sent its {} test events of the last minute, the limit is {} per minute (api.quotas.test_events_per_minute_per_account); retry in {retry_after} s",
                    self.config.test_events_per_minute_per_account,
                    self.config.test_events_per_minute_per_account
                ),
                retry_after,
            )
        })
    }
}

/// A timeout as refusals show it: in seconds when whole, else in milliseconds.
pub(crate) fn describe_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{} s", millis / 1000)
    } else {
        format!("{millis} ms")
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn a_token_past_its_burst_is_refused_with_a_retry_after() {
        let rates = TokenRates::new(
            2,
            &RateLimitConfig {
                requests_per_second_per_token: 1,
                burst_requests: 2,
            },
        );
        assert!(rates.check(0, "acc_a").is_ok());
        assert!(rates.check(0, "acc_a").is_ok());
        let refused = rates.check(0, "acc_a").expect_err("past the burst");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code(), "rate_limited");
        assert_eq!(refused.retry_after_secs(), Some(1));
        assert!(
            refused
                .message()
                .contains("api.rate_limit.requests_per_second_per_token"),
            "{refused}"
        );
        assert!(
            rates.check(1, "acc_b").is_ok(),
            "each token has its own budget"
        );
    }

    #[test]
    fn subscription_quota_names_count_limit_and_key() {
        let quotas = AccountQuotas::new(&QuotaConfig {
            max_subscriptions_per_account: 100,
            ..QuotaConfig::default()
        });
        assert!(quotas.check_new_subscription("acc_x", 99).is_ok());
        let refused = quotas
            .check_new_subscription("acc_x", 100)
            .expect_err("at the limit");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.code(), "quota_exceeded");
        assert!(
            refused.message().starts_with(
                "account acc_x has 100 subscriptions, the limit is 100 (api.quotas.max_subscriptions_per_account)"
            ),
            "{refused}"
        );
    }

    #[test]
    fn test_events_are_counted_per_account() {
        let quotas = AccountQuotas::new(&QuotaConfig {
            test_events_per_minute_per_account: 2,
            ..QuotaConfig::default()
        });
        assert!(quotas.spend_test_event("acc_a").is_ok());
        assert!(quotas.spend_test_event("acc_a").is_ok());
        let refused = quotas.spend_test_event("acc_a").expect_err("third");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code(), "quota_exceeded");
        // One event comes back every 30 s.
        assert!(
            refused
                .retry_after_secs()
                .is_some_and(|s| (1..=30).contains(&s)),
            "{refused:?}"
        );
        assert!(
            refused
                .message()
                .contains("api.quotas.test_events_per_minute_per_account"),
            "{refused}"
        );
        assert!(quotas.spend_test_event("acc_b").is_ok());
    }

    #[test]
    fn timeouts_are_described_in_seconds_when_whole() {
        assert_eq!(describe_timeout(Duration::from_secs(30)), "30 s");
        assert_eq!(describe_timeout(Duration::from_millis(1500)), "1500 ms");
    }
}
