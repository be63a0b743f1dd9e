//! The subscriptions table: a pure fold of the compacted `dispatch.subscriptions` log, applied
//! record by record in log order, identically in every process that reads the topic.
//!
//! # Why a fold with rules
//! Kafka is the only store of subscriptions: the admin API writes records, and every role
//! (fan-out, sender, API) rebuilds the table by reading the topic's single partition from the
//! beginning. One partition gives one total order of writes, so if the fold is a pure function of
//! that order, every process ends up with the same table, without talking to the others. That is
//! what optimistic concurrency rests on: the log decides, not whoever answered the HTTP request.
//!
//! # Rules ([`SubscriptionTable::apply`])
//! - **Tombstone** (no value): delete the subscription if present ([`FoldOutcome::Deleted`]),
//!   otherwise [`FoldOutcome::Ignored`] — a tombstone for an unknown id is normal after
//!   compaction removed what it deleted, and harmless.
//! - **Malformed record** — empty id, an id that differs from the record key, empty account id,
//!   version 0, an event-type pattern [`SubscriptionIndex::upsert`] refuses: rejected, the table
//!   is unchanged ([`check_record`] states these checks on their own, so a writer can refuse to
//!   write what every reader would refuse). The key must equal the id because compaction keeps
//!   one record per *key*: a record filed under another key would survive or vanish with the
//!   wrong subscription.
//! - **Unknown id**: accepted whatever its version (≥ 1). Compaction removes older records of a
//!   key, so a view started later may see only a subscription's newest record (version 7, say)
//!   and must take it as it is.
//! - **Known id**: accepted only if `version == current.version + 1` ([`FoldOutcome::Updated`]),
//!   otherwise [`Rejection::StaleVersion`]. Two updates written on the same base version (two
//!   admin requests racing) both say `current + 1`; the first in the log is accepted and moves
//!   the version, so the second no longer fits — "first in the log wins", identically in every
//!   process. An update must not change `account_id` either: an account owns its subscriptions,
//!   and moving one would let a token scoped to the new account reach the old account's
//!   endpoint and secrets ([`Rejection::AccountChanged`]).
//! - **Exact duplicate** of the current record (same version, same content, e.g. a writer's
//!   retry after a timeout that had in fact landed): [`FoldOutcome::Duplicate`], no change. This
//!   is safe to accept because it describes exactly the state every view already holds.
//!
//! # Known limitation: compaction and rejected records
//! Compaction keeps only the **last** record of each key, whether the fold accepted it or not.
//! If a rejected record is the last one of its key, a view built from scratch after compaction
//! no longer sees the record that won:
//! - a losing update (stale version) becomes the only record of its key, so a new view accepts
//!   it as an unknown id, while long-running views keep the winner — the views diverge;
//! - a malformed record becomes the only record of its key, so a new view has no subscription
//!   at all under that id.
//!
//! The same applies to a tombstone overtaken by an update written on the version it deleted:
//! every view accepts that update as a new subscription (consistently, but the subscription
//! comes back).
//!
//! The fold cannot fix this on its own — the information is gone from the log. Writers must
//! therefore **re-assert the winner** after a write was rejected: read the current record
//! ([`SubscriptionTable::get`]) and write it again with `version + 1`. Long-running views accept
//! it as the next version; views built later see it as the last record of the key; all agree
//! again. This is the admin API's job (it learns of the rejection through the view's
//! read-your-writes wait). Until it happens — or if the writer dies first — a view rebuilt after
//! the log was compacted may differ, and compaction only runs on closed segments (the topic rolls
//! hourly), which leaves the writer a wide window but no guarantee.
//!
//! # Matching
//! The table keeps the full records (for the sender and the API) and a [`SubscriptionIndex`]
//! (for the fan-out) in sync: a record is accepted only if the index accepts it, and every
//! accepted change goes to both.

use std::collections::{BTreeMap, BTreeSet};

use dispatch_proto::dispatch::v1::Subscription;

use crate::matching::{Attributes, EventPattern, MatchRule, RuleError, SubscriptionIndex};

