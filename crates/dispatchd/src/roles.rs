//! The long-running roles: wiring of the subscription view, the telemetry server and the role
//! itself, with one shutdown signal (SIGTERM or Ctrl-C) for all of them.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatch_fanout::Fanout;
use dispatch_http::WebhookClient;
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::TopicNames;
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

/// What every role starts with: one shutdown signal, the telemetry server, and a subscription
/// view that has caught up.
struct Foundation {
    shutdown: CancellationToken,
    view: Arc<SubscriptionView>,
    role_ready: dispatch_telemetry::ReadinessFlag,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    // Kept alive: dropping a flag marks its component not ready.
    _view_ready: dispatch_telemetry::ReadinessFlag,
}

impl Foundation {
    /// `None` when a signal arrived before the view caught up.
    async fn start(config: &ValidConfig, role: &str) -> anyhow::Result<Option<Self>> {
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        let metrics = dispatch_telemetry::install_recorder()?;
        let health = Health::new();
        let view_ready = health.component("subscription_view");
        let role_ready = health.component(role);
        view_ready.set_not_ready("catching up with the subscriptions topic");
        role_ready.set_not_ready("starting");
        let listener = dispatch_telemetry::bind(config.config.metrics.listen).await?;
        let server = tokio::spawn(dispatch_telemetry::serve(
            listener,
            metrics,
            health.clone(),
            shutdown.clone().cancelled_owned(),
        ));
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
            role_ready,
            server,
            _view_ready: view_ready,
        }))
    }

    /// Stops the telemetry server after the role ended.
    async fn finish(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

/// `dispatchd fanout`: serve telemetry, catch up with the subscriptions, fan out until told to
/// stop.
pub async fn fanout(config: &ValidConfig) -> anyhow::Result<ExitCode> {
    let Some(foundation) = Foundation::start(config, "fanout").await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let kafka = config.config.kafka.clone();
    let fanout_config = config.config.fanout.clone();
    let lanes = config.config.topics.lanes.clone();
    let fanout_view = Arc::clone(&foundation.view);
    let fanout = tokio::task::spawn_blocking(move || {
        Fanout::build(&kafka, fanout_config, lanes, fanout_view)
    })
    .await?
    .context("fan-out")?;
    foundation.role_ready.set_ready(true);

    let result = dispatch_fanout::run(fanout, foundation.shutdown.clone().cancelled_owned()).await;
    foundation.finish().await;
    result.context("fan-out")?;
    info!("fan-out stopped");
    Ok(ExitCode::SUCCESS)
}

/// `dispatchd sender`: serve telemetry, catch up with the subscriptions, deliver until told to
/// stop, then drain and commit what finished.
pub async fn sender(config: &ValidConfig) -> anyhow::Result<ExitCode> {
    let Some(foundation) = Foundation::start(config, "sender").await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let kafka = &config.config.kafka;
    let ctx = AttemptContext {
        client: WebhookClient::new(&config.config.http).context("webhook client")?,
        schedule: config.retry.clone(),
        producer: kafka.reliable_producer()?,
        names: TopicNames::new(kafka.topic_prefix.clone()),
        subscriptions: Arc::new(SubscriptionWriter::new(kafka)?),
    };
    let engine = Engine::build(
        kafka,
        config.config.sender.clone(),
        &config.config.topics.lanes,
        ctx,
        Arc::clone(&foundation.view),
    )
    .context("sender")?;
    foundation.role_ready.set_ready(true);
    let result = engine.run(foundation.shutdown.clone()).await;
    foundation.finish().await;
    result.context("sender")?;
    Ok(ExitCode::SUCCESS)
}
