//! Risk facts and holds (DESIGN §12). The facts are counted from the requests and certificates
//! tables on the read pool, a handful of indexed aggregate queries run at once; a vote is one
//! write transaction with its audit events and the move it causes.

use std::time::Duration;

use mintgate_domain::hold::{CastVote, HOLD_DENIED, HoldFilter, HoldStore, RiskQuery, VoteOutcome};
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{HoldVote, RequestKind, RequestRecord};
use mintgate_domain::risk::{HISTORY, Rates, RiskFacts};
use mintgate_domain::store::StoreError;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, Func, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::entity::{certificate, hold_vote, request};
use crate::write::WriteTx;
use crate::{SqlStore, convert, unavailable};

/// The windows of [`Rates`], in seconds.
const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 24 * 3600;

impl HoldStore for SqlStore {
    async fn risk_facts(&self, query: RiskQuery<'_>) -> Result<RiskFacts, StoreError> {
        let now = query.now.unix_timestamp();
        let identity = self.rates(request::Column::SpiffeId, query.spiffe_id, now);
        let issued_before = certificate::Entity::find()
            .select_only()
            .column(certificate::Column::Serial)
            .filter(certificate::Column::SpiffeId.eq(query.spiffe_id))
            .into_tuple::<String>()
            .one(&self.db);
        let history = certificate::Entity::find()
            .select_only()
            .column(certificate::Column::KeyType)
            .expr(Func::max(
                Expr::col(certificate::Column::NotAfter)
                    .sub(Expr::col(certificate::Column::IssuedAt)),
            ))
            .filter(certificate::Column::SpiffeId.eq(query.spiffe_id))
            .filter(certificate::Column::IssuedAt.gte(now - HISTORY.as_secs() as i64))
            .group_by(certificate::Column::KeyType)
            .into_tuple::<(String, Option<i64>)>()
            .all(&self.db);
        let (identity, issued_before, history) = tokio::try_join!(
            identity,
            async { issued_before.await.map_err(unavailable) },
            async { history.await.map_err(unavailable) }
        )?;
        let mut facts = RiskFacts {
            identity,
            identity_issued_before: issued_before.is_some(),
            identity_longest_lifetime: history
                .iter()
                .filter_map(|(_, secs)| *secs)
                .max()
                .map(|secs| Duration::from_secs(count(secs))),
            identity_key_types: history.into_iter().map(|(key_type, _)| key_type).collect(),
            ..RiskFacts::default()
        };
        if query.node {
            let node = self.rates(request::Column::Caller, query.caller, now);
            let identities = request::Entity::find()
                .select_only()
                .expr(Func::count_distinct(Expr::col(request::Column::SpiffeId)))
                .filter(request::Column::Caller.eq(query.caller))
                .filter(request::Column::CreatedAt.gte(now - HOUR))
                .filter(request::Column::SpiffeId.ne(query.spiffe_id))
                .into_tuple::<i64>()
                .one(&self.db);
            let obtained = request::Entity::find()
                .select_only()
                .column(request::Column::Pk)
                .filter(request::Column::SpiffeId.eq(query.spiffe_id))
                .filter(request::Column::Caller.eq(query.caller))
                .filter(request::Column::State.eq(RequestState::Issued.as_str()))
                .into_tuple::<i64>()
                .one(&self.db);
            let (node, identities, obtained) = tokio::try_join!(
                node,
                async { identities.await.map_err(unavailable) },
                async { obtained.await.map_err(unavailable) }
            )?;
            facts.node = Some(node);
            // The others asked in the last hour, and this one.
            facts.node_identities_last_hour = count(identities.unwrap_or(0)) + 1;
            facts.node_issued_identity_before = obtained.is_some();
        }
        Ok(facts)
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

impl SqlStore {
    /// Enroll and Renew requests whose `column` is `value`, by window, in one query.
    async fn rates(
        &self,
        column: request::Column,
        value: &str,
        now: i64,
    ) -> Result<Rates, StoreError> {
        let created = || Expr::col(request::Column::CreatedAt);
        let count_if = |condition: SimpleExpr| Func::sum(Expr::case(condition, 1).finally(0));
        let issuance = [RequestKind::Enroll.as_str(), RequestKind::Renew.as_str()];
        let (minute, hour, baseline) = request::Entity::find()
            .select_only()
            .expr(count_if(created().gte(now - MINUTE)))
            .expr(count_if(created().gte(now - HOUR)))
            .expr(count_if(created().lt(now - HOUR)))
            .filter(column.eq(value))
            .filter(request::Column::CreatedAt.gte(now - DAY))
            .filter(request::Column::Kind.is_in(issuance))
            .into_tuple::<(Option<i64>, Option<i64>, Option<i64>)>()
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .unwrap_or_default();
        Ok(Rates {
            last_minute: count(minute.unwrap_or(0)),
            last_hour: count(hour.unwrap_or(0)),
            baseline: count(baseline.unwrap_or(0)),
        })
    }
}

/// A count or a length of time read back: never negative.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
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
        if pending.is_none() {
            return Err(StoreError::Conflict("request"));
        }
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
