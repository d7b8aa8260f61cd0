//! Protobuf ↔ domain conversions.

use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::RequestRecord;
use mintgate_domain::service::{CreatedJoinToken, IssueInput, Issued};
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
    }
}

pub(crate) fn renew_input(r: v1::RenewRequest) -> IssueInput {
    IssueInput {
        request_id: r.request_id,
        csr: r.csr,
        ttl: ttl(r.ttl),
        join_token: None,
    }
}

pub(crate) fn issue_response(i: Issued) -> v1::IssueResponse {
    v1::IssueResponse {
        certificate_chain_pem: i.chain_pem,
        serial: i.serial.to_hex(),
        spiffe_id: i.spiffe_id,
        not_before: Some(timestamp(i.not_before)),
        not_after: Some(timestamp(i.not_after)),
        renew_after: Some(timestamp(i.renew_after)),
        trust_bundle_pem: i.trust_bundle_pem,
    }
}

pub(crate) fn request_status(r: RequestRecord) -> v1::RequestStatus {
    let state = match r.state {
        RequestState::Received => v1::RequestState::Received,
        RequestState::Verified => v1::RequestState::Verified,
        RequestState::Approved => v1::RequestState::Approved,
        RequestState::PendingApproval => v1::RequestState::PendingApproval,
        RequestState::Denied => v1::RequestState::Denied,
        RequestState::Rejected => v1::RequestState::Rejected,
        RequestState::Issued => v1::RequestState::Issued,
        RequestState::Failed => v1::RequestState::Failed,
        RequestState::Expired => v1::RequestState::Expired,
    };
    v1::RequestStatus {
        request_id: r.request_id,
        state: state.into(),
        kind: r.kind.as_str().to_owned(),
        spiffe_id: r.spiffe_id,
        serial: r.serial.map(|s| s.to_hex()).unwrap_or_default(),
        reason: r.reason.unwrap_or_default(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
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
