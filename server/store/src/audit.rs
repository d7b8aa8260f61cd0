//! What `mintgate audit verify` reads: the audit chain and every record it must cover, from one
//! snapshot, so that a record committed while it reads cannot turn up without its event. The
//! records are read a page at a time in key order, only the columns the check needs.

use mintgate_domain::audit::{ChainedEvent, Record};
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::RequestKind;
use mintgate_domain::store::StoreError;
use sea_orm::{
    AccessMode, ColumnTrait, DatabaseTransaction, DbBackend, EntityTrait, IsolationLevel,
    QueryFilter, QueryOrder, QuerySelect, TransactionOptions, TransactionTrait,
};

use crate::entity::{audit_event, certificate, identity_block, request, revocation};
use crate::{SqlStore, convert, unavailable};

/// Rows per read of a record table.
const PAGE: u64 = 5000;

/// Where a period lies in the audit chain (see [`AuditSnapshot::chain_bounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBounds {
    /// The first and last seq of the events in the period.
    pub in_period: Option<(i64, i64)>,
    /// The last seq of the events at or before the period's end.
    pub last_by_until: Option<i64>,
    /// The chain's last seq.
    pub head: Option<i64>,
}

/// An open read-only snapshot of the database.
pub struct AuditSnapshot {
    txn: DatabaseTransaction,
}

impl SqlStore {
    /// Opens a snapshot: REPEATABLE READ on PostgreSQL; on SQLite (WAL) a read transaction,
    /// which sees the database as of its first read.
    pub async fn audit_snapshot(&self) -> Result<AuditSnapshot, StoreError> {
        let options = match self.db.get_database_backend() {
            DbBackend::Postgres => TransactionOptions {
                isolation_level: Some(IsolationLevel::RepeatableRead),
                access_mode: Some(AccessMode::ReadOnly),
                sqlite_transaction_mode: None,
            },
            _ => TransactionOptions::default(),
        };
        let txn = self
            .db
            .begin_with_options(options)
            .await
            .map_err(unavailable)?;
        Ok(AuditSnapshot { txn })
    }
}

