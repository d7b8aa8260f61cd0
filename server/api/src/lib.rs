//! Mintgate's gRPC edge: the mTLS listener, the caller's identity from its client certificate,
//! one tonic service per file, and the single mapping of domain errors to gRPC `Status`.
//!
//! Handlers are thin: read the caller, convert the request, call the domain, convert the answer.
//! This crate must not reach into storage or signing directly.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod acceptor;
mod admin;
mod admission;
pub mod bundle;
mod convert;
mod deadline;
pub mod evidence;
pub mod holds;
pub mod metrics;
pub mod peer;
mod provisioning;
mod refusals;
pub mod registry;
mod revocation;
mod rpc_metrics;
mod server;
mod shedding;
mod status;
pub mod tls;

#[cfg(test)]
mod test_support;

pub use bundle::BundleFeed;
pub use metrics::Metrics;
pub use registry::{HubConfig, RevocationHub, run_tailer};
pub use server::{GrpcConfig, GrpcServer, MAX_CONCURRENT_CALLS_PER_CONNECTION, serve};
pub use status::to_status;
