//! The writes that take a transaction of their own (the issuance path's are batched, see
//! `batch`): join tokens, revocations and pruning (change control's are in `governance`). Each runs inside a [`WriteTx`]
//! that the store's `CertificateStore` impl begins and ends.

use mintgate_domain::audit::AuditEvent;
use mintgate_domain::lifecycle::CertState;
use mintgate_domain::model::{IdentityScope, NewRequest, NewRevocation};
use mintgate_domain::store::{Inserted, NewJoinToken, Revoked, StoreError};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use time::OffsetDateTime;

use crate::entity::{certificate, identity_block, join_token, revocation, revocation_floor};
use crate::read::live_states;
use crate::write::WriteTx;
use crate::{convert, unavailable};

impl WriteTx<'_> {
    pub(crate) async fn insert_join_token(
        &mut self,
        request: NewRequest,
        token: NewJoinToken,
        audit: Vec<AuditEvent>,
    ) -> Result<Inserted, StoreError> {
        if let Some(existing) = self.existing_request(&request).await? {
            return Ok(Inserted::Duplicate(Box::new(existing)));
        }
        let created_at = request.now.unix_timestamp();
        let pk = self.insert_request_row(request).await?;
        let row = join_token::ActiveModel {
            token_id: Set(token.token_id),
            token_hash: Set(token.token_hash),
            spiffe_id: Set(token.spiffe_id),
            created_by: Set(token.created_by),
            created_at: Set(created_at),
            expires_at: Set(token.expires_at.unix_timestamp()),
            used_at: Set(None),
            used_by: Set(None),
        };
        join_token::Entity::insert(row)
            .exec_without_returning(&self.txn)
            .await
            .map_err(unavailable)?;
        self.append(audit).await?;
        Ok(Inserted::New(pk))
    }

    pub(crate) async fn revoke(
        &mut self,
        request: NewRequest,
        revocations: Vec<NewRevocation>,
        scope: Option<IdentityScope>,
        audit: Vec<AuditEvent>,
    ) -> Result<Revoked, StoreError> {
        if let Some(existing) = self.existing_request(&request).await? {
            return Ok(Revoked::Duplicate(Box::new(existing)));
        }
        let revoked_at = request.now;
        let now = revoked_at.unix_timestamp();
        let revoked_by = request.caller.clone();
        let request_pk = self.insert_request_row(request).await?;
        // The writer lock is held until commit, so head + 1 becomes visible only after every
        // smaller sequence number has: watchers reading `seq > cursor` can never skip one.
        let mut seq = self.revocation_head().await?;
        let mut recorded = Vec::with_capacity(revocations.len());
        for r in revocations {
            let cert = certificate::Entity::find_by_id(r.serial.to_hex())
                .one(&self.txn)
                .await
                .map_err(unavailable)?
                .ok_or(StoreError::Conflict("certificate"))?;
            if !self
                .move_certificate(&r.serial, r.from, CertState::Revoked, revoked_at)
                .await?
            {
                return Err(StoreError::Conflict("certificate"));
            }
            seq += 1;
            let row = revocation::Model {
                seq,
                serial: r.serial.to_hex(),
                spiffe_id: cert.spiffe_id,
                reason: r.reason.as_str().to_owned(),
                revoked_at: now,
                not_after: cert.not_after,
                issuer_key_id: r.issuer_key_id,
                revoked_by: r.revoked_by,
                request_pk: Some(request_pk),
                issuer: false,
            };
            revocation::Entity::insert(revocation::ActiveModel::from(row.clone()))
                .exec_without_returning(&self.txn)
                .await
                .map_err(unavailable)?;
            recorded.push(convert::revocation(row)?);
            self.done.revocations += 1;
        }
        // Every replica's tailer is woken when (and only if) this commits.
        self.notify_revocations(seq).await?;
        if let Some(scope) = scope {
            // Nothing of the identity may stay live: a certificate issued after the caller
            // looked would otherwise escape the revocation (and the block).
            let left = certificate::Entity::find()
                .filter(certificate::Column::SpiffeId.eq(scope.spiffe_id.as_str()))
                .filter(certificate::Column::State.is_in(live_states()))
                .filter(certificate::Column::NotAfter.gt(now))
                .one(&self.txn)
                .await
                .map_err(unavailable)?;
            if left.is_some() {
                return Err(StoreError::Conflict("certificate"));
            }
            if let Some(reason) = scope.block {
                let blocked = identity_block::Entity::find_by_id(scope.spiffe_id.clone())
                    .one(&self.txn)
                    .await
                    .map_err(unavailable)?;
                if blocked.is_none() {
                    let row = identity_block::ActiveModel {
                        spiffe_id: Set(scope.spiffe_id),
                        reason: Set(reason.as_str().to_owned()),
                        blocked_by: Set(revoked_by),
                        blocked_at: Set(now),
                    };
                    identity_block::Entity::insert(row)
                        .exec_without_returning(&self.txn)
                        .await
                        .map_err(unavailable)?;
                }
            }
        }
        self.append(audit).await?;
        Ok(Revoked::New(recorded))
    }

    pub(crate) async fn prune_revocations(
        &self,
        before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let expired = revocation::Column::NotAfter.lt(before.unix_timestamp());
        let Some(newest) = revocation::Entity::find()
            .filter(expired.clone())
            .order_by_desc(revocation::Column::Seq)
            .one(&self.txn)
            .await
            .map_err(unavailable)?
        else {
            return Ok(0);
        };
        let deleted = revocation::Entity::delete_many()
            .filter(expired)
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        revocation_floor::Entity::update_many()
            .col_expr(
                revocation_floor::Column::PrunedThrough,
                Expr::value(newest.seq),
            )
            .filter(revocation_floor::Column::PrunedThrough.lt(newest.seq))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(deleted.rows_affected)
    }
}
