//! Entity ↔ domain conversions. Anything stored that does not decode is `StoreError::Corrupt`.

use mintgate_domain::Serial;
use mintgate_domain::audit::{AuditEvent, ChainedEvent};
use mintgate_domain::lifecycle::{CertState, RequestState};
use mintgate_domain::model::{
    BlockRecord, CertificateRecord, HoldTerms, HoldVote, InstanceId, JoinTokenRecord, RequestKind,
    RequestRecord, RevocationReason, RevocationRecord,
};
use mintgate_domain::policy::PolicyDecision;
use mintgate_domain::ports::CrlEntry;
use mintgate_domain::risk::{RiskAssessment, RiskTier};
use mintgate_domain::store::StoreError;
use time::OffsetDateTime;

use crate::entity::{
    audit_event, certificate, hold_vote, identity_block, join_token, request, revocation,
};

pub(crate) fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt(format!("stored {what} does not decode").into())
}

pub(crate) fn ts(secs: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| corrupt("timestamp"))
}

pub(crate) fn serial(hex: &str) -> Result<Serial, StoreError> {
    Serial::parse_hex(hex).map_err(|_| corrupt("serial"))
}

pub(crate) fn request(m: request::Model) -> Result<RequestRecord, StoreError> {
    Ok(RequestRecord {
        pk: m.pk,
        kind: RequestKind::parse(&m.kind).ok_or_else(|| corrupt("request kind"))?,
        state: RequestState::parse(&m.state).ok_or_else(|| corrupt("request state"))?,
        serial: m.serial.as_deref().map(serial).transpose()?,
        token_expires_at: m.token_expires_at.map(ts).transpose()?,
        decision: m.policy_version.map(|policy_version| PolicyDecision {
            policy_version,
            policies: m
                .policy_ids
                .iter()
                .flat_map(|ids| ids.split(','))
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect(),
        }),
        created_at: ts(m.created_at)?,
        updated_at: ts(m.updated_at)?,
        caller: m.caller,
        request_id: m.request_id,
        payload_hash: m.payload_hash,
        reason: m.reason,
        spiffe_id: m.spiffe_id,
        token_id: m.token_id,
        lease_holder: m.lease_holder.map(InstanceId),
        risk: match (m.risk_score, m.risk_tier) {
            (Some(score), Some(tier)) => Some(RiskAssessment {
                score: u8::try_from(score).map_err(|_| corrupt("risk score"))?,
                tier: RiskTier::parse(&tier).ok_or_else(|| corrupt("risk tier"))?,
                signals: RiskAssessment::parse_signals(m.risk_signals.as_deref().unwrap_or("")),
            }),
            _ => None,
        },
        hold: match (m.hold_reason, m.hold_quorum, m.hold_expires_at) {
            (Some(reason), Some(quorum), Some(expires_at)) => Some(HoldTerms {
                reason,
                quorum: u8::try_from(quorum).map_err(|_| corrupt("hold quorum"))?,
                expires_at: ts(expires_at)?,
            }),
            _ => None,
        },
    })
}

pub(crate) fn hold_vote(m: hold_vote::Model) -> Result<HoldVote, StoreError> {
    Ok(HoldVote {
        operator: m.operator,
        approve: m.approve,
        reason: m.reason,
        at: ts(m.at)?,
    })
}

pub(crate) fn revocation(m: revocation::Model) -> Result<RevocationRecord, StoreError> {
    Ok(RevocationRecord {
        seq: m.seq,
        serial: serial(&m.serial)?,
        reason: RevocationReason::parse(&m.reason).ok_or_else(|| corrupt("revocation reason"))?,
        revoked_at: ts(m.revoked_at)?,
        not_after: ts(m.not_after)?,
        spiffe_id: m.spiffe_id,
        issuer_key_id: m.issuer_key_id,
        revoked_by: m.revoked_by,
        issuer: m.issuer,
    })
}

pub(crate) fn crl_entry(
    serial_hex: &str,
    reason: &str,
    revoked_at: i64,
) -> Result<CrlEntry, StoreError> {
    Ok(CrlEntry {
        serial: serial(serial_hex)?,
        reason: RevocationReason::parse(reason).ok_or_else(|| corrupt("revocation reason"))?,
        revoked_at: ts(revoked_at)?,
    })
}

pub(crate) fn block(m: identity_block::Model) -> Result<BlockRecord, StoreError> {
    Ok(BlockRecord {
        reason: RevocationReason::parse(&m.reason).ok_or_else(|| corrupt("block reason"))?,
        blocked_at: ts(m.blocked_at)?,
        spiffe_id: m.spiffe_id,
        blocked_by: m.blocked_by,
    })
}

pub(crate) fn cert_state(s: &str) -> Result<CertState, StoreError> {
    CertState::parse(s).ok_or_else(|| corrupt("certificate state"))
}

pub(crate) fn certificate(m: certificate::Model) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        serial: serial(&m.serial)?,
        state: cert_state(&m.state)?,
        not_before: ts(m.not_before)?,
        not_after: ts(m.not_after)?,
        spiffe_id: m.spiffe_id,
        key_type: m.key_type,
        der: m.der,
        chain_pem: m.chain_pem,
        request_pk: m.request_pk,
        issuer_key_id: m.issuer_key_id,
    })
}

pub(crate) fn join_token(m: join_token::Model) -> Result<JoinTokenRecord, StoreError> {
    Ok(JoinTokenRecord {
        expires_at: ts(m.expires_at)?,
        used_at: m.used_at.map(ts).transpose()?,
        token_id: m.token_id,
        token_hash: m.token_hash,
        spiffe_id: m.spiffe_id,
        created_by: m.created_by,
    })
}

pub(crate) fn chained_event(m: audit_event::Model) -> Result<ChainedEvent, StoreError> {
    let hash32 = |s: &str| -> Result<[u8; 32], StoreError> {
        hex::decode(s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| corrupt("audit hash"))
    };
    Ok(ChainedEvent {
        prev_hash: hash32(&m.prev_hash)?,
        hash: hash32(&m.hash)?,
        event: AuditEvent {
            seq: m.seq,
            at: m.at,
            actor: m.actor,
            action: m.action,
            subject: m.subject,
            spiffe_id: m.spiffe_id,
            dns_names: serde_json::from_str(&m.dns_names)
                .map_err(|_| corrupt("audit dns_names"))?,
            key_type: m.key_type,
            not_before: m.not_before,
            not_after: m.not_after,
            policy_version: m.policy_version,
            policy_rule: m.policy_rule,
            request_id: m.request_id,
            detail: m.detail,
        },
    })
}

pub(crate) fn audit_model(c: &ChainedEvent) -> audit_event::ActiveModel {
    use sea_orm::ActiveValue::Set;
    let e = &c.event;
    audit_event::ActiveModel {
        seq: Set(e.seq),
        at: Set(e.at),
        actor: Set(e.actor.clone()),
        action: Set(e.action.clone()),
        subject: Set(e.subject.clone()),
        spiffe_id: Set(e.spiffe_id.clone()),
        dns_names: Set(serde_json::Value::from(e.dns_names.clone()).to_string()),
        key_type: Set(e.key_type.clone()),
        not_before: Set(e.not_before),
        not_after: Set(e.not_after),
        policy_version: Set(e.policy_version.clone()),
        policy_rule: Set(e.policy_rule.clone()),
        request_id: Set(e.request_id.clone()),
        detail: Set(e.detail.clone()),
        prev_hash: Set(hex::encode(c.prev_hash)),
        hash: Set(hex::encode(c.hash)),
    }
}
