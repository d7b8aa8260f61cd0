//! Risk counts and facts (DESIGN §12). Every Enroll and Renew adds to per-minute and per-hour
//! request counts of its identity (and an Enroll to its node's, with the pair of node and
//! identity remembered) in the transaction that records it; assessing a request reads those
//! few dozen rows and the identity's newest certificates, so its cost does not grow with the
//! caller's history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mintgate_domain::hold::RiskQuery;
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{NewRequest, RequestKind};
use mintgate_domain::risk::{
    Bucket, HISTORY, HOUR_SPAN, MINUTE_SPAN, PROFILE_CERTIFICATES, Rates, RiskFacts,
};
use mintgate_domain::store::StoreError;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{
    Expr, OnConflict, Order, Query, SelectStatement, SubQueryStatement, UnionType, Value,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryResult, Statement,
};
use time::OffsetDateTime;

use crate::batch::{INSERT_ROWS, statement_chunks};
use crate::entity::{certificate, identity_block, node_identity, request, risk_count};
use crate::pg_reads::PgReads;
use crate::sqlite_reads::{FactRow, SqliteReads};
use crate::template::{Template, count_marker, int_marker, text_marker};
use crate::write::WriteTx;
use crate::{SqlStore, unavailable};

/// The subjects counted: who asked, and what was asked for.
const CALLER: &str = "caller";
const IDENTITY: &str = "identity";

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
        for chunk in statement_chunks(counts, INSERT_ROWS) {
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
        for chunk in statement_chunks(pairs, INSERT_ROWS) {
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

/// The tags of the rows [`SqlStore::read_risk_facts`] reads, one kind of fact each.
const RATE: i32 = 0;
const PROFILE: i32 = 1;
const EVER_ISSUED: i32 = 2;
const NODE: i32 = 3;
const BLOCKED: i32 = 4;
const RECORDED: i32 = 5;

/// What the read before deciding binds: the values of a [`RiskQuery`], and the markers its
/// templates are built with.
struct Asked<'a> {
    spiffe_id: &'a str,
    /// A node enrolling, or the identity itself renewing.
    caller: &'a str,
    /// The caller is a node enrolling: only then are its facts read.
    node: bool,
    /// Certificates issued since then make the identity's profile.
    history_since: i64,
    /// A node's identities asked for since then are counted.
    hour_since: i64,
    /// The node's recent identities are counted up to this many.
    identities_read: u64,
    request_id: Option<&'a str>,
}

impl Asked<'_> {
    /// The values in the order [`FactsTemplates`] takes them.
    fn values(&self) -> [Value; 6] {
        [
            self.spiffe_id.into(),
            self.caller.into(),
            self.history_since.into(),
            self.hour_since.into(),
            self.identities_read.into(),
            self.request_id.unwrap_or_default().into(),
        ]
    }

    /// One statement, so one round trip before signing: the rows of each fact are tagged and
    /// brought to the same five columns (tag, text, three integers) with `UNION ALL`. The
    /// rates' rows come first because PostgreSQL types a union's columns pairwise, left to
    /// right, and they alone fill every column.
    fn statement(&self) -> SelectStatement {
        let caller = self.node.then_some(self.caller);
        let mut facts = rates(self.spiffe_id, caller);
        facts
            .union(UnionType::All, profile(self.spiffe_id, self.history_since))
            .union(UnionType::All, ever_issued(self.spiffe_id))
            .union(UnionType::All, blocked(self.spiffe_id));
        if let Some(caller) = caller {
            facts.union(UnionType::All, node_identities(self, caller));
        }
        if let Some(request_id) = self.request_id {
            facts.union(UnionType::All, recorded(self.caller, request_id));
        }
        facts
    }
}

/// The read before deciding, built once for each of its four shapes (whether node facts are
/// read, whether a request is looked up): building it per request cost more CPU than running it.
pub(crate) struct FactsTemplates([Template; 4]);

impl FactsTemplates {
    pub(crate) fn new(backend: DbBackend) -> Self {
        let texts = [text_marker(0), text_marker(1), text_marker(5)];
        Self(
            [(false, false), (false, true), (true, false), (true, true)].map(|(node, recorded)| {
                let markers = Asked {
                    spiffe_id: &texts[0],
                    caller: &texts[1],
                    node,
                    history_since: int_marker(2),
                    hour_since: int_marker(3),
                    identities_read: count_marker(4),
                    request_id: recorded.then_some(texts[2].as_str()),
                };
                Template::new(backend, &markers.statement(), &markers.values())
            }),
        )
    }

    fn statement(&self, asked: &Asked<'_>) -> Statement {
        let shape = 2 * usize::from(asked.node) + usize::from(asked.request_id.is_some());
        self.0[shape].statement(&asked.values())
    }
}

/// Where the read before deciding runs: past sqlx's worker threads on an SQLite file, past its
/// pool on PostgreSQL (see each module), through the pool on an in-memory SQLite database.
#[derive(Clone)]
pub(crate) enum FactReads {
    Sqlite(Arc<SqliteReads>),
    Postgres(Arc<PgReads>),
    Pool,
}

