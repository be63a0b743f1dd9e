//! Checks the operations files under `deploy/` against the metric catalogue and each other: every
//! metric the Grafana dashboard, the alert rules and the scrape setup query is in [`CATALOGUE`]
//! (histograms only through `_bucket`/`_sum`/`_count`), with labels it really has; the dashboard
//! has every panel the operators were promised and picks its datasource through a variable; the
//! alerts cover what they must (lag growing outside the retry tiers, DLQ inflow, success ratio,
//! circuits, no sender); the compose stack, the scrape config, Grafana's provisioning and the
//! Dockerfile agree on roles, ports and paths.
//!
//! No Docker engine or `promtool` runs in `make test` (`make promtool-check` runs promtool
//! separately: building it takes about 20 minutes), so this is the check they get. PromQL is
//! read by a small scanner (below) that knows where metric names can stand; it is deliberately
//! strict — an unknown function or a `{__name__=…}` selector fails — so that nothing escapes it.
//! The scanner's own tests show each check can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dispatch_telemetry::names::spec;
use dispatch_telemetry::{CATALOGUE, MetricKind};
use regex::Regex;
use serde_json::Value as Json;
use yaml_rust2::{Yaml, YamlLoader};

// --- files ------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{relative}: exactly one YAML document");
    resolve_merge_keys(docs.remove(0))
}

/// Compose files share settings with `<<: *anchor`. yaml-rust2 resolves the alias but, following
/// YAML 1.2, leaves the merge key alone; Compose merges it, so the checks must see the merge.
fn resolve_merge_keys(node: Yaml) -> Yaml {
    match node {
        Yaml::Hash(hash) => {
            let mut merged = yaml_rust2::yaml::Hash::new();
            let merge_key = Yaml::String("<<".to_owned());
            if let Some(Yaml::Hash(base)) = hash.get(&merge_key).cloned().map(resolve_merge_keys) {
                merged.extend(base);
            }
            for (key, value) in hash {
                if key != merge_key {
                    merged.insert(key, resolve_merge_keys(value));
                }
            }
            Yaml::Hash(merged)
        }
        Yaml::Array(items) => Yaml::Array(items.into_iter().map(resolve_merge_keys).collect()),
        other => other,
    }
}

fn str_of<'a>(node: &'a Yaml, what: &str) -> &'a str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {node:?}"))
}

fn strings(node: &Yaml) -> Vec<String> {
    match node {
        Yaml::Array(items) => items
            .iter()
            .map(|item| str_of(item, "list item").to_owned())
            .collect(),
        Yaml::String(one) => vec![one.clone()],
        _ => Vec::new(),
    }
}

// --- PromQL -----------------------------------------------------------------------------------

/// Labels every scraped series carries besides its own: Prometheus adds `job` and `instance`,
/// and deploy/prometheus/prometheus.yml (or the ServiceMonitor's relabeling) adds `role`.
const TARGET_LABELS: &[&str] = &["job", "instance", "role"];

/// Series Prometheus makes itself; allowed only where a caller says so (the alerts use `up`
/// because no readiness metric exists).
const PROMETHEUS_SERIES: &[&str] = &["up"];

const KEYWORDS_WITH_LABEL_LIST: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OTHER_KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// PromQL's aggregation operators: they may be followed by `by (…)` or `without (…)`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];
/// PromQL's functions and aggregation operators. A misspelt one fails here instead of in
/// Prometheus.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "predict_linear",
    "present_over_time",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev",
    "stddev_over_time",
    "stdvar",
    "stdvar_over_time",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "bottomk",
    "vector",
];

/// One label matcher of a selector: `topic=~"dispatch\\.retry\\..+"`.
#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// A metric selector: the name as written (with a histogram suffix, if any) and its matchers.
#[derive(Debug, Clone)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

/// What an expression refers to.
#[derive(Debug, Default)]
struct Query {
    selectors: Vec<Selector>,
    /// Labels named in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: BTreeSet<String>,
    functions: BTreeSet<String>,
}

impl Query {
    fn uses(&self, name: &str) -> bool {
        self.selectors.iter().any(|s| s.name == name)
    }

