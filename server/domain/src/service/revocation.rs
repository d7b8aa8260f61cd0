//! Revoke and CheckStatus. A revocation is one transaction: the certificate becomes REVOKED, the
//! log gains an entry with the next sequence number, and the audit trail says who revoked what
//! and why (DESIGN §7).

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Mintgate, payload_hash};
use crate::lifecycle::{CertEvent, CertState, RequestState, transition_cert};
use crate::model::{
    Caller, IdentityScope, NewRequest, NewRevocation, RequestKind, RequestRecord, RevocationReason,
    RevocationRecord, StoredStatus,
};
use crate::policy::{Operation, Target};
use crate::ports::OcspStatus;
use crate::store::{CertificateStore, Revoked, StoreError};
use crate::{Error, InputError, RequestId, Serial, SpiffeId};

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
    Good {
        not_after: OffsetDateTime,
    },
    /// Renewed: a newer certificate of the identity exists. Still valid until its notAfter
    /// unless revoked (connections it authenticates keep working); it cannot be renewed again.
    Superseded {
        not_after: OffsetDateTime,
    },
    Revoked(RevocationRecord),
    Expired {
        not_after: OffsetDateTime,
    },
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
            return self
                .replay_revoke(&existing, RequestKind::Revoke, &hash)
                .await;
        }
        let now = self.clock.now();
        let cert = self
            .store
            .certificate(&serial)
            .await?
            .ok_or(Error::NotFound("certificate"))?;
        let cert_id = SpiffeId::parse_in(&cert.spiffe_id, &self.trust_domain)?;
        let decision = match self
            .authorize(caller, Operation::Revoke, Target::Identity(&cert_id))
            .await
        {
            Ok(decision) => decision,
            Err(e) => {
                self.audit_refusal(caller, &request_id, &serial, &e, now)
                    .await;
                return Err(e);
            }
        };
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
            decision: Some(decision),
            now,
            risk: None,
            hold: None,
        };
        let revocation = NewRevocation {
            serial: serial.clone(),
            from: cert.state,
            reason: input.reason,
            revoked_by: caller.id.to_string(),
            issuer_key_id: self.issuer_of(&cert),
            now,
        };
        let stored = self
            .store
            .revoke(request, vec![revocation], None, vec![event])
            .await;
        match stored {
            Ok(Revoked::New(records)) => records.into_iter().next().ok_or_else(no_entry),
            Ok(Revoked::Duplicate(existing)) => {
                self.replay_revoke(&existing, RequestKind::Revoke, &hash)
                    .await
            }
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
    pub async fn check_status(
        &self,
        caller: &Caller,
        serials: &[String],
    ) -> Result<StatusReport, Error> {
        self.authorize(
            caller,
            Operation::CheckStatus,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
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
        self.registry_statuses(&parsed).await
    }

    /// What the registry says of each of `serials`, asking no policy: CheckStatus once its
    /// caller is authorized, and the unauthenticated OCSP responder (which tells a serial's
    /// status only to whoever already holds the serial, 128 random bits). The caller bounds the
    /// number of serials.
    pub async fn registry_statuses(&self, serials: &[Serial]) -> Result<StatusReport, Error> {
        // Read the head first: every revocation up to it is visible to the reads below.
        let head_seq = self.store.revocation_bounds().await?.head;
        let now = self.clock.now();
        let stored: HashMap<Serial, StoredStatus> = self
            .store
            .certificate_statuses(serials)
            .await?
            .into_iter()
            .map(|s| (s.serial.clone(), s))
            .collect();
        let statuses = serials
            .iter()
            .map(|serial| (serial.to_hex(), classify(stored.get(serial), now)))
            .collect();
        Ok(StatusReport { statuses, head_seq })
    }

    /// The answer to a retried Revoke: the entry its first attempt recorded.
    async fn replay_revoke(
        &self,
        existing: &RequestRecord,
        kind: RequestKind,
        hash: &str,
    ) -> Result<RevocationRecord, Error> {
        self.replay_revocations(existing, kind, hash)
            .await?
            .into_iter()
            .next()
            .ok_or_else(no_entry)
    }

    async fn replay_revocations(
        &self,
        existing: &RequestRecord,
        kind: RequestKind,
        hash: &str,
    ) -> Result<Vec<RevocationRecord>, Error> {
        if existing.kind != kind || existing.payload_hash != hash {
            return Err(Error::IdempotencyKeyReused);
        }
        Ok(self.store.revocations_of_request(existing.pk).await?)
    }

    /// Revocation/RevokeIdentity: every live certificate of `spiffe_id`, and optionally a block,
    /// in one transaction. Retried if a certificate of the identity changes meanwhile.
    pub async fn revoke_identity(
        &self,
        caller: &Caller,
        input: RevokeIdentityInput,
    ) -> Result<IdentityRevoked, Error> {
        let request_id = RequestId::parse(&input.request_id)?;
        let spiffe_id = SpiffeId::parse_in(&input.spiffe_id, &self.trust_domain)?;
        let decision = self
            .authorize(
                caller,
                Operation::RevokeIdentity,
                Target::Identity(&spiffe_id),
            )
            .await?;
        let hash = payload_hash(&[
            RequestKind::RevokeIdentity.as_str().as_bytes(),
            spiffe_id.as_str().as_bytes(),
            input.reason.as_str().as_bytes(),
            &[u8::from(input.block)],
        ]);
        for _ in 0..IDENTITY_ATTEMPTS {
            if let Some(existing) = self
                .store
                .find_request(caller.id.as_str(), request_id.as_str())
                .await?
            {
                return self.identity_answer(&existing, &hash).await;
            }
            let now = self.clock.now();
            let live = self
                .store
                .live_certificates_of(spiffe_id.as_str(), now)
                .await?;
            let mut events = Vec::with_capacity(live.len() + 1);
            let mut revocations = Vec::with_capacity(live.len());
            for cert in &live {
                let mut event = self.audit(
                    now,
                    caller.id.as_str(),
                    "certificate.revoked",
                    format!("serial:{}", cert.serial),
                );
                event.spiffe_id = Some(cert.spiffe_id.clone());
                event.request_id = Some(request_id.to_string());
                event.detail = Some(format!(
                    "{}->REVOKED reason {} (identity)",
                    cert.state.as_str(),
                    input.reason
                ));
                events.push(event);
                revocations.push(NewRevocation {
                    serial: cert.serial.clone(),
                    from: cert.state,
                    reason: input.reason,
                    revoked_by: caller.id.to_string(),
                    issuer_key_id: self.issuer_of(cert),
                    now,
                });
            }
            if input.block {
                let mut event = self.audit(
                    now,
                    caller.id.as_str(),
                    "identity.blocked",
                    format!("identity:{spiffe_id}"),
                );
                event.spiffe_id = Some(spiffe_id.to_string());
                event.request_id = Some(request_id.to_string());
                event.detail = Some(format!("reason {}", input.reason));
                events.push(event);
            }
            let request = NewRequest {
                caller: caller.id.to_string(),
                request_id: request_id.to_string(),
                kind: RequestKind::RevokeIdentity,
                payload_hash: hash.clone(),
                state: RequestState::Issued,
                reason: None,
                spiffe_id: spiffe_id.to_string(),
                serial: None,
                token_id: None,
                token_expires_at: None,
                decision: Some(decision.clone()),
                now,
                risk: None,
                hold: None,
            };
            let scope = IdentityScope {
                spiffe_id: spiffe_id.to_string(),
                block: input.block.then_some(input.reason),
            };
            match self
                .store
                .revoke(request, revocations, Some(scope), events)
                .await
            {
                Ok(Revoked::New(revocations)) => {
                    return Ok(IdentityRevoked {
                        revocations,
                        blocked: input.block,
                    });
                }
                Ok(Revoked::Duplicate(existing)) => {
                    return self.identity_answer(&existing, &hash).await;
                }
                // A certificate of the identity was issued, renewed or revoked meanwhile.
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::InProgress)
    }

    async fn identity_answer(
        &self,
        existing: &RequestRecord,
        hash: &str,
    ) -> Result<IdentityRevoked, Error> {
        let revocations = self
            .replay_revocations(existing, RequestKind::RevokeIdentity, hash)
            .await?;
        let blocked = self
            .store
            .identity_block(&existing.spiffe_id)
            .await?
            .is_some();
        Ok(IdentityRevoked {
            revocations,
            blocked,
        })
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

/// RevokeIdentity as the api hands it over.
#[derive(Debug, Clone)]
pub struct RevokeIdentityInput {
    pub request_id: String,
    pub spiffe_id: String,
    pub reason: RevocationReason,
    pub block: bool,
}

/// What RevokeIdentity did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRevoked {
    pub revocations: Vec<RevocationRecord>,
    pub blocked: bool,
}

/// A stored certificate's status at `now` (`None`: never issued here).
fn classify(stored: Option<&StoredStatus>, now: OffsetDateTime) -> CertificateStatus {
    match stored {
        None => CertificateStatus::Unknown,
        Some(c) if c.state == CertState::Revoked => match &c.revocation {
            Some(r) => CertificateStatus::Revoked(r.clone()),
            // Pruned: only entries past notAfter are.
            None => CertificateStatus::Expired {
                not_after: c.not_after,
            },
        },
        Some(c) if now >= c.not_after => CertificateStatus::Expired {
            not_after: c.not_after,
        },
        Some(c) if c.state == CertState::Superseded => CertificateStatus::Superseded {
            not_after: c.not_after,
        },
        Some(c) => CertificateStatus::Good {
            not_after: c.not_after,
        },
    }
}

impl CertificateStatus {
    /// The status as OCSP states it. A superseded certificate is still good until its notAfter.
    /// Past its notAfter Mintgate vouches for nothing: the revocation of an expired certificate
    /// may have been pruned, so "good" could be a lie; such a certificate is unknown.
    pub fn ocsp(&self) -> OcspStatus {
        match self {
            Self::Good { .. } | Self::Superseded { .. } => OcspStatus::Good,
            Self::Revoked(r) => OcspStatus::Revoked {
                revoked_at: r.revoked_at,
                reason: r.reason,
            },
            Self::Expired { .. } | Self::Unknown => OcspStatus::Unknown,
        }
    }
}

/// How often RevokeIdentity re-reads the identity's certificates when they change under it.
const IDENTITY_ATTEMPTS: usize = 5;

fn no_entry() -> Error {
    Error::Internal("a recorded revocation has no log entry".into())
}

impl<S: CertificateStore> Mintgate<S> {
    /// The key id of the CA that signed `cert`: as recorded, else as the certificate names it
    /// (one stored by a release without the CA registry), else the ACTIVE CA's.
    fn issuer_of(&self, cert: &crate::model::CertificateRecord) -> String {
        cert.issuer_key_id
            .clone()
            .or_else(|| authority_key_id(&cert.der))
            .unwrap_or_else(|| self.signer.issuer_key_id())
    }

    /// Revocation/WatchRevocations: whether `caller` may subscribe.
    pub async fn authorize_watch(&self, caller: &Caller) -> Result<(), Error> {
        self.authorize(
            caller,
            Operation::WatchRevocations,
            Target::TrustDomain(&self.trust_domain),
        )
        .await
        .map(drop)
    }
}

/// The hex authority key identifier of the certificate `der`, if it has one.
fn authority_key_id(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    crate::key_ids::authority_key_id(&cert)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_certificate_names_its_issuer_key_when_the_store_does_not() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.use_authority_key_identifier_extension = true;
        let named = leaf.signed_by(&leaf_key, &issuer).unwrap();
        leaf.use_authority_key_identifier_extension = false;
        let unnamed = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let (_, parsed) = X509Certificate::from_der(ca_cert.der()).unwrap();
        let ski = crate::key_ids::subject_key_id(&parsed);
        assert!(ski.is_some());
        assert_eq!(super::authority_key_id(named.der()), ski);
        assert_eq!(super::authority_key_id(unnamed.der()), None);
        assert_eq!(super::authority_key_id(b"not a certificate"), None);
    }
    use time::OffsetDateTime;

    use super::{CertificateStatus, OcspStatus};
    use crate::Serial;
    use crate::model::{RevocationReason, RevocationRecord};

    #[test]
    fn ocsp_vouches_only_for_unexpired_certificates_issued_here() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let record = RevocationRecord {
            seq: 1,
            serial: Serial::from_random([1; 17]),
            spiffe_id: "spiffe://dev.mintgate.local/workload/web".into(),
            reason: RevocationReason::KeyCompromise,
            revoked_at: at,
            not_after: at,
            issuer_key_id: "00".into(),
            issuer: false,
            revoked_by: "spiffe://dev.mintgate.local/operator/admin".into(),
        };
        let cases = [
            (CertificateStatus::Good { not_after: at }, OcspStatus::Good),
            // Renewed, yet valid until its notAfter.
            (
                CertificateStatus::Superseded { not_after: at },
                OcspStatus::Good,
            ),
            (
                CertificateStatus::Revoked(record),
                OcspStatus::Revoked {
                    revoked_at: at,
                    reason: RevocationReason::KeyCompromise,
                },
            ),
            // Its revocation may have been pruned: never "good".
            (
                CertificateStatus::Expired { not_after: at },
                OcspStatus::Unknown,
            ),
            (CertificateStatus::Unknown, OcspStatus::Unknown),
        ];
        for (status, ocsp) in cases {
            assert_eq!(status.ocsp(), ocsp, "{status:?}");
        }
    }
}
