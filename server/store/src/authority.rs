//! The CA registry's storage (DESIGN §14): the `authorities` rows and what approving a rotation
//! step or the compromise path changes, in the approving transaction. Every change is
//! announced to the other replicas at commit (`mintgate_authorities`, PostgreSQL only).

use mintgate_domain::authority::{AuthorityStore, CaAction, CaRecord, CaState, PreparedCa};
use mintgate_domain::lifecycle::CertState;
use mintgate_domain::model::RevocationReason;
use mintgate_domain::store::StoreError;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use time::OffsetDateTime;

use crate::convert::{corrupt, ts};
use crate::entity::{authority, certificate, revocation};
use crate::read::live_states;
use crate::write::WriteTx;
use crate::{SqlStore, unavailable};

/// The channel every CA change is announced on.
pub const AUTHORITIES_CHANNEL: &str = "mintgate_authorities";

impl AuthorityStore for SqlStore {
    async fn authorities(&self) -> Result<Vec<CaRecord>, StoreError> {
        authority::Entity::find()
            .order_by_desc(authority::Column::PreparedAt)
            .order_by_desc(authority::Column::KeyId)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(record)
            .collect()
    }

    async fn register_first_authority(&self, ca: CaRecord) -> Result<bool, StoreError> {
        let tx = self.begin_write().await?;
        let result = async {
            let known = authority::Entity::find()
                .count(&tx.txn)
                .await
                .map_err(unavailable)?;
            if known > 0 {
                return Ok(false);
            }
            // Everything issued before the registry existed was signed by this CA.
            certificate::Entity::update_many()
                .col_expr(
                    certificate::Column::IssuerKeyId,
                    Expr::value(ca.key_id.clone()),
                )
                .filter(certificate::Column::IssuerKeyId.is_null())
                .exec(&tx.txn)
                .await
                .map_err(unavailable)?;
            authority::Entity::insert(model(ca))
                .exec_without_returning(&tx.txn)
                .await
                .map_err(unavailable)?;
            tx.notify_authorities().await?;
            Ok(true)
        }
        .await;
        tx.end(result).await
    }

    async fn issued_unexpired(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let left = certificate::Entity::find()
            .filter(certificate::Column::IssuerKeyId.eq(key_id))
            .filter(certificate::Column::NotAfter.gt(now.unix_timestamp()))
            .filter(certificate::Column::State.is_in(live_states()))
            .one(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(left.is_some())
    }
}

impl SqlStore {
    /// The break-glass path for a CA that has run out: `ca` (the one in `[ca]`, not in the
    /// registry) becomes ACTIVE and the ACTIVE one RETIRING, with `audit`, in one transaction.
    /// The caller decides when that is allowed.
    pub async fn adopt_authority(
        &self,
        ca: CaRecord,
        audit: mintgate_domain::audit::AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result = async {
            let at = ca.prepared_at.unix_timestamp();
            tx.move_authority(None, CaState::Active, CaState::Retiring, at)
                .await?;
            authority::Entity::insert(model(ca))
                .exec_without_returning(&tx.txn)
                .await
                .map_err(unavailable)?;
            tx.append(vec![audit]).await?;
            tx.notify_authorities().await
        }
        .await;
        tx.end(result).await
    }
}

impl WriteTx<'_> {
    /// Applies a rotation step. Each one moves rows only from the state it expects, so a step
    /// approved twice, or against a CA that moved meanwhile, is a conflict.
    pub(crate) async fn apply_ca(
        &mut self,
        action: CaAction,
        key_id: &str,
        prepared: Option<&PreparedCa>,
        proposal_id: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let at = now.unix_timestamp();
        match action {
            CaAction::Prepare => {
                let p = prepared.ok_or_else(|| corrupt("CA proposal"))?;
                let known = authority::Entity::find_by_id(key_id.to_owned())
                    .one(&self.txn)
                    .await
                    .map_err(unavailable)?;
                if known.is_some() {
                    return Err(StoreError::Conflict("authority"));
                }
                authority::Entity::insert(model(CaRecord {
                    key_id: key_id.to_owned(),
                    state: CaState::Prepared,
                    subject: p.subject.clone(),
                    chain_pem: p.chain_pem.clone(),
                    key_ref: p.key_ref.clone(),
                    serial: p.serial.clone(),
                    not_after: ts(p.not_after)?,
                    prepared_at: now,
                    activated_at: None,
                    retiring_at: None,
                    retired_at: None,
                    revoked_at: None,
                    proposal_id: Some(proposal_id.to_owned()),
                }))
                .exec_without_returning(&self.txn)
                .await
                .map_err(unavailable)?;
            }
            CaAction::Activate => {
                self.move_authority(None, CaState::Active, CaState::Retiring, at)
                    .await?;
                self.activate_authority(key_id, at).await?;
            }
            CaAction::Retire => {
                if !self
                    .move_authority(Some(key_id), CaState::Retiring, CaState::Retired, at)
                    .await?
                {
                    return Err(StoreError::Conflict("authority"));
                }
            }
        }
        self.notify_authorities().await
    }