    fn matchers_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Matcher> + 'a {
        self.selectors
            .iter()
            .filter(move |s| s.name == name)
            .flat_map(|s| s.matchers.iter())
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A cursor over an expression, for the scanner.
struct Scanner<'a> {
    chars: Vec<char>,
    at: usize,
    expr: &'a str,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.at += 1;
            } else if c == '#' {
                // A comment runs to the end of the line.
                while self.peek().is_some_and(|c| c != '\n') {
                    self.at += 1;
                }
            } else {
                break;
            }
        }
    }

    fn ident(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(is_ident_char) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    /// A string literal in any of PromQL's three quotes; returns its content (escapes kept, as
    /// the regex engine would see them in a raw string, undone for the other two).
    fn string(&mut self) -> Result<String, String> {
        let quote = self.peek().ok_or("expected a string")?;
        if !matches!(quote, '"' | '\'' | '`') {
            return Err(format!("expected a string in {:?}", self.expr));
        }
        self.at += 1;
        let mut value = String::new();
        loop {
            let c = self
                .peek()
                .ok_or_else(|| format!("unterminated string in {:?}", self.expr))?;
            self.at += 1;
            if c == quote {
                return Ok(value);
            }
            if c == '\\' && quote != '`' {
                let escaped = self.peek().ok_or("dangling escape")?;
                self.at += 1;
                value.push(escaped);
            } else {
                value.push(c);
            }
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        self.skip_space();
        if self.peek() == Some(wanted) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!(
                "expected {wanted:?} at {} in {:?}",
                self.at, self.expr
            ))
        }
    }

    /// `{label op "value", …}` after a metric name.
    fn matchers(&mut self) -> Result<Vec<Matcher>, String> {
        self.expect('{')?;
        let mut found = Vec::new();
        loop {
            self.skip_space();
            if self.peek() == Some('}') {
                self.at += 1;
                return Ok(found);
            }
            let label = self.ident();
            if label.is_empty() {
                return Err(format!("expected a label name in {:?}", self.expr));
            }
            self.skip_space();
            let mut op = String::new();
            while self.peek().is_some_and(|c| matches!(c, '=' | '!' | '~')) {
                op.push(self.peek().expect("peeked"));
                self.at += 1;
            }
            if !matches!(op.as_str(), "=" | "!=" | "=~" | "!~") {
                return Err(format!("bad matcher operator {op:?} in {:?}", self.expr));
            }
            self.skip_space();
            let value = self.string()?;
            found.push(Matcher { label, op, value });
            self.skip_space();
            if self.peek() == Some(',') {
                self.at += 1;
            }
        }
    }

    /// `(a, b)` after `by`, `on` and friends.
    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.expect('(')?;
        let mut labels = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                Some(')') => {
                    self.at += 1;
                    return Ok(labels);
                }
                Some(',') => self.at += 1,
                Some(c) if is_ident_start(c) => labels.push(self.ident()),
                _ => return Err(format!("bad label list in {:?}", self.expr)),
            }
        }
    }
}

/// Finds every metric selector, grouping label and function of a PromQL expression. Grafana's
/// `$__rate_interval` and other variables may stand inside `[…]` and inside strings only.
fn scan(expr: &str) -> Result<Query, String> {
    let mut s = Scanner {
        chars: expr.chars().collect(),
        at: 0,
        expr,
    };
    let mut query = Query::default();
    loop {
        s.skip_space();
        let Some(c) = s.peek() else {
            return Ok(query);
        };
        if matches!(c, '"' | '\'' | '`') {
            s.string()?;
        } else if c == '[' {
            // A range or subquery: durations, `:` and Grafana interval variables.
            while s.peek().is_some_and(|c| c != ']') {
                s.at += 1;
            }
            s.expect(']')?;
        } else if c == '{' {
            return Err(format!(
                "a selector without a metric name (or by __name__) hides the name: {expr:?}"
            ));
        } else if c.is_ascii_digit() || c == '.' {
            // A number, or a duration after `offset`.
            while s
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
            {
                s.at += 1;
            }
        } else if is_ident_start(c) {
            let word = s.ident();
            s.skip_space();
            let next = s.peek();
            if KEYWORDS_WITH_LABEL_LIST.contains(&word.as_str()) {
                if next == Some('(') {
                    query.grouping.extend(s.label_list()?);
                }
            } else if OTHER_KEYWORDS.contains(&word.as_str()) {
                // Operators and literals.
            } else if next == Some('(')
                || (AGGREGATIONS.contains(&word.as_str()) && next.is_some_and(is_ident_start))
            {
                // `sum by (x) (…)` puts the grouping between the aggregation and its argument.
                if !FUNCTIONS.contains(&word.as_str()) {
                    return Err(format!("unknown function {word}() in {expr:?}"));
                }
                query.functions.insert(word);
            } else {
                let matchers = if next == Some('{') {
                    s.matchers()?
                } else {
                    Vec::new()
                };
                if matchers.iter().any(|m| m.label == "__name__") {
                    return Err(format!("__name__ matchers hide the metric name: {expr:?}"));
                }
                query.selectors.push(Selector {
                    name: word,
                    matchers,
                });
            }
        } else if c == '$' {
            return Err(format!("a variable outside a range or string in {expr:?}"));
        } else {
            // Operators, parentheses, commas, `@`.
            s.at += 1;
        }
    }
}

