//! Benchmarks 3 and 4 against `mintgate serve --dev` as a child process (so its memory is its
//! own and each side has its own file descriptors): `n` subscribers, each a workload identity on
//! its own mTLS connection with a `WatchRevocations` stream.
//!
//! - Memory (4): the server's RSS with every subscriber connected and idle, minus its RSS
//!   before they connected, divided by `n`.
//! - Fan-out (3): per round, an operator revokes a certificate; each subscriber notes when the
//!   event arrived. Latency runs from the Revoke answer (the commit) to arrival. Then the same
//!   `n` connections and rounds against the two floors ([`crate::floor`]): bare tokio-rustls,
//!   and hyper's HTTP/2 server with nothing of tonic's or ours.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::ProgressBar;
use mintgate_ca::CertificateAuthority;
use mintgate_domain::ports::IssueSpec;
use mintgate_domain::{KeyType, Serial, SpiffeId};
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_sdk::{Client, TlsMaterial, v1};
use mintgate_tests::TRUST_DOMAIN;
use prost::Message as _;
use rcgen::PublicKeyData as _;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::child::{Mintgate, read};
use crate::floor::{self, Floor};
use crate::support::{Latency, progress, rss_kib};

/// Connections being set up at once (the server's accept backlog is larger).
const CONNECT_AT_ONCE: usize = 64;
/// How long everything is left alone before memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Pause between revocation rounds.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(500);
/// No subscriber moving for this long fails the benchmark.
const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
pub struct Fanout {
    pub subscribers: usize,
    pub rounds: usize,
    /// The gRPC message (5-byte prefix + protobuf) each subscriber receives; the floor writes
    /// as many bytes.
    pub event_bytes: usize,
    /// Revoke answer → event received, every subscriber of every round.
    pub ours: Latency,
    /// Revoke sent → event received (includes the commit).
    pub ours_from_request: Latency,
    /// Revoke sent → Revoke answered.
    pub revoke: Latency,
    /// Trigger → bytes received, bare tokio-rustls.
    pub floor: Latency,
    pub p99_ratio: f64,
    /// Trigger → event received by the SDK's subscriber, hyper's HTTP/2 server alone.
    pub http2_floor: Latency,
    /// The HTTP/2 floor's p99 ÷ the bare floor's: what HTTP/2 (h2 and hyper) costs by itself.
    pub http2_floor_p99_ratio: f64,
    /// Ours ÷ the HTTP/2 floor: what tonic and Mintgate add to it.
    pub p99_ratio_to_http2: f64,
    pub connect_seconds: f64,
    pub floor_connect_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub subscribers: usize,
    pub rss_kib_before: u64,
    pub rss_kib_idle: u64,
    pub kib_per_subscriber: f64,
    /// The same measure for the floor's bare rustls connections.
    pub floor_kib_per_connection: f64,
    /// And for the HTTP/2 floor's, each with its one call.
    pub http2_floor_kib_per_connection: f64,
}

/// Runs both benchmarks with `n` subscribers and `rounds` revocations.
pub async fn run(mintgate: &Path, n: usize, rounds: usize) -> anyhow::Result<(Fanout, Memory)> {
    let dir = tempfile::tempdir()?;
    let mut server = Mintgate::start(mintgate, dir.path(), &[]).await?;
    let identities = identities(&server.pki, n)?;
    let targets = server.enroll_targets(rounds).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_kib_before = rss_kib(server.pid)?;

    let url = server.url.clone();
    let mut subscribed = connect_all(n, "subscribers (3, 4)", |i, reporter| {
        watch(url.clone(), identities[i].clone(), reporter)
    })
    .await?;
    tokio::time::sleep(SETTLE).await;
    let rss_kib_idle = rss_kib(server.pid)?;

    let (mut ours, mut from_request, mut revoke, mut event) = (vec![], vec![], vec![], None);
    for serial in targets {
        let sent = Instant::now();
        let revoked = server
            .admin
            .revoke(v1::RevokeRequest {
                serial,
                reason: v1::RevocationReason::KeyCompromise.into(),
                ..Default::default()
            })
            .await?;
        let answered = Instant::now();
        revoke.push(answered - sent);
        for heard in subscribed.heard(revoked.seq).await? {
            ours.push(heard.saturating_duration_since(answered));
            from_request.push(heard - sent);
        }
        event = Some(revoked);
        tokio::time::sleep(BETWEEN_ROUNDS).await;
    }
    subscribed.tasks.shutdown().await;
    server.child.kill().await?;

    let message = v1::WatchRevocationsResponse {
        message: event.map(Message::Event),
    };
    let floor = |kind| floor::run(kind, dir.path(), &server.pki, &identities, &message, rounds);
    let tls = floor(Floor::Tls).await?;
    let http2 = floor(Floor::Http2).await?;
    let ours = Latency::of(ours);
    let (floor_latency, http2_latency) = (Latency::of(tls.latencies), Latency::of(http2.latencies));
    let fanout = Fanout {
        subscribers: n,
        rounds,
        event_bytes: grpc_frame(&message.encode_to_vec()).len(),
        ours,
        ours_from_request: Latency::of(from_request),
        revoke: Latency::of(revoke),
        floor: floor_latency,
        p99_ratio: ours.p99_ms / floor_latency.p99_ms,
        http2_floor: http2_latency,
        http2_floor_p99_ratio: http2_latency.p99_ms / floor_latency.p99_ms,
        p99_ratio_to_http2: ours.p99_ms / http2_latency.p99_ms,
        connect_seconds: subscribed.connect_seconds,
        floor_connect_seconds: tls.connect_seconds,
    };
    let memory = Memory {
        subscribers: n,
        rss_kib_before,
        rss_kib_idle,
        kib_per_subscriber: (rss_kib_idle as f64 - rss_kib_before as f64) / n as f64,
        floor_kib_per_connection: tls.kib_per_connection,
        http2_floor_kib_per_connection: http2.kib_per_connection,
    };
    Ok((fanout, memory))
}

