//! [`WebhookClient`]: one `POST` per attempt, bounded in time and in what it reads, and the
//! precise [`AttemptResult`] of what happened — the value `dispatch-core` classifies.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::outcome::AttemptResult;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::connector::{GuardedConnector, https_connector};
use crate::ssrf::{AddressGuard, ResolveError};
use crate::url::{UrlError, parse_endpoint};
use crate::{Error, HttpConfig, Result};

/// One attempt to deliver a webhook: a `POST` of `body` to `url` with `headers`. What they
/// say is the caller's business (`dispatch_core::request` builds the signed request of a
/// delivery task); this client adds only its `user-agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// The endpoint URL (checked again here: scheme, host, literal IPs; names at connect time).
    pub url: String,
    /// `(name, value)` pairs, sent in this order after the client's `user-agent` (which a
    /// `user-agent` pair here replaces). A name may repeat; every pair is sent.
    pub headers: Vec<(String, String)>,
    /// The body, sent byte for byte.
    pub body: Vec<u8>,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResponse {
    /// What happened, for `dispatch_core::outcome::classify`.
    pub result: AttemptResult,
    /// From the call to [`WebhookClient::send`] until the result was known (the capped body
    /// read included).
    pub duration: Duration,
    /// The first `max_response_bytes` of the response body, lossy UTF-8; empty without a
    /// response.
    pub response_excerpt: String,
}

type HyperClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// The webhook client: pooled HTTP/1.1 and HTTP/2 (by ALPN) connections behind the SSRF guard.
/// Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    client: HyperClient,
    guard: Arc<AddressGuard>,
    allow_http: bool,
    timeout: Duration,
    max_response_bytes: usize,
    user_agent: HeaderValue,
}

impl WebhookClient {
    /// Validates the configuration, reads `extra_ca_file`, and builds the client (no network
    /// I/O; [`Self::send`] must run on a tokio runtime).
    pub fn new(config: &HttpConfig) -> Result<Self> {
        config.validate()?;
        let guard = Arc::new(AddressGuard::from_config(config)?);
        let connector = https_connector(config, Arc::clone(&guard))?;
        let mut builder = Client::builder(TokioExecutor::new());
        if config.pool_idle_timeout_secs == 0 {
            builder.pool_max_idle_per_host(0);
        } else {
            builder
                .pool_idle_timeout(Duration::from_secs(config.pool_idle_timeout_secs))
                .pool_max_idle_per_host(config.pool_max_idle_per_host);
        }
        // The pool needs a timer to expire idle connections; HTTP/2 needs one for its pings.
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let user_agent = HeaderValue::from_str(&config.user_agent).map_err(|_| Error::Config {
            key: "user_agent".to_owned(),
            message: "must be a valid header value".to_owned(),
        })?;
        Ok(Self {
            client: builder.build(connector),
            guard,
            allow_http: config.allow_http,
            timeout: config.timeout(),
            max_response_bytes: config.max_response_bytes,
            user_agent,
        })
    }

    /// [`crate::check_url`] with this client's configuration.
    pub fn check_url(&self, url: &str) -> std::result::Result<(), UrlError> {
        parse_endpoint(url, self.allow_http, &self.guard).map(drop)
    }

    /// Makes one attempt: `POST`s the request and reads at most `max_response_bytes` of the
    /// answer, all within the timeout. Redirects are not followed: a `3xx` is a response like
    /// any other.
    ///
    /// Every outcome of the attempt — including an invalid or refused URL — is an
    /// [`AttemptResponse`]. `Err` means no attempt was made because a header of the request is
    /// not valid HTTP ([`Error::InvalidHeader`]), which retrying cannot fix.
    pub async fn send(&self, request: WebhookRequest) -> Result<AttemptResponse> {
        let started = Instant::now();
        let endpoint = match parse_endpoint(&request.url, self.allow_http, &self.guard) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                let result = match error {
                    UrlError::BlockedAddress { .. } => AttemptResult::BlockedAddress {
                        message: error.to_string(),
                    },
                    _ => AttemptResult::InvalidUrl {
                        message: error.to_string(),
                    },
                };
                return Ok(AttemptResponse {
                    result,
                    duration: started.elapsed(),
                    response_excerpt: String::new(),
                });
            }
        };
        let http_request = self.build_request(endpoint.uri, request)?;

        let exchange = async {
            let response = self.client.request(http_request).await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
            let excerpt = read_capped(response.into_body(), self.max_response_bytes).await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after, excerpt))
        };
        let (result, response_excerpt) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_elapsed) => (AttemptResult::Timeout, String::new()),
            Ok(Err(error)) => (result_of_error(&error), String::new()),
            Ok(Ok((status, retry_after, excerpt))) => (
                AttemptResult::Response {
                    status,
                    retry_after,
                },
                excerpt,
            ),
        };
        Ok(AttemptResponse {
            result,
            duration: started.elapsed(),
            response_excerpt,
        })
    }

    fn build_request(
        &self,
        uri: hyper::Uri,
        request: WebhookRequest,
    ) -> Result<Request<Full<Bytes>>> {
        let mut headers = HeaderMap::with_capacity(request.headers.len() + 1);
        if !request
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(header::USER_AGENT.as_str()))
        {
            headers.insert(header::USER_AGENT, self.user_agent.clone());
        }
        for (name, value) in &request.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => return Err(Error::InvalidHeader { name: name.clone() }),
            }
        }
        let mut http_request = Request::new(Full::new(Bytes::from(request.body)));
        *http_request.method_mut() = Method::POST;
        *http_request.uri_mut() = uri;
        *http_request.headers_mut() = headers;
        Ok(http_request)
    }
}