/// The labels `name` (as queried) can be filtered or grouped by; `Err` when the name is not ours
/// or is queried in a shape it is not exported in.
fn labels_of(name: &str, allowed_series: &[&str]) -> Result<BTreeSet<String>, String> {
    let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
    if allowed_series.contains(&name) {
        return Ok(labels);
    }
    if let Some(spec) = spec(name) {
        if spec.kind == MetricKind::Histogram {
            return Err(format!(
                "{name} is a histogram: query {name}_bucket, {name}_sum or {name}_count"
            ));
        }
        labels.extend(spec.labels.iter().map(|l| (*l).to_owned()));
        return Ok(labels);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(spec) = spec(base)
        {
            if spec.kind != MetricKind::Histogram {
                return Err(format!(
                    "{name}: {base} is a {:?}, it has no {suffix} series",
                    spec.kind
                ));
            }
            labels.extend(spec.labels.iter().map(|l| (*l).to_owned()));
            if suffix == "_bucket" {
                labels.insert("le".to_owned());
            }
            return Ok(labels);
        }
    }
    Err(format!(
        "{name} is not in the metric catalogue (crates/dispatch-telemetry/src/names.rs)"
    ))
}

/// Scans `expr` and checks every name and label against the catalogue. `allowed_series` lists
/// Prometheus' own series the caller accepts.
fn check_expr(expr: &str, allowed_series: &[&str]) -> Result<Query, String> {
    let query = scan(expr)?;
    if query.selectors.is_empty() {
        return Err(format!("no metric in {expr:?}"));
    }
    let mut all_labels = BTreeSet::new();
    for selector in &query.selectors {
        let labels = labels_of(&selector.name, allowed_series)?;
        for matcher in &selector.matchers {
            if !labels.contains(&matcher.label) {
                return Err(format!(
                    "{} has no label {:?} (it has {labels:?})",
                    selector.name, matcher.label
                ));
            }
        }
        all_labels.extend(labels);
    }
    for label in &query.grouping {
        if !all_labels.contains(label) {
            return Err(format!(
                "groups by {label:?}, which none of its metrics has: {expr:?}"
            ));
        }
    }
    if query.functions.contains("histogram_quantile") && !query.grouping.contains("le") {
        return Err(format!(
            "histogram_quantile over buckets aggregated without `le`: {expr:?}"
        ));
    }
    Ok(query)
}

/// Whether a matcher selects a series whose label is `value`, the way Prometheus anchors regexes.
fn matcher_selects(matcher: &Matcher, value: &str) -> bool {
    let regex = || {
        Regex::new(&format!("^(?:{})$", matcher.value))
            .unwrap_or_else(|e| panic!("bad regex {:?}: {e}", matcher.value))
    };
    match matcher.op.as_str() {
        "=" => matcher.value == value,
        "!=" => matcher.value != value,
        "=~" => regex().is_match(value),
        "!~" => !regex().is_match(value),
        other => panic!("operator {other}"),
    }
}

/// Whether one selector lets a series with `label` = `value` through.
fn selector_selects(selector: &Selector, label: &str, value: &str) -> bool {
    selector
        .matchers
        .iter()
        .filter(|m| m.label == label)
        .all(|m| matcher_selects(m, value))
}

/// Whether every selector of `name` in `query` lets a series with `label` = `value` through:
/// the query covers that series.
fn selects(query: &Query, name: &str, label: &str, value: &str) -> bool {
    query
        .selectors
        .iter()
        .filter(|s| s.name == name)
        .all(|s| selector_selects(s, label, value))
}

/// Whether any selector of `name` in `query` lets the series through: the query mixes it in.
fn any_selects(query: &Query, name: &str, label: &str, value: &str) -> bool {
    query
        .selectors
        .iter()
        .filter(|s| s.name == name)
        .any(|s| selector_selects(s, label, value))
}

#[test]
fn the_scanner_accepts_catalogued_queries() {
    let query = check_expr(
        "histogram_quantile(0.99, sum by (le) (rate(dispatch_sender_attempt_duration_seconds_bucket[$__rate_interval])))",
        &[],
    )
    .expect("valid");
    assert!(query.uses("dispatch_sender_attempt_duration_seconds_bucket"));
    let query = check_expr(
        "sum by (group, topic) (max by (group, topic, partition) (dispatch_kafka_consumer_lag_records{topic=~`dispatch\\.retry\\..+`}))",
        &[],
    )
    .expect("valid");
    assert!(selects(
        &query,
        "dispatch_kafka_consumer_lag_records",
        "topic",
        "dispatch.retry.1m"
    ));
    assert!(!selects(
        &query,
        "dispatch_kafka_consumer_lag_records",
        "topic",
        "dispatch.deliveries"
    ));
    check_expr(
        "(sum(up{role=~\"sender|all\"}) or vector(0)) == 0",
        PROMETHEUS_SERIES,
    )
    .expect("up is allowed where asked for");
}

