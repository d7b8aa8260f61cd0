//! Holds (DESIGN §12): the approvers' list, and a vote as one write transaction with its audit
//! events and the move it causes. The risk facts are read in [`crate::risk`].

use mintgate_domain::hold::{CastVote, HOLD_DENIED, HoldFilter, HoldStore, RiskQuery, VoteOutcome};
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{HoldVote, RequestKind, RequestRecord};
use mintgate_domain::risk::RiskFacts;
use mintgate_domain::store::StoreError;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use time::OffsetDateTime;

use crate::entity::{hold_vote, request};
use crate::write::WriteTx;
use crate::{SqlStore, convert, unavailable};

impl HoldStore for SqlStore {
    async fn risk_facts(&self, query: RiskQuery<'_>) -> Result<RiskFacts, StoreError> {
        self.read_risk_facts(query).await
    }

    async fn prune_risk_counts(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        tx.uncounted();
        let result = tx.prune_risk_counts(now).await;
        tx.end(result).await
    }

    async fn pending_holds(
        &self,
        filter: &HoldFilter,
        limit: u64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let mut query = request::Entity::find()
            .filter(request::Column::State.eq(RequestState::PendingApproval.as_str()));
        if let Some(requester) = &filter.requester {
            query = query.filter(request::Column::Caller.eq(requester.as_str()));
        }
        if let Some(spiffe_id) = &filter.spiffe_id {
            query = query.filter(request::Column::SpiffeId.eq(spiffe_id.as_str()));
        }
        if let Some(tier) = filter.tier {
            query = query.filter(request::Column::RiskTier.eq(tier.as_str()));
        }
        if let Some(at) = filter.expired_at {
            query = query.filter(request::Column::HoldExpiresAt.lte(at.unix_timestamp()));
        }
        query
            .order_by_asc(request::Column::CreatedAt)
            .order_by_asc(request::Column::Pk)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(convert::request)
            .collect()
    }

    async fn request_by_pk(&self, pk: i64) -> Result<Option<RequestRecord>, StoreError> {
        request::Entity::find_by_id(pk)
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(convert::request)
            .transpose()
    }

    async fn hold_votes(&self, pk: i64) -> Result<Vec<HoldVote>, StoreError> {
        hold_vote::Entity::find()
            .filter(hold_vote::Column::RequestPk.eq(pk))
            .order_by_asc(hold_vote::Column::At)
            .order_by_asc(hold_vote::Column::Operator)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(convert::hold_vote)
            .collect()
    }

    async fn cast_vote(&self, vote: CastVote) -> Result<VoteOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let result = tx.cast_vote(vote).await;
        tx.end(result).await
    }
}

impl WriteTx<'_> {
    async fn cast_vote(&mut self, cast: CastVote) -> Result<VoteOutcome, StoreError> {
        let CastVote {
            pk,
            vote,
            quorum,
            audit,
            release_audit,
        } = cast;
        let pending = request::Entity::find_by_id(pk)
            .filter(request::Column::State.eq(RequestState::PendingApproval.as_str()))
            .one(&self.txn)
            .await
            .map_err(unavailable)?;
        let Some(pending) = pending else {
            return Err(StoreError::Conflict("request"));
        };
        let voted = hold_vote::Entity::find_by_id((pk, vote.operator.clone()))
            .one(&self.txn)
            .await
            .map_err(unavailable)?;
        if voted.is_some() {
            return Err(StoreError::Conflict("vote"));
        }
        let at = vote.at.unix_timestamp();
        let approve = vote.approve;
        hold_vote::Entity::insert(hold_vote::ActiveModel {
            request_pk: Set(pk),
            operator: Set(vote.operator),
            approve: Set(approve),
            reason: Set(vote.reason),
            at: Set(at),
        })
        .exec_without_returning(&self.txn)
        .await
        .map_err(unavailable)?;
        self.append(audit).await?;
        let (to, outcome) = if !approve {
            (RequestState::Denied, VoteOutcome::Denied)
        } else {
            let approvals = hold_vote::Entity::find()
                .filter(hold_vote::Column::RequestPk.eq(pk))
                .filter(hold_vote::Column::Approve.eq(true))
                .count(&self.txn)
                .await
                .map_err(unavailable)?;
            if approvals < u64::from(quorum) {
                return Ok(VoteOutcome::Recorded);
            }
            self.append(release_audit).await?;
            if pending.kind == RequestKind::Enroll.as_str() {
                self.risk.released(&pending.caller, &pending.spiffe_id, at);
            }
            (RequestState::Approved, VoteOutcome::Released)
        };
        let mut update = request::Entity::update_many()
            .col_expr(request::Column::State, Expr::value(to.as_str()))
            .col_expr(request::Column::UpdatedAt, Expr::value(at))
            .filter(request::Column::Pk.eq(pk))
            .filter(request::Column::State.eq(RequestState::PendingApproval.as_str()));
        if to == RequestState::Denied {
            update = update.col_expr(request::Column::Reason, Expr::value(HOLD_DENIED));
        }
        let moved = update.exec(&self.txn).await.map_err(unavailable)?;
        if moved.rows_affected != 1 {
            return Err(StoreError::Corrupt(
                "a held request changed under the writer lock".into(),
            ));
        }
        self.done.requests += 1;
        self.done.states.push(to);
        Ok(outcome)
    }
}
