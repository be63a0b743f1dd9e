//! Every route, registered once: each handler's `#[utoipa::path]` says its method and path, and
//! [`routes`] hands it to axum and to the OpenAPI document in the same step, so the router and
//! the document cannot list different routes.

pub mod catalog;
pub mod deliveries;
pub mod dlq;
pub mod health;
pub mod subscriptions;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::state::AppState;

/// The document's fixed parts; the paths come from [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Posternity Dispatch admin API",
        description = "Subscriptions to Posternity's events, their signing secrets, test events, delivery status, the dead-letter queue and the event catalog. Every `/v1` route needs `Authorization: Bearer <token>`; a token scoped to an account sees only that account's data (another account's ids answer 404), an operator token sees every account. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`. Every `/v1` route may also answer 429 `rate_limited` with `Retry-After` (each token has a request rate), and 503 `request_timeout` when a request takes longer than the server allows."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "subscriptions", description = "Endpoints and what they receive"),
        (name = "secrets", description = "Signing secrets (Standard Webhooks `whsec_…`)"),
        (name = "deliveries", description = "Delivery status and attempts"),
        (name = "dlq", description = "The dead-letter queue, kept 7 days"),
        (name = "event types", description = "The event catalog"),
        (name = "health", description = "Liveness, readiness and this document"),
    )
)]
struct ApiDoc;

/// Declares the bearer-token scheme the routes' `security` refers to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, with its part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(subscriptions::create, subscriptions::list))
        .routes(routes!(
            subscriptions::get,
            subscriptions::patch,
            subscriptions::delete
        ))
        .routes(routes!(subscriptions::rotate_secret))
        .routes(routes!(subscriptions::get_secret))
        .routes(routes!(subscriptions::send_test))
        .routes(routes!(deliveries::attempts))
        .routes(routes!(deliveries::delivery))
        .routes(routes!(deliveries::event_deliveries))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::replay_many))
        .routes(routes!(dlq::replay_one))
        .routes(routes!(dlq::delete))
        .routes(routes!(catalog::event_types))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::openapi_json))
}

/// The OpenAPI document of [`routes`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The router of [`routes`] with `state`, JSON answers for unknown paths and methods, the body
/// limit, and request metrics.
pub fn router(state: AppState) -> Router {
    let limit = state.0.settings.max_body_bytes;
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        // Inside `observe`, so a request cut off by the timeout is measured and logged too.
        .layer(axum::middleware::from_fn_with_state(
            state.0.settings.request_timeout,
            request_timeout,
        ))
        .layer(axum::middleware::from_fn(crate::observe::observe))
        .with_state(state)
}

/// Answers 503 `request_timeout` when the rest of the stack (body read included) has not
/// answered within `timeout` (`api.request_timeout_ms`); the handler is dropped. A write cut
/// off here may still have reached the log, which the message says.
async fn request_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(
            "request_timeout",
            format!(
                "the request did not complete within {} (api.request_timeout_ms); a write may or may not have taken effect, so read it back before repeating it",
                crate::limits::describe_timeout(timeout)
            ),
            1,
            None,
        )
        .into_response(),
    }
}
