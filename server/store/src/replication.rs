//! Several servers on one PostgreSQL (DESIGN §15).
//!
//! A transaction that records revocations sends `NOTIFY mintgate_revocations` (PostgreSQL
//! delivers it when, and only if, the transaction commits), and every replica LISTENs on a
//! connection of its own and wakes its tailer, which reads the log from the table in sequence
//! order: a notification carries nothing the log does not. Notifications sent while a listener
//! is disconnected are lost, so it wakes the tailer after every (re)connection too, and the
//! tailer's poll stays as a fallback. Hold changes travel the same way (`mintgate_holds`,
//! announced after they commit) to every replica's WatchPending streams.
//!
//! Jobs that must run once (pruning, hold expiry) run on the replica that holds the session
//! advisory lock [`LEADER_LOCK_CLASS`], taken on the instance's own connection (never a pooled
//! one: the lock would go back to the pool with it). Followers try to take it every interval;
//! PostgreSQL releases it when the leader's session ends, also when its process is killed, so
//! another replica leads within one interval. The leader checks every interval that its
//! session still holds it. On SQLite the one server always leads.

use std::future::Future;
use std::time::Duration;

use mintgate_domain::store::StoreError;
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::authority::AUTHORITIES_CHANNEL;
use crate::write::WriteTx;
use crate::{SqlStore, unavailable};

/// The channel revocations are announced on.
pub const REVOCATIONS_CHANNEL: &str = "mintgate_revocations";
/// The channel hold changes are announced on: `<instance>:<hold id>:<change>`.
const HOLDS_CHANNEL: &str = "mintgate_holds";

/// The leader lock's first key ("lead"); its second is 0.
const LEADER_LOCK_CLASS: i64 = 0x6c65_6164;

/// How long a listener waits before connecting again after it lost its connection.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

impl WriteTx<'_> {
    /// On PostgreSQL, announces the log's new head `seq` to every replica at commit.
    pub(crate) async fn notify_revocations(&self, seq: i64) -> Result<(), StoreError> {
        if self.txn.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let sql = format!("NOTIFY {REVOCATIONS_CHANNEL}, '{seq}'");
        self.txn
            .execute_unprepared(&sql)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl SqlStore {
    /// Tells the other replicas that this one changed hold `pk` (`change` as the service names
    /// it), once that change has committed. Best effort: a replica that misses it shows the
    /// hold as it is on its next ListPending or WatchPending snapshot.
    pub async fn announce_hold(&self, pk: i64, change: &str) {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        let payload = format!("{}:{pk}:{change}", self.instance.id());
        let notify = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [HOLDS_CHANNEL.into(), payload.into()],
        );
        if let Err(e) = self.db.execute_raw(notify).await {
            tracing::warn!(error = %e, "a hold change could not be announced to the other replicas");
        }
    }

    /// Calls `wake` for every revocation committed by any replica, `on_authorities` for every
    /// CA change (both also after each (re)connection of its listener), and `on_hold` for each
    /// hold change another replica announces (its hold id and change), until `stop` resolves. On SQLite (one server per database) it only waits
    /// for `stop`.
    pub async fn follow_other_replicas(
        &self,
        wake: impl Fn() + Send,
        on_authorities: impl Fn() + Send,
        on_hold: impl Fn(i64, &str) + Send,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        if self.db.get_database_backend() != DbBackend::Postgres {
            return stop.await;
        }
        let url = self.writer.url.clone();
        loop {
            let listening = async {
                let mut listener = PgListener::connect(&url).await?;
                listener
                    .listen_all([REVOCATIONS_CHANNEL, HOLDS_CHANNEL, AUTHORITIES_CHANNEL])
                    .await?;
                Ok::<_, sea_orm::sqlx::Error>(listener)
            };
            let listener = tokio::select! {
                () = &mut stop => return,
                listener = listening => listener,
            };
            match listener {
                Ok(mut listener) => {
                    self.writer.metrics.set_listening(true);
                    // Whatever was committed while nobody listened is read from the table.
                    wake();
                    on_authorities();
                    loop {
                        let next = tokio::select! {
                            () = &mut stop => return,
                            next = listener.try_recv() => next,
                        };
                        match next {
                            Ok(Some(n)) if n.channel() == HOLDS_CHANNEL => {
                                let mine = self.instance.id().to_string();
                                let mut parts = n.payload().splitn(3, ':');
                                if let (Some(from), Some(pk), Some(change)) =
                                    (parts.next(), parts.next(), parts.next())
                                    && from != mine
                                    && let Ok(pk) = pk.parse()
                                {
                                    on_hold(pk, change);
                                }
                            }
                            Ok(Some(n)) if n.channel() == AUTHORITIES_CHANNEL => on_authorities(),
                            Ok(Some(_)) => wake(),
                            Ok(None) => {
                                tracing::warn!("the replication listener lost its connection");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "the replication listener failed");
                                break;
                            }
                        }
                    }
                    self.writer.metrics.set_listening(false);
                }
                Err(e) => tracing::warn!(error = %e, "the replication listener could not connect"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    }

    /// Whether this replica leads the jobs that must run once.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Takes and keeps the leader lock, checking every `every`, until `stop` resolves (then
    /// releases it with the instance's session when the store closes).
    pub async fn lead(&self, every: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let Some(db) = self.instance.lock_connection() else {
            self.set_leader(true);
            return stop.await;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            // Held by this session, or taken now (a session lock is re-entrant: only try it
            // when this session does not hold it, so one unlock always releases it).
            let held = format!(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND pid = pg_backend_pid() AND classid = {LEADER_LOCK_CLASS} AND objid = 0 \
                 AND objsubid = 2 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            );
            let leads = match scalar::<i64>(db, &held).await {
                Ok(0) => {
                    let take = format!("SELECT pg_try_advisory_lock({LEADER_LOCK_CLASS}, 0)");
                    scalar::<bool>(db, &take).await
                }
                Ok(_) => Ok(true),
                Err(e) => Err(e),
            };
            match leads {
                Ok(leads) => self.set_leader(leads),
                Err(e) => {
                    tracing::warn!(error = %e, "the leader lock could not be checked");
                    self.set_leader(false);
                }
            }
        }
    }

    fn set_leader(&self, leads: bool) {
        let was = self.leader.send_replace(leads);
        if was != leads {
            if leads {
                tracing::info!("this replica leads the jobs that run once");
            } else {
                tracing::warn!("this replica no longer leads");
            }
        }
        self.writer.metrics.set_leader(leads);
    }
}

async fn scalar<T: sea_orm::TryGetable>(
    db: &sea_orm::DatabaseConnection,
    sql: &str,
) -> Result<T, StoreError> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| StoreError::Unavailable("the database answered no row".into()))?;
    row.try_get_by_index(0).map_err(unavailable)
}
