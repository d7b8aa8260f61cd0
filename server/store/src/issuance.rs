//! The issuance path's writes. The group-commit writer ([`crate::batch`]) applies each inside
//! a savepoint of a shared transaction; none of them commits.

use mintgate_domain::Serial;
use mintgate_domain::audit::AuditEvent;
use mintgate_domain::lifecycle::{CertState, RequestState};
use mintgate_domain::model::NewRequest;
use mintgate_domain::store::{Inserted, NewCertificate, StoreError, TokenUse};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, TryInsertResult};
use time::OffsetDateTime;

use crate::entity::{certificate, identity_block, join_token, request};
use crate::unavailable;
use crate::write::{WriteTx, request_model, serial_hex};

impl WriteTx<'_> {
    /// Reads which of `identities` are blocked, for [`is_blocked`](Self::is_blocked) to
    /// answer from for the rest of the transaction.
    pub(crate) async fn load_blocks(&mut self, identities: Vec<String>) -> Result<(), StoreError> {
        let blocked = if identities.is_empty() {
            Vec::new()
        } else {
            identity_block::Entity::find()
                .filter(identity_block::Column::SpiffeId.is_in(identities))
                .all(&self.txn)
                .await
                .map_err(unavailable)?
        };
        self.blocks = Some(blocked.into_iter().map(|b| b.spiffe_id).collect());
        Ok(())
    }

    async fn is_blocked(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        if let Some(blocks) = &self.blocks {
            return Ok(blocks.contains(spiffe_id));
        }
        let block = identity_block::Entity::find_by_id(spiffe_id.to_owned())
            .one(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(block.is_some())
    }

    pub(crate) async fn insert_request(
        &mut self,
        request: NewRequest,
        token: Option<TokenUse>,
        audit: Vec<AuditEvent>,
    ) -> Result<Inserted, StoreError> {
        let Some(t) = token else {
            // One statement in the common case: the key's unique index finds a duplicate.
            let state = request.state;
            let (caller, request_id) = (request.caller.clone(), request.request_id.clone());
            let key = [request::Column::Caller, request::Column::RequestId];
            let inserted = request::Entity::insert(request_model(request))
                .on_conflict_do_nothing_on(key)
                .exec(&self.txn)
                .await
                .map_err(unavailable)?;
            return match inserted {
                TryInsertResult::Inserted(row) => {
                    self.done.requests += 1;
                    self.done.states.push(state);
                    self.append(audit).await?;
                    Ok(Inserted::New(row.last_insert_id))
                }
                _ => {
                    let existing = self.find_request(&caller, &request_id).await?;
                    let existing = existing.ok_or(StoreError::Conflict("request"))?;
                    Ok(Inserted::Duplicate(Box::new(existing)))
                }
            };
        };
        if let Some(existing) = self
            .find_request(&request.caller, &request.request_id)
            .await?
        {
            return Ok(Inserted::Duplicate(Box::new(existing)));
        }
        let now = t.now.unix_timestamp();
        let used = join_token::Entity::update_many()
            .col_expr(join_token::Column::UsedAt, Expr::value(now))
            .col_expr(join_token::Column::UsedBy, Expr::value(t.used_by))
            .filter(join_token::Column::TokenId.eq(t.token_id))
            .filter(join_token::Column::UsedAt.is_null())
            .filter(join_token::Column::ExpiresAt.gt(now))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        if used.rows_affected != 1 {
            return Err(StoreError::Conflict("join token"));
        }
        self.done.states.push(request.state);
        let pk = self.insert_request_row(request).await?;
        self.append(audit).await?;
        Ok(Inserted::New(pk))
    }

    pub(crate) async fn complete_issuance(
        &mut self,
        pk: i64,
        cert: NewCertificate,
        supersedes: Option<Serial>,
        audit: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        let now = cert.issued_at.unix_timestamp();
        // Every refusal comes before the first write (see `crate::batch`).
        // A block committed after the request was approved wins: nothing is issued for it.
        if self.is_blocked(&cert.spiffe_id).await? {
            return Err(StoreError::Conflict("identity blocked"));
        }
        if let Some(old) = &supersedes {
            // Under the writer lock, the update below finds what this count finds.
            let active = certificate::Entity::find()
                .filter(certificate::Column::Serial.eq(old.to_hex()))
                .filter(certificate::Column::State.eq(CertState::Active.as_str()))
                .count(&self.txn)
                .await
                .map_err(unavailable)?;
            if active != 1 {
                return Err(StoreError::Conflict("certificate"));
            }
        }
        let moved = request::Entity::update_many()
            .col_expr(
                request::Column::State,
                Expr::value(RequestState::Issued.as_str()),
            )
            .col_expr(request::Column::UpdatedAt, Expr::value(now))
            .filter(request::Column::Pk.eq(pk))
            .filter(request::Column::State.eq(RequestState::Approved.as_str()))
            .filter(request::Column::Serial.eq(cert.serial.to_hex()))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        if moved.rows_affected != 1 {
            return Err(StoreError::Conflict("request"));
        }
        self.done.requests += 1;
        self.done.states.push(RequestState::Issued);
        if let Some(old) = supersedes {
            let moved = certificate::Entity::update_many()
                .col_expr(
                    certificate::Column::State,
                    Expr::value(CertState::Superseded.as_str()),
                )
                .col_expr(certificate::Column::UpdatedAt, Expr::value(now))
                .filter(certificate::Column::Serial.eq(old.to_hex()))
                .filter(certificate::Column::State.eq(CertState::Active.as_str()))
                .exec(&self.txn)
                .await
                .map_err(unavailable)?;
            if moved.rows_affected != 1 {
                // Not a refusal: the request row has moved already, so the batch must fail.
                return Err(StoreError::Corrupt(
                    "certificate changed under the writer lock".into(),
                ));
            }
        }
        self.pending_certificates.push(certificate::ActiveModel {
            serial: Set(cert.serial.to_hex()),
            spiffe_id: Set(cert.spiffe_id),
            state: Set(CertState::Active.as_str().to_owned()),
            key_type: Set(cert.key_type),
            not_before: Set(cert.not_before.unix_timestamp()),
            not_after: Set(cert.not_after.unix_timestamp()),
            der: Set(cert.der),
            chain_pem: Set(cert.chain_pem),
            request_pk: Set(pk),
            issued_at: Set(now),
            updated_at: Set(now),
        });
        self.append(audit).await
    }

    pub(crate) async fn move_request(
        &mut self,
        pk: i64,
        from: (RequestState, Option<Serial>),
        to: (RequestState, Option<Serial>),
        now: OffsetDateTime,
        audit: Vec<AuditEvent>,
    ) -> Result<bool, StoreError> {
        let mut update = request::Entity::update_many()
            .col_expr(request::Column::State, Expr::value(to.0.as_str()))
            .col_expr(request::Column::Serial, Expr::value(serial_hex(&to.1)))
            .col_expr(
                request::Column::UpdatedAt,
                Expr::value(now.unix_timestamp()),
            )
            .filter(request::Column::Pk.eq(pk))
            .filter(request::Column::State.eq(from.0.as_str()));
        update = match serial_hex(&from.1) {
            Some(s) => update.filter(request::Column::Serial.eq(s)),
            None => update.filter(request::Column::Serial.is_null()),
        };
        let moved = update.exec(&self.txn).await.map_err(unavailable)?;
        if moved.rows_affected != 1 {
            return Ok(false);
        }
        self.done.requests += 1;
        self.done.states.push(to.0);
        self.append(audit).await?;
        Ok(true)
    }
}