/// Why the fold refused a subscription record. The table is unchanged by a refused record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The record's `id` is empty.
    #[error("subscription record under key {key:?} has no id")]
    MissingId {
        /// The record's key.
        key: String,
    },
    /// The record's `id` is not its key.
    #[error("subscription record under key {key:?} has id {id:?}; the key must be the id")]
    KeyMismatch {
        /// The record's key.
        key: String,
        /// The id inside the record.
        id: String,
    },
    /// The record's `account_id` is empty.
    #[error("subscription {id} has no account id")]
    MissingAccount {
        /// The subscription.
        id: String,
    },
    /// Versions start at 1; 0 is what a writer that forgot to set one produces.
    #[error("subscription {id} has version 0; versions start at 1")]
    VersionZero {
        /// The subscription.
        id: String,
    },
    /// An update that was not written on the current version: it lost a race, or it is a
    /// replay of an old record.
    #[error("subscription {id}: version {got} does not follow the current version {current}")]
    StaleVersion {
        /// The subscription.
        id: String,
        /// The version the table holds.
        current: u64,
        /// The version of the refused record.
        got: u64,
    },
    /// An update that moves a subscription to another account.
    #[error("subscription {id} belongs to account {current}; an update cannot move it to {got}")]
    AccountChanged {
        /// The subscription.
        id: String,
        /// The account that owns it.
        current: String,
        /// The account the refused record names.
        got: String,
    },
    /// One of the event-type patterns is invalid.
    #[error("{0}")]
    InvalidPattern(RuleError),
    /// The record's key or value could not be decoded. The fold never produces this (it is
    /// handed decoded records); readers of the topic use it so that every record of the log has
    /// an outcome.
    #[error("undecodable subscription record: {error}")]
    Undecodable {
        /// What the decoder said.
        error: String,
    },
}

impl Rejection {
    /// A short, bounded label for metrics (`reason`): one per variant, never an id.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingId { .. } => "missing_id",
            Rejection::KeyMismatch { .. } => "key_mismatch",
            Rejection::MissingAccount { .. } => "missing_account",
            Rejection::VersionZero { .. } => "version_zero",
            Rejection::StaleVersion { .. } => "stale_version",
            Rejection::AccountChanged { .. } => "account_changed",
            Rejection::InvalidPattern(_) => "invalid_pattern",
            Rejection::Undecodable { .. } => "undecodable",
        }
    }
}

/// What applying one record did to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldOutcome {
    /// A subscription the table did not hold was added, at this version.
    Created {
        /// Its version.
        version: u64,
    },
    /// A subscription moved to this version (the previous one + 1).
    Updated {
        /// Its new version.
        version: u64,
    },
    /// The record repeats the current one exactly (same version, same content): no change.
    Duplicate {
        /// The current version.
        version: u64,
    },
    /// A tombstone removed the subscription.
    Deleted,
    /// A tombstone for a subscription the table does not hold: no change.
    Ignored,
    /// The record was refused; the table is unchanged.
    Rejected(Rejection),
}

impl FoldOutcome {
    /// Whether the table changed.
    #[must_use]
    pub fn changed(&self) -> bool {
        matches!(
            self,
            FoldOutcome::Created { .. } | FoldOutcome::Updated { .. } | FoldOutcome::Deleted
        )
    }

    /// The rejection's metric label (`stale_version`, `invalid_pattern`, …), or `None` if the
    /// record was not rejected.
    #[must_use]
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            FoldOutcome::Rejected(rejection) => Some(rejection.reason()),
            _ => None,
        }
    }

    /// The rejection, if the record was rejected.
    #[must_use]
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            FoldOutcome::Rejected(rejection) => Some(rejection),
            _ => None,
        }
    }
}

/// The checks that depend on one record alone (see the module documentation): a non-empty id
/// equal to `key`, an account, a version of at least 1, valid event-type patterns. The fold
/// applies them first; a writer applies them before writing, because a record every reader
/// refuses can still become the last record of its key (see "Known limitation").
pub fn check_record(key: &str, subscription: &Subscription) -> Result<(), Rejection> {
    if subscription.id.is_empty() {
        return Err(Rejection::MissingId {
            key: key.to_owned(),
        });
    }
    if subscription.id != key {
        return Err(Rejection::KeyMismatch {
            key: key.to_owned(),
            id: subscription.id.clone(),
        });
    }
    if subscription.account_id.is_empty() {
        return Err(Rejection::MissingAccount {
            id: subscription.id.clone(),
        });
    }
    if subscription.version == 0 {
        return Err(Rejection::VersionZero {
            id: subscription.id.clone(),
        });
    }
    for text in &subscription.event_types {
        EventPattern::parse(text).map_err(|source| {
            Rejection::InvalidPattern(RuleError {
                subscription_id: subscription.id.clone(),
                source,
            })
        })?;
    }
    Ok(())
}

