//! Enroll and Renew: verify the caller, check the CSR and policy, record the intent with its
//! serial, sign, then record the certificate. Idempotent on (caller, request_id); retries are
//! answered in `retry`.

use std::time::Duration;

use time::OffsetDateTime;

use super::attest::{Attested, Evidence};
use super::holds::HoldView;
use super::{Mintgate, payload_hash};
use crate::csr::{ValidatedCsr, validate_csr};
use crate::error::AttestationError;
use crate::hold::RiskQuery;
use crate::lifecycle::{
    CertEvent, RequestEvent, RequestState, transition_cert, transition_request,
};
use crate::lifetime::{Clamp, renew_after};
use crate::model::{Caller, CallerKind, NewRequest, RequestKind, RequestRecord};
use crate::policy::{DecisionInput, Grant, Principal};
use crate::ports::IssueSpec;
use crate::risk::{self, RiskAssessment, RiskFacts, RiskInput};
use crate::store::{CertificateStore, Inserted, NewCertificate, StoreError, TokenUse};
use crate::{Error, RequestId, Serial, Ttl};

/// Enroll or Renew as the api hands it over (not yet validated).
#[derive(Debug, Clone)]
pub struct IssueInput {
    pub request_id: String,
    pub csr: Vec<u8>,
    /// Requested lifetime as protobuf Duration parts (seconds, nanos).
    pub ttl: Option<(i64, i32)>,
    /// Enroll only.
    pub join_token: Option<String>,
    /// Enroll only: a Kubernetes service-account token for the `jwt` attestor.
    pub service_account_token: Option<String>,
}

/// An issued certificate as returned to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub chain_pem: String,
    pub serial: Serial,
    pub spiffe_id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The lifetime given, from issuance (not the backdated notBefore) to notAfter.
    pub granted: Duration,
    /// Why `granted` is shorter than asked for, if it is.
    pub clamp: Option<Clamp>,
    /// Half-way through the lifetime, and never before the answer is sent.
    pub renew_after: OffsetDateTime,
    pub trust_bundle_pem: String,
}

/// What Enroll and Renew answer: a certificate, or a hold to wait through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued(Issued),
    Held(Held),
}

/// A request waiting for approvers: ask again with the same request id after `retry_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub hold: HoldView,
    pub retry_after: Duration,
}

/// Everything decided before the intent is recorded.
pub(super) struct Approval {
    pub(super) csr: ValidatedCsr,
    pub(super) grant: Grant,
    ttl: Ttl,
    /// Whether the ttl asked for was cut to the policy maximum.
    ttl_cut: bool,
    /// The end of validity as of the decision (cut to the CA's notAfter).
    not_after: OffsetDateTime,
    pub(super) token: Option<String>,
    /// The attestors that vouched for the caller.
    via: Vec<&'static str>,
    /// The service account a `jwt` token named.
    account: Option<crate::jwt::ServiceAccount>,
    supersedes: Option<Serial>,
    pub(super) risk: RiskAssessment,
}

impl Approval {
    /// The row recording this decision in `state` (the caller sets its serial or its hold),
    /// and the use of the join token that came with it, written in the same transaction.
    pub(super) fn new_request(
        &self,
        caller: &Caller,
        request_id: &RequestId,
        kind: RequestKind,
        hash: &str,
        state: RequestState,
        now: OffsetDateTime,
    ) -> (NewRequest, Option<TokenUse>) {
        let request = NewRequest {
            caller: caller.id.to_string(),
            request_id: request_id.to_string(),
            kind,
            payload_hash: hash.to_owned(),
            state,
            reason: None,
            spiffe_id: self.csr.spiffe_id.to_string(),
            serial: None,
            token_id: self.token.clone(),
            token_expires_at: None,
            decision: Some(self.grant.decision.clone()),
            now,
            risk: Some(self.risk.clone()),
            hold: None,
        };
        let token = self.token.as_ref().map(|token_id| TokenUse {
            token_id: token_id.clone(),
            used_by: caller.id.to_string(),
            now,
        });
        (request, token)
    }
}

