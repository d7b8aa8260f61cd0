//! Mintgate's Rust SDK.
//!
//! - [`Client`]: typed calls over one mutual-TLS channel; every mutating call carries a request
//!   id (yours, or a fresh one), and every failure is an [`Error`] whose [`ErrorKind`] says what
//!   to do and whether retrying can help. Enroll and Renew are paced: at most
//!   [`ISSUANCES_ON_THE_WIRE`] at once, and none while the server has asked the client to wait.
//! - [`CredentialManager`]: a certificate and in-process key kept fresh inside a jittered
//!   renewal window, with backoff and a [`CircuitBreaker`]; new credentials on a watch channel.
//!   A request held for approvers is an [`Issuance::Held`], not an error: the manager waits
//!   through it (same request id and key) and reports it as [`CredentialState::Held`].
//! - [`RevocationWatcher`]: keeps a local [`RevocationSet`] in step with the server's
//!   revocation feed (single certificates, and whole CAs revoked by `RevokeIssuer`), persisted
//!   with its cursor, resumed with jittered [`Backoff`].
//! - [`TrustBundleWatcher`]: follows the trust bundle (CAs prepared, activated, retired,
//!   revoked), on a watch channel and, through [`BundleFile`], in a file replaced atomically.
//! - [`DurableQueue`]: operations that must not be lost (a revocation asked for while Mintgate
//!   is unreachable) kept on disk and replayed in order, idempotently.
//! - [`agent`]: the sidecar behind the `mintgate-agent` binary.
//! - [`RevocationAwareClientVerifier`] / [`RevocationAwareServerVerifier`]: rustls verifiers
//!   that refuse revoked peers (by serial or by revoked issuing CA) in your own mTLS services,
//!   fail-open or fail-closed when the feed is stale.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod agent;
mod backoff;
mod bundle;
mod cert_ids;
mod client;
mod credentials;
mod error;
mod fs;
mod hold;
mod pacing;
mod queue;
#[cfg(test)]
mod test_pki;
mod transport;
mod verify;
mod watcher;
pub mod workload_api;

pub use backoff::Backoff;
pub use bundle::{BundleFile, TrustBundleConfig, TrustBundleWatcher};
pub use client::{Client, TlsMaterial, new_request_id};
pub use credentials::{
    Attestation, CircuitBreaker, Clock, Credential, CredentialManager, Endpoint, RenewalPolicy,
    SystemClock, key_and_csr, renewal_time,
};
pub use error::{Error, ErrorKind};
pub use fs::atomic_write;
pub use hold::{CredentialState, HOLD_DENIED, HOLD_EXPIRED, Held, Issuance};
pub use mintgate_proto::v1;
pub use pacing::ISSUANCES_ON_THE_WIRE;
pub use queue::{
    DurableQueue, OpAction, OpAnswer, QueueError, QueuedOp, ReplayOutcome, ReplayReport,
    ReplayStop, ReplayedOp,
};
pub use verify::{
    RevocationAwareClientVerifier, RevocationAwareServerVerifier, RevocationCheck, WhenStale,
};
pub use watcher::{
    Connect, RevocationSet, RevocationWatcher, WatcherConfig, normalize_key_id, normalize_serial,
};

/// A protobuf Duration of `secs` seconds.
pub fn seconds(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}
