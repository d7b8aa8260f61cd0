//! Operators under policy (DESIGN §11, §13): every operator RPC asks the active Cedar policy,
//! with the caller's role bindings from the store, and changes that need two people are
//! proposals: one operator proposes, another approves, and the change takes effect in the
//! approving transaction. The active policy is swapped in memory once its activation commits,
//! here or (by [`Mintgate::refresh_policy`]) on another replica.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::Error;
use crate::governance::{
    ADMIN_ROLE, Activation, BOOTSTRAP_ACTOR, Bootstrapped, Change, GovernanceError, MAX_LABEL_LEN,
    NewProposal, PROPOSAL_LIFETIME, ProposalInserted, ProposalKind, ProposalRecord, ProposalState,
    ProposalStatus, ROLES, RoleBinding, StoredPolicy,
};
use crate::model::{Caller, CallerKind};
use crate::policy::{
    Actor, DecideError, Grant, LoadError, Operation, OperationInput, Policy, PolicyDecision,
    PolicySource, Problem, Target,
};
use crate::store::{CertificateStore, StoreError};
use crate::{RequestId, SpiffeId};

use super::{Mintgate, payload_hash};

/// Most proposals ListProposals answers with.
pub const MAX_LIST: u64 = 100;

/// ProposePolicy as the api hands it over.
#[derive(Debug, Clone)]
pub struct PolicyProposalInput {
    pub request_id: String,
    pub source: PolicySource,
    pub label: String,
}

/// ProposeRoleBinding as the api hands it over.
#[derive(Debug, Clone)]
pub struct RoleBindingInput {
    pub request_id: String,
    pub operator: String,
    pub role: String,
    pub valid_until: Option<OffsetDateTime>,
    pub remove: bool,
}

/// A proposal and, for a policy proposal asked for with GetProposal, the unified diff of its
/// text against the active version.
#[derive(Debug, Clone)]
pub struct ProposalView {
    pub proposal: ProposalRecord,
    pub status: ProposalStatus,
    pub diff: String,
}

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

/// What [`Mintgate::start_governance`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernanceStart {
    /// The version of the policy directory the server was configured with.
    pub configured_version: String,
    /// The active version (the configured one if this start bootstrapped it).
    pub active_version: String,
    pub bootstrapped: bool,
}

impl GovernanceStart {
    /// The configured policy directory differs from the active version.
    pub fn drift(&self) -> bool {
        self.configured_version != self.active_version
    }
}

/// The active policy and the role bindings, for GetGovernance.
#[derive(Debug, Clone)]
pub struct GovernanceView {
    pub activation: Option<Activation>,
    pub shadow_version: Option<String>,
    pub bindings: Vec<RoleBinding>,
}

