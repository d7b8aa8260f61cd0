//! The live side of the revocation registry (DESIGN §7).
//!
//! [`RevocationHub`] holds the set of revoked, unexpired serials that every handshake consults,
//! the open connections of each serial (closed when it is revoked), and the feed that
//! `WatchRevocations` subscribers follow. Only [`run_tailer`] feeds it, by reading the log in
//! sequence order from the database: after a local commit (nudged) and on a timer (so revocations
//! made by other replicas sharing the database arrive too). Because the store assigns sequence
//! numbers under its writer lock, the log never shows a later entry before an earlier one, and the
//! feed is gap-free and in order by construction.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use mintgate_domain::model::RevocationRecord;
use mintgate_domain::ports::Clock;
use mintgate_domain::service::EXPIRY_SKEW;
use mintgate_domain::store::{CertificateStore, StoreError};
use mintgate_domain::{Error, Serial};
use prost::Message;
use prost::bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How the hub and its subscribers behave.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events kept for subscribers that fall behind momentarily (shared by all of them).
    pub feed_capacity: usize,
    /// Revocations a subscriber may fall behind the newest before it is closed as too slow.
    pub subscriber_buffer: usize,
    /// How often an idle stream gets a heartbeat.
    pub heartbeat: Duration,
    /// Concurrent streams one identity may hold.
    pub max_streams_per_identity: usize,
    /// How often the log is read without a nudge (revocations by other replicas).
    pub poll_interval: Duration,
    /// How often expired entries are pruned from the log.
    pub prune_interval: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            feed_capacity: 4096,
            subscriber_buffer: 256,
            heartbeat: Duration::from_secs(5),
            max_streams_per_identity: 4,
            poll_interval: Duration::from_secs(1),
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct RevocationHub {
    config: HubConfig,
    /// Revoked serial → its certificate's notAfter.
    live: RwLock<HashMap<Serial, OffsetDateTime>>,
    /// Revoked CA (hex SKI) → its notAfter: every certificate it signed is revoked.
    issuers: RwLock<HashMap<String, OffsetDateTime>>,
    /// When the first entry of either set leaves it (its notAfter plus the skew allowance), so
    /// that expiring looks at a million entries only when one of them is due.
    next_expiry: Mutex<Option<OffsetDateTime>>,
    /// Open connections by their certificate's serial: id, cut token, issuing CA (hex AKI).
    connections: Mutex<HashMap<Serial, Vec<Connection>>>,
    /// Connections whose cut waits for their own answer (see [`RevocationHub::defer_cut`]).
    deferred: Mutex<HashMap<u64, CancellationToken>>,
    next_connection: AtomicU64,
    streams: Mutex<HashMap<String, usize>>,
    feed: broadcast::Sender<Published>,
    applied: watch::Sender<i64>,
    nudge: Notify,
    /// Cancelled when the server shuts down: feeds end so the gRPC server can drain.
    closing: CancellationToken,
    metrics: Metrics,
}

impl RevocationHub {
    /// A hub that records no metrics.
    pub fn new(config: HubConfig) -> Arc<Self> {
        Self::with_metrics(config, Metrics::disabled())
    }

    /// A hub recording its subscribers, slow-subscriber cuts and propagation lag in `metrics`.
    pub fn with_metrics(config: HubConfig, metrics: Metrics) -> Arc<Self> {
        let (feed, _) = broadcast::channel(config.feed_capacity);
        Arc::new(Self {
            config,
            live: RwLock::default(),
            issuers: RwLock::default(),
            next_expiry: Mutex::default(),
            connections: Mutex::default(),
            deferred: Mutex::default(),
            next_connection: AtomicU64::new(0),
            streams: Mutex::default(),
            feed,
            applied: watch::Sender::new(0),
            nudge: Notify::new(),
            closing: CancellationToken::new(),
            metrics,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Whether `serial` is revoked (and not yet expired).
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(serial)
    }

    /// Whether the CA with hex SKI `key_id` is revoked (RevokeIssuer): so is all it signed.
    pub fn is_issuer_revoked(&self, key_id: &str) -> bool {
        self.issuers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key_id)
    }

    /// The sequence number of the newest entry applied here.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Asks the tailer to read the log now (after a local commit).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Waits until the entry `seq` has been applied here: once this returns, the revoked
    /// certificate fails every new handshake and its connections are being closed.
    pub async fn applied_through(&self, seq: i64) {
        self.nudge();
        let mut applied = self.applied.subscribe();
        // The sender lives as long as the hub, which outlives this borrow.
        let _ = applied.wait_for(|head| *head >= seq).await;
    }

    /// Ends every feed (server shutdown); subscribers resume elsewhere from their cursor.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Resolves when the server is shutting down.
    pub async fn closed(&self) {
        self.closing.cancelled().await;
    }

    /// Follows the feed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.feed.subscribe()
    }

