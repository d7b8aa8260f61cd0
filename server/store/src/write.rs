//! The store's writes: each is one transaction under the writer lock, on the writer's own
//! connection, reported done only once its commit is seen from outside that connection.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use mintgate_domain::Serial;
use mintgate_domain::audit::{AuditEvent, ChainedEvent, GENESIS};
use mintgate_domain::lifecycle::{CertState, RequestState};
use mintgate_domain::model::{
    BlockRecord, CertificateRecord, IdentityScope, InstanceId, JoinTokenRecord, NewRequest,
    NewRevocation, RequestRecord, RevocationRecord, StoredStatus,
};
use mintgate_domain::policy::PolicyDecision;
use mintgate_domain::risk::RiskAssessment;
use mintgate_domain::store::{
    CertificateStore, Inserted, LogBounds, NewCertificate, NewJoinToken, Revoked, StoreError,
    TokenUse,
};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use time::OffsetDateTime;
use tokio::sync::MutexGuard;

use crate::batch::{INSERT_ROWS, Op, Outcome, statement_chunks};
use crate::entity::{audit_event, certificate, request, store_probe};
use crate::health::Unready;
use crate::metrics::{Done, StoreMetrics};
use crate::read::bounds;
use crate::risk::{Counted, RiskTally};
use crate::{SqlStore, WriteConn, Writer, convert, unavailable, write_options};

/// Key of the PostgreSQL advisory lock that serialises writers across replicas.
const WRITER_LOCK_KEY: i64 = 0x6d69_6e74_6761_7465; // "mintgate"

pub(crate) struct WriteTx<'a> {
    // Dropped before the lease, so its rollback is queued before the lock is released.
    pub(crate) txn: DatabaseTransaction,
    lease: Lease<'a>,
    writer: &'a Writer,
    pub(crate) done: Done,
    /// The audit chain's head (seq, hash), once read in this transaction.
    audit_head: Option<(i64, [u8; 32])>,
    /// The last event this transaction appended: what [`WriteTx::commit`] reads back.
    appended: Option<(i64, [u8; 32])>,
    /// Whether its commit counts in [`SqlStore::write_commits`] (the probe's does not).
    counted: bool,
    /// Rows nothing in the transaction reads back, inserted together just before commit.
    pending_audit: Vec<audit_event::ActiveModel>,
    pub(crate) pending_certificates: Vec<certificate::ActiveModel>,
    /// Blocked identities among those `load_blocks` asked about.
    pub(crate) blocks: HashSet<String>,
    /// What the requests recorded add to the risk counts, written at commit.
    pub(crate) risk: RiskTally,
}

/// The writer lock, held for one transaction. A transaction that ends any other way than a
/// commit or rollback that succeeded (an error, a panic, a cancelled future) condemns the
/// connection: after a failed COMMIT or ROLLBACK the driver's idea of whether a transaction is
/// open can be wrong (sqlx then turns the next BEGIN into a SAVEPOINT and its COMMIT into a
/// RELEASE, and nothing is ever committed again), so the next write opens a fresh connection.
struct Lease<'a> {
    conn: MutexGuard<'a, WriteConn>,
    ended: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.ended && matches!(*self.conn, WriteConn::Open(_)) {
            tracing::warn!("a write did not end cleanly; its connection will be replaced");
            *self.conn = WriteConn::Condemned;
        }
    }
}

impl Writer {
    /// Opens a write connection.
    pub(crate) async fn open(url: &str) -> Result<DatabaseConnection, StoreError> {
        // Writes have a connection of their own, so a batch never queues for one behind the
        // readers (the writer lock lets one write transaction run at a time anyway).
        Database::connect(write_options(url))
            .await
            .map_err(unavailable)
    }

