//! Every metric name of the system, in one place (design section 8): `dispatch_<role>_<noun>_<unit>`,
//! counters end in `_total`, labels are bounded (never a URL, event id or account id).
//! `docs/metrics.md` is checked against this module.
//!
//! [`CATALOGUE`] lists every name once with its kind, unit, labels and help text; a unit test
//! scans this file so that a constant cannot be added without its catalogue entry.

use metrics::Unit;

// --- subscription view (every role that reads dispatch.subscriptions) ---------------------------

/// Gauge: subscriptions currently in this process's view (enabled or not).
pub const VIEW_SUBSCRIPTIONS: &str = "dispatch_view_subscriptions";
/// Gauge: records of dispatch.subscriptions not yet applied by this process's view.
pub const VIEW_LAG_RECORDS: &str = "dispatch_view_lag_records";
/// Counter, label `reason`: subscription records the fold refused (stale version, invalid).
pub const VIEW_REJECTED_TOTAL: &str = "dispatch_view_rejected_total";

// --- fan-out ------------------------------------------------------------------------------------

/// Counter, label `topic`: domain events read.
pub const FANOUT_EVENTS_CONSUMED_TOTAL: &str = "dispatch_fanout_events_consumed_total";
/// Counter, label `reason`: events quarantined to dispatch.invalid.
pub const FANOUT_EVENTS_INVALID_TOTAL: &str = "dispatch_fanout_events_invalid_total";
/// Counter: valid events that matched no subscription.
pub const FANOUT_EVENTS_UNMATCHED_TOTAL: &str = "dispatch_fanout_events_unmatched_total";
/// Counter, label `family`: delivery tasks produced (committed).
pub const FANOUT_DELIVERIES_PRODUCED_TOTAL: &str = "dispatch_fanout_deliveries_produced_total";
/// Counter, label `result` (`commit` | `abort`): transactions ended.
pub const FANOUT_TRANSACTIONS_TOTAL: &str = "dispatch_fanout_transactions_total";
/// Histogram: input records per transaction.
pub const FANOUT_BATCH_RECORDS: &str = "dispatch_fanout_batch_records";
/// Histogram: seconds from `send_offsets_to_transaction` to a finished `commit_transaction`.
pub const FANOUT_COMMIT_DURATION_SECONDS: &str = "dispatch_fanout_commit_duration_seconds";
/// Counter, label `call` (`begin` | `produce` | `send_offsets` | `commit` | `abort`):
/// transactional calls made again after an error librdkafka calls retriable.
pub const FANOUT_TRANSACTION_RETRIES_TOTAL: &str = "dispatch_fanout_transaction_retries_total";
/// Counter: consumers recreated because a rewind after an abort failed.
pub const FANOUT_CONSUMER_RECREATED_TOTAL: &str = "dispatch_fanout_consumer_recreated_total";
/// Counter: transactional producers replaced after a fatal producer error.
pub const FANOUT_PRODUCER_RECREATED_TOTAL: &str = "dispatch_fanout_producer_recreated_total";

// --- sender -------------------------------------------------------------------------------------

