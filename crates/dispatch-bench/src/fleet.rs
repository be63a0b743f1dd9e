//! The receiver fleet: hyper servers on 127.0.0.1 (HTTP/1.1 and HTTP/2), one path per
//! endpoint, each endpoint answering 200, 503 or hanging as the scenario sets it. Every
//! accepted webhook is written to the ledger: (event, endpoint) → how many times it arrived,
//! when first, and its event-to-delivery latency measured from the event's `created_at` (its
//! `occurred_at`, set by the publisher on the same clock). One request in `verify_one_in` has
//! its Standard Webhooks signature checked with the endpoint's secret.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatch_core::signing::{self, ReceivedHeaders, SigningSecret};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::workload;

/// How an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 at once; the webhook counts as delivered.
    Accept = 0,
    /// 503 at once; not delivered.
    Fail = 1,
    /// No answer until the client gives up (the request's timeout).
    Hang = 2,
}

/// One (event, endpoint) as the fleet saw it.
#[derive(Debug, Clone, Copy)]
pub struct Reception {
    /// Times it was accepted (more than one: a duplicate).
    pub count: u32,
    /// Since the fleet started, when it first arrived.
    pub first_at: Duration,
    /// `first arrival − occurred_at`, in microseconds (millisecond resolution).
    pub latency_us: u64,
}

struct Endpoint {
    mode: AtomicU8,
    secret: Mutex<Option<SigningSecret>>,
    refused: AtomicU64,
}

struct State {
    endpoints: Vec<Endpoint>,
    /// Key `seq * 1024 + endpoint`.
    ledger: Mutex<HashMap<u64, Reception>>,
    started: Instant,
    requests: AtomicU64,
    accepted: AtomicU64,
    verified: AtomicU64,
    bad_signatures: AtomicU64,
    unparseable: AtomicU64,
    verify_one_in: u64,
}

/// The running fleet. Dropping it stops the servers.
pub struct Fleet {
    addrs: Vec<SocketAddr>,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("addrs", &self.addrs)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

/// What the fleet counted.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FleetCounters {
    /// Requests of any outcome.
    pub requests: u64,
    /// Requests answered 200.
    pub accepted: u64,
    /// Signatures checked.
    pub verified: u64,
    /// Signatures that did not verify.
    pub bad_signatures: u64,
    /// Bodies or ids the fleet could not read.
    pub unparseable: u64,
}

fn ledger_key(seq: u64, endpoint: usize) -> u64 {
    seq * 1024 + endpoint as u64
}

