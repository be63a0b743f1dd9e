//! Which subscriptions want an event: event-type patterns, attribute filters, and an index that
//! answers "who wants this event?" without scanning every subscription.
//!
//! # Patterns
//! Event types are dot-separated segments of `[a-z0-9_]` (`image.generation.completed`). A
//! subscription lists exact types or patterns:
//! - `*` stands for exactly one whole segment: `image.*.completed`, `image.generation.*`;
//! - `**` stands for one or more segments, and only as the last segment: `studio.**` matches
//!   `studio.campaign.completed` but not `studio` itself; `**` alone matches every event.
//!
//! A wildcard is always a whole segment: `image.gen*` is refused rather than read as a prefix.
//!
//! # The index
//! Fan-out looks up every event, so the cost of a lookup must not grow with the number of
//! subscriptions. [`SubscriptionIndex`] keeps, per account, a trie of pattern segments: each node
//! has children by exact segment, one child for `*`, the subscriptions whose pattern ends there,
//! and those whose pattern continues with `**`. A lookup walks the event type's segments, taking
//! at each level the exact child and the `*` child, so it visits at most 2^(segments + 1) nodes
//! (event types have 2 to 4 segments: at most 31), plus the size of the answer, independent of
//! other accounts' subscriptions and of patterns that do not match. Attribute filters are checked
//! afterwards, on the candidates only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

/// A subscription as far as matching is concerned (`From<&Subscription>` converts the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchRule {
    /// The subscription's id (`sub_…`).
    pub subscription_id: String,
    /// The account that owns it: only this account's events can match.
    pub account_id: String,
    /// Exact event types or patterns (see the module documentation).
    pub event_types: Vec<String>,
    /// Attribute filter: every key must be among the event's attributes, with one of the listed
    /// values. An empty list of values accepts no value, so such a rule matches nothing.
    pub filter: BTreeMap<String, Vec<String>>,
    /// Disabled subscriptions never match.
    pub enabled: bool,
}

impl From<&dispatch_proto::dispatch::v1::Subscription> for MatchRule {
    fn from(subscription: &dispatch_proto::dispatch::v1::Subscription) -> Self {
        MatchRule {
            subscription_id: subscription.id.clone(),
            account_id: subscription.account_id.clone(),
            event_types: subscription.event_types.clone(),
            filter: subscription
                .filter
                .iter()
                .map(|(key, allowed)| (key.clone(), allowed.values.clone()))
                .collect(),
            enabled: subscription.enabled,
        }
    }
}

impl MatchRule {
    /// Whether an event with these attributes passes this rule's attribute filter.
    #[must_use]
    pub fn filter_accepts<A: Attributes + ?Sized>(&self, attributes: &A) -> bool {
        self.filter.iter().all(|(key, allowed)| {
            attributes
                .attribute(key)
                .is_some_and(|value| allowed.iter().any(|allowed| allowed == value))
        })
    }
}

/// An event's attributes, looked up by key. Implemented for the maps events carry them in.
pub trait Attributes {
    /// The value of attribute `key`, if the event has it.
    fn attribute(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> Attributes for HashMap<String, String, S> {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Attributes for BTreeMap<String, String> {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// The longest pattern accepted, in bytes: far above any real event type, low enough that a
/// hostile API request cannot make the index hold megabytes per pattern.
pub const MAX_PATTERN_LEN: usize = 255;

/// A parsed event-type pattern (see the module documentation for the syntax).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    /// This exact segment.
    Exact(String),
    /// `*`: any one segment.
    One,
    /// `**`: one or more segments; always the last segment of a pattern.
    Rest,
}

/// Why an event-type pattern is refused. Each message names the pattern and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("event type pattern is empty")]
    Empty,
    /// The pattern is longer than [`MAX_PATTERN_LEN`].
    #[error("event type pattern is {len} bytes long, at most {MAX_PATTERN_LEN} are allowed")]
    TooLong {
        /// The pattern's length in bytes.
        len: usize,
    },
    /// Two dots in a row, or a dot at either end.
    #[error(
        "event type pattern {pattern:?} has an empty segment (a leading, trailing or doubled `.`)"
    )]
    EmptySegment {
        /// The pattern.
        pattern: String,
    },
    /// A character outside `[a-z0-9_]`, `.` and the wildcards.
    #[error(
        "event type pattern {pattern:?} contains {character:?}; use lowercase letters, digits, `_`, `.` and the wildcards `*` and `**`"
    )]
    InvalidCharacter {
        /// The pattern.
        pattern: String,
        /// The first character refused.
        character: char,
    },
    /// A segment mixing `*` with other characters (`gen*`, `***`).
    #[error(
        "event type pattern {pattern:?}: segment {segment:?} mixes `*` with other characters; `*` stands for one whole segment and `**` for all the rest"
    )]
    PartialWildcard {
        /// The pattern.
        pattern: String,
        /// The offending segment.
        segment: String,
    },
    /// `**` somewhere other than the last segment.
    #[error("event type pattern {pattern:?}: `**` may only be the last segment")]
    RestNotLast {
        /// The pattern.
        pattern: String,
    },
}