/// Counter, label `outcome`: delivery attempts, by outcome.
pub const SENDER_ATTEMPTS_TOTAL: &str = "dispatch_sender_attempts_total";
/// Histogram: seconds one attempt took, from connect to the capped response read.
pub const SENDER_ATTEMPT_DURATION_SECONDS: &str = "dispatch_sender_attempt_duration_seconds";
/// Histogram: seconds from the event's occurred_at to its successful delivery.
pub const SENDER_EVENT_TO_DELIVERY_SECONDS: &str = "dispatch_sender_event_to_delivery_seconds";
/// Gauge: webhook requests in flight in this process.
pub const SENDER_IN_FLIGHT_REQUESTS: &str = "dispatch_sender_in_flight_requests";
/// Counter, label `tier`: retries scheduled, by tier (`immediate` for the in-process retry).
pub const SENDER_RETRIES_TOTAL: &str = "dispatch_sender_retries_total";
/// Counter: deliveries sent to the dead-letter queue.
pub const SENDER_DEAD_LETTERED_TOTAL: &str = "dispatch_sender_dead_lettered_total";
/// Counter, label `reason`: deliveries parked on the first tier without spending an attempt (`slow_endpoint`: its backlog was full and would not drain in time at its pace; an open circuit spends attempts instead).
pub const SENDER_DEFERRED_TOTAL: &str = "dispatch_sender_deferred_total";
/// Gauge: endpoints whose circuit is open in this process.
pub const SENDER_OPEN_CIRCUITS: &str = "dispatch_sender_open_circuits";
/// Counter, label `to`: circuit breaker transitions (`open`, `reopen` after a failed probe, `closed`).
pub const SENDER_CIRCUIT_TRANSITIONS_TOTAL: &str = "dispatch_sender_circuit_transitions_total";
/// Gauge: endpoint queues this process keeps (idle ones are dropped), set once a second.
pub const SENDER_TRACKED_ENDPOINTS: &str = "dispatch_sender_tracked_endpoints";
/// Counter, label `reason`: delivery records quarantined to dispatch.invalid (undecodable).
pub const SENDER_RECORDS_INVALID_TOTAL: &str = "dispatch_sender_records_invalid_total";
/// Counter, label `reason`: deliveries not attempted because the subscription was deleted or disabled.
pub const SENDER_SKIPPED_TOTAL: &str = "dispatch_sender_skipped_total";
/// Counter, labels `topic`, `reason` (topic without prefix): failed produces of the sender's records (attempts, retry tiers, DLQ, quarantine, subscription disable); each is retried, none dropped.
pub const SENDER_PRODUCE_FAILURES_TOTAL: &str = "dispatch_sender_produce_failures_total";
/// Counter: the sender's write producer replaced after it knew no broker of the cluster too long.
pub const SENDER_PRODUCER_REPLACED_TOTAL: &str = "dispatch_sender_producer_replaced_total";

// --- topic folds (the admin API's delivery history and dead letters) ------------------------------

/// Counter, labels `fold`, `reason`: records a topic fold skipped (undecodable, incomplete).
pub const FOLD_RECORDS_INVALID_TOTAL: &str = "dispatch_fold_records_invalid_total";
/// Gauge, label `fold`: entries held by a bounded topic fold (deliveries, dead letters).
pub const FOLD_ENTRIES: &str = "dispatch_fold_entries";
/// Counter, label `fold`: entries a bounded topic fold dropped to stay within its bound.
pub const FOLD_ENTRIES_EVICTED_TOTAL: &str = "dispatch_fold_entries_evicted_total";

// --- admin API ----------------------------------------------------------------------------------

/// Histogram, labels `route`, `method`, `status_class`: seconds from a request's arrival to its response.
pub const API_REQUEST_DURATION_SECONDS: &str = "dispatch_api_request_duration_seconds";
/// Counter: dead letters replayed through the admin API (a new attempt series queued, the entry removed).
pub const API_DEAD_LETTERS_REPLAYED_TOTAL: &str = "dispatch_api_dead_letters_replayed_total";
/// Counter, labels `topic`, `reason` (topic without prefix): failed produces of the admin API's records (subscriptions, test events, replays, dead-letter tombstones); retried while the request's bound allows, then answered as an error.
pub const API_PRODUCE_FAILURES_TOTAL: &str = "dispatch_api_produce_failures_total";
/// Counter: the admin API's write producer replaced after it knew no broker of the cluster too long.
pub const API_PRODUCER_REPLACED_TOTAL: &str = "dispatch_api_producer_replaced_total";

// --- Kafka clients (every role) -----------------------------------------------------------------

