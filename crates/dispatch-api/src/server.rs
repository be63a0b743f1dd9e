//! [`Api`]: built from configuration (starting its read models), then given a listener the
//! caller binds ([`Api::with_listener`], port 0 in tests), and the resulting [`ApiServer`] run
//! until a shutdown signal.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use dispatch_core::dead_letters::DeadLetterTable;
use dispatch_core::history::DeliveryHistory;
use dispatch_http::HttpConfig;
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::outbox::{Outbox, Writer};
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::task_producer::TaskProducer;
use dispatch_kafka::topic_fold::{AttemptFold, DeadLetterFold, RecordFold, StartAt, TopicFold};
use dispatch_kafka::topics::{TopicNames, TopicSettings};
use dispatch_telemetry::{Health, ReadinessFlag};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::auth::TokenTable;
use crate::config::ApiConfig;
use crate::limits::AccountQuotas;
use crate::routes;
use crate::state::{AppState, Settings, Shared};
use crate::{Error, Result};

/// How long [`ApiServer::run`] waits for the read models' reader threads to exit after the
/// server stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`ApiServer::run`] pauses after the listener failed to accept a connection.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The admin API, its read models started: [`Api::router`] to serve it yourself, or
/// [`Api::with_listener`] and [`ApiServer::run`].
///
/// Keep it alive while its router serves: dropping it stops the delivery history and the dead
/// letters from following their topics.
#[derive(Debug)]
pub struct Api {
    state: AppState,
    /// Cancelled when the API stops: ends the task that reports readiness to [`Health`].
    stopping: CancellationToken,
    /// `api.header_read_timeout_ms`, applied to each connection by [`ApiServer::run`].
    header_read_timeout: Duration,
}

impl Api {
    /// Loads the tokens (`tokens_file` is read here), creates the Kafka writers, and starts
    /// following `dispatch.attempts` (from `history_lookback_secs` back) and `dispatch.dlq`
    /// (from the beginning). Returns without waiting for them to catch up: until they have,
    /// `/readyz` answers 503 and so do the routes that read them; [`Api::wait_ready`] waits.
    ///
    /// `view` is the process's subscription view (shared with the other roles of
    /// `dispatchd all`); the caller waits for it to catch up, as for every role. `topics` gives
    /// the delivery lanes, `http` the endpoint URL rules (checked when a subscription is
    /// written). Two components are registered with `health`, `api_delivery_history` and
    /// `api_dead_letters`, ready once each caught up.
    pub async fn build(
        config: &ApiConfig,
        kafka: &KafkaConfig,
        topics: &TopicSettings,
        http: &HttpConfig,
        view: Arc<SubscriptionView>,
        health: &Health,
    ) -> Result<Api> {
        config.validate().map_err(Error::Config)?;
        let tokens = config.load_tokens()?;
        let names = TopicNames::new(kafka.topic_prefix.clone());
        // One outbox, one producer for every write of the API.
        let outbox = Outbox::new(kafka, Writer::Api)?;
        let writer = SubscriptionWriter::with_outbox(outbox.clone());
        let producer = TaskProducer::with_outbox(outbox);

        let history_ready = health.component("api_delivery_history");
        let dlq_ready = health.component("api_dead_letters");
        history_ready.set_not_ready(format!("catching up with {}", names.attempts()));
        dlq_ready.set_not_ready(format!("catching up with {}", names.dlq()));
        // `start` makes blocking metadata requests.
        let (attempts, dead_letters) = {
            let kafka = kafka.clone();
            let lookback = config.history_lookback();
            let (max_deliveries, max_letters) =
                (config.history_max_deliveries, config.dlq_max_entries);
            tokio::task::spawn_blocking(move || -> Result<_> {
                let attempts = TopicFold::start(
                    &kafka,
                    &names.attempts(),
                    StartAt::Since(lookback),
                    AttemptFold(DeliveryHistory::new(max_deliveries)),
                )?;
                let dead_letters = TopicFold::start(
                    &kafka,
                    &names.dlq(),
                    StartAt::Beginning,
                    DeadLetterFold(DeadLetterTable::new(max_letters)),
                )?;
                Ok((Arc::new(attempts), Arc::new(dead_letters)))
            })
            .await??
        };

        let stopping = CancellationToken::new();
        tokio::spawn(report_readiness(
            Arc::clone(&attempts),
            history_ready,
            stopping.clone(),
        ));
        tokio::spawn(report_readiness(
            Arc::clone(&dead_letters),
            dlq_ready,
            stopping.clone(),
        ));

        let shared = Shared {
            tokens: Arc::new(TokenTable::new(&tokens, &config.rate_limit)),
            view,
            writer,
            producer,
            attempts,
            dead_letters,
            http: http.clone(),
            lanes: topics.lanes.iter().cloned().collect::<BTreeSet<_>>(),
            settings: Settings {
                max_body_bytes: config.max_body_bytes,
                write_timeout: config.write_timeout(),
                secret_rotation_overlap: config.secret_rotation_overlap(),
                default_page_size: config.default_page_size,
                max_page_size: config.max_page_size,
                replay_max_batch: config.replay_max_batch,
                request_timeout: config.request_timeout(),
            },
            quotas: AccountQuotas::new(&config.quotas),
            openapi_json: openapi_json(),
            replaying: Mutex::new(Default::default()),
        };
        info!(tokens = tokens.len(), "admin API built");
        Ok(Api {
            state: AppState(Arc::new(shared)),
            stopping,
            header_read_timeout: config.header_read_timeout(),
        })
    }

