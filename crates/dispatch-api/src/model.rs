//! The JSON of the API: request bodies (`…In`, `…Patch`, filters) and responses (`…Out`,
//! lists), with their OpenAPI schemas, and the conversions from the records in Kafka.
//!
//! Timestamps are RFC 3339 in UTC with milliseconds (`2026-11-26T22:00:00.123Z`). Signing
//! secrets appear only in [`SubscriptionCreated`] and [`SecretOut`] — the answers of create,
//! rotate and get-secret — never in [`SubscriptionOut`], which every other route returns.

use std::collections::BTreeMap;

use dispatch_core::history::{DeliveryState, DeliveryStatus};
use dispatch_core::timestamp::format_rfc3339_millis;
use dispatch_proto::dispatch::v1::next_action::Action;
use dispatch_proto::dispatch::v1::{
    AttemptOutcome, AttemptRecord, AttemptSummary, DeadLetter, Subscription,
};
use dispatch_proto::wkt::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

fn rfc3339(timestamp: Option<&Timestamp>) -> Option<String> {
    timestamp.and_then(format_rfc3339_millis)
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

// --- subscriptions ------------------------------------------------------------------------------

/// A new subscription.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionIn {
    /// The account the subscription belongs to. Operators must name it; an account token may
    /// leave it out (or name its own account).
    #[serde(default)]
    pub account_id: Option<String>,
    /// The endpoint: `https://` (plain `http://` only where the server allows it), a host whose
    /// addresses are public.
    pub url: String,
    /// Exact event types (`image.generation.completed`) or patterns: `*` stands for one
    /// segment, a final `**` for one or more (`studio.**`; `**` alone for every event).
    pub event_types: Vec<String>,
    /// Attribute filter: each named attribute must be present on the event with one of the
    /// listed values.
    #[serde(default)]
    pub filter: BTreeMap<String, Vec<String>>,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// Most attempts per second to this endpoint; 0 or absent for the server's default.
    #[serde(default)]
    pub rate_limit_per_second: u32,
    /// Most concurrent requests to this endpoint; 0 or absent for the server's default.
    #[serde(default)]
    pub max_in_flight: u32,
    /// Extra request headers; the signature, `posternity-*`, content and connection headers
    /// are reserved.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A dedicated delivery lane the server has configured; absent for the shared one.
    #[serde(default)]
    pub lane: Option<String>,
}

/// Changes to a subscription: every field is optional, and only those given change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    /// A new endpoint URL.
    #[serde(default)]
    pub url: Option<String>,
    /// New event types or patterns (replacing the old list).
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// A new attribute filter (replacing the old one; `{}` removes it).
    #[serde(default)]
    pub filter: Option<BTreeMap<String, Vec<String>>>,
    /// A new description (`""` removes it).
    #[serde(default)]
    pub description: Option<String>,
    /// A new rate limit (0 for the server's default).
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    /// A new concurrency limit (0 for the server's default).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// New custom headers (replacing the old ones; `{}` removes them).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// A new lane (`""` for the shared one).
    #[serde(default)]
    pub lane: Option<String>,
    /// `true` enables the subscription — also one the server disabled after its endpoint
    /// answered 410 Gone; `false` disables it.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A subscription (without its signing secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionOut {
    /// `sub_…`.
    pub id: String,
    /// The account it belongs to.
    pub account_id: String,
    /// The endpoint URL.
    pub url: String,
    /// Event types and patterns.
    pub event_types: Vec<String>,
    /// Attribute filter.
    pub filter: BTreeMap<String, Vec<String>>,
    /// Free text.
    pub description: String,
    /// Whether events are delivered.
    pub enabled: bool,
    /// Why it is disabled (e.g. `endpoint answered 410 Gone`), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Most attempts per second (0: the server's default).
    pub rate_limit_per_second: u32,
    /// Most concurrent requests (0: the server's default).
    pub max_in_flight: u32,
    /// Custom request headers.
    pub headers: BTreeMap<String, String>,
    /// The dedicated delivery lane, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Incremented by every change; send it back as `If-Match` to update only this version.
    pub version: u64,
    /// When it was created.
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// When it last changed.
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

