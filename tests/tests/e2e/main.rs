//! Mintgate end to end: a real server over mTLS, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent;
mod audit;
mod bad_input;
mod bench;
mod ca_expiry;
mod ca_import;
mod chain;
mod checkpoints;
mod crash;
mod deadline;
mod evidence;
mod evidence_ca;
mod evidence_grpc;
mod faults;
mod flood;
mod governance;
mod holds;
mod idempotency;
mod issuance;
mod jwt;
mod metrics;
mod mtls;
mod ocsp;
mod otlp;
mod pkcs11;
mod policy;
mod queue;
mod refusals;
mod renewal;
mod replicas;
mod revocation;
mod revocation_stream;
mod revoked_client;
mod roles;
mod rotation;
mod rotation_refusals;
mod rotation_tools;
mod sdk;
mod sdk_holds;
mod shedding;
mod tools;
mod workload_api;
