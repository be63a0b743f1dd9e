//! Writing subscriptions with read-your-writes: a record goes to `dispatch.subscriptions`, and the
//! request is answered only once this process's view has applied it — with what the fold did.
//!
//! # Conflicts
//! The log decides which of two racing writes wins (`dispatch_core::subscriptions`): both say
//! `version = current + 1`, the first in the log is accepted, the second rejected as stale.
//! - With `If-Match`, the loser answers 409: the client asked for "only on top of version N".
//! - Without it, the change is made again on top of the winner (up to [`MAX_WRITE_TRIES`]
//!   times): the client asked for the change, not for a particular base.
//!
//! # Re-asserting the winner
//! Compaction keeps only the last record of a key, accepted or not. A rejected record that stays
//! last would become, for a view built after compaction, the subscription itself. So after a
//! rejection the winner is written again — as an exact copy, which every running view takes as a
//! duplicate (no change, no new version: the winning client's `ETag` stays true), and which is
//! the key's last record for views built later. If another write overtakes the copy, the copy is
//! made again of whatever is current then.
//!
//! # Resurrection
//! An update written on the version a concurrent delete removed is, for every view, a new
//! subscription (its id is unknown again). An update that comes back `Created` therefore undoes
//! itself with another tombstone and answers 404: the subscription had been deleted.

use std::time::SystemTime;

use dispatch_core::subscriptions::FoldOutcome;
use dispatch_core::timestamp;
use dispatch_proto::dispatch::v1::Subscription;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::Shared;

/// How many times a change without `If-Match` is made again after losing a race, and how many
/// times the winner is re-asserted.
pub const MAX_WRITE_TRIES: usize = 3;

/// Writes a new subscription (version 1, a fresh id) and returns it once the view has it.
pub async fn create(shared: &Shared, record: Subscription) -> ApiResult<Subscription> {
    let offset = shared
        .writer
        .put(&record)
        .await
        .map_err(ApiError::internal)?;
    match wait(shared, offset).await? {
        FoldOutcome::Created { .. } | FoldOutcome::Duplicate { .. } => Ok(record),
        other => Err(ApiError::internal(format_args!(
            "new subscription {} was not created by the view: {other:?}",
            record.id
        ))),
    }
}

/// Changes subscription `id` with `change` on top of its current record and writes it as the
/// next version; `if_match` (from the `If-Match` header) requires the current version to be that
/// one. Returns the record as written, or the current one if `change` changed nothing.
pub async fn update(
    shared: &Shared,
    caller: &Caller,
    id: &str,
    if_match: Option<u64>,
    mut change: impl FnMut(&mut Subscription, SystemTime) -> ApiResult<()>,
) -> ApiResult<Subscription> {
    for _ in 0..MAX_WRITE_TRIES {
        let current = shared.subscription(caller, id)?;
        check_version(&current, if_match)?;
        let now = SystemTime::now();
        let mut next = current.clone();
        change(&mut next, now)?;
        if next == current {
            return Ok(current);
        }
        next.version = current.version.saturating_add(1);
        next.updated_at = Some(timestamp::from_system_time(now));
        let offset = shared.writer.put(&next).await.map_err(ApiError::internal)?;
        match wait(shared, offset).await? {
            FoldOutcome::Updated { .. } | FoldOutcome::Duplicate { .. } => return Ok(next),
            FoldOutcome::Created { .. } => {
                // The subscription was deleted between our read and our write.
                tombstone(shared, id).await?;
                return Err(ApiError::not_found(format_args!("subscription {id}")));
            }
            FoldOutcome::Rejected(rejection) => {
                tracing::info!(
                    subscription_id = id,
                    reason = rejection.reason(),
                    "subscription write lost a race"
                );
                if if_match.is_some() {
                    reassert(shared, id).await;
                    return Err(lost_race(id));
                }
                // Made again on top of the winner: an accepted write is the key's last record,
                // which settles compaction as well as a re-assertion would.
            }
            other @ (FoldOutcome::Deleted | FoldOutcome::Ignored) => {
                return Err(ApiError::internal(format_args!(
                    "an update of subscription {id} was applied as {other:?}"
                )));
            }
        }
    }
    reassert(shared, id).await;
    Err(lost_race(id))
}

/// Deletes subscription `id` (the caller's, at version `if_match` if given) and returns once the
/// view no longer has it.
pub async fn delete(
    shared: &Shared,
    caller: &Caller,
    id: &str,
    if_match: Option<u64>,
) -> ApiResult<()> {
    let current = shared.subscription(caller, id)?;
    check_version(&current, if_match)?;
    tombstone(shared, id).await
}

fn check_version(current: &Subscription, if_match: Option<u64>) -> ApiResult<()> {
    match if_match {
        Some(expected) if expected != current.version => Err(ApiError::conflict(
            "version_conflict",
            format!(
                "If-Match names version {expected}, but subscription {} is at version {}; read it again",
                current.id, current.version
            ),
        )),
        _ => Ok(()),
    }
}

fn lost_race(id: &str) -> ApiError {
    ApiError::conflict(
        "version_conflict",
        format!("another change to subscription {id} was written first; read it again and retry"),
    )
}

async fn tombstone(shared: &Shared, id: &str) -> ApiResult<()> {
    let offset = shared.writer.delete(id).await.map_err(ApiError::internal)?;
    match wait(shared, offset).await? {
        FoldOutcome::Deleted | FoldOutcome::Ignored => Ok(()),
        other => Err(ApiError::internal(format_args!(
            "a tombstone of subscription {id} was applied as {other:?}"
        ))),
    }
}

/// Writes the current state of `id` again (see the module documentation). Best effort: a
/// failure is logged, and the request that lost its race is answered all the same.
async fn reassert(shared: &Shared, id: &str) {
    for _ in 0..MAX_WRITE_TRIES {
        let current = shared.view.read(|table| table.get(id).cloned());
        let written = match &current {
            Some(record) => shared.writer.put(record).await,
            None => shared.writer.delete(id).await,
        };
        let outcome = match written {
            Ok(offset) => wait(shared, offset).await,
            Err(error) => Err(ApiError::internal(error)),
        };
        match outcome {
            Ok(FoldOutcome::Rejected(_)) => continue,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(subscription_id = id, %error, "could not re-assert the subscription after a lost race");
                return;
            }
        }
    }
    tracing::warn!(
        subscription_id = id,
        "gave up re-asserting the subscription after a lost race"
    );
}

/// Waits until the view applied the record at `offset` and returns what the fold did.
async fn wait(shared: &Shared, offset: i64) -> ApiResult<FoldOutcome> {
    let timeout = shared.settings.write_timeout;
    shared
        .view
        .wait_for_offset(offset, timeout)
        .await
        .map_err(|error| match error {
            dispatch_kafka::Error::ViewTimeout { .. } => not_confirmed(timeout, error.to_string()),
            other => ApiError::internal(other),
        })
}

/// 503 for a write that was sent but not seen applied in time: it may still win.
pub fn not_confirmed(timeout: std::time::Duration, cause: String) -> ApiError {
    ApiError::unavailable(
        "write_not_confirmed",
        format!(
            "the change was sent but this server did not see it applied within {} ms; read the resource to see whether it took effect",
            timeout.as_millis()
        ),
        1,
        Some(cause),
    )
}