/// The checks must be able to fail: each of these is a mistake a dashboard or rule could make.
#[test]
fn the_scanner_refuses_what_the_catalogue_does_not_have() {
    let refused = [
        // A name that does not exist (a typo, or a metric never added to names.rs).
        (
            "sum(rate(dispatch_sender_attempt_total[5m]))",
            "not in the metric catalogue",
        ),
        // A histogram queried by its bare name.
        (
            "rate(dispatch_sender_attempt_duration_seconds[5m])",
            "is a histogram",
        ),
        // `_bucket` of a counter.
        (
            "rate(dispatch_sender_attempts_total_bucket[5m])",
            "has no _bucket",
        ),
        // A label the metric does not have.
        (
            "sum(rate(dispatch_sender_attempts_total{result=\"success\"}[5m]))",
            "has no label",
        ),
        // Grouping by a label none of the metrics has.
        (
            "sum by (tier) (rate(dispatch_sender_attempts_total[5m]))",
            "which none of its metrics has",
        ),
        // Percentiles of buckets summed without `le`.
        (
            "histogram_quantile(0.9, sum(rate(dispatch_fanout_commit_duration_seconds_bucket[5m])))",
            "without `le`",
        ),
        // A misspelt function.
        (
            "sum(rates(dispatch_sender_attempts_total[5m]))",
            "unknown function",
        ),
        // A name hidden from the check.
        (
            "sum(rate({__name__=\"dispatch_sender_attempts_total\"}[5m]))",
            "without a metric name",
        ),
        // Prometheus' own series, where nobody allowed them.
        ("up == 0", "not in the metric catalogue"),
    ];
    for (expr, reason) in refused {
        let error = check_expr(expr, &[]).expect_err(expr);
        assert!(error.contains(reason), "{expr}: {error}");
    }
}

// --- the Grafana dashboard --------------------------------------------------------------------

const DASHBOARD: &str = "deploy/grafana/dispatch-dashboard.json";

/// Every panel (rows' nested panels too) with its title.
fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(panels: &'a Json, out: &mut Vec<&'a Json>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Each panel's title and the checked queries of its targets.
fn dashboard_queries(dashboard: &Json) -> Vec<(String, Vec<Query>)> {
    panels(dashboard)
        .into_iter()
        .filter(|panel| panel["type"] != "row")
        .map(|panel| {
            let title = panel["title"].as_str().expect("every panel has a title");
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title:?} has no targets"));
            assert!(!targets.is_empty(), "panel {title:?} has no queries");
            let queries = targets
                .iter()
                .map(|target| {
                    let expr = target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                    check_expr(expr, &[]).unwrap_or_else(|e| panic!("panel {title:?}: {e}"))
                })
                .collect();
            (title.to_owned(), queries)
        })
        .collect()
}

#[test]
fn every_dashboard_query_uses_catalogued_metrics() {
    let dashboard: Json = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 12, "only {} panels", queries.len());
}

#[test]
fn the_dashboard_picks_its_datasource_through_a_variable() {
    let dashboard: Json = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["query"], "prometheus");
    let reference = format!(
        "${{{}}}",
        datasource["name"].as_str().expect("variable name")
    );
    // Query variables would carry PromQL this test does not look at.
    for variable in variables {
        assert!(
            matches!(
                variable["type"].as_str(),
                Some("datasource" | "custom" | "interval" | "constant")
            ),
            "variable {} is of a type whose queries are not checked",
            variable["name"]
        );
    }
    let uid_of = |node: &Json| node["datasource"]["uid"].as_str().map(str::to_owned);
    for panel in panels(&dashboard)
        .into_iter()
        .filter(|p| p["type"] != "row")
    {
        let title = &panel["title"];
        assert_eq!(
            uid_of(panel).as_deref(),
            Some(reference.as_str()),
            "panel {title}"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                uid_of(target).as_deref(),
                Some(reference.as_str()),
                "a target of {title}"
            );
        }
    }
    assert!(
        dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()),
        "a fixed uid keeps links stable"
    );
    assert!(dashboard["id"].is_null(), "an id would clash on import");
}

/// What the operators were promised: one panel per topic, found by the metric it queries and
/// how (grouped by a label, filtered by a value, or through a function).
struct Required {
    topic: &'static str,
    metric: &'static str,
    grouped_by: &'static [&'static str],
    matcher: Option<(&'static str, &'static str)>,
    function: Option<&'static str>,
}