    /// The compromise path: the CA becomes REVOKED; one log entry revokes everything it signed;
    /// every live certificate it signed becomes REVOKED; a revoked ACTIVE CA hands over to the
    /// newest PREPARED one.
    pub(crate) async fn revoke_issuer(
        &mut self,
        key_id: &str,
        reason: RevocationReason,
        revoked_by: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let at = now.unix_timestamp();
        let ca = authority::Entity::find_by_id(key_id.to_owned())
            .one(&self.txn)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::Conflict("authority"))?;
        let was = CaState::parse(&ca.state).ok_or_else(|| corrupt("authority state"))?;
        if !was.in_bundle()
            || !self
                .move_authority(Some(key_id), was, CaState::Revoked, at)
                .await?
        {
            return Err(StoreError::Conflict("authority"));
        }
        if was == CaState::Active {
            let successor = authority::Entity::find()
                .filter(authority::Column::State.eq(CaState::Prepared.as_str()))
                .order_by_desc(authority::Column::PreparedAt)
                .one(&self.txn)
                .await
                .map_err(unavailable)?
                .ok_or(StoreError::Conflict("authority"))?;
            self.activate_authority(&successor.key_id, at).await?;
        }
        certificate::Entity::update_many()
            .col_expr(
                certificate::Column::State,
                Expr::value(CertState::Revoked.as_str()),
            )
            .col_expr(certificate::Column::UpdatedAt, Expr::value(at))
            .filter(certificate::Column::IssuerKeyId.eq(key_id))
            .filter(certificate::Column::State.is_in(live_states()))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        let seq = self.revocation_head().await? + 1;
        let entry = revocation::Model {
            seq,
            serial: ca.serial,
            spiffe_id: String::new(),
            reason: reason.as_str().to_owned(),
            revoked_at: at,
            not_after: ca.not_after,
            issuer_key_id: key_id.to_owned(),
            revoked_by: revoked_by.to_owned(),
            request_pk: None,
            issuer: true,
        };
        revocation::Entity::insert(revocation::ActiveModel::from(entry))
            .exec_without_returning(&self.txn)
            .await
            .map_err(unavailable)?;
        self.done.revocations += 1;
        self.notify_revocations(seq).await?;
        self.notify_authorities().await
    }

    async fn activate_authority(&self, key_id: &str, at: i64) -> Result<(), StoreError> {
        let moved = authority::Entity::update_many()
            .col_expr(
                authority::Column::State,
                Expr::value(CaState::Active.as_str()),
            )
            .col_expr(authority::Column::ActivatedAt, Expr::value(at))
            .filter(authority::Column::KeyId.eq(key_id))
            .filter(authority::Column::State.eq(CaState::Prepared.as_str()))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        if moved.rows_affected != 1 {
            return Err(StoreError::Conflict("authority"));
        }
        Ok(())
    }

    /// Moves the CA `key_id` (or every CA) from `from` to `to`, stamping when it entered `to`.
    /// Returns whether a row moved.
    async fn move_authority(
        &self,
        key_id: Option<&str>,
        from: CaState,
        to: CaState,
        at: i64,
    ) -> Result<bool, StoreError> {
        let stamp = match to {
            CaState::Prepared => authority::Column::PreparedAt,
            CaState::Active => authority::Column::ActivatedAt,
            CaState::Retiring => authority::Column::RetiringAt,
            CaState::Retired => authority::Column::RetiredAt,
            CaState::Revoked => authority::Column::RevokedAt,
        };
        let mut update = authority::Entity::update_many()
            .col_expr(authority::Column::State, Expr::value(to.as_str()))
            .col_expr(stamp, Expr::value(at))
            .filter(authority::Column::State.eq(from.as_str()));
        if let Some(key_id) = key_id {
            update = update.filter(authority::Column::KeyId.eq(key_id));
        }
        let moved = update.exec(&self.txn).await.map_err(unavailable)?;
        Ok(moved.rows_affected > 0)
    }

    /// On PostgreSQL, tells every replica at commit that the CAs changed.
    async fn notify_authorities(&self) -> Result<(), StoreError> {
        if self.txn.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        self.txn
            .execute_unprepared(&format!("NOTIFY {AUTHORITIES_CHANNEL}"))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

fn model(ca: CaRecord) -> authority::ActiveModel {
    let secs = |t: Option<OffsetDateTime>| t.map(OffsetDateTime::unix_timestamp);
    authority::ActiveModel {
        key_id: Set(ca.key_id),
        state: Set(ca.state.as_str().to_owned()),
        subject: Set(ca.subject),
        chain_pem: Set(ca.chain_pem),
        key_ref: Set(ca.key_ref),
        serial: Set(ca.serial),
        not_after: Set(ca.not_after.unix_timestamp()),
        prepared_at: Set(ca.prepared_at.unix_timestamp()),
        activated_at: Set(secs(ca.activated_at)),
        retiring_at: Set(secs(ca.retiring_at)),
        retired_at: Set(secs(ca.retired_at)),
        revoked_at: Set(secs(ca.revoked_at)),
        proposal_id: Set(ca.proposal_id),
    }
}

fn record(m: authority::Model) -> Result<CaRecord, StoreError> {
    let opt = |t: Option<i64>| t.map(ts).transpose();
    Ok(CaRecord {
        state: CaState::parse(&m.state).ok_or_else(|| corrupt("authority state"))?,
        not_after: ts(m.not_after)?,
        prepared_at: ts(m.prepared_at)?,
        activated_at: opt(m.activated_at)?,
        retiring_at: opt(m.retiring_at)?,
        retired_at: opt(m.retired_at)?,
        revoked_at: opt(m.revoked_at)?,
        key_id: m.key_id,
        subject: m.subject,
        chain_pem: m.chain_pem,
        key_ref: m.key_ref,
        serial: m.serial,
        proposal_id: m.proposal_id,
    })
}
