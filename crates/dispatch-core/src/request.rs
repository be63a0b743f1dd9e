//! The request of one attempt: a delivery task and its subscription → the URL, the headers and
//! the body a receiver gets, signed with every live secret of the subscription. The webhook
//! client (`dispatch-http`) only sends what is built here; it knows no tasks or subscriptions.
//!
//! The headers, in the order they are sent (the client puts its `user-agent` in front):
//!
//! 1. `content-type: application/json`;
//! 2. `webhook-id` (the event id), `webhook-timestamp`, `webhook-signature` (Standard Webhooks,
//!    [`crate::signing`]);
//! 3. `posternity-delivery-id` and `posternity-attempt`;
//! 4. the subscription's custom headers by name, leaving out (with a warning) those
//!    [`is_reserved_header`] names and those that are not valid HTTP.
//!
//! A request that must not be sent at all is a [`RequestError`]: no live secret (webhooks are
//! never sent unsigned) or an id that cannot be a header value.

use std::time::SystemTime;

use dispatch_proto::dispatch::v1::{DeliveryTask, Subscription};

use crate::signing::{NoSigningSecret, SigningSecret, WebhookHeaders, unix_seconds};
use crate::timestamp::to_system_time;

/// The header carrying the delivery id (one event to one subscription; the same on retries).
pub const HEADER_DELIVERY_ID: &str = "posternity-delivery-id";
/// The header carrying the 1-based attempt number.
pub const HEADER_ATTEMPT: &str = "posternity-attempt";
/// The `content-type` of every webhook: the body is the rendered event, JSON.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The request of one attempt, ready for the webhook client: every header name is a valid HTTP
/// header name and every value a valid HTTP header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The subscription's endpoint URL, as stored (the client checks it before connecting).
    pub url: String,
    /// `(name, value)` pairs in the order they are to be sent (see the module docs).
    pub headers: Vec<(String, String)>,
    /// The task's body, byte for byte as signed.
    pub body: Vec<u8>,
}

/// Why no request can be built, so nothing is sent. Neither gets better by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The subscription has no live signing secret ([`live_secrets`] is empty).
    #[error(transparent)]
    NoSigningSecret(#[from] NoSigningSecret),
    /// An id meant for a header is not a valid HTTP header value.
    #[error("the {name} header value is not a valid HTTP header value")]
    InvalidHeaderValue {
        /// The header.
        name: &'static str,
    },
}

/// The request of `task`'s attempt to `subscription`'s endpoint, made at `now`: signed with
/// every secret [`live_secrets`] at `now` returns, stamped with `now` as `webhook-timestamp`.
pub fn webhook_request(
    task: &DeliveryTask,
    subscription: &Subscription,
    now: SystemTime,
) -> Result<SignedRequest, RequestError> {
    let secrets = live_secrets(subscription, now);
    let secrets: Vec<&SigningSecret> = secrets.iter().collect();
    let signed = WebhookHeaders::new(&secrets, &task.event_id, unix_seconds(now), &task.body)?;

    let mut headers = Vec::with_capacity(6 + subscription.headers.len());
    headers.push(("content-type".to_owned(), CONTENT_TYPE_JSON.to_owned()));
    for (name, value) in signed.pairs() {
        headers.push((name.to_owned(), header_value(name, value)?));
    }
    headers.push((
        HEADER_DELIVERY_ID.to_owned(),
        header_value(HEADER_DELIVERY_ID, &task.delivery_id)?,
    ));
    headers.push((HEADER_ATTEMPT.to_owned(), task.attempt.to_string()));

    // By name, so the same subscription always yields the same request. The admin API refuses
    // the headers left out here; only records written around it can carry them.
    let mut custom: Vec<(&String, &String)> = subscription.headers.iter().collect();
    custom.sort_unstable();
    for (name, value) in custom {
        if is_reserved_header(name) {
            tracing::warn!(
                delivery_id = %task.delivery_id,
                header = %name,
                "skipping a custom header that would override a reserved one"
            );
        } else if !is_header_name(name) || !is_header_value(value) {
            // The value is not logged: custom headers often carry credentials.
            tracing::warn!(
                delivery_id = %task.delivery_id,
                header = ?name,
                "skipping a custom header with an invalid name or value"
            );
        } else {
            headers.push((name.clone(), value.clone()));
        }
    }

    Ok(SignedRequest {
        url: subscription.url.clone(),
        headers,
        body: task.body.clone(),
    })
}