impl<S: CertificateStore> Mintgate<S> {
    /// Provisioning/Enroll: a first certificate for a node-attested workload, or a hold.
    pub async fn enroll(&self, caller: &Caller, input: IssueInput) -> Result<IssueOutcome, Error> {
        self.issue(caller, RequestKind::Enroll, input).await
    }

    /// Provisioning/Renew: a new certificate for the caller's own identity, or a hold.
    pub async fn renew(&self, caller: &Caller, input: IssueInput) -> Result<IssueOutcome, Error> {
        self.issue(caller, RequestKind::Renew, input).await
    }

    /// Provisioning/GetRequest: one of the caller's own requests.
    pub async fn get_request(
        &self,
        caller: &Caller,
        request_id: &str,
    ) -> Result<RequestRecord, Error> {
        let request_id = RequestId::parse(request_id)?;
        self.store
            .find_request(caller.id.as_str(), request_id.as_str())
            .await?
            .ok_or(Error::NotFound("request"))
    }

    async fn issue(
        &self,
        caller: &Caller,
        kind: RequestKind,
        input: IssueInput,
    ) -> Result<IssueOutcome, Error> {
        let request_id = RequestId::parse(&input.request_id)?;
        let ttl_text = input
            .ttl
            .map(|(s, n)| format!("{s}.{n}"))
            .unwrap_or_default();
        let mut fields: Vec<&[u8]> = vec![
            kind.as_str().as_bytes(),
            &input.csr,
            ttl_text.as_bytes(),
            input.join_token.as_deref().unwrap_or_default().as_bytes(),
        ];
        // Only when present, so requests without one hash as they always did.
        if let Some(token) = input.service_account_token.as_deref() {
            fields.push(token.as_bytes());
        }
        let hash = payload_hash(&fields);
        let now = self.clock.now();
        // One read answers whether the request is recorded, whether its identity is blocked
        // and the risk facts. A CSR that cannot be read names no identity: the request is then
        // looked up on its own, as a retry of a recorded refusal is answered from the record.
        let read = match validate_csr(&input.csr, &self.trust_domain) {
            Ok(csr) => {
                let query = self.risk_query(caller, kind, &csr, now, Some(&request_id));
                let facts = self.store.risk_facts(query).await?;
                Ok((csr, facts))
            }
            Err(e) => Err(e),
        };
        let recorded = read.as_ref().map_or(true, |(_, f)| f.request_recorded);
        if recorded
            && let Some(existing) = self
                .store
                .find_request(caller.id.as_str(), request_id.as_str())
                .await?
        {
            return self.replay(caller, kind, &input, existing, &hash).await;
        }
        let decided = match read {
            Ok((csr, facts)) => {
                self.decide_read(caller, kind, &input, csr, facts, now, None)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        let approval = match decided {
            Ok(a) => a,
            Err(e) => {
                return self
                    .refuse(caller, &request_id, kind, &input, hash, e)
                    .await;
            }
        };
        if let Some(hold) = approval.grant.hold.clone() {
            return self
                .hold(caller, &request_id, kind, &input, hash, approval, hold, now)
                .await;
        }
        let state = transition_request(RequestState::Received, RequestEvent::Verify)
            .and_then(|s| transition_request(s, RequestEvent::Approve))?;
        let serial = self.new_serial();
        let (mut request, token) =
            approval.new_request(caller, &request_id, kind, &hash, state, now);
        request.serial = Some(serial.clone());
        let events = self.approval_events(caller, &request_id, kind, &approval, &serial, now);
        let in_flight = self
            .in_flight
            .enter(caller.id.as_str(), request_id.as_str());
        match self.store.insert_request(request, token, events).await {
            Ok(Inserted::New(pk)) => self
                .sign_and_record(caller, pk, &request_id, serial, &approval)
                .await
                .map(IssueOutcome::Issued),
            Ok(Inserted::Duplicate(existing)) => {
                drop(in_flight);
                self.replay(caller, kind, &input, *existing, &hash).await
            }
            Err(StoreError::Conflict(_)) => Err(AttestationError::JoinTokenUsed.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Attestation, CSR profile and policy: everything that can refuse a request.
    pub(super) async fn decide(
        &self,
        caller: &Caller,
        kind: RequestKind,
        input: &IssueInput,
        now: OffsetDateTime,
        consumed_by_this_request: Option<&str>,
    ) -> Result<Approval, Error> {
        let csr = validate_csr(&input.csr, &self.trust_domain)?;
        let query = self.risk_query(caller, kind, &csr, now, None);
        let facts = self.store.risk_facts(query).await?;
        self.decide_read(
            caller,
            kind,
            input,
            csr,
            facts,
            now,
            consumed_by_this_request,
        )
        .await
    }

    /// What is read before deciding, for `caller` asking for the CSR's identity; with
    /// `request_id`, also whether that request is recorded.
    fn risk_query<'a>(
        &self,
        caller: &'a Caller,
        kind: RequestKind,
        csr: &'a ValidatedCsr,
        now: OffsetDateTime,
        request_id: Option<&'a RequestId>,
    ) -> RiskQuery<'a> {
        RiskQuery {
            caller: caller.id.as_str(),
            // Only an enrolling node is a node principal; any other pairing is refused.
            node: kind == RequestKind::Enroll && caller.kind == CallerKind::Node,
            spiffe_id: csr.spiffe_id.as_str(),
            now,
            identities_cap: self.risk.many_identities_per_hour,
            request_id: request_id.map(RequestId::as_str),
        }
    }

    /// [`Self::decide`] once the CSR is valid and the facts are read.
    #[allow(clippy::too_many_arguments)]
    async fn decide_read(
        &self,
        caller: &Caller,
        kind: RequestKind,
        input: &IssueInput,
        csr: ValidatedCsr,
        facts: RiskFacts,
        now: OffsetDateTime,
        consumed_by_this_request: Option<&str>,
    ) -> Result<Approval, Error> {
        // Any valid lifetime; the policy's maximum cuts it once policy has decided.
        let requested = input
            .ttl
            .map(|(s, n)| Ttl::from_parts(s, n, Duration::MAX))
            .transpose()?;
        if facts.identity_blocked {
            return Err(Error::IdentityBlocked);
        }
        let mut attested = Attested::default();
        let mut supersedes = None;
        let principal = match (kind, caller.kind) {
            (RequestKind::Enroll, CallerKind::Node) => {
                let evidence = Evidence {
                    wanted: &csr.spiffe_id,
                    join_token: input.join_token.as_deref(),
                    service_account_token: input.service_account_token.as_deref(),
                    now,
                    consumed_by_this_request,
                };
                for attestor in &self.attestors {
                    if attestor
                        .attest(&self.store, caller, evidence, &mut attested)
                        .await?
                    {
                        attested.via.push(attestor.name());
                    }
                }
                let Some(node) = &attested.node else {
                    return Err(AttestationError::WrongCallerKind(caller.kind.as_str()).into());
                };
                Principal::Node(node)
            }
            (RequestKind::Renew, CallerKind::Workload) => {
                if csr.spiffe_id != caller.id {
                    return Err(AttestationError::IdentityMismatch.into());
                }
                let current = self
                    .store
                    .certificate(&caller.serial)
                    .await?
                    .ok_or(Error::NotFound("certificate"))?;
                transition_cert(current.state, CertEvent::Supersede, current.not_after, now)?;
                supersedes = Some(current.serial);
                attested.via.push("workload_cert");
                Principal::Workload(&caller.id)
            }
            (RequestKind::Enroll, CallerKind::Workload) if csr.spiffe_id != caller.id => {
                return Err(AttestationError::IdentityMismatch.into());
            }
            (_, other) => return Err(AttestationError::WrongCallerKind(other.as_str()).into()),
        };
        let node = matches!(principal, Principal::Node(_));
        let risk = risk::assess(
            &self.risk,
            &RiskInput {
                ttl: requested.map(|t| t.as_duration()),
                key_type: csr.key_type,
                node_cert_not_before: node.then_some(caller.not_before),
                now,
                facts: &facts,
            },
        );
        self.observer.risk_assessed(&risk);
        let grant = self.decide_issuance(&DecisionInput {
            principal,
            spiffe_id: &csr.spiffe_id,
            ttl: requested.map(|t| t.as_duration()),
            key_type: csr.key_type,
            dns_names: &csr.dns_names,
            attestors: &attested.via,
            join_token: attested.bound_identity.as_ref() == Some(&csr.spiffe_id),
            kubernetes: attested.service_account.as_ref(),
            risk: &risk,
        })?;
        let (ttl, ttl_cut) = match requested {
            Some(t) if t.as_duration() > grant.max_ttl => (Ttl::from_policy(grant.max_ttl), true),
            Some(t) => (t, false),
            None => (Ttl::from_policy(grant.max_ttl), false),
        };
        // Last, and before anything is recorded: a CA too close to its end is a system fault,
        // so the request stays unrecorded and its id can be retried once the CA is replaced.
        let not_after = self.ca_window().end_of(now, ttl.as_duration())?;
        Ok(Approval {
            csr,
            grant,
            ttl,
            ttl_cut,
            not_after,
            token: attested.join_token_id,
            via: attested.via,
            account: attested.service_account,
            supersedes,
            risk,
        })
    }

    pub(super) async fn sign_and_record(
        &self,
        caller: &Caller,
        pk: i64,
        request_id: &RequestId,
        serial: Serial,
        approval: &Approval,
    ) -> Result<Issued, Error> {
        let now = self.clock.now();
        let not_after = match self.ca_window().end_of(now, approval.ttl.as_duration()) {
            Ok(t) => t,
            Err(e) => {
                // The CA's last minimum lifetime began since the decision: FAILED, so a retry
                // with the same request id takes the request over once the CA is replaced.
                self.fail(caller, pk, request_id, &serial, "CA_EXPIRING")
                    .await;
                return Err(e.into());
            }
        };
        let backdate = self.signer.backdate();
        let spec = IssueSpec {
            spki_der: &approval.csr.spki_der,
            key_type: approval.csr.key_type,
            spiffe_id: &approval.csr.spiffe_id,
            dns_names: &approval.csr.dns_names,
            serial: &serial,
            not_before: now - backdate,
            not_after,
            server_auth: approval.grant.server_auth,
        };
        let signed = match self.signer.sign(&spec) {
            Ok(s) => s,
            Err(e) => {
                self.fail(caller, pk, request_id, &serial, "SIGNER_FAILED")
                    .await;
                return Err(Error::Internal(e.into()));
            }
        };
        transition_request(RequestState::Approved, RequestEvent::Sign)?;
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "certificate.issued",
            format!("serial:{serial}"),
        );
        event.spiffe_id = Some(approval.csr.spiffe_id.to_string());
        event.dns_names = approval.csr.dns_names.clone();
        event.key_type = Some(approval.csr.key_type.to_string());
        event.not_before = Some(signed.not_before.unix_timestamp());
        event.not_after = Some(signed.not_after.unix_timestamp());
        event.policy_rule = Some(approval.grant.decision.policies_text());
        event.request_id = Some(request_id.to_string());
        event.detail = Some(match self.clamp(signed.not_after, approval.ttl_cut) {
            None => "APPROVED->ISSUED".into(),
            Some(clamp) => format!("APPROVED->ISSUED, lifetime cut ({clamp})"),
        });
        let mut events = vec![event];
        if let Some(old) = &approval.supersedes {
            let mut e = self.audit(
                now,
                caller.id.as_str(),
                "certificate.superseded",
                format!("serial:{old}"),
            );
            e.spiffe_id = Some(approval.csr.spiffe_id.to_string());
            e.request_id = Some(request_id.to_string());
            e.detail = Some(format!("ACTIVE->SUPERSEDED by {serial}"));
            events.push(e);
        }
        let certificate = NewCertificate {
            serial: serial.clone(),
            spiffe_id: approval.csr.spiffe_id.to_string(),
            key_type: approval.csr.key_type.to_string(),
            not_before: signed.not_before,
            not_after: signed.not_after,
            der: signed.der,
            chain_pem: signed.chain_pem.clone(),
            issued_at: now,
            issuer_key_id: signed.issuer_key_id.clone(),
        };
        match self
            .store
            .complete_issuance(pk, certificate, approval.supersedes.clone(), events)
            .await
        {
            Ok(()) => Ok(self.issued(
                serial,
                approval.csr.spiffe_id.to_string(),
                signed.chain_pem,
                signed.not_before,
                signed.not_after,
                approval.ttl_cut,
            )),
            Err(StoreError::Conflict("identity blocked")) => {
                self.fail(caller, pk, request_id, &serial, "IDENTITY_BLOCKED")
                    .await;
                Err(Error::IdentityBlocked)
            }
            Err(StoreError::Conflict("certificate")) => {
                // The certificate being renewed was revoked or renewed meanwhile.
                self.fail(caller, pk, request_id, &serial, "CERTIFICATE_CHANGED")
                    .await;
                Err(Error::CertificateChanged)
            }
            Err(StoreError::Conflict(_)) => {
                // Another attempt with this request id completed or took over the request
                // meanwhile: its answer is the one to give, and a retry gets it. Not the
                // caller's fault, and not this attempt's to mark FAILED.
                Err(Error::InProgress)
            }
            Err(e) => {
                self.fail(caller, pk, request_id, &serial, "STORE_FAILED")
                    .await;
                Err(e.into())
            }
        }
    }

    /// The audit event of a decided request: who asked for what, with which key and names.
    pub(super) fn decided_event(
        &self,
        caller: &Caller,
        request_id: &RequestId,
        action: &str,
        approval: &Approval,
        now: OffsetDateTime,
    ) -> crate::audit::AuditEvent {
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            action,
            request_subject(caller, request_id),
        );
        event.spiffe_id = Some(approval.csr.spiffe_id.to_string());
        event.dns_names = approval.csr.dns_names.clone();
        event.key_type = Some(approval.csr.key_type.to_string());
        event.request_id = Some(request_id.to_string());
        event
    }

    fn approval_events(
        &self,
        caller: &Caller,
        request_id: &RequestId,
        kind: RequestKind,
        approval: &Approval,
        serial: &Serial,
        now: OffsetDateTime,
    ) -> Vec<crate::audit::AuditEvent> {
        let mut event = self.decided_event(caller, request_id, "request.approved", approval, now);
        event.not_after = Some(approval.not_after.unix_timestamp());
        event.policy_rule = Some(approval.grant.decision.policies_text());
        let mut via = approval.via.join("+");
        if let Some(t) = &approval.token {
            via.push_str(&format!(" (join token {t})"));
        }
        if let Some(sa) = &approval.account {
            via.push_str(&format!(" (service account {}/{}", sa.namespace, sa.name));
            if let Some(pod) = &sa.pod {
                via.push_str(&format!(", pod {pod}"));
            }
            via.push(')');
        }
        event.detail = Some(format!(
            "{kind} RECEIVED->VERIFIED->APPROVED via {via}, serial {serial}, {}",
            approval.risk
        ));
        vec![event]
    }

    /// What cut a certificate ending at `not_after` short: the CA's notAfter (see
    /// [`crate::lifetime::CaWindow::clamp`]), else the policy maximum when `ttl_cut`.
    fn clamp(&self, not_after: OffsetDateTime, ttl_cut: bool) -> Option<Clamp> {
        let policy = ttl_cut.then_some(Clamp::PolicyMaxTtl);
        self.ca_window().clamp(not_after).or(policy)
    }

    /// The answer for a certificate, fresh or stored. It was issued `backdate` after its
    /// notBefore (both whole seconds), so both paths tell the same story.
    pub(super) fn issued(
        &self,
        serial: Serial,
        spiffe_id: String,
        chain_pem: String,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        ttl_cut: bool,
    ) -> Issued {
        let issued_at = not_before + self.signer.backdate();
        Issued {
            chain_pem,
            serial,
            spiffe_id,
            not_before,
            not_after,
            granted: Duration::try_from(not_after - issued_at).unwrap_or_default(),
            clamp: self.clamp(not_after, ttl_cut),
            renew_after: renew_after(not_before, not_after, self.clock.now()),
            trust_bundle_pem: self.signer.trust_bundle_pem(),
        }
    }
}

pub(super) fn request_subject(caller: &Caller, request_id: &RequestId) -> String {
    format!("request:{}#{}", caller.id, request_id)
}
