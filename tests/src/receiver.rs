//! A real webhook receiver on 127.0.0.1:0 for tests: it records every request (headers, body,
//! arrival time, how many were concurrent) and answers as the test scripted it — a status,
//! optional headers, a delay, or a hang. Plain HTTP, or HTTPS with a test certificate
//! ([`crate::tls::TestPki`]); HTTP/1.1 and HTTP/2 either way.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// How the receiver answers a path.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answer with this status (and headers) after `delay`.
    Respond {
        /// HTTP status.
        status: u16,
        /// Extra response headers.
        headers: Vec<(String, String)>,
        /// How long to wait before answering.
        delay: Duration,
    },
    /// Never answer (the client's timeout ends it).
    Hang,
    /// Answer `status` at once with this body (a response excerpt of a known size).
    Body {
        /// HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
}

impl Script {
    /// `status` at once.
    pub fn status(status: u16) -> Self {
        Script::Respond {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Lower-case header names and values.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Bytes,
    /// The HTTP version the client negotiated.
    pub version: hyper::Version,
    /// When it arrived.
    pub at: Instant,
    /// Requests of the same path being handled when it arrived (itself included).
    pub concurrent: usize,
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, Script>,
    received: Vec<Received>,
    active: HashMap<String, usize>,
    connections: usize,
}

/// A running receiver. Dropping it stops accepting.
#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    tls: bool,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr)
            .finish()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Receiver {
    /// Starts a plain HTTP receiver; every path answers 200 until scripted otherwise.
    pub async fn start() -> Self {
        Self::start_with_tls(None).await
    }

    /// Starts an HTTPS receiver presenting `tls`'s certificate (handshakes that fail, as with a
    /// client that does not trust the CA, are counted as connections and serve nothing).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with_tls(Some(tls)).await
    }

    async fn start_with_tls(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(Mutex::new(State::default()));
        let accept_state = Arc::clone(&state);
        let with_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                lock(&accept_state).connections += 1;
                let state = Arc::clone(&accept_state);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(state, stream).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(state, stream).await;
                            }
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            tls: with_tls,
            state,
            task: Arc::new(task),
        }
    }

    /// `http://127.0.0.1:<port><path>`, or `https://localhost:<port><path>` for an HTTPS
    /// receiver (the name its certificate is issued for).
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.addr.port())
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    /// Sets how `path` answers from now on.
    pub fn script(&self, path: &str, script: Script) {
        lock(&self.state).scripts.insert(path.to_owned(), script);
    }

    /// Everything `path` received so far, in arrival order.
    pub fn received(&self, path: &str) -> Vec<Received> {
        lock(&self.state)
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// Waits until `path` received at least `count` requests or `timeout` passed; returns what
    /// it received.
    pub async fn wait_for(&self, path: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received(path);
            if received.len() >= count || Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (as the client negotiated).
async fn serve<S>(state: Arc<Mutex<State>>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| handle(Arc::clone(&state), request));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let version = request.version();
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let script = {
        let mut state = lock(&state);
        let active = state.active.entry(path.clone()).or_default();
        *active += 1;
        let concurrent = *active;
        state.received.push(Received {
            path: path.clone(),
            headers,
            body,
            version,
            at: Instant::now(),
            concurrent,
        });
        state
            .scripts
            .get(&path)
            .cloned()
            .unwrap_or(Script::status(200))
    };
    let response = match script {
        Script::Hang => {
            // Never answers; the connection ends when the client gives up.
            std::future::pending::<()>().await;
            unreachable_response()
        }
        Script::Respond {
            status,
            headers,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            let mut builder = Response::builder().status(status);
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            builder
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap_or_else(|_| unreachable_response())
        }
        Script::Body { status, body } => Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| unreachable_response()),
    };
    if let Some(active) = lock(&state).active.get_mut(&path) {
        *active = active.saturating_sub(1);
    }
    Ok(response)
}

fn unreachable_response() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::new()))
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}