impl From<&Subscription> for SubscriptionOut {
    fn from(subscription: &Subscription) -> Self {
        SubscriptionOut {
            id: subscription.id.clone(),
            account_id: subscription.account_id.clone(),
            url: subscription.url.clone(),
            event_types: subscription.event_types.clone(),
            filter: subscription
                .filter
                .iter()
                .map(|(name, allowed)| (name.clone(), allowed.values.clone()))
                .collect(),
            description: subscription.description.clone(),
            enabled: subscription.enabled,
            disabled_reason: if subscription.enabled {
                None
            } else {
                non_empty(&subscription.disabled_reason)
            },
            rate_limit_per_second: subscription.rate_limit_per_second,
            max_in_flight: subscription.max_in_flight,
            headers: subscription
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            lane: non_empty(&subscription.lane),
            version: subscription.version,
            created_at: rfc3339(subscription.created_at.as_ref()),
            updated_at: rfc3339(subscription.updated_at.as_ref()),
        }
    }
}

/// A new subscription and its signing secret — the one time the secret comes with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionCreated {
    /// The subscription.
    #[serde(flatten)]
    pub subscription: SubscriptionOut,
    /// Its signing secret, `whsec_…`: verify the `webhook-signature` header with it.
    pub secret: String,
}

/// A page of subscriptions, sorted by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionList {
    /// The subscriptions.
    pub data: Vec<SubscriptionOut>,
    /// Whether more follow: ask again with `after` = `next_after`.
    pub has_more: bool,
    /// The cursor of the next page, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One signing secret of a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretEntry {
    /// `whsec_…`.
    pub secret: String,
    /// When it was created.
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// When it stops signing deliveries; absent for the current secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A subscription's signing secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretOut {
    /// The subscription.
    pub subscription_id: String,
    /// The current secret, the one to verify with from now on.
    pub secret: String,
    /// Every secret that still signs deliveries, newest first: the current one and, after a
    /// rotation, the previous ones until they expire. Each delivery carries one signature per
    /// secret listed here.
    pub secrets: Vec<SecretEntry>,
    /// The subscription's version (rotation is a change and increments it).
    pub version: u64,
}

// --- deliveries and attempts --------------------------------------------------------------------

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx.
    Success,
    /// Any other HTTP status.
    HttpStatus,
    /// The whole request did not finish within the timeout.
    Timeout,
    /// DNS, TCP connect or connection reset.
    ConnectError,
    /// The TLS handshake failed.
    TlsError,
    /// The endpoint resolved to an address the SSRF guard refuses.
    BlockedAddress,
    /// 410 Gone: the subscription was disabled.
    Gone,
    /// The URL cannot be requested.
    InvalidUrl,
    /// Not attempted: the subscription was deleted or disabled.
    Skipped,
    /// Not sent: the endpoint's circuit was open when the attempt fell due (recent attempts
    /// failed). It counts as a failed attempt of the retry schedule.
    CircuitOpen,
    /// Not recorded.
    Unspecified,
}

impl Outcome {
    /// Every outcome a filter may name.
    pub const FILTERABLE: [Outcome; 10] = [
        Outcome::Success,
        Outcome::HttpStatus,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::TlsError,
        Outcome::BlockedAddress,
        Outcome::Gone,
        Outcome::InvalidUrl,
        Outcome::Skipped,
        Outcome::CircuitOpen,
    ];

    /// The outcome's name in the API: the same name the sender's metrics use
    /// ([`dispatch_core::outcome::label`]).
    pub fn as_str(self) -> &'static str {
        dispatch_core::outcome::label(self.to_record())
    }

    /// The outcome named `name` (one of [`Outcome::FILTERABLE`]).
    pub fn parse(name: &str) -> Option<Outcome> {
        Outcome::FILTERABLE
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }

    /// The record's outcome.
    pub fn of(outcome: i32) -> Outcome {
        match AttemptOutcome::try_from(outcome).unwrap_or(AttemptOutcome::Unspecified) {
            AttemptOutcome::Success => Outcome::Success,
            AttemptOutcome::HttpStatus => Outcome::HttpStatus,
            AttemptOutcome::Timeout => Outcome::Timeout,
            AttemptOutcome::ConnectError => Outcome::ConnectError,
            AttemptOutcome::TlsError => Outcome::TlsError,
            AttemptOutcome::BlockedAddress => Outcome::BlockedAddress,
            AttemptOutcome::Gone => Outcome::Gone,
            AttemptOutcome::InvalidUrl => Outcome::InvalidUrl,
            AttemptOutcome::Skipped => Outcome::Skipped,
            AttemptOutcome::CircuitOpen => Outcome::CircuitOpen,
            AttemptOutcome::Unspecified => Outcome::Unspecified,
        }
    }

    /// The record value of this outcome.
    pub fn to_record(self) -> AttemptOutcome {
        match self {
            Outcome::Success => AttemptOutcome::Success,
            Outcome::HttpStatus => AttemptOutcome::HttpStatus,
            Outcome::Timeout => AttemptOutcome::Timeout,
            Outcome::ConnectError => AttemptOutcome::ConnectError,
            Outcome::TlsError => AttemptOutcome::TlsError,
            Outcome::BlockedAddress => AttemptOutcome::BlockedAddress,
            Outcome::Gone => AttemptOutcome::Gone,
            Outcome::InvalidUrl => AttemptOutcome::InvalidUrl,
            Outcome::Skipped => AttemptOutcome::Skipped,
            Outcome::CircuitOpen => AttemptOutcome::CircuitOpen,
            Outcome::Unspecified => AttemptOutcome::Unspecified,
        }
    }
}

