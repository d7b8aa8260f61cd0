//! Two-person changes (DESIGN §13): a policy version, a role binding or lifting a block is
//! proposed by one operator and takes effect, in the approving transaction, when a different
//! one approves it. A policy proposal can be diffed and shadowed on live traffic first.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::Error;
use crate::governance::{
    Change, GovernanceError, MAX_LABEL_LEN, NewProposal, PROPOSAL_LIFETIME, ProposalInserted,
    ProposalKind, ProposalRecord, ProposalState, ProposalStatus, ROLES, StoredPolicy,
};
use crate::model::Caller;
use crate::policy::{LoadError, Operation, Policy, PolicySource, Problem, Target};
use crate::store::{CertificateStore, StoreError};
use crate::{RequestId, SpiffeId};

use super::authorize::Shadow;
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

impl<S: CertificateStore> Mintgate<S> {
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
    pub(super) async fn duplicate(
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

    pub(super) async fn propose(
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

    pub(super) fn shadow_version(&self) -> Option<String> {
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
            Change::Ca { action, key_id, .. } => {
                self.check_ca_change(&proposal.change, true).await?;
                (action.audit_action(), format!("ca:{key_id}"))
            }
            Change::RevokeIssuer { key_id, .. } => {
                self.check_ca_change(&proposal.change, true).await?;
                ("issuer.revoked", format!("ca:{key_id}"))
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
                match applied.change {
                    Change::Policy { .. } => {
                        self.refresh_policy().await?;
                    }
                    Change::Ca { .. } | Change::RevokeIssuer { .. } => {
                        self.observer.authorities_changed();
                    }
                    Change::RoleBinding { .. } | Change::Unblock { .. } => {}
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