    /// Every route of the API, for serving (or testing) in-process.
    pub fn router(&self) -> Router {
        routes::router(self.state.clone())
    }

    /// Whether the subscription view, the delivery history and the dead letters have caught up
    /// (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.state.0.is_ready()
    }

    /// Waits until [`Api::is_ready`], each read model within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let shared = &self.state.0;
        shared.view.wait_caught_up(timeout).await?;
        shared.attempts.wait_caught_up(timeout).await?;
        shared.dead_letters.wait_caught_up(timeout).await?;
        Ok(())
    }

    /// The API ready to serve on `listener`, bound by the caller ([`bind`]; port 0 in tests,
    /// which then read [`ApiServer::local_addr`]).
    pub fn with_listener(self, listener: TcpListener) -> ApiServer {
        ApiServer {
            api: self,
            listener,
        }
    }

    /// Stops the readiness reports and the read models' readers (the subscription view belongs
    /// to the caller and keeps running).
    async fn stop(&self) {
        self.stopping.cancel();
        let shared = &self.state.0;
        shared.attempts.shutdown();
        shared.dead_letters.shutdown();
        let stopped = async {
            shared.attempts.stopped().await;
            shared.dead_letters.stopped().await;
        };
        if tokio::time::timeout(STOP_TIMEOUT, stopped).await.is_err() {
            tracing::warn!("the admin API's topic readers did not stop in time");
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stopping.cancel();
    }
}

/// The admin API on its listener ([`Api::with_listener`]), ready to [`ApiServer::run`].
#[derive(Debug)]
pub struct ApiServer {
    api: Api,
    listener: TcpListener,
}

impl ApiServer {
    /// Where the API listens (the port the system chose when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(Error::Serve)
    }

    /// Serves the API on its listener until `shutdown` is cancelled, lets requests in flight
    /// finish, then stops the read models.
    ///
    /// Each connection is served by hyper directly rather than through `axum::serve`, which
    /// has no header-read timeout: a client that opens a connection and never finishes its
    /// headers would hold it (and its task) forever. Here it is closed after
    /// `api.header_read_timeout_ms`; once the headers are in, `api.request_timeout_ms` bounds
    /// the rest.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let ApiServer { api, listener } = self;
        let addr = listener.local_addr().map_err(Error::Serve)?;
        info!(%addr, "admin API serving");
        let service = TowerToHyperService::new(api.router());
        let mut builder = ConnectionBuilder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(api.header_read_timeout);
        let connections = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: the listener itself is fine,
                        // and retrying at once would spin.
                        tracing::warn!(%error, "the admin API could not accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            let builder = builder.clone();
            let service = service.clone();
            let watcher = connections.watcher();
            tokio::spawn(async move {
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(connection).await {
                    // A client that went away or was cut off by the header-read timeout.
                    tracing::debug!(%peer, %error, "admin API connection ended with an error");
                }
            });
        }
        drop(listener);
        // Idle connections close at once; those with a request in flight finish it, which the
        // two timeouts bound.
        let drained = tokio::time::timeout(
            api.state.0.settings.request_timeout + api.header_read_timeout + STOP_TIMEOUT,
            connections.shutdown(),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("admin API connections did not close in time");
        }
        api.stop().await;
        info!(%addr, "admin API stopped");
        Ok(())
    }
}

/// Binds the API's listener, naming the address if it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn openapi_json() -> String {
    // Serializing a document of strings and maps cannot fail; an empty object would still be
    // valid JSON for a client.
    routes::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

/// Flips `flag` ready once `fold` caught up, and not ready again if its reader stops; drops it
/// (reported `stopped`) when the API stops.
async fn report_readiness<F: RecordFold>(
    fold: Arc<TopicFold<F>>,
    flag: ReadinessFlag,
    stopping: CancellationToken,
) {
    /// How often a starting fold's progress is looked at; the wait itself ends at catch-up.
    const POLL: Duration = Duration::from_secs(5);
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            caught_up = fold.wait_caught_up(POLL) => match caught_up {
                Ok(()) => break,
                Err(dispatch_kafka::Error::FoldTimeout { .. }) => continue,
                Err(error) => {
                    flag.set_not_ready(error.to_string());
                    stopping.cancelled().await;
                    return;
                }
            },
        }
    }
    flag.set_ready(true);
    tokio::select! {
        () = stopping.cancelled() => {}
        () = fold.stopped() => flag.set_not_ready(format!("the reader of {} stopped", fold.topic())),
    }
    stopping.cancelled().await;
}
