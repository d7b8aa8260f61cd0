//! Mintgate's domain: who may ask for which certificate, what that certificate looks like, and
//! the lifecycle it goes through.
//!
//! This crate does no I/O. It must not depend on tokio, tonic, sea-orm, protobuf or sockets: time
//! comes from the [`ports::Clock`] port, storage and signing from the other ports.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod audit;
pub mod authority;
pub mod csr;
pub mod error;
pub mod governance;
pub mod hold;
pub mod jwt;
pub mod key_ids;
pub mod lifecycle;
pub mod lifetime;
pub mod model;
pub mod policy;
pub mod ports;
pub mod risk;
pub mod service;
pub mod spiffe;
pub mod store;
pub mod types;

pub use error::{Error, ErrorClass};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use types::{InputError, KeyType, RequestId, Serial, Ttl};
