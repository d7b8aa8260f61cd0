//! Mintgate's storage adapter: sea-orm over SQLite (embedded default, WAL) or PostgreSQL.
//!
//! Implements the domain's [`CertificateStore`](mintgate_domain::store::CertificateStore)
//! port. Entities are private and become domain types at this crate's edge. Every write is one
//! transaction holding the writer lock (an in-process mutex, plus a PostgreSQL advisory lock so
//! replicas sharing a database serialise too): it applies its conditional updates, appends its
//! audit events to the hash chain, and commits — or leaves nothing behind. The issuance path's
//! writes share transactions (group commit, in the `batch` module).
//!
//! A write is reported done only after a commit that really ended its transaction: the events
//! it appended are read back on another connection, and a write connection that saw any failure
//! is replaced before the next write (see the `write` module). The `health` module keeps what
//! `/readyz` reports.

mod audit;
mod authority;
mod batch;
mod checkpoint;
mod convert;
mod entity;
mod governance;
mod health;
mod holds;
mod instance;
mod issuance;
mod kept;
pub mod metrics;
mod pg_reads;
mod read;
mod replication;
mod risk;
mod solo;
mod sqlite_reads;
mod template;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mintgate_domain::Serial;
use mintgate_domain::audit::ChainedEvent;
use mintgate_domain::model::{CertificateRecord, InstanceId, JoinTokenRecord, RequestRecord};
use mintgate_domain::store::StoreError;
use mintgate_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use time::OffsetDateTime;

pub use crate::audit::{AuditSnapshot, ChainBounds};
pub use crate::authority::AUTHORITIES_CHANNEL;
pub use crate::checkpoint::CheckpointWrite;
use crate::entity::{audit_event, certificate, join_token, request};
use crate::health::HealthCell;
pub use crate::health::{ProbeSettings, Unready};
use crate::instance::Instance;
pub use crate::metrics::StoreMetrics;
pub use crate::replication::REVOCATIONS_CHANNEL;
use crate::risk::FactReads;

/// A database-backed store. Cheap to clone; clones share the pool and the writer.
#[derive(Clone)]
pub struct SqlStore {
    db: DatabaseConnection,
    writer: Arc<Writer>,
    group: batch::GroupCommit,
    /// Whether this replica leads the jobs that run once (see [`SqlStore::lead`]).
    leader: Arc<tokio::sync::watch::Sender<bool>>,
    instance: Arc<Instance>,
    /// Where the read before deciding an issuance runs.
    fact_reads: FactReads,
    /// The read before deciding, built once.
    facts: Arc<risk::FactsTemplates>,
}

/// What every write goes through: the writer lock, its connection, and where commits are
/// counted and health is kept.
pub(crate) struct Writer {
    /// Where a replaced write connection is opened again. Holds credentials: never logged.
    url: String,
    /// The writer lock, over the write connection.
    conn: tokio::sync::Mutex<WriteConn>,
    /// The read pool, where a commit is checked from outside its connection.
    readers: DatabaseConnection,
    metrics: StoreMetrics,
    commits: AtomicU64,
    health: HealthCell,
    /// Recorded as the lease holder of the requests this store takes to APPROVED.
    instance: InstanceId,
    /// The seq of the newest audit event this store committed (0: none yet).
    audit_head: tokio::sync::watch::Sender<i64>,
}

/// The connection writes use: open, condemned by a failure (a fresh one is opened before the
/// next write), or closed with the store.
pub(crate) enum WriteConn {
    Open(DatabaseConnection),
    Condemned,
    Closed,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.db.get_database_backend())
            .finish_non_exhaustive()
    }
}

/// Pooled connections for reads; writes use one more.
const READERS: u32 = 8;

/// How long a pooled connection may sit idle before it is checked before use.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(30);

fn connect_options(url: &str, connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(connections)
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out (and again when it takes one back): on
        // PostgreSQL a round trip per statement, on SQLite a hop to the connection's thread.
        // A connection used within the last half minute is handed out as it is. If it died
        // since (the database restarted), its statement fails as the store being unavailable,
        // a system fault the caller may retry, and sqlx drops it when it comes back.
        .test_before_acquire_if_idle_for(STALE_AFTER);
    if url.starts_with("sqlite:") {
        options.map_sqlx_sqlite_opts(sqlite_options);
    }
    options
}

/// WAL lets readers run beside the writer; FULL makes each commit durable before it returns
/// (it is a per-connection setting).
fn sqlite_options(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
}

/// The writer's connection: as [`connect_options`] gives, and on SQLite two settings of its
/// own. A statement's journal, which undoes that statement alone when it fails inside a
/// batch's transaction, stays in memory: past 64 KiB SQLite would spill it to a temporary
/// file, and a batch's multi-row statements pass that, written to disk for nothing (the
/// readers keep SQLite's default, so a large sort of theirs still spills to disk). And the
/// WAL is copied back into the database every 10,000 pages (40 MiB at 4 KiB pages) rather
/// than SQLite's 1,000: a page that several commits changed (the end of each node's index
/// range) is copied once per checkpoint, and checkpoints cost less than half the CPU they did.
/// Only the committing connection checkpoints.
fn write_options(url: &str) -> ConnectOptions {
    let mut options = connect_options(url, 1);
    if url.starts_with("sqlite:") {
        options.map_sqlx_sqlite_opts(|o| {
            sqlite_options(o)
                .pragma("temp_store", "memory")
                .pragma("wal_autocheckpoint", "10000")
        });
    }
    options
}

pub(crate) fn unavailable(e: DbErr) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// What a read or write of a closed store fails with.
pub(crate) fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