/// Gauge, labels `group`, `topic`, `partition`: consumer lag from librdkafka statistics.
pub const KAFKA_CONSUMER_LAG_RECORDS: &str = "dispatch_kafka_consumer_lag_records";
/// Counter, labels `group`, `reason` (`fenced` | `group_stuck`): consumers replaced by a fresh
/// one (see `dispatch_kafka::group_health`).
pub const KAFKA_CONSUMER_REJOINS_TOTAL: &str = "dispatch_kafka_consumer_rejoins_total";

// --- the catalogue ------------------------------------------------------------------------------

/// What a metric is in Prometheus terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever increases; the name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observations, exported with buckets.
    Histogram,
}

/// One metric of the system: its name and everything needed to describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricSpec {
    /// The exported name, one of the constants of this module.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// What one unit of the value is, plural (`"records"`, `"seconds"`); gauges and histograms
    /// end their name with it.
    pub unit: &'static str,
    /// Every label the metric is recorded with; all of them have bounded values.
    pub labels: &'static [&'static str],
    /// One sentence for the `# HELP` line.
    pub help: &'static str,
}

impl MetricSpec {
    /// The `metrics` unit matching [`unit`](Self::unit): seconds and bytes as such, anything
    /// counted (records, events, subscriptions …) as [`Unit::Count`].
    pub fn metrics_unit(&self) -> Unit {
        match self.unit {
            "seconds" => Unit::Seconds,
            "bytes" => Unit::Bytes,
            _ => Unit::Count,
        }
    }
}

