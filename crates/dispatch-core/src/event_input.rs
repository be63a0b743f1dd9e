//! An event written as JSON by a person (`dispatchd publish`) or a producer's test, turned into a
//! valid `Event`, with errors that name the offending field.
//!
//! ```json
//! {"type": "image.generation.completed", "account_id": "acc_demo",
//!  "region": "eu-west", "attributes": {"client_id": "cli_acme"},
//!  "data": {"generation_id": "gen_1", "images": []}}
//! ```
//! `id` and `occurred_at` (RFC 3339) are optional and filled in when missing.

use std::collections::HashMap;
use std::time::SystemTime;

use dispatch_proto::events::v1::Event;
use rand::RngCore;
use serde::Deserialize;
use thiserror::Error;

use crate::catalog::{self, Family};
use crate::render::{self, InvalidEvent};
use crate::{ids, timestamp};

/// The JSON shape of an event to publish.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Event id; generated (`evt_…`) when missing.
    #[serde(default)]
    pub id: Option<String>,
    /// Catalog type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The account the event belongs to.
    pub account_id: String,
    /// RFC 3339; now when missing.
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// Optional region.
    #[serde(default)]
    pub region: Option<String>,
    /// Attributes subscriptions filter on.
    #[serde(default)]
    pub attributes: HashMap<String, String>,
    /// The payload as proto3 JSON.
    pub data: serde_json::Value,
}

/// Why an input cannot become an event. Every message starts with the field it is about.
#[derive(Debug, Error)]
pub enum EventInputError {
    /// Not JSON, or not the shape above (missing or unknown fields, wrong types).
    #[error("malformed event JSON: {0}")]
    Malformed(#[source] serde_json::Error),
    /// `type` is not in the catalog.
    #[error("field `type`: unknown event type {name:?}; known types: {known}")]
    UnknownType {
        /// What was given.
        name: String,
        /// The catalog, comma-separated.
        known: String,
    },
    /// `type` is `webhook.test`, which only the admin API's test endpoint sends.
    #[error("field `type`: {0:?} is sent only by the test endpoint and has no domain topic")]
    NotPublishable(String),
    /// `occurred_at` is not RFC 3339.
    #[error("field `occurred_at`: {value:?} is not an RFC 3339 time: {source}")]
    OccurredAt {
        /// What was given.
        value: String,
        /// What the parser found wrong.
        #[source]
        source: time::error::Parse,
    },
    /// `data` does not fit the payload of the type.
    #[error("field `data`: does not fit the payload of {event_type:?}: {source}")]
    Data {
        /// The event's type.
        event_type: String,
        /// What serde found wrong (names the field inside `data`).
        #[source]
        source: crate::catalog::PayloadJsonError,
    },
    /// The assembled event is invalid (empty account, bad id, ...).
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
}

/// A valid event and the family whose domain topic it belongs on.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishableEvent {
    /// The event.
    pub event: Event,
    /// Its family; the topic is `family.domain_topic()`.
    pub family: Family,
}

impl EventInput {
    /// Parses the JSON text of one event.
    pub fn parse(json: &str) -> Result<Self, EventInputError> {
        serde_json::from_str(json).map_err(EventInputError::Malformed)
    }

    /// Builds the event, filling a missing id and time from `now` and `rng`, and validates it.
    pub fn into_event(
        self,
        now: SystemTime,
        rng: &mut impl RngCore,
    ) -> Result<PublishableEvent, EventInputError> {
        let event_type =
            catalog::lookup(&self.event_type).ok_or_else(|| EventInputError::UnknownType {
                name: self.event_type.clone(),
                known: catalog::type_names().collect::<Vec<_>>().join(", "),
            })?;
        if event_type.family.domain_topic().is_none() {
            return Err(EventInputError::NotPublishable(self.event_type));
        }
        let occurred_at = match self.occurred_at {
            Some(text) => {
                dispatch_proto::wkt::Timestamp::parse_rfc3339(&text).map_err(|source| {
                    EventInputError::OccurredAt {
                        value: text,
                        source,
                    }
                })?
            }
            None => timestamp::from_system_time(now),
        };
        let payload = event_type
            .payload
            .payload_from_json(self.data)
            .map_err(|source| EventInputError::Data {
                event_type: self.event_type.clone(),
                source,
            })?;
        let event = Event {
            id: self.id.unwrap_or_else(|| ids::new_event_id(now, rng)),
            r#type: self.event_type,
            account_id: self.account_id,
            occurred_at: Some(occurred_at),
            region: self.region.unwrap_or_default(),
            attributes: self.attributes,
            payload: Some(payload),
        };
        render::validate(&event)?;
        Ok(PublishableEvent {
            event,
            family: event_type.family,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn build(json: &str) -> Result<PublishableEvent, EventInputError> {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_730_400);
        EventInput::parse(json)?.into_event(now, &mut StdRng::seed_from_u64(1))
    }

    #[test]
    fn fills_id_and_time_and_keeps_the_rest() {
        let built = build(
            r#"{"type":"studio.batch.progress","account_id":"acc_demo","region":"eu-west",
                "attributes":{"client_id":"cli_acme"},
                "data":{"batch_id":"bat_1","progress":{"sequence":"4","completed":2,"total":9}}}"#,
        )
        .expect("valid");
        assert_eq!(built.family, Family::Studio);
        assert!(built.event.id.starts_with("evt_"));
        assert_eq!(
            built.event.occurred_at.map(|t| t.seconds),
            Some(1_795_730_400)
        );
        assert_eq!(built.event.attributes["client_id"], "cli_acme");
        assert_eq!(built.event.region, "eu-west");
    }

    #[test]
    fn keeps_given_id_and_time() {
        let built = build(
            r#"{"id":"evt_given","type":"webhook.test","account_id":"a","occurred_at":"2026-01-02T03:04:05Z","data":{}}"#,
        );
        // webhook.test cannot be published; use a domain type instead.
        assert!(matches!(built, Err(EventInputError::NotPublishable(_))));
        let built = build(
            r#"{"id":"evt_given","type":"operation.failed","account_id":"a","occurred_at":"2026-01-02T03:04:05.5Z","data":{"operation_id":"op_1"}}"#,
        )
        .expect("valid");
        assert_eq!(built.event.id, "evt_given");
        assert_eq!(
            built.event.occurred_at,
            Some(dispatch_proto::wkt::Timestamp {
                seconds: 1_767_323_045,
                nanos: 500_000_000
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"type":"image.exploded","account_id":"a","data":{}}"#,
                "field `type`",
            ),
            (
                r#"{"type":"operation.failed","account_id":"a","data":{"colour":1}}"#,
                "colour",
            ),
            (
                r#"{"type":"operation.failed","account_id":"a","data":{"attempts":"many"}}"#,
                "field `data`",
            ),
            (
                r#"{"type":"operation.failed","account_id":"","data":{}}"#,
                "field `account_id`",
            ),
            (
                r#"{"type":"operation.failed","account_id":"a","occurred_at":"noon","data":{}}"#,
                "field `occurred_at`",
            ),
            (
                r#"{"type":"operation.failed","account_id":"a","id":"evt 1","data":{}}"#,
                "field `id`",
            ),
            (
                r#"{"type":"operation.failed","account":"a","data":{}}"#,
                "account",
            ),
            (r#"{"type":"operation.failed","#, "malformed event JSON"),
        ];
        for (json, needle) in cases {
            let err = build(json).expect_err(json).to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