fn header_value(name: &'static str, value: &str) -> Result<String, RequestError> {
    if is_header_value(value) {
        Ok(value.to_owned())
    } else {
        Err(RequestError::InvalidHeaderValue { name })
    }
}

/// The secrets that sign an attempt made at `now`: those without `expires_at`, or expiring
/// after `now`, newest first (the order the subscription keeps them in). A secret that does not
/// parse, or whose `expires_at` is malformed, is skipped with a warning naming the subscription
/// and the secret's position (never the secret). An empty result means the subscription cannot
/// be delivered to: webhooks are never sent unsigned.
#[must_use]
pub fn live_secrets(subscription: &Subscription, now: SystemTime) -> Vec<SigningSecret> {
    subscription
        .secrets
        .iter()
        .enumerate()
        .filter_map(|(index, stored)| {
            if let Some(expires_at) = &stored.expires_at {
                match to_system_time(expires_at) {
                    Some(expires_at) if expires_at <= now => return None,
                    Some(_) => {}
                    None => {
                        tracing::warn!(
                            subscription_id = %subscription.id,
                            secret_index = index,
                            "skipping a signing secret whose expires_at is out of range"
                        );
                        return None;
                    }
                }
            }
            match SigningSecret::parse(&stored.secret) {
                Ok(secret) => Some(secret),
                Err(error) => {
                    tracing::warn!(
                        subscription_id = %subscription.id,
                        secret_index = index,
                        %error,
                        "skipping a signing secret that does not parse"
                    );
                    None
                }
            }
        })
        .collect()
}

/// Whether a custom header of a subscription may not be set: ours (Standard Webhooks and
/// `posternity-*`, which a custom header must never override), and those that belong to the HTTP
/// layer (framing, connection management, `host`), which would break or smuggle the request.
#[must_use]
pub fn is_reserved_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("webhook-")
        || name.starts_with("posternity-")
        || name.starts_with("proxy-")
        || matches!(
            name.as_str(),
            "content-type"
                | "content-length"
                | "content-encoding"
                | "transfer-encoding"
                | "user-agent"
                | "host"
                | "connection"
                | "keep-alive"
                | "upgrade"
                | "te"
                | "trailer"
                | "expect"
        )
}