impl SqlStore {
    /// Opens `sqlite://path?mode=rwc` or `postgres://…`. SQLite runs in WAL mode with
    /// `synchronous = FULL`: a commit is durable before it is acknowledged. Records nothing in
    /// metrics.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_metrics(url, StoreMetrics::default(), ProbeSettings::default()).await
    }

    /// [`connect`](Self::connect), recording commits into `metrics` and probing the database
    /// as `probe` says. Starts the group-commit writer and the probe on the current tokio
    /// runtime.
    pub async fn connect_with_metrics(
        url: &str,
        metrics: StoreMetrics,
        probe: ProbeSettings,
    ) -> Result<Self, StoreError> {
        let db = Database::connect(connect_options(url, READERS))
            .await
            .map_err(unavailable)?;
        let instance = Arc::new(Instance::start(url, db.get_database_backend()).await?);
        let writer = Arc::new(Writer {
            url: url.to_owned(),
            conn: tokio::sync::Mutex::new(WriteConn::Open(Writer::open(url).await?)),
            readers: db.clone(),
            metrics,
            commits: AtomicU64::new(0),
            health: HealthCell::new(probe),
            instance: instance.id(),
            audit_head: tokio::sync::watch::Sender::new(0),
        });
        let group = batch::GroupCommit::start(writer.clone());
        tokio::spawn(health::probe(Arc::downgrade(&writer)));
        Ok(Self {
            writer,
            group,
            instance,
            leader: Arc::new(tokio::sync::watch::Sender::new(false)),
            fact_reads: FactReads::for_url(url),
            facts: Arc::new(risk::FactsTemplates::new(db.get_database_backend())),
            db,
        })
    }

    /// This store's server instance: a new one each time a store is opened. It holds the
    /// approval leases of the requests this store takes to APPROVED.
    pub fn instance_id(&self) -> InstanceId {
        self.instance.id()
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.db, None).await.map_err(unavailable)
    }

    /// Whether the store can take writes, as last seen by a write or the probe (for `/readyz`).
    /// Never waits on the database.
    pub fn health(&self) -> Result<(), Unready> {
        if !self.group.is_running() {
            return Err(Unready::WriterStopped);
        }
        self.writer.health.current()
    }

    /// Write transactions committed through this store (and its clones) since it was opened:
    /// each is one durable commit, so issuances ÷ this is the batching factor.
    pub fn write_commits(&self) -> u64 {
        self.writer.commits.load(Ordering::Relaxed)
    }

    /// Follows the seq of the newest audit event committed through this store (0 until one
    /// is): what lets the checkpoint job count events without reading the database.
    pub fn audit_appends(&self) -> tokio::sync::watch::Receiver<i64> {
        self.writer.audit_head.subscribe()
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            DbBackend::Sqlite => "sqlite",
            DbBackend::Postgres => "postgres",
            _ => "other",
        }
    }

    /// Join tokens neither used nor expired at `now`.
    pub async fn outstanding_join_tokens(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        join_token::Entity::find()
            .filter(join_token::Column::UsedAt.is_null())
            .filter(join_token::Column::ExpiresAt.gt(now.unix_timestamp()))
            .count(&self.db)
            .await
            .map_err(unavailable)
    }

    /// Runs raw SQL outside the store's rules. For tests that tamper with the database.
    pub async fn execute_raw(&self, sql: &str) -> Result<(), StoreError> {
        self.db
            .execute_unprepared(sql)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Closes the connections; the instance is gone from then on, and other replicas may take
    /// over its leases.
    pub async fn close(self) {
        self.fact_reads.close();
        let _ = self.db.close().await;
        let write = std::mem::replace(&mut *self.writer.conn.lock().await, WriteConn::Closed);
        if let WriteConn::Open(write) = write {
            let _ = write.close().await;
        }
        self.instance.close().await;
    }

    async fn find_request_row(
        &self,
        caller: &str,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StoreError> {
        request::Entity::find()
            .filter(request::Column::Caller.eq(caller))
            .filter(request::Column::RequestId.eq(request_id))
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(convert::request)
            .transpose()
    }

    async fn certificate_row(
        &self,
        serial: &Serial,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        certificate::Entity::find_by_id(serial.to_hex())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(convert::certificate)
            .transpose()
    }

    async fn join_token_row(&self, token_id: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        join_token::Entity::find_by_id(token_id.to_owned())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(convert::join_token)
            .transpose()
    }

    async fn audit_rows(&self) -> Result<Vec<ChainedEvent>, StoreError> {
        audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Seq)
            .all(&self.db)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(convert::chained_event)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

    use super::{connect_options, write_options};

    /// The writer keeps a statement's journal in memory and checkpoints every 10,000 pages; a
    /// reader keeps SQLite's defaults (a sort too large for memory goes to a temporary file).
    #[tokio::test]
    async fn only_the_writer_keeps_its_journal_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let pragma = async |options, name: &str| {
            let db = Database::connect(options).await.unwrap();
            let sql = format!("PRAGMA {name}");
            let row = db
                .query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        };
        // temp_store: 0 is the build's default, 2 is MEMORY.
        assert_eq!(pragma(write_options(&url), "temp_store").await, 2);
        assert_eq!(
            pragma(write_options(&url), "wal_autocheckpoint").await,
            10_000
        );
        assert_eq!(pragma(connect_options(&url, 1), "temp_store").await, 0);
        assert_eq!(
            pragma(connect_options(&url, 1), "wal_autocheckpoint").await,
            1000
        );
    }
}
