//! Telemetry shared by every role: the one module of metric names, the Prometheus exporter, and
//! the small HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! # Layout
//! - [`names`]: every metric name as a constant, and [`CATALOGUE`] describing each (kind, unit,
//!   labels, help).
//! - [`exporter`]: [`install_recorder`] — the process-wide Prometheus recorder, installed once,
//!   with our histogram buckets and every metric described.
//! - [`health`]: [`Health`] — components register, report readiness, and `/readyz` reads it.
//! - [`server`]: [`serve`] the three routes on a listener the caller [`bind`]s.
//!
//! A role does, in order: [`install_recorder`], [`bind`] (fail before any other I/O), register its
//! components with a [`Health`], [`serve`] with the role's shutdown signal, and flip each
//! [`ReadinessFlag`] as partitions are assigned and state topics caught up.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

pub mod exporter;
pub mod health;
pub mod names;
pub mod server;

pub use exporter::install_recorder;
pub use health::{ComponentReport, Health, HealthReport, ReadinessFlag};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use names::{CATALOGUE, MetricKind, MetricSpec, describe_all};
pub use server::{bind, router, serve};

/// What can go wrong setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Prometheus recorder could not be built or installed (another global recorder was
    /// installed first).
    #[error("cannot install the Prometheus recorder: {0}")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
    /// The telemetry listener could not be bound.
    #[error("cannot bind the telemetry listener on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
