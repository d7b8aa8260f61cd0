//! Benchmark P7, a renewal storm: `mintgate serve --dev` as a child process with its default
//! limits and a fleet of `nodes` nodes connected, first at steady load (`clients` of them, one
//! Enroll in flight each: the throughput and the memory the server needs to keep up), then
//! `workloads` Enrolls at once from all `nodes`, as every agent of a fleet asks again after its
//! CA was revoked and replaced (DESIGN §14).
//!
//! Every call the server sheds is asked again with the same request id after the RetryInfo it
//! carried (plus the SDK's jitter); any other failure that is retryable is retried with backoff
//! and counted; one that is not fails the benchmark. The storm's drain time is compared with
//! `workloads` ÷ the steady throughput, and the server's peak RSS (sampled every 100 ms) with
//! its peak at steady load.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use mintgate_sdk::{Backoff, Client, v1};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::child::Mintgate;
use crate::cpu::CpuMeter;
use crate::support::{progress, rss_kib};

#[derive(Debug, Serialize)]
pub struct Storm {
    pub workloads: usize,
    pub nodes: usize,
    pub steady_issuances: usize,
    pub steady_per_second: f64,
    pub steady_peak_rss_kib: u64,
    pub drain_seconds: f64,
    /// `drain_seconds` ÷ (`workloads` ÷ `steady_per_second`).
    pub drain_ratio: f64,
    pub peak_rss_kib: u64,
    pub rss_ratio: f64,
    /// Calls answered with a failure, by reason (every one retried).
    pub refusals: BTreeMap<String, u64>,
    /// Calls made in all (first attempts and retries).
    pub calls: u64,
    /// CPU µs per issuance, (server, clients), at steady load and in the storm: the clients are
    /// this process, on the same cores.
    pub steady_cpu_us: (f64, f64),
    pub storm_cpu_us: (f64, f64),
    /// The storm second by second: issued, refused, and the server's highest RSS sampled in
    /// that second, in KiB (0 when the sampler did not run in it).
    pub timeline: Vec<[u64; 3]>,
}

/// Runs the steady phase with `steady` (each CSR once) and then the storm with `storm`.
pub async fn run(
    bin: &Path,
    steady: Arc<[String]>,
    storm: Arc<[String]>,
    clients: usize,
    nodes: usize,
) -> anyhow::Result<Storm> {
    let dir = tempfile::tempdir()?;
    let policy = crate::child::policy_without_holds(dir.path())?;
    let server = Mintgate::start(bin, dir.path(), &["--policy-dir", policy.as_str()]).await?;

    // The whole fleet is connected in both phases (agents hold their connections to follow the
    // revocation feed): what the storm adds is its calls.
    let fleet = server.nodes(nodes.max(clients), "storm").await?;
    let steady_nodes = fleet[..clients].to_vec();
    let mut cpu = CpuMeter::start(server.pid)?;
    let (steady_seconds, steady_peak_rss_kib, _) =
        phase(&server, steady_nodes, &steady, false).await?;
    let steady_per_second = steady.len() as f64 / steady_seconds;
    let steady_cpu_us = per_issuance(cpu.lap()?, steady.len());

    let (drain_seconds, peak_rss_kib, outcome) =
        phase(&server, fleet[..nodes].to_vec(), &storm, true).await?;
    let storm_cpu_us = per_issuance(cpu.lap()?, storm.len());
    drop(server);
    let refusals = outcome.refusals.into_inner().unwrap_or_default();
    let timeline = outcome.timeline.into_inner().unwrap_or_default();
    Ok(Storm {
        workloads: storm.len(),
        nodes,
        steady_issuances: steady.len(),
        steady_per_second,
        steady_peak_rss_kib,
        drain_seconds,
        drain_ratio: drain_seconds / (storm.len() as f64 / steady_per_second),
        peak_rss_kib,
        rss_ratio: peak_rss_kib as f64 / steady_peak_rss_kib as f64,
        refusals,
        calls: outcome.calls.load(Ordering::Relaxed),
        steady_cpu_us,
        storm_cpu_us,
        timeline,
    })
}

