//! Benchmark 1, the ceiling: what issuance costs in CPU alone. Each thread verifies CSRs
//! (`validate_csr`: parse, key and signature checks, SANs) and signs certificates with the
//! server's own signer (`CertificateAuthority::issue`, the DESIGN §4 profile). No network, no
//! database.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use mintgate_ca::{CertificateAuthority, KeyBackend};
use mintgate_domain::csr::validate_csr;
use mintgate_domain::ports::IssueSpec;
use mintgate_domain::{Serial, TrustDomain};
use mintgate_tests::TRUST_DOMAIN;
use serde::Serialize;
use time::OffsetDateTime;

use crate::support::progress;

#[derive(Debug, Serialize)]
pub struct Crypto {
    pub threads: usize,
    pub operations: usize,
    /// Each thread's rate, per second.
    pub per_thread: Vec<f64>,
    /// The mean of `per_thread`: what one core does.
    pub per_core: f64,
    /// Every operation over the wall time of the run: the ceiling for this machine.
    pub total: f64,
}

/// Runs `operations` CSR checks + signatures spread over `threads` threads.
pub fn run(csrs: &[String], threads: usize, operations: usize) -> anyhow::Result<Crypto> {
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let now = OffsetDateTime::now_utc();
    let pki = mintgate_ca::generate_pki(&td, now)?;
    let ca = CertificateAuthority::from_pem(&pki.ca.cert_pem, &pki.ca.key_pem, None)?;
    run_with(&ca, csrs, threads, operations)
}

/// [`run`] with the CA `ca`, whatever holds its key.
pub fn run_with<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
    csrs: &[String],
    threads: usize,
    operations: usize,
) -> anyhow::Result<Crypto> {
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let now = OffsetDateTime::now_utc();
    let share = operations.div_ceil(threads).max(1);
    let bar = progress(share * threads, "crypto (1)")?;
    let start = Instant::now();
    let per_thread = std::thread::scope(|scope| {
        let (td, bar) = (&td, &bar);
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> anyhow::Result<f64> {
                    let begin = Instant::now();
                    for i in 0..share {
                        sign(ca, td, &csrs[(t * share + i) % csrs.len()], now)?;
                        bar.inc(1);
                    }
                    Ok(share as f64 / begin.elapsed().as_secs_f64())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow!("a crypto thread panicked"))?)
            .collect::<anyhow::Result<Vec<f64>>>()
    })?;
    let wall = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(Crypto {
        threads,
        operations: share * threads,
        per_core: per_thread.iter().sum::<f64>() / threads as f64,
        total: (share * threads) as f64 / wall,
        per_thread,
    })
}

/// What the server does per issuance in CPU: validate the CSR, draw a serial, sign.
fn sign<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
    td: &TrustDomain,
    csr_pem: &str,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    let csr = validate_csr(csr_pem.as_bytes(), td)?;
    let serial = Serial::from_random(rand::random());
    ca.issue(&IssueSpec {
        spki_der: &csr.spki_der,
        key_type: csr.key_type,
        spiffe_id: &csr.spiffe_id,
        dns_names: &csr.dns_names,
        serial: &serial,
        not_before: now - Duration::from_secs(30),
        not_after: now + Duration::from_secs(3600),
        server_auth: false,
    })?;
    Ok(())
}