/// Whether `name` is a valid HTTP header name: a non-empty token (RFC 9110, section 5.6.2).
#[must_use]
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Whether `value` is a valid HTTP header value as the `http` crate's `HeaderValue::from_str`
/// takes it: no control characters (tabs aside) and no `DEL`, so no line breaks either.
/// Non-ASCII bytes are `obs-text`, which HTTP still carries.
#[must_use]
pub fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|byte| byte == b'\t' || (byte >= b' ' && byte != 0x7f))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use dispatch_proto::dispatch::v1::SigningSecret as StoredSecret;
    use dispatch_proto::wkt::Timestamp;

    use super::*;
    use crate::signing::{DEFAULT_TOLERANCE, ReceivedHeaders, verify};
    use crate::timestamp::from_system_time;

    const NOW_SECS: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn secret(byte: u8) -> SigningSecret {
        SigningSecret::from_bytes(&[byte; 32]).expect("32 bytes is a valid key")
    }

    fn stored(secret: &SigningSecret, expires_at: Option<SystemTime>) -> StoredSecret {
        StoredSecret {
            secret: secret.as_str().to_owned(),
            created_at: None,
            expires_at: expires_at.map(from_system_time),
        }
    }

    fn task() -> DeliveryTask {
        DeliveryTask {
            delivery_id: "dlv_456".into(),
            event_id: "evt_123".into(),
            subscription_id: "sub_1".into(),
            attempt: 3,
            body: br#"{"id":"evt_123","type":"image.generation.completed"}"#.to_vec(),
            ..DeliveryTask::default()
        }
    }

    fn subscription(secrets: &[&SigningSecret], headers: &[(&str, &str)]) -> Subscription {
        Subscription {
            id: "sub_1".into(),
            url: "https://hooks.example.com/in?source=posternity".into(),
            secrets: secrets.iter().map(|secret| stored(secret, None)).collect(),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect::<HashMap<_, _>>(),
            ..Subscription::default()
        }
    }

    fn header<'a>(request: &'a SignedRequest, name: &str) -> Option<&'a str> {
        request
            .headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    fn verifies(request: &SignedRequest, secret: &SigningSecret) -> bool {
        let received = ReceivedHeaders::from_lookup(|name| header(request, name));
        verify(secret, &received, &request.body, now(), DEFAULT_TOLERANCE).is_ok()
    }

    #[test]
    fn builds_the_signed_request_in_order() {
        let (current, previous, stranger) = (secret(1), secret(2), secret(3));
        let task = task();
        let request = webhook_request(
            &task,
            &subscription(&[&current, &previous], &[]),
            now() + Duration::from_millis(999),
        )
        .expect("sendable");

        assert_eq!(
            request.url,
            "https://hooks.example.com/in?source=posternity"
        );
        assert_eq!(request.body, task.body);
        let names: Vec<&str> = request
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "content-type",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
                "posternity-delivery-id",
                "posternity-attempt",
            ]
        );
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        assert_eq!(header(&request, "webhook-id"), Some("evt_123"));
        assert_eq!(header(&request, "webhook-timestamp"), Some("1800000000"));
        assert_eq!(header(&request, "posternity-delivery-id"), Some("dlv_456"));
        assert_eq!(header(&request, "posternity-attempt"), Some("3"));

        // One signature per live secret, newest first, each verifying on its own.
        let signatures: Vec<&str> = header(&request, "webhook-signature")
            .expect("signed")
            .split(' ')
            .collect();
        assert_eq!(
            signatures,
            [
                current.sign("evt_123", 1_800_000_000, &task.body),
                previous.sign("evt_123", 1_800_000_000, &task.body)
            ]
        );
        assert!(verifies(&request, &current));
        assert!(verifies(&request, &previous));
        assert!(!verifies(&request, &stranger));
    }

    #[test]
    fn custom_headers_follow_ours_by_name_and_never_override_them() {
        let request = webhook_request(
            &task(),
            &subscription(
                &[&secret(1)],
                &[
                    ("x-zeta", "last"),
                    ("X-Customer-Token", "tok_abc"),
                    ("authorization", "Bearer abc"),
                    // Ours and the HTTP layer's are never overridden.
                    ("Webhook-Id", "forged"),
                    ("posternity-attempt", "99"),
                    ("content-type", "text/plain"),
                    ("user-agent", "forged"),
                    ("transfer-encoding", "chunked"),
                    // Not valid HTTP.
                    ("x-bad value", "name with a space"),
                    ("x-multiline", "a\r\nx-injected: 1"),
                    ("x-nul", "a\0b"),
                    ("x-é", "non-ASCII name"),
                ],
            ),
            now(),
        )
        .expect("sendable");

        assert_eq!(
            request.headers[6..],
            [
                ("X-Customer-Token".to_owned(), "tok_abc".to_owned()),
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-zeta".to_owned(), "last".to_owned()),
            ]
        );
        assert_eq!(header(&request, "webhook-id"), Some("evt_123"));
        assert_eq!(header(&request, "posternity-attempt"), Some("3"));
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        for name in ["webhook-id", "posternity-attempt", "content-type"] {
            let count = request
                .headers
                .iter()
                .filter(|(header, _)| header.eq_ignore_ascii_case(name))
                .count();
            assert_eq!(count, 1, "{name}");
        }
        assert!(verifies(&request, &secret(1)));
    }

    #[test]
    fn nothing_is_built_without_a_live_secret() {
        let task = task();
        assert_eq!(
            webhook_request(&task, &subscription(&[], &[]), now()),
            Err(RequestError::NoSigningSecret(NoSigningSecret))
        );
        let expired = Subscription {
            secrets: vec![stored(&secret(1), Some(now()))],
            ..subscription(&[], &[])
        };
        let error = webhook_request(&task, &expired, now()).expect_err("only an expired secret");
        assert_eq!(
            error.to_string(),
            "the subscription has no live signing secret; webhooks are never sent unsigned"
        );
    }

    #[test]
    fn ids_unfit_for_a_header_are_refused() {
        let subscription = subscription(&[&secret(1)], &[]);
        let bad_event = DeliveryTask {
            event_id: "evt_1\r\nx-injected: 1".into(),
            ..task()
        };
        assert_eq!(
            webhook_request(&bad_event, &subscription, now()),
            Err(RequestError::InvalidHeaderValue { name: "webhook-id" })
        );
        let bad_delivery = DeliveryTask {
            delivery_id: "dlv_\u{7f}".into(),
            ..task()
        };
        let error = webhook_request(&bad_delivery, &subscription, now()).expect_err("refused");
        assert_eq!(
            error,
            RequestError::InvalidHeaderValue {
                name: "posternity-delivery-id"
            }
        );
        assert_eq!(
            error.to_string(),
            "the posternity-delivery-id header value is not a valid HTTP header value"
        );
    }

    #[test]
    fn live_secrets_keeps_current_and_unexpired_secrets_in_order() {
        let (current, rotating, expired, just_expired) =
            (secret(1), secret(2), secret(3), secret(4));
        let subscription = Subscription {
            id: "sub_1".into(),
            secrets: vec![
                stored(&current, None),
                stored(&rotating, Some(now() + Duration::from_secs(60))),
                stored(&expired, Some(now() - Duration::from_secs(60))),
                stored(&just_expired, Some(now())),
                StoredSecret {
                    secret: "whsec_not-base64!".into(),
                    ..StoredSecret::default()
                },
                StoredSecret {
                    secret: secret(5).as_str().to_owned(),
                    created_at: None,
                    expires_at: Some(Timestamp {
                        seconds: 0,
                        nanos: -1,
                    }),
                },
            ],
            ..Subscription::default()
        };
        assert_eq!(live_secrets(&subscription, now()), vec![current, rotating]);
        assert!(live_secrets(&Subscription::default(), now()).is_empty());
    }

    #[test]
    fn reserved_headers() {
        for name in [
            "webhook-id",
            "Webhook-Signature",
            "webhook-timestamp",
            "posternity-attempt",
            "Posternity-Delivery-Id",
            "content-type",
            "Content-Length",
            "transfer-encoding",
            "host",
            "user-agent",
            "connection",
            "proxy-authorization",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in ["authorization", "x-api-key", "x-webhook-source", "accept"] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }

    #[test]
    fn header_names_and_values_follow_http() {
        for name in ["x-api-key", "Authorization", "x_a.b~c!#$%&'*+^`|"] {
            assert!(is_header_name(name), "{name}");
        }
        for name in ["", "x api", "x:y", "x\n", "é", "x(y)", "x\"y"] {
            assert!(!is_header_name(name), "{name:?}");
        }
        for value in ["", "Bearer abc", "a\tb", "~!@#", "café"] {
            assert!(is_header_value(value), "{value:?}");
        }
        for value in ["a\r\nb", "a\nb", "\0", "\u{7f}"] {
            assert!(!is_header_value(value), "{value:?}");
        }
    }
}