/// Every subscription, folded from the `dispatch.subscriptions` log (see the module
/// documentation for the rules), with an index for matching.
#[derive(Debug, Default)]
pub struct SubscriptionTable {
    /// Sorted by id, so listings are stable and can be paged.
    records: BTreeMap<String, Subscription>,
    /// Ids per account, for an account's listing without a scan.
    by_account: BTreeMap<String, BTreeSet<String>>,
    /// The match rules of the same records.
    index: SubscriptionIndex,
}

impl SubscriptionTable {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the record `key` → `value` (`None`: a tombstone), the next one in log order.
    pub fn apply(&mut self, key: &str, value: Option<Subscription>) -> FoldOutcome {
        match value {
            None => match self.remove(key) {
                Some(_) => FoldOutcome::Deleted,
                None => FoldOutcome::Ignored,
            },
            Some(subscription) => self
                .upsert(key, subscription)
                .unwrap_or_else(FoldOutcome::Rejected),
        }
    }

    fn upsert(&mut self, key: &str, subscription: Subscription) -> Result<FoldOutcome, Rejection> {
        check_record(key, &subscription)?;
        let outcome = match self.records.get(key) {
            None => FoldOutcome::Created {
                version: subscription.version,
            },
            Some(current) if *current == subscription => {
                return Ok(FoldOutcome::Duplicate {
                    version: current.version,
                });
            }
            Some(current) => {
                if current.version.checked_add(1) != Some(subscription.version) {
                    return Err(Rejection::StaleVersion {
                        id: subscription.id,
                        current: current.version,
                        got: subscription.version,
                    });
                }
                if current.account_id != subscription.account_id {
                    return Err(Rejection::AccountChanged {
                        id: subscription.id,
                        current: current.account_id.clone(),
                        got: subscription.account_id,
                    });
                }
                FoldOutcome::Updated {
                    version: subscription.version,
                }
            }
        };
        // The index refuses nothing check_record accepted; if it ever does, the record is
        // refused as a whole so records and index never disagree.
        self.index
            .upsert(MatchRule::from(&subscription))
            .map_err(Rejection::InvalidPattern)?;
        self.by_account
            .entry(subscription.account_id.clone())
            .or_default()
            .insert(subscription.id.clone());
        self.records.insert(subscription.id.clone(), subscription);
        Ok(outcome)
    }