/// Every metric of the system, each exactly once.
pub const CATALOGUE: &[MetricSpec] = &[
    MetricSpec {
        name: VIEW_SUBSCRIPTIONS,
        kind: MetricKind::Gauge,
        unit: "subscriptions",
        labels: &[],
        help: "Subscriptions currently in this process's view, enabled or not.",
    },
    MetricSpec {
        name: VIEW_LAG_RECORDS,
        kind: MetricKind::Gauge,
        unit: "records",
        labels: &[],
        help: "Records of dispatch.subscriptions not yet applied by this process's view.",
    },
    MetricSpec {
        name: VIEW_REJECTED_TOTAL,
        kind: MetricKind::Counter,
        unit: "records",
        labels: &["reason"],
        help: "Subscription records the view refused (stale version, invalid).",
    },
    MetricSpec {
        name: FANOUT_EVENTS_CONSUMED_TOTAL,
        kind: MetricKind::Counter,
        unit: "events",
        labels: &["topic"],
        help: "Domain events read by the fan-out.",
    },
    MetricSpec {
        name: FANOUT_EVENTS_INVALID_TOTAL,
        kind: MetricKind::Counter,
        unit: "events",
        labels: &["reason"],
        help: "Domain events quarantined to dispatch.invalid.",
    },
    MetricSpec {
        name: FANOUT_EVENTS_UNMATCHED_TOTAL,
        kind: MetricKind::Counter,
        unit: "events",
        labels: &[],
        help: "Valid domain events that matched no subscription.",
    },
    MetricSpec {
        name: FANOUT_DELIVERIES_PRODUCED_TOTAL,
        kind: MetricKind::Counter,
        unit: "deliveries",
        labels: &["family"],
        help: "Delivery tasks produced in committed transactions.",
    },
    MetricSpec {
        name: FANOUT_TRANSACTIONS_TOTAL,
        kind: MetricKind::Counter,
        unit: "transactions",
        labels: &["result"],
        help: "Fan-out transactions ended, by commit or abort.",
    },
    MetricSpec {
        name: FANOUT_BATCH_RECORDS,
        kind: MetricKind::Histogram,
        unit: "records",
        labels: &[],
        help: "Input records per fan-out transaction.",
    },
    MetricSpec {
        name: FANOUT_COMMIT_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: "seconds",
        labels: &[],
        help: "Seconds from sending offsets to the transaction to a finished commit.",
    },
    MetricSpec {
        name: FANOUT_TRANSACTION_RETRIES_TOTAL,
        kind: MetricKind::Counter,
        unit: "calls",
        labels: &["call"],
        help: "Fan-out transactional calls made again after a retriable error.",
    },
    MetricSpec {
        name: FANOUT_CONSUMER_RECREATED_TOTAL,
        kind: MetricKind::Counter,
        unit: "consumers",
        labels: &[],
        help: "Fan-out consumers recreated because a rewind after an abort failed.",
    },
    MetricSpec {
        name: FANOUT_PRODUCER_RECREATED_TOTAL,
        kind: MetricKind::Counter,
        unit: "producers",
        labels: &[],
        help: "Fan-out transactional producers replaced (with the consumer) after the producer failed for good.",
    },
    MetricSpec {
        name: SENDER_ATTEMPTS_TOTAL,
        kind: MetricKind::Counter,
        unit: "attempts",
        labels: &["outcome"],
        help: "Delivery attempts, by outcome.",
    },
    MetricSpec {
        name: SENDER_ATTEMPT_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: "seconds",
        labels: &[],
        help: "Seconds one attempt took, from connect to the capped response read.",
    },
    MetricSpec {
        name: SENDER_EVENT_TO_DELIVERY_SECONDS,
        kind: MetricKind::Histogram,
        unit: "seconds",
        labels: &[],
        help: "Seconds from the event's occurred_at to its successful delivery.",
    },
    MetricSpec {
        name: SENDER_IN_FLIGHT_REQUESTS,
        kind: MetricKind::Gauge,
        unit: "requests",
        labels: &[],
        help: "Webhook requests in flight in this process.",
    },
    MetricSpec {
        name: SENDER_RETRIES_TOTAL,
        kind: MetricKind::Counter,
        unit: "retries",
        labels: &["tier"],
        help: "Retries scheduled, by tier (`immediate` for the in-process retry).",
    },
    MetricSpec {
        name: SENDER_DEAD_LETTERED_TOTAL,
        kind: MetricKind::Counter,
        unit: "deliveries",
        labels: &[],
        help: "Deliveries sent to the dead-letter queue.",
    },
    MetricSpec {
        name: SENDER_DEFERRED_TOTAL,
        kind: MetricKind::Counter,
        unit: "deliveries",
        labels: &["reason"],
        help: "Deliveries parked on the first tier without spending an attempt: reason slow_endpoint, its backlog was full and would not drain within sender.endpoint.max_queue_wait_ms at its pace (an open circuit spends attempts instead, outcome `circuit_open`).",
    },
    MetricSpec {
        name: SENDER_OPEN_CIRCUITS,
        kind: MetricKind::Gauge,
        unit: "circuits",
        labels: &[],
        help: "Endpoints whose circuit is open in this process.",
    },
    MetricSpec {
        name: SENDER_CIRCUIT_TRANSITIONS_TOTAL,
        kind: MetricKind::Counter,
        unit: "transitions",
        labels: &["to"],
        help: "Circuit breaker transitions of endpoints: to open (consecutive failures reached the threshold), reopen (the probe failed; the cool-down doubled), closed (the probe succeeded).",
    },
    MetricSpec {
        name: SENDER_TRACKED_ENDPOINTS,
        kind: MetricKind::Gauge,
        unit: "endpoints",
        labels: &[],
        help: "Endpoint queues this process keeps (idle ones are dropped), set once a second.",
    },
    MetricSpec {
        name: SENDER_RECORDS_INVALID_TOTAL,
        kind: MetricKind::Counter,
        unit: "records",
        labels: &["reason"],
        help: "Delivery records quarantined to dispatch.invalid (undecodable).",
    },
    MetricSpec {
        name: SENDER_SKIPPED_TOTAL,
        kind: MetricKind::Counter,
        unit: "deliveries",
        labels: &["reason"],
        help: "Deliveries not attempted because the subscription was deleted or disabled.",
    },
    MetricSpec {
        name: SENDER_PRODUCE_FAILURES_TOTAL,
        kind: MetricKind::Counter,
        unit: "records",
        labels: &["topic", "reason"],
        help: "Failed produces of the sender's records (attempts, retry tiers, DLQ, quarantine, subscription disable); each is retried, none dropped.",
    },
    MetricSpec {
        name: SENDER_PRODUCER_REPLACED_TOTAL,
        kind: MetricKind::Counter,
        unit: "producers",
        labels: &[],
        help: "The sender's write producer replaced after it knew no broker of the cluster for the stuck bound (librdkafka#5301), its pending writes made again through the new one.",
    },
    MetricSpec {
        name: FOLD_RECORDS_INVALID_TOTAL,
        kind: MetricKind::Counter,
        unit: "records",
        labels: &["fold", "reason"],
        help: "Records a topic fold skipped because it could not use them (undecodable, incomplete).",
    },
    MetricSpec {
        name: FOLD_ENTRIES,
        kind: MetricKind::Gauge,
        unit: "entries",
        labels: &["fold"],
        help: "Entries held by a bounded topic fold (deliveries of the history, dead letters).",
    },
    MetricSpec {
        name: FOLD_ENTRIES_EVICTED_TOTAL,
        kind: MetricKind::Counter,
        unit: "entries",
        labels: &["fold"],
        help: "Entries a bounded topic fold dropped to stay within its bound.",
    },
    MetricSpec {
        name: API_REQUEST_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: "seconds",
        labels: &["route", "method", "status_class"],
        help: "Seconds from an admin API request's arrival to its response.",
    },
    MetricSpec {
        name: API_DEAD_LETTERS_REPLAYED_TOTAL,
        kind: MetricKind::Counter,
        unit: "deliveries",
        labels: &[],
        help: "Dead letters replayed through the admin API (a new attempt series queued, the entry removed).",
    },
    MetricSpec {
        name: API_PRODUCE_FAILURES_TOTAL,
        kind: MetricKind::Counter,
        unit: "records",
        labels: &["topic", "reason"],
        help: "Failed produces of the admin API's records (subscriptions, test events, replays, dead-letter tombstones), retried while the request's bound allows and then answered as an error.",
    },
    MetricSpec {
        name: API_PRODUCER_REPLACED_TOTAL,
        kind: MetricKind::Counter,
        unit: "producers",
        labels: &[],
        help: "The admin API's write producer replaced after it knew no broker of the cluster for the stuck bound (librdkafka#5301), its pending writes made again through the new one.",
    },
    MetricSpec {
        name: KAFKA_CONSUMER_LAG_RECORDS,
        kind: MetricKind::Gauge,
        unit: "records",
        labels: &["group", "topic", "partition"],
        help: "Consumer lag per partition, from librdkafka statistics: the roles' consumer groups, and the topic readers outside any group (group `reader:<topic>`: the admin API's folds, every process's subscription view).",
    },
    MetricSpec {
        name: KAFKA_CONSUMER_REJOINS_TOTAL,
        kind: MetricKind::Counter,
        unit: "consumers",
        labels: &["group", "reason"],
        help: "Consumers replaced by a fresh one after a broker stall outlasting the session: static membership fenced, or the group handler away from its coordinator too long.",
    },
];

