//! Risk counts and facts (DESIGN §12). Every Enroll and Renew adds to per-minute and per-hour
//! request counts of its identity (and an Enroll to its node's, with the pair of node and
//! identity remembered) in the transaction that records it; assessing a request reads those
//! few dozen rows and the identity's newest certificates, so its cost does not grow with the
//! caller's history.

use std::collections::HashMap;
use std::time::Duration;

use mintgate_domain::hold::RiskQuery;
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{NewRequest, RequestKind};
use mintgate_domain::risk::{
    Bucket, HISTORY, HOUR_SPAN, MINUTE_SPAN, PROFILE_CERTIFICATES, Rates, RiskFacts,
};
use mintgate_domain::store::StoreError;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, OnConflict, Query, SubQueryStatement};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait,
};
use time::OffsetDateTime;

use crate::entity::{certificate, node_identity, risk_count};
use crate::write::WriteTx;
use crate::{SqlStore, unavailable};

/// The subjects counted: who asked, and what was asked for.
const CALLER: &str = "caller";
const IDENTITY: &str = "identity";

/// Rows per multi-row upsert (5 parameters each, well under both databases' limits).
const UPSERT_CHUNK: usize = 1000;

/// What one write transaction adds to the counts, written just before it commits (one
/// statement per table, each row once however many requests of the batch it counts).
#[derive(Debug, Default)]
pub(crate) struct RiskTally {
    /// (scope, subject, span, bucket) → requests.
    counts: HashMap<(&'static str, String, i64, i64), i64>,
    /// (node, identity) → (last asked at, allowed).
    pairs: HashMap<(String, String), (i64, bool)>,
}

/// What one recorded request adds to the counts.
#[derive(Debug)]
pub(crate) struct Counted {
    enroll: bool,
    caller: String,
    spiffe_id: String,
    at: i64,
    allowed: bool,
}

impl Counted {
    /// What `r` counts for, if anything (only Enroll and Renew do).
    pub(crate) fn of(r: &NewRequest) -> Option<Self> {
        let enroll = match r.kind {
            RequestKind::Enroll => true,
            RequestKind::Renew => false,
            _ => return None,
        };
        Some(Self {
            enroll,
            caller: r.caller.clone(),
            spiffe_id: r.spiffe_id.clone(),
            at: r.now.unix_timestamp(),
            allowed: r.state == RequestState::Approved,
        })
    }
}

impl RiskTally {
    /// Counts a request that was inserted.
    pub(crate) fn add(&mut self, counted: Option<Counted>) {
        let Some(c) = counted else { return };
        self.count(IDENTITY, &c.spiffe_id, c.at);
        if c.enroll {
            self.count(CALLER, &c.caller, c.at);
            self.pair(&c.caller, &c.spiffe_id, c.at, c.allowed);
        }
    }

    /// A held enrollment was released: its node has now been allowed the identity.
    pub(crate) fn released(&mut self, caller: &str, spiffe_id: &str, at: i64) {
        self.pair(caller, spiffe_id, at, true);
    }

    fn count(&mut self, scope: &'static str, subject: &str, at: i64) {
        for span in [MINUTE_SPAN, HOUR_SPAN] {
            let key = (scope, subject.to_owned(), span, at.div_euclid(span));
            *self.counts.entry(key).or_default() += 1;
        }
    }

    fn pair(&mut self, caller: &str, spiffe_id: &str, at: i64, allowed: bool) {
        let seen = self
            .pairs
            .entry((caller.to_owned(), spiffe_id.to_owned()))
            .or_insert((at, allowed));
        *seen = (seen.0.max(at), seen.1 || allowed);
    }

