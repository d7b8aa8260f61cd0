//! This store's identity as a holder of approval leases, and how it tells whether another
//! instance still runs (DESIGN §5, §15).
//!
//! Every opened store is a new instance with a random id, recorded on the requests it takes to
//! APPROVED. On SQLite the server is the database's only writer (replicas share PostgreSQL only),
//! so every instance but this one is gone. On PostgreSQL an instance holds the session-level
//! advisory lock `(LEASE_LOCK_CLASS, id)` on a connection of its own for as long as it runs.
//! PostgreSQL releases it when that session ends, also when the process is killed, so a replica
//! finds a holder alive exactly while its lock is granted. Should the lock's connection break
//! while the process lives, its leases may be taken over meanwhile; that is safe (every
//! completion is conditional on the request's serial, so one of the two attempts loses), and
//! the keeper takes the lock again.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use mintgate_domain::model::InstanceId;
use mintgate_domain::store::StoreError;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::unavailable;

/// The first key of every instance lock: "mint". The second is the instance id.
const LEASE_LOCK_CLASS: i64 = 0x6d69_6e74;

/// How often the keeper checks that the lock is still held.
const KEEP_EVERY: Duration = Duration::from_secs(10);

/// Ids tried before giving up (a clash needs a live instance with the same random id).
const ID_ATTEMPTS: usize = 8;

pub(crate) struct Instance {
    id: InstanceId,
    /// PostgreSQL: the lock and its keeper.
    lock: Option<Held>,
}

/// The one connection holding the lock, and the task that keeps it.
struct Held {
    db: DatabaseConnection,
    stop: watch::Sender<bool>,
    keeper: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Instance {
    /// A new instance. On PostgreSQL its lock is taken before it returns, so no request is
    /// recorded with an id that another replica could take for a dead one.
    pub(crate) async fn start(url: &str, backend: DbBackend) -> Result<Self, StoreError> {
        if backend != DbBackend::Postgres {
            return Ok(Self {
                id: InstanceId(random_id()),
                lock: None,
            });
        }
        // One connection the pool never recycles: the lock lives exactly as long as it does.
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        let db = Database::connect(options).await.map_err(unavailable)?;
        for _ in 0..ID_ATTEMPTS {
            let id = InstanceId(random_id());
            if try_lock(&db, id).await? {
                let (stop, stopped) = watch::channel(false);
                let keeper = tokio::spawn(keep(db.clone(), id, stopped));
                return Ok(Self {
                    id,
                    lock: Some(Held {
                        db,
                        stop,
                        keeper: std::sync::Mutex::new(Some(keeper)),
                    }),
                });
            }
        }
        let _ = db.close().await;
        Err(StoreError::Unavailable(
            "no free server instance id: every one tried is locked by a running replica".into(),
        ))
    }

    pub(crate) fn id(&self) -> InstanceId {
        self.id
    }

    /// PostgreSQL: the connection of this instance's own session (never pooled).
    pub(crate) fn lock_connection(&self) -> Option<&DatabaseConnection> {
        self.lock.as_ref().map(|held| &held.db)
    }

    /// Whether `holder` still runs, asked through `db` (which must be this store's database).
    pub(crate) async fn alive(
        &self,
        db: &DatabaseConnection,
        holder: InstanceId,
    ) -> Result<bool, StoreError> {
        if holder == self.id {
            return Ok(true);
        }
        if self.lock.is_none() {
            // SQLite: this server is the database's only writer.
            return Ok(false);
        }
        let granted = count(db, &format!("{} AND granted", lock_rows(holder))).await?;
        Ok(granted > 0)
    }

    /// Stops the keeper, releases the lock and ends its session: once this returns, every
    /// replica finds the instance gone. (Ending the session alone releases the lock only once
    /// the server has noticed, a moment later.)
    pub(crate) async fn close(&self) {
        let Some(held) = &self.lock else {
            return;
        };
        let _ = held.stop.send(true);
        let keeper = held.keeper.lock().map(|mut k| k.take()).unwrap_or_default();
        if let Some(keeper) = keeper {
            // It stops after the check it may be in, so it cannot take the lock again below.
            let _ = keeper.await;
        }
        let unlock = Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_advisory_unlock_all()".to_owned(),
        );
        let _ = held.db.execute_raw(unlock).await;
        let _ = held.db.close_by_ref().await;
    }
}

/// Checks every [`KEEP_EVERY`] that this session still holds the lock, and takes it again on a
/// new connection if the old one broke.
async fn keep(db: DatabaseConnection, id: InstanceId, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(KEEP_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let mine = format!("{} AND pid = pg_backend_pid()", lock_rows(id));
        match count(&db, &mine).await {
            Ok(0) => match try_lock(&db, id).await {
                Ok(true) => {
                    tracing::warn!(instance = %id, "instance lock taken again after its connection was lost")
                }
                Ok(false) => {
                    tracing::error!(instance = %id, "instance lock is held by another session")
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "instance lock could not be taken again")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "instance lock could not be checked")
            }
        }
    }
}

async fn try_lock(db: &DatabaseConnection, id: InstanceId) -> Result<bool, StoreError> {
    let sql = format!("SELECT pg_try_advisory_lock({LEASE_LOCK_CLASS}, {id})");
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .map_err(unavailable)?;
    row.map_or(Ok(false), |r| r.try_get_by_index(0).map_err(unavailable))
}

/// The `pg_locks` rows of `id`'s lock in this database (integers only: nothing to escape).
fn lock_rows(id: InstanceId) -> String {
    format!(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid = {LEASE_LOCK_CLASS} AND objid = {id} AND objsubid = 2"
    )
}

async fn count(db: &DatabaseConnection, sql: &str) -> Result<i64, StoreError> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .map_err(unavailable)?;
    row.map_or(Ok(0), |r| r.try_get_by_index(0).map_err(unavailable))
}

/// A random id in 1..2^31 (the lock's second key is a PostgreSQL `int4`). Unique among running
/// instances on PostgreSQL because each holds its lock; a clash with a dead one only makes its
/// leftover leases wait out their time, as before instance ids existed.
fn random_id() -> i64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    i64::try_from(h.finish() >> 33).map_or(1, |id| id.max(1))
}
