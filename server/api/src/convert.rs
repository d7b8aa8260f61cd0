//! Protobuf ↔ domain conversions.

use mintgate_domain::InputError;
use mintgate_domain::authority::{CaAction, CaRecord, CaState};
use mintgate_domain::governance::{Change, ProposalRecord, ProposalStatus, RoleBinding};
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::lifetime::Clamp;
use mintgate_domain::model::{RequestRecord, RevocationReason, RevocationRecord};
use mintgate_domain::service::{
    CertificateStatus, CreatedJoinToken, IssueInput, IssueOutcome, Issued, StatusReport,
};
use mintgate_proto::v1;
use time::OffsetDateTime;

pub(crate) fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

fn ttl(d: Option<prost_types::Duration>) -> Option<(i64, i32)> {
    d.map(|d| (d.seconds, d.nanos))
}

pub(crate) fn enroll_input(r: v1::EnrollRequest) -> IssueInput {
    IssueInput {
        request_id: r.request_id,
        csr: r.csr,
        ttl: ttl(r.ttl),
        join_token: Some(r.join_token).filter(|t| !t.is_empty()),
        service_account_token: Some(r.service_account_token).filter(|t| !t.is_empty()),
    }
}

pub(crate) fn renew_input(r: v1::RenewRequest) -> IssueInput {
    IssueInput {
        request_id: r.request_id,
        csr: r.csr,
        ttl: ttl(r.ttl),
        join_token: None,
        service_account_token: None,
    }
}