impl EventPattern {
    /// Parses an exact event type or a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong { len: text.len() });
        }
        let pattern = || text.to_owned();
        let mut segments = Vec::new();
        let mut parts = text.split('.').peekable();
        while let Some(part) = parts.next() {
            let segment = match part {
                "" => return Err(PatternError::EmptySegment { pattern: pattern() }),
                "*" => Segment::One,
                "**" if parts.peek().is_some() => {
                    return Err(PatternError::RestNotLast { pattern: pattern() });
                }
                "**" => Segment::Rest,
                _ => {
                    if let Some(character) = part.chars().find(|c| !is_name_char(*c) && *c != '*') {
                        return Err(PatternError::InvalidCharacter {
                            pattern: pattern(),
                            character,
                        });
                    }
                    if part.contains('*') {
                        return Err(PatternError::PartialWildcard {
                            pattern: pattern(),
                            segment: part.to_owned(),
                        });
                    }
                    Segment::Exact(part.to_owned())
                }
            };
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is an exact event type, without wildcards.
    #[must_use]
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|segment| matches!(segment, Segment::Exact(_)))
    }

    /// Whether the pattern matches this event type. (The index answers the same question for
    /// many patterns at once; this is for one.)
    #[must_use]
    pub fn matches(&self, event_type: &str) -> bool {
        segments_match(&self.segments, Some(event_type))
    }

    /// Whether the pattern matches at least one of `known_types` (the catalog's type names):
    /// the admin API refuses patterns that can never match anything, such as a typo.
    #[must_use]
    pub fn matches_any(&self, known_types: &[&str]) -> bool {
        known_types
            .iter()
            .any(|event_type| self.matches(event_type))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Splits off the first segment of a non-empty remainder of an event type.
fn first_segment(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('.') {
        Some((head, tail)) => (head, Some(tail)),
        None => (rest, None),
    }
}

/// `rest` is what is left of the event type; `None` once every segment has been consumed.
fn segments_match(segments: &[Segment], rest: Option<&str>) -> bool {
    match (segments.split_first(), rest) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        // `**` is last and `rest` has at least one segment.
        (Some((Segment::Rest, _)), Some(_)) => true,
        (Some((Segment::One, tail)), Some(rest)) => segments_match(tail, first_segment(rest).1),
        (Some((Segment::Exact(exact), tail)), Some(rest)) => {
            let (head, remainder) = first_segment(rest);
            head == exact && segments_match(tail, remainder)
        }
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for EventPattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// A rule refused by [`SubscriptionIndex::upsert`] because one of its patterns is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subscription {subscription_id}: {source}")]
pub struct RuleError {
    /// The subscription whose rule was refused.
    pub subscription_id: String,
    /// What is wrong with its first invalid pattern.
    #[source]
    pub source: PatternError,
}

/// Every subscription's rule, indexed for lookup by (account, event type). See the module
/// documentation for the structure and its cost.
#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    rules: HashMap<String, IndexedRule>,
    /// Per account, the trie of its enabled subscriptions' patterns.
    accounts: HashMap<String, TrieNode>,
}

#[derive(Debug)]
struct IndexedRule {
    rule: MatchRule,
    /// Parsed, sorted and deduplicated.
    patterns: Vec<EventPattern>,
}

#[derive(Debug, Default)]
struct TrieNode {
    exact: HashMap<String, TrieNode>,
    one: Option<Box<TrieNode>>,
    /// Subscriptions with a pattern that ends at this node.
    ends_here: BTreeSet<String>,
    /// Subscriptions with a pattern that continues with `**` after this node.
    rest: BTreeSet<String>,
}

impl TrieNode {
    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.one.is_none()
            && self.ends_here.is_empty()
            && self.rest.is_empty()
    }

    fn insert(&mut self, segments: &[Segment], subscription_id: &str) {
        match segments.split_first() {
            None => {
                self.ends_here.insert(subscription_id.to_owned());
            }
            Some((Segment::Rest, _)) => {
                self.rest.insert(subscription_id.to_owned());
            }
            Some((Segment::One, tail)) => self
                .one
                .get_or_insert_with(Box::default)
                .insert(tail, subscription_id),
            Some((Segment::Exact(exact), tail)) => self
                .exact
                .entry(exact.clone())
                .or_default()
                .insert(tail, subscription_id),
        }
    }

    /// Removes one pattern's entry and prunes the nodes it leaves empty.
    fn remove(&mut self, segments: &[Segment], subscription_id: &str) {
        match segments.split_first() {
            None => {
                self.ends_here.remove(subscription_id);
            }
            Some((Segment::Rest, _)) => {
                self.rest.remove(subscription_id);
            }
            Some((Segment::One, tail)) => {
                if let Some(child) = self.one.as_mut() {
                    child.remove(tail, subscription_id);
                    if child.is_empty() {
                        self.one = None;
                    }
                }
            }
            Some((Segment::Exact(exact), tail)) => {
                if let Some(child) = self.exact.get_mut(exact) {
                    child.remove(tail, subscription_id);
                    if child.is_empty() {
                        self.exact.remove(exact);
                    }
                }
            }
        }
    }

    /// Adds the subscriptions of every pattern matching `rest` (what is left of the event type;
    /// `None` once every segment has been consumed).
    fn collect<'a>(&'a self, rest: Option<&str>, found: &mut BTreeSet<&'a str>) {
        let Some(rest) = rest else {
            found.extend(self.ends_here.iter().map(String::as_str));
            return;
        };
        found.extend(self.rest.iter().map(String::as_str));
        let (head, tail) = first_segment(rest);
        if let Some(child) = self.exact.get(head) {
            child.collect(tail, found);
        }
        if let Some(child) = &self.one {
            child.collect(tail, found);
        }
    }
}