impl FactReads {
    pub(crate) fn for_url(url: &str) -> Self {
        if let Some(reads) = SqliteReads::for_url(url) {
            Self::Sqlite(reads)
        } else if let Some(reads) = PgReads::for_url(url) {
            Self::Postgres(reads)
        } else {
            Self::Pool
        }
    }

    /// Closes their connections, with the store's.
    pub(crate) fn close(&self) {
        match self {
            Self::Sqlite(reads) => reads.close(),
            Self::Postgres(reads) => reads.close(),
            Self::Pool => {}
        }
    }
}

impl SqlStore {
    /// The facts of [`Asked::statement`], in one read.
    pub(crate) async fn read_risk_facts(
        &self,
        query: RiskQuery<'_>,
    ) -> Result<RiskFacts, StoreError> {
        let now = query.now.unix_timestamp();
        let asked = Asked {
            spiffe_id: query.spiffe_id,
            caller: query.caller,
            node: query.node,
            history_since: now - HISTORY.as_secs() as i64,
            hour_since: now - HOUR_SPAN,
            // The cap's worth of others, and the one asked for.
            identities_read: query.identities_cap.saturating_add(1).min(i64::MAX as u64),
            request_id: query.request_id,
        };
        let caller = query.node.then_some(query.caller);
        let statement = self.facts.statement(&asked);
        let rows = match &self.fact_reads {
            FactReads::Sqlite(reads) => reads.fact_rows(statement).await?,
            FactReads::Postgres(reads) => reads.fact_rows(statement).await?,
            FactReads::Pool => self
                .db
                .query_all_raw(statement)
                .await
                .and_then(|rows| rows.iter().map(fact_row).collect())
                .map_err(unavailable)?,
        };
        let mut buckets: [[Vec<Bucket>; 2]; 2] = Default::default();
        let mut read = RiskFacts {
            node_identities_last_hour: 1,
            ..RiskFacts::default()
        };
        let mut newest = Vec::new();
        for (tag, text, ints) in rows {
            let ints = ints.map(|i| i.unwrap_or(0));
            match (tag, ints) {
                (RATE, [span, bucket, requests]) => {
                    let who = usize::from(text.as_deref() == Some(CALLER));
                    let width = usize::from(span == HOUR_SPAN);
                    buckets[who][width].push((bucket, u64::try_from(requests).unwrap_or(0)));
                }
                // Any row here has an EVER_ISSUED row too.
                (PROFILE, [longest, issued_at, _]) => {
                    let longest = Duration::from_secs(u64::try_from(longest).unwrap_or(0));
                    read.identity_longest_lifetime =
                        read.identity_longest_lifetime.max(Some(longest));
                    newest.push((issued_at, text.unwrap_or_default()));
                }
                (EVER_ISSUED, _) => read.identity_issued_before = true,
                (NODE, [recent, allowed, this_one]) => {
                    // Up to the cap, without the identity asked for; then with it.
                    let others = u64::try_from(recent - this_one).unwrap_or(0);
                    read.node_identities_last_hour = others.min(query.identities_cap) + 1;
                    read.node_issued_identity_before = allowed != 0;
                }
                (BLOCKED, _) => read.identity_blocked = true,
                (RECORDED, _) => read.request_recorded = true,
                _ => {
                    return Err(StoreError::Corrupt(
                        format!("risk fact tagged {tag}").into(),
                    ));
                }
            }
        }
        newest.sort_unstable_by(|a, b| b.cmp(a));
        read.identity_key_types = newest.into_iter().map(|(_, key_type)| key_type).collect();
        let [[minutes, hours], [caller_minutes, caller_hours]] = &buckets;
        read.identity = Rates::from_buckets(now, minutes, hours);
        read.node = caller.map(|_| Rates::from_buckets(now, caller_minutes, caller_hours));
        Ok(read)
    }
}

/// A row of the risk facts' union, read through sqlx.
fn fact_row(row: &QueryResult) -> Result<FactRow, DbErr> {
    Ok((
        row.try_get_by_index(0)?,
        row.try_get_by_index(1)?,
        [
            row.try_get_by_index(2)?,
            row.try_get_by_index(3)?,
            row.try_get_by_index(4)?,
        ],
    ))
}

/// `NULL` in a column a fact does not use.
fn null() -> Expr {
    Expr::cust("NULL")
}

fn tagged(tag: i32) -> SelectStatement {
    Query::select().expr(Expr::cust(tag.to_string())).to_owned()
}

