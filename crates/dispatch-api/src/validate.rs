//! The rules a subscription's values must follow before it is written, each failure a 400 that
//! names the field and the reason. The subscription fold refuses only what would corrupt the
//! table; these rules refuse what would never work (a URL the sender would refuse, a pattern
//! that matches no event type, a header that would collide with ours, a lane that has no topic).

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{HeaderName, HeaderValue};
use dispatch_core::catalog;
use dispatch_core::matching::EventPattern;
use dispatch_core::request::is_reserved_header;
use dispatch_http::{HttpConfig, UrlError, check_endpoint};

use crate::error::ApiError;

/// The longest endpoint URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// The most event types or patterns one subscription may list.
pub const MAX_EVENT_TYPES: usize = 64;
/// The most attributes a filter may name.
pub const MAX_FILTER_ATTRIBUTES: usize = 32;
/// The most values one filter attribute may allow.
pub const MAX_FILTER_VALUES: usize = 256;
/// The longest filter attribute name or value, in bytes.
pub const MAX_FILTER_TEXT_LEN: usize = 256;
/// The most custom headers one subscription may carry.
pub const MAX_HEADERS: usize = 32;
/// The longest custom header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// Checks an endpoint URL as the sender will (scheme, host, no credentials, the SSRF guard on
/// literal addresses and on what a name resolves to) and returns it trimmed.
pub async fn url(url: &str, http: &HttpConfig) -> Result<String, ApiError> {
    let url = url.trim();
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::invalid(
            "url",
            "invalid_url",
            format!("the endpoint URL is longer than {MAX_URL_LEN} bytes"),
        ));
    }
    check_endpoint(url, http).await.map_err(|error| {
        let code = match error {
            UrlError::BlockedAddress { .. } | UrlError::BlockedName(_) => "blocked_url",
            _ => "invalid_url",
        };
        ApiError::invalid("url", code, error.to_string())
    })?;
    Ok(url.to_owned())
}

/// Checks event types and patterns: at least one, each a valid pattern that matches at least one
/// type of the catalog. Returns them without duplicates, in the order given.
pub fn event_types(event_types: &[String]) -> Result<Vec<String>, ApiError> {
    if event_types.is_empty() {
        return Err(ApiError::invalid(
            "event_types",
            "invalid_event_type",
            "must list at least one event type or pattern (`**` for every event)",
        ));
    }
    if event_types.len() > MAX_EVENT_TYPES {
        return Err(ApiError::invalid(
            "event_types",
            "invalid_event_type",
            format!("may list at most {MAX_EVENT_TYPES} event types or patterns"),
        ));
    }
    let known: Vec<&str> = catalog::type_names().collect();
    let mut seen = BTreeSet::new();
    let mut checked = Vec::with_capacity(event_types.len());
    for (index, text) in event_types.iter().enumerate() {
        let field = || format!("event_types[{index}]");
        let pattern = EventPattern::parse(text)
            .map_err(|error| ApiError::invalid(field(), "invalid_event_type", error.to_string()))?;
        if !pattern.matches_any(&known) {
            let what = if pattern.is_exact() {
                "is not an event type of the catalog"
            } else {
                "matches no event type of the catalog"
            };
            return Err(ApiError::invalid(
                field(),
                "unknown_event_type",
                format!("{text:?} {what} (GET /v1/event-types lists them)"),
            ));
        }
        if seen.insert(text.as_str()) {
            checked.push(text.clone());
        }
    }
    Ok(checked)
}

/// Checks an attribute filter: named attributes, each allowing at least one value (an empty list
/// would silently match nothing).
pub fn filter(filter: &BTreeMap<String, Vec<String>>) -> Result<(), ApiError> {
    if filter.len() > MAX_FILTER_ATTRIBUTES {
        return Err(ApiError::invalid(
            "filter",
            "invalid_filter",
            format!("may name at most {MAX_FILTER_ATTRIBUTES} attributes"),
        ));
    }
    for (name, values) in filter {
        let field = || format!("filter.{name}");
        if name.is_empty() || name.len() > MAX_FILTER_TEXT_LEN {
            return Err(ApiError::invalid(
                "filter",
                "invalid_filter",
                format!("attribute names must be 1 to {MAX_FILTER_TEXT_LEN} bytes long"),
            ));
        }
        if values.is_empty() {
            return Err(ApiError::invalid(
                field(),
                "invalid_filter",
                "must allow at least one value; leave the attribute out to accept any",
            ));
        }
        if values.len() > MAX_FILTER_VALUES {
            return Err(ApiError::invalid(
                field(),
                "invalid_filter",
                format!("may allow at most {MAX_FILTER_VALUES} values"),
            ));
        }
        if values.iter().any(|value| value.len() > MAX_FILTER_TEXT_LEN) {
            return Err(ApiError::invalid(
                field(),
                "invalid_filter",
                format!("values must be at most {MAX_FILTER_TEXT_LEN} bytes long"),
            ));
        }
    }
    Ok(())
}

