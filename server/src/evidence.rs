//! Evidence for auditors (DESIGN §17): `mintgate evidence export` writes a directory an auditor
//! takes away ([`export`]), `mintgate evidence verify` re-checks it with no database and no
//! server ([`verify`]); `mintgate evidence access-review` lists the role bindings with their
//! holders' last use ([`access`]). This module owns the directory's layout and its manifest; the controls
//! mapping is in `controls`, the role bindings over the period in `bindings`, where the files go
//! (a directory or the `Admin/ExportEvidence` stream) in [`sink`].

pub mod access;
mod authorities;
mod bindings;
mod controls;
pub mod export;
mod server;
pub mod sink;
mod unapproved;
pub mod verify;

use serde::{Deserialize, Serialize};

pub use access::{AccessReview, access_review};
pub use export::{ExportError, ExportRequest, export, export_to_dir};
pub use server::ServerExporter;
pub use verify::{Failure, Trust, Verified, verify};

/// The manifest: every other file's SHA-256 and size, and what the export covers.
pub const MANIFEST: &str = "manifest.json";
/// The audit chain from seq 1, as `audit export` writes it (JSON lines with prev_hash/hash).
pub const EVENTS: &str = "audit-events.jsonl";
/// The signed checkpoints up to the exported head (JSON lines).
pub const CHECKPOINTS: &str = "checkpoints.jsonl";
/// The audit public keys published in the database ("PUBLIC KEY" PEM).
pub const AUDIT_KEYS: &str = "audit-keys.pem";
/// The policy versions, each in `policy/<version>/`, and their change history.
pub const POLICY_DIR: &str = "policy";
pub const ACTIVATIONS: &str = "policy/activations.jsonl";
pub const PROPOSALS: &str = "policy/proposals.jsonl";
/// The role bindings in force at any time in the period, each span with its grant and end.
pub const ROLE_BINDINGS: &str = "role-bindings.json";
/// The CA certificate(s) (PEM): the server's own over `Admin/ExportEvidence`, `--ca-cert` from
/// the command line.
pub const CA_CERT: &str = "ca.pem";
/// The current CRL (DER) as `/crl` serves it, signed by the CA in `ca.pem`: the server's own
/// over `Admin/ExportEvidence`, `--crl` from the command line.
pub const CRL: &str = "crl.der";
pub const CONTROLS: &str = "controls.md";
/// Every CA the registry knows, with its certificates and its state history.
pub const AUTHORITIES: &str = "authorities.json";

/// The manifest's `format`.
pub const FORMAT: &str = "mintgate-evidence-v1";

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The `mintgate` version that exported.
    pub tool_version: String,
    /// RFC 3339, the exporting machine's clock.
    pub exported_at: String,
    pub period: Period,
    /// The events in the events file: from seq 1 (so the chain verifies from its start) to the
    /// period's last event, or on to the first checkpoint that pins it. None if there are none.
    pub exported: Option<SeqRange>,
    /// The events whose time is in the period. None if there are none.
    pub in_period: Option<SeqRange>,
    /// Every file but the manifest, by path (`/`-separated, relative to the directory).
    pub files: Vec<FileEntry>,
}

/// The period asked for, RFC 3339, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub since: String,
    pub until: String,
}

/// Audit sequence numbers `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub first: i64,
    pub last: i64,
}

impl std::fmt::Display for SeqRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.first, self.last)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    /// Lower-case hex.
    pub sha256: String,
    pub size: u64,
}

impl FileEntry {
    pub fn of(path: &str, bytes: &[u8]) -> Self {
        Self {
            path: path.to_owned(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// One line of `checkpoints.jsonl`: a signed checkpoint, hashes and signature in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointLine {
    pub seq: i64,
    pub hash: String,
    /// Unix seconds.
    pub at: i64,
    pub key_id: String,
    pub signature: String,
}

/// One CA in `authorities.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityLine {
    /// Hex subject key identifier (what the certificates it signs name as their issuer).
    pub key_id: String,
    pub subject: String,
    /// PREPARED, ACTIVE, RETIRING, RETIRED or REVOKED at export time.
    pub state: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// The CA certificate, then the certificates above it up to the root, PEM.
    pub chain_pem: String,
    /// Each state it entered, oldest first.
    pub history: Vec<Transition>,
}

/// A CA entering a state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: String,
    /// RFC 3339.
    pub at: String,
    /// The applied proposal that made it so; none for the CA a server first started with.
    pub proposal: Option<String>,
    pub approved_by: Option<String>,
    /// The seq of that proposal's `proposal.approved` event in the audit chain, if exported.
    pub approval_seq: Option<i64>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}
