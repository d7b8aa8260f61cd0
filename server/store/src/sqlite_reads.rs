//! The read before deciding an issuance, on SQLite, without sqlx's worker threads.
//!
//! sqlx runs each SQLite connection on a thread of its own: a statement is sent to that thread
//! and its rows are sent back, each a wake-up, and every value is copied into an owned row on
//! the way. The read before deciding (`SqlStore::read_risk_facts`) runs once per Enroll and
//! Renew, so it runs here instead: on the calling task's thread (see
//! [`SqliteReads::fact_rows`]), with rusqlite, through up to [`CONNECTIONS`] connections of its
//! own to the same database file, kept open. rusqlite links the same SQLite as sqlx (one
//! `libsqlite3-sys`, built with `.cargo/config.toml`'s flags). Read only: every write still goes
//! through the store's one writer, and a reader in WAL mode sees what was committed before its
//! statement began, as sqlx's readers do.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use mintgate_domain::store::StoreError;
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use sea_orm::Statement;
use sea_orm::sea_query::Value;
use sea_orm::sqlx::sqlite::SqliteConnectOptions;

use crate::kept::Kept;

/// Connections this holds at most, so reads wait for one rather than open more: a new
/// connection reads the schema and prepares its statement again.
const CONNECTIONS: usize = 8;

/// How long a read that found the database locked waits for it, as sqlx's connections do.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One row of a tagged union: a tag, a text and three integers (see `read_risk_facts`).
pub(crate) type FactRow = (i32, Option<String>, [Option<i64>; 3]);

/// Read-only connections to one SQLite database file.
pub(crate) struct SqliteReads {
    path: PathBuf,
    kept: Kept<Connection>,
}

