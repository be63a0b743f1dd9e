//! What every handler shares: the read models (subscription view, delivery history, dead
//! letters), the Kafka writers, the checks of subscription values, and the settings — and the
//! lookups handlers make of them under the caller's scope.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRef;
use dispatch_http::HttpConfig;
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::task_producer::TaskProducer;
use dispatch_kafka::topic_fold::{AttemptFold, DeadLetterFold, RecordFold, TopicFold};
use dispatch_proto::dispatch::v1::Subscription;

use crate::auth::{Caller, TokenTable};
use crate::error::{ApiError, ApiResult};
use crate::extract::BodyLimit;
use crate::limits::AccountQuotas;

/// How long a client is asked to wait before retrying while a read model catches up.
const STARTING_RETRY_AFTER_SECS: u64 = 2;

/// The settings handlers need, from `ApiConfig`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub max_body_bytes: usize,
    pub write_timeout: Duration,
    pub secret_rotation_overlap: Duration,
    pub default_page_size: usize,
    pub max_page_size: usize,
    pub replay_max_batch: usize,
    pub request_timeout: Duration,
}

/// The shared state of the API, cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

/// See [`AppState`].
pub(crate) struct Shared {
    pub tokens: Arc<TokenTable>,
    pub view: Arc<SubscriptionView>,
    pub writer: SubscriptionWriter,
    pub producer: TaskProducer,
    pub attempts: Arc<TopicFold<AttemptFold>>,
    pub dead_letters: Arc<TopicFold<DeadLetterFold>>,
    pub http: HttpConfig,
    pub lanes: BTreeSet<String>,
    pub settings: Settings,
    /// The per-account quotas.
    pub quotas: AccountQuotas,
    /// The OpenAPI document, rendered once.
    pub openapi_json: String,
    /// Dead letters whose replay is under way in this process: a second replay of the same
    /// letter must not queue a second delivery while the first has not removed it yet.
    pub replaying: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("view", &self.view)
            .field("attempts", &self.attempts)
            .field("dead_letters", &self.dead_letters)
            .field("lanes", &self.lanes)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl FromRef<AppState> for Arc<TokenTable> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.0.tokens)
    }
}

impl FromRef<AppState> for BodyLimit {
    fn from_ref(state: &AppState) -> Self {
        BodyLimit(state.0.settings.max_body_bytes)
    }
}

impl Shared {
    /// The current record of subscription `id`, if the caller may see it; 404 otherwise.
    pub fn subscription(&self, caller: &Caller, id: &str) -> ApiResult<Subscription> {
        self.view
            .read(|table| table.get(id).cloned())
            .filter(|subscription| caller.sees(&subscription.account_id))
            .ok_or_else(|| ApiError::not_found(format_args!("subscription {id}")))
    }

    /// The topic a task for `subscription` goes to: its lane if that lane is configured, else
    /// the shared deliveries topic — exactly as the fan-out routes them.
    pub fn delivery_topic(&self, subscription: &Subscription) -> String {
        let names = self.producer.names();
        if !subscription.lane.is_empty() && self.lanes.contains(&subscription.lane) {
            names.lane(&subscription.lane)
        } else {
            names.deliveries()
        }
    }

    /// The attempt history, once it has caught up; 503 before.
    pub fn attempts(&self) -> ApiResult<&TopicFold<AttemptFold>> {
        caught_up(&self.attempts, "delivery history")
    }

    /// The dead letters, once they have caught up; 503 before.
    pub fn dead_letters(&self) -> ApiResult<&TopicFold<DeadLetterFold>> {
        caught_up(&self.dead_letters, "dead-letter queue")
    }

    /// Whether every read model has caught up.
    pub fn is_ready(&self) -> bool {
        self.view.is_caught_up() && self.attempts.is_caught_up() && self.dead_letters.is_caught_up()
    }

    /// Marks a dead letter as being replayed; `None` if it already is. The mark is removed
    /// when the returned guard is dropped.
    pub fn start_replay(self: &Arc<Self>, delivery_id: &str) -> Option<ReplayGuard> {
        let mut replaying = self
            .replaying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        replaying
            .insert(delivery_id.to_owned())
            .then(|| ReplayGuard {
                shared: Arc::clone(self),
                delivery_id: delivery_id.to_owned(),
            })
    }
}

fn caught_up<'a, F: RecordFold>(fold: &'a TopicFold<F>, what: &str) -> ApiResult<&'a TopicFold<F>> {
    if fold.is_caught_up() {
        Ok(fold)
    } else {
        Err(ApiError::unavailable(
            "starting",
            format!("the {what} is still being read; retry shortly"),
            STARTING_RETRY_AFTER_SECS,
            None,
        ))
    }
}

/// A dead letter marked as being replayed (see [`Shared::start_replay`]).
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    shared: Arc<Shared>,
    delivery_id: String,
}

impl Drop for ReplayGuard {
    fn drop(&mut self) {
        self.shared
            .replaying
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.delivery_id);
    }
}
