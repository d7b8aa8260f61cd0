//! What an Enroll or Renew answer means to the SDK: an [`Issuance`] is either a certificate or a
//! request [`Held`] for approvers (DESIGN §12), never an error. [`CredentialState`] is what a
//! [`crate::CredentialManager`] is doing, for health endpoints and dashboards.

use std::time::Duration;

use mintgate_proto::v1;
use time::OffsetDateTime;

use crate::{Credential, Error};

/// The reason of a held request an approver denied (PERMISSION_DENIED): final for that
/// request id; the message carries the approver's reason.
pub const HOLD_DENIED: &str = "HOLD_DENIED";
/// The reason of a held request nobody decided before its hold expired (FAILED_PRECONDITION):
/// final for that request id; a new request (new id) may be decided.
pub const HOLD_EXPIRED: &str = "HOLD_EXPIRED";

/// How long to wait before asking again about a held request when the server named no time.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// What Enroll or Renew answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuance {
    /// A certificate (state ISSUED).
    Issued(Credential),
    /// Held for approvers (state PENDING_APPROVAL): ask again with the same request id and the
    /// same CSR after [`Held::retry_after`].
    Held(Held),
}

impl Issuance {
    /// Reads an answer to a request whose CSR was made with `key_pem`. An answer in any other
    /// state, or an issued answer without its certificate, is an `INTERNAL` error.
    pub fn from_response(response: v1::IssueResponse, key_pem: String) -> Result<Self, Error> {
        use v1::RequestState as S;
        match response.state() {
            S::PendingApproval => Ok(Self::Held(Held::from_response(response))),
            // A server from before holds leaves the state unset.
            S::Issued | S::Unspecified => {
                Credential::from_response(response, key_pem).map(Self::Issued)
            }
            other => Err(Error::from(tonic::Status::internal(format!(
                "the answer is in state {}, neither issued nor held",
                other.as_str_name()
            )))),
        }
    }
}

/// A request held for approvers: why, by how many, until when, and when to ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The request id to ask again with (never a new one while held).
    pub request_id: String,
    /// What approvers name in Admin/Approve and Admin/Deny.
    pub hold_id: String,
    /// `ENROLL` or `RENEW`.
    pub kind: String,
    /// The SPIFFE ID asked for.
    pub spiffe_id: String,
    /// Why policy held it (its `@hold` annotations).
    pub reason: String,
    /// Distinct approvals needed to release it.
    pub quorum: u32,
    /// Approvals cast so far.
    pub approvals: u32,
    /// When the hold expires if nobody decides (then the request answers `HOLD_EXPIRED`).
    pub expires_at: Option<OffsetDateTime>,
    /// How long to wait before asking again.
    pub retry_after: Duration,
    /// The risk tier policy saw (`low`, `elevated`, `high`), if the server said.
    pub risk_tier: Option<String>,
    /// The risk signals that fired.
    pub risk_signals: Vec<String>,
}

impl Held {
    fn from_response(response: v1::IssueResponse) -> Self {
        let retry_after = response
            .retry_after
            .and_then(|d| u64::try_from(d.seconds).ok())
            .filter(|secs| *secs > 0)
            .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
        let hold = response.hold.unwrap_or_default();
        let risk = hold.risk.unwrap_or_default();
        Self {
            request_id: hold.request_id,
            hold_id: hold.hold_id,
            kind: hold.kind,
            spiffe_id: hold.spiffe_id,
            reason: hold.reason,
            quorum: hold.quorum,
            approvals: hold.approvals,
            expires_at: hold
                .expires_at
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok()),
            retry_after,
            risk_tier: Some(risk.tier).filter(|t| !t.is_empty()),
            risk_signals: risk.signals,
        }
    }

    /// One line for logs and health endpoints: `held: <reason> (hold <id>, 1/2 approvals)`.
    pub fn summary(&self) -> String {
        format!(
            "held: {} (hold {}, {}/{} approvals)",
            self.reason, self.hold_id, self.approvals, self.quorum
        )
    }
}

/// What a [`crate::CredentialManager`] is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialState {
    /// Asking for the first certificate.
    Enrolling,
    /// The current credential is in use; it is renewed when its window opens.
    Current,
    /// A request (the enrollment, or a renewal while the current credential is still valid)
    /// waits for approvers; it is asked about again with the same request id and key.
    Held(Held),
    /// The server refused for good: the enrollment (`enroll` returns the same error), or a
    /// renewal (an approver denied it, policy refused it...), after which the current
    /// credential is kept until it expires and not renewed again.
    Refused(Error),
    /// The credential expired without being renewed; the manager has stopped.
    Expired,
}

impl CredentialState {
    /// The hold waited on, if any.
    pub fn held(&self) -> Option<&Held> {
        match self {
            Self::Held(h) => Some(h),
            Self::Enrolling | Self::Current | Self::Refused(_) | Self::Expired => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_response() -> v1::IssueResponse {
        v1::IssueResponse {
            state: v1::RequestState::PendingApproval.into(),
            retry_after: Some(crate::seconds(7)),
            hold: Some(v1::Hold {
                hold_id: "h1".into(),
                request_id: "r1".into(),
                kind: "ENROLL".into(),
                reason: "elevated risk".into(),
                quorum: 2,
                approvals: 1,
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 0,
                }),
                risk: Some(v1::Risk {
                    score: 40,
                    tier: "elevated".into(),
                    signals: vec!["first_issuance".into()],
                }),
                ..v1::Hold::default()
            }),
            ..v1::IssueResponse::default()
        }
    }

    #[test]
    fn a_held_answer_is_a_hold_not_an_error() {
        let Issuance::Held(held) = Issuance::from_response(held_response(), "k".into()).unwrap()
        else {
            panic!("held");
        };
        assert_eq!(held.request_id, "r1");
        assert_eq!(held.retry_after, Duration::from_secs(7));
        assert_eq!((held.approvals, held.quorum), (1, 2));
        assert_eq!(held.risk_tier.as_deref(), Some("elevated"));
        assert_eq!(
            held.summary(),
            "held: elevated risk (hold h1, 1/2 approvals)"
        );
        assert_eq!(held.expires_at.unwrap().unix_timestamp(), 1_000);
    }

    #[test]
    fn a_hold_without_retry_after_waits_the_default() {
        let mut response = held_response();
        response.retry_after = None;
        let Issuance::Held(held) = Issuance::from_response(response, "k".into()).unwrap() else {
            panic!("held");
        };
        assert_eq!(held.retry_after, DEFAULT_RETRY_AFTER);
    }

    #[test]
    fn an_issued_answer_needs_its_certificate_and_other_states_are_bugs() {
        let empty = v1::IssueResponse {
            state: v1::RequestState::Issued.into(),
            ..v1::IssueResponse::default()
        };
        let err = Issuance::from_response(empty, "k".into()).unwrap_err();
        assert_eq!(err.code, tonic::Code::Internal);
        let denied = v1::IssueResponse {
            state: v1::RequestState::Denied.into(),
            ..v1::IssueResponse::default()
        };
        let err = Issuance::from_response(denied, "k".into()).unwrap_err();
        assert!(err.message.contains("REQUEST_STATE_DENIED"), "{err}");
    }
}
