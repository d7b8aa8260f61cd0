//! Benchmark 6, server CPU per issuance: `mintgate serve --dev` as a child process on SQLite or
//! PostgreSQL, driven by `clients` nodes (each its own identity and mTLS connection, one Enroll
//! in flight), and the CPU time the kernel charged to that process over the run (`utime` +
//! `stime` in `/proc/<pid>/stat`; the clients are another process) ÷ issuances, against the
//! crypto benchmark's CPU per CSR check + signature on one thread.
//!
//! The breakdown is by thread, from `/proc/<pid>/task/*/stat`: tokio's workers (TLS, HTTP/2,
//! gRPC, the domain, the CSR check and the signature, the SQLite read before deciding, and
//! sqlx's PostgreSQL connections), sqlx's SQLite threads (the SQLite engine for the writes and
//! the other reads, and its file I/O, one thread per pooled connection), and the rest; each
//! split into user and kernel time. Then as many empty calls (`grpc.health.v1.Health/Check`) on
//! the same connections give the floor: what an mTLS gRPC call costs the server with no work in
//! it. On PostgreSQL the floor has one round trip to the database too, measured in this
//! process: an issuance reads its request id and risk facts from the database every replica
//! shares before it decides.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use mintgate_sdk::Client;
use mintgate_tests::Backend;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::child::Mintgate;
use crate::support::{Latency, enroll_all, progress};

/// `/proc` reports CPU time in clock ticks of `USER_HZ`, 100 on every Linux architecture Rust
/// builds for with a stable ABI.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Serialize)]
pub struct ServerCpu {
    pub database: &'static str,
    pub issuances: usize,
    pub per_second: f64,
    pub latency: Latency,
    /// CPU seconds of the server process over the run, user and kernel.
    pub user_seconds: f64,
    pub system_seconds: f64,
    pub us_per_issuance: f64,
    /// One CSR check + signature on one thread (benchmark 1's per-core rate).
    pub crypto_us_per_issuance: f64,
    /// `us_per_issuance` ÷ `crypto_us_per_issuance`.
    pub ratio: f64,
    /// By kind of thread: (user, kernel) µs per issuance.
    pub threads: BTreeMap<String, (f64, f64)>,
    /// KiB per issuance the server process sent to be written to disk (`write_bytes` of
    /// `/proc/<pid>/io`): on SQLite its WAL and checkpoints; PostgreSQL writes in its own
    /// processes.
    pub disk_kib_per_issuance: f64,
    /// The same number of empty calls (`grpc.health.v1.Health/Check`) on the same connections,
    /// as many in flight: server CPU per call, the cost of an mTLS gRPC call with no work in it.
    pub empty_call_us: f64,
    /// One issuance's policy decision alone, on one thread (`decide.rs`).
    pub decision_us: f64,
    /// On PostgreSQL, CPU µs of one round trip (`SELECT 1` on a kept connection, one in
    /// flight) in this process, which talks to it through the same driver.
    pub round_trip_us: Option<f64>,
}

impl ServerCpu {
    /// What no issuance can cost less than with this stack: the crypto, an mTLS gRPC call, the
    /// policy decision and (on PostgreSQL) the read before deciding's round trip, each measured
    /// alone, in µs.
    pub fn floor_us(&self) -> f64 {
        self.crypto_us_per_issuance
            + self.empty_call_us
            + self.decision_us
            + self.round_trip_us.unwrap_or(0.0)
    }
}

/// Runs `csrs` through a child server on `backend` (`database_url` for PostgreSQL).
pub async fn run(
    bin: &Path,
    backend: Backend,
    database_url: Option<&str>,
    csrs: Arc<[String]>,
    clients: usize,
    (crypto_per_core, decision_us): (f64, f64),
) -> anyhow::Result<ServerCpu> {
    let dir = tempfile::tempdir()?;
    let policy = crate::child::policy_without_holds(dir.path())?;
    let mut args = vec!["--policy-dir", policy.as_str()];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let server = Mintgate::start(bin, dir.path(), &args).await?;
    let nodes = server.nodes(clients, "cpu").await?;
    let what = format!("server CPU {}", crate::issuance::label(backend));
    let bar = progress(csrs.len(), &what)?;
    let before = ThreadTimes::read(server.pid)?;
    let written_before = disk_write_bytes(server.pid)?;
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for node in &nodes {
        let (node, csrs, next, bar) = (node.clone(), csrs.clone(), next.clone(), bar.clone());
        workers.spawn(enroll_all(node, csrs, next, bar));
    }
    let mut latencies = Vec::with_capacity(csrs.len());
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = ThreadTimes::read(server.pid)?;
    let written = disk_write_bytes(server.pid)? - written_before;
    bar.finish_and_clear();
    let empty_call_us = empty_calls(&server, &nodes, csrs.len()).await?;
    drop(server);
    let round_trip_us = match database_url {
        Some(url) => Some(round_trips(url, csrs.len()).await?),
        None => None,
    };

    let n = csrs.len() as f64;
    let per_issuance = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / n;
    let mut threads: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let (mut user, mut system) = (0, 0);
    for (tid, (kind, u, s)) in &after.0 {
        let (u0, s0) = before.0.get(tid).map_or((0, 0), |(_, u, s)| (*u, *s));
        let (du, ds) = (u - u0, s - s0);
        (user, system) = (user + du, system + ds);
        let entry = threads.entry(kind.clone()).or_default();
        entry.0 += per_issuance(du);
        entry.1 += per_issuance(ds);
    }
    threads.retain(|_, (u, s)| *u + *s > 0.0);
    let us_per_issuance = per_issuance(user + system);
    let crypto_us_per_issuance = 1e6 / crypto_per_core;
    Ok(ServerCpu {
        database: crate::issuance::label(backend),
        issuances: csrs.len(),
        per_second: n / seconds,
        latency: Latency::of(latencies),
        user_seconds: user as f64 / TICKS_PER_SECOND,
        system_seconds: system as f64 / TICKS_PER_SECOND,
        us_per_issuance,
        crypto_us_per_issuance,
        ratio: us_per_issuance / crypto_us_per_issuance,
        threads,
        disk_kib_per_issuance: written as f64 / 1024.0 / n,
        empty_call_us,
        decision_us,
        round_trip_us,
    })
}