    /// Adds what was tallied to the stored counts, in `txn`.
    pub(crate) async fn flush(&mut self, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        let counts: Vec<_> = self
            .counts
            .drain()
            .map(
                |((scope, subject, span, bucket), requests)| risk_count::ActiveModel {
                    scope: Set(scope.to_owned()),
                    subject: Set(subject),
                    span: Set(span as i32),
                    bucket: Set(bucket),
                    requests: Set(requests),
                },
            )
            .collect();
        for chunk in chunks(counts) {
            use risk_count::Column as C;
            risk_count::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([C::Scope, C::Subject, C::Span, C::Bucket])
                        .value(
                            C::Requests,
                            Expr::cust("risk_counts.requests + excluded.requests"),
                        )
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
        }
        let pairs: Vec<_> = self
            .pairs
            .drain()
            .map(
                |((caller, spiffe_id), (at, allowed))| node_identity::ActiveModel {
                    caller: Set(caller),
                    spiffe_id: Set(spiffe_id),
                    last_asked_at: Set(at),
                    allowed: Set(allowed),
                },
            )
            .collect();
        for chunk in chunks(pairs) {
            use node_identity::Column as C;
            node_identity::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([C::Caller, C::SpiffeId])
                        .value(
                            C::LastAskedAt,
                            Expr::cust(
                                "CASE WHEN excluded.last_asked_at > node_identities.last_asked_at \
                                 THEN excluded.last_asked_at \
                                 ELSE node_identities.last_asked_at END",
                            ),
                        )
                        .value(
                            C::Allowed,
                            Expr::cust("node_identities.allowed OR excluded.allowed"),
                        )
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
        }
        Ok(())
    }
}

fn chunks<T>(mut rows: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let rest = rows.split_off(rows.len().min(UPSERT_CHUNK));
        Some(std::mem::replace(&mut rows, rest))
    })
}

impl SqlStore {
    /// Three statements at once (the rates of the identity and the node, the identity's newest
    /// certificates, the node's identities), and a fourth only for an identity with no recent
    /// certificate (was it ever issued?).
    pub(crate) async fn read_risk_facts(
        &self,
        query: RiskQuery<'_>,
    ) -> Result<RiskFacts, StoreError> {
        let now = query.now.unix_timestamp();
        let caller = query.node.then_some(query.caller);
        let profile = certificate::Entity::find()
            .select_only()
            .column(certificate::Column::KeyType)
            .column(certificate::Column::IssuedAt)
            .column(certificate::Column::NotAfter)
            .filter(certificate::Column::SpiffeId.eq(query.spiffe_id))
            .filter(certificate::Column::IssuedAt.gte(now - HISTORY.as_secs() as i64))
            .order_by_desc(certificate::Column::IssuedAt)
            .limit(PROFILE_CERTIFICATES)
            .into_tuple::<(String, i64, i64)>()
            .all(&self.db);
        let node = async {
            match caller {
                Some(caller) => self.node_identities(&query, caller, now).await.map(Some),
                None => Ok(None),
            }
        };
        let (rates, profile, node) = tokio::try_join!(
            self.rates(query.spiffe_id, caller, now),
            async { profile.await.map_err(unavailable) },
            node
        )?;
        let issued_before = !profile.is_empty()
            || certificate::Entity::find()
                .select_only()
                .column(certificate::Column::Serial)
                .filter(certificate::Column::SpiffeId.eq(query.spiffe_id))
                .into_tuple::<String>()
                .one(&self.db)
                .await
                .map_err(unavailable)?
                .is_some();
        let mut key_types: Vec<String> = Vec::new();
        for (key_type, _, _) in &profile {
            if !key_types.contains(key_type) {
                key_types.push(key_type.clone());
            }
        }
        let (identity, node_rates) = rates;
        let (others, allowed) = node.unwrap_or_default();
        Ok(RiskFacts {
            node: node_rates,
            identity,
            node_identities_last_hour: others + 1,
            identity_issued_before: issued_before,
            node_issued_identity_before: allowed,
            identity_key_types: key_types,
            identity_longest_lifetime: profile
                .iter()
                .map(|(_, issued_at, not_after)| not_after - issued_at)
                .max()
                .map(|secs| Duration::from_secs(u64::try_from(secs).unwrap_or(0))),
        })
    }

