//! Cross-replica fan-out (issue 12, DESIGN §15): two replicas on one PostgreSQL, half the
//! subscribers on each. Every revocation is committed on the first; the figure is how much later
//! the second replica's subscribers hear it than the first's own (NOTIFY, LISTEN and one read
//! of the log), measured on the same events.

use std::time::{Duration, Instant};

use mintgate_sdk::v1;
use mintgate_tests::csr::csr;
use mintgate_tests::{Backend, Options, TestServer};
use serde::Serialize;

use crate::fanout::{connect_all, identities_of, watch};
use crate::support::Latency;

/// Pause between revocations, so each is measured on its own.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(50);

#[derive(Debug, Serialize)]
pub struct CrossReplica {
    pub subscribers: usize,
    pub rounds: usize,
    /// From the Revoke's answer to each subscriber of the committing replica.
    pub same_replica: Latency,
    /// The same, for the other replica's subscribers.
    pub other_replica: Latency,
    /// other p99 − same p99, in ms.
    pub p99_gap_ms: f64,
}

pub async fn run(n: usize, rounds: usize) -> anyhow::Result<CrossReplica> {
    let a = TestServer::spawn_with(Options::new(Backend::Postgres)).await;
    let b = a.replica(Options::new(Backend::Postgres)).await;
    let identities = identities_of(&a.pki.ca.cert_pem, &a.pki.ca.key_pem, n)?;
    let half = n / 2;
    let (url_a, url_b) = (a.url(), b.url());
    let mut on_a = connect_all(half, "subscribers on replica a", |i, reporter| {
        watch(url_a.clone(), identities[i].clone(), reporter)
    })
    .await?;
    let mut on_b = connect_all(n - half, "subscribers on replica b", |i, reporter| {
        watch(url_b.clone(), identities[half + i].clone(), reporter)
    })
    .await?;

    let node = a.node().await;
    let mut admin = a.admin_revocation().await;
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (csr_pem, _) = csr(
            &format!("spiffe://dev.mintgate.local/workload/x{round}"),
            &[],
        );
        let issued = node
            .enroll(v1::EnrollRequest {
                csr: csr_pem.into_bytes(),
                ..Default::default()
            })
            .await?;
        let revoked = admin
            .revoke(v1::RevokeRequest {
                request_id: format!("x{round}"),
                serial: issued.serial,
                reason: v1::RevocationReason::KeyCompromise.into(),
            })
            .await?
            .into_inner();
        let answered = Instant::now();
        let seq = revoked.revocation.map_or(0, |r| r.seq);
        let (heard_a, heard_b) = tokio::join!(on_a.heard(seq), on_b.heard(seq));
        same.extend(
            heard_a?
                .iter()
                .map(|t| t.saturating_duration_since(answered)),
        );
        other.extend(
            heard_b?
                .iter()
                .map(|t| t.saturating_duration_since(answered)),
        );
        tokio::time::sleep(BETWEEN_ROUNDS).await;
    }
    on_a.tasks.shutdown().await;
    on_b.tasks.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
    let (same, other) = (Latency::of(same), Latency::of(other));
    Ok(CrossReplica {
        subscribers: n,
        rounds,
        p99_gap_ms: other.p99_ms - same.p99_ms,
        same_replica: same,
        other_replica: other,
    })
}
