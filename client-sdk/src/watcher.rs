//! [`RevocationWatcher`]: keeps a local [`RevocationSet`] in step with Mintgate's revocation feed,
//! persists it with its cursor, resumes after disconnects with jittered backoff, and reports how
//! stale it is.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mintgate_proto::v1;
use mintgate_proto::v1::watch_revocations_response::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Backoff, Client, Error, ErrorKind};

/// The revoked, unexpired serials this process knows of, and how fresh that knowledge is.
#[derive(Debug)]
pub struct RevocationSet {
    state: RwLock<SetState>,
    applied: watch::Sender<i64>,
    contact: watch::Sender<bool>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct SetState {
    /// The last sequence number applied.
    cursor: i64,
    /// Normalised serial (lowercase hex, no leading zero bytes) → notAfter (Unix seconds).
    revoked: HashMap<String, i64>,
    #[serde(skip)]
    last_contact: Option<Instant>,
}

/// Lowercase hex without leading zero bytes, so DER's sign byte does not matter.
pub fn normalize_serial(hex: &str) -> String {
    let mut s = hex.to_ascii_lowercase();
    while s.len() > 2 && s.starts_with("00") {
        s.drain(..2);
    }
    s
}

impl RevocationSet {
    fn new(state: SetState) -> Arc<Self> {
        let cursor = state.cursor;
        Arc::new(Self {
            state: RwLock::new(state),
            applied: watch::Sender::new(cursor),
            contact: watch::Sender::new(false),
        })
    }

    /// An empty set that has never heard from the server.
    pub fn empty() -> Arc<Self> {
        Self::new(SetState::default())
    }

    /// Whether the serial (hex, any case, with or without a leading zero byte) is revoked.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.read()
            .revoked
            .contains_key(&normalize_serial(serial_hex))
    }

    /// The last sequence number applied.
    pub fn cursor(&self) -> i64 {
        self.read().cursor
    }

    /// How many serials are revoked and unexpired.
    pub fn len(&self) -> usize {
        self.read().revoked.len()
    }

    /// Whether no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Time since the server last proved this view current (an event or a heartbeat); `None`
    /// if it never has.
    pub fn staleness(&self) -> Option<Duration> {
        self.read().last_contact.map(|t| t.elapsed())
    }

    /// Resolves once every revocation up to `seq` has been applied.
    pub async fn applied_through(&self, seq: i64) {
        let mut applied = self.applied.subscribe();
        // The sender lives in `self`.
        let _ = applied.wait_for(|c| *c >= seq).await;
    }

    /// Resolves once the server has been heard from (the first message of the feed).
    pub async fn contacted(&self) {
        let mut contact = self.contact.subscribe();
        // The sender lives in `self`.
        let _ = contact.wait_for(|c| *c).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SetState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one message of the feed; returns whether the set changed.
    fn apply(&self, message: Message) -> bool {
        let now = unix_now();
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.last_contact = Some(Instant::now());
        let changed = match message {
            Message::Event(e) => {
                insert(&mut state.revoked, &e);
                state.cursor = state.cursor.max(e.seq);
                true
            }
            Message::Snapshot(s) => {
                state.revoked.clear();
                for e in &s.entries {
                    insert(&mut state.revoked, e);
                }
                state.cursor = s.as_of_seq;
                true
            }
            Message::Heartbeat(_) => false,
        };
        state.revoked.retain(|_, not_after| *not_after > now);
        let cursor = state.cursor;
        drop(state);
        self.applied.send_replace(cursor);
        self.contact.send_replace(true);
        changed
    }

    fn snapshot(&self) -> SetState {
        self.read().clone()
    }
}

fn insert(revoked: &mut HashMap<String, i64>, e: &v1::RevocationEvent) {
    let not_after = e.not_after.as_ref().map_or(i64::MAX, |t| t.seconds);
    revoked.insert(normalize_serial(&e.serial), not_after);
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Opens a client for the watcher (called again after every disconnect, so it can pick up a
/// renewed certificate).
pub type Connect =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Client, Error>> + Send>> + Send + Sync>;

/// How a [`RevocationWatcher`] behaves.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// Where the set and its cursor are kept across restarts (written atomically); `None`
    /// keeps them in memory only, and a restart replays the retained log.
    pub state_file: Option<PathBuf>,
    /// Reconnect backoff bounds (full jitter in between).
    pub min_backoff: Duration,
    /// Longest wait between reconnects.
    pub max_backoff: Duration,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            state_file: None,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A background task following `WatchRevocations`. Dropping it stops the task.
#[derive(Debug)]
pub struct RevocationWatcher {
    set: Arc<RevocationSet>,
    task: JoinHandle<()>,
}

impl RevocationWatcher {
    /// Loads the persisted set (if any) and starts following the feed from its cursor.
    pub fn spawn(connect: Connect, config: WatcherConfig) -> Result<Self, std::io::Error> {
        let state = match &config.state_file {
            Some(path) => load(path)?,
            None => SetState::default(),
        };
        let set = RevocationSet::new(state);
        let task = tokio::spawn(follow(connect, set.clone(), config));
        Ok(Self { set, task })
    }

    /// The live set, for verifiers and lookups.
    pub fn set(&self) -> Arc<RevocationSet> {
        self.set.clone()
    }
}

impl Drop for RevocationWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(connect: Connect, set: Arc<RevocationSet>, config: WatcherConfig) {
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    loop {
        match session(&connect, &set, &config, &mut backoff).await {
            Ok(()) => tracing::info!("revocation feed ended; reconnecting"),
            Err(e) if e.kind() == ErrorKind::OutOfRange => {
                // The server's log is behind our cursor (restored from a backup?): start over.
                tracing::warn!(error = %e, "cursor ahead of the server; replaying from 0");
                let mut state = set.state.write().unwrap_or_else(PoisonError::into_inner);
                *state = SetState::default();
            }
            Err(e) => tracing::warn!(error = %e, "revocation feed failed; reconnecting"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(
    connect: &Connect,
    set: &RevocationSet,
    config: &WatcherConfig,
    backoff: &mut Backoff,
) -> Result<(), Error> {
    let client = connect().await?;
    let mut stream = client.watch_revocations(set.cursor()).await?;
    while let Some(response) = stream.message().await? {
        backoff.reset();
        let Some(message) = response.message else {
            continue;
        };
        if set.apply(message)
            && let Some(path) = &config.state_file
            && let Err(e) = save(path, &set.snapshot())
        {
            tracing::warn!(error = %e, path = %path.display(), "could not persist the revocation set");
        }
    }
    Ok(())
}

fn load(path: &Path) -> Result<SetState, std::io::Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SetState::default()),
        Err(e) => Err(e),
    }
}

/// Writes to a temporary file in the same directory, syncs it, and renames it over `path`.
fn save(path: &Path, state: &SetState) -> Result<(), std::io::Error> {
    let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    crate::atomic_write(path, &json, 0o600)
}
