//! The routes without a token: liveness, readiness and the OpenAPI document.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::AppState;

/// The body of `/readyz`: the same shape as the telemetry server's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// Whether every component is ready.
    pub ready: bool,
    /// Each component by name: `subscription_view`, `delivery_history`, `dead_letters`.
    pub components: BTreeMap<String, ComponentReadiness>,
}

/// The readiness of one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ComponentReadiness {
    /// Whether it is ready.
    pub ready: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn component(ready: bool, topic: &str) -> ComponentReadiness {
    ComponentReadiness {
        ready,
        reason: (!ready).then(|| format!("catching up with {topic}")),
    }
}

/// Liveness.
///
/// `ok` while the process serves HTTP.
#[utoipa::path(
    get,
    operation_id = "healthz",
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness.
///
/// 200 once the subscription view, the delivery history and the dead letters have caught up
/// with their topics; 503 before.
#[utoipa::path(
    get,
    operation_id = "readyz",
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready yet", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let shared = &state.0;
    let components: BTreeMap<String, ComponentReadiness> = [
        (
            "subscription_view",
            component(shared.view.is_caught_up(), shared.view.topic()),
        ),
        (
            "delivery_history",
            component(shared.attempts.is_caught_up(), shared.attempts.topic()),
        ),
        (
            "dead_letters",
            component(
                shared.dead_letters.is_caught_up(),
                shared.dead_letters.topic(),
            ),
        ),
    ]
    .into_iter()
    .map(|(name, report)| (name.to_owned(), report))
    .collect();
    let ready = components.values().all(|c| c.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, components }))
}

/// This API's OpenAPI document.
///
/// Generated from the code that serves the routes, so it lists exactly what is served.
#[utoipa::path(
    get,
    operation_id = "openapi",
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
pub async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.0.openapi_json.clone(),
    )
}
