//! Change control's storage: policy versions (immutable), their activations (append-only),
//! proposals and role bindings. Each change is one write transaction with its audit events.

use mintgate_domain::audit::AuditEvent;
use mintgate_domain::authority::CaAction;
use mintgate_domain::governance::{
    Activation, Bootstrapped, Change, GovernanceStore, NewProposal, ProposalInserted, ProposalKind,
    ProposalRecord, ProposalState, RoleBinding, StoredPolicy,
};
use mintgate_domain::model::RevocationReason;
use mintgate_domain::policy::{PolicyFile, PolicySource};
use mintgate_domain::store::StoreError;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::convert::{corrupt, ts};
use crate::entity::{identity_block, policy_activation, policy_version, proposal, role_binding};
use crate::write::WriteTx;
use crate::{SqlStore, unavailable};

/// How a policy file is kept in `policy_versions.files`.
#[derive(Serialize, Deserialize)]
struct FileJson {
    name: String,
    text: String,
}

impl GovernanceStore for SqlStore {
    async fn active_policy(&self) -> Result<Option<(Activation, StoredPolicy)>, StoreError> {
        let Some(activation) = newest_activation(&self.db).await? else {
            return Ok(None);
        };
        let stored = version_row(&self.db, &activation.version)
            .await?
            .ok_or_else(|| corrupt("policy activation"))?;
        Ok(Some((activation, stored)))
    }

    async fn active_activation(&self) -> Result<Option<Activation>, StoreError> {
        newest_activation(&self.db).await
    }

    async fn policy_version(&self, version: &str) -> Result<Option<StoredPolicy>, StoreError> {
        version_row(&self.db, version).await
    }

    async fn activations(&self) -> Result<Vec<Activation>, StoreError> {
        policy_activation::Entity::find()
            .order_by_asc(policy_activation::Column::Seq)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(activation)
            .collect()
    }

    async fn bootstrap(
        &self,
        policy: StoredPolicy,
        bindings: Vec<RoleBinding>,
        audit: Vec<AuditEvent>,
    ) -> Result<Bootstrapped, StoreError> {
        let mut tx = self.begin_write().await?;
        let result = tx.bootstrap(policy, bindings, audit).await;
        tx.end(result).await
    }

    async fn insert_proposal(
        &self,
        new: NewProposal,
        policy: Option<StoredPolicy>,
        audit: Vec<AuditEvent>,
    ) -> Result<ProposalInserted, StoreError> {
        let mut tx = self.begin_write().await?;
        let result = tx.insert_proposal(new, policy, audit).await;
        tx.end(result).await
    }

    async fn proposal(&self, id: &str) -> Result<Option<ProposalRecord>, StoreError> {
        proposal::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(proposal_record)
            .transpose()
    }

    async fn proposals_by(
        &self,
        author: &str,
        request_id: &str,
    ) -> Result<Option<ProposalRecord>, StoreError> {
        proposal_by(&self.db, author, request_id).await
    }

    async fn proposals(
        &self,
        state: Option<ProposalState>,
        limit: u64,
    ) -> Result<Vec<ProposalRecord>, StoreError> {
        let mut query = proposal::Entity::find();
        if let Some(state) = state {
            query = query.filter(proposal::Column::State.eq(state.as_str()));
        }
        query
            .order_by_desc(proposal::Column::CreatedAt)
            .order_by_desc(proposal::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(proposal_record)
            .collect()
    }

    async fn apply_proposal(
        &self,
        id: &str,
        approver: &str,
        now: OffsetDateTime,
        audit: Vec<AuditEvent>,
    ) -> Result<ProposalRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let result = tx.apply_proposal(id, approver, now, audit).await;
        tx.end(result).await
    }

    async fn role_bindings(&self) -> Result<Vec<RoleBinding>, StoreError> {
        role_binding::Entity::find()
            .order_by_asc(role_binding::Column::Operator)
            .order_by_asc(role_binding::Column::Role)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(role_binding_record)
            .collect()
    }

    async fn role_bindings_of(&self, operator: &str) -> Result<Vec<RoleBinding>, StoreError> {
        role_binding::Entity::find()
            .filter(role_binding::Column::Operator.eq(operator))
            .order_by_asc(role_binding::Column::Role)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(role_binding_record)
            .collect()
    }
}

