//! Holds (DESIGN §12): a request policy held waits PENDING_APPROVAL until enough distinct
//! approvers release it (→ APPROVED, and the requester's next call with its request id issues),
//! one denies it (→ DENIED) or its expiry passes (→ EXPIRED). This module has the types the
//! service, the store port ([`HoldStore`]) and the observers share.

use std::future::Future;
use std::time::Duration;

use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::model::{HoldVote, RequestRecord};
use crate::risk::{RiskFacts, RiskTier};
use crate::store::StoreError;

/// How long a hold waits for approvers unless configured otherwise.
pub const DEFAULT_HOLD_EXPIRY: Duration = Duration::from_secs(3600);
/// How long a held requester is told to wait before asking again, unless configured otherwise.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// The longest reason an approver may give.
pub const MAX_VOTE_REASON: usize = 500;
/// Most holds one ListPending answers.
pub const MAX_PENDING: u64 = 500;

/// The reason a request denied by an approver is recorded (and refused) with.
pub const HOLD_DENIED: &str = "HOLD_DENIED";
/// The reason of a hold nobody decided in time.
pub const HOLD_EXPIRED: &str = "HOLD_EXPIRED";

/// What [`crate::risk::assess`] needs the store to count, for one request.
#[derive(Debug, Clone, Copy)]
pub struct RiskQuery<'a> {
    /// The caller (a node for Enroll, the identity itself for Renew).
    pub caller: &'a str,
    /// The caller is a node enrolling (node facts are read only then).
    pub node: bool,
    pub spiffe_id: &'a str,
    pub now: OffsetDateTime,
    /// The node's distinct identities are counted up to this many (the threshold of
    /// [`crate::risk::Signal::ManyIdentities`]): past it the count changes nothing.
    pub identities_cap: u64,
    /// Also read whether the caller's request with this id is recorded (an issuance's replay
    /// check, in the same read).
    pub request_id: Option<&'a str>,
}

/// Which holds ListPending shows. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldFilter {
    /// The requester (the node that enrolls, or the workload that renews).
    pub requester: Option<String>,
    /// The SPIFFE ID asked for.
    pub spiffe_id: Option<String>,
    pub tier: Option<RiskTier>,
    /// Only holds whose expiry is at or before this (the sweeper's question).
    pub expired_at: Option<OffsetDateTime>,
}

/// An approver's decision to record on a held request, with its audit events.
#[derive(Debug, Clone)]
pub struct CastVote {
    /// The held request.
    pub pk: i64,
    pub vote: HoldVote,
    /// Approvals that release it.
    pub quorum: u8,
    /// Appended with the vote.
    pub audit: Vec<AuditEvent>,
    /// Appended too when this vote releases the request.
    pub release_audit: Vec<AuditEvent>,
}

/// What a vote did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteOutcome {
    /// Recorded; the request still waits for more approvals.
    Recorded,
    /// It completed the quorum: PENDING_APPROVAL → APPROVED.
    Released,
    /// A denial: PENDING_APPROVAL → DENIED.
    Denied,
}

/// The store side of risk and holds.
pub trait HoldStore: Send + Sync + 'static {
    /// What risk assessment counts about the caller and the identity (none of it counts the
    /// request being assessed, which is not recorded yet), and whether the identity is
    /// blocked: everything an issuance reads before it is decided, in one round trip.
    fn risk_facts(
        &self,
        query: RiskQuery<'_>,
    ) -> impl Future<Output = Result<RiskFacts, StoreError>> + Send;

    /// Forgets the risk counts no window reaches any more at `now`; returns how many rows went.
    fn prune_risk_counts(
        &self,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// PENDING_APPROVAL requests matching `filter`, oldest first, at most `limit`.
    fn pending_holds(
        &self,
        filter: &HoldFilter,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<RequestRecord>, StoreError>> + Send;

    /// One request by its primary key (a hold id).
    fn request_by_pk(
        &self,
        pk: i64,
    ) -> impl Future<Output = Result<Option<RequestRecord>, StoreError>> + Send;

    /// The votes cast on request `pk`, oldest first.
    fn hold_votes(&self, pk: i64)
    -> impl Future<Output = Result<Vec<HoldVote>, StoreError>> + Send;

    /// Records a vote on a PENDING_APPROVAL request in one transaction: the vote, and the move
    /// to APPROVED (the quorum of distinct approvals reached) or DENIED (reason
    /// [`HOLD_DENIED`]). `Conflict("request")` when it is not pending any more,
    /// `Conflict("vote")` when this operator voted on it already; nothing is written then.
    fn cast_vote(
        &self,
        vote: CastVote,
    ) -> impl Future<Output = Result<VoteOutcome, StoreError>> + Send;
}

/// Why a vote, or a retry of a held request, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("hold_id must be the id ListPending or WatchPending gave")]
    HoldIdInvalid,
    #[error("a denial needs a reason")]
    ReasonRequired,
    #[error("the reason must be at most {MAX_VOTE_REASON} bytes, without control characters")]
    ReasonInvalid,
    #[error("the requester's own identities cannot approve or deny its request")]
    SelfApproval,
    #[error("this operator has already voted on this hold")]
    AlreadyVoted,
    #[error("the request is not waiting for approval (it is {0})")]
    NotPending(&'static str),
    #[error("an approver denied the request ({reason}); send a new request with a new request id")]
    Denied { reason: String },
    #[error(
        "nobody released the request before its hold expired; send a new request with a new \
         request id"
    )]
    Expired,
}

impl HoldError {
    pub fn class(&self) -> crate::ErrorClass {
        use crate::ErrorClass::*;
        match self {
            Self::HoldIdInvalid | Self::ReasonRequired | Self::ReasonInvalid => InvalidArgument,
            Self::SelfApproval | Self::Denied { .. } => PermissionDenied,
            Self::AlreadyVoted => AlreadyExists,
            Self::NotPending(_) | Self::Expired => FailedPrecondition,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::HoldIdInvalid => "HOLD_ID_INVALID",
            Self::ReasonRequired => "REASON_REQUIRED",
            Self::ReasonInvalid => "REASON_INVALID",
            Self::SelfApproval => "SELF_APPROVAL",
            Self::AlreadyVoted => "ALREADY_VOTED",
            Self::NotPending(_) => "HOLD_CLOSED",
            Self::Denied { .. } => HOLD_DENIED,
            Self::Expired => HOLD_EXPIRED,
        }
    }
}
