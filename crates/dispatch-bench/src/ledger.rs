//! The ledger check that ends every fault scenario: every (event, subscription) the broker
//! acknowledged either reached its receiver at least once or is in the DLQ; nothing else is
//! acceptable.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dispatch_kafka::KafkaConfig;
use dispatch_proto::dispatch::v1::DeadLetter;
use dispatch_proto::prost::Message as _;
use serde::Serialize;

use crate::fleet::Fleet;
use crate::workload;

/// A dead letter as the ledger needs it.
#[derive(Debug, Clone, Copy)]
pub struct DeadEntry {
    /// Attempts the delivery had.
    pub attempts: usize,
}

/// The run's dead letters: (event seq, endpoint) → attempts. Records of other runs or
/// unreadable ones are skipped (they cannot be this run's).
pub fn dead_letters(
    config: &KafkaConfig,
    dlq_topic: &str,
) -> anyhow::Result<HashMap<(u64, usize), DeadEntry>> {
    let mut dead = HashMap::new();
    crate::topics::read_topic(config, dlq_topic, Duration::from_secs(60), |value| {
        if let Ok(letter) = DeadLetter::decode(value)
            && let Some(task) = letter.task
            && let (Some(seq), Some(endpoint)) = (
                workload::seq_of(&task.event_id),
                workload::endpoint_of(&task.subscription_id),
            )
        {
            dead.insert(
                (seq, endpoint),
                DeadEntry {
                    attempts: letter.attempts.len(),
                },
            );
        }
    })?;
    Ok(dead)
}

/// The verdict of one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Events the broker acknowledged.
    pub events: usize,
    /// (event, subscription) pairs owed to receivers.
    pub expected: usize,
    /// Owed pairs that reached their receiver.
    pub delivered: usize,
    /// Owed pairs not received but in the DLQ.
    pub dead_lettered: usize,
    /// Owed pairs neither received nor in the DLQ.
    pub lost: usize,
    /// Extra receptions of pairs already received (at-least-once redeliveries).
    pub duplicates: u64,
    /// Receptions at an endpoint whose subscription does not match the event (misrouted).
    pub unexpected: usize,
    /// Signatures that did not verify at the receivers.
    pub bad_signatures: u64,
}

impl Verdict {
    /// Nothing lost, nothing misrouted, every checked signature good.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.unexpected == 0 && self.bad_signatures == 0
    }

    /// The one-line summary.
    pub fn line(&self, scenario: &str) -> String {
        format!(
            "{} {scenario}: events {}, owed {}, delivered {}, dead-lettered {}, lost {}, duplicates {}, misrouted {}, bad signatures {}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.events,
            self.expected,
            self.delivered,
            self.dead_lettered,
            self.lost,
            self.duplicates,
            self.unexpected,
            self.bad_signatures,
        )
    }
}

/// Compares what was owed (`acked` events) with what the fleet received and the DLQ holds.
pub fn check(acked: &[u64], fleet: &Fleet, dead: &HashMap<(u64, usize), DeadEntry>) -> Verdict {
    let owed: HashSet<(u64, usize)> = owed_pairs(acked).into_iter().collect();
    let mut verdict = Verdict {
        events: acked.len(),
        expected: owed.len(),
        bad_signatures: fleet.counters().bad_signatures,
        ..Verdict::default()
    };
    let mut received = HashSet::new();
    fleet.for_each(|seq, endpoint, reception| {
        received.insert((seq, endpoint));
        verdict.duplicates += u64::from(reception.count.saturating_sub(1));
        if !workload::endpoints_of(seq).contains(&endpoint) {
            verdict.unexpected += 1;
        }
    });
    for pair in &owed {
        if received.contains(pair) {
            verdict.delivered += 1;
        } else if dead.contains_key(pair) {
            verdict.dead_lettered += 1;
        } else {
            verdict.lost += 1;
        }
    }
    verdict
}

/// The (event, endpoint) pairs `acked` events are owed to.
pub fn owed_pairs(acked: &[u64]) -> Vec<(u64, usize)> {
    acked
        .iter()
        .flat_map(|&seq| workload::endpoints_of(seq).map(move |e| (seq, e)))
        .collect()
}

/// Owed pairs of `acked` not yet received by the fleet.
pub fn missing(acked: &[u64], fleet: &Fleet) -> usize {
    fleet.missing(&owed_pairs(acked))
}
