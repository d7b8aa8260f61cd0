//! Request and certificate lifecycles (DESIGN §5): the states persisted in the database, the
//! events that move them and the two pure, total transition functions.
//!
//! Request: `RECEIVED → VERIFIED → (APPROVED | PENDING_APPROVAL | DENIED | REJECTED)`;
//! `RECEIVED → REJECTED`; `PENDING_APPROVAL → APPROVED | DENIED | EXPIRED`;
//! `APPROVED → ISSUED | FAILED`; `FAILED → APPROVED` (retry with the same request id).
//!
//! Certificate: `ACTIVE → SUPERSEDED → EXPIRED`, `ACTIVE → EXPIRED`, `ACTIVE | SUPERSEDED →
//! REVOKED`. `REVOKED` and `EXPIRED` are terminal.
//!
//! Every (state, event) pair is answered: either the next state or a [`TransitionError`] with a
//! stable reason. Matches are exhaustive with no catch-all arm, so adding a state or an event
//! does not compile until every pair is decided again. Applying a transition (the conditional
//! update and its audit event) is the store's job; this module does no I/O and reads no clock.

use std::fmt;

use time::OffsetDateTime;

/// Where an issuance request is in its lifecycle. Stored as [`RequestState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestState {
    Received,
    Verified,
    Approved,
    PendingApproval,
    Denied,
    Rejected,
    Issued,
    Failed,
    Expired,
}

impl RequestState {
    pub const ALL: [Self; 9] = [
        Self::Received,
        Self::Verified,
        Self::Approved,
        Self::PendingApproval,
        Self::Denied,
        Self::Rejected,
        Self::Issued,
        Self::Failed,
        Self::Expired,
    ];

    /// The UPPER_SNAKE name stored in the database and shown in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "RECEIVED",
            Self::Verified => "VERIFIED",
            Self::Approved => "APPROVED",
            Self::PendingApproval => "PENDING_APPROVAL",
            Self::Denied => "DENIED",
            Self::Rejected => "REJECTED",
            Self::Issued => "ISSUED",
            Self::Failed => "FAILED",
            Self::Expired => "EXPIRED",
        }
    }

    /// The inverse of [`RequestState::as_str`]; exact, case-sensitive.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// True when no event moves the request any more.
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Denied | Self::Rejected | Self::Issued | Self::Expired => true,
            Self::Received
            | Self::Verified
            | Self::Approved
            | Self::PendingApproval
            | Self::Failed => false,
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an issued certificate is in its lifecycle. Stored as [`CertState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertState {
    Active,
    /// Renewed: a newer certificate for the same identity exists; this one stays valid until it
    /// expires or is revoked.
    Superseded,
    Expired,
    Revoked,
}

impl CertState {
    pub const ALL: [Self; 4] = [Self::Active, Self::Superseded, Self::Expired, Self::Revoked];

    /// The UPPER_SNAKE name stored in the database and shown in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Superseded => "SUPERSEDED",
            Self::Expired => "EXPIRED",
            Self::Revoked => "REVOKED",
        }
    }

    /// The inverse of [`CertState::as_str`]; exact, case-sensitive.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// True when no event moves the certificate any more.
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Expired | Self::Revoked => true,
            Self::Active | Self::Superseded => false,
        }
    }
}

impl fmt::Display for CertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to an issuance request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestEvent {
    /// The caller's identity and the CSR checked out.
    Verify,
    /// Policy (or an operator) approved issuance.
    Approve,
    /// Policy wants an operator to approve first.
    HoldForApproval,
    /// Policy (or an operator) refused issuance.
    Deny,
    /// The request itself is invalid (bad CSR, failed attestation).
    Reject,
    /// The certificate was signed: `APPROVED → ISSUED`.
    Sign,
    /// Signing or storing failed; retryable.
    Fail,
    /// Try a failed signing again: `FAILED → APPROVED`.
    Retry,
    /// Nobody approved in time: `PENDING_APPROVAL → EXPIRED`.
    ApprovalTimeout,
}

impl RequestEvent {
    pub const ALL: [Self; 9] = [
        Self::Verify,
        Self::Approve,
        Self::HoldForApproval,
        Self::Deny,
        Self::Reject,
        Self::Sign,
        Self::Fail,
        Self::Retry,
        Self::ApprovalTimeout,
    ];

    /// A lower-case verb for messages and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Approve => "approve",
            Self::HoldForApproval => "hold for approval",
            Self::Deny => "deny",
            Self::Reject => "reject",
            Self::Sign => "sign",
            Self::Fail => "fail",
            Self::Retry => "retry",
            Self::ApprovalTimeout => "time out",
        }
    }
}

impl fmt::Display for RequestEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertEvent {
    /// A renewal issued a successor.
    Supersede,
    /// `notAfter` has passed.
    Expire,
    /// An operator (or the holder) revoked it.
    Revoke,
}

impl CertEvent {
    pub const ALL: [Self; 3] = [Self::Supersede, Self::Expire, Self::Revoke];

    /// A lower-case verb for messages and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Supersede => "renew",
            Self::Expire => "expire",
            Self::Revoke => "revoke",
        }
    }
}

impl fmt::Display for CertEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition was refused, in the words a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The event does not apply to the current state.
    InvalidTransition,
    /// Renewing a revoked certificate.
    CertificateRevoked,
    /// Renewing a certificate that was already renewed.
    CertificateSuperseded,
    /// Renewing or revoking a certificate that has expired (by state or by `notAfter`).
    CertificateExpired,
    /// Revoking a certificate that is already revoked.
    AlreadyRevoked,
}

impl Refusal {
    /// The stable UPPER_SNAKE reason code sent to clients.
    pub fn reason(self) -> &'static str {
        match self {
            Self::InvalidTransition => "INVALID_STATE_TRANSITION",
            Self::CertificateRevoked => "CERTIFICATE_REVOKED",
            Self::CertificateSuperseded => "CERTIFICATE_SUPERSEDED",
            Self::CertificateExpired => "CERTIFICATE_EXPIRED",
            Self::AlreadyRevoked => "ALREADY_REVOKED",
        }
    }
}

/// Why a transition was refused: which entity, from which state, on which event, and the
/// [`Refusal`] that gives the reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct TransitionError {
    /// `"request"` or `"certificate"`.
    pub entity: &'static str,
    /// The state the entity was in, as stored (`"REVOKED"`).
    pub from: &'static str,
    /// The refused event, as a verb (`"renew"`).
    pub event: &'static str,
    pub refusal: Refusal,
}

impl TransitionError {
    /// The stable reason code sent in `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        self.refusal.reason()
    }

    fn request(from: RequestState, event: RequestEvent) -> Self {
        Self {
            entity: "request",
            from: from.as_str(),
            event: event.as_str(),
            refusal: Refusal::InvalidTransition,
        }
    }

    fn cert(from: CertState, event: CertEvent, refusal: Refusal) -> Self {
        Self {
            entity: "certificate",
            from: from.as_str(),
            event: event.as_str(),
            refusal,
        }
    }
}

