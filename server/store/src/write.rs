//! The store's writes: each is one transaction under the writer lock.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use mintgate_domain::Serial;
use mintgate_domain::audit::{AuditEvent, ChainedEvent, GENESIS};
use mintgate_domain::lifecycle::{CertState, RequestState};
use mintgate_domain::model::{
    BlockRecord, CertificateRecord, IdentityScope, JoinTokenRecord, NewRequest, NewRevocation,
    RequestRecord, RevocationRecord, StoredStatus,
};
use mintgate_domain::store::{
    CertificateStore, Inserted, LogBounds, NewCertificate, NewJoinToken, Revoked, StoreError,
    TokenUse, Unblocked,
};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use time::OffsetDateTime;
use tokio::sync::MutexGuard;

use crate::batch::{Op, Outcome};
use crate::entity::{
    audit_event, certificate, identity_block, join_token, request, revocation, revocation_floor,
};
use crate::metrics::{Done, StoreMetrics};
use crate::read::{bounds, live_states};
use crate::{SqlStore, Writer, convert, unavailable};

/// Key of the PostgreSQL advisory lock that serialises writers across replicas.
const WRITER_LOCK_KEY: i64 = 0x6d69_6e74_6761_7465; // "mintgate"

/// Rows per multi-row INSERT: well under SQLite's and PostgreSQL's bound-parameter limits.
const INSERT_CHUNK: usize = 1000;

pub(crate) struct WriteTx<'a> {
    _guard: MutexGuard<'a, ()>,
    pub(crate) txn: DatabaseTransaction,
    writer: &'a Writer,
    pub(crate) done: Done,
    /// The audit chain's head (seq, hash), once read in this transaction.
    audit_head: Option<(i64, [u8; 32])>,
    /// Rows nothing in the transaction reads back, inserted together just before commit.
    pending_audit: Vec<audit_event::ActiveModel>,
    pub(crate) pending_certificates: Vec<certificate::ActiveModel>,
    /// Blocked identities among those `load_blocks` asked about.
    pub(crate) blocks: HashSet<String>,
}

impl Writer {
    /// Takes the writer lock (and, on PostgreSQL, the advisory lock every replica shares) and
    /// opens a transaction.
    pub(crate) async fn begin(&self) -> Result<WriteTx<'_>, DbErr> {
        let guard = self.lock.lock().await;
        let txn = self
            .db
            .begin_with_options(TransactionOptions {
                isolation_level: None,
                access_mode: None,
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            })
            .await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})"))
                .await?;
        }
        Ok(WriteTx {
            _guard: guard,
            txn,
            writer: self,
            done: Done::default(),
            audit_head: None,
            pending_audit: Vec::new(),
            pending_certificates: Vec::new(),
            blocks: HashSet::new(),
        })
    }

    pub(crate) fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }
}

impl SqlStore {
    async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        self.writer.begin().await.map_err(unavailable)
    }
}

impl WriteTx<'_> {
    /// What was done since the last call.
    pub(crate) fn take_done(&mut self) -> Done {
        std::mem::take(&mut self.done)
    }

    /// Inserts the pending rows, then commits, making `requests` client requests durable at
    /// once.
    pub(crate) async fn commit(mut self, requests: usize) -> Result<(), DbErr> {
        insert_all(&self.txn, std::mem::take(&mut self.pending_certificates)).await?;
        insert_all(&self.txn, std::mem::take(&mut self.pending_audit)).await?;
        self.txn.commit().await?;
        self.writer.commits.fetch_add(1, Ordering::Relaxed);
        self.writer.metrics.record_commit(requests);
        Ok(())
    }

    /// Commits a write of its own, then reports what it did (see [`Done`]).
    async fn finish(mut self) -> Result<(), StoreError> {
        let done = self.take_done();
        let writer = self.writer;
        self.commit(done.requests).await.map_err(unavailable)?;
        done.report(&writer.metrics);
        Ok(())
    }

    /// Appends events to the hash chain, numbering them after the current head. They are
    /// inserted at commit.
    pub(crate) async fn append(&mut self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let (mut seq, mut prev) = match self.audit_head {
            Some(head) => head,
            None => match audit_event::Entity::find()
                .order_by_desc(audit_event::Column::Seq)
                .one(&self.txn)
                .await
                .map_err(unavailable)?
            {
                Some(h) => {
                    let c = convert::chained_event(h)?;
                    (c.event.seq, c.hash)
                }
                None => (0, GENESIS),
            },
        };
        for mut event in events {
            seq += 1;
            event.seq = seq;
            let sealed = ChainedEvent::seal(event, prev);
            prev = sealed.hash;
            self.pending_audit.push(convert::audit_model(&sealed));
            self.done.events.push(sealed.event);
        }
        self.audit_head = Some((seq, prev));
        Ok(())
    }

    /// Moves `serial` from `from` to `to`, conditionally; whether it was in `from`.
    pub(crate) async fn move_certificate(
        &self,
        serial: &Serial,
        from: CertState,
        to: CertState,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let moved = certificate::Entity::update_many()
            .col_expr(certificate::Column::State, Expr::value(to.as_str()))
            .col_expr(
                certificate::Column::UpdatedAt,
                Expr::value(now.unix_timestamp()),
            )
            .filter(certificate::Column::Serial.eq(serial.to_hex()))
            .filter(certificate::Column::State.eq(from.as_str()))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(moved.rows_affected == 1)
    }

    /// The newest revocation sequence number ever assigned (pruning never lowers it).
    async fn revocation_head(&self) -> Result<i64, StoreError> {
        Ok(bounds(&self.txn).await?.head)
    }

    pub(crate) async fn find_request(
        &self,
        caller: &str,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StoreError> {
        request::Entity::find()
            .filter(request::Column::Caller.eq(caller))
            .filter(request::Column::RequestId.eq(request_id))
            .one(&self.txn)
            .await
            .map_err(unavailable)?
            .map(convert::request)
            .transpose()
    }

    /// Like [`find_request`](Self::find_request), for the key of `r`.
    async fn existing_request(&self, r: &NewRequest) -> Result<Option<RequestRecord>, StoreError> {
        self.find_request(&r.caller, &r.request_id).await
    }

    pub(crate) async fn insert_request_row(&mut self, r: NewRequest) -> Result<i64, StoreError> {
        self.done.requests += 1;
        let row = request_model(r);
        let res = request::Entity::insert(row)
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(res.last_insert_id)
    }
}