impl<S: CertificateStore> Mintgate<S> {
    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Decides an issuance request with the active policy and, when one is shadowed, with the
    /// shadow too, reporting any difference. Only the active policy's answer counts.
    pub(super) fn decide_issuance(
        &self,
        input: &crate::policy::DecisionInput<'_>,
    ) -> Result<Grant, DecideError> {
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

    /// At start: if no policy was ever active, `configured` becomes the first version (and
    /// `operators` the first role bindings), audited; otherwise the stored active version is
    /// loaded and the configured directory is only compared with it. The server never replaces
    /// the active policy by itself.
    pub async fn start_governance(
        &self,
        configured: &PolicySource,
        origin: &str,
        operators: &BTreeMap<String, Vec<String>>,
    ) -> Result<GovernanceStart, Error> {
        let policy = Policy::load(configured, Some(&self.trust_domain))
            .map_err(GovernanceError::PolicyInvalid)?;
        let configured_version = policy.version().to_owned();
        let now = self.clock.now();
        let mut events = Vec::new();
        let mut activated = self.audit(
            now,
            BOOTSTRAP_ACTOR,
            "policy.activated",
            format!("policy:{configured_version}"),
        );
        activated.policy_version = Some(configured_version.clone());
        activated.detail = Some(format!("bootstrap from {origin}"));
        events.push(activated);
        let mut bindings = Vec::new();
        for (operator, roles) in operators {
            let operator = SpiffeId::parse_in(operator, &self.trust_domain)?;
            for role in roles {
                if !ROLES.contains(&role.as_str()) {
                    return Err(GovernanceError::RoleUnknown(role.clone()).into());
                }
                let mut event = self.audit(
                    now,
                    BOOTSTRAP_ACTOR,
                    "role.granted",
                    format!("operator:{operator}"),
                );
                event.detail = Some(format!("role {role} (bootstrap from the configuration)"));
                events.push(event);
                bindings.push(RoleBinding {
                    operator: operator.to_string(),
                    role: role.clone(),
                    valid_until: None,
                    granted_by: BOOTSTRAP_ACTOR.to_owned(),
                    granted_at: now,
                    proposal_id: None,
                });
            }
        }
        let stored = StoredPolicy {
            version: configured_version.clone(),
            source: configured.clone(),
            created_at: now,
            created_by: BOOTSTRAP_ACTOR.to_owned(),
        };
        let bootstrapped = match self.store.bootstrap(stored, bindings, events).await? {
            Bootstrapped::Done => {
                self.policy
                    .store(Arc::new(policy.with_environment(&self.environment)));
                true
            }
            Bootstrapped::Already(_) => false,
        };
        let active_version = self.refresh_policy().await?;
        let start = GovernanceStart {
            configured_version,
            active_version,
            bootstrapped,
        };
        *self
            .configured_version
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(start.configured_version.clone());
        self.observer
            .policy_active(&start.active_version, start.drift());
        Ok(start)
    }

    /// Loads the active version from the store if it is not the one in force (another replica,
    /// or this one, activated it). Returns the active version.
    pub async fn refresh_policy(&self) -> Result<String, Error> {
        let Some((_, stored)) = self.store.active_policy().await? else {
            return Ok(self.policy.load().version().to_owned());
        };
        if stored.version != self.policy.load().version() {
            let policy = Policy::load(&stored.source, Some(&self.trust_domain)).map_err(|e| {
                Error::Internal(
                    format!("the active policy {} no longer loads: {e}", stored.version).into(),
                )
            })?;
            self.policy
                .store(Arc::new(policy.with_environment(&self.environment)));
            let drift = self
                .configured_version
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| *c != stored.version);
            self.observer.policy_active(&stored.version, drift);
        }
        Ok(stored.version)
    }

