//! Benchmark 2, issuance end to end: `clients` concurrent node clients, each on its own mTLS
//! connection, enroll workloads through a real in-process server ([`TestServer`]: the
//! `Application`, port 0, a fresh database). Every answer is sent after its rows committed:
//! SQLite in WAL with `synchronous = FULL` (the store's setting) or PostgreSQL with whatever
//! `synchronous_commit` the server runs (reported; `on` by default).
//!
//! Durable issuances per commit come from the store's own count of committed write
//! transactions ([`mintgate_store::SqlStore::write_commits`]).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use anyhow::Context as _;
use mintgate_domain::hold::{HoldStore, RiskQuery};
use mintgate_domain::policy::PolicySource;
use mintgate_domain::risk::RiskConfig;
use mintgate_tests::{Backend, NODE_ID, Options, TRUST_DOMAIN, TestServer};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::support::{Latency, enroll_all, progress};

#[derive(Debug, Serialize)]
pub struct Issuance {
    pub database: String,
    pub clients: usize,
    pub issuances: usize,
    pub per_second: f64,
    pub latency: Latency,
    /// Write transactions the store committed during the run.
    pub commits: u64,
    pub issuances_per_commit: f64,
    /// `per_second` ÷ the crypto ceiling (benchmark 1, same cores).
    pub ratio_to_crypto: f64,
    /// What the risk signals cost an Enroll: reading its facts from the database the run
    /// filled, one request at a time, in µs (their share of the median Enroll latency).
    pub risk_facts_us: f64,
    pub risk_facts_share: f64,
}

/// Facts read to time them.
const FACT_READS: u32 = 200;

/// Enrolls one certificate per CSR over `clients` connections.
pub async fn run(
    backend: Backend,
    csrs: Arc<[String]>,
    clients: usize,
    ceiling: f64,
) -> anyhow::Result<Issuance> {
    run_with(assessed_not_held(backend), csrs, clients, ceiling).await
}

/// [`run`] on a server started with `options` (a PKCS#11 issuing key, for one; start from
/// [`assessed_not_held`] to measure what [`run`] does).
pub async fn run_with(
    options: Options,
    csrs: Arc<[String]>,
    clients: usize,
    ceiling: f64,
) -> anyhow::Result<Issuance> {
    let backend = options.backend;
    let server = TestServer::spawn_with(options).await;
    let database = durability(&server).await?;
    let mut connections = Vec::with_capacity(clients);
    // One node each, as agents on as many hosts (and each within its own limit of issuances
    // in progress).
    for i in 0..clients {
        connections.push(server.node_named(&format!("bench-{i}")).await);
    }
    let bar = progress(csrs.len(), &format!("issuance {}", label(backend)))?;
    let next = Arc::new(AtomicUsize::new(0));
    let commits_before = server.store().write_commits();
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for client in connections {
        workers.spawn(enroll_all(client, csrs.clone(), next.clone(), bar.clone()));
    }
    let mut latencies = Vec::with_capacity(csrs.len());
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let seconds = start.elapsed().as_secs_f64();
    let commits = server.store().write_commits() - commits_before;
    bar.finish_and_clear();
    let risk_facts_us = risk_facts_cost(&server).await?;
    server.shutdown().await;
    let per_second = csrs.len() as f64 / seconds;
    let latency = Latency::of(latencies);
    Ok(Issuance {
        database,
        clients,
        issuances: csrs.len(),
        per_second,
        risk_facts_share: risk_facts_us / 1000.0 / latency.p50_ms,
        latency,
        commits,
        issuances_per_commit: csrs.len() as f64 / commits.max(1) as f64,
        ratio_to_crypto: per_second / ceiling,
        risk_facts_us,
    })
}

/// The server with its default risk thresholds, so a burst from one node costs what it costs in
/// production (its spike and breadth signals fire), and the dev policy without its hold rules, so
/// nothing waits for an approver (a mesh that has not configured holds).
pub fn assessed_not_held(backend: Backend) -> Options {
    let mut policy = PolicySource::dev();
    policy.files.retain(|f| f.name != "holds.cedar");
    Options {
        risk: RiskConfig::default(),
        policy: Some(policy),
        ..Options::new(backend)
    }
}

/// The mean time of an Enroll's one read before it is decided (the node's and the identity's
/// rates, the node's distinct identities, the identity's history and block, the replay check)
/// against the run's database.
async fn risk_facts_cost(server: &TestServer) -> anyhow::Result<f64> {
    let now = server.clock.now_odt();
    let start = Instant::now();
    for i in 0..FACT_READS {
        let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/workload/bench-{i}");
        let request_id = format!("bench-facts-{i}");
        let query = RiskQuery {
            caller: NODE_ID,
            node: true,
            spiffe_id: &spiffe_id,
            now,
            identities_cap: RiskConfig::default().many_identities_per_hour,
            request_id: Some(&request_id),
        };
        server.store().risk_facts(query).await?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(FACT_READS))
}

pub fn label(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// The database and what makes its commits durable, as the server runs it.
async fn durability(server: &TestServer) -> anyhow::Result<String> {
    if server.backend == Backend::Sqlite {
        return Ok("SQLite WAL, synchronous=FULL".to_owned());
    }
    let db = Database::connect(&server.database_url).await?;
    let show = Statement::from_string(DbBackend::Postgres, "SHOW synchronous_commit");
    let row = db
        .query_one_raw(show)
        .await?
        .context("SHOW answered no row")?;
    let setting: String = row.try_get_by_index(0)?;
    db.close().await?;
    Ok(format!("PostgreSQL, synchronous_commit={setting}"))
}