/// Server CPU µs per empty call: `calls` health checks spread over `nodes`, one in flight each.
async fn empty_calls(server: &Mintgate, nodes: &[Client], calls: usize) -> anyhow::Result<f64> {
    let mut cpu = CpuMeter::start(server.pid)?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for node in nodes {
        let mut health = HealthClient::new(node.channel());
        let next = next.clone();
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                health.check(HealthCheckRequest::default()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let (server_seconds, _) = cpu.lap()?;
    Ok(server_seconds * 1e6 / calls as f64)
}

/// CPU µs of this process per round trip to PostgreSQL (`url`): `calls` of `SELECT 1`, one
/// after the other on one connection.
async fn round_trips(url: &str, calls: usize) -> anyhow::Result<f64> {
    use sea_orm::sqlx::Connection as _;
    use sea_orm::sqlx::postgres::PgConnection;
    let mut conn = PgConnection::connect(url).await?;
    let before = cpu_ticks(std::process::id())?;
    for _ in 0..calls {
        sea_orm::sqlx::query("SELECT 1").execute(&mut conn).await?;
    }
    let ticks = cpu_ticks(std::process::id())? - before;
    conn.close().await?;
    Ok(ticks as f64 / TICKS_PER_SECOND * 1e6 / calls.max(1) as f64)
}

/// Bytes the process `pid` caused to be written to disk (`write_bytes` in `/proc/<pid>/io`).
fn disk_write_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let line = io.lines().find_map(|l| l.strip_prefix("write_bytes:"));
    Ok(line
        .context("no write_bytes in /proc/<pid>/io")?
        .trim()
        .parse()?)
}

/// `utime` + `stime` of the whole process.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let (_, user, system) = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
    Ok(user + system)
}

/// CPU seconds the server (`pid`) and this process (the clients) used since the last call.
pub struct CpuMeter {
    pid: u32,
    last: (u64, u64),
}

impl CpuMeter {
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pid,
            last: (cpu_ticks(pid)?, cpu_ticks(std::process::id())?),
        })
    }

    /// (server, clients) CPU seconds since `start` or the last `lap`.
    pub fn lap(&mut self) -> anyhow::Result<(f64, f64)> {
        let now = (cpu_ticks(self.pid)?, cpu_ticks(std::process::id())?);
        let (server, clients) = (now.0 - self.last.0, now.1 - self.last.1);
        self.last = now;
        Ok((
            server as f64 / TICKS_PER_SECOND,
            clients as f64 / TICKS_PER_SECOND,
        ))
    }
}

/// Each thread's kind (its name without a trailing number), user and kernel ticks, by thread id.
struct ThreadTimes(BTreeMap<u32, (String, u64, u64)>);

impl ThreadTimes {
    fn read(pid: u32) -> anyhow::Result<Self> {
        let mut times = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?;
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended since the directory was read
            };
            let tid = task.file_name().to_string_lossy().parse()?;
            times.insert(tid, parse_stat(&stat)?);
        }
        Ok(Self(times))
    }
}

/// `comm`, `utime` and `stime` of a `/proc/…/stat` line; `comm` is in parentheses and may hold
/// spaces, so the fields are counted from its closing one.
fn parse_stat(stat: &str) -> anyhow::Result<(String, u64, u64)> {
    let open = stat.find('(').context("no comm")?;
    let close = stat.rfind(')').context("no comm")?;
    let comm = &stat[open + 1..close];
    let kind = comm
        .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
        .trim_end();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // After comm: state (3), ... utime (14), stime (15), numbered from 1 in proc(5).
    let utime = fields.get(11).context("no utime")?.parse()?;
    let stime = fields.get(12).context("no stime")?.parse()?;
    Ok((kind.to_owned(), utime, stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_thread_kind_and_times() {
        let line = "4242 (tokio-rt worker 3) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 9 0 1";
        let (kind, u, s) = parse_stat(line).unwrap();
        assert_eq!((kind.as_str(), u, s), ("tokio-rt worker", 250, 31));
    }
}