    /// Admin/ProposePolicy.
    pub async fn propose_policy(
        &self,
        caller: &Caller,
        input: PolicyProposalInput,
    ) -> Result<ProposalRecord, Error> {
        let request_id = RequestId::parse(&input.request_id)?;
        let label = label(&input.label)?;
        self.authorize(
            caller,
            Operation::ProposePolicy,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        let mut source = input.source;
        check_file_names(&source)?;
        source.files.sort_by(|a, b| a.name.cmp(&b.name));
        let policy = Policy::load(&source, Some(&self.trust_domain))
            .map_err(GovernanceError::PolicyInvalid)?;
        let version = policy.version().to_owned();
        let hash = payload_hash(&[
            ProposalKind::Policy.as_str().as_bytes(),
            version.as_bytes(),
            label.as_deref().unwrap_or("").as_bytes(),
        ]);
        if let Some(existing) = self.duplicate(caller, &request_id, &hash).await? {
            return Ok(existing);
        }
        let base_version = self.active_version().await?;
        if base_version == version {
            return Err(GovernanceError::PolicyUnchanged(version).into());
        }
        let now = self.clock.now();
        let stored = StoredPolicy {
            version: version.clone(),
            source,
            created_at: now,
            created_by: caller.id.to_string(),
        };
        let change = Change::Policy {
            version,
            base_version,
            label,
        };
        self.propose(caller, request_id, hash, change, Some(stored), now)
            .await
    }

    /// Admin/ProposeRoleBinding.
    pub async fn propose_role_binding(
        &self,
        caller: &Caller,
        input: RoleBindingInput,
    ) -> Result<ProposalRecord, Error> {
        let request_id = RequestId::parse(&input.request_id)?;
        let operator = SpiffeId::parse_in(&input.operator, &self.trust_domain)?;
        if !ROLES.contains(&input.role.as_str()) {
            return Err(GovernanceError::RoleUnknown(input.role).into());
        }
        let now = self.clock.now();
        let valid_until = if input.remove {
            None
        } else {
            input.valid_until
        };
        if valid_until.is_some_and(|t| t <= now) {
            return Err(GovernanceError::ValidUntilPast.into());
        }
        self.authorize(
            caller,
            Operation::ProposeRoleBinding,
            Target::Identity(&operator),
        )
        .await?;
        let until = valid_until.map_or(String::new(), |t| t.unix_timestamp().to_string());
        let hash = payload_hash(&[
            ProposalKind::RoleBinding.as_str().as_bytes(),
            operator.as_str().as_bytes(),
            input.role.as_bytes(),
            until.as_bytes(),
            &[u8::from(input.remove)],
        ]);
        if let Some(existing) = self.duplicate(caller, &request_id, &hash).await? {
            return Ok(existing);
        }
        if input.remove
            && !self
                .store
                .role_bindings_of(operator.as_str())
                .await?
                .iter()
                .any(|b| b.role == input.role)
        {
            return Err(GovernanceError::RoleNotHeld {
                operator: operator.to_string(),
                role: input.role,
            }
            .into());
        }
        let change = Change::RoleBinding {
            operator: operator.to_string(),
            role: input.role,
            valid_until,
            remove: input.remove,
        };
        self.propose(caller, request_id, hash, change, None, now)
            .await
    }

    /// Revocation/UnblockIdentity: proposes lifting the block on `spiffe_id`.
    pub async fn propose_unblock(
        &self,
        caller: &Caller,
        request_id: &str,
        spiffe_id: &str,
    ) -> Result<ProposalRecord, Error> {
        let request_id = RequestId::parse(request_id)?;
        let spiffe_id = SpiffeId::parse_in(spiffe_id, &self.trust_domain)?;
        self.authorize(
            caller,
            Operation::UnblockIdentity,
            Target::Identity(&spiffe_id),
        )
        .await?;
        let hash = payload_hash(&[
            ProposalKind::Unblock.as_str().as_bytes(),
            spiffe_id.as_str().as_bytes(),
        ]);
        if let Some(existing) = self.duplicate(caller, &request_id, &hash).await? {
            return Ok(existing);
        }
        if self
            .store
            .identity_block(spiffe_id.as_str())
            .await?
            .is_none()
        {
            return Err(GovernanceError::NotBlocked(spiffe_id.to_string()).into());
        }
        let change = Change::Unblock {
            spiffe_id: spiffe_id.to_string(),
        };
        let now = self.clock.now();
        self.propose(caller, request_id, hash, change, None, now)
            .await
    }

    /// The proposal `caller` already made with `request_id`, if any (a retry answers the same).
    async fn duplicate(
        &self,
        caller: &Caller,
        request_id: &RequestId,
        hash: &str,
    ) -> Result<Option<ProposalRecord>, Error> {
        let found = self
            .store
            .proposals_by(caller.id.as_str(), request_id.as_str())
            .await?;
        match found {
            Some(p) if p.payload_hash != hash => Err(Error::IdempotencyKeyReused),
            other => Ok(other),
        }
    }

    async fn propose(
        &self,
        caller: &Caller,
        request_id: RequestId,
        hash: String,
        change: Change,
        policy: Option<StoredPolicy>,
        now: OffsetDateTime,
    ) -> Result<ProposalRecord, Error> {
        let mut id = [0u8; 8];
        self.random.fill(&mut id);
        let id = format!("prop-{}", hex::encode(id));
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            "proposal.created",
            format!("proposal:{id}"),
        );
        event.request_id = Some(request_id.to_string());
        event.detail = Some(change.describe());
        let proposal = NewProposal {
            id,
            author: caller.id.to_string(),
            request_id: request_id.to_string(),
            payload_hash: hash.clone(),
            change,
            created_at: now,
            expires_at: now + PROPOSAL_LIFETIME,
        };
        match self
            .store
            .insert_proposal(proposal, policy, vec![event])
            .await?
        {
            ProposalInserted::New(p) => Ok(p),
            ProposalInserted::Duplicate(p) if p.payload_hash == hash => Ok(p),
            ProposalInserted::Duplicate(_) => Err(Error::IdempotencyKeyReused),
        }
    }

