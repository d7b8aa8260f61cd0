//! Benchmark P6, the scale of the revoked set: `mintgate serve --dev` (SQLite) as a child
//! process, measured with the `rounds` revocations it made itself, then stopped, given
//! `entries` more revoked, unexpired entries in its revocation log (rows like its own, written
//! in one statement), started again and measured the same way:
//!
//! - Revoke p99 (an operator revoking one certificate, commit included) and CheckStatus p99 (one
//!   serial per call, revoked and not), each ÷ its figure without the entries;
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

/// CheckStatus calls per phase.
const CHECKS: usize = 2000;
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
    let dir = tempfile::tempdir()?;
    let policy = crate::child::policy_without_holds(dir.path())?;
    let args = ["--policy-dir", policy.as_str()];
    let server = Mintgate::start(bin, dir.path(), &args).await?;
    // Targets for both phases, plus one each to revoke between two CRLs.
    let targets = server.enroll_targets(2 * rounds + 2).await?;
    let (first, second) = targets.split_at(rounds + 1);
    tokio::time::sleep(SETTLE).await;
    let rss_kib_small = rss_kib(server.pid)?;
    let small = phase(&server, first, rounds as u64).await?;
    server.stop().await?;

    let url = format!(
        "sqlite://{}?mode=rw",
        dir.path().join("mintgate.db").display()
    );
    let began = Instant::now();
    seed(&url, entries).await?;
    let seed_seconds = began.elapsed().as_secs_f64();

    let began = Instant::now();
    let server = Mintgate::start(bin, dir.path(), &args).await?;
    let start_seconds = began.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_kib_large = rss_kib(server.pid)?;
    let large = phase(&server, second, entries + small.revoked).await?;
    server.stop().await?;
    Ok(RevokedScale {
        entries,
        seed_seconds,
        start_seconds,
        revoke_p99_ratio: large.revoke.p99_ms / small.revoke.p99_ms,
        check_status_p99_ratio: large.check_status.p99_ms / small.check_status.p99_ms,
        bytes_per_entry: (rss_kib_large as f64 - rss_kib_small as f64) * 1024.0 / entries as f64,
        small,
        large,
        rss_kib_small,
        rss_kib_large,
    })
}

/// CheckStatus over `targets` (not revoked yet, then revoked), the CRL, Revoke of each target
/// but the last, and the CRL after revoking the last.
async fn phase(server: &Mintgate, targets: &[String], revoked: u64) -> anyhow::Result<Phase> {
    let (last, targets) = targets.split_last().context("no targets")?;
    // Every Revoke waits for an `fsync`: the writes made before the phase (the seeding's
    // million rows, an earlier benchmark's databases) go to the disk first, not during it.
    let synced = tokio::process::Command::new("sync").status().await?;
    anyhow::ensure!(synced.success(), "sync failed: {synced}");
    let (crl_first_ms, crl_bytes) = crl(server).await?;
    let (crl_cached_ms, _) = crl(server).await?;
    let mut checks = Vec::with_capacity(CHECKS);
    for i in 0..CHECKS / 2 {
        checks.push(check(&server.node, &targets[i % targets.len()]).await?);
    }
    let mut revokes = Vec::with_capacity(targets.len());
    for serial in targets {
        let sent = Instant::now();
        revoke(&server.admin, serial).await?;
        revokes.push(sent.elapsed());
    }
    for i in 0..CHECKS / 2 {
        checks.push(check(&server.node, &targets[i % targets.len()]).await?);
    }
    revoke(&server.admin, last).await?;
    let (crl_after_revoke_ms, _) = crl(server).await?;
    Ok(Phase {
        revoked: revoked + targets.len() as u64 + 1,
        revoke: Latency::of(revokes),
        check_status: Latency::of(checks),
        crl_first_ms,
        crl_cached_ms,
        crl_after_revoke_ms,
        crl_bytes,
    })
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
