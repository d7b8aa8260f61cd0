//! Who may do what: every operator and revocation RPC asks the active Cedar policy, with an
//! operator's role bindings from the store (DESIGN §13); an issuance decision is also asked of
//! the shadowed policy, if there is one, and any difference reported (DESIGN §11).

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::Error;
use crate::governance::{ADMIN_ROLE, GovernanceError};
use crate::model::{Caller, CallerKind};
use crate::policy::{
    Actor, DecideError, DecisionInput, Grant, Operation, OperationInput, Policy, PolicyDecision,
    Target,
};
use crate::store::CertificateStore;

use super::Mintgate;

/// The policy decisions of the active and the shadowed policy on one issuance request, when
/// they differ.
#[derive(Debug, Clone)]
pub struct ShadowDisagreement {
    pub spiffe_id: String,
    pub active: Verdict,
    pub shadow: Verdict,
}

/// One policy's verdict on a request, as a disagreement reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub decision: Option<PolicyDecision>,
    /// What a grant allows: (max ttl seconds, serverAuth).
    pub limits: Option<(u64, bool)>,
}

impl Verdict {
    fn of(result: &Result<Grant, DecideError>) -> Self {
        match result {
            Ok(g) => Self {
                allowed: true,
                decision: Some(g.decision.clone()),
                limits: Some((g.max_ttl.as_secs(), g.server_auth)),
            },
            Err(DecideError::Denied(d)) => Self {
                allowed: false,
                decision: Some(d.decision.clone()),
                limits: None,
            },
            Err(DecideError::Engine(_)) => Self {
                allowed: false,
                decision: None,
                limits: None,
            },
        }
    }

    /// Same outcome and same limits (which policies decided may differ without it mattering).
    fn agrees(&self, other: &Self) -> bool {
        self.allowed == other.allowed && self.limits == other.limits
    }
}

/// A candidate policy running beside the active one.
pub(super) struct Shadow {
    pub proposal_id: String,
    pub policy: Policy,
}

impl<S: CertificateStore> Mintgate<S> {
    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Decides an issuance request with the active policy and, when one is shadowed, with the
    /// shadow too, reporting any difference. Only the active policy's answer counts.
    pub(super) fn decide_issuance(&self, input: &DecisionInput<'_>) -> Result<Grant, DecideError> {
        let active = self.policy.load().decide(input);
        if let Some(shadow) = self.shadow.load().as_ref() {
            let candidate = shadow.policy.decide(input);
            let (active_verdict, shadow_verdict) = (Verdict::of(&active), Verdict::of(&candidate));
            if !active_verdict.agrees(&shadow_verdict) {
                self.observer.shadow_disagreement(&ShadowDisagreement {
                    spiffe_id: input.spiffe_id.to_string(),
                    active: active_verdict,
                    shadow: shadow_verdict,
                });
            }
        }
        active
    }

    /// Admin/ExportEvidence: whether `caller` may take the trust domain's evidence away (the
    /// export itself reads the database and signs the CRL, which the server crate does).
    pub async fn authorize_evidence_export(&self, caller: &Caller) -> Result<(), Error> {
        self.authorize(
            caller,
            Operation::ExportEvidence,
            Target::TrustDomain(&self.trust_domain),
        )
        .await
        .map(drop)
    }

    /// Asks the active policy whether `caller` may take `operation` on `target`. An operator's
    /// roles are its role bindings valid now. Refused with ROLE_EXPIRED when only an expired
    /// binding would have allowed it; a permission that only `admin` gives is break-glass:
    /// audited (or refused, if the audit cannot be written) and reported.
    pub(super) async fn authorize(
        &self,
        caller: &Caller,
        operation: Operation,
        target: Target<'_>,
    ) -> Result<PolicyDecision, Error> {
        let policy = self.policy.load_full();
        let ask = |actor: Actor<'_>| {
            policy.authorize(&OperationInput {
                actor,
                operation,
                target,
            })
        };
        let roles = match caller.kind {
            CallerKind::Node => return Ok(ask(Actor::Node(&caller.id))?),
            CallerKind::Workload => return Ok(ask(Actor::Workload(&caller.id))?),
            CallerKind::Operator => self.store.role_bindings_of(caller.id.as_str()).await?,
        };
        let now = self.clock.now();
        let (valid, expired): (Vec<_>, Vec<_>) = roles.into_iter().partition(|b| b.valid_at(now));
        let valid: Vec<String> = valid.into_iter().map(|b| b.role).collect();
        let as_operator = |roles: &[String]| {
            ask(Actor::Operator {
                id: &caller.id,
                roles,
            })
        };
        match as_operator(&valid) {
            Ok(decision) => {
                if valid.iter().any(|r| r == ADMIN_ROLE) {
                    let without: Vec<String> =
                        valid.iter().filter(|r| *r != ADMIN_ROLE).cloned().collect();
                    if as_operator(&without).is_err() {
                        self.break_glass(caller, operation, &decision, now).await?;
                    }
                }
                Ok(decision)
            }
            Err(denied) => {
                for binding in expired {
                    let mut with = valid.clone();
                    with.push(binding.role.clone());
                    if as_operator(&with).is_ok() {
                        return Err(GovernanceError::RoleExpired {
                            role: binding.role,
                            expired_at: binding.valid_until.map_or(0, |t| t.unix_timestamp()),
                        }
                        .into());
                    }
                }
                Err(denied.into())
            }
        }
    }

    async fn break_glass(
        &self,
        caller: &Caller,
        operation: Operation,
        decision: &PolicyDecision,
        now: OffsetDateTime,
    ) -> Result<(), Error> {
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "operator.break_glass",
            format!("operation:{}", operation.as_str()),
        );
        event.policy_rule = Some(decision.policies_text());
        event.detail = Some("allowed only by the admin role".to_owned());
        self.store.append_audit(vec![event]).await?;
        self.observer.break_glass(&caller.id, operation);
        Ok(())
    }
}
