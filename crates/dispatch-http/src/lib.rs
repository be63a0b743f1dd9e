//! The webhook client: `POST`s to customer endpoints over pooled HTTP/1.1 and HTTP/2
//! connections, behind an SSRF guard, bounded in time and in what is read, with the precise
//! [`AttemptResult`](dispatch_core::outcome::AttemptResult) of every attempt.
//!
//! It sends a plain [`WebhookRequest`] — URL, headers, body — and knows nothing of delivery
//! tasks, subscriptions or secrets: `dispatch_core::request::webhook_request` builds the signed
//! request of a task (Standard Webhooks headers, `posternity-*`, custom headers).
//!
//! What it promises (design sections 5 and 7):
//!
//! - `https://` only, unless `allow_http`; TLS verified against the webpki roots plus an optional
//!   extra CA bundle.
//! - The host is resolved once per connection; addresses that are not global (loopback, private,
//!   link-local, …) are dropped unless allow-listed, and the connection goes to an address that
//!   was checked — never to a second resolution. Literal IP hosts get the same check.
//! - Redirects are never followed; a `3xx` is just a status.
//! - The whole attempt — resolution, connect, TLS, request, response headers and the capped body
//!   read — is bounded by `timeout_ms`. At most `max_response_bytes` of a body are read.
//! - The request's headers in the order given, after the configured `user-agent`.
//!
//! # Layout
//! - [`config`]: [`HttpConfig`], its defaults and validation.
//! - [`ssrf`]: which addresses are forbidden ([`is_forbidden`]), the allow-list
//!   ([`AddressGuard`]), resolving a host to the addresses that pass.
//! - [`url`]: endpoint URL rules ([`check_url`], [`check_endpoint`]) for the admin API and for
//!   every attempt.
//! - [`connector`]: the guarded resolver and TCP connector under hyper-rustls.
//! - [`client`]: [`WebhookClient::send`] of a [`WebhookRequest`], and the result it maps.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod connector;
pub mod ssrf;
pub mod url;

pub use client::{AttemptResponse, WebhookClient, WebhookRequest};
pub use config::HttpConfig;
pub use ssrf::{AddressGuard, BlockedAddress, RefusedIp, is_forbidden};
pub use url::{UrlError, check_endpoint, check_url};

/// Errors of this crate: building a client, or a request that cannot be attempted at all.
/// (What happens to an attempt is an [`AttemptResponse`], never an error.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `key` names it (relative to the HTTP client's table).
    #[error("invalid configuration: {key}: {message}")]
    Config {
        /// The configuration key, e.g. `timeout_ms` or `allow_addresses[2]`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused to build the TLS configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// A header of the request has a name or value that is not valid HTTP, so nothing was
    /// sent. (The value is not quoted: headers often carry credentials.)
    #[error("the {name:?} header is not a valid HTTP header name and value")]
    InvalidHeader {
        /// The header's name as given.
        name: String,
    },
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