/// What happened after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NextStep {
    /// Nothing more: delivered, or ended without delivery.
    Done,
    /// Another attempt is scheduled.
    Retry,
    /// Every attempt failed: the delivery went to the DLQ.
    Dead,
    /// Not recorded.
    Unknown,
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptOut {
    /// The delivery.
    pub delivery_id: String,
    /// The event delivered.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The subscription delivered to.
    pub subscription_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it started.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status, when a response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
    /// The first bytes of the response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
    /// What failed, for outcomes without a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What happened next.
    pub next: NextStep,
    /// When the next attempt is due, if one is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// The dead delivery this one replays, if it is a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
}

impl From<&AttemptRecord> for AttemptOut {
    fn from(record: &AttemptRecord) -> Self {
        let action = record
            .next_action
            .as_ref()
            .and_then(|next| next.action.as_ref());
        let (next, next_attempt_at) = match action {
            Some(Action::Done(_)) => (NextStep::Done, None),
            Some(Action::Retry(retry)) => (NextStep::Retry, rfc3339(retry.at.as_ref())),
            Some(Action::Dead(_)) => (NextStep::Dead, None),
            None => (NextStep::Unknown, None),
        };
        AttemptOut {
            delivery_id: record.delivery_id.clone(),
            event_id: record.event_id.clone(),
            event_type: record.event_type.clone(),
            subscription_id: record.subscription_id.clone(),
            attempt: record.attempt,
            started_at: rfc3339(record.started_at.as_ref()),
            duration_ms: record.duration_ms,
            outcome: Outcome::of(record.outcome),
            status_code: (record.status_code != 0).then_some(record.status_code),
            response_excerpt: non_empty(&record.response_excerpt),
            error: non_empty(&record.error),
            next,
            next_attempt_at,
            replay_of: non_empty(&record.replay_of),
        }
    }
}

/// A page of attempts, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptList {
    /// The attempts.
    pub data: Vec<AttemptOut>,
    /// Whether more (older) attempts matched than `limit` allowed.
    pub has_more: bool,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatusName {
    /// Queued, no attempt recorded yet.
    Pending,
    /// Delivered.
    Succeeded,
    /// An attempt failed and another is scheduled.
    Retrying,
    /// Every attempt failed: the delivery is (or was) in the DLQ.
    Dead,
    /// Ended without an attempt (the subscription was deleted).
    Skipped,
}

impl From<DeliveryState> for DeliveryStatusName {
    fn from(state: DeliveryState) -> Self {
        match state {
            DeliveryState::Pending => DeliveryStatusName::Pending,
            DeliveryState::Succeeded => DeliveryStatusName::Succeeded,
            DeliveryState::Retrying => DeliveryStatusName::Retrying,
            DeliveryState::Dead => DeliveryStatusName::Dead,
            DeliveryState::Skipped => DeliveryStatusName::Skipped,
        }
    }
}

/// One delivery of one event to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryOut {
    /// The delivery.
    pub delivery_id: String,
    /// The event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The subscription.
    pub subscription_id: String,
    /// Where it stands.
    pub status: DeliveryStatusName,
    /// The dead delivery this one replays, if it is a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptOut>,
}

impl From<&DeliveryStatus> for DeliveryOut {
    fn from(status: &DeliveryStatus) -> Self {
        DeliveryOut {
            delivery_id: status.delivery_id.clone(),
            event_id: status.event_id.clone(),
            event_type: status.event_type.clone(),
            subscription_id: status.subscription_id.clone(),
            status: status.state.into(),
            replay_of: non_empty(&status.replay_of),
            attempts: status.attempts.iter().map(AttemptOut::from).collect(),
        }
    }
}

