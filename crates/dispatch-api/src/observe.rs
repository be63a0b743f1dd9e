//! What every request leaves behind: a span carrying its method and route (so a handler's logs,
//! and the one log line of a 5xx, say which request they belong to) and an observation of
//! [`API_REQUEST_DURATION_SECONDS`] labelled with the route template, the method and the status
//! class — all bounded: never the path itself, which holds ids.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use dispatch_telemetry::names::API_REQUEST_DURATION_SECONDS;
use tracing::Instrument;

/// The `route` label of requests no route serves.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The middleware; see the module documentation.
pub async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let span = tracing::info_span!("api_request", method, route = %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    metrics::histogram!(
        API_REQUEST_DURATION_SECONDS,
        "route" => route,
        "method" => method,
        "status_class" => status_class(status),
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            elapsed_ms = elapsed.as_millis() as u64,
            "request served"
        );
    });
    response
}

/// The method as a bounded label: the methods we serve by name, anything else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `2xx`, `4xx`, … .
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(status_class(StatusCode::CREATED), "2xx");
        assert_eq!(status_class(StatusCode::CONFLICT), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"PROPFIND").expect("extension method");
        assert_eq!(method_label(&odd), "other");
    }
}
