//! The storage port. Every method that changes state is one transaction that applies a
//! conditional update and appends its audit events, or does nothing at all.

use std::future::Future;

use time::OffsetDateTime;

use crate::Serial;
use crate::audit::{AuditEvent, ChainedEvent};
use crate::authority::AuthorityStore;
use crate::error::Cause;
use crate::governance::GovernanceStore;
use crate::hold::HoldStore;
use crate::lifecycle::RequestState;
use crate::model::{
    BlockRecord, CertificateRecord, IdentityScope, InstanceId, JoinTokenRecord, NewRequest,
    NewRevocation, RequestRecord, RevocationRecord, StoredStatus,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the transaction failed; retrying may help.
    #[error("database unavailable")]
    Unavailable(#[source] Cause),
    /// A conditional update found the row in another state: someone else moved it first.
    #[error("{0} was changed concurrently")]
    Conflict(&'static str),
    /// Stored data does not decode; a bug or tampering.
    #[error("stored data is corrupt")]
    Corrupt(#[source] Cause),
}

impl From<StoreError> for crate::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(c) => Self::Unavailable(c),
            StoreError::Conflict(_) => Self::InProgress,
            StoreError::Corrupt(c) => Self::Internal(c),
        }
    }
}

/// The outcome of inserting a request keyed by (caller, request_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New(i64),
    /// Another request with the same key was there first.
    Duplicate(Box<RequestRecord>),
}

/// A join token to mark used in the same transaction as the request it admits.
#[derive(Debug, Clone)]
pub struct TokenUse {
    pub token_id: String,
    pub used_by: String,
    pub now: OffsetDateTime,
}

/// A certificate to record when a request moves APPROVED → ISSUED.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub serial: Serial,
    pub spiffe_id: String,
    pub key_type: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub der: Vec<u8>,
    pub chain_pem: String,
    pub issued_at: OffsetDateTime,
    /// Hex SKI of the CA that signed it.
    pub issuer_key_id: String,
}

/// A new join token (its hash) to store with the request that created it.
#[derive(Debug, Clone)]
pub struct NewJoinToken {
    pub token_id: String,
    pub token_hash: String,
    pub spiffe_id: String,
    pub created_by: String,
    pub expires_at: OffsetDateTime,
}

/// Persistent storage for requests, certificates, join tokens and the audit trail, and (through
/// [`GovernanceStore`]) the policy history, proposals and role bindings.
pub trait CertificateStore:
    GovernanceStore + HoldStore + AuthorityStore + Send + Sync + 'static
{
    fn find_request(
        &self,
        caller: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<RequestRecord>, StoreError>> + Send;

    /// Inserts a request with its decision, with this store's instance as its lease holder. With
    /// `token`, the join token must be unused and unexpired, or nothing is written and
    /// `Conflict("join token")` is returned.
    fn insert_request(
        &self,
        request: NewRequest,
        token: Option<TokenUse>,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Inserted, StoreError>> + Send;

    /// APPROVED → ISSUED for request `pk` with `serial`, records the certificate and, for a
    /// renewal, moves `supersedes` ACTIVE → SUPERSEDED. `Conflict` if any condition fails.
    fn complete_issuance(
        &self,
        pk: i64,
        certificate: NewCertificate,
        supersedes: Option<Serial>,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves request `pk` from `from` (with serial `old_serial`) to `to`, optionally reserving a
    /// new serial, with this store's instance as its lease holder. Returns false if the request
    /// was not in that state.
    fn move_request(
        &self,
        pk: i64,
        from: (RequestState, Option<Serial>),
        to: (RequestState, Option<Serial>),
        now: OffsetDateTime,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// This store's server instance: the lease holder of what it records.
    fn instance_id(&self) -> InstanceId;

    /// Whether the server instance `holder` still runs, so that the approval leases it holds
    /// protect its requests. This store's own instance always does. An instance that is gone
    /// never comes back (a restarted server is a new instance), so its APPROVED requests may be
    /// taken over at once.
    fn lease_holder_alive(
        &self,
        holder: InstanceId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn certificate(
        &self,
        serial: &Serial,
    ) -> impl Future<Output = Result<Option<CertificateRecord>, StoreError>> + Send;

    fn join_token(
        &self,
        token_id: &str,
    ) -> impl Future<Output = Result<Option<JoinTokenRecord>, StoreError>> + Send;

    /// Inserts a JOIN_TOKEN request together with the token it creates.
    fn insert_join_token(
        &self,
        request: NewRequest,
        token: NewJoinToken,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Inserted, StoreError>> + Send;

    /// Appends events on their own (e.g. a denial), in one transaction.
    fn append_audit(
        &self,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The audit trail in seq order, as stored.
    fn audit_chain(&self) -> impl Future<Output = Result<Vec<ChainedEvent>, StoreError>> + Send;

    /// In one transaction: each certificate moves `from` → REVOKED (conditionally; `Conflict`
    /// if one is no longer in that state), each log entry is appended with the next sequence
    /// number, and the REVOKE request and its audit events are recorded. With `scope`, no
    /// certificate of that identity may be left live (`Conflict` otherwise) and the identity is
    /// blocked if asked. A request id seen before returns `Duplicate` and writes nothing.
    fn revoke(
        &self,
        request: NewRequest,
        revocations: Vec<NewRevocation>,
        scope: Option<IdentityScope>,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Revoked, StoreError>> + Send;

    /// The log entries a REVOKE request made (for answering its retry), in sequence order.
    fn revocations_of_request(
        &self,
        request_pk: i64,
    ) -> impl Future<Output = Result<Vec<RevocationRecord>, StoreError>> + Send;

    /// Certificates of `spiffe_id` that are ACTIVE or SUPERSEDED and unexpired at `now`.
    fn live_certificates_of(
        &self,
        spiffe_id: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<CertificateRecord>, StoreError>> + Send;

    fn identity_block(
        &self,
        spiffe_id: &str,
    ) -> impl Future<Output = Result<Option<BlockRecord>, StoreError>> + Send;

    /// The status of each of `serials` that is stored (in no particular order; unknown ones
    /// are left out), in a fixed number of queries however many are asked for.
    fn certificate_statuses(
        &self,
        serials: &[Serial],
    ) -> impl Future<Output = Result<Vec<StoredStatus>, StoreError>> + Send;

    /// Up to `limit` log entries after `cursor`, in sequence order.
    fn revocations_after(
        &self,
        cursor: i64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<RevocationRecord>, StoreError>> + Send;

    /// The log's bounds: everything at or below `pruned_through` may have been pruned; `head`
    /// is the newest sequence number ever assigned.
    fn revocation_bounds(&self) -> impl Future<Output = Result<LogBounds, StoreError>> + Send;

    /// Every entry whose certificate is unexpired at `now` (the live set), in sequence order.
    fn live_revocations(
        &self,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<RevocationRecord>, StoreError>> + Send;

    /// Deletes entries whose certificate expired before `before` and raises the floor over them;
    /// returns how many were pruned.
    fn prune_revocations(
        &self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The outcome of recording a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    New(Vec<RevocationRecord>),
    /// The request id was used before.
    Duplicate(Box<RequestRecord>),
}

/// See [`CertificateStore::revocation_bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    pub pruned_through: i64,
    pub head: i64,
}
