//! The admin API served on 127.0.0.1:0 against the real broker (each test on topics of its own),
//! spoken to over real HTTP: every route, every 4xx path, account isolation, read-your-writes,
//! races, secrets, test events, the DLQ and the OpenAPI document.
//!
//! One test binary with a module per area, so the crates are linked once.

mod auth;
mod deliveries;
mod dlq;
mod limits;
mod openapi;
mod secrets;
mod subscriptions;
mod support;
