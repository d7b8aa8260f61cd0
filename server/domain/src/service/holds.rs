//! Out-of-band approval of held requests (DESIGN §12): approvers list, approve and deny holds;
//! the sweeper expires the ones nobody decided in time. Each decision is one transaction with
//! its audit event, and every change is reported to the [`crate::ports::Observer`] so that
//! `Admin/WatchPending` can follow it.

use time::OffsetDateTime;

use crate::error::Error;
use crate::hold::{
    CastVote, HOLD_EXPIRED, HoldError, HoldFilter, MAX_PENDING, MAX_VOTE_REASON, VoteOutcome,
};
use crate::lifecycle::{RequestEvent, RequestState, transition_request};
use crate::model::{Caller, HoldTerms, HoldVote, RequestKind, RequestRecord};
use crate::policy::{Operation, Target};
use crate::risk::RiskAssessment;
use crate::store::{CertificateStore, StoreError};
use crate::{RequestId, SpiffeId};

use super::Mintgate;

/// A held request as approvers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    /// The request's primary key, as text: what Approve and Deny name.
    pub hold_id: String,
    /// Who asked: the enrolling node, or the renewing workload.
    pub requester: String,
    pub request_id: String,
    pub kind: RequestKind,
    pub spiffe_id: String,
    pub state: RequestState,
    pub terms: HoldTerms,
    pub risk: Option<RiskAssessment>,
    /// The policy version and `@id`s that granted it.
    pub policy_version: Option<String>,
    pub policies: Vec<String>,
    pub votes: Vec<HoldVote>,
    pub created_at: OffsetDateTime,
}

impl HoldView {
    /// Approvals cast so far.
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.approve).count()
    }
}

/// What happened to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange {
    /// A request was held.
    Held,
    /// An approver approved it; more approvals are needed.
    Approved,
    /// The quorum was reached: the requester's next call issues.
    Released,
    Denied,
    Expired,
}

impl HoldChange {
    pub const ALL: [Self; 5] = [
        Self::Held,
        Self::Approved,
        Self::Released,
        Self::Denied,
        Self::Expired,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Approved => "approved",
            Self::Released => "released",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }
}

/// A change and the hold as it is after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldEvent {
    pub change: HoldChange,
    pub hold: HoldView,
}