fn per_issuance((server, clients): (f64, f64), n: usize) -> (f64, f64) {
    let n = n.max(1) as f64;
    (server * 1e6 / n, clients * 1e6 / n)
}

#[derive(Default)]
struct Outcome {
    refusals: Mutex<BTreeMap<String, u64>>,
    calls: AtomicU64,
    timeline: Mutex<Vec<[u64; 3]>>,
    start: Option<Instant>,
}

impl Outcome {
    /// Counts one call's answer (0 issued, 1 refused) in the second it came.
    fn count(&self, what: usize) {
        self.this_second(|s| s[what] += 1);
    }

    fn rss(&self, kib: u64) {
        self.this_second(|s| s[2] = s[2].max(kib));
    }

    fn this_second(&self, f: impl FnOnce(&mut [u64; 3])) {
        let Some(start) = self.start else { return };
        let second = start.elapsed().as_secs() as usize;
        let mut timeline = self.timeline.lock().unwrap_or_else(PoisonError::into_inner);
        if timeline.len() <= second {
            timeline.resize(second + 1, [0; 3]);
        }
        f(&mut timeline[second]);
    }
}

/// Every CSR of `csrs` until each is issued, spread over `nodes`: all at once (`storm`: each
/// node asks for its share concurrently) or one at a time per node. Returns the seconds it took,
/// the server's peak RSS in KiB, and what was refused on the way.
async fn phase(
    server: &Mintgate,
    nodes: Vec<Client>,
    csrs: &Arc<[String]>,
    storm: bool,
) -> anyhow::Result<(f64, u64, Outcome)> {
    let what = if storm { "storm" } else { "steady" };
    let bar = progress(csrs.len(), &format!("{what}, {} nodes", nodes.len()))?;
    let start = Instant::now();
    let outcome = Arc::new(Outcome {
        start: storm.then_some(start),
        ..Outcome::default()
    });
    let peak = Arc::new(AtomicU64::new(rss_kib(server.pid)?));
    let sampler = {
        let (peak, pid, outcome) = (peak.clone(), server.pid, outcome.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                    outcome.rss(kib);
                }
            }
        })
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut calls = JoinSet::new();
    // In a storm every request is a task of its own; at steady load each node has one.
    let tasks_per_node = if storm {
        csrs.len().div_ceil(nodes.len().max(1))
    } else {
        1
    };
    for node in &nodes {
        for _ in 0..tasks_per_node {
            let (node, csrs, next) = (node.clone(), csrs.clone(), next.clone());
            let (outcome, bar) = (outcome.clone(), bar.clone());
            calls.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(csr) = csrs.get(i) else {
                        return anyhow::Ok(());
                    };
                    until_issued(&node, csr, &outcome).await?;
                    bar.inc(1);
                    if storm {
                        return Ok(());
                    }
                }
            });
        }
    }
    while let Some(done) = calls.join_next().await {
        done??;
    }
    let seconds = start.elapsed().as_secs_f64();
    sampler.abort();
    let _ = sampler.await;
    bar.finish_and_clear();
    let outcome = Arc::into_inner(outcome).unwrap_or_default();
    Ok((seconds, peak.load(Ordering::Relaxed), outcome))
}

/// One workload's request, asked with one request id until it is issued.
async fn until_issued(node: &Client, csr: &str, outcome: &Outcome) -> anyhow::Result<()> {
    let request = v1::EnrollRequest {
        request_id: mintgate_sdk::new_request_id(),
        csr: csr.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        outcome.calls.fetch_add(1, Ordering::Relaxed);
        let error = match node.enroll(request.clone()).await {
            Ok(issued) if issued.state == v1::RequestState::Issued as i32 => {
                outcome.count(0);
                return Ok(());
            }
            Ok(issued) => bail!("a storm request was held: {:?}", issued.hold),
            Err(e) => e,
        };
        if !error.is_retryable() {
            bail!("a storm request failed and may not be retried: {error}");
        }
        outcome.count(1);
        *outcome
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("{:?} {}", error.code, error.reason))
            .or_default() += 1;
        tokio::time::sleep(backoff.next_delay_after(error.retry_after)).await;
    }
}
