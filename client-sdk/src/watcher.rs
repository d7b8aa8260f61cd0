//! [`RevocationWatcher`]: keeps a local [`RevocationSet`] in step with Mintgate's revocation feed,
//! persists it with its cursor, resumes after disconnects with jittered backoff, and reports how
//! stale it is.
//!
//! The feed revokes single certificates (by serial) and whole CAs: an event with `issuer` set
//! (Revocation/RevokeIssuer) revokes every certificate whose authority key identifier is its
//! `issuer_key_id`. [`RevocationSet::is_revoked_certificate`] checks both for a certificate;
//! [`RevocationSet::is_revoked`] knows serials only.

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

use crate::cert_ids::CertificateIds;
use crate::{Backoff, Client, Error, ErrorKind};

/// The revoked, unexpired serials and CAs this process knows of, and how fresh that knowledge is.
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
    /// Revoked CAs: normalised key id (lowercase hex, see [`normalize_key_id`]) → the CA's
    /// notAfter (nothing it signed outlives it). Absent from files written before issuer
    /// revocation existed.
    #[serde(default)]
    revoked_issuers: HashMap<String, i64>,
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

/// A key identifier as the set keys it: lowercase hex without separators (`AB:CD` and `abcd`
/// are the same key id).
pub fn normalize_key_id(hex: &str) -> String {
    hex.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect()
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

    /// Whether the serial (hex, any case, with or without a leading zero byte) is revoked by
    /// its own entry. A certificate revoked with its whole CA is not found here (a serial alone
    /// does not say who issued it): use [`RevocationSet::is_revoked_certificate`].
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.read()
            .revoked
            .contains_key(&normalize_serial(serial_hex))
    }

    /// Whether the CA with this key id (hex SKI, any case, colons allowed) is revoked: every
    /// certificate it signed is.
    pub fn is_issuer_revoked(&self, key_id_hex: &str) -> bool {
        let key_id = normalize_key_id(key_id_hex);
        !key_id.is_empty() && self.read().revoked_issuers.contains_key(&key_id)
    }

    /// Whether a certificate (DER) is revoked: its serial is, or the CA named by its authority
    /// key identifier is, or it is itself a revoked CA (its subject key identifier). A
    /// certificate that does not parse counts as revoked (no caller should trust it).
    pub fn is_revoked_certificate(&self, der: &[u8]) -> bool {
        self.certificate_status(der).unwrap_or(true)
    }

    /// [`RevocationSet::is_revoked_certificate`], `None` when the certificate does not parse.
    pub(crate) fn certificate_status(&self, der: &[u8]) -> Option<bool> {
        let ids = CertificateIds::parse(der)?;
        let state = self.read();
        Some(
            state.revoked.contains_key(&ids.serial)
                || [ids.authority_key_id, ids.subject_key_id]
                    .iter()
                    .flatten()
                    .any(|k| state.revoked_issuers.contains_key(k)),
        )
    }

    /// The key ids (normalised hex) of the revoked, unexpired CAs.
    pub fn revoked_issuers(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.read().revoked_issuers.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The last sequence number applied.
    pub fn cursor(&self) -> i64 {
        self.read().cursor
    }

    /// How many serials are revoked and unexpired (revoked CAs not counted: see
    /// [`RevocationSet::revoked_issuers`]).
    pub fn len(&self) -> usize {
        self.read().revoked.len()
    }

    /// Whether nothing is revoked: no serial and no CA.
    pub fn is_empty(&self) -> bool {
        let state = self.read();
        state.revoked.is_empty() && state.revoked_issuers.is_empty()
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
        self.apply_at(message, unix_now())
    }

    /// [`RevocationSet::apply`] with the current Unix time given: entries whose notAfter is
    /// not after `now` leave the set.
    pub(crate) fn apply_at(&self, message: Message, now: i64) -> bool {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.last_contact = Some(Instant::now());
        let changed = match message {
            Message::Event(e) => {
                insert(&mut state, &e);
                state.cursor = state.cursor.max(e.seq);
                true
            }
            Message::Snapshot(s) => {
                state.revoked.clear();
                state.revoked_issuers.clear();
                for e in &s.entries {
                    insert(&mut state, e);
                }
                state.cursor = s.as_of_seq;
                true
            }
            Message::Heartbeat(_) => false,
        };
        state.revoked.retain(|_, not_after| *not_after > now);
        state
            .revoked_issuers
            .retain(|_, not_after| *not_after > now);
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

/// An event revokes one serial, or (with `issuer` set) every certificate of one CA.
fn insert(state: &mut SetState, e: &v1::RevocationEvent) {
    let not_after = e.not_after.as_ref().map_or(i64::MAX, |t| t.seconds);
    if e.issuer {
        let key_id = normalize_key_id(&e.issuer_key_id);
        if key_id.is_empty() {
            tracing::warn!(seq = e.seq, serial = %e.serial, "issuer revocation without a key id; ignored");
            return;
        }
        state.revoked_issuers.insert(key_id, not_after);
    } else {
        state.revoked.insert(normalize_serial(&e.serial), not_after);
    }
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

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;

    use super::*;
    use crate::test_pki::{CA_KEY_ID, TestCa};
    use crate::{RevocationCheck, WhenStale};

    fn event(seq: i64, serial: &str, not_after: i64) -> v1::RevocationEvent {
        v1::RevocationEvent {
            seq,
            serial: serial.to_owned(),
            not_after: Some(prost_types::Timestamp {
                seconds: not_after,
                nanos: 0,
            }),
            ..v1::RevocationEvent::default()
        }
    }

    /// RevokeIssuer's log entry: the CA's own serial and notAfter, its key id.
    fn issuer_event(seq: i64, key_id: &str, not_after: i64) -> v1::RevocationEvent {
        v1::RevocationEvent {
            issuer: true,
            issuer_key_id: key_id.to_owned(),
            ..event(seq, "7f01", not_after)
        }
    }

    fn heartbeat() -> Message {
        Message::Heartbeat(v1::Heartbeat::default())
    }

    #[test]
    fn an_issuer_event_revokes_every_serial_of_that_issuer_and_no_other() {
        let ca = TestCa::new(&CA_KEY_ID);
        let other = TestCa::new(&[0xcd; 20]);
        let (a, b) = (ca.leaf(&[0x01, 0x02]), ca.leaf(&[0x55]));
        let elsewhere = other.leaf(&[0x01, 0x03]);
        let set = RevocationSet::empty();
        let now = 1_000;
        set.apply_at(Message::Event(event(1, "0102", 5_000)), now);
        assert!(set.is_revoked_certificate(&a));
        assert!(!set.is_revoked_certificate(&b));

        // The key id as the server writes it (lowercase hex); any spelling finds it.
        let key_id = hex::encode(CA_KEY_ID);
        assert!(set.apply_at(Message::Event(issuer_event(2, &key_id, 9_000)), now));
        for cert in [&a, &b] {
            assert!(set.is_revoked_certificate(cert));
        }
        assert!(set.is_revoked_certificate(&ca.der()), "the CA itself");
        assert!(!set.is_revoked_certificate(&elsewhere));
        assert!(!set.is_revoked_certificate(&other.der()));
        assert!(set.is_issuer_revoked(&key_id.to_uppercase()));
        assert!(set.is_issuer_revoked(&"AB:".repeat(20)));
        assert!(!set.is_issuer_revoked(&hex::encode([0xcd; 20])));
        assert!(!set.is_issuer_revoked(""));
        assert_eq!(set.revoked_issuers(), [key_id]);
        // The serial lookup is unchanged: only serials revoked one by one, and the CA's own
        // serial is not taken for a leaf's.
        assert!(set.is_revoked("0102") && !set.is_revoked("55") && !set.is_revoked("7f01"));
        assert_eq!((set.len(), set.cursor()), (1, 2));
        // Garbage is never taken for a good certificate.
        assert!(set.is_revoked_certificate(b"not a certificate"));
    }

    #[test]
    fn a_revoked_issuer_leaves_the_set_after_its_not_after() {
        let ca = TestCa::new(&CA_KEY_ID);
        let leaf = ca.leaf(&[0x09]);
        let set = RevocationSet::empty();
        set.apply_at(
            Message::Event(issuer_event(1, &hex::encode(CA_KEY_ID), 2_000)),
            1_000,
        );
        set.apply_at(heartbeat(), 1_999);
        assert!(set.is_revoked_certificate(&leaf) && !set.is_empty());
        set.apply_at(heartbeat(), 2_000);
        assert!(!set.is_revoked_certificate(&leaf));
        assert!(set.revoked_issuers().is_empty() && set.is_empty());
        // An issuer entry without a key id revokes nothing (it cannot be matched).
        set.apply_at(Message::Event(issuer_event(2, "", 9_000)), 1_000);
        assert!(set.is_empty() && set.cursor() == 2);
    }

    #[test]
    fn a_snapshot_replaces_serials_and_issuers_alike() {
        let (ca, other) = (TestCa::new(&CA_KEY_ID), TestCa::new(&[0xcd; 20]));
        let set = RevocationSet::empty();
        set.apply_at(
            Message::Event(issuer_event(1, &hex::encode(CA_KEY_ID), 9_000)),
            1_000,
        );
        set.apply_at(Message::Event(event(2, "42", 9_000)), 1_000);
        set.apply_at(
            Message::Snapshot(v1::Snapshot {
                entries: vec![
                    issuer_event(7, &hex::encode([0xcd; 20]), 9_000),
                    issuer_event(8, "ef", 500), // already expired: not kept
                    event(9, "43", 9_000),
                ],
                as_of_seq: 10,
            }),
            1_000,
        );
        assert!(!set.is_revoked_certificate(&ca.leaf(&[0x01])));
        assert!(set.is_revoked_certificate(&other.leaf(&[0x01])));
        assert!(!set.is_revoked("42") && set.is_revoked("43"));
        assert_eq!(set.revoked_issuers(), [hex::encode([0xcd; 20])]);
        assert_eq!(set.cursor(), 10);
    }

    #[test]
    fn revoked_issuers_survive_a_restart_and_old_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        let set = RevocationSet::empty();
        set.apply_at(Message::Event(issuer_event(3, "AB", i64::MAX)), 1_000);
        save(&path, &set.snapshot()).unwrap();
        let restored = RevocationSet::new(load(&path).unwrap());
        assert!(restored.is_issuer_revoked("ab") && restored.cursor() == 3);

        // A file written before issuer revocation existed.
        std::fs::write(
            &path,
            r#"{"cursor":5,"revoked":{"0a":9223372036854775807}}"#,
        )
        .unwrap();
        let old = RevocationSet::new(load(&path).unwrap());
        assert!(old.is_revoked("0a") && old.revoked_issuers().is_empty());
    }

    #[test]
    fn the_verifiers_refuse_a_peer_whose_issuer_is_revoked() {
        let ca = TestCa::new(&CA_KEY_ID);
        let peer = CertificateDer::from(ca.leaf(&[0x0b, 0x0c]));
        let set = RevocationSet::empty();
        set.apply_at(heartbeat(), unix_now());
        let check = RevocationCheck {
            set: set.clone(),
            max_staleness: Duration::from_secs(60),
            when_stale: WhenStale::FailClosed,
        };
        assert!(check.check(&peer).is_ok());
        set.apply_at(
            Message::Event(issuer_event(1, &hex::encode(CA_KEY_ID), i64::MAX)),
            unix_now(),
        );
        assert_eq!(
            check.check(&peer),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        );
        assert_eq!(
            check.check(&CertificateDer::from(b"junk".to_vec())),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding
            ))
        );
    }
}