impl SqliteReads {
    /// For a `sqlite:` URL naming a file; `None` for anything else (an in-memory database has
    /// nothing another connection could open).
    pub(crate) fn for_url(url: &str) -> Option<Arc<Self>> {
        if !url.starts_with("sqlite:") {
            return None;
        }
        let options = SqliteConnectOptions::from_str(url).ok()?;
        let path = options.get_filename();
        // sqlx names an in-memory database `file:sqlx-in-memory-…`.
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file:") {
            return None;
        }
        Some(Arc::new(Self {
            path: path.to_owned(),
            kept: Kept::new(CONNECTIONS),
        }))
    }

    /// The rows of `statement` (built for SQLite), each brought to a [`FactRow`].
    ///
    /// The read runs on the calling task's thread: a few index seeks over pages the OS has
    /// cached, tens of µs of CPU, like the signature that follows it. Handing it to tokio's
    /// blocking pool cost more than the read: waking a pool thread and parking it again took
    /// 5% of the server's CPU. It never waits for a lock there, though: its connection has no
    /// busy timeout, and a read that finds the database locked (`SQLITE_BUSY`, which a WAL
    /// reader meets only while another connection recovers the WAL or holds the database
    /// exclusively) runs again on the blocking pool, where it waits up to [`BUSY_TIMEOUT`].
    pub(crate) async fn fact_rows(
        self: &Arc<Self>,
        statement: Statement,
    ) -> Result<Vec<FactRow>, StoreError> {
        let Statement { sql, values, .. } = statement;
        let values = values
            .iter()
            .flat_map(|v| v.iter())
            .map(sql_value)
            .collect::<Result<Vec<_>, _>>()?;
        let permit = self.kept.permit().await?;
        let conn = self.connection()?;
        match read_rows(&conn, &sql, &values) {
            Ok(rows) => {
                self.kept.put(conn);
                return Ok(rows);
            }
            Err(e) if e.sqlite_error_code() != Some(ErrorCode::DatabaseBusy) => {
                // A connection whose read failed is dropped, not kept.
                return Err(StoreError::Unavailable(Box::new(e)));
            }
            Err(_) => {}
        }
        let reads = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let waited = conn
                .busy_timeout(BUSY_TIMEOUT)
                .and_then(|()| read_rows(&conn, &sql, &values))
                .and_then(|rows| conn.busy_timeout(Duration::ZERO).map(|()| rows));
            if waited.is_ok() {
                reads.kept.put(conn);
            }
            waited.map_err(|e| StoreError::Unavailable(Box::new(e)))
        })
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?
    }

    /// Closes every idle connection; reads fail from now on, as the store's other reads do.
    pub(crate) fn close(&self) {
        self.kept.close();
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        match self.kept.take()? {
            Some((conn, _)) => Ok(conn),
            None => self
                .open()
                .map_err(|e| StoreError::Unavailable(Box::new(e))),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

fn read_rows(conn: &Connection, sql: &str, values: &[Sql]) -> rusqlite::Result<Vec<FactRow>> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(rusqlite::params_from_iter(values), |row| {
        Ok((
            row.get(0)?,
            row.get(1)?,
            [row.get(2)?, row.get(3)?, row.get(4)?],
        ))
    })?;
    rows.collect()
}

/// A bound value of a statement this module runs: integers (a `LIMIT` is a `u64`), text,
/// booleans and NULLs, which is all the risk facts' statement binds. Anything else is a bug in
/// the statement's builder.
fn sql_value(value: &Value) -> Result<Sql, StoreError> {
    let integer = |i: Option<i64>| i.map_or(Sql::Null, Sql::Integer);
    Ok(match value {
        Value::Bool(b) => integer(b.map(i64::from)),
        Value::TinyInt(i) => integer(i.map(i64::from)),
        Value::SmallInt(i) => integer(i.map(i64::from)),
        Value::Int(i) => integer(i.map(i64::from)),
        Value::BigInt(i) => integer(*i),
        Value::TinyUnsigned(i) => integer(i.map(i64::from)),
        Value::SmallUnsigned(i) => integer(i.map(i64::from)),
        Value::Unsigned(i) => integer(i.map(i64::from)),
        Value::BigUnsigned(i) => match i.map(i64::try_from).transpose() {
            Ok(i) => integer(i),
            Err(e) => return Err(StoreError::Corrupt(Box::new(e))),
        },
        Value::String(s) => s.clone().map_or(Sql::Null, Sql::Text),
        other => {
            return Err(StoreError::Corrupt(
                format!("a statement binds a value SQLite reads cannot take: {other:?}").into(),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_database_file_is_read_here() {
        let file = SqliteReads::for_url("sqlite:///var/lib/mintgate/mintgate.db?mode=rwc");
        assert_eq!(
            file.map(|r| r.path.clone()),
            Some(PathBuf::from("/var/lib/mintgate/mintgate.db"))
        );
        assert!(SqliteReads::for_url("sqlite::memory:").is_none());
        assert!(SqliteReads::for_url("postgres://postgres@127.0.0.1:5432/test").is_none());
    }

    /// Another connection holds the database exclusively: the read, which cannot wait on the
    /// task's thread, waits on the blocking pool and answers once the lock is gone.
    #[tokio::test]
    async fn a_read_that_finds_the_database_locked_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);
                 PRAGMA locking_mode = EXCLUSIVE; INSERT INTO t VALUES (7);",
            )
            .unwrap();
        let reads = SqliteReads::for_url(&format!("sqlite://{}", path.display())).unwrap();
        let statement = Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT 1, 'text', x, NULL, NULL FROM t",
        );
        let read = tokio::spawn(async move { reads.fact_rows(statement).await });
        // On this single-threaded runtime the read runs up to its first wait: it met the lock
        // on the task's thread and now waits on the blocking pool.
        tokio::task::yield_now().await;
        assert!(!read.is_finished());
        holder
            .execute_batch("PRAGMA locking_mode = NORMAL; SELECT x FROM t;")
            .unwrap();
        let rows = read.await.unwrap().expect("the read waits for the lock");
        assert_eq!(rows, [(1, Some("text".to_owned()), [Some(7), None, None])]);
    }

    #[test]
    fn a_value_the_statement_cannot_bind_is_refused() {
        assert_eq!(
            sql_value(&Value::BigUnsigned(Some(64))).ok(),
            Some(Sql::Integer(64))
        );
        assert!(sql_value(&Value::BigUnsigned(Some(u64::MAX))).is_err());
        assert!(sql_value(&Value::Double(Some(1.5))).is_err());
    }
}
