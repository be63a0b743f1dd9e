//! Test receivers on 127.0.0.1:0 whose answers the test scripts, which record every request and
//! every accepted connection. The test PKI for HTTPS receivers is `dispatch_e2e::tls::TestPki`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen at once. Generous: a loaded CI
/// machine must not make a correct test fail.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What the receiver answers to every request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status with headers and a body.
    Status {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    },
    /// Read the request, never answer.
    Hang,
    /// Answer 200, send a first chunk of the body, then stall forever.
    StalledBody,
    /// Answer 200 with a body of this many bytes, streamed in chunks.
    Endless(usize),
}

impl Reply {
    /// A status with an empty body.
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            headers: Vec::new(),
            body: "",
        }
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: hyper::Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// A header's value as text; panics when absent or not text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("the request has no {name} header"))
            .to_str()
            .expect("header values of our requests are text")
    }
}

/// A receiver listening on 127.0.0.1:0, plain HTTP or TLS.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Recorded>,
    peers: watch::Receiver<Vec<SocketAddr>>,
    accept_loop: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl Receiver {
    /// A plain HTTP receiver.
    pub async fn start(reply: Reply) -> Self {
        Self::start_with_tls(reply, None).await
    }

    /// A receiver, with TLS when `tls` is given (ALPN h2 and http/1.1).
    pub async fn start_with_tls(reply: Reply, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (request_tx, requests) = mpsc::unbounded_channel();
        let (peers_tx, peers) = watch::channel(Vec::new());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                peers_tx.send_modify(|peers| peers.push(peer));
                let reply = reply.clone();
                let request_tx = request_tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(stream, reply, request_tx).await,
                        Some(acceptor) => {
                            // A failed handshake is what some tests want; nothing to serve then.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, reply, request_tx).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            peers,
            accept_loop,
        }
    }

    /// The next request received, waiting at most [`PATIENCE`].
    pub async fn next_request(&mut self) -> Recorded {
        tokio::time::timeout(PATIENCE, self.requests.recv())
            .await
            .expect("a request arrives in time")
            .expect("the receiver is running")
    }

    /// Asserts that nobody has connected so far: connects a probe and waits until it is
    /// accepted; connections are accepted in arrival order, so any earlier one would show up
    /// before the probe.
    pub async fn assert_no_connection(&self) {
        let probe = TcpStream::connect(self.addr).await.expect("probe connects");
        let probe_addr = probe.local_addr().expect("probe address");
        let mut peers = self.peers.clone();
        tokio::time::timeout(
            PATIENCE,
            peers.wait_for(|peers| peers.contains(&probe_addr)),
        )
        .await
        .expect("the probe is accepted in time")
        .expect("the receiver is running");
        assert_eq!(
            *peers.borrow(),
            vec![probe_addr],
            "the receiver accepted a connection before the probe"
        );
        assert!(
            self.requests.is_empty(),
            "the receiver got a request it should not have"
        );
    }
}

async fn serve<S>(stream: S, reply: Reply, request_tx: mpsc::UnboundedSender<Recorded>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let reply = reply.clone();
        let request_tx = request_tx.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            // The test may have stopped listening; that is its business.
            let _ = request_tx.send(Recorded {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body,
            });
            respond(reply).await
        }
    });
    // Errors here are the client hanging up, timing out or refusing the certificate.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn respond(reply: Reply) -> Result<Response<ReplyBody>, hyper::Error> {
    let (status, headers, body) = match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => (
            status,
            headers,
            ReplyBody::Full(Some(Bytes::from_static(body.as_bytes()))),
        ),
        Reply::Hang => std::future::pending().await,
        Reply::StalledBody => (200, Vec::new(), ReplyBody::Stalled { sent: false }),
        Reply::Endless(remaining) => (200, Vec::new(), ReplyBody::Endless { remaining }),
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid test status");
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("a valid test header value"));
    }
    Ok(response)
}

/// The bodies a receiver can answer with.
#[derive(Debug)]
enum ReplyBody {
    Full(Option<Bytes>),
    Stalled { sent: bool },
    Endless { remaining: usize },
}

const CHUNK: &[u8] = &[b'x'; 16 * 1024];

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(body) => Poll::Ready(body.take().map(|body| Ok(Frame::data(body)))),
            Self::Stalled { sent } if !*sent => {
                *sent = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))))
            }
            // Never woken: the body stalls for good.
            Self::Stalled { .. } => Poll::Pending,
            Self::Endless { remaining } if *remaining == 0 => Poll::Ready(None),
            Self::Endless { remaining } => {
                let size = CHUNK.len().min(*remaining);
                *remaining -= size;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..size])))))
            }
        }
    }
}
