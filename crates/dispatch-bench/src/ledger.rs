//! The ledger check that ends every fault scenario: every (event, subscription) the broker
//! acknowledged either reached its receiver at least once or is in the DLQ; nothing else is
//! acceptable. What reached the receivers is the fleet's ledger, or what nginx's access log
//! shows when nginx received (then no signature was checked).

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
    /// The receiver checked no signature (nginx): `bad_signatures` says nothing then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub signatures_unchecked: bool,
}

impl Verdict {
    /// Nothing lost, nothing misrouted, every checked signature good.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.unexpected == 0 && self.bad_signatures == 0
    }

    /// The one-line summary.
    pub fn line(&self, scenario: &str) -> String {
        format!(
            "{} {scenario}: events {}, owed {}, delivered {}, dead-lettered {}, lost {}, duplicates {}, misrouted {}, {}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.events,
            self.expected,
            self.delivered,
            self.dead_lettered,
            self.lost,
            self.duplicates,
            self.unexpected,
            if self.signatures_unchecked {
                "signatures not checked".to_owned()
            } else {
                format!("bad signatures {}", self.bad_signatures)
            },
        )
    }
}

/// Compares what was owed (`acked` events) with what the fleet received and the DLQ holds.
pub fn check(acked: &[u64], fleet: &Fleet, dead: &HashMap<(u64, usize), DeadEntry>) -> Verdict {
    let bad_signatures = fleet.counters().bad_signatures;
    let verdict = tally(
        acked,
        |visit| fleet.for_each(|seq, endpoint, reception| visit(seq, endpoint, reception.count)),
        dead,
    );
    Verdict {
        bad_signatures,
        ..verdict
    }
}

/// [`check`] for a receiver that verifies no signature (nginx): `for_each` visits every
/// (event, endpoint) that arrived with how many times it did.
pub fn check_unsigned(
    acked: &[u64],
    for_each: impl FnOnce(&mut dyn FnMut(u64, usize, u32)),
    dead: &HashMap<(u64, usize), DeadEntry>,
) -> Verdict {
    Verdict {
        signatures_unchecked: true,
        ..tally(acked, for_each, dead)
    }
}

fn tally(
    acked: &[u64],
    for_each: impl FnOnce(&mut dyn FnMut(u64, usize, u32)),
    dead: &HashMap<(u64, usize), DeadEntry>,
) -> Verdict {
    let owed: HashSet<(u64, usize)> = owed_pairs(acked).into_iter().collect();
    let mut verdict = Verdict {
        events: acked.len(),
        expected: owed.len(),
        ..Verdict::default()
    };
    let mut received = HashSet::new();
    for_each(&mut |seq, endpoint, count| {
        received.insert((seq, endpoint));
        verdict.duplicates += u64::from(count.saturating_sub(1));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsigned_receiver_is_checked_from_what_it_saw() {
        // Event 0 is owed to endpoints 0, 1, 2; event 1 (of the next account) to 5, 6, 7.
        let acked = [0, 1];
        let seen = [(0, 0, 2), (0, 1, 1), (0, 2, 1), (1, 5, 1), (1, 0, 1)];
        let dead = HashMap::from([((1, 6), DeadEntry { attempts: 5 })]);
        let verdict = check_unsigned(
            &acked,
            |visit| {
                for (seq, endpoint, count) in seen {
                    visit(seq, endpoint, count);
                }
            },
            &dead,
        );
        assert_eq!(verdict.expected, 6);
        assert_eq!(verdict.delivered, 4);
        assert_eq!(verdict.dead_lettered, 1);
        // (1, 7): neither arrived nor dead-lettered.
        assert_eq!(verdict.lost, 1);
        assert_eq!(verdict.duplicates, 1);
        // (1, 0): event 1 is not endpoint 0's.
        assert_eq!(verdict.unexpected, 1);
        assert!(verdict.signatures_unchecked && !verdict.passed());
        assert!(verdict.line("x").contains("signatures not checked"));
    }
}