const REQUIRED_PANELS: &[Required] = &[
    Required {
        topic: "throughput by event type family",
        metric: "dispatch_fanout_deliveries_produced_total",
        grouped_by: &["family"],
        matcher: None,
        function: Some("rate"),
    },
    Required {
        topic: "events consumed per domain topic (family)",
        metric: "dispatch_fanout_events_consumed_total",
        grouped_by: &["topic"],
        matcher: None,
        function: Some("rate"),
    },
    Required {
        topic: "attempts by outcome",
        metric: "dispatch_sender_attempts_total",
        grouped_by: &["outcome"],
        matcher: None,
        function: Some("rate"),
    },
    Required {
        topic: "success ratio",
        metric: "dispatch_sender_attempts_total",
        grouped_by: &[],
        matcher: Some(("outcome", "success")),
        function: Some("rate"),
    },
    Required {
        topic: "attempt latency percentiles",
        metric: "dispatch_sender_attempt_duration_seconds_bucket",
        grouped_by: &["le"],
        matcher: None,
        function: Some("histogram_quantile"),
    },
    Required {
        topic: "event-to-delivery latency percentiles",
        metric: "dispatch_sender_event_to_delivery_seconds_bucket",
        grouped_by: &["le"],
        matcher: None,
        function: Some("histogram_quantile"),
    },
    Required {
        topic: "retries by tier",
        metric: "dispatch_sender_retries_total",
        grouped_by: &["tier"],
        matcher: None,
        function: Some("rate"),
    },
    Required {
        topic: "DLQ inflow",
        metric: "dispatch_sender_dead_lettered_total",
        grouped_by: &[],
        matcher: None,
        function: None,
    },
    Required {
        topic: "DLQ replays",
        metric: "dispatch_api_dead_letters_replayed_total",
        grouped_by: &[],
        matcher: None,
        function: None,
    },
    Required {
        topic: "open circuits",
        metric: "dispatch_sender_open_circuits",
        grouped_by: &[],
        matcher: None,
        function: None,
    },
    Required {
        topic: "consumer lag by group and partition",
        metric: "dispatch_kafka_consumer_lag_records",
        grouped_by: &["group", "topic", "partition"],
        matcher: None,
        function: None,
    },
    Required {
        topic: "consumer lag of the delivery topics by group",
        metric: "dispatch_kafka_consumer_lag_records",
        grouped_by: &["group"],
        matcher: Some(("topic", "dispatch.deliveries")),
        function: None,
    },
    Required {
        topic: "lag of the admin API's readers",
        metric: "dispatch_kafka_consumer_lag_records",
        grouped_by: &["topic"],
        matcher: Some(("group", "reader:dispatch.attempts")),
        function: None,
    },
    Required {
        topic: "subscription view lag by role",
        metric: "dispatch_view_lag_records",
        grouped_by: &["role"],
        matcher: None,
        function: None,
    },
    Required {
        topic: "in-flight requests",
        metric: "dispatch_sender_in_flight_requests",
        grouped_by: &[],
        matcher: None,
        function: None,
    },
    Required {
        topic: "invalid events",
        metric: "dispatch_fanout_events_invalid_total",
        grouped_by: &["reason"],
        matcher: None,
        function: Some("rate"),
    },
];

fn satisfies(query: &Query, required: &Required) -> bool {
    query.uses(required.metric)
        && required
            .grouped_by
            .iter()
            .all(|label| query.grouping.contains(*label))
        && required
            .function
            .is_none_or(|f| query.functions.contains(f))
        && required.matcher.is_none_or(|(label, value)| {
            query
                .matchers_of(required.metric)
                .any(|m| m.label == label && matcher_selects(m, value))
        })
}

#[test]
fn the_dashboard_has_every_promised_panel() {
    let dashboard: Json = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    for required in REQUIRED_PANELS {
        assert!(
            queries
                .iter()
                .any(|(_, qs)| qs.iter().any(|q| satisfies(q, required))),
            "no dashboard panel shows {} ({} {:?})",
            required.topic,
            required.metric,
            required.grouped_by
        );
    }
    // Lag on the retry tiers is by design; no panel may add it to the backlog of the work topics.
    for (title, qs) in &queries {
        for q in qs {
            let lag = "dispatch_kafka_consumer_lag_records";
            // The per-partition table (no topic matcher) lists every topic apart; it sums nothing.
            let filtered = q.matchers_of(lag).any(|m| m.label == "topic");
            if filtered && any_selects(q, lag, "topic", "dispatch.deliveries") {
                assert!(
                    !any_selects(q, lag, "topic", "dispatch.retry.1m"),
                    "panel {title:?} mixes retry-tier lag into the delivery backlog"
                );
            }
        }
    }
}

