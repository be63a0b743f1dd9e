//! The telemetry HTTP server of every role: `/metrics`, `/healthz` and `/readyz`.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::health::Health;
use crate::{Error, Result};

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[derive(Clone, Debug)]
struct Telemetry {
    metrics: PrometheusHandle,
    health: Health,
}

/// Binds the telemetry listener.
///
/// # Errors
///
/// [`Error::Bind`], naming the address, if it cannot be bound (in use, not local, no permission).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// The routes of [`serve`], for a server that wants to host them itself.
///
/// - `GET /metrics`: the Prometheus scrape payload.
/// - `GET /healthz`: `200 ok` — liveness is simply that the process answers HTTP.
/// - `GET /readyz`: `200` when ready, `503` when not, with the [`HealthReport`](crate::HealthReport)
///   as JSON either way.
pub fn router(metrics: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .with_state(Telemetry { metrics, health })
}

/// Serves [`router`] on `listener` until `shutdown` completes, then stops accepting, lets requests
/// in flight finish, and returns.
///
/// The caller binds the listener (see [`bind`]) so tests can use port 0.
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!(%addr, "telemetry server stopped");
    Ok(())
}

async fn render_metrics(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        telemetry.metrics.render(),
    )
}

async fn readiness(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    let report = telemetry.health.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::{HealthReport, install_recorder, names};

    /// Long enough for a loaded CI machine, short enough that a hang fails the test.
    const BOUND: Duration = Duration::from_secs(10);

    /// A parsed HTTP/1.1 response.
    #[derive(Debug)]
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn parse(raw: &[u8]) -> Self {
            let raw = std::str::from_utf8(raw).expect("UTF-8 response");
            let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
            let mut lines = head.split("\r\n");
            let status_line = lines.next().expect("status line");
            let status = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status code");
            let headers = lines
                .map(|line| {
                    let (name, value) = line.split_once(':').expect("header line");
                    (name.trim().to_owned(), value.trim().to_owned())
                })
                .collect();
            Self {
                status,
                headers,
                body: body.to_owned(),
            }
        }
    }

    /// A minimal HTTP/1.1 GET that asks the server to close the connection, so the response ends
    /// at EOF.
    async fn get(addr: SocketAddr, path: &str) -> Response {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .expect("send request");
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.expect("read response");
            Response::parse(&raw)
        };
        tokio::time::timeout(BOUND, exchange)
            .await
            .expect("response within the bound")
    }

    /// A server on 127.0.0.1:0 and the sender that shuts it down.
    struct TestServer {
        addr: SocketAddr,
        shutdown: oneshot::Sender<()>,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(health: Health) -> TestServer {
        let metrics = install_recorder().expect("recorder installs");
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, metrics, health, async {
            // A dropped sender stops the server as well, so a failing test leaks nothing.
            let _ = stop.await;
        }));
        TestServer {
            addr,
            shutdown,
            task,
        }
    }

    impl TestServer {
        async fn stop(self) {
            self.shutdown.send(()).expect("server still running");
            let result = tokio::time::timeout(BOUND, self.task)
                .await
                .expect("server stops within the bound")
                .expect("server task did not panic");
            result.expect("server ended without an I/O error");
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let server = start(Health::new()).await;
        let response = get(server.addr, "/healthz").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "ok");
        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_is_503_until_every_component_is_ready() {
        let health = Health::new();
        let server = start(health.clone()).await;

        let response = get(server.addr, "/readyz").await;
        assert_eq!(response.status, 503, "nothing registered yet");

        let fanout = health.component("fanout");
        let view = health.component("view");
        fanout.set_ready(true);
        view.set_not_ready("catching up: 120 records behind");
        let response = get(server.addr, "/readyz").await;
        assert_eq!(response.status, 503);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let report: serde_json::Value = serde_json::from_str(&response.body).expect("JSON body");
        assert_eq!(
            report,
            serde_json::json!({
                "ready": false,
                "components": {
                    "fanout": {"ready": true},
                    "view": {"ready": false, "reason": "catching up: 120 records behind"},
                }
            })
        );

        view.set_ready(true);
        let response = get(server.addr, "/readyz").await;
        assert_eq!(response.status, 200);
        let report: HealthReport = serde_json::from_str(&response.body).expect("report");
        assert!(report.ready);
        assert!(
            report
                .components
                .values()
                .all(|c| c.ready && c.reason.is_none())
        );

        drop(fanout);
        let response = get(server.addr, "/readyz").await;
        assert_eq!(
            response.status, 503,
            "a stopped component makes the process not ready"
        );

        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_shows_recorded_values_with_help() {
        let server = start(Health::new()).await;
        metrics::counter!(names::FANOUT_EVENTS_CONSUMED_TOTAL, "topic" => "t").increment(3);

        let response = get(server.addr, "/metrics").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some(METRICS_CONTENT_TYPE));
        let name = names::FANOUT_EVENTS_CONSUMED_TOTAL;
        let help = names::spec(name).expect("catalogued").help;
        assert!(
            response.body.contains(&format!("# HELP {name} {help}\n")),
            "{}",
            response.body
        );
        assert!(
            response.body.contains(&format!("# TYPE {name} counter\n")),
            "{}",
            response.body
        );
        assert!(
            response
                .body
                .contains(&format!("{name}{{topic=\"t\"}} 3\n")),
            "{}",
            response.body
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn installing_twice_shares_one_recorder() {
        let first = install_recorder().expect("first install");
        let second = install_recorder().expect("second install");
        // A value recorded once shows in both handles: they render the same recorder.
        metrics::gauge!(names::VIEW_SUBSCRIPTIONS).set(42.0);
        let line = format!("\n{} 42\n", names::VIEW_SUBSCRIPTIONS);
        assert!(first.render().contains(&line), "{}", first.render());
        assert!(second.render().contains(&line), "{}", second.render());
    }

    #[tokio::test]
    async fn shutdown_stops_the_server_and_frees_the_port() {
        let server = start(Health::new()).await;
        let addr = server.addr;
        assert_eq!(get(addr, "/healthz").await.status, 200);
        server.stop().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing listens after shutdown"
        );
    }

    /// Prometheus keeps its connection open between scrapes; that must not hold up shutdown.
    #[tokio::test]
    async fn shutdown_does_not_wait_for_idle_keep_alive_connections() {
        let server = start(Health::new()).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        // Read until the whole response is in, without waiting for EOF (the connection stays).
        let mut raw = Vec::new();
        let mut buf = [0_u8; 1024];
        tokio::time::timeout(BOUND, async {
            while !raw.ends_with(b"\r\n\r\nok") {
                let n = stream.read(&mut buf).await.expect("read");
                assert_ne!(n, 0, "connection closed before the response was complete");
                raw.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("response within the bound");
        assert_eq!(Response::parse(&raw).status, 200);

        server.stop().await;
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("connection closed within the bound")
            .unwrap_or(0);
        assert_eq!(n, 0, "the idle connection is closed on shutdown");
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let server = start(Health::new()).await;
        assert_eq!(get(server.addr, "/").await.status, 404);
        server.stop().await;
    }

    #[tokio::test]
    async fn bind_names_the_address_it_could_not_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = taken.local_addr().expect("local address");
        let error = bind(addr).await.expect_err("the port is taken");
        assert!(matches!(error, Error::Bind { addr: a, .. } if a == addr));
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
