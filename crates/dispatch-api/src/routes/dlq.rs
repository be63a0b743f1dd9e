//! `/v1/dlq`: browse the dead-letter queue (a fold of the compacted `dispatch.dlq`), replay
//! dead deliveries as new attempt series, and discard them.
//!
//! A replay queues a task built by `dispatch_core::delivery::replay_task` (a fresh delivery id,
//! `replay_of` naming the dead one) on the topic the fan-out would use for the subscription, and
//! only then writes the DLQ tombstone: a failure in between leaves the letter listed (it can be
//! replayed again), never a letter gone without its replay. The answer waits until this
//! process's DLQ view applied the tombstone, so the next listing no longer shows the letter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use dispatch_core::dead_letters::DeadLetterFilter;
use dispatch_core::delivery;
use dispatch_proto::dispatch::v1::{DeadLetter, DeliveryTask};
use dispatch_telemetry::names::API_DEAD_LETTERS_REPLAYED_TOTAL;
use futures::future::join_all;

use crate::auth::{Caller, ListAccount};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, QueryParams};
use crate::model::{DeadLetterList, DeadLetterOut, ReplayBatchOut, ReplayFilter, ReplayOut};
use crate::routes::subscriptions::disabled;
use crate::state::{AppState, ReplayGuard, Shared};
use crate::store::not_confirmed;

/// The dead letters `listing` and `filter` select (at most `limit`), newest first.
fn select(
    shared: &Shared,
    listing: &ListAccount,
    subscription_id: Option<String>,
    event_type: Option<String>,
    limit: usize,
) -> ApiResult<Vec<DeadLetter>> {
    let account_id = match listing {
        ListAccount::All => None,
        ListAccount::One(account) => Some(account.clone()),
        ListAccount::Nothing => return Ok(Vec::new()),
    };
    let filter = DeadLetterFilter {
        account_id,
        subscription_id,
        event_type,
    };
    Ok(shared
        .dead_letters()?
        .read(|fold| fold.0.list(&filter, limit).into_iter().cloned().collect()))
}

/// The dead letter of `delivery_id`, if the caller may see it; 404 otherwise.
fn dead_letter(shared: &Shared, caller: &Caller, delivery_id: &str) -> ApiResult<DeadLetter> {
    shared
        .dead_letters()?
        .read(|fold| fold.0.get(delivery_id).cloned())
        .filter(|dead| {
            dead.task
                .as_ref()
                .is_some_and(|task| caller.sees(&task.account_id))
        })
        .ok_or_else(|| ApiError::not_found(format_args!("dead letter {delivery_id}")))
}

/// List dead letters.
///
/// Newest first. An account token lists its own account's; an operator every account's, or one
/// account's with `account_id`.
#[utoipa::path(
    get,
    operation_id = "list_dead_letters",
    path = "/v1/dlq",
    tag = "dlq",
    params(
        ("subscription_id" = Option<String>, Query, description = "Only deliveries to this subscription"),
        ("event_type" = Option<String>, Query, description = "Only events of this exact type"),
        ("account_id" = Option<String>, Query, description = "Only this account's (operators)"),
        ("limit" = Option<usize>, Query, description = "At most this many"),
    ),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterList),
        (status = 400, description = "A bad or unknown query parameter", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 503, description = "The DLQ is still being read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    mut query: QueryParams,
) -> ApiResult<Json<DeadLetterList>> {
    let shared = &state.0;
    let subscription_id = query.take("subscription_id");
    let event_type = query.take("event_type");
    let account = query.take("account_id");
    let limit = query.take_limit(
        shared.settings.default_page_size,
        shared.settings.max_page_size,
    )?;
    query.finish()?;
    let listing = caller.list_account(account.as_deref());
    let letters = select(shared, &listing, subscription_id, event_type, limit + 1)?;
    let has_more = letters.len() > limit;
    let data = letters
        .iter()
        .take(limit)
        .map(DeadLetterOut::from)
        .collect();
    Ok(Json(DeadLetterList { data, has_more }))
}

