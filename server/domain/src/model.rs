//! Who is calling, and the records the store keeps about requests, certificates and join tokens.

use std::fmt;

use time::OffsetDateTime;

use crate::lifecycle::{CertState, RequestState};
use crate::policy::PolicyDecision;
use crate::risk::RiskAssessment;
use crate::{Serial, SpiffeId};

/// The kind of caller, decided by the CA that issued its client certificate (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerKind {
    /// Holds a certificate Mintgate issued.
    Workload,
    /// Holds a certificate from the bootstrap (node) CA.
    Node,
    /// Holds a certificate from the operator CA.
    Operator,
}

impl CallerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Node => "node",
            Self::Operator => "operator",
        }
    }
}

/// An authenticated peer: the SPIFFE ID and serial of its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: SpiffeId,
    pub kind: CallerKind,
    pub serial: Serial,
    /// Its certificate's notBefore (how old a node's bootstrap credential is).
    pub not_before: OffsetDateTime,
}

/// Which RPC created a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Enroll,
    Renew,
    JoinToken,
    Revoke,
    RevokeIdentity,
    Unblock,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enroll => "ENROLL",
            Self::Renew => "RENEW",
            Self::JoinToken => "JOIN_TOKEN",
            Self::Revoke => "REVOKE",
            Self::RevokeIdentity => "REVOKE_IDENTITY",
            Self::Unblock => "UNBLOCK",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Enroll,
            Self::Renew,
            Self::JoinToken,
            Self::Revoke,
            Self::RevokeIdentity,
            Self::Unblock,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A recorded request, keyed by (caller, request_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub pk: i64,
    pub caller: String,
    pub request_id: String,
    pub kind: RequestKind,
    /// Hex SHA-256 of the canonical payload; a retry must match it.
    pub payload_hash: String,
    pub state: RequestState,
    /// Why a DENIED or REJECTED request was refused (its error reason code).
    pub reason: Option<String>,
    /// The SPIFFE ID asked for; empty when the CSR could not be read.
    pub spiffe_id: String,
    /// The serial reserved for (or given to) the certificate.
    pub serial: Option<Serial>,
    /// The join token created by a JOIN_TOKEN request.
    pub token_id: Option<String>,
    pub token_expires_at: Option<OffsetDateTime>,
    /// The policy decision that approved or denied it; none when it never reached policy.
    pub decision: Option<PolicyDecision>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The server instance that last recorded or moved the request: while the request is
    /// APPROVED, the holder of its approval lease. `None` for rows written by a server that did
    /// not record holders.
    pub lease_holder: Option<InstanceId>,
    /// The risk assessment of an Enroll or Renew (none for rows from before risk existed, and
    /// for requests refused before it was assessed).
    pub risk: Option<RiskAssessment>,
    /// The terms of its hold, if policy held it: kept after approvers release it, so a retry of
    /// a released request is never held again.
    pub hold: Option<HoldTerms>,
}

/// Why a request was held, for how many approvers, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldTerms {
    pub reason: String,
    /// Distinct approvers needed to release it.
    pub quorum: u8,
    /// Undecided by then, it becomes EXPIRED.
    pub expires_at: OffsetDateTime,
}

/// An approver's decision on a held request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldVote {
    pub operator: String,
    /// Approve (else deny).
    pub approve: bool,
    pub reason: String,
    pub at: OffsetDateTime,
}

/// One run of a server process, as the store knows it: a server that restarts is a new instance.
/// Assigned by the store when it opens; the store alone can tell whether an instance still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub i64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A new request row, written with its decision in one transaction.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub caller: String,
    pub request_id: String,
    pub kind: RequestKind,
    pub payload_hash: String,
    pub state: RequestState,
    pub reason: Option<String>,
    pub spiffe_id: String,
    pub serial: Option<Serial>,
    pub token_id: Option<String>,
    pub token_expires_at: Option<OffsetDateTime>,
    /// The policy decision that approved or denied it, if policy was asked.
    pub decision: Option<PolicyDecision>,
    pub now: OffsetDateTime,
    /// Its risk assessment (Enroll and Renew that reached it).
    pub risk: Option<RiskAssessment>,
    /// The terms of its hold, when it is recorded PENDING_APPROVAL.
    pub hold: Option<HoldTerms>,
}

/// An issued certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub serial: Serial,
    pub spiffe_id: String,
    pub state: CertState,
    pub key_type: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub der: Vec<u8>,
    pub chain_pem: String,
    pub request_pk: i64,
    /// Hex SKI of the CA that signed it (none only for a certificate stored before the CA
    /// registry existed and never claimed by a CA since).
    pub issuer_key_id: Option<String>,
}

/// A join token as stored: only its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub token_id: String,
    pub token_hash: String,
    pub spiffe_id: String,
    pub created_by: String,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

/// Why a certificate was revoked: the RFC 5280 CRLReason values Mintgate accepts
/// (certificateHold is not one: a revocation is final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    pub const ALL: [Self; 7] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    /// The UPPER_SNAKE name stored and shown in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "UNSPECIFIED",
            Self::KeyCompromise => "KEY_COMPROMISE",
            Self::CaCompromise => "CA_COMPROMISE",
            Self::AffiliationChanged => "AFFILIATION_CHANGED",
            Self::Superseded => "SUPERSEDED",
            Self::CessationOfOperation => "CESSATION_OF_OPERATION",
            Self::PrivilegeWithdrawn => "PRIVILEGE_WITHDRAWN",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The CRLReason code (RFC 5280 §5.3.1).
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::PrivilegeWithdrawn => 9,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| i32::from(r.code()) == code)
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the revocation log. `seq` is assigned at commit, strictly increasing by one in
/// commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    pub seq: i64,
    pub serial: Serial,
    pub spiffe_id: String,
    pub reason: RevocationReason,
    pub revoked_at: OffsetDateTime,
    /// The certificate's notAfter: the entry leaves the live set after it.
    pub not_after: OffsetDateTime,
    /// Hex SKI of the issuing CA.
    pub issuer_key_id: String,
    /// SPIFFE ID of whoever revoked it.
    pub revoked_by: String,
    /// The entry revokes the whole CA `issuer_key_id` (RevokeIssuer): `serial` is the CA
    /// certificate's own, `not_after` its notAfter, `spiffe_id` empty.
    pub issuer: bool,
}

/// What CheckStatus needs of a stored certificate: its state, its notAfter and, if it is
/// revoked and the entry is not pruned yet, its log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStatus {
    pub serial: Serial,
    pub state: crate::lifecycle::CertState,
    pub not_after: OffsetDateTime,
    pub revocation: Option<RevocationRecord>,
}

/// A block on an identity: no certificate is issued for it until it is lifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    pub spiffe_id: String,
    pub reason: RevocationReason,
    pub blocked_by: String,
    pub blocked_at: OffsetDateTime,
}

/// The identity a batch of revocations covers completely: when it commits, no certificate of
/// `spiffe_id` is live any more (or the batch conflicts and nothing is written).
#[derive(Debug, Clone)]
pub struct IdentityScope {
    pub spiffe_id: String,
    /// Also block the identity, in the same transaction.
    pub block: Option<RevocationReason>,
}

/// A revocation to record; the store assigns its sequence number.
#[derive(Debug, Clone)]
pub struct NewRevocation {
    pub serial: Serial,
    /// The state the certificate must still be in (the update is conditional on it).
    pub from: CertState,
    pub reason: RevocationReason,
    pub revoked_by: String,
    pub issuer_key_id: String,
    pub now: OffsetDateTime,
}