// --- Prometheus: alert rules and scrape config ------------------------------------------------

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const SCRAPE: &str = "deploy/prometheus/prometheus.yml";

/// One alert rule, checked.
struct Rule {
    name: String,
    query: Query,
}

fn alert_rules() -> Vec<Rule> {
    let doc = yaml(ALERTS);
    let groups = doc["groups"].as_vec().expect("alerts.yml: groups");
    let operations = read("docs/operations.md");
    let anchors = heading_anchors(&operations);
    let duration = Regex::new(r"^[0-9]+(ms|s|m|h|d)$").expect("regex");
    let mut names = BTreeSet::new();
    let mut rules = Vec::new();
    for group in groups {
        let group_name = str_of(&group["name"], "group name");
        for rule in group["rules"].as_vec().expect("rules") {
            let name = str_of(&rule["alert"], "every rule is an alert").to_owned();
            assert!(names.insert(name.clone()), "alert {name} is defined twice");
            let expr = str_of(&rule["expr"], "expr");
            let query = check_expr(expr, PROMETHEUS_SERIES)
                .unwrap_or_else(|e| panic!("alert {name} ({group_name}): {e}"));
            let wait = str_of(&rule["for"], "for");
            assert!(duration.is_match(wait), "alert {name}: for {wait:?}");
            let severity = str_of(&rule["labels"]["severity"], "severity");
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "alert {name}: severity {severity}"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "alert {name}: {annotation}"
                );
            }
            // The runbook link must land on a heading of docs/operations.md.
            let runbook = str_of(&rule["annotations"]["runbook_url"], "runbook_url");
            let (page, anchor) = runbook
                .split_once('#')
                .unwrap_or_else(|| panic!("alert {name}: runbook without an anchor"));
            assert!(page.ends_with("docs/operations.md"), "alert {name}: {page}");
            assert!(
                anchors.contains(anchor),
                "alert {name}: docs/operations.md has no heading #{anchor}"
            );
            rules.push(Rule { name, query });
        }
    }
    rules
}

/// GitHub's anchors for the headings of a Markdown page: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// The `role` labels prometheus.yml gives its targets, with the targets.
fn scrape_roles() -> BTreeMap<String, Vec<String>> {
    let doc = yaml(SCRAPE);
    let mut roles: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in doc["scrape_configs"].as_vec().expect("scrape_configs") {
        for config in job["static_configs"].as_vec().into_iter().flatten() {
            if let Some(role) = config["labels"]["role"].as_str() {
                let path = job["metrics_path"].as_str().unwrap_or("/metrics");
                assert_eq!(path, "/metrics", "role {role}");
                roles
                    .entry(role.to_owned())
                    .or_default()
                    .extend(strings(&config["targets"]));
            }
        }
    }
    roles
}

#[test]
fn every_alert_uses_catalogued_metrics_and_has_a_runbook() {
    let rules = alert_rules();
    assert!(rules.len() >= 5, "only {} alerts", rules.len());
}

#[test]
fn the_alerts_cover_what_operators_need() {
    let rules = alert_rules();
    let lag = "dispatch_kafka_consumer_lag_records";
    let with =
        |metric: &str| -> Vec<&Rule> { rules.iter().filter(|r| r.query.uses(metric)).collect() };

    // Lag growing on the work topics; never on the retry tiers, where records wait by design.
    let lag_rules = with(lag);
    assert!(!lag_rules.is_empty(), "no alert on consumer lag");
    for rule in &lag_rules {
        assert!(
            rule.query.functions.contains("deriv") || rule.query.functions.contains("delta"),
            "{}: lag alerts fire on growth, not on a level alone",
            rule.name
        );
        assert!(
            rule.query.matchers_of(lag).any(|m| m.label == "topic"),
            "{}: lag alerts must choose their topics",
            rule.name
        );
        for tier in [
            "dispatch.retry.1m",
            "dispatch.retry.1h",
            "dispatch.retry.2s",
        ] {
            assert!(
                !any_selects(&rule.query, lag, "topic", tier),
                "{} alerts on {tier}, where lag is expected",
                rule.name
            );
        }
    }
    for topic in [
        "dispatch.deliveries",
        "dispatch.deliveries.enterprise",
        "posternity.events.image",
        "posternity.events.map",
    ] {
        assert!(
            lag_rules
                .iter()
                .any(|r| selects(&r.query, lag, "topic", topic)),
            "no lag alert covers {topic}"
        );
    }

    assert!(
        !with("dispatch_sender_dead_lettered_total").is_empty(),
        "no alert on DLQ inflow"
    );
    assert!(
        rules.iter().any(|r| r
            .query
            .matchers_of("dispatch_sender_attempts_total")
            .any(|m| m.label == "outcome" && matcher_selects(m, "success"))),
        "no alert on the success ratio"
    );
    assert!(
        !with("dispatch_sender_open_circuits").is_empty(),
        "no alert on open circuits"
    );

    // No sender: by `up` of the sender targets, whose role label prometheus.yml must set.
    let roles = scrape_roles();
    let up_rules = with("up");
    assert!(
        up_rules
            .iter()
            .any(|r| selects(&r.query, "up", "role", "sender")
                && r.query.matchers_of("up").any(|m| m.label == "role")),
        "no alert on the sender targets being down"
    );
    for rule in up_rules {
        for matcher in rule.query.matchers_of("up").filter(|m| m.label == "role") {
            assert!(
                roles.keys().any(|role| matcher_selects(matcher, role)),
                "{}: role matcher {:?} selects no target of prometheus.yml ({:?})",
                rule.name,
                matcher.value,
                roles.keys()
            );
        }
    }
}