    /// Takes the writer lock (and, on PostgreSQL, the advisory lock every replica shares) and
    /// opens a transaction, on a fresh connection if the last one was condemned.
    pub(crate) async fn begin(&self) -> Result<WriteTx<'_>, StoreError> {
        let begun = self.try_begin().await;
        if let Err(e) = &begun {
            tracing::warn!(error = %e, "could not begin a write");
            self.health.failed(Unready::WriteFailed);
        }
        begun
    }

    async fn try_begin(&self) -> Result<WriteTx<'_>, StoreError> {
        let mut conn = self.conn.lock().await;
        let db = match &*conn {
            WriteConn::Open(db) => db.clone(),
            WriteConn::Condemned => {
                let db = Self::open(&self.url).await?;
                *conn = WriteConn::Open(db.clone());
                db
            }
            WriteConn::Closed => {
                return Err(crate::closed());
            }
        };
        let lease = Lease { conn, ended: false };
        let txn = db
            .begin_with_options(TransactionOptions {
                isolation_level: None,
                access_mode: None,
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            })
            .await
            .map_err(unavailable)?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})"))
                .await
                .map_err(unavailable)?;
        }
        Ok(WriteTx {
            txn,
            lease,
            writer: self,
            done: Done::default(),
            audit_head: None,
            appended: None,
            counted: true,
            pending_audit: Vec::new(),
            pending_certificates: Vec::new(),
            blocks: HashSet::new(),
            risk: RiskTally::default(),
        })
    }

    pub(crate) fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Whether the event `(seq, hash)` is visible from the read pool, i.e. was really committed.
    async fn committed_event(&self, (seq, hash): (i64, [u8; 32])) -> Result<(), DbErr> {
        let stored = audit_event::Entity::find_by_id(seq)
            .one(&self.readers)
            .await?;
        if stored.is_some_and(|e| e.hash == hex::encode(hash)) {
            Ok(())
        } else {
            Err(DbErr::Custom(format!(
                "the commit reported success but audit event {seq} is not in the database"
            )))
        }
    }

    /// The probe's write: one row updated and committed like any other write.
    pub(crate) async fn probe_write(&self) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.uncounted();
        let probed = store_probe::Entity::update_many()
            .col_expr(
                store_probe::Column::Probes,
                Expr::col(store_probe::Column::Probes).add(Expr::value(1)),
            )
            .exec(&tx.txn)
            .await;
        let probed = probed.map(|_| ()).map_err(unavailable);
        tx.end(probed).await
    }
}

impl SqlStore {
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        self.writer.begin().await
    }
}