impl SubscriptionIndex {
    /// An empty index.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule, or replaces the rule of the same subscription (its old patterns stop
    /// matching). Disabled rules are kept (for [`Self::get`]) but never match.
    ///
    /// If a pattern is invalid the rule is refused and the index is left as it was, the previous
    /// version of the rule included: the caller decides whether to keep it or [`Self::remove`]
    /// it. (The admin API validates patterns, so this only happens with records written by
    /// something else.)
    pub fn upsert(&mut self, rule: MatchRule) -> Result<(), RuleError> {
        let mut patterns = rule
            .event_types
            .iter()
            .map(|text| EventPattern::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| RuleError {
                subscription_id: rule.subscription_id.clone(),
                source,
            })?;
        patterns.sort_by(|a, b| a.text.cmp(&b.text));
        patterns.dedup_by(|a, b| a.text == b.text);

        self.remove(&rule.subscription_id);
        if rule.enabled {
            let root = self.accounts.entry(rule.account_id.clone()).or_default();
            for pattern in &patterns {
                root.insert(&pattern.segments, &rule.subscription_id);
            }
            if root.is_empty() {
                // A rule without event types leaves nothing to keep.
                self.accounts.remove(&rule.account_id);
            }
        }
        self.rules
            .insert(rule.subscription_id.clone(), IndexedRule { rule, patterns });
        Ok(())
    }

    /// Removes a subscription's rule; returns it if there was one.
    pub fn remove(&mut self, subscription_id: &str) -> Option<MatchRule> {
        let IndexedRule { rule, patterns } = self.rules.remove(subscription_id)?;
        if rule.enabled
            && let Some(root) = self.accounts.get_mut(&rule.account_id)
        {
            for pattern in &patterns {
                root.remove(&pattern.segments, subscription_id);
            }
            if root.is_empty() {
                self.accounts.remove(&rule.account_id);
            }
        }
        Some(rule)
    }

    /// How many rules the index holds, disabled ones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the index holds no rule.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule of a subscription.
    #[must_use]
    pub fn get(&self, subscription_id: &str) -> Option<&MatchRule> {
        self.rules.get(subscription_id).map(|indexed| &indexed.rule)
    }