#[test]
fn the_scrape_config_covers_every_role_and_loads_the_alerts() {
    let doc = yaml(SCRAPE);
    let rule_files = strings(&doc["rule_files"]);
    assert!(
        rule_files.iter().any(|f| f == "alerts.yml"),
        "prometheus.yml does not load alerts.yml: {rule_files:?}"
    );
    let roles = scrape_roles();
    for role in ["fanout", "sender", "api"] {
        let targets = roles
            .get(role)
            .unwrap_or_else(|| panic!("no scrape target with role {role}"));
        // Compose names the services after the roles; 9464 is metrics.listen's port.
        assert!(
            targets.iter().any(|t| t == &format!("{role}:9464")),
            "role {role}: targets {targets:?}"
        );
    }
}

// --- the compose stack, Grafana provisioning, the image ---------------------------------------

const COMPOSE: &str = "deploy/docker-compose.yml";

fn env_of(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(hash) => hash
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (str_of(k, "variable").to_owned(), value)
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("environment must be a map: {other:?}"),
    }
}

/// An image reference must name its version: no tag, or `latest`, changes under you.
fn assert_pinned(image: &str, whose: &str) {
    let last = image.rsplit('/').next().expect("split yields one item");
    let tag = last.split_once(':').map(|(_, tag)| tag);
    assert!(
        tag.is_some_and(|t| !t.is_empty() && t != "latest"),
        "{whose}: image {image} is not pinned to a version"
    );
}

#[test]
fn the_compose_stack_runs_the_three_roles_after_topic_init() {
    let doc = yaml(COMPOSE);
    let services = &doc["services"];
    for (name, service) in services.as_hash().expect("services") {
        let name = str_of(name, "service name");
        assert_pinned(str_of(&service["image"], "image"), name);
    }
    let kafka = str_of(&services["kafka"]["image"], "kafka image");
    assert!(
        kafka.starts_with("apache/kafka:4.1."),
        "Kafka must be the official image, 4.1.x: {kafka}"
    );
    assert!(
        env_of(&services["kafka"]).contains_key("KAFKA_PROCESS_ROLES"),
        "Kafka runs in KRaft mode"
    );

    let init = &services["topic-init"];
    assert_eq!(strings(&init["command"]), ["topics", "ensure"]);
    assert_eq!(
        str_of(&init["depends_on"]["kafka"]["condition"], "condition"),
        "service_healthy"
    );

    for role in ["fanout", "sender", "api"] {
        let service = &services[role];
        assert_eq!(
            strings(&service["command"]).first().map(String::as_str),
            Some(role),
            "service {role} runs `dispatchd {role}`"
        );
        assert_eq!(
            str_of(
                &service["depends_on"]["topic-init"]["condition"],
                "condition"
            ),
            "service_completed_successfully",
            "{role} starts after the topics exist"
        );
        assert_eq!(
            str_of(&service["build"]["dockerfile"], "dockerfile"),
            "deploy/Dockerfile"
        );
        let env = env_of(service);
        assert_eq!(
            env.get("DISPATCH_KAFKA__BOOTSTRAP_SERVERS")
                .map(String::as_str),
            Some("kafka:9092"),
            "{role}: broker address"
        );
        assert_eq!(
            env.get("DISPATCH_METRICS__LISTEN").map(String::as_str),
            Some("0.0.0.0:9464"),
            "{role}: metrics must be reachable from Prometheus' container"
        );
    }

    let api = &services["api"];
    let env = env_of(api);
    assert!(
        env.get("DISPATCH_API__LISTEN")
            .is_some_and(|l| l.starts_with("0.0.0.0:")),
        "the API listens beyond the container's loopback"
    );
    let tokens_file = env
        .get("DISPATCH_API__TOKENS_FILE")
        .expect("the API gets its tokens from a file");
    let mounted: Vec<&str> = api["configs"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|c| str_of(&c["target"], "config target"))
        .collect();
    assert!(
        mounted.contains(&tokens_file.as_str()),
        "{tokens_file} is not mounted: {mounted:?}"
    );
}

