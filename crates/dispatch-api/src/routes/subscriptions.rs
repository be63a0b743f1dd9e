//! `/v1/subscriptions`: create, list, read, change and delete subscriptions; their signing
//! secrets; and test events through the real delivery engine.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use dispatch_core::signing::SigningSecret;
use dispatch_core::timestamp::{from_system_time, to_system_time};
use dispatch_core::{delivery, ids, render};
use dispatch_proto::dispatch::v1::{AttributeValues, SigningSecret as StoredSecret, Subscription};

use crate::auth::{Caller, ListAccount, Scope};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, QueryParams, etag, if_match};
use crate::model::{
    SecretEntry, SecretOut, SubscriptionCreated, SubscriptionIn, SubscriptionList, SubscriptionOut,
    SubscriptionPatch, TestEventOut,
};
use crate::state::AppState;
use crate::{store, validate};

/// The most signing secrets a subscription keeps (the current one and those rotated out that
/// have not expired): each one adds a signature to every delivery.
pub const MAX_LIVE_SECRETS: usize = 5;

/// Why a subscription disabled through the API is disabled.
pub const DISABLED_BY_API: &str = "disabled through the admin API";

fn with_etag(version: u64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, etag(version))]
}

fn attribute_filter(filter: &BTreeMap<String, Vec<String>>) -> HashMap<String, AttributeValues> {
    filter
        .iter()
        .map(|(name, values)| {
            (
                name.clone(),
                AttributeValues {
                    values: values.clone(),
                },
            )
        })
        .collect()
}

/// The account a new subscription belongs to.
fn owner(caller: &Caller, requested: Option<String>) -> ApiResult<String> {
    let account_id = match (caller.scope(), requested) {
        (Scope::Operator, None) => {
            return Err(ApiError::invalid(
                "account_id",
                "invalid_account",
                "an operator token must name the account the subscription belongs to",
            ));
        }
        (Scope::Operator, Some(requested)) => requested,
        (Scope::Account(own), None) => own.clone(),
        (Scope::Account(own), Some(requested)) if requested == *own => requested,
        (Scope::Account(_), Some(_)) => {
            return Err(ApiError::invalid(
                "account_id",
                "invalid_account",
                "a token scoped to an account creates subscriptions for that account only",
            ));
        }
    };
    validate::account_id(&account_id)?;
    Ok(account_id)
}