pub(crate) fn issue_outcome(outcome: IssueOutcome) -> v1::IssueResponse {
    match outcome {
        IssueOutcome::Issued(i) => issue_response(i),
        IssueOutcome::Held(held) => v1::IssueResponse {
            state: v1::RequestState::PendingApproval.into(),
            spiffe_id: held.hold.spiffe_id.clone(),
            retry_after: Some(prost_types::Duration {
                seconds: i64::try_from(held.retry_after.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            hold: Some(crate::holds::hold(held.hold)),
            ..v1::IssueResponse::default()
        },
    }
}

fn issue_response(i: Issued) -> v1::IssueResponse {
    v1::IssueResponse {
        state: v1::RequestState::Issued.into(),
        retry_after: None,
        hold: None,
        certificate_chain_pem: i.chain_pem,
        serial: i.serial.to_hex(),
        spiffe_id: i.spiffe_id,
        not_before: Some(timestamp(i.not_before)),
        not_after: Some(timestamp(i.not_after)),
        renew_after: Some(timestamp(i.renew_after)),
        trust_bundle_pem: i.trust_bundle_pem,
        granted_ttl: Some(prost_types::Duration {
            seconds: i64::try_from(i.granted.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        clamp_reason: match i.clamp {
            None => v1::ClampReason::None,
            Some(Clamp::CaNotAfter) => v1::ClampReason::CaNotAfter,
            Some(Clamp::PolicyMaxTtl) => v1::ClampReason::PolicyMaxTtl,
        }
        .into(),
    }
}

pub(crate) fn request_status(r: RequestRecord) -> v1::RequestStatus {
    let hold = r.hold.map(|terms| v1::Hold {
        hold_id: r.pk.to_string(),
        requester: r.caller.clone(),
        request_id: r.request_id.clone(),
        kind: r.kind.as_str().to_owned(),
        spiffe_id: r.spiffe_id.clone(),
        state: request_state(r.state).into(),
        reason: terms.reason,
        quorum: u32::from(terms.quorum),
        risk: r.risk.clone().map(crate::holds::risk),
        created_at: Some(timestamp(r.created_at)),
        expires_at: Some(timestamp(terms.expires_at)),
        ..v1::Hold::default()
    });
    v1::RequestStatus {
        request_id: r.request_id,
        state: request_state(r.state).into(),
        kind: r.kind.as_str().to_owned(),
        spiffe_id: r.spiffe_id,
        serial: r.serial.map(|s| s.to_hex()).unwrap_or_default(),
        reason: r.reason.unwrap_or_default(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        risk: r.risk.map(crate::holds::risk),
        hold,
    }
}

pub(crate) fn request_state(state: RequestState) -> v1::RequestState {
    match state {
        RequestState::Received => v1::RequestState::Received,
        RequestState::Verified => v1::RequestState::Verified,
        RequestState::Approved => v1::RequestState::Approved,
        RequestState::PendingApproval => v1::RequestState::PendingApproval,
        RequestState::Denied => v1::RequestState::Denied,
        RequestState::Rejected => v1::RequestState::Rejected,
        RequestState::Issued => v1::RequestState::Issued,
        RequestState::Failed => v1::RequestState::Failed,
        RequestState::Expired => v1::RequestState::Expired,
    }
}

pub(crate) fn join_token_response(t: CreatedJoinToken) -> v1::CreateJoinTokenResponse {
    v1::CreateJoinTokenResponse {
        token: t.token,
        token_id: t.token_id,
        spiffe_id: t.spiffe_id,
        expires_at: Some(timestamp(t.expires_at)),
    }
}

pub(crate) fn revocation_reason(code: i32) -> Result<RevocationReason, InputError> {
    let reason =
        v1::RevocationReason::try_from(code).map_err(|_| InputError::RevocationReasonInvalid)?;
    let domain = match reason {
        v1::RevocationReason::Unspecified => RevocationReason::Unspecified,
        v1::RevocationReason::KeyCompromise => RevocationReason::KeyCompromise,
        v1::RevocationReason::CaCompromise => RevocationReason::CaCompromise,
        v1::RevocationReason::AffiliationChanged => RevocationReason::AffiliationChanged,
        v1::RevocationReason::Superseded => RevocationReason::Superseded,
        v1::RevocationReason::CessationOfOperation => RevocationReason::CessationOfOperation,
        v1::RevocationReason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
    };
    Ok(domain)
}

fn proto_reason(reason: RevocationReason) -> v1::RevocationReason {
    match reason {
        RevocationReason::Unspecified => v1::RevocationReason::Unspecified,
        RevocationReason::KeyCompromise => v1::RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise => v1::RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged => v1::RevocationReason::AffiliationChanged,
        RevocationReason::Superseded => v1::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => v1::RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => v1::RevocationReason::PrivilegeWithdrawn,
    }
}

pub(crate) fn revocation_event(r: &RevocationRecord) -> v1::RevocationEvent {
    v1::RevocationEvent {
        seq: r.seq,
        serial: r.serial.to_hex(),
        spiffe_id: r.spiffe_id.clone(),
        reason: proto_reason(r.reason).into(),
        revoked_at: Some(timestamp(r.revoked_at)),
        not_after: Some(timestamp(r.not_after)),
        issuer_key_id: r.issuer_key_id.clone(),
        issuer: r.issuer,
    }
}

pub(crate) fn authority(ca: &CaRecord) -> v1::CertificateAuthority {
    let state = match ca.state {
        CaState::Prepared => v1::CaState::Prepared,
        CaState::Active => v1::CaState::Active,
        CaState::Retiring => v1::CaState::Retiring,
        CaState::Retired => v1::CaState::Retired,
        CaState::Revoked => v1::CaState::Revoked,
    };
    v1::CertificateAuthority {
        key_id: ca.key_id.clone(),
        state: state.into(),
        subject: ca.subject.clone(),
        not_after: Some(timestamp(ca.not_after)),
        prepared_at: Some(timestamp(ca.prepared_at)),
        activated_at: ca.activated_at.map(timestamp),
        retiring_at: ca.retiring_at.map(timestamp),
        retired_at: ca.retired_at.map(timestamp),
        chain_pem: ca.chain_pem.clone(),
    }
}

/// A CA rotation step as asked; unspecified is a bad argument.
pub(crate) fn ca_action(action: i32) -> Result<CaAction, InputError> {
    match v1::CaAction::try_from(action) {
        Ok(v1::CaAction::Prepare) => Ok(CaAction::Prepare),
        Ok(v1::CaAction::Activate) => Ok(CaAction::Activate),
        Ok(v1::CaAction::Retire) => Ok(CaAction::Retire),
        _ => Err(InputError::CaActionInvalid),
    }
}

pub(crate) fn status_report(report: StatusReport) -> v1::CheckStatusResponse {
    let statuses = report
        .statuses
        .into_iter()
        .map(|(serial, status)| {
            let (status, revocation, not_after) = match status {
                CertificateStatus::Good { not_after } => {
                    (v1::CertificateStatus::Good, None, Some(not_after))
                }
                CertificateStatus::Superseded { not_after } => {
                    (v1::CertificateStatus::Superseded, None, Some(not_after))
                }
                CertificateStatus::Revoked(r) => (
                    v1::CertificateStatus::Revoked,
                    Some(revocation_event(&r)),
                    Some(r.not_after),
                ),
                CertificateStatus::Expired { not_after } => {
                    (v1::CertificateStatus::Expired, None, Some(not_after))
                }
                CertificateStatus::Unknown => (v1::CertificateStatus::Unknown, None, None),
            };
            v1::SerialStatus {
                serial,
                status: status.into(),
                revocation,
                not_after: not_after.map(timestamp),
            }
        })
        .collect();
    v1::CheckStatusResponse {
        statuses,
        head_seq: report.head_seq,
    }
}

pub(crate) fn proposal(p: &ProposalRecord, status: ProposalStatus) -> v1::Proposal {
    let state = match status {
        ProposalStatus::Open => v1::ProposalState::Open,
        ProposalStatus::Applied => v1::ProposalState::Applied,
        ProposalStatus::Expired => v1::ProposalState::Expired,
        ProposalStatus::Superseded => v1::ProposalState::Superseded,
    };
    let mut out = v1::Proposal {
        id: p.id.clone(),
        state: state.into(),
        author: p.author.clone(),
        created_at: Some(timestamp(p.created_at)),
        expires_at: Some(timestamp(p.expires_at)),
        approved_by: p.approved_by.clone().unwrap_or_default(),
        approved_at: p.approved_at.map(timestamp),
        superseded_by: p.superseded_by.clone().unwrap_or_default(),
        ..Default::default()
    };
    match &p.change {
        Change::Policy {
            version,
            base_version,
            label,
        } => {
            out.kind = v1::ProposalKind::Policy.into();
            out.policy_version = version.clone();
            out.base_version = base_version.clone();
            out.label = label.clone().unwrap_or_default();
        }
        Change::RoleBinding {
            operator,
            role,
            valid_until,
            remove,
        } => {
            out.kind = v1::ProposalKind::RoleBinding.into();
            out.subject = operator.clone();
            out.role = role.clone();
            out.valid_until = valid_until.map(timestamp);
            out.remove = *remove;
        }
        Change::Unblock { spiffe_id } => {
            out.kind = v1::ProposalKind::Unblock.into();
            out.subject = spiffe_id.clone();
        }
        Change::Ca {
            action,
            key_id,
            prepared,
        } => {
            out.kind = v1::ProposalKind::Ca.into();
            out.subject = key_id.clone();
            out.role = action.as_str().to_owned();
            out.label = prepared
                .as_ref()
                .map(|p| p.subject.clone())
                .unwrap_or_default();
        }
        Change::RevokeIssuer { key_id, reason } => {
            out.kind = v1::ProposalKind::RevokeIssuer.into();
            out.subject = key_id.clone();
            out.label = reason.as_str().to_owned();
        }
    }
    out
}

pub(crate) fn role_binding(b: &RoleBinding) -> v1::RoleBinding {
    v1::RoleBinding {
        operator: b.operator.clone(),
        role: b.role.clone(),
        valid_until: b.valid_until.map(timestamp),
    }
}

/// A protobuf timestamp as a time; out of range is a bad argument.
pub(crate) fn time_of(
    t: Option<prost_types::Timestamp>,
    field: &'static str,
) -> Result<Option<OffsetDateTime>, InputError> {
    t.map(|t| {
        OffsetDateTime::from_unix_timestamp(t.seconds)
            .map_err(|_| InputError::TimestampInvalid { field })
    })
    .transpose()
}