impl WriteTx<'_> {
    /// Keeps this transaction's commit out of [`SqlStore::write_commits`]: it holds no client
    /// request (the probe's, a checkpoint's).
    pub(crate) fn uncounted(&mut self) {
        self.counted = false;
    }

    /// What was done since the last call.
    pub(crate) fn take_done(&mut self) -> Done {
        std::mem::take(&mut self.done)
    }

    /// Inserts the pending rows, then commits, making `requests` client requests durable at
    /// once. The commit counts only once the last event appended is seen from another
    /// connection: a COMMIT that reported success without ending the transaction is a failure.
    pub(crate) async fn commit(mut self, requests: usize) -> Result<(), StoreError> {
        let writer = self.writer;
        let committed = async {
            self.risk.flush(&self.txn).await?;
            insert_all(&self.txn, std::mem::take(&mut self.pending_certificates)).await?;
            insert_all(&self.txn, std::mem::take(&mut self.pending_audit)).await?;
            self.txn.commit().await?;
            match self.appended {
                Some(last) => writer.committed_event(last).await,
                None => Ok(()),
            }
        }
        .await;
        if let Err(e) = committed {
            // Nothing of it was committed, or (if only the read-back failed) it is not known to
            // have been: either way the callers hear a retryable failure, and a retry with the
            // same request id gets whatever was kept.
            tracing::error!(error = %e, "a write could not be confirmed committed");
            writer.health.failed(Unready::WriteFailed);
            return Err(unavailable(e));
        }
        self.lease.ended = true;
        writer.health.committed(self.counted);
        if let Some((seq, _)) = self.appended {
            writer.audit_head.send_replace(seq);
        }
        if self.counted {
            writer.commits.fetch_add(1, Ordering::Relaxed);
            writer.metrics.record_commit(requests);
        }
        Ok(())
    }

    /// Ends a write of its own as `result` says: commits it on success (then reports what it
    /// did, see [`Done`]), rolls it back on a refusal, and leaves any other failure to condemn
    /// the connection.
    pub(crate) async fn end<T>(mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                let done = self.take_done();
                let writer = self.writer;
                self.commit(done.requests).await?;
                done.report(&writer.metrics);
                Ok(value)
            }
            Err(refused @ StoreError::Conflict(_)) => {
                let WriteTx { txn, mut lease, .. } = self;
                if txn.rollback().await.is_ok() {
                    lease.ended = true;
                }
                Err(refused)
            }
            Err(e) => {
                tracing::warn!(error = ?e, "a write failed");
                self.writer.health.failed(Unready::WriteFailed);
                Err(e)
            }
        }
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
            self.appended = Some((seq, sealed.hash));
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
    pub(crate) async fn revocation_head(&self) -> Result<i64, StoreError> {
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
    pub(crate) async fn existing_request(
        &self,
        r: &NewRequest,
    ) -> Result<Option<RequestRecord>, StoreError> {
        self.find_request(&r.caller, &r.request_id).await
    }

    /// The instance this transaction records as the holder of the requests it writes.
    pub(crate) fn instance(&self) -> InstanceId {
        self.writer.instance
    }

    pub(crate) async fn insert_request_row(&mut self, r: NewRequest) -> Result<i64, StoreError> {
        self.done.requests += 1;
        self.risk.add(Counted::of(&r));
        let row = request_model(r, self.instance());
        let res = request::Entity::insert(row)
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(res.last_insert_id)
    }
}

/// A new request row held by `holder`; the database assigns its pk.
pub(crate) fn request_model(r: NewRequest, holder: InstanceId) -> request::ActiveModel {
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
        lease_holder: Set(Some(holder.0)),
        policy_ids: Set(r.decision.as_ref().map(PolicyDecision::policies_text)),
        policy_version: Set(r.decision.map(|d| d.policy_version)),
        risk_score: Set(r.risk.as_ref().map(|a| i32::from(a.score))),
        risk_tier: Set(r.risk.as_ref().map(|a| a.tier.as_str().to_owned())),
        risk_signals: Set(r.risk.as_ref().map(RiskAssessment::signals_text)),
        hold_reason: Set(r.hold.as_ref().map(|h| h.reason.clone())),
        hold_quorum: Set(r.hold.as_ref().map(|h| i32::from(h.quorum))),
        hold_expires_at: Set(r.hold.map(|h| h.expires_at.unix_timestamp())),
    }
}

/// Inserts `rows` in multi-row statements (see [`statement_chunks`]).
async fn insert_all<A>(txn: &DatabaseTransaction, rows: Vec<A>) -> Result<(), DbErr>
where
    A: ActiveModelTrait + Send,
{
    for chunk in statement_chunks(rows, INSERT_ROWS) {
        A::Entity::insert_many(chunk)
            .exec_without_returning(txn)
            .await?;
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

    fn instance_id(&self) -> InstanceId {
        SqlStore::instance_id(self)
    }

    async fn lease_holder_alive(&self, holder: InstanceId) -> Result<bool, StoreError> {
        self.instance.alive(&self.db, holder).await
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
        let result = tx.insert_join_token(request, token, audit).await;
        tx.end(result).await
    }

    async fn append_audit(&self, audit: Vec<AuditEvent>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result = tx.append(audit).await;
        tx.end(result).await
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
        let result = tx.revoke(request, revocations, scope, audit).await;
        tx.end(result).await
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
        let result = tx.prune_revocations(before).await;
        tx.end(result).await
    }
}