    /// Admin/GetProposal, with the diff of a policy proposal against the active version.
    pub async fn get_proposal(&self, caller: &Caller, id: &str) -> Result<ProposalView, Error> {
        let proposal = self.find_proposal(id).await?;
        self.authorize(
            caller,
            Operation::GetProposal,
            self.proposal_target(&proposal),
        )
        .await?;
        let diff = match &proposal.change {
            Change::Policy { version, .. } => {
                let proposed = self.stored_policy(version).await?;
                let active = self.active_source().await?;
                crate::governance::diff(&active, &proposed.source)
            }
            _ => String::new(),
        };
        let status = proposal.status(self.clock.now());
        Ok(ProposalView {
            proposal,
            status,
            diff,
        })
    }

    /// Admin/ListProposals: newest first.
    pub async fn list_proposals(
        &self,
        caller: &Caller,
        state: Option<ProposalStatus>,
        limit: u64,
    ) -> Result<Vec<(ProposalRecord, ProposalStatus)>, Error> {
        self.authorize(
            caller,
            Operation::ListProposals,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        let limit = if limit == 0 {
            MAX_LIST
        } else {
            limit.min(MAX_LIST)
        };
        let stored = match state {
            None => None,
            Some(ProposalStatus::Applied) => Some(ProposalState::Applied),
            Some(ProposalStatus::Superseded) => Some(ProposalState::Superseded),
            Some(ProposalStatus::Open | ProposalStatus::Expired) => Some(ProposalState::Open),
        };
        let now = self.clock.now();
        let mut found = Vec::new();
        // Expired proposals are stored OPEN: read until enough of the asked status are found.
        for p in self.store.proposals(stored, MAX_LIST * 10).await? {
            let status = p.status(now);
            if state.is_none_or(|s| s == status) {
                found.push((p, status));
            }
            if found.len() as u64 >= limit {
                break;
            }
        }
        Ok(found)
    }

    /// Admin/ShadowPolicy: runs an open policy proposal beside the active policy (or stops).
    /// Returns the version shadowed now, if any.
    pub async fn shadow_policy(
        &self,
        caller: &Caller,
        id: &str,
        stop: bool,
    ) -> Result<Option<String>, Error> {
        let proposal = self.find_proposal(id).await?;
        self.authorize(
            caller,
            Operation::ShadowPolicy,
            self.proposal_target(&proposal),
        )
        .await?;
        let now = self.clock.now();
        let Change::Policy { version, .. } = &proposal.change else {
            return Err(GovernanceError::NotShadowable(proposal.id).into());
        };
        let mut event = self.audit(
            now,
            caller.id.as_str(),
            if stop {
                "policy.shadow_stopped"
            } else {
                "policy.shadow_started"
            },
            format!("proposal:{}", proposal.id),
        );
        event.detail = Some(format!("policy {version}"));
        if stop {
            self.store.append_audit(vec![event]).await?;
            self.shadow
                .rcu(|s| s.as_ref().filter(|s| s.proposal_id != proposal.id).cloned());
            return Ok(self.shadow_version());
        }
        if proposal.status(now) != ProposalStatus::Open {
            return Err(GovernanceError::NotShadowable(proposal.id).into());
        }
        let stored = self.stored_policy(version).await?;
        let policy = Policy::load(&stored.source, Some(&self.trust_domain))
            .map_err(GovernanceError::PolicyInvalid)?
            .with_environment(&self.environment);
        self.store.append_audit(vec![event]).await?;
        self.shadow.store(Some(Arc::new(Shadow {
            proposal_id: proposal.id,
            policy,
        })));
        Ok(self.shadow_version())
    }

    fn shadow_version(&self) -> Option<String> {
        self.shadow
            .load()
            .as_ref()
            .map(|s| s.policy.version().to_owned())
    }

    /// Admin/ApproveProposal: a different operator than the author approves, and the change
    /// takes effect in the same transaction. Approving again what one already approved answers
    /// the same.
    pub async fn approve_proposal(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<ProposalRecord, Error> {
        let proposal = self.find_proposal(id).await?;
        if proposal.author == caller.id.as_str() {
            return Err(GovernanceError::SelfApproval(proposal.author).into());
        }
        let decision = self
            .authorize(
                caller,
                Operation::ApproveProposal,
                self.proposal_target(&proposal),
            )
            .await?;
        let now = self.clock.now();
        if self.check_approvable(&proposal, caller, now).await? == Approvable::AlreadyApproved {
            return Ok(proposal);
        }
        let mut events = Vec::with_capacity(2);
        let mut approved = self.audit(
            now,
            caller.id.as_str(),
            "proposal.approved",
            format!("proposal:{}", proposal.id),
        );
        approved.policy_rule = Some(decision.policies_text());
        approved.detail = Some(format!(
            "{} (proposed by {})",
            proposal.change.describe(),
            proposal.author
        ));
        events.push(approved);
        let (action, subject) = match &proposal.change {
            Change::Policy { version, .. } => {
                // Proved loadable when proposed; proved again before it can become active.
                let stored = self.stored_policy(version).await?;
                Policy::load(&stored.source, Some(&self.trust_domain))
                    .map_err(GovernanceError::PolicyInvalid)?;
                ("policy.activated", format!("policy:{version}"))
            }
            Change::RoleBinding {
                operator,
                remove: true,
                ..
            } => ("role.removed", format!("operator:{operator}")),
            Change::RoleBinding { operator, .. } => {
                ("role.granted", format!("operator:{operator}"))
            }
            Change::Unblock { spiffe_id } => {
                ("identity.unblocked", format!("identity:{spiffe_id}"))
            }
        };
        let mut effect = self.audit(now, caller.id.as_str(), action, subject);
        effect.detail = Some(format!(
            "{} (proposal {})",
            proposal.change.describe(),
            proposal.id
        ));
        if let Change::Policy { version, .. } = &proposal.change {
            effect.policy_version = Some(version.clone());
        }
        if let Change::Unblock { spiffe_id } = &proposal.change {
            effect.spiffe_id = Some(spiffe_id.clone());
        }
        events.push(effect);
        match self
            .store
            .apply_proposal(&proposal.id, caller.id.as_str(), now, events)
            .await
        {
            Ok(applied) => {
                if matches!(applied.change, Change::Policy { .. }) {
                    self.refresh_policy().await?;
                }
                Ok(applied)
            }
            // Someone else approved, superseded it or activated another version meanwhile.
            Err(StoreError::Conflict(_)) => {
                let current = self.find_proposal(id).await?;
                match self.check_approvable(&current, caller, now).await? {
                    Approvable::AlreadyApproved => Ok(current),
                    Approvable::Yes => Err(Error::InProgress),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses approving a proposal that is not open, or a policy proposal made against a
    /// version that is no longer active. An applied proposal approved by `caller` is answered
    /// as it is (a retry).
    async fn check_approvable(
        &self,
        proposal: &ProposalRecord,
        caller: &Caller,
        now: OffsetDateTime,
    ) -> Result<Approvable, Error> {
        let id = proposal.id.clone();
        match proposal.status(now) {
            ProposalStatus::Applied => {
                let by = proposal.approved_by.clone().unwrap_or_default();
                if by == caller.id.as_str() {
                    return Ok(Approvable::AlreadyApproved);
                }
                Err(GovernanceError::ProposalClosed { id, by }.into())
            }
            ProposalStatus::Expired => Err(GovernanceError::ProposalExpired(id).into()),
            ProposalStatus::Superseded => Err(GovernanceError::ProposalSuperseded {
                id,
                by: proposal.superseded_by.clone().unwrap_or_default(),
            }
            .into()),
            ProposalStatus::Open => {
                if let Change::Policy { base_version, .. } = &proposal.change {
                    let active = self.active_version().await?;
                    if *base_version != active {
                        return Err(GovernanceError::ProposalStale {
                            id,
                            base: base_version.clone(),
                            active,
                        }
                        .into());
                    }
                }
                Ok(Approvable::Yes)
            }
        }
    }

    /// Admin/GetGovernance: the active policy, the shadow and the role bindings.
    pub async fn governance(&self, caller: &Caller) -> Result<GovernanceView, Error> {
        self.authorize(
            caller,
            Operation::GetGovernance,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        let activation = self.store.active_policy().await?.map(|(a, _)| a);
        Ok(GovernanceView {
            activation,
            shadow_version: self.shadow_version(),
            bindings: self.store.role_bindings().await?,
        })
    }

    async fn find_proposal(&self, id: &str) -> Result<ProposalRecord, Error> {
        self.store
            .proposal(id)
            .await?
            .ok_or_else(|| GovernanceError::ProposalNotFound(id.to_owned()).into())
    }

    fn proposal_target<'a>(&'a self, p: &'a ProposalRecord) -> Target<'a> {
        Target::Proposal {
            id: &p.id,
            kind: p.change.kind().cedar_name(),
            author: &p.author,
            trust_domain: &self.trust_domain,
        }
    }

    async fn stored_policy(&self, version: &str) -> Result<StoredPolicy, Error> {
        self.store.policy_version(version).await?.ok_or_else(|| {
            Error::Internal(format!("policy version {version} is not stored").into())
        })
    }

    async fn active_version(&self) -> Result<String, Error> {
        Ok(match self.store.active_policy().await? {
            Some((activation, _)) => activation.version,
            None => self.policy.load().version().to_owned(),
        })
    }

    async fn active_source(&self) -> Result<PolicySource, Error> {
        Ok(match self.store.active_policy().await? {
            Some((_, stored)) => stored.source,
            None => PolicySource {
                schema: String::new(),
                files: Vec::new(),
            },
        })
    }
}

/// Whether a proposal may be approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approvable {
    Yes,
    /// The caller approved it already: a retry, answered with the applied proposal.
    AlreadyApproved,
}

/// A label for people: optional, short, printable.
fn label(text: &str) -> Result<Option<String>, GovernanceError> {
    if text.chars().count() > MAX_LABEL_LEN || text.chars().any(char::is_control) {
        return Err(GovernanceError::LabelInvalid);
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// A proposed directory's files are plain `*.cedar` names, each once.
fn check_file_names(source: &PolicySource) -> Result<(), GovernanceError> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for file in &source.files {
        let plain = !file.name.is_empty()
            && !file.name.contains(['/', '\\'])
            && !file.name.starts_with('.')
            && file.name.ends_with(".cedar");
        let message = if !plain {
            "a policy file name must be a plain name ending in .cedar"
        } else if !seen.insert(file.name.as_str()) {
            "the same file name appears twice"
        } else {
            continue;
        };
        problems.push(Problem {
            file: file.name.clone(),
            position: None,
            message: message.to_owned(),
        });
    }
    if source.files.is_empty() {
        problems.push(Problem {
            file: "(request)".to_owned(),
            position: None,
            message: "a policy needs at least one .cedar file".to_owned(),
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LoadError { problems }.into())
    }
}