    /// The ids of the subscriptions that want an event of `account_id` with this type and these
    /// attributes: enabled, of that account, with a matching pattern, passing the attribute
    /// filter. Sorted, each id once however many of its patterns match.
    #[must_use]
    pub fn matches<A: Attributes + ?Sized>(
        &self,
        account_id: &str,
        event_type: &str,
        attributes: &A,
    ) -> Vec<&str> {
        let Some(root) = self.accounts.get(account_id) else {
            return Vec::new();
        };
        let mut candidates = BTreeSet::new();
        root.collect(Some(event_type), &mut candidates);
        candidates
            .into_iter()
            .filter(|subscription_id| {
                self.rules.get(*subscription_id).is_some_and(|indexed| {
                    indexed.rule.enabled && indexed.rule.filter_accepts(attributes)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn rule(id: &str, account: &str, patterns: &[&str]) -> MatchRule {
        MatchRule {
            subscription_id: id.to_owned(),
            account_id: account.to_owned(),
            event_types: patterns.iter().map(|p| (*p).to_owned()).collect(),
            filter: BTreeMap::new(),
            enabled: true,
        }
    }

    fn with_filter(mut rule: MatchRule, filter: &[(&str, &[&str])]) -> MatchRule {
        rule.filter = filter
            .iter()
            .map(|(key, values)| {
                (
                    (*key).to_owned(),
                    values.iter().map(|v| (*v).to_owned()).collect(),
                )
            })
            .collect();
        rule
    }

    fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn index_of(rules: Vec<MatchRule>) -> SubscriptionIndex {
        let mut index = SubscriptionIndex::new();
        for rule in rules {
            index.upsert(rule).expect("test rules are valid");
        }
        index
    }

    fn pattern(text: &str) -> EventPattern {
        EventPattern::parse(text).expect("test patterns are valid")
    }

    #[test]
    fn patterns_match_by_whole_segments() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "image.generation.completed",
                "image.generation.completed",
                true,
            ),
            (
                "image.generation.completed",
                "image.generation.started",
                false,
            ),
            ("image.generation.completed", "image.generation", false),
            (
                "image.generation.completed",
                "image.generation.completed.x",
                false,
            ),
            ("image.*.completed", "image.generation.completed", true),
            ("image.*.completed", "image.upscale.completed", true),
            // `*` is exactly one segment: not zero, not two.
            ("image.*.completed", "image.completed", false),
            ("image.*.completed", "image.a.b.completed", false),
            ("image.generation.*", "image.generation.failed", true),
            ("image.generation.*", "image.generation", false),
            ("image.generation.*", "image.generation.a.b", false),
            ("*", "image", true),
            ("*", "image.generation", false),
            ("*.*", "operation.failed", true),
            ("studio.**", "studio.campaign.completed", true),
            ("studio.**", "studio.approval.revision_requested", true),
            ("studio.**", "studio.x", true),
            // `**` needs at least one segment.
            ("studio.**", "studio", false),
            ("studio.**", "studios.campaign.completed", false),
            ("studio.**", "map.studio.x", false),
            ("**", "webhook.test", true),
            ("**", "operation.failed", true),
            ("**", "a", true),
            ("*.**", "a", false),
            ("*.**", "a.b", true),
            ("*.campaign.**", "studio.campaign.progress", true),
            ("*.campaign.**", "studio.campaign", false),
            ("image", "image.generation.completed", false),
        ];
        for (text, event_type, expected) in cases {
            assert_eq!(
                pattern(text).matches(event_type),
                *expected,
                "{text} vs {event_type}"
            );
            // The index agrees with the pattern on its own.
            let index = index_of(vec![rule("sub_1", "acc", &[text])]);
            let found = index.matches("acc", event_type, &attributes(&[]));
            assert_eq!(
                !found.is_empty(),
                *expected,
                "index: {text} vs {event_type}"
            );
        }
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        let cases = [
            ("", PatternError::Empty),
            (
                long.as_str(),
                PatternError::TooLong {
                    len: MAX_PATTERN_LEN + 1,
                },
            ),
            (
                "image..completed",
                PatternError::EmptySegment {
                    pattern: "image..completed".to_owned(),
                },
            ),
            (
                ".image",
                PatternError::EmptySegment {
                    pattern: ".image".to_owned(),
                },
            ),
            (
                "image.",
                PatternError::EmptySegment {
                    pattern: "image.".to_owned(),
                },
            ),
            (
                ".",
                PatternError::EmptySegment {
                    pattern: ".".to_owned(),
                },
            ),
            (
                "image.gen*",
                PatternError::PartialWildcard {
                    pattern: "image.gen*".to_owned(),
                    segment: "gen*".to_owned(),
                },
            ),
            (
                "image.***",
                PatternError::PartialWildcard {
                    pattern: "image.***".to_owned(),
                    segment: "***".to_owned(),
                },
            ),
            (
                "studio.**.completed",
                PatternError::RestNotLast {
                    pattern: "studio.**.completed".to_owned(),
                },
            ),
            (
                "**.**",
                PatternError::RestNotLast {
                    pattern: "**.**".to_owned(),
                },
            ),
            (
                "Image.generation",
                PatternError::InvalidCharacter {
                    pattern: "Image.generation".to_owned(),
                    character: 'I',
                },
            ),
            (
                "image-generation",
                PatternError::InvalidCharacter {
                    pattern: "image-generation".to_owned(),
                    character: '-',
                },
            ),
            (
                "image. completed",
                PatternError::InvalidCharacter {
                    pattern: "image. completed".to_owned(),
                    character: ' ',
                },
            ),
            (
                "imagé.x",
                PatternError::InvalidCharacter {
                    pattern: "imagé.x".to_owned(),
                    character: 'é',
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(EventPattern::parse(text), Err(expected), "{text:?}");
        }
        assert_eq!(
            EventPattern::parse("image.gen*")
                .expect_err("partial wildcard")
                .to_string(),
            "event type pattern \"image.gen*\": segment \"gen*\" mixes `*` with other characters; \
             `*` stands for one whole segment and `**` for all the rest"
        );
        assert_eq!(
            EventPattern::parse("studio.**.x")
                .expect_err("rest not last")
                .to_string(),
            "event type pattern \"studio.**.x\": `**` may only be the last segment"
        );
    }

    #[test]
    fn pattern_accessors() {
        let exact = pattern("image.generation.completed");
        assert!(exact.is_exact());
        assert_eq!(exact.as_str(), "image.generation.completed");
        assert_eq!(exact.to_string(), "image.generation.completed");
        assert!(!pattern("image.*").is_exact());
        assert!(!pattern("**").is_exact());
        assert_eq!(
            "studio.**".parse::<EventPattern>(),
            Ok(pattern("studio.**"))
        );
    }

    #[test]
    fn patterns_that_match_no_known_type_are_detected() {
        let catalog = [
            "image.generation.started",
            "image.generation.completed",
            "studio.campaign.completed",
            "webhook.test",
        ];
        assert!(pattern("image.*.completed").matches_any(&catalog));
        assert!(pattern("studio.**").matches_any(&catalog));
        assert!(pattern("**").matches_any(&catalog));
        assert!(!pattern("image.generation.complete").matches_any(&catalog));
        assert!(!pattern("video.**").matches_any(&catalog));
        assert!(!pattern("*").matches_any(&catalog));
        assert!(!pattern("**").matches_any(&[]));
    }

    /// The table's subscriptions: one of each kind, over two accounts.
    fn table_index() -> SubscriptionIndex {
        index_of(vec![
            rule("sub_exact", "acc_a", &["image.generation.completed"]),
            rule("sub_one_mid", "acc_a", &["image.*.completed"]),
            rule("sub_one_last", "acc_a", &["image.generation.*"]),
            rule("sub_studio", "acc_a", &["studio.**"]),
            rule("sub_single", "acc_a", &["*"]),
            rule("sub_b_all", "acc_b", &["**"]),
            rule("sub_b_exact", "acc_b", &["image.generation.completed"]),
            MatchRule {
                enabled: false,
                ..rule("sub_disabled", "acc_a", &["**"])
            },
            with_filter(
                rule("sub_region", "acc_a", &["image.**"]),
                &[("region", &["eu-west", "us-east"])],
            ),
            with_filter(
                rule("sub_client", "acc_a", &["map.**"]),
                &[("client_id", &["c1"]), ("campaign_id", &["k1", "k2"])],
            ),
            with_filter(
                rule("sub_nothing", "acc_a", &["video.**"]),
                &[("region", &[])],
            ),
            rule(
                "sub_overlap",
                "acc_a",
                &[
                    "operation.failed",
                    "*.failed",
                    "operation.**",
                    "operation.failed",
                ],
            ),
        ])
    }

    /// One row of the table: account, event type, attributes, expected subscription ids.
    type TableRow<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

    #[test]
    fn table_of_accounts_types_and_filters() {
        let index = table_index();
        let eu = [("region", "eu-west")];
        let cases: &[TableRow<'_>] = &[
            (
                "acc_a",
                "image.generation.completed",
                &[],
                &["sub_exact", "sub_one_last", "sub_one_mid"],
            ),
            (
                "acc_a",
                "image.generation.completed",
                &eu,
                &["sub_exact", "sub_one_last", "sub_one_mid", "sub_region"],
            ),
            (
                "acc_a",
                "image.generation.completed",
                &[("region", "ap-south")],
                &["sub_exact", "sub_one_last", "sub_one_mid"],
            ),
            // Attribute values are compared exactly.
            (
                "acc_a",
                "image.generation.completed",
                &[("region", "EU-WEST")],
                &["sub_exact", "sub_one_last", "sub_one_mid"],
            ),
            (
                "acc_a",
                "image.generation.started",
                &[("region", "us-east"), ("other", "x")],
                &["sub_one_last", "sub_region"],
            ),
            ("acc_a", "image.upscale.completed", &[], &["sub_one_mid"]),
            ("acc_a", "studio.campaign.delivered", &[], &["sub_studio"]),
            ("acc_a", "studio", &[], &["sub_single"]),
            ("acc_a", "video.processing.completed", &eu, &[]),
            (
                "acc_a",
                "map.region.completed",
                &[("client_id", "c1"), ("campaign_id", "k2")],
                &["sub_client"],
            ),
            // Every filter key must be present...
            ("acc_a", "map.region.completed", &[("client_id", "c1")], &[]),
            // ...with an allowed value.
            (
                "acc_a",
                "map.region.completed",
                &[("client_id", "c2"), ("campaign_id", "k1")],
                &[],
            ),
            // One subscription, several matching patterns: listed once.
            ("acc_a", "operation.failed", &[], &["sub_overlap"]),
            // `*.failed` (of sub_overlap) spans exactly two segments, not three.
            ("acc_a", "image.generation.failed", &[], &["sub_one_last"]),
            ("acc_a", "video.failed", &[], &["sub_overlap"]),
            // Another account sees only its own subscriptions.
            (
                "acc_b",
                "image.generation.completed",
                &eu,
                &["sub_b_all", "sub_b_exact"],
            ),
            ("acc_b", "webhook.test", &[], &["sub_b_all"]),
            ("acc_c", "image.generation.completed", &eu, &[]),
            ("", "image.generation.completed", &[], &[]),
        ];
        for (account, event_type, attrs, expected) in cases {
            assert_eq!(
                index.matches(account, event_type, &attributes(attrs)),
                *expected,
                "{account} {event_type} {attrs:?}"
            );
        }
    }

    #[test]
    fn attributes_can_be_a_btree_map() {
        let index = table_index();
        let attrs: BTreeMap<String, String> = [("region".to_owned(), "eu-west".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(
            index.matches("acc_a", "image.generation.started", &attrs),
            ["sub_one_last", "sub_region"]
        );
    }

    #[test]
    fn upsert_replaces_patterns_account_and_state() {
        let mut index = table_index();
        let none = attributes(&[]);
        assert_eq!(index.len(), 12);

        index
            .upsert(rule("sub_exact", "acc_a", &["video.processing.completed"]))
            .expect("valid");
        assert_eq!(index.len(), 12);
        assert_eq!(
            index.matches("acc_a", "image.generation.completed", &none),
            ["sub_one_last", "sub_one_mid"]
        );
        assert_eq!(
            index.matches("acc_a", "video.processing.completed", &none),
            ["sub_exact"]
        );

        // Moving a subscription to another account.
        index
            .upsert(rule("sub_exact", "acc_b", &["video.processing.completed"]))
            .expect("valid");
        assert!(
            index
                .matches("acc_a", "video.processing.completed", &none)
                .is_empty()
        );
        assert_eq!(
            index.matches("acc_b", "video.processing.completed", &none),
            ["sub_b_all", "sub_exact"]
        );

        // Disabling keeps the rule but stops matches; enabling brings them back.
        let disabled = MatchRule {
            enabled: false,
            ..rule("sub_b_all", "acc_b", &["**"])
        };
        index.upsert(disabled.clone()).expect("valid");
        assert_eq!(index.get("sub_b_all"), Some(&disabled));
        assert_eq!(
            index.matches("acc_b", "webhook.test", &none),
            Vec::<&str>::new()
        );
        index
            .upsert(rule("sub_b_all", "acc_b", &["**"]))
            .expect("valid");
        assert_eq!(index.matches("acc_b", "webhook.test", &none), ["sub_b_all"]);

        // A filter added by an update applies at once.
        index
            .upsert(with_filter(
                rule("sub_studio", "acc_a", &["studio.**"]),
                &[("client_id", &["c9"])],
            ))
            .expect("valid");
        assert!(
            index
                .matches("acc_a", "studio.batch.progress", &none)
                .is_empty()
        );
        assert_eq!(
            index.matches(
                "acc_a",
                "studio.batch.progress",
                &attributes(&[("client_id", "c9")])
            ),
            ["sub_studio"]
        );
    }

    #[test]
    fn an_invalid_update_leaves_the_index_unchanged() {
        let mut index = table_index();
        let none = attributes(&[]);
        let error = index
            .upsert(rule("sub_studio", "acc_a", &["map.**", "studio.gen*"]))
            .expect_err("invalid pattern");
        assert_eq!(error.subscription_id, "sub_studio");
        assert_eq!(
            error.to_string(),
            "subscription sub_studio: event type pattern \"studio.gen*\": segment \"gen*\" mixes \
             `*` with other characters; `*` stands for one whole segment and `**` for all the rest"
        );
        assert_eq!(
            index.get("sub_studio").map(|rule| rule.event_types.clone()),
            Some(vec!["studio.**".to_owned()])
        );
        assert_eq!(
            index.matches("acc_a", "studio.campaign.completed", &none),
            ["sub_studio"]
        );
        assert!(index.upsert(rule("sub_new", "acc_a", &[""])).is_err());
        assert_eq!(index.get("sub_new"), None);
        assert_eq!(index.len(), 12);
    }

    #[test]
    fn a_subscription_record_converts_into_a_rule() {
        use dispatch_proto::dispatch::v1::{AttributeValues, Subscription};
        let subscription = Subscription {
            id: "sub_1".into(),
            account_id: "acc_1".into(),
            event_types: vec!["studio.**".into()],
            filter: [(
                "client_id".to_owned(),
                AttributeValues {
                    values: vec!["cli_acme".into()],
                },
            )]
            .into(),
            enabled: true,
            ..Subscription::default()
        };
        let index = index_of(vec![MatchRule::from(&subscription)]);
        let acme = attributes(&[("client_id", "cli_acme")]);
        let other = attributes(&[("client_id", "cli_other")]);
        assert_eq!(
            index.matches("acc_1", "studio.batch.progress", &acme),
            ["sub_1"]
        );
        assert!(
            index
                .matches("acc_1", "studio.batch.progress", &other)
                .is_empty()
        );
        assert!(
            index
                .matches("acc_1", "image.generation.started", &acme)
                .is_empty()
        );
    }

    #[test]
    fn remove_drops_the_rule_and_its_matches() {
        let mut index = table_index();
        let none = attributes(&[]);
        let removed = index.remove("sub_overlap").expect("was there");
        assert_eq!(removed.subscription_id, "sub_overlap");
        assert!(index.matches("acc_a", "operation.failed", &none).is_empty());
        assert_eq!(index.get("sub_overlap"), None);
        assert_eq!(index.len(), 11);
        assert_eq!(index.remove("sub_overlap"), None);
        assert_eq!(index.remove("sub_unknown"), None);

        // Removing everything leaves no trie behind.
        let ids: Vec<String> = index.rules.keys().cloned().collect();
        for id in ids {
            assert!(index.remove(&id).is_some());
        }
        assert!(index.is_empty());
        assert!(index.accounts.is_empty(), "empty tries are pruned");
    }

    #[test]
    fn a_rule_without_event_types_matches_nothing() {
        let index = index_of(vec![rule("sub_1", "acc", &[])]);
        assert_eq!(index.len(), 1);
        assert!(
            index
                .matches("acc", "webhook.test", &attributes(&[]))
                .is_empty()
        );
        assert!(index.accounts.is_empty());
    }

    #[test]
    fn pruning_keeps_shared_paths() {
        let mut index = index_of(vec![
            rule("sub_1", "acc", &["image.generation.completed"]),
            rule("sub_2", "acc", &["image.generation.*"]),
            rule("sub_3", "acc", &["image.**"]),
        ]);
        let none = attributes(&[]);
        index.remove("sub_1");
        assert_eq!(
            index.matches("acc", "image.generation.completed", &none),
            ["sub_2", "sub_3"]
        );
        index.remove("sub_3");
        assert_eq!(
            index.matches("acc", "image.generation.completed", &none),
            ["sub_2"]
        );
        index.remove("sub_2");
        assert!(index.accounts.is_empty());
    }

    /// A naive reference: scan every rule, match patterns one by one, check the filter by hand.
    fn naive_matches(
        rules: &BTreeMap<String, MatchRule>,
        account_id: &str,
        event_type: &str,
        attrs: &HashMap<String, String>,
    ) -> Vec<String> {
        rules
            .values()
            .filter(|rule| rule.enabled && rule.account_id == account_id)
            .filter(|rule| {
                rule.event_types
                    .iter()
                    .any(|text| pattern(text).matches(event_type))
            })
            .filter(|rule| {
                rule.filter.iter().all(|(key, allowed)| {
                    attrs.get(key).is_some_and(|value| allowed.contains(value))
                })
            })
            .map(|rule| rule.subscription_id.clone())
            .collect()
    }

    fn random_event_type(rng: &mut StdRng) -> String {
        const SEGMENTS: [&str; 4] = ["a", "b", "c", "d"];
        let len = rng.random_range(1..=4);
        (0..len)
            .map(|_| SEGMENTS[rng.random_range(0..SEGMENTS.len())])
            .collect::<Vec<_>>()
            .join(".")
    }

    fn random_pattern(rng: &mut StdRng) -> String {
        const SEGMENTS: [&str; 5] = ["a", "b", "c", "d", "*"];
        let len = rng.random_range(1..=4);
        let mut segments: Vec<&str> = (0..len)
            .map(|_| SEGMENTS[rng.random_range(0..SEGMENTS.len())])
            .collect();
        if rng.random_bool(0.3) {
            segments.push("**");
            if rng.random_bool(0.2) {
                segments = vec!["**"];
            }
        }
        segments.join(".")
    }

    fn random_rule(rng: &mut StdRng, id: String, accounts: &[&str]) -> MatchRule {
        const VALUES: [&str; 3] = ["x", "y", "z"];
        let patterns = (0..rng.random_range(0..=3))
            .map(|_| random_pattern(rng))
            .collect();
        let mut filter = BTreeMap::new();
        for key in ["k1", "k2"] {
            if rng.random_bool(0.25) {
                let allowed = VALUES
                    .iter()
                    .filter(|_| rng.random_bool(0.5))
                    .map(|value| (*value).to_owned())
                    .collect();
                filter.insert(key.to_owned(), allowed);
            }
        }
        MatchRule {
            subscription_id: id,
            account_id: accounts[rng.random_range(0..accounts.len())].to_owned(),
            event_types: patterns,
            filter,
            enabled: rng.random_bool(0.85),
        }
    }

    #[test]
    fn index_agrees_with_a_naive_scan() {
        const ACCOUNTS: [&str; 6] = ["acc_0", "acc_1", "acc_2", "acc_3", "acc_4", "acc_none"];
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut index = SubscriptionIndex::new();
        let mut model: BTreeMap<String, MatchRule> = BTreeMap::new();
        let mut non_empty_answers = 0;
        for round in 0..3000 {
            // Mostly writes at first, then a mix of updates, removals and lookups.
            let id = format!("sub_{}", rng.random_range(0..400));
            match rng.random_range(0..10) {
                0..=4 => {
                    let rule = random_rule(&mut rng, id.clone(), &ACCOUNTS[..5]);
                    index.upsert(rule.clone()).expect("random rules are valid");
                    model.insert(id, rule);
                }
                5 => {
                    assert_eq!(index.remove(&id), model.remove(&id), "round {round}");
                }
                _ => {}
            }
            assert_eq!(index.len(), model.len());
            let account = ACCOUNTS[rng.random_range(0..ACCOUNTS.len())];
            let event_type = random_event_type(&mut rng);
            let mut attrs = HashMap::new();
            for key in ["k1", "k2", "k3"] {
                if rng.random_bool(0.6) {
                    let value = ["x", "y", "z", "w"][rng.random_range(0..4)];
                    attrs.insert(key.to_owned(), value.to_owned());
                }
            }
            let expected = naive_matches(&model, account, &event_type, &attrs);
            let found = index.matches(account, &event_type, &attrs);
            assert_eq!(
                found, expected,
                "round {round}: {account} {event_type} {attrs:?}"
            );
            if !found.is_empty() {
                non_empty_answers += 1;
            }
        }
        // The comparison is only meaningful if matches actually happen.
        assert!(non_empty_answers > 500, "{non_empty_answers}");

        for id in model.keys() {
            assert!(index.remove(id).is_some());
        }
        assert!(index.is_empty());
        assert!(index.accounts.is_empty(), "every trie node was pruned");
    }
}
