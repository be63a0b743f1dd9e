//! The long-running roles: wiring of the subscription view, the telemetry server and the role
//! itself, with one shutdown signal (SIGTERM or Ctrl-C) for all of them.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatch_fanout::Fanout;
use dispatch_kafka::subscription_view::SubscriptionView;
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

/// `dispatchd fanout`: serve telemetry, catch up with the subscriptions, fan out until told to
/// stop.
pub async fn fanout(config: &ValidConfig) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());

    let metrics = dispatch_telemetry::install_recorder()?;
    let health = Health::new();
    let view_ready = health.component("subscription_view");
    let fanout_ready = health.component("fanout");
    view_ready.set_not_ready("catching up with the subscriptions topic");
    fanout_ready.set_not_ready("starting");
    let listener = dispatch_telemetry::bind(config.config.metrics.listen).await?;
    let server = tokio::spawn(dispatch_telemetry::serve(
        listener,
        metrics,
        health.clone(),
        shutdown.clone().cancelled_owned(),
    ));

    let kafka = config.config.kafka.clone();
    let view = Arc::new(SubscriptionView::start(&kafka).context("subscription view")?);
    let catch_up = Duration::from_secs(config.config.metrics.view_catch_up_timeout_secs);
    tokio::select! {
        caught_up = view.wait_caught_up(catch_up) => caught_up.context("subscription view")?,
        () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
    }
    view_ready.set_ready(true);
    info!(
        subscriptions = view.read(|table| table.len()),
        "subscription view caught up"
    );

    let fanout_config = config.config.fanout.clone();
    let lanes = config.config.topics.lanes.clone();
    let fanout_view = Arc::clone(&view);
    let fanout = tokio::task::spawn_blocking(move || {
        Fanout::build(&kafka, fanout_config, lanes, fanout_view)
    })
    .await?
    .context("fan-out")?;
    fanout_ready.set_ready(true);

    let result = dispatch_fanout::run(fanout, shutdown.clone().cancelled_owned()).await;
    shutdown.cancel();
    let _ = server.await;
    result.context("fan-out")?;
    info!("fan-out stopped");
    Ok(ExitCode::SUCCESS)
}
