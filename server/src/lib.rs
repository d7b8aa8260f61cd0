//! The Mintgate application: configuration, wiring of the domain to its adapters, and the
//! listeners. The `mintgate` binary (`main.rs`) only parses arguments and calls in here.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod app;
pub mod audit;
mod authorities;
pub mod ca_admin;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod evidence;
mod fd_limit;
mod http;
pub mod jwks;
mod metrics;
mod ocsp;
mod replication;
pub mod telemetry;

pub use app::{Application, BuildError};
pub use config::{ConfigError, Settings};