    fn remove(&mut self, id: &str) -> Option<Subscription> {
        let removed = self.records.remove(id)?;
        self.index.remove(id);
        if let Some(ids) = self.by_account.get_mut(&removed.account_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_account.remove(&removed.account_id);
            }
        }
        Some(removed)
    }

    /// The current record of a subscription.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.records.get(id)
    }

    /// Every subscription, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.records.values()
    }

    /// How many subscriptions the table holds, disabled ones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the table holds no subscription.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The subscriptions of one account, sorted by id.
    pub fn for_account<'a>(&'a self, account_id: &str) -> impl Iterator<Item = &'a Subscription> {
        self.by_account
            .get(account_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.records.get(id))
    }

    /// The subscriptions that want an event of `account_id` with this type and these
    /// attributes (enabled, matching pattern, passing filter), found through the index, sorted
    /// by id.
    #[must_use]
    pub fn matching<A: Attributes + ?Sized>(
        &self,
        account_id: &str,
        event_type: &str,
        attributes: &A,
    ) -> Vec<&Subscription> {
        self.index
            .matches(account_id, event_type, attributes)
            .into_iter()
            .filter_map(|id| self.records.get(id))
            .collect()
    }

    /// The match index of the same records.
    #[must_use]
    pub fn index(&self) -> &SubscriptionIndex {
        &self.index
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn subscription(id: &str, account: &str, version: u64, url: &str) -> Subscription {
        Subscription {
            id: id.to_owned(),
            account_id: account.to_owned(),
            url: url.to_owned(),
            event_types: vec!["image.**".to_owned()],
            enabled: true,
            version,
            ..Subscription::default()
        }
    }

    fn url_of<'a>(table: &'a SubscriptionTable, id: &str) -> Option<&'a str> {
        table.get(id).map(|s| s.url.as_str())
    }

    fn no_attributes() -> HashMap<String, String> {
        HashMap::new()
    }

    /// Every accepted record is in both the records and the index, and nothing else is.
    fn assert_consistent(table: &SubscriptionTable) {
        assert_eq!(table.len(), table.index.len());
        for subscription in table.iter() {
            assert_eq!(
                table.index.get(&subscription.id),
                Some(&MatchRule::from(subscription))
            );
            assert!(
                table
                    .for_account(&subscription.account_id)
                    .any(|s| s.id == subscription.id)
            );
        }
        let listed: usize = table.by_account.values().map(BTreeSet::len).sum();
        assert_eq!(listed, table.len());
    }

    #[test]
    fn a_record_for_an_unknown_id_creates_it_at_any_version() {
        let mut table = SubscriptionTable::new();
        let outcome = table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 1, "https://a")),
        );
        assert_eq!(outcome, FoldOutcome::Created { version: 1 });
        assert!(outcome.changed());
        assert_eq!(outcome.reason(), None);
        // After compaction a view may see only a later version first.
        let outcome = table.apply(
            "sub_2",
            Some(subscription("sub_2", "acc_a", 7, "https://b")),
        );
        assert_eq!(outcome, FoldOutcome::Created { version: 7 });
        assert_eq!(table.len(), 2);
        assert_eq!(url_of(&table, "sub_2"), Some("https://b"));
        assert_consistent(&table);
    }

    #[test]
    fn updates_in_order_are_applied() {
        let mut table = SubscriptionTable::new();
        table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 1, "https://v1")),
        );
        for version in 2..=4 {
            let url = format!("https://v{version}");
            let outcome = table.apply("sub_1", Some(subscription("sub_1", "acc_a", version, &url)));
            assert_eq!(outcome, FoldOutcome::Updated { version });
            assert_eq!(url_of(&table, "sub_1"), Some(url.as_str()));
        }
        assert_eq!(table.get("sub_1").map(|s| s.version), Some(4));
        assert_eq!(table.len(), 1);
        assert_consistent(&table);
    }

    #[test]
    fn a_stale_or_skipping_update_is_rejected() {
        let mut table = SubscriptionTable::new();
        table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 1, "https://v1")),
        );
        table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 2, "https://v2")),
        );
        for (version, label) in [(1, "older"), (2, "same"), (4, "skipping")] {
            let outcome = table.apply(
                "sub_1",
                Some(subscription("sub_1", "acc_a", version, "https://stale")),
            );
            assert_eq!(
                outcome,
                FoldOutcome::Rejected(Rejection::StaleVersion {
                    id: "sub_1".into(),
                    current: 2,
                    got: version,
                }),
                "{label}"
            );
            assert_eq!(outcome.reason(), Some("stale_version"));
            assert!(!outcome.changed());
        }
        assert_eq!(url_of(&table, "sub_1"), Some("https://v2"));
        assert_consistent(&table);
    }

    #[test]
    fn two_updates_on_the_same_base_first_in_the_log_wins() {
        let log = [
            (
                "sub_1",
                Some(subscription("sub_1", "acc_a", 1, "https://base")),
            ),
            (
                "sub_1",
                Some(subscription("sub_1", "acc_a", 2, "https://first")),
            ),
            (
                "sub_1",
                Some(subscription("sub_1", "acc_a", 2, "https://second")),
            ),
        ];
        // Two processes folding the same log agree record by record.
        let fold = || {
            let mut table = SubscriptionTable::new();
            let outcomes: Vec<FoldOutcome> = log
                .iter()
                .map(|(key, value)| table.apply(key, value.clone()))
                .collect();
            (table, outcomes)
        };
        let (first, first_outcomes) = fold();
        let (second, second_outcomes) = fold();
        assert_eq!(first_outcomes, second_outcomes);
        assert_eq!(first_outcomes[1], FoldOutcome::Updated { version: 2 });
        assert_eq!(
            first_outcomes[2],
            FoldOutcome::Rejected(Rejection::StaleVersion {
                id: "sub_1".into(),
                current: 2,
                got: 2,
            })
        );
        assert_eq!(url_of(&first, "sub_1"), Some("https://first"));
        assert_eq!(url_of(&second, "sub_1"), Some("https://first"));
        // The loser built on the winner (version 3) is accepted.
        let mut table = first;
        let outcome = table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 3, "https://second")),
        );
        assert_eq!(outcome, FoldOutcome::Updated { version: 3 });
    }

    #[test]
    fn an_exact_repeat_of_the_current_record_is_a_duplicate() {
        let mut table = SubscriptionTable::new();
        let record = subscription("sub_1", "acc_a", 1, "https://v1");
        table.apply("sub_1", Some(record.clone()));
        let outcome = table.apply("sub_1", Some(record.clone()));
        assert_eq!(outcome, FoldOutcome::Duplicate { version: 1 });
        assert!(!outcome.changed());
        assert_eq!(outcome.reason(), None);
        assert_eq!(table.get("sub_1"), Some(&record));
        // Same version, other content: a conflict, not a duplicate.
        let outcome = table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 1, "https://other")),
        );
        assert_eq!(outcome.reason(), Some("stale_version"));
    }

    #[test]
    fn tombstones_delete_and_a_deleted_id_can_be_created_again() {
        let mut table = SubscriptionTable::new();
        table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 3, "https://old")),
        );
        table.apply(
            "sub_2",
            Some(subscription("sub_2", "acc_a", 1, "https://keep")),
        );
        assert_eq!(table.apply("sub_1", None), FoldOutcome::Deleted);
        assert_eq!(table.get("sub_1"), None);
        assert_eq!(table.len(), 1);
        assert!(
            table
                .matching("acc_a", "image.generation.completed", &no_attributes())
                .iter()
                .all(|s| s.id != "sub_1")
        );
        assert_consistent(&table);
        // Deleting again, or deleting what never existed, changes nothing.
        assert_eq!(table.apply("sub_1", None), FoldOutcome::Ignored);
        assert_eq!(table.apply("sub_never", None), FoldOutcome::Ignored);
        assert!(!FoldOutcome::Ignored.changed());
        // The id is unknown again: any version creates it.
        let outcome = table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_b", 1, "https://new")),
        );
        assert_eq!(outcome, FoldOutcome::Created { version: 1 });
        assert_eq!(
            table.get("sub_1").map(|s| s.account_id.as_str()),
            Some("acc_b")
        );
        assert_eq!(table.for_account("acc_a").count(), 1);
        assert_consistent(&table);
    }

    #[test]
    fn a_record_whose_id_is_not_its_key_is_rejected() {
        let mut table = SubscriptionTable::new();
        let outcome = table.apply(
            "sub_1",
            Some(subscription("sub_2", "acc_a", 1, "https://x")),
        );
        assert_eq!(
            outcome,
            FoldOutcome::Rejected(Rejection::KeyMismatch {
                key: "sub_1".into(),
                id: "sub_2".into(),
            })
        );
        assert_eq!(outcome.reason(), Some("key_mismatch"));
        let outcome = table.apply("", Some(subscription("", "acc_a", 1, "https://x")));
        assert_eq!(outcome.reason(), Some("missing_id"));
        assert!(table.is_empty());
        assert!(table.index().is_empty());
    }

    #[test]
    fn a_record_without_account_or_version_is_rejected() {
        let mut table = SubscriptionTable::new();
        let outcome = table.apply("sub_1", Some(subscription("sub_1", "", 1, "https://x")));
        assert_eq!(outcome.reason(), Some("missing_account"));
        let outcome = table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 0, "https://x")),
        );
        assert_eq!(
            outcome,
            FoldOutcome::Rejected(Rejection::VersionZero { id: "sub_1".into() })
        );
        assert_eq!(outcome.reason(), Some("version_zero"));
        assert!(table.is_empty());
    }

    #[test]
    fn a_record_with_a_bad_pattern_is_rejected_and_the_table_kept() {
        let mut table = SubscriptionTable::new();
        table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 1, "https://v1")),
        );
        let mut bad = subscription("sub_1", "acc_a", 2, "https://v2");
        bad.event_types = vec!["studio.**".into(), "image.gen*".into()];
        let outcome = table.apply("sub_1", Some(bad.clone()));
        assert_eq!(outcome.reason(), Some("invalid_pattern"));
        assert_eq!(
            outcome.rejection().map(ToString::to_string).as_deref(),
            Some(
                "subscription sub_1: event type pattern \"image.gen*\": segment \"gen*\" mixes \
                 `*` with other characters; `*` stands for one whole segment and `**` for all the \
                 rest"
            )
        );
        assert_eq!(
            check_record("sub_1", &bad),
            Err(outcome.rejection().cloned().expect("rejected"))
        );
        // Unchanged: still version 1, still matching its old pattern.
        assert_eq!(table.get("sub_1").map(|s| s.version), Some(1));
        assert_eq!(
            table
                .matching("acc_a", "image.generation.completed", &no_attributes())
                .len(),
            1
        );
        assert!(
            table
                .matching("acc_a", "studio.campaign.completed", &no_attributes())
                .is_empty()
        );
        // A new id with a bad pattern is not added at all.
        let mut bad_new = subscription("sub_2", "acc_a", 1, "https://x");
        bad_new.event_types = vec!["".into()];
        assert_eq!(
            table.apply("sub_2", Some(bad_new)).reason(),
            Some("invalid_pattern")
        );
        assert_eq!(table.get("sub_2"), None);
        assert_consistent(&table);
    }

    #[test]
    fn an_update_cannot_move_a_subscription_to_another_account() {
        let mut table = SubscriptionTable::new();
        table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_a", 1, "https://a")),
        );
        let outcome = table.apply(
            "sub_1",
            Some(subscription("sub_1", "acc_b", 2, "https://b")),
        );
        assert_eq!(
            outcome,
            FoldOutcome::Rejected(Rejection::AccountChanged {
                id: "sub_1".into(),
                current: "acc_a".into(),
                got: "acc_b".into(),
            })
        );
        assert_eq!(outcome.reason(), Some("account_changed"));
        assert_eq!(url_of(&table, "sub_1"), Some("https://a"));
        assert_eq!(table.for_account("acc_b").count(), 0);
        assert_consistent(&table);
    }

    #[test]
    fn matching_goes_through_the_index_and_follows_updates() {
        let mut table = SubscriptionTable::new();
        let mut filtered = subscription("sub_eu", "acc_a", 1, "https://eu");
        filtered.filter = [(
            "region".to_owned(),
            dispatch_proto::dispatch::v1::AttributeValues {
                values: vec!["eu-west".into()],
            },
        )]
        .into();
        let mut studio = subscription("sub_studio", "acc_a", 1, "https://studio");
        studio.event_types = vec!["studio.*.completed".into()];
        let log = [
            subscription("sub_all", "acc_a", 1, "https://all"),
            filtered,
            studio,
            subscription("sub_other", "acc_b", 1, "https://other"),
        ];
        for record in log {
            let id = record.id.clone();
            assert!(table.apply(&id, Some(record)).changed());
        }
        let ids = |found: Vec<&Subscription>| -> Vec<String> {
            found.into_iter().map(|s| s.id.clone()).collect()
        };
        let eu: HashMap<String, String> = [("region".to_owned(), "eu-west".to_owned())].into();
        assert_eq!(
            ids(table.matching("acc_a", "image.generation.completed", &eu)),
            ["sub_all", "sub_eu"]
        );
        assert_eq!(
            ids(table.matching("acc_a", "image.generation.completed", &no_attributes())),
            ["sub_all"]
        );
        assert_eq!(
            ids(table.matching("acc_a", "studio.campaign.completed", &eu)),
            ["sub_studio"]
        );
        assert_eq!(
            ids(table.matching("acc_b", "image.generation.completed", &eu)),
            ["sub_other"]
        );
        assert!(
            table
                .matching("acc_c", "image.generation.completed", &eu)
                .is_empty()
        );

        // Disabling by an update stops matches at once; the record stays listed.
        let mut disabled = subscription("sub_all", "acc_a", 2, "https://all");
        disabled.enabled = false;
        disabled.disabled_reason = "endpoint answered 410 Gone".into();
        assert_eq!(
            table.apply("sub_all", Some(disabled)),
            FoldOutcome::Updated { version: 2 }
        );
        assert_eq!(
            ids(table.matching("acc_a", "image.generation.completed", &eu)),
            ["sub_eu"]
        );
        let listed: Vec<&str> = table.for_account("acc_a").map(|s| s.id.as_str()).collect();
        assert_eq!(listed, ["sub_all", "sub_eu", "sub_studio"]);
        let all: Vec<&str> = table.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(all, ["sub_all", "sub_eu", "sub_other", "sub_studio"]);
        assert_consistent(&table);
    }

    #[test]
    fn every_rejection_has_a_distinct_bounded_label() {
        let rejections = [
            Rejection::MissingId { key: "k".into() },
            Rejection::KeyMismatch {
                key: "k".into(),
                id: "i".into(),
            },
            Rejection::MissingAccount { id: "i".into() },
            Rejection::VersionZero { id: "i".into() },
            Rejection::StaleVersion {
                id: "i".into(),
                current: 1,
                got: 1,
            },
            Rejection::AccountChanged {
                id: "i".into(),
                current: "a".into(),
                got: "b".into(),
            },
            Rejection::InvalidPattern(RuleError {
                subscription_id: "i".into(),
                source: crate::matching::PatternError::Empty,
            }),
            Rejection::Undecodable {
                error: "bad".into(),
            },
        ];
        let labels: BTreeSet<&str> = rejections.iter().map(Rejection::reason).collect();
        assert_eq!(labels.len(), rejections.len());
        assert!(
            labels
                .iter()
                .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }
}
