//! Enroll and Renew requests that are not signed at once: refused by attestation, the CSR
//! profile or policy (recorded DENIED or REJECTED), held by policy for approvers (recorded
//! PENDING_APPROVAL with its terms and reported), or approved and then not signed (FAILED).

use time::OffsetDateTime;

use super::Mintgate;
use super::holds::{HoldChange, HoldEvent, HoldView};
use super::issuance::{Approval, Held, IssueInput, IssueOutcome, request_subject};
use crate::csr::validate_csr;
use crate::error::AttestationError;
use crate::lifecycle::{RequestEvent, RequestState, transition_request};
use crate::model::{Caller, HoldTerms, NewRequest, RequestKind};
use crate::policy::{Hold, PolicyDecision};
use crate::store::{CertificateStore, Inserted, StoreError};
use crate::{Error, ErrorClass, RequestId, Serial};

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
        let mut event = self.decided_event(caller, request_id, "request.held", &approval, now);
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
        let (mut request, token) =
            approval.new_request(caller, request_id, kind, &hash, state, now);
        request.hold = Some(terms.clone());
        // What approvers see of it once it is stored (no vote yet).
        let mut hold = HoldView {
            hold_id: String::new(),
            requester: request.caller.clone(),
            request_id: request.request_id.clone(),
            kind,
            spiffe_id: request.spiffe_id.clone(),
            state,
            terms,
            risk: request.risk.clone(),
            policy_version: Some(approval.grant.decision.policy_version.clone()),
            policies: approval.grant.decision.policies.clone(),
            votes: Vec::new(),
            // As stored: whole seconds.
            created_at: now.replace_nanosecond(0).unwrap_or(now),
        };
        match self.store.insert_request(request, token, vec![event]).await {
            Ok(Inserted::New(pk)) => {
                hold.hold_id = pk.to_string();
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

    /// Best effort APPROVED → FAILED; if it does not stick, the approval lease expires instead.
    pub(super) async fn fail(
        &self,
        caller: &Caller,
        pk: i64,
        request_id: &RequestId,
        serial: &Serial,
        reason: &str,
    ) {
        let now = self.clock.now();
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "request.failed",
            request_subject(caller, request_id),
        );
        event.request_id = Some(request_id.to_string());
        event.detail = Some(format!("APPROVED->FAILED {reason}"));
        let from = (RequestState::Approved, Some(serial.clone()));
        let to = (RequestState::Failed, Some(serial.clone()));
        let _ = self
            .store
            .move_request(pk, from, to, now, vec![event])
            .await;
    }
}
