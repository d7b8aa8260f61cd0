//! The read before deciding an issuance, on PostgreSQL, on connections held outside sqlx's pool.
//!
//! sqlx's pool pings every connection it takes back, whatever its options say: a second round
//! trip to the server after each statement. The read before deciding
//! (`SqlStore::read_risk_facts`) runs once per Enroll and Renew, so it runs here instead, on up
//! to [`CONNECTIONS`] connections of its own, each running one read at a time. As in the pool,
//! a connection unused for [`STALE_AFTER`] is pinged before its read, and one whose read failed
//! (or was cancelled half-way) is dropped, not used again. A read that fails on a connection
//! kept idle is tried once more on a new one: the database may have restarted since.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use crate::STALE_AFTER;
use crate::kept::Kept;
use crate::sqlite_reads::FactRow;
use mintgate_domain::store::StoreError;
use sea_orm::Statement;
use sea_orm::sea_query::Value;
use sea_orm::sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow};
use sea_orm::sqlx::query::Query;
use sea_orm::sqlx::{
    self, AssertSqlSafe, ConnectOptions as _, Connection as _, Postgres, Row as _,
};

/// Connections this holds at most, so reads wait for one rather than open more.
const CONNECTIONS: usize = 8;

/// How long opening a connection may take (as the pool's `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of its own to one PostgreSQL database.
pub(crate) struct PgReads {
    /// Holds credentials: never logged.
    options: PgConnectOptions,
    kept: Kept<PgConnection>,
}

impl PgReads {
    /// For a `postgres:` or `postgresql:` URL; `None` for anything else.
    pub(crate) fn for_url(url: &str) -> Option<Arc<Self>> {
        if !url.starts_with("postgres") {
            return None;
        }
        Some(Arc::new(Self {
            options: PgConnectOptions::from_str(url).ok()?,
            kept: Kept::new(CONNECTIONS),
        }))
    }

    /// The rows of `statement` (built for PostgreSQL), each brought to a [`FactRow`].
    pub(crate) async fn fact_rows(&self, statement: Statement) -> Result<Vec<FactRow>, StoreError> {
        let Statement { sql, values, .. } = statement;
        let sql: Arc<str> = sql.into();
        let query = || {
            let query = sqlx::query(AssertSqlSafe(sql.clone()));
            values.iter().flat_map(|v| v.iter()).try_fold(query, bind)
        };
        let _permit = self.kept.permit().await?;
        let (mut conn, reused) = match self.idle_connection().await? {
            Some(conn) => (conn, true),
            None => (self.open().await?, false),
        };
        let rows = match query()?.fetch_all(&mut conn).await {
            Ok(rows) => rows,
            // A connection kept idle may have died since (the database restarted): the read
            // is tried once more, on a new one.
            Err(_) if reused => {
                conn = self.open().await?;
                query()?.fetch_all(&mut conn).await.map_err(unavailable)?
            }
            Err(e) => return Err(unavailable(e)),
        };
        let rows = rows.iter().map(fact_row).collect::<Result<_, _>>()?;
        self.kept.put(conn);
        Ok(rows)
    }

    /// Closes every idle connection; reads fail from now on, as the store's other reads do.
    pub(crate) fn close(&self) {
        self.kept.close();
    }

    /// An idle connection, pinged first if it sat for [`STALE_AFTER`]; `None` when none is.
    async fn idle_connection(&self) -> Result<Option<PgConnection>, StoreError> {
        loop {
            match self.kept.take()? {
                None => return Ok(None),
                Some((conn, used)) if used.elapsed() < STALE_AFTER => return Ok(Some(conn)),
                // One that does not answer its ping is dropped, and the next one tried.
                Some((mut conn, _)) => {
                    if conn.ping().await.is_ok() {
                        return Ok(Some(conn));
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<PgConnection, StoreError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.options.connect())
            .await
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?
            .map_err(unavailable)
    }
}

/// Binds `value` as sea-query's own PostgreSQL binding does: integers, text, booleans and
/// NULLs, which is all the risk facts' statement binds. Anything else is a bug in the
/// statement's builder.
fn bind<'q>(
    query: Query<'q, Postgres, PgArguments>,
    value: &Value,
) -> Result<Query<'q, Postgres, PgArguments>, StoreError> {
    Ok(match value {
        Value::Bool(b) => query.bind(*b),
        Value::Int(i) => query.bind(*i),
        Value::BigInt(i) => query.bind(*i),
        Value::BigUnsigned(i) => match i.map(i64::try_from).transpose() {
            Ok(i) => query.bind(i),
            Err(e) => return Err(StoreError::Corrupt(Box::new(e))),
        },
        Value::String(s) => query.bind(s.clone()),
        other => {
            return Err(StoreError::Corrupt(
                format!("a statement binds a value this read cannot take: {other:?}").into(),
            ));
        }
    })
}

fn fact_row(row: &PgRow) -> Result<FactRow, StoreError> {
    let column = |i| row.try_get::<Option<i64>, _>(i);
    let row = || -> Result<FactRow, sqlx::Error> {
        Ok((
            row.try_get(0)?,
            row.try_get(1)?,
            [column(2)?, column(3)?, column(4)?],
        ))
    };
    row().map_err(|e| StoreError::Corrupt(Box::new(e)))
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}