    /// The other identities `caller` asked for in the last hour (each row is a distinct one, so
    /// the count reads at most the cap's rows), and whether policy allowed it this one before.
    async fn node_identities(
        &self,
        query: &RiskQuery<'_>,
        caller: &str,
        now: i64,
    ) -> Result<(u64, bool), StoreError> {
        use node_identity::Column as C;
        let recent = node_identity::Entity::find()
            .select_only()
            .expr(Expr::val(1))
            .filter(C::Caller.eq(caller))
            .filter(C::LastAskedAt.gte(now - HOUR_SPAN))
            .filter(C::SpiffeId.ne(query.spiffe_id))
            .limit(query.identities_cap.min(i64::MAX as u64))
            .into_query();
        let count = Query::select()
            .expr(Expr::cust("COUNT(*)"))
            .from_subquery(recent, "recent")
            .to_owned();
        let allowed = Query::select()
            .column(C::Allowed)
            .from(node_identity::Entity)
            .and_where(C::Caller.eq(caller))
            .and_where(C::SpiffeId.eq(query.spiffe_id))
            .to_owned();
        let both = Query::select()
            .expr(Expr::SubQuery(
                None,
                Box::new(SubQueryStatement::SelectStatement(count)),
            ))
            .expr(Expr::SubQuery(
                None,
                Box::new(SubQueryStatement::SelectStatement(allowed)),
            ))
            .to_owned();
        let row = self.db.query_one(&both).await.map_err(unavailable)?;
        let Some(row) = row else {
            return Ok((0, false));
        };
        let others: i64 = row.try_get_by_index(0).map_err(unavailable)?;
        let allowed: Option<bool> = row.try_get_by_index(1).map_err(unavailable)?;
        Ok((u64::try_from(others).unwrap_or(0), allowed.unwrap_or(false)))
    }

    /// The request rates of `spiffe_id` (and of `caller`, when asked), from their minute and
    /// hour buckets, in one statement.
    async fn rates(
        &self,
        spiffe_id: &str,
        caller: Option<&str>,
        now: i64,
    ) -> Result<(Rates, Option<Rates>), StoreError> {
        use risk_count::Column as C;
        // Each subject's rows are a key prefix, and pruning keeps them few (minutes of the last
        // two hours, hours of the last two days): the windows are cut in memory, which keeps
        // the statement to two index seeks on SQLite as on PostgreSQL.
        let subject = |scope: &str, subject: &str| {
            Condition::all()
                .add(C::Scope.eq(scope))
                .add(C::Subject.eq(subject))
        };
        let rows = risk_count::Entity::find()
            .select_only()
            .columns([C::Scope, C::Span, C::Bucket, C::Requests])
            .filter(
                Condition::any()
                    .add(subject(IDENTITY, spiffe_id))
                    .add_option(caller.map(|caller| subject(CALLER, caller))),
            )
            .into_tuple::<(String, i32, i64, i64)>()
            .all(&self.db)
            .await
            .map_err(unavailable)?;
        let mut buckets: [[Vec<Bucket>; 2]; 2] = Default::default();
        for (scope, span, bucket, requests) in rows {
            let who = usize::from(scope == CALLER);
            let width = usize::from(i64::from(span) == HOUR_SPAN);
            buckets[who][width].push((bucket, u64::try_from(requests).unwrap_or(0)));
        }
        let [[minutes, hours], [caller_minutes, caller_hours]] = &buckets;
        let identity = Rates::from_buckets(now, minutes, hours);
        let node = caller.map(|_| Rates::from_buckets(now, caller_minutes, caller_hours));
        Ok((identity, node))
    }
}

impl WriteTx<'_> {
    /// Deletes minute counts older than two hours, hour counts older than two days, and pairs of
    /// node and identity not asked for in [`HISTORY`].
    pub(crate) async fn prune_risk_counts(
        &mut self,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        use risk_count::Column as C;
        let now = now.unix_timestamp();
        let before = |span: i64, seconds: i64| {
            Condition::all()
                .add(C::Span.eq(span as i32))
                .add(C::Bucket.lt((now - seconds).div_euclid(span)))
        };
        let counts = risk_count::Entity::delete_many()
            .filter(
                Condition::any()
                    .add(before(MINUTE_SPAN, 2 * HOUR_SPAN))
                    .add(before(HOUR_SPAN, 48 * HOUR_SPAN)),
            )
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        let pairs = node_identity::Entity::delete_many()
            .filter(node_identity::Column::LastAskedAt.lt(now - HISTORY.as_secs() as i64))
            .exec(&self.txn)
            .await
            .map_err(unavailable)?;
        Ok(counts.rows_affected + pairs.rows_affected)
    }
}