/// A replay ready to be queued, or why a letter is left in the DLQ.
enum Prepared {
    Replay {
        topic: String,
        task: Box<DeliveryTask>,
        guard: ReplayGuard,
    },
    Refused(ApiError),
}

/// Builds the replay of `dead` (whose subscription must still exist and be enabled), marking it
/// as under way.
fn prepare(shared: &Arc<Shared>, dead: &DeadLetter, now: SystemTime) -> Prepared {
    let Some(dead_task) = dead.task.as_ref() else {
        return Prepared::Refused(ApiError::internal(
            "a dead letter without a task was listed",
        ));
    };
    let subscription = shared
        .view
        .read(|table| table.get(&dead_task.subscription_id).cloned());
    let subscription = match subscription {
        Some(subscription) if subscription.account_id == dead_task.account_id => subscription,
        _ => {
            return Prepared::Refused(ApiError::conflict(
                "subscription_deleted",
                format!(
                    "subscription {} no longer exists, so delivery {} cannot be replayed; delete the dead letter instead",
                    dead_task.subscription_id, dead_task.delivery_id
                ),
            ));
        }
    };
    if !subscription.enabled {
        return Prepared::Refused(disabled(&subscription));
    }
    let Some(guard) = shared.start_replay(&dead_task.delivery_id) else {
        return Prepared::Refused(ApiError::conflict(
            "replay_in_progress",
            format!(
                "delivery {} is being replayed already",
                dead_task.delivery_id
            ),
        ));
    };
    let task = Box::new(delivery::replay_task(dead, now, &mut rand::rng()));
    Prepared::Replay {
        topic: shared.delivery_topic(&subscription),
        task,
        guard,
    }
}

/// Queues `task`, then removes the dead letter it replays; returns where the tombstone landed.
async fn queue(shared: &Shared, topic: &str, task: &DeliveryTask) -> ApiResult<(i32, i64)> {
    shared
        .producer
        .send_task(topic, task)
        .await
        .map_err(ApiError::internal)?;
    shared.attempts.write(|fold| fold.0.note_pending(task));
    let tombstone = shared
        .producer
        .tombstone_dead_letter(&task.replay_of)
        .await
        .map_err(|error| {
            ApiError::internal(format_args!(
                "replay {} of {} was queued, but the dead letter could not be removed: {error}",
                task.delivery_id, task.replay_of
            ))
        })?;
    metrics::counter!(API_DEAD_LETTERS_REPLAYED_TOTAL).increment(1);
    tracing::info!(
        delivery_id = %task.delivery_id,
        replay_of = %task.replay_of,
        subscription_id = %task.subscription_id,
        "dead letter replayed"
    );
    Ok(tombstone)
}

/// Waits until the DLQ view applied every tombstone (the highest offset per partition). A
/// replay is queued by then whatever happens, so a slow view is logged, not answered with an
/// error that would invite a second replay.
async fn settle(shared: &Shared, tombstones: &[(i32, i64)]) {
    let mut highest: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset) in tombstones {
        let entry = highest.entry(*partition).or_insert(*offset);
        *entry = (*entry).max(*offset);
    }
    for (partition, offset) in highest {
        if let Err(error) = shared
            .dead_letters
            .wait_for(partition, offset, shared.settings.write_timeout)
            .await
        {
            tracing::warn!(%error, partition, offset, "the DLQ view did not apply a replay's tombstone in time");
        }
    }
}

/// Replay a dead letter.
///
/// Queues a new attempt series of the same event to the same subscription (a new delivery id,
/// `replay_of` naming this one; receivers see the same `webhook-id`), then removes the letter
/// from the DLQ. The subscription must still exist and be enabled.
#[utoipa::path(
    post,
    operation_id = "replay_dead_letter",
    path = "/v1/dlq/{delivery_id}/replay",
    tag = "dlq",
    params(("delivery_id" = String, Path, description = "The dead delivery (`dlv_…`)")),
    responses(
        (status = 202, description = "Queued", body = ReplayOut),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such dead letter (or another account's)", body = ErrorBody),
        (status = 409, description = "The subscription is deleted or disabled, or a replay of this letter is under way", body = ErrorBody),
        (status = 503, description = "The DLQ is still being read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn replay_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(delivery_id): Path<String>,
) -> ApiResult<(StatusCode, Json<ReplayOut>)> {
    let shared = &state.0;
    let dead = dead_letter(shared, &caller, &delivery_id)?;
    let (topic, task, guard) = match prepare(shared, &dead, SystemTime::now()) {
        Prepared::Replay { topic, task, guard } => (topic, task, guard),
        Prepared::Refused(error) => return Err(error),
    };
    let tombstone = queue(shared, &topic, &task).await?;
    settle(shared, &[tombstone]).await;
    drop(guard);
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayOut {
            delivery_id: task.delivery_id,
            replay_of: task.replay_of,
        }),
    ))
}

