//! Delivery status from the delivery history (a bounded fold of `dispatch.attempts`): a
//! subscription's attempts, one delivery, and an event's deliveries.
//!
//! The history holds the most recently updated deliveries (`api.history_max_deliveries`), read
//! from `api.history_lookback_secs` back when the server started; older ones fall out of it. A
//! delivery that fell out but is still in the DLQ is answered from its dead letter.

use axum::Json;
use axum::extract::{Path, State};
use dispatch_proto::dispatch::v1::Subscription;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::QueryParams;
use crate::model::{AttemptList, AttemptOut, DeliveryList, DeliveryOut, Outcome};
use crate::state::AppState;

/// List a subscription's attempts.
///
/// Newest first. Attempts are kept for the most recently updated deliveries only (see the
/// server's `api.history_max_deliveries` and `api.history_lookback_secs`).
#[utoipa::path(
    get,
    operation_id = "list_attempts",
    path = "/v1/subscriptions/{id}/attempts",
    tag = "deliveries",
    params(
        ("id" = String, Path, description = "The subscription (`sub_…`)"),
        ("limit" = Option<usize>, Query, description = "At most this many"),
        ("outcome" = Option<Outcome>, Query, description = "Only attempts that ended this way (any outcome but `unspecified`)"),
    ),
    responses(
        (status = 200, description = "A page of attempts", body = AttemptList),
        (status = 400, description = "A bad or unknown query parameter", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription (or another account's)", body = ErrorBody),
        (status = 503, description = "The history is still being read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn attempts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> ApiResult<Json<AttemptList>> {
    let shared = &state.0;
    let limit = query.take_limit(
        shared.settings.default_page_size,
        shared.settings.max_page_size,
    )?;
    let outcome = query
        .take("outcome")
        .map(|name| {
            Outcome::parse(&name).ok_or_else(|| {
                let known: Vec<&str> = Outcome::FILTERABLE.iter().map(|o| o.as_str()).collect();
                ApiError::invalid(
                    "outcome",
                    "invalid_query",
                    format!("{name:?} is not an outcome; one of: {}", known.join(", ")),
                )
            })
        })
        .transpose()?;
    query.finish()?;
    let history = shared.attempts()?;
    let subscription: Option<Subscription> = shared.view.read(|table| table.get(&id).cloned());
    let mut data: Vec<AttemptOut> = history
        .read(|fold| {
            // A deleted subscription's attempts stay visible to its account: ownership is then
            // read from the attempt records themselves.
            let owner = match &subscription {
                Some(subscription) => Some(subscription.account_id.clone()),
                None => fold
                    .0
                    .attempts_for_subscription(&id, None, 1)
                    .first()
                    .map(|record| record.account_id.clone()),
            };
            if !owner.is_some_and(|owner| caller.sees(&owner)) {
                return None;
            }
            Some(
                fold.0
                    .attempts_for_subscription(&id, outcome.map(Outcome::to_record), limit + 1)
                    .into_iter()
                    .map(AttemptOut::from)
                    .collect(),
            )
        })
        .ok_or_else(|| ApiError::not_found(format_args!("subscription {id}")))?;
    let has_more = data.len() > limit;
    data.truncate(limit);
    Ok(Json(AttemptList { data, has_more }))
}

/// Read a delivery.
///
/// Its status (`pending`, `succeeded`, `retrying`, `dead`, `skipped`) and attempts.
#[utoipa::path(
    get,
    operation_id = "get_delivery",
    path = "/v1/deliveries/{delivery_id}",
    tag = "deliveries",
    params(("delivery_id" = String, Path, description = "The delivery (`dlv_…`)")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryOut),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "Not known (never, no longer, or another account's)", body = ErrorBody),
        (status = 503, description = "The history is still being read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(delivery_id): Path<String>,
) -> ApiResult<Json<DeliveryOut>> {
    let shared = &state.0;
    let from_history = shared.attempts()?.read(|fold| {
        fold.0
            .delivery(&delivery_id)
            .filter(|status| caller.sees(&status.account_id))
            .map(DeliveryOut::from)
    });
    let found = match from_history {
        Some(found) => Some(found),
        None => shared.dead_letters()?.read(|fold| {
            fold.0
                .get(&delivery_id)
                .filter(|dead| {
                    dead.task
                        .as_ref()
                        .is_some_and(|task| caller.sees(&task.account_id))
                })
                .map(DeliveryOut::from_dead_letter)
        }),
    };
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("delivery {delivery_id}")))
}

/// List an event's deliveries.
///
/// One per subscription the event was delivered to, with its status and attempts.
#[utoipa::path(
    get,
    operation_id = "list_event_deliveries",
    path = "/v1/events/{event_id}/deliveries",
    tag = "deliveries",
    params(("event_id" = String, Path, description = "The event (`evt_…`)")),
    responses(
        (status = 200, description = "The event's deliveries", body = DeliveryList),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No delivery of this event is known to this caller", body = ErrorBody),
        (status = 503, description = "The history is still being read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn event_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(event_id): Path<String>,
) -> ApiResult<Json<DeliveryList>> {
    let data: Vec<DeliveryOut> = state.0.attempts()?.read(|fold| {
        fold.0
            .for_event(&event_id)
            .into_iter()
            .filter(|status| caller.sees(&status.account_id))
            .map(DeliveryOut::from)
            .collect()
    });
    if data.is_empty() {
        return Err(ApiError::not_found(format_args!(
            "deliveries of event {event_id}"
        )));
    }
    Ok(Json(DeliveryList { data }))
}
