//! The issuance path's writes, as the group-commit writer ([`crate::batch`]) applies them in
//! its shared transaction: new requests and completions in set-based statements for a whole
//! batch, a request with a join token on its own. None of them commits, and each refusal ([`StoreError::Conflict`]) comes
//! before anything is written for it.

use std::collections::{BTreeMap, HashMap, HashSet};

use mintgate_domain::Serial;
use mintgate_domain::audit::AuditEvent;
use mintgate_domain::lifecycle::{CertState, RequestState};
use mintgate_domain::model::NewRequest;
use mintgate_domain::store::{Inserted, NewCertificate, StoreError, TokenUse};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryResult, QueryTrait, StatementBuilder,
};
use time::OffsetDateTime;

use crate::batch::{INSERT_ROWS, statement_chunks};
use crate::entity::{certificate, identity_block, join_token, request};
use crate::metrics::Done;
use crate::risk::Counted;
use crate::unavailable;
use crate::write::{WriteTx, request_model, serial_hex};

/// Most requests one UPDATE moves to ISSUED: its OR chain stays well inside SQLite's expression
/// depth limit (1,000).
const MOVED_ROWS: usize = 128;

impl WriteTx<'_> {
    /// Reads which of `identities` are blocked, for the completions of this batch to check
    /// (nothing in a batch adds a block).
    pub(crate) async fn load_blocks(&mut self, identities: Vec<String>) -> Result<(), StoreError> {
        if identities.is_empty() {
            return Ok(());
        }
        let blocked = identity_block::Entity::find()
            .filter(identity_block::Column::SpiffeId.is_in(identities))
            .all(&self.txn)
            .await
            .map_err(unavailable)?;
        self.blocks.extend(blocked.into_iter().map(|b| b.spiffe_id));
        Ok(())
    }

    /// Inserts requests with one statement. Each answers `New`, or `Duplicate` when its key
    /// exists already (also from earlier in `items`).
    pub(crate) async fn insert_requests<T>(
        &mut self,
        items: Vec<(T, NewRequest, Vec<AuditEvent>)>,
    ) -> Result<Vec<(T, Result<(Inserted, Done), StoreError>)>, StoreError> {
        let mut keys = Vec::with_capacity(items.len());
        let mut rows = Vec::with_capacity(items.len());
        for (tag, request, audit) in items {
            let key = (request.caller.clone(), request.request_id.clone());
            keys.push((tag, key, request.state, audit, Counted::of(&request)));
            rows.push(request_model(request, self.instance()));
        }
        let mut inserted = HashMap::new();
        for chunk in statement_chunks(rows, INSERT_ROWS) {
            use request::Column::{Caller, Pk, RequestId};
            // Only what maps a request to its pk comes back, not the rows just sent.
            let mut insert = request::Entity::insert_many(chunk)
                .on_conflict_do_nothing_on([Caller, RequestId])
                .into_query();
            insert.returning(Query::returning().columns([Caller, RequestId, Pk]));
            let key_and_pk = |row: QueryResult| -> Result<_, DbErr> {
                let key = (row.try_get_by_index(0)?, row.try_get_by_index(1)?);
                Ok((key, row.try_get_by_index(2)?))
            };
            let returned = self.returned(&insert).await?.into_iter().map(key_and_pk);
            for pair in returned {
                let (key, pk) = pair.map_err(unavailable)?;
                inserted.insert(key, pk);
            }
        }
        let mut answers = Vec::with_capacity(keys.len());
        for (tag, key, state, audit, counted) in keys {
            let answer = match inserted.remove(&key) {
                Some(pk) => {
                    self.risk.add(counted);
                    self.done.requests += 1;
                    self.done.states.push(state);
                    self.append(audit).await?;
                    Ok((Inserted::New(pk), self.take_done()))
                }
                None => self
                    .find_request(&key.0, &key.1)
                    .await?
                    .map(|existing| (Inserted::Duplicate(Box::new(existing)), Done::default()))
                    .ok_or(StoreError::Conflict("request")),
            };
            answers.push((tag, answer));
        }
        Ok(answers)
    }

    /// Moves APPROVED requests to ISSUED and records their certificates, with one UPDATE per
    /// issuance second; a renewal also moves the certificate it supersedes. Each refusal comes
    /// before that UPDATE.
    pub(crate) async fn complete_issuances<T>(
        &mut self,
        items: Vec<Completion<T>>,
    ) -> Result<Vec<(T, Result<Done, StoreError>)>, StoreError> {
        let mut answers = Vec::with_capacity(items.len());
        let mut eligible = Vec::with_capacity(items.len());
        for c in items {
            // A block committed after the request was approved wins: nothing is issued for it.
            if self.blocks.contains(&c.cert.spiffe_id) {
                answers.push((c.tag, Err(StoreError::Conflict("identity blocked"))));
            } else if let Some(old) = &c.supersedes
                && !self.is_active(old).await?
            {
                answers.push((c.tag, Err(StoreError::Conflict("certificate"))));
            } else {
                eligible.push(c);
            }
        }
        let mut by_second = BTreeMap::<i64, Vec<(i64, String)>>::new();
        for c in &eligible {
            let second = by_second
                .entry(c.cert.issued_at.unix_timestamp())
                .or_default();
            second.push((c.pk, c.cert.serial.to_hex()));
        }
        let mut moved = HashSet::new();
        for (now, requests) in by_second {
            for chunk in statement_chunks(requests, MOVED_ROWS) {
                let reserved = chunk.iter().fold(Condition::any(), |any, (pk, serial)| {
                    any.add(
                        Condition::all()
                            .add(request::Column::Pk.eq(*pk))
                            .add(request::Column::Serial.eq(serial.as_str())),
                    )
                });
                let mut update = request::Entity::update_many()
                    .col_expr(
                        request::Column::State,
                        Expr::value(RequestState::Issued.as_str()),
                    )
                    .col_expr(request::Column::UpdatedAt, Expr::value(now))
                    .filter(request::Column::State.eq(RequestState::Approved.as_str()))
                    .filter(reserved)
                    .into_query();
                update.returning_col(request::Column::Pk);
                for row in self.returned(&update).await? {
                    moved.insert(row.try_get_by_index::<i64>(0).map_err(unavailable)?);
                }
            }
        }
        for c in eligible {
            // `remove`: one certificate per request, even if a batch held two completions.
            if !moved.remove(&c.pk) {
                answers.push((c.tag, Err(StoreError::Conflict("request"))));
                continue;
            }
            if let Some(old) = &c.supersedes {
                let now = c.cert.issued_at;
                if !self
                    .move_certificate(old, CertState::Active, CertState::Superseded, now)
                    .await?
                {
                    // Not a refusal: the request row has moved already, so the batch must fail.
                    return Err(StoreError::Corrupt(
                        "certificate changed under the writer lock".into(),
                    ));
                }
            }
            self.done.requests += 1;
            self.done.states.push(RequestState::Issued);
            self.pending_certificates
                .push(certificate_model(c.pk, c.cert));
            self.append(c.audit).await?;
            answers.push((c.tag, Ok(self.take_done())));
        }
        Ok(answers)
    }

    /// The rows `statement`'s `RETURNING` gives back.
    async fn returned(
        &self,
        statement: &impl StatementBuilder,
    ) -> Result<Vec<QueryResult>, StoreError> {
        let statement = self.txn.get_database_backend().build(statement);
        self.txn.query_all_raw(statement).await.map_err(unavailable)
    }

    /// Whether `serial` is ACTIVE. Under the writer lock, a later update in this transaction
    /// finds what this finds.
    async fn is_active(&self, serial: &Serial) -> Result<bool, StoreError> {
        let active = certificate::Entity::find()
            .filter(certificate::Column::Serial.eq(serial.to_hex()))
            .filter(certificate::Column::State.eq(CertState::Active.as_str()))
            .count(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(active == 1)
    }

    /// One request that uses a join token: marked used in the same transaction.
    pub(crate) async fn insert_request_with_token(
        &mut self,
        request: NewRequest,
        t: TokenUse,
        audit: Vec<AuditEvent>,
    ) -> Result<Inserted, StoreError> {
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
            .col_expr(request::Column::LeaseHolder, Expr::value(self.instance().0))
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

/// A certificate to record, as the batch submitted it.
pub(crate) struct Completion<T> {
    pub(crate) tag: T,
    pub(crate) pk: i64,
    pub(crate) cert: NewCertificate,
    pub(crate) supersedes: Option<Serial>,
    pub(crate) audit: Vec<AuditEvent>,
}

fn certificate_model(request_pk: i64, cert: NewCertificate) -> certificate::ActiveModel {
    let issued_at = cert.issued_at.unix_timestamp();
    certificate::ActiveModel {
        serial: Set(cert.serial.to_hex()),
        spiffe_id: Set(cert.spiffe_id),
        state: Set(CertState::Active.as_str().to_owned()),
        key_type: Set(cert.key_type),
        not_before: Set(cert.not_before.unix_timestamp()),
        not_after: Set(cert.not_after.unix_timestamp()),
        der: Set(cert.der),
        chain_pem: Set(cert.chain_pem),
        request_pk: Set(request_pk),
        issued_at: Set(issued_at),
        updated_at: Set(issued_at),
        issuer_key_id: Set(Some(cert.issuer_key_id)),
    }
}
