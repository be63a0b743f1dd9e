//! The one error type of every handler, and the response it becomes:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.
//!
//! # Status codes
//! - 400: the request is well-formed but a value is not acceptable (a URL the SSRF guard
//!   refuses, an unknown event type, a reserved header name, an unknown lane, a bad query
//!   parameter or `If-Match` header), or the body is not JSON at all. `field` names the value.
//! - 401: no bearer token, or one that is not configured.
//! - 403 `quota_exceeded`: the account is at a quota (`api.quotas.max_subscriptions_per_account`);
//!   the message names the quota, its limit and its configuration key.
//! - 404: no such resource — or one that belongs to another account: the answer must not tell
//!   an account which ids exist elsewhere.
//! - 409: the resource changed under the request (`If-Match` names an older version, another
//!   write won in the log) or is in a state the request cannot act on (disabled).
//! - 413: the body is larger than `api.max_body_bytes`.
//! - 415: a body that is not declared `application/json`.
//! - 422: JSON of the wrong shape (a missing or unknown field, a wrong type): the distinction
//!   axum's own `Json` extractor makes, kept so clients can tell "not JSON" from "not this JSON".
//! - 429 with `Retry-After`: `rate_limited` (the token's request rate,
//!   `api.rate_limit.*`) or `quota_exceeded` (the account's test events per minute,
//!   `api.quotas.test_events_per_minute_per_account`).
//! - 500: a failure of ours (Kafka refused a write, …). The body says only that; the cause is
//!   logged once, when the response is built.
//! - 503: starting (a read model has not caught up yet), or a write this process could not see
//!   applied in time; `Retry-After` says when to ask again. Also `request_timeout`: the request
//!   took longer than `api.request_timeout_ms` (a write may or may not have taken effect).
//!
//! Codes are stable, lowercase, `snake_case` words that clients may match on; messages are
//! sentences for people and may change.

use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A handler's error: what the client is told, plus (for 5xx) what is logged.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// The cause of a 5xx, logged when the response is built and never sent.
    internal: Option<String>,
    retry_after_secs: Option<u64>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_url`, `not_found`, `version_conflict`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The request value at fault (`url`, `event_types[1]`, `headers.x-foo`, `limit`,
    /// `If-Match`), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            internal: None,
            retry_after_secs: None,
        }
    }

    /// 400: `field` holds a value that is not acceptable.
    pub fn invalid(
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message).with_field(field)
    }

    /// 400: the body is not JSON.
    pub fn malformed_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 401 (the response also carries `WWW-Authenticate: Bearer`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 for `what` (`subscription sub_…`), whether it does not exist or is another
    /// account's.
    pub fn not_found(what: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 404 for a path no route serves.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "no route serves this path; GET /openapi.json lists them",
        )
    }

    /// 405 for a method a route does not serve.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not serve this method; GET /openapi.json lists them",
        )
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 403: the caller may not do this now, e.g. a quota is reached.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 429 with `Retry-After`.
    pub fn too_many_requests(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        error.retry_after_secs = Some(retry_after_secs);
        error
    }

    /// 413.
    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit_bytes} bytes"),
        )
    }

    /// 415.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON, sent with `content-type: application/json`",
        )
    }

    /// 422: JSON of the wrong shape; `field` is the path of the offending value, if known.
    pub fn invalid_body(field: Option<String>, message: impl Into<String>) -> Self {
        let error = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message);
        match field {
            Some(field) => error.with_field(field),
            None => error,
        }
    }

    /// 500: `cause` is logged, the client only learns that something failed on our side.
    pub fn internal(cause: impl fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        );
        error.internal = Some(cause.to_string());
        error
    }

    /// 503 with `Retry-After`; `cause` (if any) is logged.
    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
        cause: Option<String>,
    ) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        error.retry_after_secs = Some(retry_after_secs);
        error.internal = cause;
        error
    }

    /// The same error, naming `field`.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The `Retry-After` the response carries, in seconds, if any.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The body sent to the client.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The one place a server-side failure is logged: handlers return the error and never
        // log it themselves, so each failure appears once, inside the request's span.
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                cause = self.internal.as_deref().unwrap_or("-"),
                "request failed"
            );
        }
        let body = self.body();
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A handler's result.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn parts(error: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).expect("JSON body"),
        )
    }

    #[tokio::test]
    async fn a_validation_error_names_code_message_and_field() {
        let (status, headers, body) = parts(ApiError::invalid(
            "event_types[1]",
            "unknown_event_type",
            "\"image.nope\" matches no event type",
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "code": "unknown_event_type",
                "message": "\"image.nope\" matches no event type",
                "field": "event_types[1]",
            }})
        );
    }

    #[tokio::test]
    async fn an_error_without_a_field_leaves_it_out() {
        let (status, _, body) = parts(ApiError::not_found("subscription sub_1")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "not_found", "message": "subscription sub_1 not found"}})
        );
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let error = ApiError::internal("Kafka produce failed: broker 127.0.0.1:19092 is down");
        assert_eq!(error.code(), "internal");
        let (status, _, body) = parts(error).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = body.to_string();
        assert!(!text.contains("Kafka") && !text.contains("19092"), "{text}");
        assert_eq!(body["error"]["code"], "internal");
    }

    #[tokio::test]
    async fn unauthorized_asks_for_a_bearer_token_and_unavailable_says_when_to_retry() {
        let (status, headers, _) = parts(ApiError::unauthorized("missing token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers
                .get(header::WWW_AUTHENTICATE)
                .map(HeaderValue::as_bytes),
            Some(&b"Bearer"[..])
        );
        let (status, headers, body) =
            parts(ApiError::unavailable("starting", "catching up", 2, None)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            headers.get(header::RETRY_AFTER).map(HeaderValue::as_bytes),
            Some(&b"2"[..])
        );
        assert_eq!(body["error"]["code"], "starting");
    }

    #[test]
    fn every_constructor_gives_its_status() {
        let cases = [
            (ApiError::malformed_json("x"), StatusCode::BAD_REQUEST),
            (
                ApiError::conflict("version_conflict", "x"),
                StatusCode::CONFLICT,
            ),
            (ApiError::body_too_large(10), StatusCode::PAYLOAD_TOO_LARGE),
            (
                ApiError::unsupported_media_type(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                ApiError::invalid_body(Some("url".into()), "x"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (ApiError::no_route(), StatusCode::NOT_FOUND),
            (
                ApiError::method_not_allowed(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status(), status, "{error}");
        }
        assert_eq!(
            ApiError::invalid_body(Some("url".into()), "x").field(),
            Some("url")
        );
    }
}