/// The catalogue entry of `name`, if it is one of ours.
pub fn spec(name: &str) -> Option<&'static MetricSpec> {
    CATALOGUE.iter().find(|spec| spec.name == name)
}

/// Registers kind, unit and help text of every catalogued metric with the installed recorder, so
/// that `/metrics` carries `# HELP` and `# TYPE` lines.
///
/// Descriptions go to the recorder installed at the time of the call; with none installed they
/// are dropped, so call this after [`install_recorder`](crate::install_recorder) (which does).
pub fn describe_all() {
    for spec in CATALOGUE {
        let unit = spec.metrics_unit();
        match spec.kind {
            MetricKind::Counter => metrics::describe_counter!(spec.name, unit, spec.help),
            MetricKind::Gauge => metrics::describe_gauge!(spec.name, unit, spec.help),
            MetricKind::Histogram => metrics::describe_histogram!(spec.name, unit, spec.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// One `pub const` of this file: the constant's name, its value (for `&str` constants), and
    /// the first line of its doc comment.
    #[derive(Debug)]
    struct DeclaredConst {
        ident: String,
        value: Option<String>,
        doc: String,
    }

    /// Reads this very file, so that a constant added without a catalogue entry fails a test
    /// instead of relying on a hand-kept list.
    fn declared_consts() -> Vec<DeclaredConst> {
        let source = include_str!("names.rs");
        let lines: Vec<&str> = source.lines().collect();
        let mut found = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("pub const ") else {
                continue;
            };
            // rustfmt may wrap a long declaration; the value ends at the first `;`.
            let mut declaration = rest.to_owned();
            let mut next = index + 1;
            while !declaration.contains(';') {
                declaration.push(' ');
                declaration.push_str(lines.get(next).expect("declaration ends with `;`").trim());
                next += 1;
            }
            let ident = declaration
                .split(':')
                .next()
                .expect("split yields one item")
                .trim()
                .to_owned();
            let value = declaration
                .split_once("&str = \"")
                .map(|(_, quoted)| quoted.split('"').next().expect("closing quote").to_owned());
            // The doc block sits right above; its first line says kind and labels.
            let doc = lines[..index]
                .iter()
                .rev()
                .take_while(|line| line.trim_start().starts_with("///"))
                .last()
                .map(|line| {
                    line.trim_start()
                        .trim_start_matches("///")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default();
            found.push(DeclaredConst { ident, value, doc });
        }
        found
    }

    fn metric_consts() -> Vec<DeclaredConst> {
        declared_consts()
            .into_iter()
            .filter(|c| c.ident != "CATALOGUE")
            .collect()
    }

    #[test]
    fn every_constant_is_a_name_and_in_the_catalogue_once() {
        let consts = metric_consts();
        assert!(
            consts.len() >= 11,
            "the scan found too few constants: {consts:?}"
        );
        let mut catalogued: BTreeMap<&str, usize> = BTreeMap::new();
        for spec in CATALOGUE {
            *catalogued.entry(spec.name).or_default() += 1;
        }
        for declared in &consts {
            let value = declared
                .value
                .as_deref()
                .unwrap_or_else(|| panic!("{} is not a `&str` name", declared.ident));
            assert_eq!(
                catalogued.get(value),
                Some(&1),
                "{} ({value}) must be in CATALOGUE exactly once",
                declared.ident
            );
        }
        let declared: BTreeSet<&str> = consts.iter().filter_map(|c| c.value.as_deref()).collect();
        for spec in CATALOGUE {
            assert!(
                declared.contains(spec.name),
                "{} is catalogued but not a constant",
                spec.name
            );
        }
    }

    #[test]
    fn names_follow_the_convention() {
        let mut seen = BTreeSet::new();
        for spec in CATALOGUE {
            let name = spec.name;
            assert!(seen.insert(name), "{name} is catalogued twice");
            let rest = name
                .strip_prefix("dispatch_")
                .unwrap_or_else(|| panic!("{name}: prefix"));
            assert!(
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name} must match dispatch_[a-z_]+"
            );
            assert!(
                !name.contains("__") && !name.ends_with('_'),
                "{name}: stray underscore"
            );
            match spec.kind {
                MetricKind::Counter => assert!(name.ends_with("_total"), "{name}: counter"),
                MetricKind::Gauge | MetricKind::Histogram => {
                    assert!(
                        !name.ends_with("_total"),
                        "{name}: only counters end in _total"
                    );
                    // `dispatch_<role>_<noun>_<unit>`: the unit is the last word.
                    assert!(
                        name.ends_with(&format!("_{}", spec.unit)),
                        "{name} must end with its unit `{}`",
                        spec.unit
                    );
                }
            }
            if name.ends_with("_seconds") || spec.unit == "seconds" {
                assert!(
                    name.ends_with("_seconds") && spec.unit == "seconds",
                    "{name}: time is measured in seconds and named so"
                );
            }
        }
    }

    #[test]
    fn help_is_one_sentence_and_labels_are_sane() {
        for spec in CATALOGUE {
            let help = spec.help;
            assert!(
                help.ends_with('.') && help[..help.len() - 1].matches(". ").count() == 0,
                "{}: help must be one sentence: {help:?}",
                spec.name
            );
            assert!(
                help.chars().next().is_some_and(char::is_uppercase),
                "{}: {help:?}",
                spec.name
            );
            let unique: BTreeSet<_> = spec.labels.iter().collect();
            assert_eq!(
                unique.len(),
                spec.labels.len(),
                "{}: duplicate label",
                spec.name
            );
            for label in spec.labels {
                assert!(
                    !label.is_empty() && label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{}: label {label:?}",
                    spec.name
                );
            }
        }
    }

    /// The doc comment of each constant starts `Kind[, label(s) `a`, `b`]:`; the catalogue must
    /// agree with it, so readers of either see the same thing.
    #[test]
    fn catalogue_agrees_with_the_doc_comments() {
        for declared in metric_consts() {
            let value = declared.value.as_deref().expect("checked elsewhere");
            let spec = spec(value).expect("checked elsewhere");
            let (head, _) = declared
                .doc
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: doc must start with `Kind:`", declared.ident));
            let kind = match head.split(',').next().expect("one item").trim() {
                "Counter" => MetricKind::Counter,
                "Gauge" => MetricKind::Gauge,
                "Histogram" => MetricKind::Histogram,
                other => panic!("{}: unknown kind {other:?} in doc", declared.ident),
            };
            assert_eq!(
                kind, spec.kind,
                "{}: kind in doc vs catalogue",
                declared.ident
            );
            // `label `result` (`commit` | `abort`)`: the parenthesis lists values, not labels.
            let labels_part = head.split('(').next().expect("one item");
            let documented_labels: Vec<&str> = labels_part.split('`').skip(1).step_by(2).collect();
            assert_eq!(
                documented_labels, spec.labels,
                "{}: labels in doc vs catalogue",
                declared.ident
            );
        }
    }

    #[test]
    fn units_map_to_metrics_units() {
        let commit = spec(FANOUT_COMMIT_DURATION_SECONDS).expect("catalogued");
        assert_eq!(commit.metrics_unit(), Unit::Seconds);
        let batch = spec(FANOUT_BATCH_RECORDS).expect("catalogued");
        assert_eq!(batch.metrics_unit(), Unit::Count);
        assert!(spec("dispatch_nonexistent_total").is_none());
    }
}

#[cfg(test)]
mod docs_tests {
    use super::CATALOGUE;

    /// `docs/metrics.md` is what operators read: it must list exactly the catalogue.
    #[test]
    fn docs_list_every_metric() {
        let docs = include_str!("../../../docs/metrics.md");
        for spec in CATALOGUE {
            assert!(
                docs.contains(&format!("`{}`", spec.name)),
                "docs/metrics.md does not list {}",
                spec.name
            );
        }
        for word in docs.split('`').skip(1).step_by(2) {
            let is_metric_name = word.starts_with("dispatch_")
                && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if is_metric_name {
                assert!(
                    CATALOGUE.iter().any(|spec| spec.name == word),
                    "docs/metrics.md lists {word}, which is not in the catalogue"
                );
            }
        }
    }
}
