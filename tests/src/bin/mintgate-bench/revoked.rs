//! Benchmark P6, the scale of the revoked set: two `mintgate serve --dev` (SQLite) child
//! processes side by side. One has only the revocations it makes itself. The other was stopped
//! after its first revocation, given `entries` more revoked, unexpired entries in its
//! revocation log (rows like its own, written in one statement) and started again. Both are
//! measured call for call, alternately, so that a slow moment of the machine (a slow `fsync`,
//! another process) falls on both rather than on one phase:
//!
//! - Revoke p99 (an operator revoking one certificate, commit included) and CheckStatus p99 (one
//!   serial per call, revoked and not), the large registry's ÷ the small one's;
//! - the CRL: the first `/crl` after the start (signed from the whole set), the next one (the
//!   cached CRL), and the first after one more revocation; its size;
//! - the server's RSS with the entries in its live set, per entry.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mintgate_sdk::{Client, v1};
use mintgate_tests::TRUST_DOMAIN;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde::Serialize;

use crate::child::Mintgate;
use crate::support::{Latency, rss_kib};

/// CheckStatus calls per phase for each Revoke: 10,000 at the default 5,000 Revokes, whose
/// p99 is the 100th slowest (of 2,000, the 20th moved the ratio between 0.84 and 1.30 over six
/// runs of one build).
const CHECKS_PER_REVOKE: usize = 2;
/// How long the server is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct RevokedScale {
    pub entries: u64,
    pub seed_seconds: f64,
    pub start_seconds: f64,
    pub small: Phase,
    pub large: Phase,
    pub revoke_p99_ratio: f64,
    pub check_status_p99_ratio: f64,
    pub rss_kib_small: u64,
    pub rss_kib_large: u64,
    pub bytes_per_entry: f64,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub revoked: u64,
    pub revoke: Latency,
    pub check_status: Latency,
    /// The first `/crl` after the start, the next one, and the first after one more Revoke.
    pub crl_first_ms: f64,
    pub crl_cached_ms: f64,
    pub crl_after_revoke_ms: f64,
    pub crl_bytes: usize,
}

