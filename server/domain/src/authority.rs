//! The CA lifecycle (DESIGN §14): every issuing CA with its state. A CA is PREPARED (in the
//! trust bundle, signing nothing), ACTIVE (signing every new certificate; exactly one), RETIRING
//! (signing nothing new, in the bundle until its last certificate has expired), then RETIRED;
//! or REVOKED on the compromise path. Each step is a two-person proposal
//! ([`crate::governance::Change::Ca`], [`crate::governance::Change::RevokeIssuer`]).

use std::future::Future;

use time::OffsetDateTime;

use crate::store::StoreError;

/// How long a prepared CA is in the trust bundle before it may be activated, unless configured:
/// long enough for every relying party to have fetched the bundle that holds it.
pub const DEFAULT_PUBLISH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Where a CA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaState {
    Prepared,
    Active,
    Retiring,
    Retired,
    Revoked,
}

impl CaState {
    pub const ALL: [Self; 5] = [
        Self::Prepared,
        Self::Active,
        Self::Retiring,
        Self::Retired,
        Self::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "PREPARED",
            Self::Active => "ACTIVE",
            Self::Retiring => "RETIRING",
            Self::Retired => "RETIRED",
            Self::Revoked => "REVOKED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether relying parties trust it: it is in the trust bundle.
    pub fn in_bundle(self) -> bool {
        matches!(self, Self::Prepared | Self::Active | Self::Retiring)
    }
}

/// One CA as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// Hex subject key identifier.
    pub key_id: String,
    pub state: CaState,
    pub subject: String,
    /// The CA certificate, then the certificates above it up to the root, PEM.
    pub chain_pem: String,
    /// Where its key is: a file path or a PKCS#11 key label, per the configured backend.
    pub key_ref: String,
    /// The CA certificate's own serial, hex.
    pub serial: String,
    pub not_after: OffsetDateTime,
    pub prepared_at: OffsetDateTime,
    pub activated_at: Option<OffsetDateTime>,
    pub retiring_at: Option<OffsetDateTime>,
    pub retired_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// The proposal that prepared it (none for the CA a server started with).
    pub proposal_id: Option<String>,
}

/// A rotation step (Admin/ProposeCa).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaAction {
    Prepare,
    Activate,
    Retire,
}

impl CaAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepare => "PREPARE",
            Self::Activate => "ACTIVATE",
            Self::Retire => "RETIRE",
        }
    }

    /// The audit action of the step once applied.
    pub fn audit_action(self) -> &'static str {
        match self {
            Self::Prepare => "ca.prepared",
            Self::Activate => "ca.activated",
            Self::Retire => "ca.retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Prepare, Self::Activate, Self::Retire]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// What a PREPARE proposal carries: the CA as it will be stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreparedCa {
    pub subject: String,
    pub chain_pem: String,
    pub key_ref: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Where the CAs are kept.
pub trait AuthorityStore: Send + Sync + 'static {
    /// Every CA, newest first.
    fn authorities(&self) -> impl Future<Output = Result<Vec<CaRecord>, StoreError>> + Send;

    /// Records the CA a server starts with as ACTIVE when no CA is recorded yet, and marks
    /// every certificate stored without an issuer as its. Returns whether it was recorded.
    fn register_first_authority(
        &self,
        ca: CaRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether a certificate `key_id` signed is still unexpired and not revoked at `now`.
    fn issued_unexpired(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