impl DeliveryOut {
    /// A delivery known only from its dead letter (its attempt records fell out of the
    /// history, or predate its lookback).
    pub fn from_dead_letter(dead: &DeadLetter) -> Self {
        let task = dead.task.clone().unwrap_or_default();
        let attempts = dead
            .attempts
            .iter()
            .map(|summary| AttemptOut {
                delivery_id: task.delivery_id.clone(),
                event_id: task.event_id.clone(),
                event_type: task.event_type.clone(),
                subscription_id: task.subscription_id.clone(),
                attempt: summary.attempt,
                started_at: rfc3339(summary.started_at.as_ref()),
                duration_ms: summary.duration_ms,
                outcome: Outcome::of(summary.outcome),
                status_code: (summary.status_code != 0).then_some(summary.status_code),
                response_excerpt: None,
                error: non_empty(&summary.error),
                next: NextStep::Unknown,
                next_attempt_at: None,
                replay_of: non_empty(&task.replay_of),
            })
            .collect();
        DeliveryOut {
            delivery_id: task.delivery_id.clone(),
            event_id: task.event_id.clone(),
            event_type: task.event_type.clone(),
            subscription_id: task.subscription_id.clone(),
            status: DeliveryStatusName::Dead,
            replay_of: non_empty(&task.replay_of),
            attempts,
        }
    }
}

/// The deliveries of one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    /// One per subscription the event went to, in the order they were first seen.
    pub data: Vec<DeliveryOut>,
}

/// What `POST /v1/subscriptions/{id}/test` queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestEventOut {
    /// The delivery to follow with `GET /v1/deliveries/{delivery_id}`.
    pub delivery_id: String,
    /// The `webhook.test` event (the receiver's `webhook-id`).
    pub event_id: String,
}

// --- dead letters -------------------------------------------------------------------------------

/// One attempt of a dead delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptSummaryOut {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it started.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status, when a response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
    /// What failed, for outcomes without a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&AttemptSummary> for AttemptSummaryOut {
    fn from(summary: &AttemptSummary) -> Self {
        AttemptSummaryOut {
            attempt: summary.attempt,
            started_at: rfc3339(summary.started_at.as_ref()),
            duration_ms: summary.duration_ms,
            outcome: Outcome::of(summary.outcome),
            status_code: (summary.status_code != 0).then_some(summary.status_code),
            error: non_empty(&summary.error),
        }
    }
}

/// A delivery that failed its whole schedule, waiting in the DLQ (kept 7 days).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterOut {
    /// The dead delivery; replay or delete it by this id.
    pub delivery_id: String,
    /// The event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The subscription.
    pub subscription_id: String,
    /// The account.
    pub account_id: String,
    /// Why it was given up.
    pub reason: String,
    /// When it was given up.
    #[schema(format = DateTime)]
    pub dead_at: Option<String>,
    /// The dead delivery this one replayed, if it was itself a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptSummaryOut>,
}

impl From<&DeadLetter> for DeadLetterOut {
    fn from(dead: &DeadLetter) -> Self {
        let task = dead.task.clone().unwrap_or_default();
        DeadLetterOut {
            delivery_id: task.delivery_id,
            event_id: task.event_id,
            event_type: task.event_type,
            subscription_id: task.subscription_id,
            account_id: task.account_id,
            reason: dead.reason.clone(),
            dead_at: rfc3339(dead.dead_at.as_ref()),
            replay_of: non_empty(&task.replay_of),
            attempts: dead.attempts.iter().map(AttemptSummaryOut::from).collect(),
        }
    }
}

/// A page of dead letters, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    /// The dead letters.
    pub data: Vec<DeadLetterOut>,
    /// Whether more (older) letters matched than `limit` allowed.
    pub has_more: bool,
}

/// Which dead letters `POST /v1/dlq/replay` replays; absent fields match every letter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    /// Only this account's (operators; an account token always means its own).
    #[serde(default)]
    pub account_id: Option<String>,
    /// Only deliveries to this subscription.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// Only events of this exact type.
    #[serde(default)]
    pub event_type: Option<String>,
}

/// What a single replay queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplayOut {
    /// The new delivery (a fresh attempt series); follow it with `GET /v1/deliveries/{id}`.
    pub delivery_id: String,
    /// The dead delivery it replays, now gone from the DLQ.
    pub replay_of: String,
}

/// What a filtered replay queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplayBatchOut {
    /// How many dead letters were replayed (and removed from the DLQ).
    pub count: usize,
    /// How many matched but were left in the DLQ because their subscription is deleted or
    /// disabled.
    pub skipped: usize,
    /// Whether more matching letters remain than one request replays; repeat the request.
    pub has_more: bool,
}

// --- the catalog --------------------------------------------------------------------------------