    /// Registers a connection authenticated by `serial`, signed by the CA `issuer` (hex AKI);
    /// the token is cancelled when that serial or that CA is revoked. The registration ends
    /// when the returned guard drops.
    ///
    /// The live sets are read under the connections' lock: a revocation enters its live set
    /// before it takes that lock to cut the serial's connections, so either this sees it or
    /// it finds this connection listed.
    pub fn register_connection(
        self: &Arc<Self>,
        serial: Serial,
        issuer: Option<String>,
    ) -> ConnectionGuard {
        let token = CancellationToken::new();
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_revoked(&serial) || issuer.as_deref().is_some_and(|i| self.is_issuer_revoked(i))
        {
            token.cancel();
        }
        connections
            .entry(serial.clone())
            .or_default()
            .push(Connection {
                id,
                cut: token.clone(),
                issuer,
            });
        drop(connections);
        ConnectionGuard {
            hub: self.clone(),
            serial,
            id,
            token,
        }
    }

    /// A workload revoking its own certificate must still hear the answer: its connection's cut
    /// is held back until [`RevocationHub::cut_deferred`].
    pub fn defer_cut(&self, connection: u64) {
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(connection, CancellationToken::new());
    }

    /// Cuts a connection held back by [`RevocationHub::defer_cut`] after `grace` (time for its
    /// answer to be written), if its certificate was revoked meanwhile.
    pub fn cut_deferred(self: &Arc<Self>, connection: u64, grace: Duration) {
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let held = hub
                .deferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&connection);
            if let Some(cut) = held {
                cut.cancel();
            }
        });
    }

    /// Takes one of `identity`'s stream slots, or refuses past the cap.
    pub fn acquire_stream(self: &Arc<Self>, identity: &str) -> Result<StreamPermit, Error> {
        let max = self.config.max_streams_per_identity;
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let count = streams.entry(identity.to_owned()).or_default();
        if *count >= max {
            return Err(Error::TooManyStreams { max });
        }
        *count += 1;
        self.metrics.subscriber_joined();
        Ok(StreamPermit {
            hub: self.clone(),
            identity: identity.to_owned(),
        })
    }

    /// Applies one log entry: into the live set, close its connections, out on the feed.
    fn apply(&self, entry: RevocationRecord) {
        if entry.seq <= self.applied() {
            return;
        }
        if entry.issuer {
            self.issuers
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(entry.issuer_key_id.clone(), entry.not_after);
        } else {
            self.live
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(entry.serial.clone(), entry.not_after);
        }
        let due = entry.not_after + EXPIRY_SKEW;
        let mut next = self
            .next_expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *next = Some(next.map_or(due, |n| n.min(due)));
        drop(next);
        // Out on the feed before any cut, so a watcher on a connection about to be closed has
        // the best chance to hear why. Encoded once here; every subscriber sends these bytes.
        let seq = entry.seq;
        let published = Published {
            seq,
            applied_at: Instant::now(),
            encoded: crate::convert::revocation_event(&entry)
                .encode_to_vec()
                .into(),
        };
        // No subscriber is not an error.
        let _ = self.feed.send(published);
        let cut: Vec<Connection> = {
            let mut connections = self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if entry.issuer {
                let issuer = Some(entry.issuer_key_id.as_str());
                let mut cut = Vec::new();
                for list in connections.values_mut() {
                    let (gone, kept) = std::mem::take(list)
                        .into_iter()
                        .partition(|c| c.issuer.as_deref() == issuer);
                    *list = kept;
                    cut.extend::<Vec<_>>(gone);
                }
                connections.retain(|_, list| !list.is_empty());
                cut
            } else {
                connections.remove(&entry.serial).unwrap_or_default()
            }
        };
        let mut deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        for c in cut {
            match deferred.get_mut(&c.id) {
                Some(held) => *held = c.cut,
                None => c.cut.cancel(),
            }
        }
        drop(deferred);
        self.applied.send_replace(seq);
    }

    /// Drops entries whose certificate expired (with the skew allowance) before `now`.
    fn expire(&self, now: OffsetDateTime) {
        let mut next = self
            .next_expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if next.is_none_or(|due| due > now) {
            return;
        }
        let mut earliest: Option<OffsetDateTime> = None;
        let mut keep = |not_after: &OffsetDateTime| {
            let due = *not_after + EXPIRY_SKEW;
            let kept = due > now;
            if kept {
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
            }
            kept
        };
        self.live
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, not_after| keep(not_after));
        self.issuers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, not_after| keep(not_after));
        *next = earliest;
    }
}