impl Fleet {
    /// Starts `servers` listeners for `workload::ENDPOINTS` endpoints.
    pub async fn start(servers: usize, verify_one_in: u64) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            endpoints: (0..workload::ENDPOINTS)
                .map(|_| Endpoint {
                    mode: AtomicU8::new(Mode::Accept as u8),
                    secret: Mutex::new(None),
                    refused: AtomicU64::new(0),
                })
                .collect(),
            ledger: Mutex::new(HashMap::new()),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            unparseable: AtomicU64::new(0),
            verify_one_in: verify_one_in.max(1),
        });
        let stop = CancellationToken::new();
        let mut addrs = Vec::new();
        for _ in 0..servers.max(1) {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            tokio::spawn(serve(listener, state.clone(), stop.clone()));
        }
        Ok(Fleet { addrs, state, stop })
    }

    /// URL of endpoint `endpoint`.
    pub fn url(&self, endpoint: usize) -> String {
        workload::endpoint_url(&self.addrs, endpoint)
    }

    /// Every endpoint's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        workload::endpoint_urls(&self.addrs)
    }

    /// The secret signatures of `endpoint` are checked with.
    pub fn set_secret(&self, endpoint: usize, secret: SigningSecret) {
        if let Ok(mut slot) = self.state.endpoints[endpoint].secret.lock() {
            *slot = Some(secret);
        }
    }

    /// Sets how `endpoint` answers from now on.
    pub fn set_mode(&self, endpoint: usize, mode: Mode) {
        self.state.endpoints[endpoint]
            .mode
            .store(mode as u8, Ordering::Relaxed);
    }

    /// Requests `endpoint` refused with 503.
    pub fn refused(&self, endpoint: usize) -> u64 {
        self.state.endpoints[endpoint]
            .refused
            .load(Ordering::Relaxed)
    }

    /// Webhooks accepted so far, duplicates included.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Time since the fleet started (the clock of [`Reception::first_at`]).
    pub fn elapsed(&self) -> Duration {
        self.state.started.elapsed()
    }

    /// The counters.
    pub fn counters(&self) -> FleetCounters {
        let s = &self.state;
        FleetCounters {
            requests: s.requests.load(Ordering::Relaxed),
            accepted: s.accepted.load(Ordering::Relaxed),
            verified: s.verified.load(Ordering::Relaxed),
            bad_signatures: s.bad_signatures.load(Ordering::Relaxed),
            unparseable: s.unparseable.load(Ordering::Relaxed),
        }
    }

    /// The receptions of `pairs` (event seq, endpoint), in order; `None` where nothing
    /// arrived. One lock for the whole lookup: the receivers write the same ledger.
    pub fn receptions(&self, pairs: &[(u64, usize)]) -> Vec<Option<Reception>> {
        match self.state.ledger.lock() {
            Ok(ledger) => pairs
                .iter()
                .map(|&(seq, endpoint)| ledger.get(&ledger_key(seq, endpoint)).copied())
                .collect(),
            Err(_) => vec![None; pairs.len()],
        }
    }

    /// How many of `pairs` have not arrived.
    pub fn missing(&self, pairs: &[(u64, usize)]) -> usize {
        self.receptions(pairs)
            .iter()
            .filter(|r| r.is_none())
            .count()
    }

    /// Calls `visit(seq, endpoint, reception)` for every (event, endpoint) received.
    pub fn for_each(&self, mut visit: impl FnMut(u64, usize, &Reception)) {
        if let Ok(ledger) = self.state.ledger.lock() {
            for (key, reception) in ledger.iter() {
                visit(key / 1024, (key % 1024) as usize, reception);
            }
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            let connection = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `"created_at":"2026-11-27T05:00:00.123Z"` → microseconds since the epoch.
fn created_at_micros(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"created_at\":\"";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = start + body[start..].iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&body[start..end]).ok()?;
    let timestamp = dispatch_proto::wkt::Timestamp::parse_rfc3339(text).ok()?;
    Some(timestamp.seconds as u64 * 1_000_000 + timestamp.nanos as u64 / 1_000)
}

fn respond(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let number = state.requests.fetch_add(1, Ordering::Relaxed);
    let Some(endpoint) = request
        .uri()
        .path()
        .strip_prefix("/e/")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n < state.endpoints.len())
    else {
        state.unparseable.fetch_add(1, Ordering::Relaxed);
        return Ok(respond(StatusCode::NOT_FOUND));
    };
    let slot = &state.endpoints[endpoint];
    match slot.mode.load(Ordering::Relaxed) {
        0 => {}
        1 => {
            slot.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(respond(StatusCode::SERVICE_UNAVAILABLE));
        }
        _ => {
            // Longer than any timeout the scenarios set; bounded so nothing outlives a run.
            tokio::time::sleep(Duration::from_secs(120)).await;
            return Ok(respond(StatusCode::GATEWAY_TIMEOUT));
        }
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        state.unparseable.fetch_add(1, Ordering::Relaxed);
        return Ok(respond(StatusCode::BAD_REQUEST));
    };
    let received_us = unix_micros();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(seq), Some(occurred_us)) = (
        header("webhook-id").and_then(workload::seq_of),
        created_at_micros(&body),
    ) else {
        state.unparseable.fetch_add(1, Ordering::Relaxed);
        return Ok(respond(StatusCode::BAD_REQUEST));
    };
    if number.is_multiple_of(state.verify_one_in) {
        let secret = slot.secret.lock().ok().and_then(|s| s.clone());
        if let Some(secret) = secret {
            let headers = ReceivedHeaders::from_lookup(header);
            let verified = signing::verify(
                &secret,
                &headers,
                &body,
                SystemTime::now(),
                signing::DEFAULT_TOLERANCE,
            );
            state.verified.fetch_add(1, Ordering::Relaxed);
            if verified.is_err() {
                state.bad_signatures.fetch_add(1, Ordering::Relaxed);
                return Ok(respond(StatusCode::UNAUTHORIZED));
            }
        }
    }
    let first_at = state.started.elapsed();
    if let Ok(mut ledger) = state.ledger.lock() {
        ledger
            .entry(ledger_key(seq, endpoint))
            .and_modify(|r| r.count += 1)
            .or_insert(Reception {
                count: 1,
                first_at,
                latency_us: received_us.saturating_sub(occurred_us),
            });
    }
    state.accepted.fetch_add(1, Ordering::Relaxed);
    Ok(respond(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_is_read_from_a_rendered_body() {
        let body = br#"{"id":"evt_x_0000000001","type":"image.generation.started","created_at":"2026-11-27T05:00:00.123Z","account_id":"acc_001"}"#;
        assert_eq!(created_at_micros(body), Some(1_795_755_600_123_000));
        assert_eq!(created_at_micros(b"{}"), None);
    }

    #[test]
    fn ledger_keys_keep_event_and_endpoint_apart() {
        let key = ledger_key(123_456, 199);
        assert_eq!((key / 1024, (key % 1024) as usize), (123_456, 199));
    }
}
