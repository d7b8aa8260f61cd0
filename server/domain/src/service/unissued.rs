//! Enroll and Renew requests that are not signed at once: refused by attestation, the CSR
//! profile or policy (recorded DENIED or REJECTED), or held by policy for approvers (recorded
//! PENDING_APPROVAL with its terms and reported).

use time::OffsetDateTime;

use super::Mintgate;
use super::holds::{HoldChange, HoldEvent};
use super::issuance::{Approval, Held, IssueInput, IssueOutcome, request_subject};
use crate::csr::validate_csr;
use crate::error::AttestationError;
use crate::lifecycle::{RequestEvent, RequestState, transition_request};
use crate::model::{Caller, HoldTerms, NewRequest, RequestKind};
use crate::policy::{Hold, PolicyDecision};
use crate::store::{CertificateStore, Inserted, StoreError, TokenUse};
use crate::{Error, ErrorClass, RequestId};

impl<S: CertificateStore> Mintgate<S> {
    /// A refusal the caller caused is recorded with its reason, as a DENIED (attestation, policy,
    /// lifecycle) or REJECTED (malformed input) request and its audit event, in one transaction:
    /// who asked for what, and why not. A retry of it gets `REQUEST_CLOSED`. System faults are
    /// not recorded: the same request id may be retried.
    pub(super) async fn refuse(
        &self,
        caller: &Caller,
        request_id: &RequestId,
        kind: RequestKind,
        input: &IssueInput,
        hash: String,
        error: Error,
    ) -> Result<IssueOutcome, Error> {
        let event = match error.class() {
            ErrorClass::InvalidArgument => RequestEvent::Reject,
            ErrorClass::PermissionDenied | ErrorClass::FailedPrecondition => RequestEvent::Deny,
            _ => return Err(error),
        };
        let state = transition_request(RequestState::Received, RequestEvent::Verify)
            .and_then(|s| transition_request(s, event))?;
        let now = self.clock.now();
        // The identity asked for, when the CSR can be read at all.
        let spiffe_id = validate_csr(&input.csr, &self.trust_domain)
            .map(|csr| csr.spiffe_id.to_string())
            .unwrap_or_default();
        let action = match state {
            RequestState::Rejected => "request.rejected",
            _ => "request.denied",
        };
        let (decision, risk) = match &error {
            Error::Denied(denied) => (Some(denied.decision.clone()), denied.risk.clone()),
            _ => (None, None),
        };
        let mut audit = self.audit(
            now,
            caller.id.as_str(),
            action,
            request_subject(caller, request_id),
        );
        audit.spiffe_id = Some(spiffe_id.clone()).filter(|s| !s.is_empty());
        audit.request_id = Some(request_id.to_string());
        audit.policy_rule = decision
            .as_ref()
            .map(PolicyDecision::policies_text)
            .filter(|ids| !ids.is_empty());
        audit.detail = Some(format!(
            "{kind} RECEIVED->{} {}{}",
            state.as_str(),
            error.reason(),
            risk.as_ref().map(|r| format!(", {r}")).unwrap_or_default()
        ));
        let request = NewRequest {
            caller: caller.id.to_string(),
            request_id: request_id.to_string(),
            kind,
            payload_hash: hash.clone(),
            state,
            reason: Some(error.reason().to_owned()),
            spiffe_id,
            serial: None,
            token_id: None,
            token_expires_at: None,
            decision,
            now,
            risk,
            hold: None,
        };
        match self
            .store
            .insert_request(request, None, vec![audit])
            .await?
        {
            Inserted::New(_) => Err(error),
            Inserted::Duplicate(existing) => {
                self.replay(caller, kind, input, *existing, &hash).await
            }
        }
    }

    /// Records a request policy held: PENDING_APPROVAL with its terms, its risk and its audit
    /// event (the join token it came with is used up by it), and reports it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn hold(
        &self,
        caller: &Caller,
        request_id: &RequestId,
        kind: RequestKind,
        input: &IssueInput,
        hash: String,
        approval: Approval,
        hold: Hold,
        now: OffsetDateTime,
    ) -> Result<IssueOutcome, Error> {
        let state = transition_request(RequestState::Received, RequestEvent::Verify)
            .and_then(|s| transition_request(s, RequestEvent::HoldForApproval))?;
        let terms = HoldTerms {
            reason: hold.reason.clone(),
            quorum: hold.quorum,
            expires_at: now + self.holds.expiry,
        };
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "request.held",
            request_subject(caller, request_id),
        );
        event.spiffe_id = Some(approval.csr.spiffe_id.to_string());
        event.dns_names = approval.csr.dns_names.clone();
        event.key_type = Some(approval.csr.key_type.to_string());
        event.request_id = Some(request_id.to_string());
        event.policy_rule = Some(format!(
            "{}; hold: {}",
            approval.grant.decision.policies_text(),
            hold.policies.join(",")
        ));
        event.detail = Some(format!(
            "{kind} RECEIVED->VERIFIED->PENDING_APPROVAL: {} (quorum {}, expires at {}), {}",
            terms.reason,
            terms.quorum,
            terms.expires_at.unix_timestamp(),
            approval.risk
        ));
        let request = NewRequest {
            caller: caller.id.to_string(),
            request_id: request_id.to_string(),
            kind,
            payload_hash: hash.clone(),
            state,
            reason: None,
            spiffe_id: approval.csr.spiffe_id.to_string(),
            serial: None,
            token_id: approval.token.clone(),
            token_expires_at: None,
            decision: Some(approval.grant.decision.clone()),
            now,
            risk: Some(approval.risk.clone()),
            hold: Some(terms),
        };
        let token = approval.token.as_ref().map(|token_id| TokenUse {
            token_id: token_id.clone(),
            used_by: caller.id.to_string(),
            now,
        });
        match self.store.insert_request(request, token, vec![event]).await {
            Ok(Inserted::New(pk)) => {
                let stored = self
                    .store
                    .request_by_pk(pk)
                    .await?
                    .ok_or(Error::Internal("held request vanished".into()))?;
                let hold = self.view(stored).await?;
                self.observer.hold_changed(&HoldEvent {
                    change: HoldChange::Held,
                    hold: hold.clone(),
                });
                Ok(IssueOutcome::Held(Held {
                    hold,
                    retry_after: self.holds.retry_after,
                }))
            }
            Ok(Inserted::Duplicate(existing)) => {
                self.replay(caller, kind, input, *existing, &hash).await
            }
            Err(StoreError::Conflict(_)) => Err(AttestationError::JoinTokenUsed.into()),
            Err(e) => Err(e.into()),
        }
    }
}