/// The minute and hour buckets of `spiffe_id` (and of `caller`, when asked). Each subject's
/// rows are a key prefix, and pruning keeps them few (minutes of the last two hours, hours of
/// the last two days): the windows are cut in memory, which keeps this to two index seeks on
/// SQLite as on PostgreSQL.
fn rates(spiffe_id: &str, caller: Option<&str>) -> SelectStatement {
    use risk_count::Column as C;
    let subject = |scope: &str, subject: &str| {
        Condition::all()
            .add(C::Scope.eq(scope))
            .add(C::Subject.eq(subject))
    };
    tagged(RATE)
        .columns([C::Scope, C::Span, C::Bucket, C::Requests])
        .from(risk_count::Entity)
        .cond_where(
            Condition::any()
                .add(subject(IDENTITY, spiffe_id))
                .add_option(caller.map(|caller| subject(CALLER, caller))),
        )
        .to_owned()
}

/// The identity's newest certificates of [`HISTORY`], one row per key type: the longest
/// lifetime and the newest issuance.
fn profile(spiffe_id: &str, since: i64) -> SelectStatement {
    use certificate::Column as C;
    use sea_orm::sea_query::ExprTrait;
    let newest = Query::select()
        .columns([C::KeyType, C::IssuedAt, C::NotAfter])
        .from(certificate::Entity)
        .and_where(C::SpiffeId.eq(spiffe_id))
        .and_where(C::IssuedAt.gte(since))
        .order_by(C::IssuedAt, Order::Desc)
        .limit(PROFILE_CERTIFICATES)
        .to_owned();
    tagged(PROFILE)
        .column(C::KeyType)
        .expr(Expr::col(C::NotAfter).sub(Expr::col(C::IssuedAt)).max())
        .expr(Expr::col(C::IssuedAt).max())
        .expr(null())
        .from_subquery(newest, "newest")
        .group_by_col(C::KeyType)
        .to_owned()
}

/// One row if a certificate was ever issued for the identity.
fn ever_issued(spiffe_id: &str) -> SelectStatement {
    let any = Query::select()
        .expr(Expr::val(1))
        .from(certificate::Entity)
        .and_where(certificate::Column::SpiffeId.eq(spiffe_id))
        .limit(1)
        .to_owned();
    tagged(EVER_ISSUED)
        .exprs([null(), null(), null(), null()])
        .from_subquery(any, "issued")
        .to_owned()
}

/// One row if an operator blocked the identity.
fn blocked(spiffe_id: &str) -> SelectStatement {
    tagged(BLOCKED)
        .exprs([null(), null(), null(), null()])
        .from(identity_block::Entity)
        .and_where(identity_block::Column::SpiffeId.eq(spiffe_id))
        .to_owned()
}

/// One row if `caller`'s request `request_id` is recorded.
fn recorded(caller: &str, request_id: &str) -> SelectStatement {
    tagged(RECORDED)
        .exprs([null(), null(), null(), null()])
        .from(request::Entity)
        .and_where(request::Column::Caller.eq(caller))
        .and_where(request::Column::RequestId.eq(request_id))
        .to_owned()
}

/// One row: how many identities `caller` asked for in the last hour, counted up to
/// [`Asked::identities_read`] on the `(caller, last_asked_at)` index alone (a row's
/// `spiffe_id` would cost a table lookup each); whether policy allowed it this one before (1
/// or 0); and whether this one is among those counted (1 or 0), so the caller can take it out.
fn node_identities(asked: &Asked<'_>, caller: &str) -> SelectStatement {
    use node_identity::Column as C;
    let recent = Query::select()
        .expr(Expr::val(1))
        .from(node_identity::Entity)
        .and_where(C::Caller.eq(caller))
        .and_where(C::LastAskedAt.gte(asked.hour_since))
        .limit(asked.identities_read)
        .to_owned();
    let count = Query::select()
        .expr(Expr::cust("COUNT(*)"))
        .from_subquery(recent, "recent")
        .to_owned();
    let this_one = |column: Expr| {
        Query::select()
            .expr(Expr::case(column, Expr::cust("1")).finally(Expr::cust("0")))
            .from(node_identity::Entity)
            .and_where(C::Caller.eq(caller))
            .and_where(C::SpiffeId.eq(asked.spiffe_id))
            .to_owned()
    };
    let subquery = |select: SelectStatement| {
        Expr::SubQuery(None, Box::new(SubQueryStatement::SelectStatement(select)))
    };
    tagged(NODE)
        .expr(null())
        .expr(subquery(count))
        .expr(subquery(this_one(C::Allowed.eq(true))))
        .expr(subquery(this_one(C::LastAskedAt.gte(asked.hour_since))))
        .to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_template_binds_what_building_the_read_binds() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let templates = FactsTemplates::new(backend);
            for (node, request_id) in [
                (false, None),
                (false, Some("r-1")),
                (true, None),
                (true, Some("r-2")),
            ] {
                let asked = Asked {
                    spiffe_id: "spiffe://example.org/ns/a/sa/b",
                    caller: "spiffe://example.org/node/n-1",
                    node,
                    history_since: 1_700_000_000,
                    hour_since: 1_700_003_000,
                    identities_read: 21,
                    request_id,
                };
                assert_eq!(
                    templates.statement(&asked),
                    backend.build(&asked.statement()),
                    "{backend:?}, node {node}, request {request_id:?}"
                );
            }
        }
    }
}