/// Checks custom headers: valid names and values, none the sender sets itself (signature,
/// `posternity-*`, content and connection headers). Returns them with names in lowercase, the
/// form the sender compares.
pub fn headers(headers: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::invalid(
            "headers",
            "invalid_header",
            format!("may set at most {MAX_HEADERS} headers"),
        ));
    }
    let mut checked = BTreeMap::new();
    for (name, value) in headers {
        let field = || format!("headers.{name}");
        let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ApiError::invalid(field(), "invalid_header", "is not a valid HTTP header name")
        })?;
        if is_reserved_header(parsed.as_str()) {
            return Err(ApiError::invalid(
                field(),
                "reserved_header",
                "is set by the sender itself (signature, posternity-*, content and connection headers) and cannot be overridden",
            ));
        }
        if value.len() > MAX_HEADER_VALUE_LEN || HeaderValue::from_str(value).is_err() {
            return Err(ApiError::invalid(
                field(),
                "invalid_header",
                format!(
                    "the value must be visible ASCII and spaces, at most {MAX_HEADER_VALUE_LEN} bytes"
                ),
            ));
        }
        if checked
            .insert(parsed.as_str().to_owned(), value.clone())
            .is_some()
        {
            return Err(ApiError::invalid(
                field(),
                "invalid_header",
                "is set twice (header names are case-insensitive)",
            ));
        }
    }
    Ok(checked)
}

/// Checks a lane: empty (the shared deliveries topic) or one of the configured lanes.
pub fn lane(lane: &str, lanes: &BTreeSet<String>) -> Result<(), ApiError> {
    if lane.is_empty() || lanes.contains(lane) {
        return Ok(());
    }
    let known = if lanes.is_empty() {
        "none is configured".to_owned()
    } else {
        format!(
            "configured: {}",
            lanes.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Err(ApiError::invalid(
        "lane",
        "unknown_lane",
        format!("{lane:?} is not a delivery lane ({known})"),
    ))
}

/// Checks a description's length.
pub fn description(description: &str) -> Result<(), ApiError> {
    if description.len() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::invalid(
            "description",
            "invalid_description",
            format!("must be at most {MAX_DESCRIPTION_LEN} bytes long"),
        ));
    }
    Ok(())
}