/// A new request row; the database assigns its pk.
pub(crate) fn request_model(r: NewRequest) -> request::ActiveModel {
    let now = r.now.unix_timestamp();
    request::ActiveModel {
        pk: NotSet,
        caller: Set(r.caller),
        request_id: Set(r.request_id),
        kind: Set(r.kind.as_str().to_owned()),
        payload_hash: Set(r.payload_hash),
        state: Set(r.state.as_str().to_owned()),
        reason: Set(r.reason),
        spiffe_id: Set(r.spiffe_id),
        serial: Set(r.serial.map(|s| s.to_hex())),
        token_id: Set(r.token_id),
        token_expires_at: Set(r.token_expires_at.map(OffsetDateTime::unix_timestamp)),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// Inserts `rows` in multi-row statements of at most [`INSERT_CHUNK`] rows.
async fn insert_all<A>(txn: &DatabaseTransaction, mut rows: Vec<A>) -> Result<(), DbErr>
where
    A: ActiveModelTrait + Send,
{
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(INSERT_CHUNK));
        A::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
        rows = rest;
    }
    Ok(())
}

pub(crate) fn serial_hex(s: &Option<Serial>) -> Option<String> {
    s.as_ref().map(Serial::to_hex)
}

impl CertificateStore for SqlStore {
    async fn find_request(
        &self,
        caller: &str,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StoreError> {
        self.find_request_row(caller, request_id).await
    }

    async fn insert_request(
        &self,
        request: NewRequest,
        token: Option<TokenUse>,
        audit: Vec<AuditEvent>,
    ) -> Result<Inserted, StoreError> {
        let op = Op::InsertRequest {
            request,
            token,
            audit,
        };
        match self.group.submit(op).await? {
            Outcome::Inserted(inserted) => Ok(inserted),
            _ => unreachable!("an insert answers Inserted"),
        }
    }

    async fn complete_issuance(
        &self,
        pk: i64,
        cert: NewCertificate,
        supersedes: Option<Serial>,
        audit: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        let op = Op::CompleteIssuance {
            pk,
            cert,
            supersedes,
            audit,
        };
        self.group.submit(op).await.map(|_| ())
    }

    async fn move_request(
        &self,
        pk: i64,
        from: (RequestState, Option<Serial>),
        to: (RequestState, Option<Serial>),
        now: OffsetDateTime,
        audit: Vec<AuditEvent>,
    ) -> Result<bool, StoreError> {
        let op = Op::MoveRequest {
            pk,
            from,
            to,
            now,
            audit,
        };
        match self.group.submit(op).await? {
            Outcome::Moved(moved) => Ok(moved),
            _ => unreachable!("a move answers Moved"),
        }
    }

    async fn certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError> {
        self.certificate_row(serial).await
    }

    async fn join_token(&self, token_id: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.join_token_row(token_id).await
    }

    async fn insert_join_token(
        &self,
        request: NewRequest,
        token: NewJoinToken,
        audit: Vec<AuditEvent>,
    ) -> Result<Inserted, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(existing) = tx.existing_request(&request).await? {
            return Ok(Inserted::Duplicate(Box::new(existing)));
        }
        let created_at = request.now.unix_timestamp();
        let pk = tx.insert_request_row(request).await?;
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
            .exec_without_returning(&tx.txn)
            .await
            .map_err(unavailable)?;
        tx.append(audit).await?;
        tx.finish().await?;
        Ok(Inserted::New(pk))
    }

    async fn append_audit(&self, audit: Vec<AuditEvent>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.append(audit).await?;
        tx.finish().await
    }

    async fn audit_chain(&self) -> Result<Vec<ChainedEvent>, StoreError> {
        self.audit_rows().await
    }

