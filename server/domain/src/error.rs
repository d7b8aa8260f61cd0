//! The closed set of error classes at the domain edge, and the domain error that carries a
//! stable reason code. The api crate maps [`ErrorClass`] to a gRPC code in exactly one place.

/// What kind of fault an error is. User faults are the caller's to fix; system faults are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    InvalidArgument,
    PermissionDenied,
    FailedPrecondition,
    AlreadyExists,
    NotFound,
    ResourceExhausted,
    OutOfRange,
    /// A system fault that may go away if retried.
    Unavailable,
    /// A system fault that is a bug.
    Internal,
}

impl ErrorClass {
    pub fn is_user_fault(self) -> bool {
        !matches!(self, Self::Unavailable | Self::Internal)
    }
}

/// A boxed cause from an adapter (database, signer), kept for logs and never sent to clients.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every way a domain operation can fail. [`Error::class`] and [`Error::reason`] are what
/// clients see; the `Display` text is a safe, user-facing message; causes are for logs only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Csr(#[from] crate::csr::CsrError),
    #[error(transparent)]
    SpiffeId(#[from] crate::spiffe::SpiffeIdError),
    #[error(transparent)]
    Input(#[from] crate::types::InputError),
    #[error(transparent)]
    Denied(#[from] crate::policy::Denied),
    #[error(transparent)]
    Transition(#[from] crate::lifecycle::TransitionError),
    #[error(transparent)]
    Attestation(#[from] AttestationError),
    #[error(transparent)]
    Governance(#[from] crate::governance::GovernanceError),
    #[error(transparent)]
    Hold(#[from] crate::hold::HoldError),
    #[error("request_id was already used with a different payload")]
    IdempotencyKeyReused,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the request is still being processed; retry")]
    InProgress,
    #[error("the certificate changed state while it was being renewed")]
    CertificateChanged,
    #[error("the request was {state} ({reason}); send a new request with a new request id")]
    RequestClosed { state: &'static str, reason: String },
    #[error("the identity is blocked from issuance; an operator must unblock it first")]
    IdentityBlocked,
    #[error("at most {max} concurrent revocation streams per identity")]
    TooManyStreams { max: usize },
    #[error("the subscriber did not keep up; resume from the last applied sequence number")]
    SubscriberTooSlow,
    #[error("cursor {cursor} is beyond the head of the revocation log ({head})")]
    CursorAhead { cursor: i64, head: i64 },
    #[error("the server is shutting down; resume from your cursor")]
    ShuttingDown,
    #[error(transparent)]
    CaExpiring(#[from] crate::lifetime::CaExpiring),
    #[error("storage is unavailable; retry")]
    Unavailable(#[source] Cause),
    #[error("internal error")]
    Internal(#[source] Cause),
}

impl From<crate::policy::DecideError> for Error {
    fn from(e: crate::policy::DecideError) -> Self {
        match e {
            crate::policy::DecideError::Denied(denied) => Self::Denied(denied),
            crate::policy::DecideError::Engine(cause) => Self::Internal(cause),
        }
    }
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Csr(_) | Self::SpiffeId(_) | Self::Input(_) | Self::IdempotencyKeyReused => {
                ErrorClass::InvalidArgument
            }
            Self::Denied(_) => ErrorClass::PermissionDenied,
            Self::Attestation(e) => e.class(),
            Self::Governance(e) => e.class(),
            Self::Hold(e) => e.class(),
            Self::Transition(_) | Self::CertificateChanged | Self::RequestClosed { .. } => {
                ErrorClass::FailedPrecondition
            }
            Self::NotFound(_) => ErrorClass::NotFound,
            Self::IdentityBlocked => ErrorClass::PermissionDenied,
            Self::TooManyStreams { .. } | Self::SubscriberTooSlow => ErrorClass::ResourceExhausted,
            Self::CursorAhead { .. } => ErrorClass::OutOfRange,
            Self::InProgress | Self::ShuttingDown | Self::CaExpiring(_) | Self::Unavailable(_) => {
                ErrorClass::Unavailable
            }
            Self::Internal(_) => ErrorClass::Internal,
        }
    }

    /// The stable UPPER_SNAKE reason code sent in `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Csr(e) => e.reason(),
            Self::SpiffeId(e) => e.reason(),
            Self::Input(e) => e.reason(),
            Self::Denied(e) => e.reason(),
            Self::Transition(e) => e.reason(),
            Self::Attestation(e) => e.reason(),
            Self::Governance(e) => e.reason(),
            Self::Hold(e) => e.reason(),
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::NotFound(_) => "NOT_FOUND",
            Self::IdentityBlocked => "IDENTITY_BLOCKED",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW",
            Self::CursorAhead { .. } => "CURSOR_OUT_OF_RANGE",
            Self::InProgress => "REQUEST_IN_PROGRESS",
            Self::CertificateChanged => "CERTIFICATE_CHANGED",
            Self::RequestClosed { .. } => "REQUEST_CLOSED",
            Self::ShuttingDown => "SERVER_SHUTTING_DOWN",
            Self::CaExpiring(_) => "CA_EXPIRING",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// What `google.rpc.ErrorInfo.metadata` carries besides `fault`: for a refusal by policy,
    /// `policy_version` and `determining_policies` (the `@id`s of the forbids that refused it,
    /// comma-separated; empty when no permit applied) and, when the policy saw risk,
    /// `risk_score`, `risk_tier` and `risk_signals` (comma-separated); for a hold an approver
    /// denied, `denial_reason`.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        if let Self::Hold(crate::hold::HoldError::Denied { reason }) = self {
            return vec![("denial_reason", reason.clone())];
        }
        let Self::Denied(denied) = self else {
            return Vec::new();
        };
        let mut metadata = vec![
            ("policy_version", denied.decision.policy_version.clone()),
            ("determining_policies", denied.decision.policies_text()),
        ];
        if let Some(risk) = &denied.risk {
            metadata.push(("risk_score", risk.score.to_string()));
            metadata.push(("risk_tier", risk.tier.as_str().to_owned()));
            metadata.push(("risk_signals", risk.signals_text()));
        }
        metadata
    }
}

/// Identity verification failed: the evidence does not prove what the caller claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    #[error("join token is not valid")]
    JoinTokenInvalid,
    #[error("join token has already been used")]
    JoinTokenUsed,
    #[error("join token has expired")]
    JoinTokenExpired,
    #[error("join token is bound to a different SPIFFE ID")]
    JoinTokenWrongIdentity,
    #[error("this caller cannot use the {0} attestation")]
    WrongCallerKind(&'static str),
    #[error("a workload may only act on its own identity's certificates")]
    IdentityMismatch,
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtError),
}

impl AttestationError {
    pub fn class(&self) -> ErrorClass {
        ErrorClass::PermissionDenied
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::JoinTokenInvalid => "JOIN_TOKEN_INVALID",
            Self::JoinTokenUsed => "JOIN_TOKEN_USED",
            Self::JoinTokenExpired => "JOIN_TOKEN_EXPIRED",
            Self::JoinTokenWrongIdentity => "JOIN_TOKEN_WRONG_IDENTITY",
            Self::WrongCallerKind(_) => "CALLER_KIND_NOT_ALLOWED",
            Self::IdentityMismatch => "IDENTITY_MISMATCH",
            Self::Jwt(e) => e.reason(),
        }
    }
}