pub async fn run(bin: &Path, entries: u64, rounds: usize) -> anyhow::Result<RevokedScale> {
    let (small_dir, large_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let policy = crate::child::policy_without_holds(small_dir.path())?;
    let args = ["--policy-dir", policy.as_str()];

    // Targets for the phase, plus one to revoke between two CRLs; the large registry's server
    // revokes one more first, the entry its seeded ones copy.
    let server = Mintgate::start(bin, large_dir.path(), &args).await?;
    let mut large_targets = server.enroll_targets(rounds + 2).await?;
    let first = large_targets.pop().context("no targets")?;
    revoke(&server.admin, &first).await?;
    server.stop().await?;
    let url = format!(
        "sqlite://{}?mode=rw",
        large_dir.path().join("mintgate.db").display()
    );
    let began = Instant::now();
    seed(&url, entries).await?;
    let seed_seconds = began.elapsed().as_secs_f64();
    let began = Instant::now();
    let large = Mintgate::start(bin, large_dir.path(), &args).await?;
    let start_seconds = began.elapsed().as_secs_f64();

    let small = Mintgate::start(bin, small_dir.path(), &args).await?;
    let small_targets = small.enroll_targets(rounds + 1).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_kib_small = rss_kib(small.pid)?;
    let rss_kib_large = rss_kib(large.pid)?;
    let [small_phase, large_phase] =
        phases([(&small, &small_targets[..]), (&large, &large_targets[..])]).await?;
    small.stop().await?;
    large.stop().await?;
    let large_phase = Phase {
        revoked: large_phase.revoked + 1 + entries,
        ..large_phase
    };
    Ok(RevokedScale {
        entries,
        seed_seconds,
        start_seconds,
        revoke_p99_ratio: large_phase.revoke.p99_ms / small_phase.revoke.p99_ms,
        check_status_p99_ratio: large_phase.check_status.p99_ms / small_phase.check_status.p99_ms,
        bytes_per_entry: (rss_kib_large as f64 - rss_kib_small as f64) * 1024.0 / entries as f64,
        small: small_phase,
        large: large_phase,
        rss_kib_small,
        rss_kib_large,
    })
}

/// On both servers, alternately, step by step: the CRL twice, CheckStatus over its targets
/// (not revoked yet, then revoked), Revoke of each target but the last, and the CRL after
/// revoking the last. A phase's `revoked` counts what it revoked.
async fn phases(servers: [(&Mintgate, &[String]); 2]) -> anyhow::Result<[Phase; 2]> {
    // Every Revoke waits for an `fsync`: the writes made before the phase (the seeding's
    // million rows, an earlier benchmark's databases) go to the disk first, not during it.
    let synced = tokio::process::Command::new("sync").status().await?;
    anyhow::ensure!(synced.success(), "sync failed: {synced}");
    let rounds = servers.iter().map(|(_, t)| t.len()).min().unwrap_or(0);
    let rounds = rounds
        .checked_sub(1)
        .filter(|r| *r > 0)
        .context("no targets")?;
    let (mut first, mut cached, mut after) = ([(0.0, 0); 2], [0.0; 2], [0.0; 2]);
    for (i, (server, _)) in servers.iter().enumerate() {
        first[i] = crl(server).await?;
    }
    for (i, (server, _)) in servers.iter().enumerate() {
        cached[i] = crl(server).await?.0;
    }
    let mut checks: [Vec<Duration>; 2] = Default::default();
    check_each(&servers, rounds, &mut checks).await?;
    let mut revokes: [Vec<Duration>; 2] = Default::default();
    for round in 0..rounds {
        for (i, (server, targets)) in servers.iter().enumerate() {
            let sent = Instant::now();
            revoke(&server.admin, &targets[round]).await?;
            revokes[i].push(sent.elapsed());
        }
    }
    check_each(&servers, rounds, &mut checks).await?;
    for (i, (server, targets)) in servers.iter().enumerate() {
        revoke(&server.admin, &targets[rounds]).await?;
        after[i] = crl(server).await?.0;
    }
    Ok(std::array::from_fn(|i| Phase {
        revoked: rounds as u64 + 1,
        revoke: Latency::of(std::mem::take(&mut revokes[i])),
        check_status: Latency::of(std::mem::take(&mut checks[i])),
        crl_first_ms: first[i].0,
        crl_cached_ms: cached[i],
        crl_after_revoke_ms: after[i],
        crl_bytes: first[i].1,
    }))
}

/// Half of each server's CheckStatus calls, alternately, over its first `rounds` targets.
async fn check_each(
    servers: &[(&Mintgate, &[String]); 2],
    rounds: usize,
    checks: &mut [Vec<Duration>; 2],
) -> anyhow::Result<()> {
    for call in 0..rounds * CHECKS_PER_REVOKE / 2 {
        for (i, (server, targets)) in servers.iter().enumerate() {
            checks[i].push(check(&server.node, &targets[call % rounds]).await?);
        }
    }
    Ok(())
}

async fn check(client: &Client, serial: &str) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    client.check_status(vec![serial.to_owned()]).await?;
    Ok(sent.elapsed())
}

async fn revoke(admin: &Client, serial: &str) -> anyhow::Result<()> {
    admin
        .revoke(v1::RevokeRequest {
            serial: serial.to_owned(),
            reason: v1::RevocationReason::KeyCompromise.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// `GET /crl`: (milliseconds, bytes).
async fn crl(server: &Mintgate) -> anyhow::Result<(f64, usize)> {
    let addr = server.http.parse()?;
    let sent = Instant::now();
    let (status, body) = mintgate_tests::http_get(addr, "/crl").await;
    anyhow::ensure!(status == 200, "/crl answered {status}");
    Ok((sent.elapsed().as_secs_f64() * 1e3, body.len()))
}

/// `entries` revoked, unexpired entries after the log's head, each a copy of the newest entry
/// the server wrote with its own serial and identity, in one statement.
async fn seed(url: &str, entries: u64) -> anyhow::Result<()> {
    let db = Database::connect(url).await?;
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {entries}) \
         INSERT INTO revocations (seq, serial, spiffe_id, reason, revoked_at, not_after, \
         issuer_key_id, revoked_by, request_pk, issuer) \
         SELECT r.seq + n.i, printf('5eed%028x', n.i), \
         'spiffe://{TRUST_DOMAIN}/workload/seeded-' || n.i, r.reason, r.revoked_at, \
         r.not_after, r.issuer_key_id, r.revoked_by, NULL, 0 \
         FROM n, (SELECT * FROM revocations ORDER BY seq DESC LIMIT 1) AS r"
    );
    let inserted = db
        .execute_raw(Statement::from_string(DbBackend::Sqlite, sql))
        .await?
        .rows_affected();
    anyhow::ensure!(inserted == entries, "seeded {inserted} of {entries}");
    db.close().await?;
    Ok(())
}