/// Decides the next request state. Pure and total: every pair has an answer.
pub fn transition_request(
    state: RequestState,
    event: RequestEvent,
) -> Result<RequestState, TransitionError> {
    use RequestEvent as E;
    use RequestState as S;

    let refuse = || Err(TransitionError::request(state, event));
    match state {
        S::Received => match event {
            E::Verify => Ok(S::Verified),
            E::Reject => Ok(S::Rejected),
            E::Approve
            | E::HoldForApproval
            | E::Deny
            | E::Sign
            | E::Fail
            | E::Retry
            | E::ApprovalTimeout => refuse(),
        },
        S::Verified => match event {
            E::Approve => Ok(S::Approved),
            E::HoldForApproval => Ok(S::PendingApproval),
            E::Deny => Ok(S::Denied),
            E::Reject => Ok(S::Rejected),
            E::Verify | E::Sign | E::Fail | E::Retry | E::ApprovalTimeout => refuse(),
        },
        S::PendingApproval => match event {
            E::Approve => Ok(S::Approved),
            E::Deny => Ok(S::Denied),
            E::ApprovalTimeout => Ok(S::Expired),
            E::Verify | E::HoldForApproval | E::Reject | E::Sign | E::Fail | E::Retry => refuse(),
        },
        S::Approved => match event {
            E::Sign => Ok(S::Issued),
            E::Fail => Ok(S::Failed),
            E::Verify
            | E::Approve
            | E::HoldForApproval
            | E::Deny
            | E::Reject
            | E::Retry
            | E::ApprovalTimeout => refuse(),
        },
        S::Failed => match event {
            E::Retry => Ok(S::Approved),
            E::Verify
            | E::Approve
            | E::HoldForApproval
            | E::Deny
            | E::Reject
            | E::Sign
            | E::Fail
            | E::ApprovalTimeout => refuse(),
        },
        S::Denied | S::Rejected | S::Issued | S::Expired => refuse(),
    }
}

/// Decides the next certificate state. Pure and total: every pair has an answer.
///
/// `now` comes from the injected clock. A certificate is past its lifetime when
/// `now >= not_after`: it can then be marked expired, but no longer renewed.
pub fn transition_cert(
    state: CertState,
    event: CertEvent,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<CertState, TransitionError> {
    use CertEvent as E;
    use CertState as S;

    let past_not_after = now >= not_after;
    let refuse = |refusal| Err(TransitionError::cert(state, event, refusal));
    match (state, event) {
        (S::Active, E::Supersede) if past_not_after => refuse(Refusal::CertificateExpired),
        (S::Active, E::Supersede) => Ok(S::Superseded),
        (S::Superseded, E::Supersede) => refuse(Refusal::CertificateSuperseded),
        (S::Expired, E::Supersede) => refuse(Refusal::CertificateExpired),
        (S::Revoked, E::Supersede) => refuse(Refusal::CertificateRevoked),

        (S::Active | S::Superseded, E::Expire) if past_not_after => Ok(S::Expired),
        (S::Active | S::Superseded, E::Expire) => refuse(Refusal::InvalidTransition),
        (S::Expired | S::Revoked, E::Expire) => refuse(Refusal::InvalidTransition),

        // An expired certificate needs no revocation: it fails everywhere already.
        (S::Active | S::Superseded, E::Revoke) if past_not_after => {
            refuse(Refusal::CertificateExpired)
        }
        (S::Active | S::Superseded, E::Revoke) => Ok(S::Revoked),
        (S::Revoked, E::Revoke) => refuse(Refusal::AlreadyRevoked),
        (S::Expired, E::Revoke) => refuse(Refusal::CertificateExpired),
    }
}

fn describe(e: &TransitionError) -> String {
    match e.refusal {
        Refusal::InvalidTransition => {
            format!("cannot {} a {} in state {}", e.event, e.entity, e.from)
        }
        Refusal::CertificateRevoked => "the certificate is revoked and cannot be renewed".into(),
        Refusal::CertificateSuperseded => {
            "the certificate was already renewed; renew its successor instead".into()
        }
        Refusal::CertificateExpired => "the certificate has expired and cannot be renewed".into(),
        Refusal::AlreadyRevoked => "the certificate is already revoked".into(),
    }
}

#[cfg(test)]
mod tests;
