//! What the benchmarks share: the CSR workload, latency summaries, progress bars, child
//! processes and their memory.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use mintgate_sdk::{Client, v1};
use mintgate_tests::TRUST_DOMAIN;
use serde::Serialize;
use tokio::process::{Child, Command};

/// `n` PEM CSRs (fresh P-256 keys), one workload identity each. Every benchmark that signs uses
/// these same requests.
pub fn csrs(n: usize) -> Vec<String> {
    csrs_for("bench", n)
}

/// `n` PEM CSRs for the identities `/workload/<prefix>-<i>`, made on every core.
pub fn csrs_for(prefix: &str, n: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|from| {
                scope.spawn(move || {
                    (from..(from + chunk).min(n))
                        .map(|i| {
                            let id = format!("spiffe://{TRUST_DOMAIN}/workload/{prefix}-{i}");
                            mintgate_tests::csr::csr(&id, &[]).0
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// One node's loop: the next CSR until there are none.
pub async fn enroll_all(
    node: Client,
    csrs: Arc<[String]>,
    next: Arc<AtomicUsize>,
    bar: ProgressBar,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(csr) = csrs.get(i) else {
            return Ok(latencies);
        };
        let sent = Instant::now();
        let issued = node
            .enroll(v1::EnrollRequest {
                csr: csr.clone().into_bytes(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("enrolling CSR {i}"))?;
        anyhow::ensure!(
            issued.state == v1::RequestState::Issued as i32,
            "CSR {i} was held"
        );
        latencies.push(sent.elapsed());
        bar.inc(1);
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (none: all zero).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let rank = |p: f64| {
            let n = samples.len() as f64;
            samples.get(((p * n).ceil() as usize).saturating_sub(1))
        };
        Self {
            samples: samples.len(),
            min_ms: ms(samples.first()),
            p50_ms: ms(rank(0.50)),
            p99_ms: ms(rank(0.99)),
            max_ms: ms(samples.last()),
        }
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress(len: usize, what: &str) -> anyhow::Result<ProgressBar> {
    let style = ProgressStyle::with_template(
        "{msg:>22} [{bar:40}] {pos}/{len} {rate:>9} {elapsed_precise}",
    )?
    .with_key(
        "rate",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        },
    )
    .progress_chars("=> ");
    Ok(ProgressBar::new(len as u64)
        .with_style(style)
        .with_message(what.to_owned()))
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of process `pid` (`VmRSS` in `/proc/<pid>/status`), in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Starts `program` in `dir` with its stderr in `dir/<log>`; it dies with its handle.
pub fn spawn(program: &Path, args: &[&str], dir: &Path, log: &str) -> anyhow::Result<Child> {
    let stderr = std::fs::File::create(dir.join(log))?;
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Retries `attempt` every 50 ms until it succeeds, the child exits or `limit` passes.
pub async fn wait_for<T, F>(
    child: &mut Child,
    limit: Duration,
    mut attempt: impl FnMut() -> F,
) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    loop {
        let error = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Some(status) = child.try_wait()? {
            bail!("the child process exited ({status}) before it was ready: {error:#}");
        }
        if start.elapsed() > limit {
            return Err(error.context(format!("not ready after {limit:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!(
            (l.min_ms, l.p50_ms, l.p99_ms, l.max_ms),
            (1.0, 50.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(Vec::new()).p99_ms, 0.0);
    }
}
