//! The results: one JSON document, and a table with each figure next to its target (issue 5,
//! DESIGN §10).

use serde::Serialize;

use crate::cpu::ServerCpu;
use crate::crypto::Crypto;
use crate::fanout::{Fanout, Memory};
use crate::issuance::Issuance;
use crate::peer::Peer;
use crate::replicas::CrossReplica;
use crate::revoked::RevokedScale;
use crate::storm::Storm;
use crate::support::Latency;

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub crypto: Crypto,
    pub issuance: Vec<Issuance>,
    /// Why the PostgreSQL run is missing, when it was asked for and could not run.
    pub postgres_skipped: Option<String>,
    pub fanout: Fanout,
    pub memory: Memory,
    /// Two replicas on PostgreSQL (with `--postgres`).
    pub replicas: Option<CrossReplica>,
    pub peer: Peer,
    /// Server CPU per issuance, SQLite (and PostgreSQL with `--postgres`).
    pub server_cpu: Vec<ServerCpu>,
    pub revoked: RevokedScale,
    pub storm: Storm,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mib: u64,
    pub cpu: String,
    pub open_files_limit: u64,
}

impl Machine {
    pub fn read(open_files_limit: u64) -> Self {
        let file = |path| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let meminfo = field(&file("/proc/meminfo"), "MemTotal");
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: meminfo
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or_default()
                / 1024,
            cpu: field(&file("/proc/cpuinfo"), "model name"),
            open_files_limit,
        }
    }
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 3]> = Vec::new();
        let mut row = |what: String, measured: String, target: String| {
            rows.push([what, measured, target]);
        };
        let c = &self.crypto;
        row(
            format!("1 crypto limit ({} threads)", c.threads),
            format!("{} per core, {} total", rate(c.per_core), rate(c.total)),
            "the ceiling".into(),
        );
        for i in &self.issuance {
            row(
                format!("2 issuance, {} (C={})", i.database, i.clients),
                format!("{}, {}", rate(i.per_second), latency(&i.latency)),
                String::new(),
            );
            row(
                "  ÷ crypto limit".into(),
                format!("{:.3}", i.ratio_to_crypto),
                target(i.ratio_to_crypto >= 0.5, "≥ 0.5"),
            );
            row(
                "  durable issuances per commit".into(),
                format!("{:.2} ({} commits)", i.issuances_per_commit, i.commits),
                target(i.issuances_per_commit >= 50.0, "≥ 50"),
            );
            row(
                "  the read before deciding an Enroll (sequential)".into(),
                format!(
                    "{:.0} µs, {:.1}% of the median Enroll",
                    i.risk_facts_us,
                    i.risk_facts_share * 100.0
                ),
                String::new(),
            );
        }
        if let Some(why) = &self.postgres_skipped {
            row("2 issuance, PostgreSQL".into(), why.clone(), String::new());
        }
        let f = &self.fanout;
        row(
            format!("3 revocation fan-out (N={})", f.subscribers),
            latency(&f.ours),
            String::new(),
        );
        row(
            "  from Revoke sent (with the commit)".into(),
            latency(&f.ours_from_request),
            String::new(),
        );
        row(
            "  floor: bare tokio-rustls".into(),
            latency(&f.floor),
            String::new(),
        );
        row(
            "  p99 ÷ floor p99".into(),
            format!("{:.2}", f.p99_ratio),
            target(f.p99_ratio <= 1.15, "≤ 1.15"),
        );
        row(
            "  floor: hyper's HTTP/2 alone".into(),
            latency(&f.http2_floor),
            String::new(),
        );
        row(
            "  HTTP/2 floor ÷ bare floor, p99".into(),
            format!(
                "{:.2} (ours ÷ HTTP/2 floor {:.2})",
                f.http2_floor_p99_ratio, f.p99_ratio_to_http2
            ),
            String::new(),
        );
        if let Some(r) = &self.replicas {
            row(
                format!("3 fan-out, two replicas (N={})", r.subscribers),
                format!("committing replica {}", latency(&r.same_replica)),
                String::new(),
            );
            row(
                "  the other replica's subscribers".into(),
                latency(&r.other_replica),
                String::new(),
            );
            row(
                "  p99 gap".into(),
                format!("{:.1} ms", r.p99_gap_ms),
                target(r.p99_gap_ms <= 10.0, "≤ 10 ms"),
            );
        }
        let m = &self.memory;
        row(
            format!("4 memory per idle subscriber (N={})", m.subscribers),
            format!(
                "{:.1} KiB (floors: bare {:.1} KiB, HTTP/2 {:.1} KiB)",
                m.kib_per_subscriber, m.floor_kib_per_connection, m.http2_floor_kib_per_connection
            ),
            target(m.kib_per_subscriber <= 24.0, "≤ 24 KiB"),
        );
        match &self.peer {
            Peer::Skipped { reason } => row(
                "5 peer: cfssl".into(),
                format!("skipped ({reason})"),
                String::new(),
            ),
            Peer::Measured {
                version,
                clients,
                per_second,
                latency: l,
                ratio,
                ..
            } => {
                row(
                    format!("5 peer: cfssl {version} (C={clients})"),
                    format!("{}, {}", rate(*per_second), latency(l)),
                    String::new(),
                );
                row(
                    "  our issuance (SQLite) ÷ cfssl".into(),
                    format!("{ratio:.3}"),
                    target(*ratio >= 1.5, "≥ 1.5"),
                );
            }
        }
        for c in &self.server_cpu {
            row(
                format!("6 server CPU per issuance, {}", c.database),
                format!(
                    "{:.0} µs ({:.1} s user + {:.1} s kernel over {} at {}); crypto {:.0} µs",
                    c.us_per_issuance,
                    c.user_seconds,
                    c.system_seconds,
                    c.issuances,
                    rate(c.per_second),
                    c.crypto_us_per_issuance
                ),
                String::new(),
            );
            row(
                "  ÷ crypto CPU per issuance".into(),
                format!("{:.2}", c.ratio),
                target(c.ratio <= 2.0, "≤ 2.0"),
            );
            row(
                "  an empty call (health check), same connections".into(),
                format!(
                    "{:.0} µs, {:.2} × crypto",
                    c.empty_call_us,
                    c.empty_call_us / c.crypto_us_per_issuance
                ),
                String::new(),
            );
            let floor = c.floor_us();
            let round_trip = c.round_trip_us.map_or(String::new(), |us| {
                format!(" + database round trip ({us:.0} µs alone)")
            });
            row(
                format!(
                    "  floor: crypto + empty call + policy decision ({:.0} µs alone){round_trip}",
                    c.decision_us
                ),
                format!(
                    "{floor:.0} µs, {:.2} × crypto; at 2.0 the store, audit and domain get {:.0} µs, ours take {:.0}",
                    floor / c.crypto_us_per_issuance,
                    2.0 * c.crypto_us_per_issuance - floor,
                    c.us_per_issuance - floor
                ),
                String::new(),
            );
            row(
                "  ours ÷ floor".into(),
                format!("{:.2}", c.us_per_issuance / floor),
                String::new(),
            );
            row(
                "  written to disk per issuance (the server process)".into(),
                format!("{:.1} KiB", c.disk_kib_per_issuance),
                String::new(),
            );
            for (kind, (user, kernel)) in &c.threads {
                row(
                    format!("  thread {kind}"),
                    format!("{:.0} µs user + {kernel:.0} µs kernel", user),
                    String::new(),
                );
            }
        }
        let r = &self.revoked;
        row(
            format!("P6 revoked set: {} entries more", r.entries),
            format!(
                "Revoke p99 {:.1} → {:.1} ms, CheckStatus p99 {:.2} → {:.2} ms",
                r.small.revoke.p99_ms,
                r.large.revoke.p99_ms,
                r.small.check_status.p99_ms,
                r.large.check_status.p99_ms
            ),
            String::new(),
        );
        row(
            "  Revoke p99 ratio".into(),
            format!("{:.2}", r.revoke_p99_ratio),
            target(r.revoke_p99_ratio <= 1.2, "≤ 1.2"),
        );
        row(
            "  CheckStatus p99 ratio".into(),
            format!("{:.2}", r.check_status_p99_ratio),
            target(r.check_status_p99_ratio <= 1.2, "≤ 1.2"),
        );
        let l = &r.large;
        row(
            format!("  CRL of {} entries", l.revoked),
            format!(
                "{:.1} MiB: first {:.0} ms, cached {:.0} ms, after a Revoke {:.0} ms",
                l.crl_bytes as f64 / 1048576.0,
                l.crl_first_ms,
                l.crl_cached_ms,
                l.crl_after_revoke_ms
            ),
            String::new(),
        );
        row(
            "  server RSS per live entry".into(),
            format!(
                "{:.0} B ({} → {} MiB; seeded in {:.1} s, restart {:.1} s)",
                r.bytes_per_entry,
                r.rss_kib_small / 1024,
                r.rss_kib_large / 1024,
                r.seed_seconds,
                r.start_seconds
            ),
            String::new(),
        );
        let s = &self.storm;
        row(
            format!("P7 storm: {} workloads, {} nodes", s.workloads, s.nodes),
            format!(
                "drained in {:.1} s; steady {} over {}",
                s.drain_seconds,
                rate(s.steady_per_second),
                s.steady_issuances
            ),
            String::new(),
        );
        row(
            "  drain ÷ (N ÷ steady rate)".into(),
            format!("{:.2}", s.drain_ratio),
            target(s.drain_ratio <= 1.5, "≤ 1.5"),
        );
        row(
            "  peak RSS ÷ steady peak".into(),
            format!(
                "{:.2} ({} / {} MiB)",
                s.rss_ratio,
                s.peak_rss_kib / 1024,
                s.steady_peak_rss_kib / 1024
            ),
            target(s.rss_ratio <= 2.0, "≤ 2"),
        );
        row(
            "  CPU per issuance: server, clients (this process)".into(),
            format!(
                "steady {:.0} + {:.0} µs; storm {:.0} + {:.0} µs",
                s.steady_cpu_us.0, s.steady_cpu_us.1, s.storm_cpu_us.0, s.storm_cpu_us.1
            ),
            String::new(),
        );
        let refused: Vec<String> = s.refusals.iter().map(|(r, n)| format!("{r} {n}")).collect();
        row(
            format!("  refused on the way, all retried ({} calls)", s.calls),
            if refused.is_empty() {
                "none".into()
            } else {
                refused.join(", ")
            },
            "retryable only (met)".into(),
        );
        let width = |col: usize| {
            rows.iter()
                .map(|r| r[col].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1) = (width(0), width(1));
        let m = &self.machine;
        let mut out = format!(
            "Mintgate benchmarks: {} cores, {} MiB, {}\n{:w0$}  {:w1$}  target\n",
            m.cores, m.memory_mib, m.cpu, "", "measured"
        );
        for [what, measured, target] in &rows {
            out.push_str(&format!("{what:w0$}  {measured:w1$}  {target}\n"));
        }
        out
    }
}

fn rate(per_second: f64) -> String {
    format!("{per_second:.0}/s")
}

fn latency(l: &Latency) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.p50_ms, l.p99_ms, l.max_ms
    )
}

fn target(met: bool, goal: &str) -> String {
    format!("{goal} {}", if met { "(met)" } else { "(missed)" })
}