/// Reads up to `cap` bytes of a body and drops the rest unread (the connection is then not
/// reused, which is the point: a hostile endpoint's endless body costs us nothing more). A body
/// that fails midway keeps what arrived: the status is what the attempt is judged by.
async fn read_capped(mut body: Incoming, cap: usize) -> String {
    let mut read = Vec::new();
    while read.len() < cap {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = cap - read.len();
                    read.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "response body failed after the status arrived");
                break;
            }
            None => break,
        }
    }
    excerpt(&read)
}

/// Lossy UTF-8 of a possibly truncated body: a multi-byte character cut by the cap is left out
/// rather than shown as a replacement character.
fn excerpt(bytes: &[u8]) -> String {
    let mut end = bytes.len();
    // The last lead byte within a character's length of the end: if its character needs more
    // bytes than follow it, the cap cut it.
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xc0 != 0x80 {
            if utf8_len(byte) > back {
                end = bytes.len() - back;
            }
            break;
        }
    }
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// The errors of an exchange, outermost first. `io::Error` hides a wrapped error from
/// `source()` (it returns the wrapped error's source), so it is unwrapped explicitly: that is
/// where hyper-rustls and tokio-rustls put the `rustls::Error` of a failed handshake.
fn error_chain<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(error);
    // Bounded: a cyclic source chain must not hang an attempt.
    while let Some(error) = next.take().filter(|_| chain.len() < 32) {
        chain.push(error);
        next = match error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => error.source(),
        };
    }
    chain
}

/// What a failed exchange (no response) means for the attempt.
fn result_of_error(error: &(dyn StdError + 'static)) -> AttemptResult {
    let chain = error_chain(error);
    for error in &chain {
        if let Some(guard_error) = error.downcast_ref::<ResolveError>() {
            return match guard_error {
                ResolveError::Blocked(blocked) => AttemptResult::BlockedAddress {
                    message: blocked.to_string(),
                },
                ResolveError::Lookup { .. } | ResolveError::NoAddress { .. } => {
                    AttemptResult::Connect {
                        message: guard_error.to_string(),
                    }
                }
            };
        }
    }
    for error in &chain {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return AttemptResult::Tls {
                message: tls.to_string(),
            };
        }
        if error
            .downcast_ref::<rustls_pki_types::InvalidDnsNameError>()
            .is_some()
        {
            return AttemptResult::InvalidUrl {
                message: "the endpoint host is not a valid DNS name for TLS".to_owned(),
            };
        }
    }
    AttemptResult::Connect {
        message: chain_message(&chain),
    }
}

/// The chain's messages joined with `: `, leaving out hyper-util's `client error (…)` wrapper and
/// messages that repeat what an outer one already said.
fn chain_message(chain: &[&(dyn StdError + 'static)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for error in chain {
        let message = error.to_string();
        if message.starts_with("client error (") || message.is_empty() {
            continue;
        }
        if parts.iter().any(|outer| outer.contains(&message)) {
            continue;
        }
        parts.push(message);
    }
    if parts.is_empty() {
        "the connection failed".to_owned()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_header_rules_agree_with_the_http_types() {
        // `dispatch_core::request` checks names and values without the `http` crate; a request
        // it builds must never be refused here.
        use dispatch_core::request::{is_header_name, is_header_value};
        let mut samples: Vec<String> = (0_u8..=127)
            .map(|byte| char::from(byte).to_string())
            .collect();
        samples.extend(["é", "\u{a0}", "ü-x", "x y", "a\tb", "Content-Type"].map(str::to_owned));
        for sample in &samples {
            for text in [sample.clone(), format!("x-{sample}"), format!("{sample}z")] {
                assert_eq!(
                    is_header_name(&text),
                    HeaderName::from_bytes(text.as_bytes()).is_ok(),
                    "name {text:?}"
                );
                assert_eq!(
                    is_header_value(&text),
                    HeaderValue::from_str(&text).is_ok(),
                    "value {text:?}"
                );
            }
        }
    }

    #[test]
    fn excerpts_are_lossy_utf8_without_a_cut_character() {
        assert_eq!(excerpt(b"hello"), "hello");
        assert_eq!(excerpt("héllo".as_bytes()), "héllo");
        // "é" is c3 a9; cut after c3.
        assert_eq!(excerpt(b"caf\xc3"), "caf");
        // A cut 4-byte character after 2 of its bytes.
        assert_eq!(excerpt(b"ok \xf0\x9f"), "ok ");
        // Invalid bytes inside stay visible as replacement characters, and a cut tail goes.
        assert_eq!(excerpt(b"a\xffb\xe2\x82"), "a\u{fffd}b");
        assert_eq!(excerpt(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(excerpt(b""), "");
    }

    #[test]
    fn io_errors_are_looked_into_for_rustls_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = io::Error::new(io::ErrorKind::InvalidData, tls.clone());
        let outer = io::Error::other(inner);
        assert_eq!(
            result_of_error(&outer),
            AttemptResult::Tls {
                message: tls.to_string()
            }
        );
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            result_of_error(&refused),
            AttemptResult::Connect {
                message: "connection refused".to_owned()
            }
        );
    }
}
