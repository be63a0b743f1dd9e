//! Reading requests into values, with every failure as an [`ApiError`] that names what is wrong:
//! JSON bodies ([`ApiJson`]), query parameters ([`QueryParams`]) and `If-Match` ([`if_match`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The request body limit in force (`api.max_body_bytes`), for the 413 message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON body of type `T`: 415 without a JSON content type, 413 over the body limit, 400 if it
/// is not JSON, 422 if it is JSON of another shape (naming the path of the offending value).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
    BodyLimit: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let BodyLimit(limit) = BodyLimit::from_ref(state);
        // `Bytes` honours the router's `DefaultBodyLimit`, and says 413 when it is exceeded.
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::body_too_large(limit)
                } else {
                    ApiError::malformed_json("the request body could not be read")
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// `application/json`, or any `application/…+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON body: 400 for bytes that are not one JSON value, 422 for a value of the wrong
/// shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                // `.` is the root: a missing field or a body that is not an object.
                let field = (path != ".").then_some(path);
                ApiError::invalid_body(field, inner.to_string())
            }
            _ => ApiError::malformed_json(format!("the request body is not valid JSON: {inner}")),
        }
    })?;
    deserializer.end().map_err(|error| {
        ApiError::malformed_json(format!("the request body is not valid JSON: {error}"))
    })?;
    Ok(value)
}

/// The query parameters of a request, taken one by one by the handler, which then calls
/// [`QueryParams::finish`] so that an unknown (misspelt) parameter answers 400 instead of being
/// silently ignored. An empty value (`?outcome=`) counts as absent.
#[derive(Debug, Clone, Default)]
pub struct QueryParams(BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::invalid("query", "invalid_query", rejection.body_text())
            })?;
        let mut params = BTreeMap::new();
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            if params.insert(name.clone(), value).is_some() {
                return Err(ApiError::invalid(
                    name,
                    "invalid_query",
                    "the parameter is given more than once",
                ));
            }
        }
        Ok(Self(params))
    }
}

impl QueryParams {
    /// Parameters from pairs, as the extractor would take them from a query string.
    #[cfg(test)]
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        )
    }

    /// Takes parameter `name`.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// Takes `limit`: `default` when absent, 1..=`max` when given.
    pub fn take_limit(&mut self, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(text) = self.take("limit") else {
            return Ok(default);
        };
        match text.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
            _ => Err(ApiError::invalid(
                "limit",
                "invalid_query",
                format!("must be a whole number between 1 and {max}, got {text:?}"),
            )),
        }
    }

    /// Refuses whatever parameter was not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.into_keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::invalid(
                name,
                "unknown_parameter",
                "this route has no such query parameter",
            )),
        }
    }
}

/// The version an `If-Match` header requires, if it requires one: `3`, `"3"` or `W/"3"` (the
/// `ETag` our responses carry is `"3"`); `*` or no header requires none.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::invalid(
            "If-Match",
            "invalid_header",
            "If-Match must be the subscription's version, e.g. `If-Match: \"3\"` (its ETag)",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let unquoted = text.strip_prefix("W/").unwrap_or(text);
    let unquoted = unquoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(unquoted);
    unquoted.parse::<u64>().map(Some).map_err(|_| invalid())
}

/// The `ETag` of a subscription version: `"<version>"`.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        url: String,
        #[serde(default)]
        event_types: Vec<String>,
    }

    #[test]
    fn a_good_body_parses() {
        let body: Body =
            parse_json(br#"{"url": "https://x", "event_types": ["a"]}"#).expect("parses");
        assert_eq!(
            body,
            Body {
                url: "https://x".into(),
                event_types: vec!["a".into()]
            }
        );
    }

    #[test]
    fn not_json_is_400_and_the_wrong_shape_422_with_the_path() {
        for bytes in [
            &b"{\"url\": "[..],
            b"",
            b"nope",
            b"{\"url\": \"x\"} trailing",
        ] {
            let error = parse_json::<Body>(bytes).expect_err("not JSON");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{error}");
            assert_eq!(error.code(), "invalid_json");
        }
        let error = parse_json::<Body>(br#"{"url": "x", "event_types": ["a", 7]}"#)
            .expect_err("wrong type");
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.code(), "invalid_body");
        assert_eq!(error.field(), Some("event_types[1]"));
        let error =
            parse_json::<Body>(br#"{"url": "x", "colour": "red"}"#).expect_err("unknown field");
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(error.message().contains("colour"), "{error}");
        let error = parse_json::<Body>(br#"{"event_types": []}"#).expect_err("missing field");
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.field(), None);
        assert!(error.message().contains("url"), "{error}");
        let error = parse_json::<Body>(b"[1]").expect_err("not an object");
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn query_parameters_are_taken_and_leftovers_refused() {
        let mut params = QueryParams::from_pairs([("limit", "10"), ("outcome", "timeout")]);
        assert_eq!(params.take_limit(50, 500).expect("valid"), 10);
        assert_eq!(params.take("outcome").as_deref(), Some("timeout"));
        assert_eq!(params.take("outcome"), None);
        params.finish().expect("nothing left");

        let mut params = QueryParams::from_pairs([("limt", "10"), ("outcome", "")]);
        assert_eq!(params.take_limit(50, 500).expect("default"), 50);
        assert_eq!(params.take("outcome"), None, "empty counts as absent");
        let error = params.finish().expect_err("misspelt");
        assert_eq!(error.field(), Some("limt"));
        assert_eq!(error.code(), "unknown_parameter");

        for bad in ["0", "501", "-1", "ten"] {
            let mut params = QueryParams::from_pairs([("limit", bad)]);
            let error = params.take_limit(50, 500).expect_err(bad);
            assert_eq!(error.field(), Some("limit"));
            assert!(error.message().contains("500"), "{error}");
        }
    }

    #[test]
    fn if_match_takes_versions_and_etags() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::IF_MATCH,
                HeaderValue::from_str(value).expect("valid header value"),
            );
            if_match(&headers)
        };
        assert_eq!(if_match(&HeaderMap::new()).expect("absent"), None);
        assert_eq!(with("3").expect("bare"), Some(3));
        assert_eq!(with("\"3\"").expect("quoted"), Some(3));
        assert_eq!(with("W/\"12\"").expect("weak"), Some(12));
        assert_eq!(with("*").expect("any"), None);
        assert_eq!(with(&etag(7)).expect("our etag"), Some(7));
        for bad in ["three", "\"3", "-1", ""] {
            let error = with(bad).expect_err(bad);
            assert_eq!(error.field(), Some("If-Match"));
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
    }
}
