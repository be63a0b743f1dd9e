//! The admin API of Posternity Dispatch: JSON over HTTP for subscriptions, their signing
//! secrets, test events, delivery status, the dead-letter queue and the event catalog — what a
//! dashboard and customers' automation call.
//!
//! Kafka is its only store. Subscriptions are written to `dispatch.subscriptions` and read from
//! the process's subscription view, each write answered only once the view applied it
//! (read-your-writes, conflicts decided by the log: see `store`). Delivery status is a bounded
//! fold of `dispatch.attempts`, the DLQ a fold of `dispatch.dlq`; test events and replays are
//! delivery tasks on `dispatch.deliveries` (or the subscription's lane), sent by the real
//! delivery engine.
//!
//! # Layout
//! - [`config`]: [`ApiConfig`], the `[api]` table: listener, tokens, bounds, timeouts, the
//!   request rate per token and the quotas per account.
//! - [`server`]: [`Api`] — `build` (tokens, writers, read models), `router`, `with_listener`
//!   → [`ApiServer`] — `run(shutdown)`.
//! - `routes`: every route, registered with axum and the OpenAPI document in one step
//!   ([`openapi`] is that document).
//! - `auth`: bearer tokens, compared in constant time; a caller's account scope.
//! - `limits`: the per-token request rate and the per-account quotas.
//! - [`error`]: [`ApiError`], the one error of every handler, and its JSON body.
//! - `extract`: JSON bodies, query parameters and `If-Match`, each failure a clear 4xx.
//! - `validate`: the rules for subscription values (URL and SSRF, event types, headers, …).
//! - `store`: subscription writes with read-your-writes and the log's conflict rules.
//! - [`model`]: the JSON types of requests and responses, and their OpenAPI schemas.
//! - `state`: what handlers share, and their lookups under the caller's scope.
//! - `observe`: the request span and the request-duration histogram.
#![forbid(unsafe_code)]

mod auth;
pub mod config;
pub mod error;
mod extract;
mod limits;
pub mod model;
mod observe;
mod routes;
pub mod server;
mod state;
mod store;
mod validate;

use std::net::SocketAddr;

pub use config::{ApiConfig, QuotaConfig, RateLimitConfig, TokenConfig};
pub use error::{ApiError, ErrorBody};
pub use routes::openapi;
pub use server::{Api, ApiServer, bind, openapi_json};

/// What can go wrong building or running the API (a request's failure is an [`ApiError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created, or a topic could not be read.
    #[error(transparent)]
    Kafka(#[from] dispatch_kafka::Error),
    /// The listener could not be bound.
    #[error("cannot bind the admin API listener on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("the admin API server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// A background task could not be run.
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
