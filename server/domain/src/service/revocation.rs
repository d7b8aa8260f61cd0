//! Revoke and CheckStatus. A revocation is one transaction: the certificate becomes REVOKED, the
//! log gains an entry with the next sequence number, and the audit trail says who revoked what
//! and why (DESIGN §7).

use std::time::Duration;

use time::OffsetDateTime;

use super::{Mintgate, payload_hash};
use crate::error::AttestationError;
use crate::lifecycle::{CertEvent, CertState, RequestState, transition_cert};
use crate::model::{
    Caller, CallerKind, NewRequest, NewRevocation, RequestKind, RevocationReason, RevocationRecord,
};
use crate::store::{CertificateStore, Revoked, StoreError};
use crate::{Error, InputError, RequestId, Serial};

/// The operator role that may revoke any certificate.
pub const ROLE_REVOKE: &str = "revoke";
/// Most serials one CheckStatus may ask about.
pub const MAX_STATUS_SERIALS: usize = 1000;
/// How long past its certificate's notAfter an entry stays in the live set and on the CRL, to
/// cover clock skew between peers.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(300);

/// Revoke as the api hands it over.
#[derive(Debug, Clone)]
pub struct RevokeInput {
    pub request_id: String,
    pub serial: String,
    pub reason: RevocationReason,
}

/// What the registry knows about one serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateStatus {
    Good { not_after: OffsetDateTime },
    Revoked(RevocationRecord),
    Expired { not_after: OffsetDateTime },
    Unknown,
}

/// CheckStatus's answer: one status per serial (normalised hex), and the head sequence number
/// the answer is at least as new as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub statuses: Vec<(String, CertificateStatus)>,
    pub head_seq: i64,
}

impl<S: CertificateStore> Mintgate<S> {
    /// Revocation/Revoke.
    pub async fn revoke(
        &self,
        caller: &Caller,
        input: RevokeInput,
    ) -> Result<RevocationRecord, Error> {
        let request_id = RequestId::parse(&input.request_id)?;
        let serial = Serial::parse_hex(&input.serial)?;
        let hash = payload_hash(&[
            RequestKind::Revoke.as_str().as_bytes(),
            serial.to_hex().as_bytes(),
            input.reason.as_str().as_bytes(),
        ]);
        if let Some(existing) = self
            .store
            .find_request(caller.id.as_str(), request_id.as_str())
            .await?
        {
            if existing.kind != RequestKind::Revoke || existing.payload_hash != hash {
                return Err(Error::IdempotencyKeyReused);
            }
            return self.recorded_revocation(&serial).await;
        }
        let now = self.clock.now();
        let cert = self
            .store
            .certificate(&serial)
            .await?
            .ok_or(Error::NotFound("certificate"))?;
        if let Err(e) = authorize_revoke(caller, &cert.spiffe_id) {
            self.audit_refusal(caller, &request_id, &serial, &e, now)
                .await;
            return Err(e);
        }
        transition_cert(cert.state, CertEvent::Revoke, cert.not_after, now)?;
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "certificate.revoked",
            format!("serial:{serial}"),
        );
        event.spiffe_id = Some(cert.spiffe_id.clone());
        event.request_id = Some(request_id.to_string());
        event.detail = Some(format!(
            "{}->REVOKED reason {}",
            cert.state.as_str(),
            input.reason
        ));
        let request = NewRequest {
            caller: caller.id.to_string(),
            request_id: request_id.to_string(),
            kind: RequestKind::Revoke,
            payload_hash: hash.clone(),
            state: RequestState::Issued,
            reason: None,
            spiffe_id: cert.spiffe_id.clone(),
            serial: Some(serial.clone()),
            token_id: None,
            token_expires_at: None,
            now,
        };
        let revocation = NewRevocation {
            serial: serial.clone(),
            from: cert.state,
            reason: input.reason,
            revoked_by: caller.id.to_string(),
            issuer_key_id: self.signer.issuer_key_id().to_owned(),
            now,
        };
        match self.store.revoke(request, revocation, vec![event]).await {
            Ok(Revoked::New(record)) => Ok(record),
            Ok(Revoked::Duplicate(existing)) if existing.payload_hash == hash => {
                self.recorded_revocation(&serial).await
            }
            Ok(Revoked::Duplicate(_)) => Err(Error::IdempotencyKeyReused),
            Err(StoreError::Conflict(_)) => {
                // Someone else revoked (or renewed) it between our read and our write.
                let now_state = self
                    .store
                    .certificate(&serial)
                    .await?
                    .map_or(CertState::Revoked, |c| c.state);
                transition_cert(now_state, CertEvent::Revoke, cert.not_after, now)?;
                Err(Error::CertificateChanged)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Revocation/CheckStatus.
    pub async fn check_status(&self, serials: &[String]) -> Result<StatusReport, Error> {
        if serials.len() > MAX_STATUS_SERIALS {
            return Err(InputError::TooMany {
                field: "serials",
                max: MAX_STATUS_SERIALS,
            }
            .into());
        }
        let parsed = serials
            .iter()
            .map(|s| Serial::parse_hex(s))
            .collect::<Result<Vec<_>, _>>()?;
        // Read the head first: every revocation up to it is visible to the reads below.
        let head_seq = self.store.revocation_bounds().await?.head;
        let now = self.clock.now();
        let mut statuses = Vec::with_capacity(parsed.len());
        for serial in parsed {
            let status = match self.store.certificate(&serial).await? {
                None => CertificateStatus::Unknown,
                Some(c) if c.state == CertState::Revoked => {
                    match self.store.revocation(&serial).await? {
                        Some(r) => CertificateStatus::Revoked(r),
                        // Pruned: only entries past notAfter are.
                        None => CertificateStatus::Expired {
                            not_after: c.not_after,
                        },
                    }
                }
                Some(c) if now >= c.not_after => CertificateStatus::Expired {
                    not_after: c.not_after,
                },
                Some(c) => CertificateStatus::Good {
                    not_after: c.not_after,
                },
            };
            statuses.push((serial.to_hex(), status));
        }
        Ok(StatusReport { statuses, head_seq })
    }

    async fn recorded_revocation(&self, serial: &Serial) -> Result<RevocationRecord, Error> {
        self.store
            .revocation(serial)
            .await?
            .ok_or(Error::NotFound("revocation"))
    }

    /// A refused revocation is audited: who tried to revoke what, and why not.
    async fn audit_refusal(
        &self,
        caller: &Caller,
        request_id: &RequestId,
        serial: &Serial,
        error: &Error,
        now: OffsetDateTime,
    ) {
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "revocation.denied",
            format!("serial:{serial}"),
        );
        event.request_id = Some(request_id.to_string());
        event.detail = Some(error.reason().to_owned());
        // Best effort: the refusal stands whether or not its record could be written.
        let _ = self.store.append_audit(vec![event]).await;
    }
}

/// Operators with the revoke role may revoke anything; a workload only certificates of its own
/// identity (e.g. its own, after a key compromise); nodes nothing.
fn authorize_revoke(caller: &Caller, spiffe_id: &str) -> Result<(), Error> {
    match caller.kind {
        CallerKind::Operator if caller.has_role(ROLE_REVOKE) => Ok(()),
        CallerKind::Operator => Err(AttestationError::RoleMissing(ROLE_REVOKE).into()),
        CallerKind::Workload if caller.id.as_str() == spiffe_id => Ok(()),
        CallerKind::Workload => Err(AttestationError::IdentityMismatch.into()),
        CallerKind::Node => Err(AttestationError::WrongCallerKind(caller.kind.as_str()).into()),
    }
}