/// Replay the dead letters a filter selects.
///
/// Replays up to the configured batch size (1000 by default) of the newest matching letters,
/// as `POST /v1/dlq/{delivery_id}/replay` would each; repeat while `has_more`. Letters whose
/// subscription is deleted or disabled are left in the DLQ and counted as `skipped`.
#[utoipa::path(
    post,
    operation_id = "replay_dead_letters",
    path = "/v1/dlq/replay",
    tag = "dlq",
    request_body = ReplayFilter,
    responses(
        (status = 202, description = "Queued", body = ReplayBatchOut),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not declared JSON", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "The DLQ is still being read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn replay_many(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(filter): ApiJson<ReplayFilter>,
) -> ApiResult<(StatusCode, Json<ReplayBatchOut>)> {
    let shared = &state.0;
    let batch = shared.settings.replay_max_batch;
    let listing = caller.list_account(filter.account_id.as_deref());
    let mut letters = select(
        shared,
        &listing,
        filter.subscription_id,
        filter.event_type,
        batch + 1,
    )?;
    let has_more = letters.len() > batch;
    letters.truncate(batch);

    let now = SystemTime::now();
    let mut skipped = 0;
    let mut replays = Vec::with_capacity(letters.len());
    for dead in &letters {
        match prepare(shared, dead, now) {
            Prepared::Replay { topic, task, guard } => replays.push((topic, task, guard)),
            Prepared::Refused(_) => skipped += 1,
        }
    }
    let results = join_all(
        replays
            .iter()
            .map(|(topic, task, _)| queue(shared, topic, task)),
    )
    .await;
    let mut tombstones = Vec::with_capacity(results.len());
    let mut failure = None;
    for result in results {
        match result {
            Ok(tombstone) => tombstones.push(tombstone),
            Err(error) => failure = Some(error),
        }
    }
    settle(shared, &tombstones).await;
    drop(replays);
    if let Some(error) = failure {
        // Some were queued, some not: the ones not queued are still listed, and the request can
        // be repeated for them.
        return Err(error);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayBatchOut {
            count: tombstones.len(),
            skipped,
            has_more,
        }),
    ))
}

/// Delete a dead letter.
///
/// Discards it without replaying.
#[utoipa::path(
    delete,
    operation_id = "delete_dead_letter",
    path = "/v1/dlq/{delivery_id}",
    tag = "dlq",
    params(("delivery_id" = String, Path, description = "The dead delivery (`dlv_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such dead letter (or another account's)", body = ErrorBody),
        (status = 503, description = "The DLQ is still being read, or the deletion was not seen applied in time", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(delivery_id): Path<String>,
) -> ApiResult<StatusCode> {
    let shared = &state.0;
    dead_letter(shared, &caller, &delivery_id)?;
    let (partition, offset) = shared
        .producer
        .tombstone_dead_letter(&delivery_id)
        .await
        .map_err(ApiError::internal)?;
    let timeout = shared.settings.write_timeout;
    shared
        .dead_letters
        .wait_for(partition, offset, timeout)
        .await
        .map_err(|error| match error {
            dispatch_kafka::Error::FoldTimeout { .. } => not_confirmed(timeout, error.to_string()),
            other => ApiError::internal(other),
        })?;
    tracing::info!(delivery_id = %delivery_id, "dead letter deleted");
    Ok(StatusCode::NO_CONTENT)
}