/// One event type of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventTypeOut {
    /// The type name, e.g. `image.generation.completed`.
    pub name: String,
    /// Its family: `image`, `video`, `operation`, `studio`, `map` or `webhook`.
    pub family: String,
    /// What it means.
    pub description: String,
    /// A progress update: only the newest (by `data.progress.sequence`) of a job matters.
    pub progress: bool,
    /// An example of the `data` object a receiver gets.
    #[schema(value_type = Object)]
    pub example: serde_json::Value,
}

/// The event catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventTypeList {
    /// Every type, in catalog order.
    pub data: Vec<EventTypeOut>,
}

#[cfg(test)]
mod tests {
    use dispatch_proto::dispatch::v1::{
        AttributeValues, DeliveryTask, NextAction, SigningSecret as StoredSecret, next_action,
    };

    use super::*;

    #[test]
    fn a_subscription_is_shown_without_its_secrets() {
        let subscription = Subscription {
            id: "sub_1".into(),
            account_id: "acc_1".into(),
            url: "https://example.com/hook".into(),
            event_types: vec!["image.**".into()],
            filter: [(
                "region".to_owned(),
                AttributeValues {
                    values: vec!["eu-west".into()],
                },
            )]
            .into(),
            secrets: vec![StoredSecret {
                secret: "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0".into(),
                ..StoredSecret::default()
            }],
            enabled: false,
            disabled_reason: "endpoint answered 410 Gone".into(),
            version: 3,
            created_at: Some(Timestamp {
                seconds: 1_795_730_400,
                nanos: 123_000_000,
            }),
            ..Subscription::default()
        };
        let out = SubscriptionOut::from(&subscription);
        let json = serde_json::to_value(&out).expect("serializes");
        assert!(!json.to_string().contains("whsec_"), "{json}");
        assert_eq!(json["created_at"], "2026-11-26T22:00:00.123Z");
        assert_eq!(json["disabled_reason"], "endpoint answered 410 Gone");
        assert_eq!(json["filter"]["region"][0], "eu-west");
        assert!(json.get("lane").is_none());
        assert_eq!(json["version"], 3);
    }

    #[test]
    fn outcomes_round_trip_through_their_names() {
        for outcome in Outcome::FILTERABLE {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
            assert_eq!(Outcome::of(outcome.to_record() as i32), outcome);
            assert_eq!(
                serde_json::to_value(outcome).expect("serializes"),
                outcome.as_str()
            );
        }
        assert_eq!(Outcome::parse("unspecified"), None);
        assert_eq!(Outcome::parse("SUCCESS"), None);
        assert_eq!(Outcome::of(99), Outcome::Unspecified);
    }

    #[test]
    fn an_attempt_shows_its_next_step() {
        let record = AttemptRecord {
            delivery_id: "dlv_1".into(),
            attempt: 2,
            outcome: AttemptOutcome::HttpStatus as i32,
            status_code: 503,
            next_action: Some(NextAction {
                action: Some(next_action::Action::Retry(next_action::Retry {
                    at: Some(Timestamp {
                        seconds: 1_795_730_460,
                        nanos: 0,
                    }),
                    tier: "1m".into(),
                    next_attempt: 3,
                })),
            }),
            ..AttemptRecord::default()
        };
        let out = AttemptOut::from(&record);
        assert_eq!(out.outcome, Outcome::HttpStatus);
        assert_eq!(out.status_code, Some(503));
        assert_eq!(out.next, NextStep::Retry);
        assert_eq!(
            out.next_attempt_at.as_deref(),
            Some("2026-11-26T22:01:00.000Z")
        );
        assert_eq!(out.error, None);
    }

    #[test]
    fn a_dead_letter_names_its_delivery() {
        let dead = DeadLetter {
            task: Some(DeliveryTask {
                delivery_id: "dlv_1".into(),
                event_id: "evt_1".into(),
                subscription_id: "sub_1".into(),
                account_id: "acc_1".into(),
                body: b"secret-ish body".to_vec(),
                ..DeliveryTask::default()
            }),
            attempts: vec![AttemptSummary {
                attempt: 1,
                outcome: AttemptOutcome::Timeout as i32,
                error: "timed out".into(),
                ..AttemptSummary::default()
            }],
            reason: "retries exhausted".into(),
            dead_at: None,
        };
        let out = DeadLetterOut::from(&dead);
        assert_eq!(out.delivery_id, "dlv_1");
        assert_eq!(out.attempts[0].outcome, Outcome::Timeout);
        let delivery = DeliveryOut::from_dead_letter(&dead);
        assert_eq!(delivery.status, DeliveryStatusName::Dead);
        assert_eq!(delivery.attempts[0].error.as_deref(), Some("timed out"));
    }
}
