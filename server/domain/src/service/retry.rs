//! Retries of an Enroll or Renew: a request id seen before gets the answer it got, waits for an
//! attempt still signing it, or takes over a request whose attempt failed or whose lease lapsed
//! (DESIGN §5), with a fresh serial.

use std::time::Duration;

use super::Mintgate;
use super::issuance::{Held, IssueInput, IssueOutcome, Issued, request_subject};
use super::lease::Holders;
use crate::hold::HoldError;
use crate::lifecycle::{RequestEvent, RequestState, transition_request};
use crate::model::{Caller, RequestKind, RequestRecord};
use crate::store::CertificateStore;
use crate::{Error, RequestId, Serial};

/// How long a duplicate waits for the request it duplicates to finish, and how often it looks.
const DUPLICATE_WAIT: Duration = Duration::from_secs(10);
const DUPLICATE_POLL: Duration = Duration::from_millis(10);

impl<S: CertificateStore> Mintgate<S> {
    /// A retry with a request id we have seen: the same answer, or a takeover of a request whose
    /// attempt failed or whose process died after recording it.
    pub(super) async fn replay(
        &self,
        caller: &Caller,
        kind: RequestKind,
        input: &IssueInput,
        mut existing: RequestRecord,
        hash: &str,
    ) -> Result<IssueOutcome, Error> {
        if existing.payload_hash != hash || existing.kind != kind {
            return Err(Error::IdempotencyKeyReused);
        }
        let deadline = self.clock.now() + DUPLICATE_WAIT;
        let mut holders = Holders::default();
        loop {
            let now = self.clock.now();
            match existing.state {
                RequestState::Issued => {
                    return self
                        .stored_answer(&existing, input)
                        .await
                        .map(IssueOutcome::Issued);
                }
                RequestState::Failed => {
                    return self.retake(caller, kind, input, existing, None).await;
                }
                // Released by approvers: nothing reserved or signed yet, so take it now.
                RequestState::Approved if existing.serial.is_none() => {
                    let why = Some("released by approvers".to_owned());
                    return self.retake(caller, kind, input, existing, why).await;
                }
                RequestState::Approved => {
                    if let Some(lapse) = self.lease_lapse(&existing, now, &mut holders).await? {
                        let why = Some(lapse.to_string());
                        return self.retake(caller, kind, input, existing, why).await;
                    }
                }
                RequestState::PendingApproval => {
                    let expired = existing.hold.as_ref().is_none_or(|t| t.expires_at <= now);
                    if expired {
                        self.expire(existing).await?;
                        return Err(HoldError::Expired.into());
                    }
                    return Ok(IssueOutcome::Held(Held {
                        hold: self.view(existing).await?,
                        retry_after: self.holds.retry_after,
                    }));
                }
                RequestState::Expired | RequestState::Denied if existing.hold.is_some() => {
                    return Err(self.closed(&existing).await?);
                }
                other => {
                    return Err(Error::RequestClosed {
                        state: other.as_str(),
                        reason: existing.reason.unwrap_or_default(),
                    });
                }
            }
            if now >= deadline {
                return Err(Error::InProgress);
            }
            self.clock.sleep(DUPLICATE_POLL).await;
            existing = self
                .store
                .find_request(&existing.caller, &existing.request_id)
                .await?
                .ok_or(Error::Internal("request vanished".into()))?;
        }
    }

    /// The answer a retry of `request` gets: its certificate, and what cut its lifetime (the
    /// retry asks for the same ttl, its payload being the same).
    async fn stored_answer(
        &self,
        request: &RequestRecord,
        input: &IssueInput,
    ) -> Result<Issued, Error> {
        let serial = request
            .serial
            .clone()
            .ok_or(Error::Internal("issued request without serial".into()))?;
        let cert = self
            .store
            .certificate(&serial)
            .await?
            .ok_or(Error::Internal("issued request without certificate".into()))?;
        let granted = cert.not_after - (cert.not_before + self.signer.backdate());
        let ttl_cut = input
            .ttl
            .is_some_and(|(secs, _)| secs > granted.whole_seconds());
        Ok(self.issued(
            serial,
            cert.spiffe_id,
            cert.chain_pem,
            cert.not_before,
            cert.not_after,
            ttl_cut,
        ))
    }

    /// Decides again and reserves a fresh serial; the abandoned one stays in the audit trail
    /// (it may have been signed by a process that died, so it is never reused). `why` says why
    /// an APPROVED request is taken over. A hold the new decision asks for is not applied: the
    /// request was approved once (by policy, or released by approvers) and the retry is about
    /// our failure, not a new ask; a block or a policy that now refuses it still refuses.
    async fn retake(
        &self,
        caller: &Caller,
        kind: RequestKind,
        input: &IssueInput,
        existing: RequestRecord,
        why: Option<String>,
    ) -> Result<IssueOutcome, Error> {
        let now = self.clock.now();
        let request_id = RequestId::parse(&existing.request_id)?;
        let approval = self
            .decide(caller, kind, input, now, existing.token_id.as_deref())
            .await?;
        if existing.state == RequestState::Approved {
            transition_request(existing.state, RequestEvent::Fail)?;
        }
        transition_request(RequestState::Failed, RequestEvent::Retry)?;
        let serial = self.new_serial();
        let abandoned = existing
            .serial
            .as_ref()
            .map(Serial::to_hex)
            .unwrap_or_default();
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "request.retried",
            request_subject(caller, &request_id),
        );
        event.request_id = Some(request_id.to_string());
        let why = why.map(|l| format!(" ({l})")).unwrap_or_default();
        event.policy_rule = Some(approval.grant.decision.policies_text());
        event.detail = Some(format!(
            "{}->APPROVED serial {serial}, abandoned serial {abandoned}{why}",
            existing.state.as_str()
        ));
        let _in_flight = self
            .in_flight
            .enter(caller.id.as_str(), request_id.as_str());
        let moved = self
            .store
            .move_request(
                existing.pk,
                (existing.state, existing.serial.clone()),
                (RequestState::Approved, Some(serial.clone())),
                now,
                vec![event],
            )
            .await?;
        if !moved {
            return Err(Error::InProgress);
        }
        self.sign_and_record(caller, existing.pk, &request_id, serial, &approval)
            .await
            .map(IssueOutcome::Issued)
    }
}
