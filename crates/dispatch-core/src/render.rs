//! Validating an `Event` and rendering it into the JSON body a receiver gets (design section 5):
//!
//! ```json
//! {"id":"evt_…","type":"image.generation.completed","created_at":"2026-11-26T22:00:00.123Z",
//!  "account_id":"acc_…","region":"eu-west","data":{…proto3 JSON of the payload…}}
//! ```
//!
//! The fan-out renders each event once; every delivery and every retry sends those same bytes,
//! so the signature a receiver checks is over exactly what was rendered.

use dispatch_proto::events::v1::Event;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::catalog::{self, EventType, PayloadJson, PayloadKind};
use crate::timestamp;

/// Longest accepted event id, in bytes. Ids travel in headers and keys; a bound keeps them sane.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// Why an event cannot be delivered. Each variant has a short, stable [`reason`](Self::reason)
/// used as a metric label and in the quarantine headers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidEvent {
    /// `id` is empty.
    #[error("field `id`: missing")]
    MissingId,
    /// `id` is too long or contains characters outside `[A-Za-z0-9_.:-]`.
    #[error(
        "field `id`: {0:?} is not a valid event id (1-{MAX_EVENT_ID_LEN} characters of A-Z a-z 0-9 _ . : -)"
    )]
    BadId(String),
    /// `type` is not in the catalog.
    #[error("field `type`: unknown event type {0:?}")]
    UnknownType(String),
    /// No payload is set.
    #[error("field `payload`: missing (type {0:?} needs a payload)")]
    MissingPayload(String),
    /// The payload set is not the one that belongs to `type`.
    #[error("field `payload`: type {event_type:?} carries a {expected:?} payload, got {actual:?}")]
    PayloadMismatch {
        /// The event's `type`.
        event_type: String,
        /// The payload the type requires.
        expected: PayloadKind,
        /// The payload the event carries.
        actual: PayloadKind,
    },
    /// `account_id` is empty.
    #[error("field `account_id`: missing")]
    MissingAccount,
    /// `occurred_at` is unset or cannot be expressed as a date.
    #[error("field `occurred_at`: missing or out of range")]
    BadOccurredAt,
}