impl AuditSnapshot {
    pub(crate) fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// The audit trail in seq order.
    pub async fn chain(&self) -> Result<Vec<ChainedEvent>, StoreError> {
        audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Seq)
            .all(&self.txn)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(convert::chained_event)
            .collect()
    }

    /// The events after seq `after` up to seq `through`, at most `limit` of them, in seq order:
    /// one page of the chain, for a reader that keeps only a page in memory (keyset pagination
    /// on the primary key).
    pub async fn chain_page(
        &self,
        after: i64,
        through: i64,
        limit: u64,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        audit_event::Entity::find()
            .filter(audit_event::Column::Seq.gt(after))
            .filter(audit_event::Column::Seq.lte(through))
            .order_by_asc(audit_event::Column::Seq)
            .limit(limit)
            .all(&self.txn)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(convert::chained_event)
            .collect()
    }

    /// The lowest and highest seq of the events whose time (unix seconds) is in `from..=to`,
    /// and the highest seq of any event. None where there is none.
    pub async fn chain_bounds(&self, from: i64, to: i64) -> Result<ChainBounds, StoreError> {
        let in_period: Option<(Option<i64>, Option<i64>)> = audit_event::Entity::find()
            .select_only()
            .column_as(audit_event::Column::Seq.min(), "first")
            .column_as(audit_event::Column::Seq.max(), "last")
            .filter(audit_event::Column::At.between(from, to))
            .into_tuple()
            .one(&self.txn)
            .await
            .map_err(unavailable)?;
        let by_until: Option<Option<i64>> = audit_event::Entity::find()
            .select_only()
            .column_as(audit_event::Column::Seq.max(), "last")
            .filter(audit_event::Column::At.lte(to))
            .into_tuple()
            .one(&self.txn)
            .await
            .map_err(unavailable)?;
        let head: Option<Option<i64>> = audit_event::Entity::find()
            .select_only()
            .column_as(audit_event::Column::Seq.max(), "last")
            .into_tuple()
            .one(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(ChainBounds {
            in_period: match in_period {
                Some((Some(first), Some(last))) => Some((first, last)),
                _ => None,
            },
            last_by_until: by_until.flatten(),
            head: head.flatten(),
        })
    }

    /// Hands every certificate, revocation log entry, identity block and request to `visit`.
    pub async fn for_each_record(&self, mut visit: impl FnMut(Record)) -> Result<(), StoreError> {
        self.certificates(&mut visit).await?;
        self.revocations(&mut visit).await?;
        self.blocks(&mut visit).await?;
        self.requests(&mut visit).await
    }

    /// Ends the snapshot.
    pub async fn close(self) {
        let _ = self.txn.rollback().await;
    }

    async fn certificates(&self, visit: &mut impl FnMut(Record)) -> Result<(), StoreError> {
        let mut after = String::new();
        loop {
            let page: Vec<(String, String, i64, i64)> = certificate::Entity::find()
                .select_only()
                .columns([
                    certificate::Column::Serial,
                    certificate::Column::State,
                    certificate::Column::IssuedAt,
                    certificate::Column::UpdatedAt,
                ])
                .filter(certificate::Column::Serial.gt(after.as_str()))
                .order_by_asc(certificate::Column::Serial)
                .limit(PAGE)
                .into_tuple()
                .all(&self.txn)
                .await
                .map_err(unavailable)?;
            let Some((last, ..)) = page.last() else {
                return Ok(());
            };
            after = last.clone();
            for (serial, state, issued_at, updated_at) in page {
                visit(Record::Certificate {
                    serial: convert::serial(&serial)?,
                    state: convert::cert_state(&state)?,
                    issued_at: convert::ts(issued_at)?,
                    updated_at: convert::ts(updated_at)?,
                });
            }
        }
    }

    async fn revocations(&self, visit: &mut impl FnMut(Record)) -> Result<(), StoreError> {
        let mut after = i64::MIN;
        loop {
            let page: Vec<(i64, String, i64)> = revocation::Entity::find()
                .select_only()
                .columns([
                    revocation::Column::Seq,
                    revocation::Column::Serial,
                    revocation::Column::RevokedAt,
                ])
                .filter(revocation::Column::Seq.gt(after))
                .order_by_asc(revocation::Column::Seq)
                .limit(PAGE)
                .into_tuple()
                .all(&self.txn)
                .await
                .map_err(unavailable)?;
            let Some((last, ..)) = page.last() else {
                return Ok(());
            };
            after = *last;
            for (seq, serial, revoked_at) in page {
                visit(Record::Revocation {
                    seq,
                    serial: convert::serial(&serial)?,
                    revoked_at: convert::ts(revoked_at)?,
                });
            }
        }
    }

    async fn blocks(&self, visit: &mut impl FnMut(Record)) -> Result<(), StoreError> {
        let mut after = String::new();
        loop {
            let page: Vec<(String, i64)> = identity_block::Entity::find()
                .select_only()
                .columns([
                    identity_block::Column::SpiffeId,
                    identity_block::Column::BlockedAt,
                ])
                .filter(identity_block::Column::SpiffeId.gt(after.as_str()))
                .order_by_asc(identity_block::Column::SpiffeId)
                .limit(PAGE)
                .into_tuple()
                .all(&self.txn)
                .await
                .map_err(unavailable)?;
            let Some((last, ..)) = page.last() else {
                return Ok(());
            };
            after = last.clone();
            for (spiffe_id, blocked_at) in page {
                visit(Record::IdentityBlock {
                    spiffe_id,
                    blocked_at: convert::ts(blocked_at)?,
                });
            }
        }
    }

    async fn requests(&self, visit: &mut impl FnMut(Record)) -> Result<(), StoreError> {
        type Row = (i64, String, String, String, String, Option<String>, i64);
        let mut after = i64::MIN;
        loop {
            let page: Vec<Row> = request::Entity::find()
                .select_only()
                .columns([
                    request::Column::Pk,
                    request::Column::Caller,
                    request::Column::RequestId,
                    request::Column::Kind,
                    request::Column::State,
                    request::Column::Reason,
                    request::Column::UpdatedAt,
                ])
                .filter(request::Column::Pk.gt(after))
                .order_by_asc(request::Column::Pk)
                .limit(PAGE)
                .into_tuple()
                .all(&self.txn)
                .await
                .map_err(unavailable)?;
            let Some((last, ..)) = page.last() else {
                return Ok(());
            };
            after = *last;
            for (_, caller, request_id, kind, state, reason, updated_at) in page {
                visit(Record::Request {
                    kind: RequestKind::parse(&kind)
                        .ok_or_else(|| convert::corrupt("request kind"))?,
                    state: RequestState::parse(&state)
                        .ok_or_else(|| convert::corrupt("request state"))?,
                    updated_at: convert::ts(updated_at)?,
                    caller,
                    request_id,
                    reason,
                });
            }
        }
    }
}