impl<S: CertificateStore> Mintgate<S> {
    /// Admin/ListPending: the holds waiting, oldest first.
    pub async fn list_pending(
        &self,
        caller: &Caller,
        filter: HoldFilter,
    ) -> Result<Vec<HoldView>, Error> {
        self.authorize(
            caller,
            Operation::ListPending,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        self.pending_views(&filter).await
    }

    /// Admin/WatchPending, before the stream starts: authorizes the caller and answers the
    /// holds waiting now (the api subscribes to changes first, so none falls between).
    pub async fn watch_pending(&self, caller: &Caller) -> Result<Vec<HoldView>, Error> {
        self.authorize(
            caller,
            Operation::WatchPending,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        self.pending_views(&HoldFilter::default()).await
    }

    async fn pending_views(&self, filter: &HoldFilter) -> Result<Vec<HoldView>, Error> {
        let now = self.clock.now();
        let mut views = Vec::new();
        for request in self.store.pending_holds(filter, MAX_PENDING).await? {
            // Past its expiry, a hold is no longer waiting (the sweeper records it soon).
            if request.hold.as_ref().is_some_and(|t| t.expires_at > now) {
                views.push(self.view(request).await?);
            }
        }
        Ok(views)
    }

    /// Admin/Approve: one approval; the one that completes the quorum releases the request.
    pub async fn approve_hold(
        &self,
        caller: &Caller,
        hold_id: &str,
        reason: &str,
    ) -> Result<HoldView, Error> {
        self.vote(caller, hold_id, reason, true).await
    }

    /// Admin/Deny: refuses the request (a reason is required).
    pub async fn deny_hold(
        &self,
        caller: &Caller,
        hold_id: &str,
        reason: &str,
    ) -> Result<HoldView, Error> {
        if reason.trim().is_empty() {
            return Err(HoldError::ReasonRequired.into());
        }
        self.vote(caller, hold_id, reason, false).await
    }

    async fn vote(
        &self,
        caller: &Caller,
        hold_id: &str,
        reason: &str,
        approve: bool,
    ) -> Result<HoldView, Error> {
        let pk = hold_id
            .parse::<i64>()
            .ok()
            .filter(|pk| *pk > 0)
            .ok_or(HoldError::HoldIdInvalid)?;
        let reason = reason.trim();
        if reason.len() > MAX_VOTE_REASON || reason.chars().any(char::is_control) {
            return Err(HoldError::ReasonInvalid.into());
        }
        let request = self
            .store
            .request_by_pk(pk)
            .await?
            .filter(|r| r.hold.is_some())
            .ok_or(Error::NotFound("hold"))?;
        let asked = SpiffeId::parse(&request.spiffe_id)?;
        let operation = if approve {
            Operation::Approve
        } else {
            Operation::Deny
        };
        let decision = self
            .authorize(caller, operation, Target::Identity(&asked))
            .await?;
        // The requester's own identities never count, admin included.
        if caller.id.as_str() == request.caller || caller.id == asked {
            return Err(HoldError::SelfApproval.into());
        }
        let now = self.clock.now();
        let terms = request.hold.clone().ok_or(Error::NotFound("hold"))?;
        if request.state != RequestState::PendingApproval {
            return Err(self.closed(&request).await?);
        }
        if terms.expires_at <= now {
            self.expire(request).await?;
            return Err(HoldError::Expired.into());
        }
        let event = if approve {
            RequestEvent::Approve
        } else {
            RequestEvent::Deny
        };
        let to = transition_request(RequestState::PendingApproval, event)?;
        let subject = hold_subject(&request);
        let action = if approve {
            "hold.approved"
        } else {
            "hold.denied"
        };
        let mut audit = self.audit(now, caller.id.as_str(), action, subject.clone());
        audit.spiffe_id = Some(request.spiffe_id.clone());
        audit.request_id = Some(request.request_id.clone());
        audit.policy_rule = Some(decision.policies_text());
        audit.detail = Some(match approve {
            true => format!("approval by {} ({reason})", caller.id),
            false => format!(
                "PENDING_APPROVAL->{to} {} by {} ({reason})",
                crate::hold::HOLD_DENIED,
                caller.id
            ),
        });
        let mut release = self.audit(now, caller.id.as_str(), "request.released", subject);
        release.spiffe_id = Some(request.spiffe_id.clone());
        release.request_id = Some(request.request_id.clone());
        release.detail = Some(format!(
            "PENDING_APPROVAL->APPROVED, quorum of {} reached",
            terms.quorum
        ));
        let vote = HoldVote {
            operator: caller.id.to_string(),
            approve,
            reason: reason.to_owned(),
            at: now,
        };
        let cast = CastVote {
            pk,
            vote,
            quorum: terms.quorum,
            audit: vec![audit],
            release_audit: vec![release],
        };
        let outcome = match self.store.cast_vote(cast).await {
            Ok(outcome) => outcome,
            Err(StoreError::Conflict("vote")) => return Err(HoldError::AlreadyVoted.into()),
            Err(StoreError::Conflict(_)) => {
                let now_stored = self.store.request_by_pk(pk).await?;
                return Err(match now_stored {
                    Some(r) => self.closed(&r).await?,
                    None => Error::NotFound("hold"),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let change = match outcome {
            VoteOutcome::Recorded => HoldChange::Approved,
            VoteOutcome::Released => HoldChange::Released,
            VoteOutcome::Denied => HoldChange::Denied,
        };
        let stored = self
            .store
            .request_by_pk(pk)
            .await?
            .ok_or(Error::NotFound("hold"))?;
        let view = self.view(stored).await?;
        self.observer.hold_changed(&HoldEvent {
            change,
            hold: view.clone(),
        });
        Ok(view)
    }

    /// Forgets risk counts that no window reaches any more. Returns how many rows went.
    pub async fn prune_risk_counts(&self) -> Result<u64, Error> {
        Ok(self.store.prune_risk_counts(self.clock.now()).await?)
    }

    /// `change` of hold `pk` as it stands now: what another replica's change looks like to this
    /// one's WatchPending streams. None when there is no such request.
    pub async fn hold_event(
        &self,
        pk: i64,
        change: HoldChange,
    ) -> Result<Option<HoldEvent>, Error> {
        let Some(request) = self.store.request_by_pk(pk).await? else {
            return Ok(None);
        };
        let hold = self.view(request).await?;
        Ok(Some(HoldEvent { change, hold }))
    }

    /// The sweeper: every hold whose expiry has passed becomes EXPIRED. Returns how many.
    pub async fn expire_holds(&self) -> Result<usize, Error> {
        let filter = HoldFilter {
            expired_at: Some(self.clock.now()),
            ..HoldFilter::default()
        };
        let mut expired = 0;
        for request in self.store.pending_holds(&filter, MAX_PENDING).await? {
            if self.expire(request).await? {
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// PENDING_APPROVAL → EXPIRED with its audit event; false when something else moved it.
    pub(super) async fn expire(&self, request: RequestRecord) -> Result<bool, Error> {
        let to = transition_request(request.state, RequestEvent::ApprovalTimeout)?;
        let now = self.clock.now();
        let mut audit = self.audit(now, "mintgate", "request.expired", hold_subject(&request));
        audit.spiffe_id = Some(request.spiffe_id.clone());
        audit.request_id = Some(request.request_id.clone());
        audit.detail = Some(format!("PENDING_APPROVAL->{to} {HOLD_EXPIRED}"));
        let moved = self
            .store
            .move_request(
                request.pk,
                (request.state, None),
                (to, None),
                now,
                vec![audit],
            )
            .await?;
        if moved {
            let mut view = self.view(request).await?;
            view.state = to;
            self.observer.hold_changed(&HoldEvent {
                change: HoldChange::Expired,
                hold: view,
            });
        }
        Ok(moved)
    }

    /// The refusal for a vote on, or a retry of, a request that is no longer pending.
    pub(super) async fn closed(&self, request: &RequestRecord) -> Result<Error, Error> {
        Ok(match request.state {
            RequestState::Expired => HoldError::Expired.into(),
            RequestState::Denied if request.hold.is_some() => {
                let votes = self.store.hold_votes(request.pk).await?;
                let denial = votes.into_iter().find(|v| !v.approve);
                HoldError::Denied {
                    reason: denial.map(|v| v.reason).unwrap_or_default(),
                }
                .into()
            }
            other => HoldError::NotPending(other.as_str()).into(),
        })
    }

    pub(super) async fn view(&self, request: RequestRecord) -> Result<HoldView, Error> {
        let votes = self.store.hold_votes(request.pk).await?;
        let terms = request
            .hold
            .ok_or(Error::Internal("a hold without its terms".into()))?;
        let (policy_version, policies) = match request.decision {
            Some(d) => (Some(d.policy_version), d.policies),
            None => (None, Vec::new()),
        };
        Ok(HoldView {
            hold_id: request.pk.to_string(),
            requester: request.caller,
            request_id: request.request_id,
            kind: request.kind,
            spiffe_id: request.spiffe_id,
            state: request.state,
            terms,
            risk: request.risk,
            policy_version,
            policies,
            votes,
            created_at: request.created_at,
        })
    }
}

fn hold_subject(request: &RequestRecord) -> String {
    match RequestId::parse(&request.request_id) {
        Ok(id) => format!("request:{}#{}", request.caller, id),
        Err(_) => format!("request:{}", request.pk),
    }
}
