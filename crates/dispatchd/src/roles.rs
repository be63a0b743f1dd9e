//! The long-running roles: wiring of the subscription view, the telemetry server and the role
//! itself, with one shutdown signal (SIGTERM or Ctrl-C) for all of them. Every role is started
//! the same way: built (its listener or consumer included), then `run(shutdown)` with the
//! process's one `CancellationToken`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatch_core::catalog::Family;
use dispatch_fanout::Fanout;
use dispatch_http::WebhookClient;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::outbox::{Outbox, Writer};
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, topic_specs};
use dispatch_sender::attempt::AttemptContext;
use dispatch_sender::engine::Engine;
use dispatch_telemetry::Health;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::ValidConfig;

/// The `[metrics]` configuration table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// How long a starting process may take to catch up with the subscriptions topic before it
    /// gives up, in seconds.
    pub view_catch_up_timeout_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            view_catch_up_timeout_secs: 300,
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    error!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
            () = terminate => info!("SIGTERM; shutting down"),
        }
        token.cancel();
    });
}

/// Fails, naming them, when topics of the dispatch layout this configuration implies (prefix,
/// retry tiers, lanes) do not exist: a sender would otherwise wait forever on a retry tier
/// nobody created. Domain topics are the pipelines' and may be named differently; they are not
/// checked.
async fn check_topics(config: &ValidConfig, roles: &[&str]) -> anyhow::Result<()> {
    let names = TopicNames::new(config.config.kafka.topic_prefix.clone());
    let tiers = config.retry_tier_names();
    let specs = topic_specs(&names, &config.config.topics, &tiers);
    // Not checked: the pipelines' domain topics, and retry tiers in a fan-out-only process
    // (it never reads or writes them).
    let mut unchecked: Vec<String> = Family::ALL
        .iter()
        .filter_map(|family| names.domain(*family))
        .collect();
    if roles == ["fanout"] {
        unchecked.extend(tiers.iter().map(|tier| names.retry_tier(tier)));
    }
    let domain = unchecked;
    let existing = TopicAdmin::new(&config.config.kafka)?
        .topic_shapes()
        .await
        .context("cannot list the cluster's topics")?;
    let missing: Vec<&str> = specs
        .iter()
        .map(|spec| spec.name.as_str())
        .filter(|name| !domain.iter().any(|d| d == name) && !existing.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "topics missing: {}; create them with `dispatchd topics ensure` and the same configuration (topic prefix, retry schedule, lanes)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// What every role starts with: one shutdown signal, the telemetry server, and a subscription
/// view that has caught up.
struct Foundation {
    shutdown: CancellationToken,
    view: Arc<SubscriptionView>,
    health: Health,
    /// One readiness component per role of this process, not ready until the role started.
    role_ready: Vec<dispatch_telemetry::ReadinessFlag>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    // Kept alive: dropping a flag marks its component not ready.
    _view_ready: dispatch_telemetry::ReadinessFlag,
}

impl Foundation {
    /// `None` when a signal arrived before the view caught up.
    async fn start(config: &ValidConfig, roles: &[&str]) -> anyhow::Result<Option<Self>> {
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        let metrics = dispatch_telemetry::install_recorder()?;
        let health = Health::new();
        let view_ready = health.component("subscription_view");
        view_ready.set_not_ready("catching up with the subscriptions topic");
        let role_ready: Vec<_> = roles
            .iter()
            .map(|role| {
                let ready = health.component(*role);
                ready.set_not_ready("starting");
                ready
            })
            .collect();
        let listener = dispatch_telemetry::bind(config.config.metrics.listen).await?;
        let server = tokio::spawn(dispatch_telemetry::serve(
            listener,
            metrics,
            health.clone(),
            shutdown.clone().cancelled_owned(),
        ));
        tokio::select! {
            checked = check_topics(config, roles) => checked?,
            () = shutdown.cancelled() => return Ok(None),
        }
        let view =
            Arc::new(SubscriptionView::start(&config.config.kafka).context("subscription view")?);
        let catch_up = Duration::from_secs(config.config.metrics.view_catch_up_timeout_secs);
        tokio::select! {
            caught_up = view.wait_caught_up(catch_up) => caught_up.context("subscription view")?,
            () = shutdown.cancelled() => return Ok(None),
        }
        view_ready.set_ready(true);
        info!(
            subscriptions = view.read(|table| table.len()),
            "subscription view caught up"
        );
        Ok(Some(Foundation {
            shutdown,
            view,
            health,
            role_ready,
            server,
            _view_ready: view_ready,
        }))
    }

    /// Marks every role of the process ready.
    fn roles_started(&self) {
        for ready in &self.role_ready {
            ready.set_ready(true);
        }
    }

    /// Stops the telemetry server after the role ended.
    async fn finish(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

/// A role, built and ready to run until the shutdown signal.
type RoleRun = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Builds the fan-out (consumer group, transactional producer) on the process's view.
async fn build_fanout(config: &ValidConfig, foundation: &Foundation) -> anyhow::Result<RoleRun> {
    let kafka = config.config.kafka.clone();
    let fanout_config = config.config.fanout.clone();
    let lanes = config.config.topics.lanes.clone();
    let fanout_view = Arc::clone(&foundation.view);
    // Creating the transactional producer blocks on the broker.
    let fanout = tokio::task::spawn_blocking(move || {
        Fanout::build(&kafka, fanout_config, lanes, fanout_view)
    })
    .await?
    .context("fan-out")?;
    let shutdown = foundation.shutdown.clone();
    Ok(Box::pin(async move {
        fanout.run(shutdown).await.context("fan-out")?;
        info!("fan-out stopped");
        Ok(())
    }))
}

/// Builds the delivery engine on the process's view.
fn build_sender(config: &ValidConfig, foundation: &Foundation) -> anyhow::Result<RoleRun> {
    let kafka = &config.config.kafka;
    let outbox = Outbox::new(kafka, Writer::Sender).context("sender's producer")?;
    // Not ready while a write keeps failing: its delivery's source offset stays unfinished.
    outbox.report_readiness(
        foundation
            .health
            .component(dispatch_sender::READINESS_COMPONENT),
    );
    // The disable-after-410 write goes through the sender's own outbox.
    let subscriptions = Arc::new(SubscriptionWriter::with_outbox(outbox.clone()));
    let ctx = AttemptContext {
        client: WebhookClient::new(&config.config.http).context("webhook client")?,
        schedule: config.retry.clone(),
        outbox,
        names: TopicNames::new(kafka.topic_prefix.clone()),
        subscriptions,
    };
    let engine = Engine::build(
        kafka,
        config.config.sender.clone(),
        &config.config.topics.lanes,
        ctx,
        Arc::clone(&foundation.view),
    )
    .context("sender")?;
    let shutdown = foundation.shutdown.clone();
    Ok(Box::pin(async move {
        engine.run(shutdown).await.context("sender")?;
        info!("sender stopped");
        Ok(())
    }))
}

/// Builds the admin API (its read models start following their topics) and binds its listener.
async fn build_api(
    config: &ValidConfig,
    api_config: &dispatch_api::ApiConfig,
    foundation: &Foundation,
) -> anyhow::Result<RoleRun> {
    let listener = dispatch_api::bind(api_config.listen).await?;
    let api = dispatch_api::Api::build(
        api_config,
        &config.config.kafka,
        &config.config.topics,
        &config.config.http,
        Arc::clone(&foundation.view),
        &foundation.health,
    )
    .await
    .context("admin API")?
    .with_listener(listener);
    let shutdown = foundation.shutdown.clone();
    Ok(Box::pin(async move {
        api.run(shutdown).await.context("admin API")?;
        Ok(())
    }))
}

/// Runs the roles of one process until the shutdown signal; the first role to fail stops the
/// others (each drains as on SIGTERM) and its error is the process's.
async fn run_roles(
    foundation: Foundation,
    roles: Vec<(&'static str, RoleRun)>,
) -> anyhow::Result<ExitCode> {
    foundation.roles_started();
    let mut running = tokio::task::JoinSet::new();
    for (name, role) in roles {
        running.spawn(async move { (name, role.await) });
    }
    let mut failure = None;
    while let Some(joined) = running.join_next().await {
        let (name, result) = joined.context("a role panicked")?;
        if !foundation.shutdown.is_cancelled() {
            // A role ended without being asked to: nothing should run half a process.
            info!(role = name, "role ended; stopping the others");
            foundation.shutdown.cancel();
        }
        if let Err(error) = result {
            error!(role = name, error = format!("{error:#}"), "role failed");
            failure.get_or_insert(error);
        }
    }
    foundation.finish().await;
    match failure {
        Some(error) => Err(error),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `dispatchd fanout`: serve telemetry, catch up with the subscriptions, fan out until told to
/// stop.
pub async fn fanout(config: &ValidConfig) -> anyhow::Result<ExitCode> {
    let Some(foundation) = Foundation::start(config, &["fanout"]).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let fanout = build_fanout(config, &foundation).await?;
    run_roles(foundation, vec![("fanout", fanout)]).await
}

/// `dispatchd sender`: serve telemetry, catch up with the subscriptions, deliver until told to
/// stop, then drain and commit what finished.
pub async fn sender(config: &ValidConfig) -> anyhow::Result<ExitCode> {
    let Some(foundation) = Foundation::start(config, &["sender"]).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let sender = build_sender(config, &foundation)?;
    run_roles(foundation, vec![("sender", sender)]).await
}

/// `dispatchd api`: serve telemetry, catch up with the subscriptions, serve the admin API until
/// told to stop.
pub async fn api(config: &ValidConfig) -> anyhow::Result<ExitCode> {
    // Checked before any I/O, like the rest of the configuration.
    let api_config = config.api()?;
    let Some(foundation) = Foundation::start(config, &["api"]).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let api = build_api(config, api_config, &foundation).await?;
    run_roles(foundation, vec![("api", api)]).await
}

/// `dispatchd all`: the fan-out, the sender and the admin API in one process, sharing one
/// subscription view and one telemetry server — the whole system for development and small
/// installations.
pub async fn all(config: &ValidConfig) -> anyhow::Result<ExitCode> {
    let api_config = config.api()?;
    let Some(foundation) = Foundation::start(config, &["fanout", "sender", "api"]).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let api = build_api(config, api_config, &foundation).await?;
    let fanout = build_fanout(config, &foundation).await?;
    let sender = build_sender(config, &foundation)?;
    run_roles(
        foundation,
        vec![("fanout", fanout), ("sender", sender), ("api", api)],
    )
    .await
}
