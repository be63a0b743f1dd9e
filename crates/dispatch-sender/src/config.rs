//! The `[sender]` configuration table: global concurrency, each account's share of it, the
//! per-partition window, the drain deadline and the per-endpoint limits, with defaults in one
//! place and a check that names the first bad key.

use serde::Deserialize;

use crate::endpoint::EndpointConfig;

/// The `[sender]` configuration table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Consumer group of the sender processes.
    pub group_id: String,
    /// Most webhook requests in flight in this process, all endpoints together.
    pub max_concurrent_requests: usize,
    /// Most of `max_concurrent_requests` one account's requests may hold at once, in percent
    /// (at least one request). Keeps one tenant's slow or hanging endpoints from taking every
    /// permit; permits are handed out round-robin between accounts, and within an account
    /// between its endpoints. 100 = no per-account cap.
    pub max_account_share_percent: u32,
    /// Most taken-but-unfinished records per partition; at it, the partition is paused until
    /// half of them finished (this bounds memory and what a crash makes the next owner redo).
    pub max_uncommitted_per_partition: usize,
    /// How long a revoke or shutdown waits for in-flight attempts, in milliseconds (keep it
    /// under the group's session timeout and the pod's termination grace period).
    pub drain_timeout_ms: u64,
    /// Per-endpoint limits and the circuit breaker.
    pub endpoint: EndpointConfig,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            group_id: "dispatch-sender".to_owned(),
            max_concurrent_requests: 512,
            max_account_share_percent: 50,
            max_uncommitted_per_partition: 10_000,
            drain_timeout_ms: 25_000,
            endpoint: EndpointConfig::default(),
        }
    }
}

impl SenderConfig {
    /// Checks the settings, naming the first bad key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.group_id.trim().is_empty() {
            return Err("sender.group_id: must not be empty".to_owned());
        }
        if !(1..=100_000).contains(&self.max_concurrent_requests) {
            return Err(format!(
                "sender.max_concurrent_requests: must be between 1 and 100000, got {}",
                self.max_concurrent_requests
            ));
        }
        if !(1..=100).contains(&self.max_account_share_percent) {
            return Err(format!(
                "sender.max_account_share_percent: must be between 1 and 100, got {}",
                self.max_account_share_percent
            ));
        }
        if self.max_uncommitted_per_partition == 0 {
            return Err("sender.max_uncommitted_per_partition: must be positive".to_owned());
        }
        if self.drain_timeout_ms == 0 {
            return Err("sender.drain_timeout_ms: must be positive".to_owned());
        }
        self.endpoint
            .validate()
            .map_err(|e| format!("sender.endpoint.{e}"))
    }

    /// Most requests one account may have in flight: its share of the permits, at least one.
    pub fn max_requests_per_account(&self) -> usize {
        let share = self.max_concurrent_requests * self.max_account_share_percent as usize / 100;
        share.max(1)
    }
}
