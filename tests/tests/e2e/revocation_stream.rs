//! Reliability of the revocation feed (DESIGN §7): resuming across a restart, concurrent writers,
//! a writer that cannot commit yet, a failure in the middle of a revocation, a subscriber that
//! stops reading, the per-identity stream cap, and retention with snapshots and heartbeats.
//!
//! Every watcher is checked against what was committed: sequence numbers 1..=N with no gap and
//! no duplicate, each event equal to the Revoke answer for its serial.

mod delivery;
mod limits;

use std::time::Duration;

use mintgate_api::HubConfig;
use mintgate_sdk::v1;
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, Options, TRUST_DOMAIN, TestServer};
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tonic_types::StatusExt;

type Client = v1::revocation_client::RevocationClient<Channel>;
type Watch = Streaming<v1::WatchRevocationsResponse>;

/// The longest a test waits for one message or condition.
const WAIT: Duration = Duration::from_secs(15);

/// A workload certificate and key, issued through the node and checked with webpki/x509-parser.
struct Cert {
    serial: String,
    chain_pem: String,
    key_pem: String,
}

/// Enrolls `spiffe://<td>/workload/<prefix>-<i>` for i in 0..n, four at a time, in order of i.
async fn enroll(server: &TestServer, prefix: &str, n: usize, ttl: Option<i64>) -> Vec<Cert> {
    const TASKS: usize = 4;
    let node = server.node().await;
    let now = server.clock.now_odt().unix_timestamp();
    let tasks: Vec<_> = (0..TASKS.min(n))
        .map(|t| {
            let (node, ca, prefix) = (
                node.clone(),
                server.pki.ca.cert_pem.clone(),
                prefix.to_owned(),
            );
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (t..n).step_by(TASKS) {
                    let id = format!("spiffe://{TRUST_DOMAIN}/workload/{prefix}-{i}");
                    let (csr_pem, key) = csr(&id, &[]);
                    let request = v1::EnrollRequest {
                        request_id: format!("{prefix}-{i}"),
                        csr: csr_pem.into_bytes(),
                        ttl: ttl.map(mintgate_sdk::seconds),
                        join_token: String::new(),
                        service_account_token: String::new(),
                    };
                    let issued = node.enroll(request).await.unwrap();
                    check_issued(&issued.certificate_chain_pem, &ca, &id, now);
                    let cert = Cert {
                        serial: issued.serial,
                        chain_pem: issued.certificate_chain_pem,
                        key_pem: key.serialize_pem(),
                    };
                    out.push((i, cert));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, c)| c).collect()
}

async fn revoke(
    client: &Client,
    request_id: &str,
    serial: &str,
) -> Result<v1::RevocationEvent, Status> {
    let request = v1::RevokeRequest {
        request_id: request_id.into(),
        serial: serial.into(),
        reason: v1::RevocationReason::KeyCompromise.into(),
    };
    let answer = client.clone().revoke(request).await?.into_inner();
    Ok(answer.revocation.unwrap())
}

async fn watch(client: &Client, cursor: i64) -> Result<Watch, Status> {
    let request = v1::WatchRevocationsRequest { cursor };
    Ok(client
        .clone()
        .watch_revocations(request)
        .await?
        .into_inner())
}

async fn status(client: &Client, serials: &[&str]) -> (Vec<v1::CertificateStatus>, i64) {
    let request = v1::CheckStatusRequest {
        serials: serials.iter().map(|s| (*s).to_owned()).collect(),
    };
    let answer = client
        .clone()
        .check_status(request)
        .await
        .unwrap()
        .into_inner();
    let statuses = answer.statuses.iter().map(|s| s.status()).collect();
    (statuses, answer.head_seq)
}

async fn next(watch: &mut Watch) -> Message {
    let received = tokio::time::timeout(WAIT, watch.message()).await;
    let response = received.expect("a message in time").unwrap();
    response.expect("the stream is open").message.unwrap()
}

/// The next event, skipping heartbeats.
async fn next_event(watch: &mut Watch) -> v1::RevocationEvent {
    loop {
        match next(watch).await {
            Message::Event(e) => return e,
            Message::Heartbeat(_) => {}
            Message::Snapshot(s) => panic!("unexpected snapshot {s:?}"),
        }
    }
}

/// Events until a heartbeat at `head` or beyond; every heartbeat must say exactly what was sent.
async fn through(watch: &mut Watch, cursor: i64, head: i64) -> Vec<v1::RevocationEvent> {
    let mut events: Vec<v1::RevocationEvent> = Vec::new();
    loop {
        match next(watch).await {
            Message::Event(e) => events.push(e),
            Message::Heartbeat(h) => {
                assert_eq!(h.head_seq, events.last().map_or(cursor, |e| e.seq));
                if h.head_seq >= head {
                    return events;
                }
            }
            Message::Snapshot(s) => panic!("unexpected snapshot {s:?}"),
        }
    }
}

/// Reads for `period`, in which only heartbeats may arrive; returns them.
async fn only_heartbeats(watch: &mut Watch, period: Duration) -> Vec<v1::Heartbeat> {
    let deadline = tokio::time::Instant::now() + period;
    let mut beats = Vec::new();
    while let Ok(received) = tokio::time::timeout_at(deadline, watch.message()).await {
        match received
            .unwrap()
            .expect("the stream is open")
            .message
            .unwrap()
        {
            Message::Heartbeat(h) => beats.push(h),
            other => panic!("expected only heartbeats, got {other:?}"),
        }
    }
    beats
}

/// Nothing but heartbeats at `head` for a while: nothing is delivered twice, late or out of turn.
async fn quiet(watch: &mut Watch, head: i64) {
    let beats = only_heartbeats(watch, Duration::from_millis(300)).await;
    assert!(!beats.is_empty(), "the stream went silent");
    assert!(beats.iter().all(|h| h.head_seq == head), "{beats:?}");
}

fn seqs(events: &[v1::RevocationEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn hub(config: HubConfig, backend: Backend) -> Options {
    Options {
        revocation: config,
        ..Options::new(backend)
    }
}

fn heartbeat_every(ms: u64) -> HubConfig {
    HubConfig {
        heartbeat: Duration::from_millis(ms),
        ..HubConfig::default()
    }
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{label}: n={} p50={:?} p95={:?} max={:?}",
        samples.len(),
        at(0.5),
        at(0.95),
        at(1.0)
    );
}
