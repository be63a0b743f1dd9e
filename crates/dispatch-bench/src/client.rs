//! A small plain-HTTP client for the harness: readiness probes and admin API calls on loopback.

use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request; the answer's status and body text. Ten seconds at most.
pub async fn call(
    method: Method,
    url: &str,
    bearer: Option<&str>,
    json: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match json {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(body))
        .context("building a request")?;
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .with_context(|| format!("{url}: no answer in 10 s"))?
        .with_context(|| url.to_owned())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("{url}: reading the body"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET url`.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    call(Method::GET, url, None, None).await
}
