//! Whether the store can commit, as `/readyz` reports it without touching the database.
//!
//! Every write transaction reports its outcome here, and a probe (see [`probe`]) writes and
//! reads on a timer whenever no write has succeeded lately, so the answer stays current when
//! traffic stops and recovers by itself once the database does. A probe that does not finish
//! within its timeout counts as a failure: a hung database makes the store unready within one
//! interval plus one timeout, and reading the health never waits. A failed write keeps the
//! store unready for three intervals even if other writes succeed meanwhile, and each further
//! failure before a client's write commits again doubles that (up to 48 intervals): a database
//! that refuses some writes (a full PostgreSQL tablespace still fits the probe's one-row update
//! into the page it has, but not new rows) is taken out of rotation, and for longer each time
//! it fails again, rather than flapping.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use crate::Writer;

/// Why the store is not ready; the text `/readyz` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unready {
    /// The last write failed to commit (a full disk, a lost connection, a refused commit).
    WriteFailed,
    /// The database did not answer a probe within its timeout.
    Timeout,
    /// The database refused or dropped the probe's read.
    ReadFailed,
    /// The group-commit writer has stopped.
    WriterStopped,
    /// No write and no probe has finished for several probe intervals.
    Stale,
}

impl Unready {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WriteFailed => "the database cannot commit writes",
            Self::Timeout => "the database does not answer in time",
            Self::ReadFailed => "the database refuses reads",
            Self::WriterStopped => "the store's writer has stopped",
            Self::Stale => "the store's health has not been checked lately",
        }
    }
}

/// How often the store is probed and how long a probe may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(800),
        }
    }
}

/// The store's last known health, shared by the writer, the probe and readers of it.
#[derive(Debug)]
pub(crate) struct HealthCell {
    settings: ProbeSettings,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    last: Result<(), Unready>,
    at: Instant,
    /// When a write last failed.
    failed_at: Option<Instant>,
    /// Writes failed since a client's write last committed.
    failures: u32,
}

impl HealthCell {
    pub(crate) fn new(settings: ProbeSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State {
                last: Ok(()),
                at: Instant::now(),
                failed_at: None,
                failures: 0,
            }),
        }
    }

    /// A write committed (and was seen committed); `client` when it held client requests, which
    /// the probe's does not (its success does not prove new rows fit).
    pub(crate) fn committed(&self, client: bool) {
        self.set(Ok(()));
        if client {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.failures = 0;
        }
    }

    pub(crate) fn failed(&self, why: Unready) {
        self.set(Err(why));
    }

    fn set(&self, last: Result<(), Unready>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.last.is_ok() != last.is_ok() {
            match last {
                Ok(()) => tracing::info!("the store commits again: ready"),
                Err(why) => tracing::warn!(reason = why.as_str(), "the store is not ready"),
            }
        }
        let now = Instant::now();
        state.last = last;
        state.at = now;
        if last == Err(Unready::WriteFailed) {
            state.failed_at = Some(now);
            state.failures = state.failures.saturating_add(1);
        }
    }

    /// The last outcome, unless it is older than three probe intervals or a write failed
    /// within its hold-off (three intervals, doubled for each further failure).
    pub(crate) fn current(&self) -> Result<(), Unready> {
        let state = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let window = 3 * self.settings.interval;
        if state.at.elapsed() > window + self.settings.timeout {
            return Err(Unready::Stale);
        }
        let hold_off = window * (1 << state.failures.saturating_sub(1).min(4));
        if state.failed_at.is_some_and(|at| at.elapsed() < hold_off) {
            return Err(Unready::WriteFailed);
        }
        state.last
    }

    /// Whether a write succeeded within the last probe interval (then there is nothing to
    /// probe).
    fn recently_committed(&self) -> bool {
        let state = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last.is_ok() && state.at.elapsed() < self.settings.interval
    }
}

/// Probes the store every interval until `writer`'s last other holder is gone: a read on the
/// pool, and a committed write on the writer's connection unless a write succeeded lately.
pub(crate) async fn probe(writer: std::sync::Weak<Writer>) {
    let span = tracing::info_span!("store_probe");
    async move {
        let Some(settings) = writer.upgrade().map(|w| w.health.settings) else {
            return;
        };
        let mut ticks = tokio::time::interval(settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(writer) = writer.upgrade() else {
                return;
            };
            let outcome = tokio::time::timeout(settings.timeout, writer.probe()).await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(why)) => writer.health.failed(why),
                Err(_) => writer.health.failed(Unready::Timeout),
            }
        }
    }
    .instrument(span)
    .await
}

impl Writer {
    /// One probe: the readers answer, and a write commits unless one did lately.
    async fn probe(&self) -> Result<(), Unready> {
        if let Err(e) = self.readers.ping().await {
            tracing::debug!(error = %e, "store probe: read failed");
            return Err(Unready::ReadFailed);
        }
        if self.health.recently_committed() {
            return Ok(());
        }
        // A failed write reports itself to the health cell.
        self.probe_write().await.map_err(|_| Unready::WriteFailed)
    }
}