/// Create a subscription.
///
/// Answers with the subscription and its signing secret — the only answer besides the secret
/// routes that contains it. The subscription is in this server's view when the answer comes:
/// a `GET` right after sees it.
#[utoipa::path(
    post,
    operation_id = "create_subscription",
    path = "/v1/subscriptions",
    tag = "subscriptions",
    request_body = SubscriptionIn,
    responses(
        (status = 201, description = "Created", body = SubscriptionCreated,
            headers(("ETag" = String, description = "The version, for If-Match"),
                    ("Location" = String, description = "The new subscription's URL"))),
        (status = 400, description = "A value is not acceptable (URL, event type, header, lane, account); `field` names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "`quota_exceeded`: the account has as many subscriptions as `api.quotas.max_subscriptions_per_account` allows", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not declared JSON", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "The write was not seen applied in time", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SubscriptionIn>,
) -> ApiResult<impl IntoResponse> {
    let shared = &state.0;
    let account_id = owner(&caller, body.account_id)?;
    let event_types = validate::event_types(&body.event_types)?;
    validate::filter(&body.filter)?;
    let headers = validate::headers(&body.headers)?;
    let lane = body.lane.unwrap_or_default();
    validate::lane(&lane, &shared.lanes)?;
    validate::description(&body.description)?;
    // Last: it may resolve a name.
    let url = validate::url(&body.url, &shared.http).await?;
    // Counted in this process's view: two creates racing on different instances can both
    // pass at the limit, so an account may exceed it by the number of concurrent creates.
    let current = shared
        .view
        .read(|table| table.for_account(&account_id).count());
    shared.quotas.check_new_subscription(&account_id, current)?;

    let now = SystemTime::now();
    let (id, secret) = {
        let mut rng = rand::rng();
        (
            ids::new_subscription_id(now, &mut rng),
            SigningSecret::generate(&mut rng),
        )
    };
    let created_at = Some(from_system_time(now));
    let record = Subscription {
        id,
        account_id,
        url,
        event_types,
        filter: attribute_filter(&body.filter),
        secrets: vec![StoredSecret {
            secret: secret.as_str().to_owned(),
            created_at,
            expires_at: None,
        }],
        enabled: true,
        disabled_reason: String::new(),
        rate_limit_per_second: body.rate_limit_per_second,
        max_in_flight: body.max_in_flight,
        headers: headers.into_iter().collect(),
        lane,
        version: 1,
        created_at,
        updated_at: created_at,
        description: body.description,
    };
    let record = store::create(shared, record).await?;
    tracing::info!(subscription_id = %record.id, account_id = %record.account_id, "subscription created");
    let location = format!("/v1/subscriptions/{}", record.id);
    Ok((
        StatusCode::CREATED,
        [
            (header::ETAG, etag(record.version)),
            (header::LOCATION, location),
        ],
        Json(SubscriptionCreated {
            subscription: SubscriptionOut::from(&record),
            secret: secret.as_str().to_owned(),
        }),
    ))
}

/// List subscriptions.
///
/// An account token lists its own account's; an operator token every account's, or one
/// account's with `account_id`. Sorted by id; page with `after`.
#[utoipa::path(
    get,
    operation_id = "list_subscriptions",
    path = "/v1/subscriptions",
    tag = "subscriptions",
    params(
        ("account_id" = Option<String>, Query, description = "Only this account's (operators)"),
        ("after" = Option<String>, Query, description = "Only ids after this one: the `next_after` of the previous page"),
        ("limit" = Option<usize>, Query, description = "At most this many (default and cap are configured; 50 and 500 by default)"),
    ),
    responses(
        (status = 200, description = "A page of subscriptions", body = SubscriptionList),
        (status = 400, description = "A bad or unknown query parameter", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    mut query: QueryParams,
) -> ApiResult<Json<SubscriptionList>> {
    let shared = &state.0;
    let account = query.take("account_id");
    let after = query.take("after");
    let limit = query.take_limit(
        shared.settings.default_page_size,
        shared.settings.max_page_size,
    )?;
    query.finish()?;
    let listing = caller.list_account(account.as_deref());
    let mut data: Vec<SubscriptionOut> = shared.view.read(|table| {
        let after = after.as_deref();
        let wanted = |subscription: &&Subscription| {
            after.is_none_or(|after| subscription.id.as_str() > after)
        };
        match &listing {
            ListAccount::All => table
                .iter()
                .filter(wanted)
                .take(limit + 1)
                .map(SubscriptionOut::from)
                .collect(),
            ListAccount::One(account) => table
                .for_account(account)
                .filter(wanted)
                .take(limit + 1)
                .map(SubscriptionOut::from)
                .collect(),
            ListAccount::Nothing => Vec::new(),
        }
    });
    let has_more = data.len() > limit;
    data.truncate(limit);
    let next_after = has_more
        .then(|| data.last().map(|subscription| subscription.id.clone()))
        .flatten();
    Ok(Json(SubscriptionList {
        data,
        has_more,
        next_after,
    }))
}

/// Read a subscription.
#[utoipa::path(
    get,
    operation_id = "get_subscription",
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(("id" = String, Path, description = "The subscription (`sub_…`)")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionOut,
            headers(("ETag" = String, description = "The version, for If-Match"))),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription (or another account's)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let subscription = state.0.subscription(&caller, &id)?;
    Ok((
        with_etag(subscription.version),
        Json(SubscriptionOut::from(&subscription)),
    ))
}

/// Change a subscription.
///
/// Only the fields given change; `enabled: true` also re-enables a subscription the server
/// disabled after its endpoint answered 410 Gone. Every change increments `version`. With
/// `If-Match: "<version>"` the change is made only on top of that version (409 otherwise);
/// without it, a change that loses a race with another is made again on top of the winner.
#[utoipa::path(
    patch,
    operation_id = "update_subscription",
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(
        ("id" = String, Path, description = "The subscription (`sub_…`)"),
        ("If-Match" = Option<String>, Header, description = "Change only this version (the ETag, e.g. `\"3\"`)"),
    ),
    request_body = SubscriptionPatch,
    responses(
        (status = 200, description = "The changed subscription", body = SubscriptionOut,
            headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "A value is not acceptable; `field` names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription (or another account's)", body = ErrorBody),
        (status = 409, description = "If-Match names another version, or another change was written first", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not declared JSON", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "The write was not seen applied in time", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<SubscriptionPatch>,
) -> ApiResult<impl IntoResponse> {
    let shared = &state.0;
    let if_match = if_match(&headers)?;
    // A foreign or unknown id answers 404 before anything about the body is said.
    shared.subscription(&caller, &id)?;
    let event_types = patch
        .event_types
        .as_deref()
        .map(validate::event_types)
        .transpose()?;
    if let Some(filter) = &patch.filter {
        validate::filter(filter)?;
    }
    let custom_headers = patch.headers.as_ref().map(validate::headers).transpose()?;
    if let Some(lane) = &patch.lane {
        validate::lane(lane, &shared.lanes)?;
    }
    if let Some(description) = &patch.description {
        validate::description(description)?;
    }
    let url = match &patch.url {
        Some(url) => Some(validate::url(url, &shared.http).await?),
        None => None,
    };

    let updated = store::update(shared, &caller, &id, if_match, |record, _now| {
        if let Some(url) = &url {
            record.url.clone_from(url);
        }
        if let Some(event_types) = &event_types {
            record.event_types.clone_from(event_types);
        }
        if let Some(filter) = &patch.filter {
            record.filter = attribute_filter(filter);
        }
        if let Some(description) = &patch.description {
            record.description.clone_from(description);
        }
        if let Some(rate) = patch.rate_limit_per_second {
            record.rate_limit_per_second = rate;
        }
        if let Some(max_in_flight) = patch.max_in_flight {
            record.max_in_flight = max_in_flight;
        }
        if let Some(custom_headers) = &custom_headers {
            record.headers = custom_headers.clone().into_iter().collect();
        }
        if let Some(lane) = &patch.lane {
            record.lane.clone_from(lane);
        }
        match patch.enabled {
            Some(true) => {
                record.enabled = true;
                record.disabled_reason.clear();
            }
            Some(false) if record.enabled => {
                record.enabled = false;
                record.disabled_reason = DISABLED_BY_API.to_owned();
            }
            Some(false) | None => {}
        }
        Ok(())
    })
    .await?;
    tracing::info!(subscription_id = %updated.id, version = updated.version, "subscription changed");
    Ok((
        with_etag(updated.version),
        Json(SubscriptionOut::from(&updated)),
    ))
}

/// Delete a subscription.
///
/// Deliveries already queued for it are skipped; its dead letters stay until they expire or are
/// deleted.
#[utoipa::path(
    delete,
    operation_id = "delete_subscription",
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(
        ("id" = String, Path, description = "The subscription (`sub_…`)"),
        ("If-Match" = Option<String>, Header, description = "Delete only this version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A malformed If-Match", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription (or another account's)", body = ErrorBody),
        (status = 409, description = "If-Match names another version", body = ErrorBody),
        (status = 503, description = "The write was not seen applied in time", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let if_match = if_match(&headers)?;
    store::delete(&state.0, &caller, &id, if_match).await?;
    tracing::info!(subscription_id = %id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Makes `new` the current secret of `record`: the current one (and any earlier one still live)
/// keeps signing until `now + overlap` (an earlier expiry is kept); expired ones are dropped, and
/// at most [`MAX_LIVE_SECRETS`] are kept, newest first.
pub fn rotate(record: &mut Subscription, new: &SigningSecret, now: SystemTime, overlap: Duration) {
    let until = from_system_time(now + overlap);
    let mut secrets = vec![StoredSecret {
        secret: new.as_str().to_owned(),
        created_at: Some(from_system_time(now)),
        expires_at: None,
    }];
    for old in record.secrets.drain(..) {
        let expires_at = old.expires_at.unwrap_or(until);
        let live = to_system_time(&expires_at).is_some_and(|expires_at| expires_at > now);
        if live {
            secrets.push(StoredSecret {
                expires_at: Some(expires_at),
                ..old
            });
        }
    }
    secrets.truncate(MAX_LIVE_SECRETS);
    record.secrets = secrets;
}

/// The secrets of `record` that sign deliveries made at `now`, newest first.
fn secret_out(record: &Subscription, now: SystemTime) -> ApiResult<SecretOut> {
    let live: Vec<SecretEntry> = record
        .secrets
        .iter()
        .filter(|stored| {
            stored.expires_at.as_ref().is_none_or(|expires_at| {
                to_system_time(expires_at).is_some_and(|expires_at| expires_at > now)
            })
        })
        .map(|stored| SecretEntry {
            secret: stored.secret.clone(),
            created_at: stored
                .created_at
                .as_ref()
                .and_then(dispatch_core::timestamp::format_rfc3339_millis),
            expires_at: stored
                .expires_at
                .as_ref()
                .and_then(dispatch_core::timestamp::format_rfc3339_millis),
        })
        .collect();
    let current = live
        .iter()
        .find(|entry| entry.expires_at.is_none())
        .or_else(|| live.first())
        .map(|entry| entry.secret.clone())
        .ok_or_else(|| {
            ApiError::internal(format_args!(
                "subscription {} has no live signing secret",
                record.id
            ))
        })?;
    Ok(SecretOut {
        subscription_id: record.id.clone(),
        secret: current,
        secrets: live,
        version: record.version,
    })
}

/// Rotate the signing secret.
///
/// A new secret becomes current; the previous one keeps signing for the configured overlap
/// (24 hours by default), so deliveries carry both signatures meanwhile and receivers can switch
/// without losing one.
#[utoipa::path(
    post,
    operation_id = "rotate_secret",
    path = "/v1/subscriptions/{id}/secret/rotate",
    tag = "secrets",
    params(
        ("id" = String, Path, description = "The subscription (`sub_…`)"),
        ("If-Match" = Option<String>, Header, description = "Rotate only at this version"),
    ),
    responses(
        (status = 200, description = "The new secret and every live one", body = SecretOut,
            headers(("ETag" = String, description = "The new version"))),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription (or another account's)", body = ErrorBody),
        (status = 409, description = "If-Match names another version, or another change was written first", body = ErrorBody),
        (status = 503, description = "The write was not seen applied in time", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let shared = &state.0;
    let if_match = if_match(&headers)?;
    let overlap = shared.settings.secret_rotation_overlap;
    let updated = store::update(shared, &caller, &id, if_match, |record, now| {
        let new = SigningSecret::generate(&mut rand::rng());
        rotate(record, &new, now, overlap);
        Ok(())
    })
    .await?;
    tracing::info!(subscription_id = %updated.id, version = updated.version, "signing secret rotated");
    let out = secret_out(&updated, SystemTime::now())?;
    Ok((with_etag(updated.version), Json(out)))
}

/// Read the signing secrets.
#[utoipa::path(
    get,
    operation_id = "get_secret",
    path = "/v1/subscriptions/{id}/secret",
    tag = "secrets",
    params(("id" = String, Path, description = "The subscription (`sub_…`)")),
    responses(
        (status = 200, description = "The current secret and every live one", body = SecretOut),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription (or another account's)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SecretOut>> {
    let subscription = state.0.subscription(&caller, &id)?;
    secret_out(&subscription, SystemTime::now()).map(Json)
}

/// Send a test event.
///
/// Queues a `webhook.test` event for this subscription only, delivered by the delivery engine
/// like any other event (signed, retried, dead-lettered). Follow it with
/// `GET /v1/deliveries/{delivery_id}`, which answers `pending` at once.
#[utoipa::path(
    post,
    operation_id = "send_test_event",
    path = "/v1/subscriptions/{id}/test",
    tag = "subscriptions",
    params(("id" = String, Path, description = "The subscription (`sub_…`)")),
    responses(
        (status = 202, description = "Queued", body = TestEventOut),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription (or another account's)", body = ErrorBody),
        (status = 409, description = "The subscription is disabled", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the account sent its test events of the minute (`api.quotas.test_events_per_minute_per_account`); `Retry-After` says when the next one may go", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn send_test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<TestEventOut>)> {
    let shared = &state.0;
    let subscription = shared.subscription(&caller, &id)?;
    if !subscription.enabled {
        return Err(disabled(&subscription));
    }
    shared.quotas.spend_test_event(&subscription.account_id)?;
    let now = SystemTime::now();
    let event = delivery::test_event_for(&subscription, now, &mut rand::rng());
    let body = render::render(&event).map_err(ApiError::internal)?;
    let task = delivery::new_task(&event, body, &subscription, now);
    let topic = shared.delivery_topic(&subscription);
    shared
        .producer
        .send_task(&topic, &task)
        .await
        .map_err(ApiError::internal)?;
    shared.attempts.write(|fold| fold.0.note_pending(&task));
    tracing::info!(subscription_id = %id, delivery_id = %task.delivery_id, event_id = %task.event_id, "test event queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(TestEventOut {
            delivery_id: task.delivery_id,
            event_id: task.event_id,
        }),
    ))
}

/// 409 for an action a disabled subscription cannot take.
pub fn disabled(subscription: &Subscription) -> ApiError {
    let reason = if subscription.disabled_reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", subscription.disabled_reason)
    };
    ApiError::conflict(
        "subscription_disabled",
        format!(
            "subscription {} is disabled{reason}; enable it with PATCH {{\"enabled\": true}} first",
            subscription.id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> SigningSecret {
        SigningSecret::from_bytes(&[byte; 32]).expect("valid key")
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn rotation_keeps_the_old_secret_until_the_overlap_ends() {
        let t0 = at(1_800_000_000);
        let mut record = Subscription {
            id: "sub_1".into(),
            secrets: vec![StoredSecret {
                secret: secret(1).as_str().to_owned(),
                created_at: Some(from_system_time(t0)),
                expires_at: None,
            }],
            ..Subscription::default()
        };
        let day = Duration::from_secs(86_400);
        rotate(&mut record, &secret(2), t0 + Duration::from_secs(10), day);
        assert_eq!(record.secrets.len(), 2);
        assert_eq!(record.secrets[0].secret, secret(2).as_str());
        assert_eq!(record.secrets[0].expires_at, None);
        assert_eq!(record.secrets[1].secret, secret(1).as_str());
        assert_eq!(
            record.secrets[1].expires_at,
            Some(from_system_time(t0 + Duration::from_secs(10) + day))
        );

        let shown = secret_out(&record, t0 + Duration::from_secs(20)).expect("live");
        assert_eq!(shown.secret, secret(2).as_str());
        assert_eq!(shown.secrets.len(), 2);
        assert!(shown.secrets[1].expires_at.is_some());

        // A second rotation keeps the first one's expiry, and once past it, drops it.
        rotate(&mut record, &secret(3), t0 + Duration::from_secs(30), day);
        assert_eq!(record.secrets.len(), 3);
        assert_eq!(
            record.secrets[2].expires_at,
            Some(from_system_time(t0 + Duration::from_secs(10) + day))
        );
        rotate(
            &mut record,
            &secret(4),
            t0 + Duration::from_secs(10) + day,
            day,
        );
        let kept: Vec<&str> = record.secrets.iter().map(|s| s.secret.as_str()).collect();
        assert_eq!(
            kept,
            [secret(4).as_str(), secret(3).as_str(), secret(2).as_str()]
        );
        let shown = secret_out(&record, t0 + Duration::from_secs(10) + day).expect("live");
        assert_eq!(shown.secrets.len(), 3);
    }

    #[test]
    fn rotation_keeps_at_most_a_few_secrets() {
        let t0 = at(1_800_000_000);
        let mut record = Subscription::default();
        for n in 0..10 {
            rotate(
                &mut record,
                &secret(n),
                t0 + Duration::from_secs(u64::from(n)),
                Duration::from_secs(3600),
            );
        }
        assert_eq!(record.secrets.len(), MAX_LIVE_SECRETS);
        assert_eq!(record.secrets[0].secret, secret(9).as_str());
    }

    #[test]
    fn operators_name_the_owner_and_accounts_own_what_they_create() {
        let operator = Caller::new(Scope::Operator);
        let account = Caller::new(Scope::Account("acc_a".into()));
        assert_eq!(
            owner(&operator, Some("acc_b".into())).expect("named"),
            "acc_b"
        );
        assert_eq!(
            owner(&operator, None).expect_err("unnamed").field(),
            Some("account_id")
        );
        assert_eq!(owner(&account, None).expect("own"), "acc_a");
        assert_eq!(owner(&account, Some("acc_a".into())).expect("own"), "acc_a");
        let error = owner(&account, Some("acc_b".into())).expect_err("other");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.field(), Some("account_id"));
        assert_eq!(
            owner(&operator, Some("has space".into()))
                .expect_err("invalid")
                .code(),
            "invalid_account"
        );
    }
}