/// What a subscriber tells the benchmark.
pub enum Note {
    Ready,
    Heard { seq: i64, at: Instant },
    Failed(String),
}

/// A subscriber's line to the benchmark: ready once (freeing its connection slot), then each
/// event it hears.
pub struct Reporter {
    notes: mpsc::UnboundedSender<Note>,
    bar: ProgressBar,
    slot: Option<OwnedSemaphorePermit>,
}

impl Reporter {
    pub fn ready(&mut self) {
        if self.slot.take().is_some() {
            self.bar.inc(1);
            let _ = self.notes.send(Note::Ready);
        }
    }

    pub fn heard(&self, seq: i64, at: Instant) {
        let _ = self.notes.send(Note::Heard { seq, at });
    }
}

/// Connected subscribers and what they report.
pub struct Subscribed {
    pub tasks: JoinSet<()>,
    notes: mpsc::UnboundedReceiver<Note>,
    n: usize,
    pub connect_seconds: f64,
}

impl Subscribed {
    /// When each subscriber heard `seq`.
    pub async fn heard(&mut self, seq: i64) -> anyhow::Result<Vec<Instant>> {
        let mut heard = Vec::with_capacity(self.n);
        while heard.len() < self.n {
            if let Note::Heard { seq: s, at } = self.next().await?
                && s == seq
            {
                heard.push(at);
            }
        }
        Ok(heard)
    }

    async fn next(&mut self) -> anyhow::Result<Note> {
        match tokio::time::timeout(STALL, self.notes.recv()).await {
            Err(_) => bail!("no subscriber made progress for {STALL:?}"),
            Ok(None) => bail!("every subscriber has stopped"),
            Ok(Some(Note::Failed(e))) => bail!("a subscriber failed: {e}"),
            Ok(Some(note)) => Ok(note),
        }
    }
}

/// Starts `n` subscribers (`start(i, reporter)`), at most [`CONNECT_AT_ONCE`] connecting at a
/// time, and waits until every one is ready.
pub async fn connect_all<F>(
    n: usize,
    what: &str,
    start: impl Fn(usize, Reporter) -> F,
) -> anyhow::Result<Subscribed>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, notes) = mpsc::unbounded_channel();
    let bar = progress(n, what)?;
    let slots = Arc::new(Semaphore::new(CONNECT_AT_ONCE));
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let slot = slots.clone().acquire_owned().await?;
        let reporter = Reporter {
            notes: tx.clone(),
            bar: bar.clone(),
            slot: Some(slot),
        };
        let (subscriber, failed) = (start(i, reporter), tx.clone());
        tasks.spawn(async move {
            if let Err(e) = subscriber.await {
                let _ = failed.send(Note::Failed(format!("{e:#}")));
            }
        });
    }
    let mut subscribed = Subscribed {
        tasks,
        notes,
        n,
        connect_seconds: 0.0,
    };
    let mut ready = 0;
    while ready < n {
        if let Note::Ready = subscribed.next().await? {
            ready += 1;
        }
    }
    subscribed.connect_seconds = began.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(subscribed)
}

/// One sidecar: its own connection, the feed from the start, ready at the first heartbeat.
pub async fn watch(url: String, tls: TlsMaterial, mut reporter: Reporter) -> anyhow::Result<()> {
    let client = Client::connect(&url, "localhost", &tls).await?;
    let mut feed = client.watch_revocations(0).await?;
    while let Some(response) = feed.message().await? {
        let at = Instant::now();
        match response.message {
            Some(Message::Heartbeat(_)) => reporter.ready(),
            Some(Message::Event(event)) => reporter.heard(event.seq, at),
            Some(Message::Snapshot(_)) | None => {}
        }
    }
    bail!("the feed ended")
}

/// A gRPC length-prefixed message: uncompressed flag, big-endian length, the bytes.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// `n` workload certificates from the server's own CA, one identity each (as sidecars have),
/// sharing one P-256 key to keep the set-up short.
fn identities(pki: &Path, n: usize) -> anyhow::Result<Vec<TlsMaterial>> {
    identities_of(&read(pki, "ca.pem")?, &read(pki, "ca.key")?, n)
}

/// [`identities`] from the CA's certificate and key.
pub fn identities_of(ca_pem: &str, ca_key_pem: &str, n: usize) -> anyhow::Result<Vec<TlsMaterial>> {
    let ca_pem = ca_pem.to_owned();
    let ca = CertificateAuthority::from_pem(&ca_pem, ca_key_pem, None)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (spki, key_pem) = (key.subject_public_key_info(), key.serialize_pem());
    let now = OffsetDateTime::now_utc();
    (0..n)
        .map(|i| {
            let id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/workload/subscriber-{i}"))?;
            let signed = ca.issue(&IssueSpec {
                spki_der: &spki,
                key_type: KeyType::EcdsaP256,
                spiffe_id: &id,
                dns_names: &[],
                serial: &Serial::from_random(rand::random()),
                not_before: now - Duration::from_secs(60),
                not_after: now + Duration::from_secs(3600),
                server_auth: false,
            })?;
            Ok(TlsMaterial {
                ca_pem: ca_pem.clone(),
                cert_pem: signed.chain_pem,
                key_pem: key_pem.clone(),
            })
        })
        .collect()
}