impl InvalidEvent {
    /// A short, stable machine-readable reason (bounded set: safe as a metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidEvent::MissingId => "missing_id",
            InvalidEvent::BadId(_) => "bad_id",
            InvalidEvent::UnknownType(_) => "unknown_type",
            InvalidEvent::MissingPayload(_) => "missing_payload",
            InvalidEvent::PayloadMismatch { .. } => "payload_mismatch",
            InvalidEvent::MissingAccount => "missing_account",
            InvalidEvent::BadOccurredAt => "bad_occurred_at",
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_EVENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Checks that an event can be delivered: an id, a known type, the payload of that type, an
/// account and a time. Returns the event's catalog entry.
pub fn validate(event: &Event) -> Result<&'static EventType, InvalidEvent> {
    if event.id.is_empty() {
        return Err(InvalidEvent::MissingId);
    }
    if !valid_id(&event.id) {
        return Err(InvalidEvent::BadId(event.id.clone()));
    }
    let event_type = catalog::lookup(&event.r#type)
        .ok_or_else(|| InvalidEvent::UnknownType(event.r#type.clone()))?;
    let payload = event
        .payload
        .as_ref()
        .ok_or_else(|| InvalidEvent::MissingPayload(event.r#type.clone()))?;
    let actual = PayloadKind::of(payload);
    if actual != event_type.payload {
        return Err(InvalidEvent::PayloadMismatch {
            event_type: event.r#type.clone(),
            expected: event_type.payload,
            actual,
        });
    }
    if event.account_id.is_empty() {
        return Err(InvalidEvent::MissingAccount);
    }
    event
        .occurred_at
        .as_ref()
        .and_then(timestamp::format_rfc3339_millis)
        .ok_or(InvalidEvent::BadOccurredAt)?;
    Ok(event_type)
}

/// The receiver's envelope, in the order its fields are written.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    created_at: String,
    account_id: &'a str,
    region: Option<&'a str>,
    data: PayloadJson<'a>,
}

/// Validates `event` and renders the JSON body a receiver gets. `region` is `null` when the
/// event has none, so every body has the same keys.
pub fn render(event: &Event) -> Result<Vec<u8>, InvalidEvent> {
    validate(event)?;
    let (Some(payload), Some(created_at)) = (
        event.payload.as_ref(),
        event
            .occurred_at
            .as_ref()
            .and_then(timestamp::format_rfc3339_millis),
    ) else {
        // validate() checked both; this arm keeps the function total without a panic.
        return Err(InvalidEvent::BadOccurredAt);
    };
    let envelope = Envelope {
        id: &event.id,
        event_type: &event.r#type,
        created_at,
        account_id: &event.account_id,
        region: (!event.region.is_empty()).then_some(event.region.as_str()),
        data: PayloadJson(payload),
    };
    // Serializing generated messages and strings into a Vec cannot fail.
    Ok(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// Why a receiver body could not be parsed back into an event.
#[derive(Debug, Error)]
pub enum ParseRenderedError {
    /// Not JSON of the envelope's shape.
    #[error("not a webhook envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// `type` is not in the catalog.
    #[error("field `type`: unknown event type {0:?}")]
    UnknownType(String),
    /// `created_at` is not RFC 3339.
    #[error("field `created_at`: {0}")]
    CreatedAt(#[source] time::error::Parse),
    /// `data` does not fit the type's payload.
    #[error("field `data`: does not fit the payload of {event_type:?}: {source}")]
    Data {
        /// The envelope's `type`.
        event_type: String,
        /// What serde found wrong, and where.
        #[source]
        source: crate::catalog::PayloadJsonError,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnedEnvelope {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    created_at: String,
    account_id: String,
    region: Option<String>,
    data: serde_json::Value,
}

/// Parses a receiver body back into an `Event` (attributes are not part of the body, so they
/// come back empty). Used by the dev receiver and by tests that check what endpoints got.
pub fn parse_rendered(body: &[u8]) -> Result<Event, ParseRenderedError> {
    let envelope: OwnedEnvelope =
        serde_json::from_slice(body).map_err(ParseRenderedError::Envelope)?;
    let event_type = catalog::lookup(&envelope.event_type)
        .ok_or_else(|| ParseRenderedError::UnknownType(envelope.event_type.clone()))?;
    let occurred_at = dispatch_proto::wkt::Timestamp::parse_rfc3339(&envelope.created_at)
        .map_err(ParseRenderedError::CreatedAt)?;
    let payload = event_type
        .payload
        .payload_from_json(envelope.data)
        .map_err(|source| ParseRenderedError::Data {
            event_type: envelope.event_type.clone(),
            source,
        })?;
    Ok(Event {
        id: envelope.id,
        r#type: envelope.event_type,
        account_id: envelope.account_id,
        occurred_at: Some(occurred_at),
        region: envelope.region.unwrap_or_default(),
        attributes: Default::default(),
        payload: Some(payload),
    })
}

#[cfg(test)]
mod tests {
    use dispatch_proto::events::v1::{WebhookTest, event::Payload};
    use dispatch_proto::wkt::Timestamp;

    use super::*;
    use crate::catalog::CATALOG;

    fn example_event(event_type: &EventType, index: usize) -> Event {
        Event {
            id: format!("evt_example_{index}"),
            r#type: event_type.name.to_owned(),
            account_id: "acc_demo".to_owned(),
            // 2026-11-26T22:00:00.123Z plus `index` seconds.
            occurred_at: Some(Timestamp {
                seconds: 1_795_730_400 + index as i64,
                nanos: 123_000_000,
            }),
            region: if index.is_multiple_of(2) {
                "eu-west".to_owned()
            } else {
                String::new()
            },
            attributes: [("client_id".to_owned(), "cli_acme".to_owned())].into(),
            payload: Some(
                event_type
                    .example_payload()
                    .expect("catalog example parses"),
            ),
        }
    }

    /// Asserts every value of `expected` is in `actual` at the same place; `actual` may have more
    /// object keys (fields left at their defaults are emitted too).
    fn assert_contains(actual: &serde_json::Value, expected: &serde_json::Value, path: &str) {
        match (actual, expected) {
            (serde_json::Value::Object(actual), serde_json::Value::Object(expected)) => {
                for (key, value) in expected {
                    let found = actual.get(key).unwrap_or(&serde_json::Value::Null);
                    assert_contains(found, value, &format!("{path}.{key}"));
                }
            }
            (serde_json::Value::Array(actual), serde_json::Value::Array(expected)) => {
                assert_eq!(actual.len(), expected.len(), "{path}");
                for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
                    assert_contains(a, e, &format!("{path}[{index}]"));
                }
            }
            _ => assert_eq!(actual, expected, "{path}"),
        }
    }

    #[test]
    fn every_catalog_type_renders_the_envelope_and_parses_back() {
        for (index, event_type) in CATALOG.iter().enumerate() {
            let event = example_event(event_type, index);
            let body = render(&event).unwrap_or_else(|e| panic!("{}: {e}", event_type.name));
            let json: serde_json::Value = serde_json::from_slice(&body).expect("body is JSON");

            assert_eq!(json["id"], event.id.as_str());
            assert_eq!(json["type"], event_type.name);
            assert_eq!(json["account_id"], "acc_demo");
            assert_eq!(
                json["created_at"],
                format!("2026-11-26T22:{:02}:{:02}.123Z", index / 60, index % 60)
            );
            if index % 2 == 0 {
                assert_eq!(json["region"], "eu-west");
            } else {
                assert!(json["region"].is_null());
            }
            // `data` is the payload's proto3 JSON: every field of the example is there as given
            // (the renderer adds fields left at their defaults, never changes given ones).
            let example: serde_json::Value =
                serde_json::from_str(event_type.example_data).expect("example JSON");
            assert_contains(
                &json["data"],
                &example,
                &format!("{}: data", event_type.name),
            );
            let keys: Vec<_> = json.as_object().expect("object").keys().cloned().collect();
            assert_eq!(keys.len(), 6, "{keys:?}");

            let mut back = parse_rendered(&body).expect("parses back");
            back.attributes = event.attributes.clone();
            assert_eq!(back, event, "{}", event_type.name);
        }
    }

    #[test]
    fn envelope_keys_come_in_the_documented_order() {
        let event = example_event(catalog::lookup("webhook.test").expect("known"), 0);
        let body = String::from_utf8(render(&event).expect("valid")).expect("utf-8");
        assert!(
            body.starts_with(r#"{"id":"evt_example_0","type":"webhook.test","created_at":"2026-11-26T22:00:00.123Z","account_id":"acc_demo","region":"eu-west","data":{"#),
            "{body}"
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let good = example_event(catalog::lookup("webhook.test").expect("known"), 0);
        type BreakEvent = Box<dyn Fn(&mut Event)>;
        let cases: Vec<(BreakEvent, &str)> = vec![
            (Box::new(|e| e.id.clear()), "missing_id"),
            (Box::new(|e| e.id = "evt 1".into()), "bad_id"),
            (
                Box::new(|e| e.id = "x".repeat(MAX_EVENT_ID_LEN + 1)),
                "bad_id",
            ),
            (
                Box::new(|e| e.r#type = "image.exploded".into()),
                "unknown_type",
            ),
            (Box::new(|e| e.payload = None), "missing_payload"),
            (
                Box::new(|e| e.r#type = "image.generation.started".into()),
                "payload_mismatch",
            ),
            (Box::new(|e| e.account_id.clear()), "missing_account"),
            (Box::new(|e| e.occurred_at = None), "bad_occurred_at"),
        ];
        assert!(validate(&good).is_ok());
        for (break_it, reason) in cases {
            let mut event = good.clone();
            break_it(&mut event);
            let err = validate(&event).expect_err(reason);
            assert_eq!(err.reason(), reason, "{err}");
            assert!(render(&event).is_err());
        }
        let mismatch = Event {
            r#type: "image.generation.started".into(),
            ..good
        };
        assert_eq!(
            validate(&mismatch).expect_err("mismatch").to_string(),
            "field `payload`: type \"image.generation.started\" carries a ImageGenerationStarted payload, got WebhookTest"
        );
    }

    #[test]
    fn parse_rendered_refuses_foreign_shapes() {
        assert!(parse_rendered(b"not json").is_err());
        assert!(matches!(
            parse_rendered(br#"{"id":"e","type":"nope","created_at":"2026-11-26T22:00:00Z","account_id":"a","region":null,"data":{}}"#),
            Err(ParseRenderedError::UnknownType(_))
        ));
        let err = parse_rendered(br#"{"id":"e","type":"webhook.test","created_at":"2026-11-26T22:00:00Z","account_id":"a","region":null,"data":{"nope":1}}"#)
            .expect_err("unknown data field");
        assert!(err.to_string().contains("nope"), "{err}");
        let ok = parse_rendered(br#"{"id":"e","type":"webhook.test","created_at":"2026-11-26T22:00:00Z","account_id":"a","region":null,"data":{"message":"hi"}}"#)
            .expect("valid");
        assert_eq!(
            ok.payload,
            Some(Payload::WebhookTest(WebhookTest {
                subscription_id: String::new(),
                message: "hi".into()
            }))
        );
    }
}