/// A log entry as the feed carries it: its sequence number and its encoded `RevocationEvent`.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: i64,
    /// When this server applied it: where propagation lag is measured from.
    pub applied_at: Instant,
    pub encoded: Bytes,
}

/// One open connection the hub may have to cut.
#[derive(Debug)]
struct Connection {
    id: u64,
    cut: CancellationToken,
    issuer: Option<String>,
}

/// Keeps a connection registered with the hub; see [`RevocationHub::register_connection`].
#[derive(Debug)]
pub struct ConnectionGuard {
    hub: Arc<RevocationHub>,
    serial: Serial,
    id: u64,
    token: CancellationToken,
}

impl ConnectionGuard {
    /// Cancelled when the connection's certificate is revoked.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut connections = self
            .hub
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = connections.get_mut(&self.serial) {
            list.retain(|c| c.id != self.id);
            if list.is_empty() {
                connections.remove(&self.serial);
            }
        }
    }
}

/// One of an identity's stream slots; released on drop.
#[derive(Debug)]
pub struct StreamPermit {
    hub: Arc<RevocationHub>,
    identity: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.hub.metrics.subscriber_left();
        let mut streams = self
            .hub
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = streams.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                streams.remove(&self.identity);
            }
        }
    }
}

/// Most entries read from the log at once.
pub(crate) const LOG_BATCH: u64 = 512;

/// Loads the live set, then follows the log until `shutdown` resolves: reads new entries when
/// nudged or every `poll_interval`, expires old ones from the live set, and prunes the log every
/// `prune_interval` while `leads` says this replica leads. Database errors are logged and
/// retried on the next tick.
pub async fn run_tailer<S: CertificateStore>(
    hub: Arc<RevocationHub>,
    store: S,
    clock: Arc<dyn Clock>,
    leads: impl Fn() -> bool,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last_prune = clock.now();
    loop {
        if let Err(e) = catch_up(&hub, &store).await {
            tracing::warn!(error = %e, "reading the revocation log failed; retrying");
        }
        let now = clock.now();
        hub.expire(now);
        if now - last_prune >= hub.config.prune_interval && leads() {
            last_prune = now;
            match store.prune_revocations(now - EXPIRY_SKEW).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "pruned expired revocations"),
                Err(e) => tracing::warn!(error = %e, "pruning the revocation log failed"),
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = hub.nudge.notified() => {}
            () = tokio::time::sleep(hub.config.poll_interval) => {}
        }
    }
}

/// Applies every entry after the last applied one. The first call loads the live set.
pub async fn catch_up<S: CertificateStore>(
    hub: &RevocationHub,
    store: &S,
) -> Result<(), StoreError> {
    loop {
        let batch = store.revocations_after(hub.applied(), LOG_BATCH).await?;
        let full = batch.len() as u64 == LOG_BATCH;
        for entry in batch {
            hub.apply(entry);
        }
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(n: u64) -> Serial {
        let mut bytes = [1; 17];
        bytes[1..9].copy_from_slice(&n.to_be_bytes());
        Serial::from_random(bytes)
    }

    /// A connection whose certificate is revoked between the handshake and its registration is
    /// cut: the revocation enters the live set while the registration waits for the
    /// connections' lock (so before it is listed, and before the revocation would look for it).
    #[test]
    fn a_connection_revoked_while_it_registers_is_cut() {
        let hub = RevocationHub::new(HubConfig::default());
        let listed = hub.connections.lock().unwrap();
        let registering = std::thread::spawn({
            let hub = hub.clone();
            move || hub.register_connection(serial(7), None)
        });
        // Its id is taken just before it waits for the lock.
        while hub.next_connection.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let not_after = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        hub.live.write().unwrap().insert(serial(7), not_after);
        drop(listed);
        let guard = registering.join().unwrap();
        assert!(
            guard.token().is_cancelled(),
            "a revoked certificate's connection stayed open"
        );
    }
}