/// `./relative:/in/container[:ro]` bind mounts of a service: source (relative to deploy/) and
/// target.
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .into_iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let source = parts.next().expect("source").to_owned();
            let target = parts.next().expect("target").to_owned();
            (source, target)
        })
        .collect()
}

#[test]
fn prometheus_and_grafana_get_the_files_of_this_repository() {
    let doc = yaml(COMPOSE);
    let services = &doc["services"];
    let deploy = repo_root().join("deploy");
    for (name, service) in services.as_hash().expect("services") {
        for (source, _) in bind_mounts(service) {
            assert!(
                deploy.join(&source).exists(),
                "service {}: {source} does not exist",
                str_of(name, "name")
            );
        }
    }

    let prometheus = bind_mounts(&services["prometheus"]);
    for file in ["prometheus.yml", "alerts.yml"] {
        assert!(
            prometheus
                .iter()
                .any(|(source, target)| source == &format!("./prometheus/{file}")
                    && target == &format!("/etc/prometheus/{file}")),
            "Prometheus does not get {file} beside its configuration: {prometheus:?}"
        );
    }

    let grafana = bind_mounts(&services["grafana"]);
    let dashboard_target = grafana
        .iter()
        .find(|(source, _)| source == "./grafana/dispatch-dashboard.json")
        .map(|(_, target)| target.clone())
        .expect("Grafana gets the dashboard");
    assert!(
        grafana
            .iter()
            .any(|(source, target)| source == "./grafana/provisioning"
                && target == "/etc/grafana/provisioning"),
        "Grafana gets the provisioning directory"
    );

    // The dashboard provider reads the directory the dashboard is mounted in.
    let provider = yaml("deploy/grafana/provisioning/dashboards/dispatch.yml");
    let providers = provider["providers"].as_vec().expect("providers");
    assert!(
        providers.iter().any(|p| {
            let path = str_of(&p["options"]["path"], "provider path");
            Path::new(&dashboard_target).parent() == Some(Path::new(path))
        }),
        "no dashboard provider reads {dashboard_target}"
    );

    // The datasource points at the compose service.
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let datasource = datasources["datasources"]
        .as_vec()
        .expect("datasources")
        .iter()
        .find(|d| d["type"].as_str() == Some("prometheus"))
        .expect("a Prometheus datasource");
    assert_eq!(str_of(&datasource["url"], "url"), "http://prometheus:9090");
    assert!(services["prometheus"].as_hash().is_some());
}

#[test]
fn the_image_is_multi_stage_pinned_and_runs_as_a_user() {
    let dockerfile = read("deploy/Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let args: BTreeMap<&str, &str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "a builder stage and a runtime stage");
    for from in &froms {
        let image = from.split_whitespace().nth(1).expect("FROM image");
        let image = image
            .strip_prefix("${")
            .and_then(|v| v.strip_suffix('}'))
            .map_or(image, |arg| args.get(arg).copied().expect("ARG default"));
        assert_pinned(image, from);
    }

    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let runtime = &lines[last_from..];
    let user = runtime
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets a USER");
    let uid = user.split(':').next().expect("uid").trim();
    assert!(
        uid != "root" && uid != "0",
        "the image must not run as root: USER {user}"
    );
    let copies: Vec<&&str> = runtime
        .iter()
        .filter(|l| l.starts_with("COPY") || l.starts_with("ADD"))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the runtime stage gets one file: {copies:?}"
    );
    assert!(copies[0].starts_with("COPY --from=") && copies[0].contains("dispatchd"));
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("dispatchd"))
    );
    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(
        exposed.contains("8080") && exposed.contains("9464"),
        "{exposed:?}"
    );

    // librdkafka builds with its own configure: C toolchain, make, perl, OpenSSL and zlib.
    let builder = lines[..last_from].join("\n");
    for package in ["gcc", "make", "perl", "libssl-dev", "zlib1g-dev"] {
        assert!(builder.contains(package), "the builder lacks {package}");
    }
    let runtime_text = runtime.join("\n");
    for package in ["libssl3", "ca-certificates"] {
        assert!(
            runtime_text.contains(package),
            "the runtime lacks {package}"
        );
    }

    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore keeps target/ out of the build context"
    );
}

#[test]
fn the_catalogue_is_what_the_checks_read() {
    // A guard against the checks passing vacuously on an empty catalogue.
    assert!(CATALOGUE.len() >= 20);
    assert!(labels_of("dispatch_kafka_consumer_lag_records", &[]).is_ok());
}
