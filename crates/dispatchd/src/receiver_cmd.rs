//! `dispatchd receiver`: a development webhook endpoint. It verifies each request's Standard
//! Webhooks signature with the secrets it was given, prints what arrived, and answers as told —
//! 2xx by default, or a failing status to watch retries and the DLQ at work.
//!
//! It is what the README's quick start points a subscription at; receivers in production are
//! the customers' own services, which verify the same way with any Standard Webhooks library.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use dispatch_core::signing::{self, ReceivedHeaders, SigningSecret};
use tracing::info;

/// Flags of `dispatchd receiver`.
#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// The subscription's signing secret (`whsec_…`). Repeat it during a rotation: a request
    /// verifies when any signature matches any secret.
    #[arg(long = "secret", required = true)]
    secrets: Vec<String>,
    /// Status to answer a request whose signature verifies (e.g. 503 to make deliveries fail).
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// How far `webhook-timestamp` may be from this machine's clock, in seconds.
    #[arg(long, default_value_t = signing::DEFAULT_TOLERANCE.as_secs())]
    tolerance_secs: u64,
}

struct Receiver {
    secrets: Vec<SigningSecret>,
    status: StatusCode,
    tolerance: Duration,
    received: AtomicU64,
}

/// Runs the receiver until Ctrl-C or SIGTERM.
pub async fn run(args: &ReceiverArgs) -> anyhow::Result<ExitCode> {
    let secrets = args
        .secrets
        .iter()
        .enumerate()
        .map(|(index, text)| {
            SigningSecret::parse(text).with_context(|| format!("--secret #{}", index + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let status = StatusCode::from_u16(args.status)
        .ok()
        .filter(|status| !status.is_informational())
        .with_context(|| {
            format!(
                "--status {}: not an HTTP status to answer with",
                args.status
            )
        })?;
    let receiver = Arc::new(Receiver {
        secrets,
        status,
        tolerance: Duration::from_secs(args.tolerance_secs),
        received: AtomicU64::new(0),
    });
    let address = SocketAddr::new(args.listen, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    println!(
        "receiver: listening on http://{local}/ (any path); answering {} to verified requests, 401 to others",
        status.as_u16()
    );
    let app = Router::new().fallback(handle).with_state(receiver);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    info!("receiver stopped");
    Ok(ExitCode::SUCCESS)
}

async fn handle(
    State(receiver): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let number = receiver.received.fetch_add(1, Ordering::Relaxed) + 1;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let received = ReceivedHeaders::from_lookup(header);
    let now = SystemTime::now();
    // Which secret verified, or why none did (the last secret's reason).
    let verdict = receiver
        .secrets
        .iter()
        .enumerate()
        .map(|(index, secret)| {
            signing::verify(secret, &received, &body, now, receiver.tolerance).map(|()| index)
        })
        .reduce(|first, next| first.or(next))
        .unwrap_or(Err(signing::VerifyError::NoMatchingSignature));
    let body_text = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(json) => json.to_string(),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    println!(
        "#{number} {method} {uri} webhook-id={} delivery={} attempt={}",
        header("webhook-id").unwrap_or("-"),
        header("posternity-delivery-id").unwrap_or("-"),
        header("posternity-attempt").unwrap_or("-"),
    );
    let status = match verdict {
        Ok(index) => {
            println!(
                "  signature verified with secret #{} -> {}",
                index + 1,
                receiver.status.as_u16()
            );
            receiver.status
        }
        Err(error) => {
            println!("  signature NOT verified: {error} -> 401");
            StatusCode::UNAUTHORIZED
        }
    };
    println!("  {body_text}");
    status
}