    async fn revoke(
        &self,
        request: NewRequest,
        revocations: Vec<NewRevocation>,
        scope: Option<IdentityScope>,
        audit: Vec<AuditEvent>,
    ) -> Result<Revoked, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(existing) = tx.existing_request(&request).await? {
            return Ok(Revoked::Duplicate(Box::new(existing)));
        }
        let revoked_at = request.now;
        let now = revoked_at.unix_timestamp();
        let revoked_by = request.caller.clone();
        let request_pk = tx.insert_request_row(request).await?;
        // The writer lock is held until commit, so head + 1 becomes visible only after every
        // smaller sequence number has: watchers reading `seq > cursor` can never skip one.
        let mut seq = tx.revocation_head().await?;
        let mut recorded = Vec::with_capacity(revocations.len());
        for r in revocations {
            let cert = certificate::Entity::find_by_id(r.serial.to_hex())
                .one(&tx.txn)
                .await
                .map_err(unavailable)?
                .ok_or(StoreError::Conflict("certificate"))?;
            if !tx
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
                request_pk,
            };
            revocation::Entity::insert(revocation::ActiveModel::from(row.clone()))
                .exec_without_returning(&tx.txn)
                .await
                .map_err(unavailable)?;
            recorded.push(convert::revocation(row)?);
            tx.done.revocations += 1;
        }
        if let Some(scope) = scope {
            // Nothing of the identity may stay live: a certificate issued after the caller
            // looked would otherwise escape the revocation (and the block).
            let left = certificate::Entity::find()
                .filter(certificate::Column::SpiffeId.eq(scope.spiffe_id.as_str()))
                .filter(certificate::Column::State.is_in(live_states()))
                .filter(certificate::Column::NotAfter.gt(now))
                .one(&tx.txn)
                .await
                .map_err(unavailable)?;
            if left.is_some() {
                return Err(StoreError::Conflict("certificate"));
            }
            if let Some(reason) = scope.block {
                let blocked = identity_block::Entity::find_by_id(scope.spiffe_id.clone())
                    .one(&tx.txn)
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
                        .exec_without_returning(&tx.txn)
                        .await
                        .map_err(unavailable)?;
                }
            }
        }
        tx.append(audit).await?;
        tx.finish().await?;
        Ok(Revoked::New(recorded))
    }

    async fn revocations_of_request(
        &self,
        request_pk: i64,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        self.revocations_of_request_rows(request_pk).await
    }

    async fn live_certificates_of(
        &self,
        spiffe_id: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        self.live_certificate_rows(spiffe_id, now).await
    }

    async fn identity_block(&self, spiffe_id: &str) -> Result<Option<BlockRecord>, StoreError> {
        self.identity_block_row(spiffe_id).await
    }

    async fn unblock(
        &self,
        mut request: NewRequest,
        audit: Vec<AuditEvent>,
    ) -> Result<Unblocked, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(existing) = tx.existing_request(&request).await? {
            return Ok(Unblocked::Duplicate(Box::new(existing)));
        }
        let deleted = identity_block::Entity::delete_by_id(request.spiffe_id.clone())
            .exec(&tx.txn)
            .await
            .map_err(unavailable)?;
        let was_blocked = deleted.rows_affected == 1;
        request.reason = Some(
            if was_blocked {
                "UNBLOCKED"
            } else {
                "NOT_BLOCKED"
            }
            .to_owned(),
        );
        tx.insert_request_row(request).await?;
        if was_blocked {
            tx.append(audit).await?;
        }
        tx.finish().await?;
        Ok(Unblocked::Done { was_blocked })
    }

    async fn certificate_statuses(
        &self,
        serials: &[Serial],
    ) -> Result<Vec<StoredStatus>, StoreError> {
        self.certificate_status_rows(serials).await
    }

    async fn revocations_after(
        &self,
        cursor: i64,
        limit: u64,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        self.revocation_rows_after(cursor, limit).await
    }

    async fn revocation_bounds(&self) -> Result<LogBounds, StoreError> {
        bounds(&self.db).await
    }

    async fn live_revocations(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        self.live_revocation_rows(now).await
    }

    async fn prune_revocations(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let tx = self.begin_write().await?;
        let expired = revocation::Column::NotAfter.lt(before.unix_timestamp());
        let Some(newest) = revocation::Entity::find()
            .filter(expired.clone())
            .order_by_desc(revocation::Column::Seq)
            .one(&tx.txn)
            .await
            .map_err(unavailable)?
        else {
            return Ok(0);
        };
        let deleted = revocation::Entity::delete_many()
            .filter(expired)
            .exec(&tx.txn)
            .await
            .map_err(unavailable)?;
        revocation_floor::Entity::update_many()
            .col_expr(
                revocation_floor::Column::PrunedThrough,
                Expr::value(newest.seq),
            )
            .filter(revocation_floor::Column::PrunedThrough.lt(newest.seq))
            .exec(&tx.txn)
            .await
            .map_err(unavailable)?;
        tx.finish().await?;
        Ok(deleted.rows_affected)
    }
}