impl WriteTx<'_> {
    async fn bootstrap(
        &mut self,
        policy: StoredPolicy,
        bindings: Vec<RoleBinding>,
        audit: Vec<AuditEvent>,
    ) -> Result<Bootstrapped, StoreError> {
        if let Some(active) = newest_activation(&self.txn).await? {
            return Ok(Bootstrapped::Already(active));
        }
        let version = policy.version.clone();
        let at = policy.created_at.unix_timestamp();
        let by = policy.created_by.clone();
        self.insert_version(policy).await?;
        self.activate(1, &version, None, None, at, &by).await?;
        for b in bindings {
            role_binding::Entity::insert(binding_model(b))
                .exec_without_returning(&self.txn)
                .await
                .map_err(unavailable)?;
        }
        self.append(audit).await?;
        Ok(Bootstrapped::Done)
    }

    async fn insert_proposal(
        &mut self,
        new: NewProposal,
        policy: Option<StoredPolicy>,
        audit: Vec<AuditEvent>,
    ) -> Result<ProposalInserted, StoreError> {
        if let Some(existing) = proposal_by(&self.txn, &new.author, &new.request_id).await? {
            return Ok(ProposalInserted::Duplicate(existing));
        }
        if let Some(policy) = policy
            && version_row(&self.txn, &policy.version).await?.is_none()
        {
            self.insert_version(policy).await?;
        }
        let row = proposal_model(new);
        proposal::Entity::insert(proposal::ActiveModel::from(row.clone()))
            .exec_without_returning(&self.txn)
            .await
            .map_err(unavailable)?;
        self.append(audit).await?;
        Ok(ProposalInserted::New(proposal_record(row)?))
    }

    async fn apply_proposal(
        &mut self,
        id: &str,
        approver: &str,
        now: OffsetDateTime,
        audit: Vec<AuditEvent>,
    ) -> Result<ProposalRecord, StoreError> {
        let at = now.unix_timestamp();
        let applied = proposal::Entity::update_many()
            .col_expr(
                proposal::Column::State,
                Expr::value(ProposalState::Applied.as_str()),
            )
            .col_expr(proposal::Column::ApprovedBy, Expr::value(approver))
            .col_expr(proposal::Column::ApprovedAt, Expr::value(at))
            .filter(proposal::Column::Id.eq(id))
            .filter(proposal::Column::State.eq(ProposalState::Open.as_str()))
            .filter(proposal::Column::ExpiresAt.gt(at))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        if applied.rows_affected != 1 {
            return Err(StoreError::Conflict("proposal"));
        }
        let row = proposal::Entity::find_by_id(id.to_owned())
            .one(&self.txn)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::Conflict("proposal"))?;
        let record = proposal_record(row)?;
        match &record.change {
            Change::Policy {
                version,
                base_version,
                label,
            } => {
                let active = newest_activation(&self.txn).await?;
                if active.as_ref().map(|a| &a.version) != Some(base_version) {
                    return Err(StoreError::Conflict("active policy"));
                }
                let seq = active.map_or(0, |a| a.seq) + 1;
                self.activate(seq, version, Some(id), label.as_deref(), at, approver)
                    .await?;
                // Every other open policy proposal was made against the version just replaced.
                proposal::Entity::update_many()
                    .col_expr(
                        proposal::Column::State,
                        Expr::value(ProposalState::Superseded.as_str()),
                    )
                    .col_expr(proposal::Column::SupersededBy, Expr::value(id))
                    .filter(proposal::Column::Kind.eq(ProposalKind::Policy.as_str()))
                    .filter(proposal::Column::State.eq(ProposalState::Open.as_str()))
                    .exec(&self.txn)
                    .await
                    .map_err(unavailable)?;
            }
            Change::RoleBinding {
                operator,
                role,
                remove: true,
                ..
            } => {
                role_binding::Entity::delete_many()
                    .filter(role_binding::Column::Operator.eq(operator.as_str()))
                    .filter(role_binding::Column::Role.eq(role.as_str()))
                    .exec(&self.txn)
                    .await
                    .map_err(unavailable)?;
            }
            Change::RoleBinding {
                operator,
                role,
                valid_until,
                ..
            } => {
                let binding = binding_model(RoleBinding {
                    operator: operator.clone(),
                    role: role.clone(),
                    valid_until: *valid_until,
                    granted_by: approver.to_owned(),
                    granted_at: now,
                    proposal_id: Some(id.to_owned()),
                });
                let upsert = OnConflict::columns([
                    role_binding::Column::Operator,
                    role_binding::Column::Role,
                ])
                .update_columns([
                    role_binding::Column::ValidUntil,
                    role_binding::Column::GrantedBy,
                    role_binding::Column::GrantedAt,
                    role_binding::Column::ProposalId,
                ])
                .to_owned();
                role_binding::Entity::insert(binding)
                    .on_conflict(upsert)
                    .exec_without_returning(&self.txn)
                    .await
                    .map_err(unavailable)?;
            }
            Change::Unblock { spiffe_id } => {
                identity_block::Entity::delete_by_id(spiffe_id.clone())
                    .exec(&self.txn)
                    .await
                    .map_err(unavailable)?;
            }
            Change::Ca {
                action,
                key_id,
                prepared,
            } => {
                self.apply_ca(*action, key_id, prepared.as_ref(), id, now)
                    .await?;
            }
            Change::RevokeIssuer { key_id, reason } => {
                self.revoke_issuer(key_id, *reason, approver, now).await?;
            }
        }
        self.append(audit).await?;
        Ok(record)
    }

    async fn insert_version(&mut self, policy: StoredPolicy) -> Result<(), StoreError> {
        let files: Vec<FileJson> = policy
            .source
            .files
            .into_iter()
            .map(|f| FileJson {
                name: f.name,
                text: f.text,
            })
            .collect();
        let files = serde_json::to_string(&files).map_err(|e| StoreError::Corrupt(Box::new(e)))?;
        let row = policy_version::ActiveModel {
            version: Set(policy.version),
            schema_text: Set(policy.source.schema),
            files: Set(files),
            created_at: Set(policy.created_at.unix_timestamp()),
            created_by: Set(policy.created_by),
        };
        policy_version::Entity::insert(row)
            .exec_without_returning(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn activate(
        &mut self,
        seq: i64,
        version: &str,
        proposal_id: Option<&str>,
        label: Option<&str>,
        at: i64,
        by: &str,
    ) -> Result<(), StoreError> {
        let row = policy_activation::ActiveModel {
            seq: Set(seq),
            version: Set(version.to_owned()),
            proposal_id: Set(proposal_id.map(str::to_owned)),
            label: Set(label.map(str::to_owned)),
            activated_at: Set(at),
            activated_by: Set(by.to_owned()),
        };
        policy_activation::Entity::insert(row)
            .exec_without_returning(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

async fn newest_activation(db: &impl ConnectionTrait) -> Result<Option<Activation>, StoreError> {
    policy_activation::Entity::find()
        .order_by_desc(policy_activation::Column::Seq)
        .one(db)
        .await
        .map_err(unavailable)?
        .map(activation)
        .transpose()
}

async fn version_row(
    db: &impl ConnectionTrait,
    version: &str,
) -> Result<Option<StoredPolicy>, StoreError> {
    let Some(m) = policy_version::Entity::find_by_id(version.to_owned())
        .one(db)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    let files: Vec<FileJson> =
        serde_json::from_str(&m.files).map_err(|_| corrupt("policy files"))?;
    Ok(Some(StoredPolicy {
        version: m.version,
        source: PolicySource {
            schema: m.schema_text,
            files: files
                .into_iter()
                .map(|f| PolicyFile {
                    name: f.name,
                    text: f.text,
                })
                .collect(),
        },
        created_at: ts(m.created_at)?,
        created_by: m.created_by,
    }))
}

async fn proposal_by(
    db: &impl ConnectionTrait,
    author: &str,
    request_id: &str,
) -> Result<Option<ProposalRecord>, StoreError> {
    proposal::Entity::find()
        .filter(proposal::Column::Author.eq(author))
        .filter(proposal::Column::RequestId.eq(request_id))
        .one(db)
        .await
        .map_err(unavailable)?
        .map(proposal_record)
        .transpose()
}

fn activation(m: policy_activation::Model) -> Result<Activation, StoreError> {
    Ok(Activation {
        seq: m.seq,
        version: m.version,
        proposal_id: m.proposal_id,
        label: m.label,
        activated_at: ts(m.activated_at)?,
        activated_by: m.activated_by,
    })
}

fn proposal_model(p: NewProposal) -> proposal::Model {
    let mut m = proposal::Model {
        id: p.id,
        author: p.author,
        request_id: p.request_id,
        payload_hash: p.payload_hash,
        kind: p.change.kind().as_str().to_owned(),
        state: ProposalState::Open.as_str().to_owned(),
        policy_version: None,
        base_version: None,
        label: None,
        subject: None,
        role: None,
        valid_until: None,
        remove_role: false,
        created_at: p.created_at.unix_timestamp(),
        expires_at: p.expires_at.unix_timestamp(),
        approved_by: None,
        approved_at: None,
        superseded_by: None,
        payload: None,
    };
    match p.change {
        Change::Policy {
            version,
            base_version,
            label,
        } => {
            m.policy_version = Some(version);
            m.base_version = Some(base_version);
            m.label = label;
        }
        Change::RoleBinding {
            operator,
            role,
            valid_until,
            remove,
        } => {
            m.subject = Some(operator);
            m.role = Some(role);
            m.valid_until = valid_until.map(OffsetDateTime::unix_timestamp);
            m.remove_role = remove;
        }
        Change::Unblock { spiffe_id } => m.subject = Some(spiffe_id),
        Change::Ca {
            action,
            key_id,
            prepared,
        } => {
            m.subject = Some(key_id);
            m.role = Some(action.as_str().to_owned());
            m.payload = prepared.and_then(|p| serde_json::to_string(&p).ok());
        }
        Change::RevokeIssuer { key_id, reason } => {
            m.subject = Some(key_id);
            m.label = Some(reason.as_str().to_owned());
        }
    }
    m
}

fn proposal_record(m: proposal::Model) -> Result<ProposalRecord, StoreError> {
    let missing = || corrupt("proposal");
    let change = match ProposalKind::parse(&m.kind).ok_or_else(missing)? {
        ProposalKind::Policy => Change::Policy {
            version: m.policy_version.ok_or_else(missing)?,
            base_version: m.base_version.ok_or_else(missing)?,
            label: m.label,
        },
        ProposalKind::RoleBinding => Change::RoleBinding {
            operator: m.subject.ok_or_else(missing)?,
            role: m.role.ok_or_else(missing)?,
            valid_until: m.valid_until.map(ts).transpose()?,
            remove: m.remove_role,
        },
        ProposalKind::Unblock => Change::Unblock {
            spiffe_id: m.subject.ok_or_else(missing)?,
        },
        ProposalKind::Ca => Change::Ca {
            action: m
                .role
                .as_deref()
                .and_then(CaAction::parse)
                .ok_or_else(missing)?,
            key_id: m.subject.ok_or_else(missing)?,
            prepared: m
                .payload
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|_| missing())?,
        },
        ProposalKind::RevokeIssuer => Change::RevokeIssuer {
            key_id: m.subject.ok_or_else(missing)?,
            reason: m
                .label
                .as_deref()
                .and_then(RevocationReason::parse)
                .ok_or_else(missing)?,
        },
    };
    Ok(ProposalRecord {
        state: ProposalState::parse(&m.state).ok_or_else(missing)?,
        created_at: ts(m.created_at)?,
        expires_at: ts(m.expires_at)?,
        approved_at: m.approved_at.map(ts).transpose()?,
        id: m.id,
        author: m.author,
        request_id: m.request_id,
        payload_hash: m.payload_hash,
        change,
        approved_by: m.approved_by,
        superseded_by: m.superseded_by,
    })
}

fn binding_model(b: RoleBinding) -> role_binding::ActiveModel {
    role_binding::ActiveModel {
        operator: Set(b.operator),
        role: Set(b.role),
        valid_until: Set(b.valid_until.map(OffsetDateTime::unix_timestamp)),
        granted_by: Set(b.granted_by),
        granted_at: Set(b.granted_at.unix_timestamp()),
        proposal_id: Set(b.proposal_id),
    }
}

fn role_binding_record(m: role_binding::Model) -> Result<RoleBinding, StoreError> {
    Ok(RoleBinding {
        valid_until: m.valid_until.map(ts).transpose()?,
        granted_at: ts(m.granted_at)?,
        operator: m.operator,
        role: m.role,
        granted_by: m.granted_by,
        proposal_id: m.proposal_id,
    })
}
