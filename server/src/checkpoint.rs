//! The checkpoint job (DESIGN §17): signs the audit chain's head every `every_events` events or
//! `every` (on the injected clock), whichever comes first, and once more on clean shutdown.
//! Each checkpoint is a write transaction of its own through the store's writer, so it
//! serialises with appends. Of several replicas only the leader checkpoints (the events of every
//! replica count: it follows the chain's head in the database); each still signs its own
//! shutdown checkpoint, and the store keeps one per head.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Recorder, counter, describe_counter, describe_gauge, gauge};
use mintgate_domain::ports::{AuditSigner, Clock};
use mintgate_store::{CheckpointWrite, SqlStore};
use time::OffsetDateTime;
use tokio::sync::watch;

/// Checkpoints written by this server.
pub const CHECKPOINTS: &str = "mintgate_audit_checkpoints_total";
/// The audit seq the newest checkpoint this server wrote signs.
pub const CHECKPOINT_SEQ: &str = "mintgate_audit_checkpoint_seq";

/// How often the clock is looked at for a time-based checkpoint. Only a look: the interval
/// itself is measured on the injected clock.
const TICK: Duration = Duration::from_millis(250);

/// Writes checkpoints. Cheap to share.
pub struct Checkpointer {
    store: SqlStore,
    signer: Arc<dyn AuditSigner>,
    clock: Arc<dyn Clock>,
    every_events: i64,
    every: Duration,
    written: Counter,
    seq: Gauge,
}

impl Checkpointer {
    pub fn new(
        store: SqlStore,
        signer: Arc<dyn AuditSigner>,
        clock: Arc<dyn Clock>,
        every_events: u64,
        every: Duration,
        recorder: &dyn Recorder,
    ) -> Self {
        let (written, seq) = metrics::with_local_recorder(recorder, || {
            describe_counter!(
                CHECKPOINTS,
                "Signed audit checkpoints written by this server."
            );
            describe_gauge!(
                CHECKPOINT_SEQ,
                "The audit event seq that the newest checkpoint written by this server signs."
            );
            (counter!(CHECKPOINTS), gauge!(CHECKPOINT_SEQ))
        });
        Self {
            store,
            signer,
            clock,
            every_events: i64::try_from(every_events).unwrap_or(i64::MAX),
            every,
            written,
            seq,
        }
    }

    /// Signs the head now unless it already has a checkpoint; the seq the newest checkpoint
    /// covers, if known. Failures are logged (a missed checkpoint is caught up by the next).
    pub async fn write(&self, reason: &'static str) -> Option<i64> {
        let now = self.clock.now();
        match self.store.write_checkpoint(&*self.signer, now).await {
            Ok(CheckpointWrite::Written(signed)) => {
                let c = &signed.checkpoint;
                self.written.increment(1);
                self.seq.set(c.seq as f64);
                tracing::info!(
                    audit_seq = c.seq,
                    hash = %hex::encode(c.hash),
                    key_id = %c.key_id,
                    reason,
                    "audit checkpoint signed"
                );
                Some(c.seq)
            }
            Ok(CheckpointWrite::UpToDate) => match self.store.newest_checkpoint().await {
                Ok(newest) => newest.map(|c| c.checkpoint.seq),
                Err(_) => None,
            },
            Err(e) => {
                tracing::error!(error = %e, reason, "an audit checkpoint could not be written");
                None
            }
        }
    }

    /// On the leader: whether a checkpoint is due by time, or by the events every replica
    /// appended (read from the database; this server's own appends are seen at once).
    async fn due(&self, since: OffsetDateTime, covered: i64) -> Option<&'static str> {
        if !self.store.is_leader() {
            return None;
        }
        if self.clock.now() - since >= self.every {
            return Some("time");
        }
        match self.store.audit_head().await {
            Ok(head) => (head - covered >= self.every_events).then_some("events"),
            Err(e) => {
                tracing::warn!(error = %e, "the audit chain's head could not be read");
                None
            }
        }
    }

    /// Writes checkpoints as they fall due until `stop` turns true. The shutdown checkpoint is
    /// the caller's, once nothing appends any more.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let mut appends = self.store.audit_appends();
        let mut covered = match self.store.newest_checkpoint().await {
            Ok(newest) => newest.map_or(0, |c| c.checkpoint.seq),
            Err(e) => {
                tracing::warn!(error = %e, "the newest audit checkpoint could not be read");
                0
            }
        };
        let mut since: OffsetDateTime = self.clock.now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reason = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                changed = appends.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let head = *appends.borrow_and_update();
                    Some((head - covered >= self.every_events && self.store.is_leader())
                        .then_some("events"))
                }
                _ = tick.tick() => None,
            };
            // (Out of the select: what `stop` lent it is not held across this await.)
            let reason = match reason {
                Some(reason) => reason,
                None => self.due(since, covered).await,
            };
            if let Some(reason) = reason {
                since = self.clock.now();
                if let Some(seq) = self.write(reason).await {
                    covered = covered.max(seq);
                }
            }
        }
    }
}