/// Checks an account id named in a request.
pub fn account_id(account_id: &str) -> Result<(), ApiError> {
    crate::config::check_account_id(account_id)
        .map_err(|reason| ApiError::invalid("account_id", "invalid_account", reason))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn assert_invalid(error: ApiError, field: &str, code: &str) -> String {
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error.field(), Some(field), "{error}");
        assert_eq!(error.code(), code, "{error}");
        error.message().to_owned()
    }

    #[tokio::test]
    async fn urls_are_checked_like_the_sender_does() {
        let strict = HttpConfig::default();
        assert_eq!(
            url("  https://8.8.8.8/hook ", &strict)
                .await
                .expect("valid"),
            "https://8.8.8.8/hook"
        );
        let message = assert_invalid(
            url("http://8.8.8.8/hook", &strict).await.expect_err("http"),
            "url",
            "invalid_url",
        );
        assert!(message.contains("https://"), "{message}");
        let message = assert_invalid(
            url("https://127.0.0.1/hook", &strict)
                .await
                .expect_err("loopback"),
            "url",
            "blocked_url",
        );
        assert!(message.contains("loopback"), "{message}");
        assert_invalid(
            url("https://169.254.169.254/latest", &strict)
                .await
                .expect_err("metadata"),
            "url",
            "blocked_url",
        );
        assert_invalid(
            url("ftp://example.com/", &strict).await.expect_err("ftp"),
            "url",
            "invalid_url",
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_invalid(
            url(&long, &strict).await.expect_err("long"),
            "url",
            "invalid_url",
        );
        // `localhost` is a name: it is resolved, and what it resolves to is refused.
        assert_invalid(
            url("https://localhost/hook", &strict)
                .await
                .expect_err("resolves to loopback"),
            "url",
            "blocked_url",
        );
        let dev = HttpConfig {
            allow_http: true,
            allow_addresses: vec!["127.0.0.1/32".into()],
            ..HttpConfig::default()
        };
        assert!(url("http://127.0.0.1:9000/hook", &dev).await.is_ok());
    }

    #[test]
    fn event_types_must_be_known_types_or_patterns_that_match_some() {
        assert_eq!(
            event_types(&strings(&[
                "image.generation.completed",
                "studio.**",
                "map.*.completed",
                "studio.**"
            ]))
            .expect("valid"),
            strings(&["image.generation.completed", "studio.**", "map.*.completed"])
        );
        assert_eq!(
            event_types(&strings(&["**"])).expect("all"),
            strings(&["**"])
        );
        assert_invalid(
            event_types(&[]).expect_err("empty"),
            "event_types",
            "invalid_event_type",
        );
        let message = assert_invalid(
            event_types(&strings(&["image.**", "image.generation.complete"])).expect_err("typo"),
            "event_types[1]",
            "unknown_event_type",
        );
        assert!(message.contains("image.generation.complete"), "{message}");
        assert_invalid(
            event_types(&strings(&["audio.**"])).expect_err("no family"),
            "event_types[0]",
            "unknown_event_type",
        );
        let message = assert_invalid(
            event_types(&strings(&["image.gen*"])).expect_err("partial wildcard"),
            "event_types[0]",
            "invalid_event_type",
        );
        assert!(message.contains("gen*"), "{message}");
        assert_invalid(
            event_types(&strings(&["Image.Generation"])).expect_err("uppercase"),
            "event_types[0]",
            "invalid_event_type",
        );
        let many: Vec<String> = (0..=MAX_EVENT_TYPES).map(|_| "**".to_owned()).collect();
        assert_invalid(
            event_types(&many).expect_err("too many"),
            "event_types",
            "invalid_event_type",
        );
    }

    #[test]
    fn filters_allow_at_least_one_value_per_attribute() {
        let good: BTreeMap<String, Vec<String>> =
            [("region".to_owned(), strings(&["eu-west", "us-east"]))].into();
        filter(&good).expect("valid");
        filter(&BTreeMap::new()).expect("no filter");
        let empty: BTreeMap<String, Vec<String>> = [("region".to_owned(), vec![])].into();
        assert_invalid(
            filter(&empty).expect_err("empty values"),
            "filter.region",
            "invalid_filter",
        );
        let unnamed: BTreeMap<String, Vec<String>> = [(String::new(), strings(&["x"]))].into();
        assert_invalid(
            filter(&unnamed).expect_err("empty name"),
            "filter",
            "invalid_filter",
        );
    }

    #[test]
    fn headers_must_not_collide_with_ours() {
        let good: BTreeMap<String, String> = [
            ("Authorization".to_owned(), "Bearer abc".to_owned()),
            ("x-tenant".to_owned(), "acme".to_owned()),
        ]
        .into();
        let checked = headers(&good).expect("valid");
        assert_eq!(
            checked.keys().collect::<Vec<_>>(),
            ["authorization", "x-tenant"]
        );
        for reserved in [
            "webhook-signature",
            "Webhook-Id",
            "posternity-delivery-id",
            "content-type",
            "Host",
            "user-agent",
        ] {
            let one: BTreeMap<String, String> = [(reserved.to_owned(), "x".to_owned())].into();
            assert_invalid(
                headers(&one).expect_err(reserved),
                &format!("headers.{reserved}"),
                "reserved_header",
            );
        }
        let bad_name: BTreeMap<String, String> = [("bad name".to_owned(), "x".to_owned())].into();
        assert_invalid(
            headers(&bad_name).expect_err("space"),
            "headers.bad name",
            "invalid_header",
        );
        let bad_value: BTreeMap<String, String> =
            [("x-a".to_owned(), "line\nbreak".to_owned())].into();
        assert_invalid(
            headers(&bad_value).expect_err("newline"),
            "headers.x-a",
            "invalid_header",
        );
        let twice: BTreeMap<String, String> = [
            ("X-A".to_owned(), "1".to_owned()),
            ("x-a".to_owned(), "2".to_owned()),
        ]
        .into();
        assert_invalid(
            headers(&twice).expect_err("twice"),
            "headers.x-a",
            "invalid_header",
        );
    }

    #[test]
    fn lanes_must_be_configured() {
        let lanes: BTreeSet<String> = ["acme".to_owned()].into();
        lane("", &lanes).expect("shared topic");
        lane("acme", &lanes).expect("configured");
        let message = assert_invalid(
            lane("other", &lanes).expect_err("unknown"),
            "lane",
            "unknown_lane",
        );
        assert!(message.contains("acme"), "{message}");
        let message = assert_invalid(
            lane("acme", &BTreeSet::new()).expect_err("none configured"),
            "lane",
            "unknown_lane",
        );
        assert!(message.contains("none is configured"), "{message}");
    }

    #[test]
    fn descriptions_and_accounts_are_bounded() {
        description("Orders webhook").expect("valid");
        assert_invalid(
            description(&"x".repeat(MAX_DESCRIPTION_LEN + 1)).expect_err("long"),
            "description",
            "invalid_description",
        );
        account_id("acc_1").expect("valid");
        assert_invalid(
            account_id("").expect_err("empty"),
            "account_id",
            "invalid_account",
        );
        assert_invalid(
            account_id("acc 1").expect_err("space"),
            "account_id",
            "invalid_account",
        );
    }
}
